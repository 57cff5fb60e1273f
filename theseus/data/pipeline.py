"""The tokenize loop: read documents in a background thread, encode batches on every core, commit.

Output order is the source order whatever the parallelism: each batch is encoded by the
tokenizer's own thread pool on every core (`encode_batch` keeps order), several batches at once,
while the next batches are read and the previous one is written. After every batch the writer
commits, so a killed run resumes at the last committed document.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import numpy as np

from theseus.base.chips import usable_cores
from theseus.base.stopping import EXIT_STOPPED, StoppedEarly, StopSignals
from theseus.data.chat import example, segments
from theseus.data.datasets.base import Document, HeldOut, Source
from theseus.data.store import StoreWriter
from theseus.data.tokenizers import Tokenizer
from theseus.errors import UserError

_DONE = object()
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
BATCHES_IN_FLIGHT = 2
READER_JOIN_S = 60.0
#: Text per batch: big enough that per-batch costs vanish, small enough to keep every worker
#: busy on small corpora and to start writing early.
BATCH_CHARS = 1 << 18


@dataclass
class Plan:
    """What to tokenize and how (all but `batch_docs` shape the store's bytes)."""

    kind: str
    max_samples: int | None
    max_tokens: int | None
    val_pct: float
    batch_docs: int
    template: str = "chatml"
    seq_len: int | None = None
    padding: str = "right"
    loss_on: str = "assistant"


def is_val(document: Document, val_pct: float) -> bool:
    """Held out for validation: a stable function of the document's content, not of run order
    (or held out by its source: `data.val_paths`)."""
    if isinstance(document, HeldOut):
        return True
    if val_pct <= 0:
        return False
    key = (
        document
        if isinstance(document, str)
        else repr([(m["role"], m["content"]) for m in document])
    )
    value = int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", errors="replace"), digest_size=8).digest(), "big"
    )
    return value < val_pct / 100.0 * 2**64


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


