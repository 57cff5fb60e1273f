"""`theseus status`, `logs` and `cancel`: follow and stop the runs `theseus submit` started."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from theseus.dispatch import records
from theseus.dispatch.backends import Observation, backend_for
from theseus.errors import UserError

ACTIVE = ("starting", "queued", "running")


def observe(chosen: list[records.Record]) -> list[Observation]:
    """What each recorded run is doing: one round trip per host, all hosts at once; a host that
    cannot be reached reports its runs as unknown, saying why."""
    by_host: dict[str, list[int]] = {}
    for i, record in enumerate(chosen):
        key = json.dumps([record.backend, record.host], sort_keys=True)
        by_host.setdefault(key, []).append(i)

    def ask(indices: list[int]) -> list[Observation]:
        group = [chosen[i] for i in indices]
        try:
            return backend_for(group[0], group[0].host).observe(group)
        except UserError as exc:
            return [Observation("unknown", str(exc))] * len(group)

    seen: list[Observation] = [Observation("unknown")] * len(chosen)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for indices, observed in zip(
            by_host.values(), pool.map(ask, by_host.values()), strict=True
        ):
            for i, observation in zip(indices, observed, strict=True):
                seen[i] = observation
    return seen


class RankLines:
    """Passes on the lines of one process of a SLURM job, whose log labels each line with its
    rank (srun --label: "1: ..."), without the label; a partial line waits for its end."""

    def __init__(self, rank: int, write: Callable[[bytes], None]) -> None:
        self.label, self.write, self.partial = f"{rank}: ".encode(), write, b""

    def __call__(self, chunk: bytes) -> None:
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        self._pass(lines)

    def _pass(self, lines: list[bytes]) -> None:
        kept = [line[len(self.label) :] for line in lines if line.startswith(self.label)]
        if kept:
            self.write(b"".join(line + b"\n" for line in kept))

    def close(self) -> None:
        if self.partial:
            self._pass([self.partial])
            self.partial = b""


def logs(
    record: records.Record,
    follow: bool,
    write: Callable[[bytes], None],
    poll_seconds: float = 1.0,
    *,
    rank: int | None = None,
) -> None:
    """Write the job's log through `write(bytes)`; with `follow`, until the job ends. `rank`
    picks one process's lines; a run that is not a SLURM job has one process, rank 0."""
    if rank is not None and record.backend != "slurm":
        if rank != 0:
            raise UserError(f"{record.name} runs one process (rank 0) on {record.host_name}")
        rank = None  # its lines are all rank 0's, unlabelled
    if rank is not None:
        picked = RankLines(rank, write)
        try:
            return logs(record, follow, picked, poll_seconds)
        finally:
            picked.close()
    backend = backend_for(record, record.host)
    offset = 0
    while True:
        chunk = backend.read_log(record, offset)
        if chunk:
            write(chunk)
            offset += len(chunk)
        if not follow:
            return
        state = backend.state(record)
        # a preempted SLURM job requeues itself, unless it was cancelled (since `record` was read)
        if state in ("completed", "failed", "cancelled", "unknown") or (
            state == "preempted"
            and (record.backend != "slurm" or records.load(record.name).cancelled)
        ):
            rest = backend.read_log(record, offset)
            if rest:
                write(rest)
            return
        time.sleep(poll_seconds)


def cancel(record: records.Record) -> None:
    """Stop a run (it checkpoints on SIGTERM) and remember that it was cancelled; a run that has
    ended keeps its state."""
    backend = backend_for(record, record.host)
    state = backend.state(record)
    if state not in ACTIVE:
        raise UserError(f"{record.name} is {state} already; there is nothing to cancel")
    backend.cancel(record)
    record.cancelled = True
    records.save(record)
