"""Tokenizing with several processes: the tasks of a SLURM job (`theseus submit -n N` of a
tokenize job), or processes given THESEUS_PROCESS_ID and THESEUS_NUM_PROCESSES.

Batch b of the source (as `pipeline.batches` cuts it from the first document) is encoded by task
b % N and saved as a part, `<root>/data/.<store>.parts/<key>/<b>.npz`, written under a temporary
name and renamed: a part that exists is whole, and a task started again skips it. Every task
reads every document and encodes only its own batches, so the source must give each task the
same documents in the same order. A task whose batches are saved marks itself done; task 0 then
waits for the marks of all tasks of this launch and commits the parts in order through the same
`commit_all` as a single process: the store's bytes are a single process's by construction, its
manifest is written once, by one process, and a merge interrupted resumes as a single process's
tokenization does. The parts are removed once the store is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from theseus.base.files import atomic_write
from theseus.base.stopping import EXIT_STOPPED, StoppedEarly, StopSignals
from theseus.base.tasks import Task
from theseus.data.datasets.base import Document, Source
from theseus.data.encoding import Encoded, Encoder, EncodeWorkers, TokenizePlan
from theseus.data.pipeline import (
    BATCH_CHARS,
    Progress,
    batches,
    commit_all,
    documents,
    prefetch,
)
from theseus.data.store import StoreWriter
from theseus.errors import UserError

POLL_S = 0.5
# Per written document (see `Encoded`); the rows of each split are stored as "<split>.<array>".
_FIELDS = tuple(f.name for f in dataclasses.fields(Encoded) if f.name not in ("n_read", "arrays"))


def parts_folder(final: Path) -> Path:
    """Where the parts of store `final` are kept while several tasks write it (a name no store
    can have: store names never start with a dot)."""
    return final.with_name(f".{final.name}.parts")


def _launch() -> str:
    """What every task of one start of a job shares, and another job does not: a task's mark
    counts only for the launch that wrote it, so one left by an earlier job is never taken for
    this one's (after --fresh its parts are not this launch's)."""
    launch = os.environ.get("SLURM_JOB_ID") or os.environ.get("THESEUS_COORDINATOR")
    if not launch:
        raise UserError(
            "a tokenize job of several processes needs SLURM_JOB_ID or THESEUS_COORDINATOR, "
            "which tell its tasks apart from an earlier job's; run it through SLURM, or set them"
        )
    return launch


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Parts:
    """The parts of one store, as task `task` of a job sees them; `key` names everything that
    shapes a part's bytes (the store's fingerprint and the batch bounds)."""

    def __init__(self, final: Path, fingerprint: dict[str, Any], plan: TokenizePlan, task: Task):
        shape = {"store": fingerprint, "batch_docs": plan.batch_docs, "batch_chars": BATCH_CHARS}
        key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = parts_folder(final) / key
        self.task, self.plan, self.launch = task, plan, _launch()
        self.label = f"task {task.index} of {task.count}"
        self.batches: int | None = None  # the source's batch count, once read to its end
        # what `_deal` knows of the parts before its batch: those it counted and their tokens,
        # how many from the first one on are saved, and its own it has not yet seen saved
        self._counted: set[int] = set()
        self._tokens = self._gapless = 0
        self._mine: list[int] = []

    def part(self, b: int) -> Path:
        return self.folder / f"{b:06d}.npz"

    def _mark(self, index: int) -> Path:
        return self.folder / f"task-{index}.done"

    def write(self, source: Source, encoder: Encoder, final: str, fresh: bool) -> None:
        """Encode and save this task's batches that are not saved yet, then mark it done (with
        `fresh`, its parts saved before are deleted first). A stop signal ends it at a saved
        part with `StoppedEarly`."""
        index, count = self.task.index, self.task.count
        self.folder.mkdir(parents=True, exist_ok=True)
        self._mark(index).unlink(missing_ok=True)
        saved = [p for p in self.folder.glob("*.npz") if int(p.stem) % count == index]
        if fresh:
            for path in saved:
                path.unlink()
        before = f"; {len(saved):,} of them were saved before" if saved and not fresh else ""
        _say(
            f"{self.label}: tokenizing batches {index}, {index + count}, {index + 2 * count}, "
            f"... of {final} into {self.folder}{before}"
        )
        order: deque[tuple[int, int]] = deque()
        with EncodeWorkers(encoder) as workers, StopSignals() as stop:
            progress = Progress(f"{final} ({self.label})", documents(source, self.plan), 0)
            read = prefetch(self._deal(source, order), depth=4)
            try:
                for encoded in workers.map(read):
                    b, end = order.popleft()
                    self._save(b, encoded)
                    progress.advance(encoded.n_read, int(encoded.tokens.sum()), end)
                    if stop.signal_name is not None:
                        break
            finally:
                read.close()
                progress.close()
        if stop.signal_name is not None:
            _say(
                f"{self.label}: stopped by {stop.signal_name}; the batches it saved are kept; "
                f"run again to resume (exit code {EXIT_STOPPED})"
            )
            raise StoppedEarly(stop.signal_name)
        mark = {"launch": self.launch, "tasks": count, "batches": self.batches}
        atomic_write(self._mark(index), json.dumps(mark))

    def _deal(self, source: Source, order: deque[tuple[int, int]]) -> Iterator[list[Document]]:
        """This task's batches not saved yet, in order (each one's index and the document it ends
        at go to `order`). It stops at a batch once the parts before it hold `max_tokens`: the
        store ends before that batch."""
        max_tokens, end, n = self.plan.max_tokens, 0, 0
        for n, batch in enumerate(batches(source, 0, self.plan), start=1):
            b, end = n - 1, end + len(batch)
            if b % self.task.count != self.task.index:
                continue
            if max_tokens is not None and self._tokens_before(b) >= max_tokens:
                return
            self._mine.append(b)
            if not self.part(b).exists():
                order.append((b, end))
                yield batch
        self.batches = n

    def _tokens_before(self, b: int) -> int:
        """At most the tokens of the batches before `b`: those of the parts saved from the first
        one on without a gap, and of this task's own parts saved after a gap (a task that runs
        ahead of the others then stops as soon as its own parts reach data.max_tokens)."""
        while self._gapless < b and self.part(self._gapless).exists():
            self._count(self._gapless)
            self._gapless += 1
        for own in [i for i in self._mine if self.part(i).exists()]:
            self._count(own)
            self._mine.remove(own)
        return self._tokens

    def _count(self, b: int) -> None:
        if b not in self._counted:
            self._counted.add(b)
            with np.load(self.part(b)) as data:
                self._tokens += int(data["tokens"].sum())

    def _save(self, b: int, encoded: Encoded) -> None:
        fields = {name: getattr(encoded, name) for name in _FIELDS}
        for split, arrays in encoded.arrays.items():
            fields |= {f"{split}.{name}": values for name, values in arrays.items()}
        path = self.part(b)
        # two jobs on one store (one of them about to be refused) save the same bytes apart
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.savez(f, n_read=np.int64(encoded.n_read), **fields)
        tmp.replace(path)

    def _load(self, b: int) -> Encoded:
        with np.load(self.part(b)) as data:
            arrays: dict[str, dict[str, np.ndarray]] = {}
            for name in data.files:
                split, dot, array = name.partition(".")
                if dot:
                    arrays.setdefault(split, {})[array] = data[name]
            fields = {name: data[name] for name in _FIELDS}
            return Encoded(n_read=int(data["n_read"]), arrays=arrays, **fields)

    def _marks(self) -> list[dict[str, Any] | None]:
        """Each task's mark of this launch, or None where it has not marked its batches saved."""
        ours = (self.launch, self.task.count)
        marks: list[dict[str, Any] | None] = []
        for index in range(self.task.count):
            path = self._mark(index)
            mark = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            marks.append(mark if mark and (mark["launch"], mark["tasks"]) == ours else None)
        return marks

    def wait_for_tasks(self) -> int | None:
        """Task 0: wait until every task has saved its batches; returns the source's batch
        count (None when every task stopped at data.max_tokens before the source's end)."""
        said: list[str] = []
        with StopSignals() as stop:
            while None in (marks := self._marks()):
                if stop.signal_name is not None:
                    self._stopped(stop.signal_name, "waiting for the other tasks")
                waiting = [str(i) for i, mark in enumerate(marks) if mark is None]
                if waiting != said:
                    said = waiting
                    _say(
                        f"{self.label}: waiting for task(s) {', '.join(waiting)} to save their batches"
                    )
                time.sleep(POLL_S)
        counts = {mark["batches"] for mark in marks if mark and mark["batches"] is not None}
        if len(counts) > 1:
            raise UserError(
                f"the tasks read different numbers of batches from the source ({sorted(counts)}): "
                "it must give every task the same documents in the same order"
            )
        return counts.pop() if counts else None

    def wait_for_merge(self, final: Path) -> None:
        """Tasks but 0: stay until task 0 has written the store and removed the parts, since
        SLURM stops a job's other tasks soon after one of them ends (srun --wait)."""
        _say(f"{self.label}: its batches are saved; waiting for task 0 to write the store")
        with StopSignals() as stop:
            while parts_folder(final).exists():
                if stop.signal_name is not None:
                    self._stopped(stop.signal_name, "waiting for task 0")
                time.sleep(POLL_S)

    def _stopped(self, signal_name: str, doing: str) -> None:
        _say(
            f"{self.label}: stopped by {signal_name} while {doing}; "
            f"run again to resume (exit code {EXIT_STOPPED})"
        )
        raise StoppedEarly(signal_name)

    def first_after(self, docs_read: int) -> int | None:
        """The part that starts at document `docs_read` (where a merge resumes); None when a part
        spans it (a single process began the store, its batches cut elsewhere)."""
        b = done = 0
        while done < docs_read and self.part(b).exists():
            with np.load(self.part(b)) as data:
                done += int(data["n_read"])
            b += 1
        return b if done == docs_read else None

    def merge(
        self, writer: StoreWriter, source: Source, n_batches: int | None, label: str
    ) -> dict[str, int]:
        """Task 0, once every task has saved its batches: commit the parts after the writer's
        last commit, as a single process commits its batches; returns the final counts."""
        first = self.first_after(writer.docs_read)
        assert first is not None  # the caller starts a store begun elsewhere over
        _say(f"{self.label}: writing the batches of {self.task.count} tasks into {label}")
        read = prefetch(self._read(first, n_batches), depth=2)
        try:
            return commit_all(read, writer, self.plan, label, documents(source, self.plan))
        finally:
            read.close()

    def _read(self, first: int, n_batches: int | None) -> Iterator[Encoded]:
        """The parts from `first` on, in order, to the source's end (or, with `n_batches` None,
        until the caller stops at data.max_tokens, which every task stopped before)."""
        b = first
        while n_batches is None or b < n_batches:
            if not self.part(b).exists():
                raise UserError(
                    f"{self.part(b)} is missing although every task has saved its batches; "
                    "run the job again to write it"
                )
            yield self._load(b)
            b += 1