def ordered_map(fn: Callable[[Any], Any], items: Iterator[Any], workers: int) -> Iterator[Any]:
    """`map(fn, items)` with `workers` calls in flight, results in input order.

    Several batches encode at once so that one batch's slowest document, or another's
    GIL-bound conversion to arrays, does not leave cores idle; encoding goes on while the
    caller writes.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="theseus-encode")
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def batches(source: Source, skip: int, plan: Plan) -> Iterator[list[Document]]:
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


@dataclass
class Encoded:
    """One batch, tokenized. Per written (non-empty) document, in order: where it was in the
    batch, whether it is held out, its token count and row count, whether it was truncated, has
    no token to learn, and has none only because truncation cut off its learned tokens; the rows
    of each split; and where in the batch the chats with no message were (skipped)."""

    n_read: int
    index: np.ndarray
    held_out: np.ndarray
    tokens: np.ndarray
    rows: np.ndarray
    truncated: np.ndarray
    unlearned: np.ndarray
    cut_off: np.ndarray
    arrays: dict[str, dict[str, np.ndarray]]
    empty_chats: np.ndarray

    def cut(self, n_docs: int) -> Encoded:
        """Only the first `n_docs` written documents (and the batch up to the last of them)."""
        out = {}
        for split, held_out in (("train", False), ("val", True)):
            keep = int(self.rows[:n_docs][self.held_out[:n_docs] == held_out].sum())
            out[split] = {name: values[:keep] for name, values in self.arrays[split].items()}
        n_read = int(self.index[n_docs - 1]) + 1 if n_docs else 0
        fields = (
            self.index,
            self.held_out,
            self.tokens,
            self.rows,
            self.truncated,
            self.unlearned,
            self.cut_off,
        )
        return Encoded(
            n_read, *(f[:n_docs] for f in fields), out, self.empty_chats[self.empty_chats < n_read]
        )


class Encoder:
    """Turns a batch of documents into store rows, a whole batch at a time (little per-document Python)."""

    def __init__(self, tokenizer: Tokenizer, plan: Plan, dtype: str) -> None:
        self.tokenizer = tokenizer
        self.plan = plan
        self.dtype = np.dtype(dtype)

    def encode(self, batch: list[Document]) -> Encoded:
        index = [i for i, d in enumerate(batch) if d and (not isinstance(d, str) or d.strip())]
        docs = [batch[i] for i in index]
        held_out = np.array([is_val(d, self.plan.val_pct) for d in docs], dtype=bool)
        if self.plan.kind == "variable":
            tokens, arrays = self.variable(docs)
            rows = tokens
            truncated = unlearned = cut_off = np.zeros(len(docs), dtype=bool)
        else:
            tokens, truncated, cut_off, arrays = self.blockwise(docs)
            rows = np.ones(len(docs), dtype=np.int64)
            unlearned = ~arrays["loss_mask"].any(axis=1)
        by_split = {
            "train": {k: v[np.repeat(~held_out, rows)] for k, v in arrays.items()},
            "val": {k: v[np.repeat(held_out, rows)] for k, v in arrays.items()},
        }
        empty_chats = [i for i, d in enumerate(batch) if isinstance(d, list) and not d]
        return Encoded(
            len(batch),
            np.array(index, dtype=np.int64),
            held_out,
            tokens,
            rows,
            truncated,
            unlearned,
            cut_off,
            by_split,
            np.array(empty_chats, dtype=np.int64),
        )

    def variable(self, docs: list[Document]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Each document's ids followed by the end-of-text id, all in one array."""
        texts = [d for d in docs if isinstance(d, str)]
        if len(texts) == len(docs):
            flat, lengths = self.tokenizer.encode_batch_flat(texts)
        else:
            pieces = [segments(d, self.plan.template, "all") for d in docs]
            ids = [list(chain.from_iterable(doc)) for doc in self.encode_pieces(pieces)]
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        counts = lengths + 1
        stream = np.empty(int(counts.sum()), dtype=self.dtype)
        is_eot = np.zeros(len(stream), dtype=bool)
        is_eot[np.cumsum(counts) - 1] = True
        stream[is_eot] = self.tokenizer.eot_id
        stream[~is_eot] = flat
        return counts, {"tokens": stream}

    def encode_pieces(self, pieces: list[list[tuple[str, bool, bool]]]) -> list[list[list[int]]]:
        """The ids of every piece of every document (see `segments`), markup parsed apart."""
        flat = [piece for doc in pieces for piece in doc]
        text = iter(self.tokenizer.encode_batch([t for t, _, m in flat if not m]))
        markup = iter(self.tokenizer.encode_markup_batch([t for t, _, m in flat if m]))
        return [[next(markup) if m else next(text) for _, _, m in doc] for doc in pieces]

    def blockwise(
        self, docs: list[Document]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One fixed-length example per document: (real token counts, truncated, learns nothing
        only because truncation cut off every learned token, arrays)."""
        plan, seq_len = self.plan, int(self.plan.seq_len or 0)
        pieces = [segments(d, plan.template, plan.loss_on) for d in docs]
        ids_of = self.encode_pieces(pieces)
        tokens = np.empty((len(docs), seq_len + 1), dtype=self.dtype)
        masks = np.empty((len(docs), seq_len), dtype=np.uint8)
        lengths = np.empty(len(docs), dtype=np.int64)
        truncated = np.zeros(len(docs), dtype=bool)
        cut_off = np.zeros(len(docs), dtype=bool)
        for row, (doc_pieces, piece_ids) in enumerate(zip(pieces, ids_of, strict=True)):
            ids: list[int] = []
            weights: list[bool] = []
            for (_, learn, _), piece in zip(doc_pieces, piece_ids, strict=True):
                ids += piece
                weights += [learn] * len(piece)
            ids.append(self.tokenizer.eot_id)
            weights.append(doc_pieces[-1][1] if doc_pieces else True)
            tokens[row], masks[row], lengths[row], truncated[row] = example(
                ids, weights, seq_len, self.tokenizer.eot_id, plan.padding
            )
            # the first token is never learned (nothing precedes it)
            cut_off[row] = truncated[row] and any(weights[1:]) and not masks[row].any()
        return (
            lengths,
            truncated,
            cut_off,
            {"tokens": tokens, "loss_mask": masks, "lengths": lengths.astype(np.int32)},
        )


class _Progress:
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


_WORKER_ENCODER: Encoder | None = None


def _jax_started() -> bool:
    """Whether JAX runs its thread pools in this process (the Python API after training, say):
    a fork of it is unsafe, as a lock one of them held at the fork stays held in the child."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bridge is not None and bridge.backends_are_initialized()


def _start_worker(encoder: Encoder) -> None:
    global _WORKER_ENCODER
    # Out of the job's process group, so that Ctrl-C or a `kill -TERM -PGID` reaches only the
    # parent, which stops at a commit: a worker killed while sending a batch back would leave
    # the pool waiting for the rest of it. A worker still dies with the parent, however it dies.
    os.setpgid(0, 0)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    encoder.tokenizer.use_one_thread()  # the processes are the parallelism now
    _WORKER_ENCODER = encoder


def _encode_in_worker(batch: list[Document]) -> Encoded:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER.encode(batch)


class EncodeWorkers:
    """Encodes batches on every core and hands them back in input order.

    On Linux: one forked worker process per core, each encoding single-threaded, so that the
    conversion of ids to arrays (Python, under a lock per process) runs in parallel too. Elsewhere,
    or once JAX has started (no safe fork): threads calling the tokenizer's own multi-threaded
    batch encode.
    Enter it before starting any other thread: forking a process that runs threads is unsafe.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.workers = usable_cores()
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> EncodeWorkers:
        if self.workers > 1 and sys.platform == "linux" and not _jax_started():
            import multiprocessing

            # Children must not inherit a thread pool that forking broke; the parent's own
            # setting comes back once they exist.
            previous = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            gc.freeze()  # children's collections then skip, and so do not copy, the parent's heap
            try:
                self.pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("fork"),
                    initializer=_start_worker,
                    initargs=(self.encoder,),
                )
                self.pool.submit(int).result()  # forks every worker now, before other threads
            finally:
                gc.unfreeze()
                if previous is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = previous
        return self

    def __exit__(self, *_: object) -> None:
        if self.pool is not None:
            # at most 2 * workers batches are in flight; a dead worker only breaks the pool
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, batches: Iterator[list[Document]]) -> Iterator[Encoded]:
        if self.pool is None:
            yield from ordered_map(self.encoder.encode, batches, BATCHES_IN_FLIGHT)
            return
        pending: deque[Future[Encoded]] = deque()
        try:
            for batch in batches:
                pending.append(self.pool.submit(_encode_in_worker, batch))
                if len(pending) > 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise UserError(
                "a tokenize worker process died (out of memory, or killed); run the job again "
                "to resume from its last commit"
            ) from None


def tokenize(
    source: Source, tokenizer: Tokenizer, writer: StoreWriter, plan: Plan, label: str
) -> dict[str, int]:
    """Run (or finish) the tokenization `writer` was set up for; returns the final counts.

    SIGTERM, SIGUSR1 or Ctrl-C stop it at the next commit with `StoppedEarly` (exit code 75)."""
    encoder = Encoder(tokenizer, plan, writer.manifest.dtype)
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
    total = source.size_hint() if plan.max_samples is None else plan.max_samples
    with EncodeWorkers(encoder) as workers, StopSignals() as stop:
        progress = _Progress(label, total, writer.docs_read)  # its thread starts after the fork
        try:
            stopped = not done and _tokenize_all(
                source, workers, writer, plan, stats, progress, stop
            )
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


def _tokenize_all(
    source: Source,
    workers: EncodeWorkers,
    writer: StoreWriter,
    plan: Plan,
    stats: dict[str, int],
    progress: _Progress,
    stop: StopSignals,
) -> bool:
    """Read, encode and write every batch after the last commit; True if a signal stopped it
    before the end."""
    read = prefetch(batches(source, writer.docs_read, plan), depth=4)
    try:
        for encoded in workers.map(read):
            if _commit(encoded, writer, plan, stats, progress):
                return False
            if stop.signal_name is not None:
                return True
        return False
    finally:
        read.close()


def _commit(
    encoded: Encoded, writer: StoreWriter, plan: Plan, stats: dict[str, int], progress: _Progress
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
