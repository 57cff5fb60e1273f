"""The tokenize loop: read documents in a background thread, encode batches on every core, commit.

Output order is the source order whatever the parallelism: each batch is encoded by the
tokenizer's own thread pool on every core (`encode_batch` keeps order), several batches at once,
while the next batches are read and the previous one is written. After every batch the writer
commits, so a killed run resumes at the last committed document. A job of several tasks encodes
its batches apart and commits them here all the same, in order (`parts.py`).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Generator, Iterator
from itertools import islice
from typing import Any

import numpy as np

from theseus.base.stopping import EXIT_STOPPED, StoppedEarly, StopSignals
from theseus.data.datasets.base import Document, Source
from theseus.data.encoding import Encoded, Encoder, EncodeWorkers, TokenizePlan
from theseus.data.store import StoreWriter
from theseus.data.tokenizers import Tokenizer

_DONE = object()
READER_JOIN_S = 60.0
#: Text per batch: big enough that per-batch costs vanish, small enough to keep every worker
#: busy on small corpora and to start writing early.
BATCH_CHARS = 1 << 18


def prefetch(items: Iterator[Any], depth: int) -> Generator[Any, None, None]:
    """Iterate `items` in a background thread, at most `depth` ahead; errors surface here.

    Closing the generator stops the thread and waits for it: a reader left running (e.g. inside
    pyarrow) when the interpreter exits can abort the process (SIGABRT) after the work is done.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_DONE, exc))
        finally:
            # a generator stopped early still holds open readers: release them in this thread
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=fill, name="theseus-read", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        # it stops once its current read returns; one stuck longer (a hung network read) is
        # left behind rather than hanging the job
        thread.join(timeout=READER_JOIN_S)


def batches(source: Source, skip: int, plan: TokenizePlan) -> Iterator[list[Document]]:
    """Documents in batches of `plan.batch_docs`, or fewer once they hold BATCH_CHARS of text.

    Batch bounds decide only when progress is committed, never the store's bytes.
    """
    batch: list[Document] = []
    chars = 0
    for document in islice(source.documents(), skip, plan.max_samples):
        batch.append(document)
        chars += (
            len(document) if isinstance(document, str) else sum(len(m["content"]) for m in document)
        )
        if len(batch) >= plan.batch_docs or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class Progress:
    """A progress line on stderr: documents, tokens, rates, and an ETA when the size is known."""

    def __init__(self, description: str, total: int | None, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TimeElapsedColumn, TimeRemainingColumn

        from theseus.base.progress import fitted_progress, fixed_text

        columns: list[Any] = [fixed_text("[bold]{task.description}")]
        if total:
            columns += [BarColumn(bar_width=12), TimeRemainingColumn()]
        columns.append(TimeElapsedColumn())
        self.bar = fitted_progress(
            *columns, figures="stats", console=Console(stderr=True), transient=False
        )
        self.task = self.bar.add_task(description, total=total, completed=done, stats="")
        self.start, self.docs, self.tokens = time.perf_counter(), 0, 0
        self.bar.start()

    def advance(self, docs: int, tokens: int, total_docs: int) -> None:
        self.docs += docs
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        stats = f"{total_docs:,} docs  {self.tokens / elapsed:,.0f} tok/s  {self.docs / elapsed:,.0f} docs/s"
        self.bar.update(self.task, completed=total_docs, stats=stats)

    def close(self) -> None:
        self.bar.stop()


def tokenize(
    source: Source, tokenizer: Tokenizer, writer: StoreWriter, plan: TokenizePlan, label: str
) -> dict[str, int]:
    """Run (or finish) the tokenization `writer` was set up for; returns the final counts.

    SIGTERM, SIGUSR1 or Ctrl-C stop it at the next commit with `StoppedEarly` (exit code 75)."""
    encoder = Encoder(tokenizer, plan, writer.manifest.dtype)
    with EncodeWorkers(encoder) as workers:
        read = prefetch(batches(source, writer.docs_read, plan), depth=4)
        try:
            return commit_all(workers.map(read), writer, plan, label, documents(source, plan))
        finally:
            read.close()


def documents(source: Source, plan: TokenizePlan) -> int | None:
    """How many documents will be read, when known."""
    return source.size_hint() if plan.max_samples is None else plan.max_samples


def commit_all(
    encoded: Iterator[Encoded],
    writer: StoreWriter,
    plan: TokenizePlan,
    label: str,
    total: int | None,
) -> dict[str, int]:
    """Commit the batches `encoded` (those after the writer's last commit, in source order) until
    `plan.max_tokens` is reached; returns the final counts. A stop signal ends it at a commit."""
    stats = {
        "docs_read": 0,
        "tokens": 0,
        "truncated": 0,
        "skipped_empty": 0,
        "empty_chats": 0,
        "unlearned": 0,
        "cut_off": 0,
        **writer.stats,
    }
    done = plan.max_tokens is not None and stats["tokens"] >= plan.max_tokens
    with StopSignals() as stop:
        progress = Progress(label, total, writer.docs_read)  # its thread starts after the fork
        try:
            stopped = not done and _commit_each(encoded, writer, plan, stats, progress, stop)
        finally:
            progress.close()
    sys.stderr.flush()
    if stopped:
        print(
            f"stopped by {stop.signal_name} after {writer.docs_read:,} documents; "
            f"run again to resume (exit code {EXIT_STOPPED})",
            file=sys.stderr,
        )
        raise StoppedEarly(stop.signal_name or "a signal")
    return stats


def _commit_each(
    encoded: Iterator[Encoded],
    writer: StoreWriter,
    plan: TokenizePlan,
    stats: dict[str, int],
    progress: Progress,
    stop: StopSignals,
) -> bool:
    """Commit batch after batch; True if a signal stopped it before the end."""
    for batch in encoded:
        if _commit(batch, writer, plan, stats, progress):
            return False
        if stop.signal_name is not None:
            return True
    return False


def _commit(
    encoded: Encoded,
    writer: StoreWriter,
    plan: TokenizePlan,
    stats: dict[str, int],
    progress: Progress,
) -> bool:
    """Write one encoded batch and commit it; True once `plan.max_tokens` is reached."""
    done = False
    if plan.max_tokens is not None:
        reached = np.flatnonzero(stats["tokens"] + np.cumsum(encoded.tokens) >= plan.max_tokens)
        if len(reached):
            encoded, done = encoded.cut(int(reached[0]) + 1), True
    for split, arrays in encoded.arrays.items():
        if len(arrays["tokens"]):
            writer.add(split, arrays)
    tokens = int(encoded.tokens.sum())
    stats["skipped_empty"] += encoded.n_read - len(encoded.index)
    stats["empty_chats"] += len(encoded.empty_chats)
    stats["unlearned"] += int(encoded.unlearned.sum())
    stats["cut_off"] += int(encoded.cut_off.sum())
    stats["docs_read"] = writer.docs_read + encoded.n_read
    stats["tokens"] += tokens
    stats["truncated"] += int(encoded.truncated.sum())
    writer.commit(writer.docs_read + encoded.n_read, stats)
    progress.advance(encoded.n_read, tokens, writer.docs_read)
    return done
