"""`theseus configure` without importing the job: each job's schema kept as JSON in a cache.

Importing a trainer imports JAX and Flax, seconds before a single key is known, yet its schema
is data (theseus/config/stored.py). An entry lives under $XDG_CACHE_HOME/theseus/schemas
(default ~/.cache/theseus/schemas), one per job, --load list and Python, and holds the size and
modification time of every source file it came from: the theseus package's, the --load files',
and every other module imported while it was built. One of them changed, or a file added to the
package, and the entry is built again: it is never used stale. Until then the user's code is not
even loaded. A cache folder that cannot be written is passed over: configure is only slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from theseus.config import Schema
from theseus.config.stored import StoredSchema, Unstorable, schema_to_json
from theseus.registry import JOBS, REGISTRIES, load
from theseus.stages import JobSchemas

_FORMAT = 1  # of an entry; a change of layout must change it
_PACKAGE = Path(__file__).resolve().parent
# A file changed after its module was imported would be stamped with its new time, so an entry
# is not written while a file it depends on is newer than the start of this process (with room
# for the process' own start-up and for file systems that keep times in whole seconds).
_RACY_NS = 3 * 10**9
# entries not rewritten for this long go when another is written: those of old checkouts,
# folders and Pythons would otherwise pile up (an entry in use costs one rebuild a month)
_KEPT_NS = 30 * 24 * 3600 * 10**9


def cache_folder() -> Path:
    """Where entries are kept: $XDG_CACHE_HOME/theseus/schemas, else ~/.cache/theseus/schemas."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "theseus" / "schemas"


class SchemaCache(JobSchemas):
    """The schemas and registered names `configure` needs: from the cache while it holds them,
    else from the registries once the user's code (`loads`) is imported."""

    def __init__(self, loads: Sequence[str], folder: Path | None = None) -> None:
        self.loads = list(loads)
        self.folder = cache_folder() if folder is None else folder
        self._started_ns = time.time_ns()
        self._loaded = False
        self._entries: dict[str, dict[str, Any]] = {}  # by job: read or built by this process

    def schema(self, job: str) -> Schema:
        entry = self._entry(job)
        if entry is None:  # an unknown job (its error comes from the registry) or Unstorable
            return super().schema(job)
        return StoredSchema(entry["schema"], self._real_class, lambda: self._write(job, entry))

    def knows(self, job: str) -> bool:
        return self._entry(job) is not None or super().knows(job)

    def names(self, kind: str) -> list[str]:
        # the names depend on the code and the --load list, as every entry here does
        for entry in self._entries.values():
            return entry["names"][kind]
        self._load_user_code()
        return super().names(kind)

    def _entry(self, job: str) -> dict[str, Any] | None:
        if job not in self._entries:
            entry = self._read(job) or self._build(job)
            if entry is None:
                return None
            self._entries[job] = entry
        return self._entries[job]

    def _load_user_code(self) -> None:
        if not self._loaded:
            self._loaded = True
            for target in self.loads:
                load(target)

    def _real_class(self, module: str, qualname: str) -> type:
        """A class named in an entry, imported as a build would find it: after the user's code."""
        self._load_user_code()
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        return found

    def _build(self, job: str) -> dict[str, Any] | None:
        self._load_user_code()
        if job not in JOBS:
            return None
        try:
            schema = schema_to_json(JOBS[job].schema())
        except Unstorable:
            return None
        entry = {
            "format": _FORMAT,
            "files": _stamps(),
            "names": {kind: registry.names() for kind, registry in REGISTRIES.items()},
            "schema": schema,
        }
        self._write(job, entry)
        return entry

    def _path(self, job: str) -> Path:
        loads = [
            str(Path(t).expanduser().resolve()) if t.endswith(".py") or "/" in t else t
            for t in self.loads
        ]
        where = [os.path.abspath(p) for p in sys.path]  # what a --load MODULE resolves to
        python = [sys.executable, sys.version, platform.node()]
        key = [_FORMAT, job, loads, where, str(_PACKAGE), *python]
        return self.folder / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.json"

    def _read(self, job: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(job).read_text(encoding="utf-8"))
            fresh = entry["format"] == _FORMAT and _unchanged(entry["files"])
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or not one of ours
            return None
        return entry if fresh else None

    def _write(self, job: str, entry: dict[str, Any]) -> None:
        if any(mtime >= self._started_ns - _RACY_NS for _, mtime in entry["files"].values()):
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump(entry, f)
            os.replace(temporary, self._path(job))  # whole or not at all, with writers racing
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        for old in [*self.folder.glob("*.json"), *self.folder.glob("*.tmp")]:
            with contextlib.suppress(OSError):  # gone already: another process pruned it
                if old.stat().st_mtime_ns < self._started_ns - _KEPT_NS:
                    old.unlink()


def _stamps() -> dict[str, list[int]]:
    """[size, mtime_ns] of the package's sources and of every module imported so far."""
    paths = {str(p) for p in _PACKAGE.rglob("*.py")}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            paths.add(os.path.abspath(file))
    stamps = {}
    for path in sorted(paths):
        with contextlib.suppress(OSError):  # a module from a zip or frozen: nothing to stat
            stat = os.stat(path)
            stamps[path] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def _unchanged(stamps: dict[str, list[int]]) -> bool:
    if any(str(p) not in stamps for p in _PACKAGE.rglob("*.py")):
        return False  # a new module may register a name or a job
    for path, stamp in stamps.items():
        try:
            stat = os.stat(path)
        except OSError:
            return False
        if [stat.st_size, stat.st_mtime_ns] != stamp:
            return False
    return True
