"""Local records of submissions, so `status`, `logs` and `cancel` work for every backend.

One JSON file per run name under `$THESEUS_HOME/runs/` (default `~/.theseus/runs/`). Host
settings are kept without their `env` (which may hold secrets).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from theseus.base.files import atomic_write
from theseus.errors import UserError
from theseus.job import check_name


def home() -> Path:
    return Path(os.environ.get("THESEUS_HOME") or "~/.theseus").expanduser()


@dataclass
class Record:
    """One submission: where it runs, its id there, and where its files are."""

    name: str
    host_name: str
    backend: str
    backend_id: str
    job_dir: str
    root: str
    project: str
    group: str
    snapshot: str
    host: dict[str, Any] | None = None
    submitted_at: float = field(default_factory=time.time)
    cancelled: bool = False

    @property
    def log(self) -> str:
        return f"{self.job_dir}/output.log"

    @property
    def run_dir(self) -> str:
        return f"{self.root}/runs/{self.project}/{self.group}/{self.name}"

    @property
    def metrics(self) -> str:
        return f"{self.run_dir}/metrics.jsonl"


def _path(name: str) -> Path:
    return home() / "runs" / f"{check_name('run name', name)}.json"


@contextlib.contextmanager
def claimed(name: str) -> Iterator[None]:
    """Hold run name `name` while a submission checks its previous run and records the new one:
    two submissions of one name at once would otherwise both start."""
    path = _path(name).with_suffix(".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise UserError(
            f"cannot keep run records in {path.parent} ({exc.strerror or exc}); set THESEUS_HOME "
            "to a writable folder"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save(record: Record) -> None:
    atomic_write(_path(record.name), json.dumps(asdict(record), indent=2))


def load(name: str) -> Record:
    path = _path(name)
    if not path.exists():
        raise UserError(f"no submitted run named {name!r}; `theseus status` lists them")
    try:
        return Record(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}); delete it to forget this run") from None


def all_records() -> list[Record]:
    folder = home() / "runs"
    found = folder.glob("*.json") if folder.exists() else []
    # a dot-file is a record being written (atomic_write's temporary file), not a run
    names = sorted(p.stem for p in found if not p.name.startswith("."))
    return sorted((load(n) for n in names), key=lambda r: r.submitted_at)
