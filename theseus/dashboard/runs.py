"""The runs the dashboard can see: every run folder under the output roots it was given
(OUT/runs/PROJECT/GROUP/NAME), and every submitted run in the records, wherever it went.

A run is named in URLs by an id that is not a path: `K/PROJECT/GROUP/NAME` for the folder of
root number K, `@NAME` for a submitted run whose folder is not under a root. Each part must be a
plain name, and the folder it names must lie inside its root once links are resolved, so no URL
reaches a file outside the roots.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from theseus.dashboard.files import Files, LocalFiles, ShellFiles
from theseus.dashboard.series import LocalSource, MetricsFile
from theseus.dispatch import records
from theseus.dispatch.backends import Observation, backend_for
from theseus.dispatch.backends.local import LocalShell
from theseus.dispatch.records import Record
from theseus.dispatch.status_table import Figures, Plan, parse_plan
from theseus.errors import UserError

# how long the states read from hosts are reused: one round trip per host per interval,
# however many pages poll
OBSERVE_SECONDS = 2.0
# what is read of the end of a metrics file for the list: its latest training and validation
# lines are there (a validation every 500 steps, logged every 10, is ~50 lines back)
TAIL = 64 * 1024
_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")
_PLAIN = re.compile(r"[^/\x00]+")


class NotFound(UserError):
    """A run id that names no run the dashboard may show."""


@dataclass
class Run:
    """One run: where its files are (on which host) and its submission, if it was submitted."""

    id: str
    name: str
    project: str
    group: str
    root: str
    files: Files
    record: Record | None = None

    @property
    def folder(self) -> str:
        return f"{self.root}/runs/{self.project}/{self.group}/{self.name}"

    @property
    def checkpoint_folder(self) -> str:
        return f"{self.root}/checkpoints/{self.project}/{self.group}/{self.name}"

    @property
    def host(self) -> str:
        return self.record.host_name if self.record else socket.gethostname()

    def resume_command(self) -> str:
        """The command that resumes this run (running an existing name resumes it)."""
        config = f"{self.folder}/config.yaml"
        where = ["-p", self.project, "-g", self.group]
        if self.record is None:
            words = ["theseus", "run", self.name, config, self.root, *where]
        else:
            cluster = (self.record.host or {}).get("cluster") or "local"
            if not isinstance(self.files, LocalFiles):
                config = "config.yaml"  # the page's config, saved here: its path is the host's
            words = ["theseus", "submit", self.name, config, *where, "--cluster", cluster]
        return shlex.join(words)


@dataclass
class _Tail:
    """The latest lines of a file, reread only when the file changed."""

    key: tuple[int, int, int] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    val: dict[str, Any] = field(default_factory=dict)


@dataclass
class _LogScan:
    """A log read incrementally for when the run started and its latest plan line."""

    source: LocalSource
    identity: str | None = None
    offset: int = 0
    started: float | None = None
    plan: Plan | None = None

    def refresh(self) -> None:
        identity, data, replaced = self.source.read_from(self.identity, self.offset)
        if replaced:
            self.offset, self.started, self.plan = 0, None, None
        self.identity = identity
        end = data.rfind(b"\n") + 1
        if not end:
            return
        chunk = data[:end]
        self.offset += end
        if self.started is None and (stamp := _STAMP.match(chunk)):
            self.started = calendar.timegm(time.strptime(stamp[1].decode(), "%Y-%m-%d %H:%M:%S"))
        self.plan = parse_plan(chunk) or self.plan


class Catalog:
    """Finds runs and keeps what was read of them (metrics, logs, host states) between requests."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self._lock = threading.Lock()
        self._metrics: dict[tuple[str, str], MetricsFile] = {}
        self._tails: dict[str, _Tail] = {}
        self._logs: dict[str, _LogScan] = {}
        self._observed: tuple[float, dict[str, Observation]] = (0.0, {})

    # -- finding runs ---------------------------------------------------------------------

    def runs(self) -> list[Run]:
        """Every run, folder runs first (by root, project, group, name), then the submitted runs
        whose folders are elsewhere; a submitted run whose folder is under a root is that run."""
        found: dict[str, Run] = {}
        for k, root in enumerate(self.roots):
            base = root / "runs"
            for project in _subfolders(base):
                for group in _subfolders(base / project):
                    for name in _subfolders(base / project / group):
                        run = Run(
                            f"{k}/{project}/{group}/{name}",
                            name,
                            project,
                            group,
                            str(root),
                            LocalFiles(),
                        )
                        found[run.folder] = run
        for record in _records():
            run = self._submitted(record)
            key = str(Path(run.folder).resolve()) if isinstance(run.files, LocalFiles) else ""
            if key in found:
                found[key].record = record
            else:
                found[f"@{record.name}"] = run
        return list(found.values())

    def get(self, run_id: str) -> Run:
        """The run an id names; NotFound for an id that names none or reaches outside a root."""
        if run_id.startswith("@"):
            try:
                record = records.load(run_id[1:])
            except UserError:
                raise NotFound(f"no run {run_id!r}") from None
            run = self._submitted(record)
            for other in self.runs():  # the same run as a folder under a root
                if other.record is not None and other.record.name == record.name:
                    return other
            return run
        parts = run_id.split("/")
        if len(parts) != 4 or not parts[0].isdigit() or int(parts[0]) >= len(self.roots):
            raise NotFound(f"no run {run_id!r}")
        k, project, group, name = int(parts[0]), *parts[1:]
        if not all(_PLAIN.fullmatch(p) and p not in (".", "..") for p in parts[1:]):
            raise NotFound(f"no run {run_id!r}")
        root = self.roots[k]
        folder = (root / "runs" / project / group / name).resolve()
        if not folder.is_relative_to(root) or not folder.is_dir():
            raise NotFound(f"no run {run_id!r}")
        run = Run(run_id, name, project, group, str(root), LocalFiles())
        for record in _records():
            if str(Path(record.run_dir).resolve()) == str(folder) and _is_local(record):
                run.record = record
        return run

    def _submitted(self, record: Record) -> Run:
        files: Files = LocalFiles() if _is_local(record) else ShellFiles(_shell(record))
        return Run(
            f"@{record.name}", record.name, record.project, record.group, record.root, files, record
        )

    # -- what a run is doing ----------------------------------------------------------------

    def observations(self, runs: list[Run]) -> dict[str, Observation]:
        """The states of the submitted runs among `runs`, read from their hosts at most once per
        OBSERVE_SECONDS."""
        from theseus.dispatch.control import observe

        chosen = [run.record for run in runs if run.record is not None]
        when, seen = self._observed
        if time.monotonic() - when > OBSERVE_SECONDS or any(r.name not in seen for r in chosen):
            seen = {r.name: o for r, o in zip(chosen, observe(chosen), strict=True)}
            self._observed = (time.monotonic(), seen)
        return seen

    def summary(self, run: Run, seen: Observation | None) -> dict[str, Any]:
        """One row of the run list: where it runs, its state and latest figures."""
        plan, started = None, None
        if isinstance(run.files, LocalFiles):
            train, val = self._tail(f"{run.folder}/metrics.jsonl")
            plan, started = self._log(f"{run.folder}/log.txt")
        elif seen is not None:
            train, val = _line(seen.train), _line(seen.val)
            plan = parse_plan(seen.plan) if seen.plan else None
        else:
            train, val = {}, {}
        if seen is not None:
            state, detail = seen.state, seen.detail
            if not train and not val:
                last = _line(seen.metrics)
                train = last if "loss" in last else {}
        else:
            state, detail = self._folder_state(run, train, plan)
        figures = Figures.of(train, val, plan, state == "running")
        if run.record is not None:
            started = run.record.submitted_at
        return {
            "id": run.id,
            "name": run.name,
            "project": run.project,
            "group": run.group,
            "host": run.host,
            "backend": run.record.backend if run.record else "folder",
            "submitted": run.record is not None,
            "state": state,
            "detail": detail,
            "started": started,
            **figures.as_dict(),
        }

    def metrics(self, run: Run) -> MetricsFile:
        key = (run.files.where, f"{run.folder}/metrics.jsonl")
        with self._lock:
            if key not in self._metrics:
                self._metrics[key] = MetricsFile(run.files.source(key[1]))
            return self._metrics[key]

    def _tail(self, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The latest training and validation lines of a local metrics file."""
        try:
            stat = os.stat(path)
        except OSError:
            return {}, {}
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            tail = self._tails.setdefault(path, _Tail())
        if tail.key != key:  # two requests may both read it: they find the same lines
            train: dict[str, Any] = {}
            val: dict[str, Any] = {}
            lines = LocalFiles().tail(path, TAIL).split(b"\n")
            for line in reversed(lines[1:] if stat.st_size > TAIL else lines):
                if train and val:
                    break
                record = _line(line)
                if not train and "loss" in record:
                    train = record
                elif not val and "val_loss" in record:
                    val = record
            tail.key, tail.train, tail.val = key, train, val
        return tail.train, tail.val

    def _log(self, path: str) -> tuple[Plan | None, float | None]:
        with self._lock:  # one read at a time: each moves the scan's offset
            scan = self._logs.setdefault(path, _LogScan(LocalSource(Path(path))))
            scan.refresh()
            return scan.plan, scan.started

    def _folder_state(self, run: Run, train: dict[str, Any], plan: Plan | None) -> tuple[str, str]:
        """A run started by `theseus run`: it holds a lock beside its folder while it runs."""
        lock = Path(run.root, "runs", run.project, run.group, f".{run.name}.lock")
        try:
            holder = lock.read_text(encoding="utf-8", errors="replace")
        except OSError:
            holder = None
        if holder is not None:
            match = re.fullmatch(r"process (\d+) on (.+)", holder.strip())
            if match is None or match[2] != socket.gethostname() or _alive(int(match[1])):
                return "running", holder.strip()
            return "stopped", f"its process ({match[1]}) is gone"
        step = train.get("step")
        if plan is not None and isinstance(step, int | float) and step >= plan.steps:
            return "completed", ""
        return "stopped", ""


def _records() -> list[Record]:
    try:
        return records.all_records()
    except UserError:  # a damaged record: the folders are still worth showing
        return []


def _is_local(record: Record) -> bool:
    """Its files are on this machine (the host is this machine, or a SLURM host with local sbatch)."""
    return isinstance(_shell(record), LocalShell)


def _shell(record: Record) -> Any:
    return backend_for(record, record.host).shell


def _subfolders(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != ".")
    except OSError:
        return []


def _line(line: str | bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) and "step" in record else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
