"""Reading a run's files where they are: on this machine directly, or on the host a submitted run
went to, through the same shell `theseus logs` uses (ssh, with its connection reuse). Only reads:
the dashboard never writes a run's folder."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from theseus.dashboard.series import LocalSource, Source
from theseus.dispatch.backends import Shell

# what the run page shows of a log, a config and a sample file at most
LOG_TAIL = 64 * 1024
TEXT_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Checkpoint:
    step: int
    written: float  # epoch seconds
    size: int  # bytes


class Files(Protocol):
    """The reads the dashboard makes of one host's files (paths as that host names them)."""

    where: str

    def source(self, path: str) -> Source: ...

    def tail(self, path: str, size: int = LOG_TAIL) -> bytes: ...

    def text(self, path: str, limit: int = TEXT_LIMIT) -> str | None: ...

    def checkpoints(self, folder: str) -> list[Checkpoint]: ...

    def listing(self, folder: str) -> list[str]: ...


class LocalFiles:
    where = "this machine"

    def source(self, path: str) -> Source:
        return LocalSource(Path(path))

    def tail(self, path: str, size: int = LOG_TAIL) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - size))
                return f.read(size)
        except OSError:
            return b""

    def text(self, path: str, limit: int = TEXT_LIMIT) -> str | None:
        try:
            with open(path, "rb") as f:
                return f.read(limit).decode(errors="replace")
        except OSError:
            return None

    def checkpoints(self, folder: str) -> list[Checkpoint]:
        """Complete checkpoints (a step folder with its `meta` item), oldest first."""
        found = []
        for step in sorted(int(d) for d in self.listing(folder) if d.isdigit()):
            meta = Path(folder, str(step), "meta")
            try:
                written = meta.stat().st_mtime
            except OSError:
                continue  # still being written
            size = sum(f.stat().st_size for f in Path(folder, str(step)).rglob("*") if f.is_file())
            found.append(Checkpoint(step, written, size))
        return found

    def listing(self, folder: str) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except OSError:
            return []


class ShellFiles:
    """A host's files through its dispatch shell: one command per read, every path quoted."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.where = shell.where

    def _run(self, command: str) -> bytes:
        result = self.shell.run(command, timeout=30)
        return result.stdout if result.returncode == 0 else b""

    def source(self, path: str) -> Source:
        return ShellSource(self, path)

    def tail(self, path: str, size: int = LOG_TAIL) -> bytes:
        return self._run(f"tail -c {int(size)} -- {shlex.quote(path)} 2>/dev/null || true")

    def text(self, path: str, limit: int = TEXT_LIMIT) -> str | None:
        q = shlex.quote(path)
        result = self.shell.run(f"head -c {int(limit)} -- {q}", timeout=30)
        return result.stdout.decode(errors="replace") if result.returncode == 0 else None

    def checkpoints(self, folder: str) -> list[Checkpoint]:
        q = shlex.quote(folder)
        out = self._run(
            f'cd {q} 2>/dev/null || exit 0; for d in [0-9]*; do [ -e "$d/meta" ] && '
            'printf \'%s %s %s\\n\' "$d" "$(stat -c %Y "$d/meta")" "$(du -sb "$d" | cut -f1)"; '
            "done; true"
        )
        found = []
        for line in out.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                found.append(Checkpoint(int(parts[0]), float(parts[1]), int(parts[2])))
        return sorted(found, key=lambda c: c.step)

    def listing(self, folder: str) -> list[str]:
        out = self._run(f"ls -1A -- {shlex.quote(folder)} 2>/dev/null || true")
        return sorted(out.decode(errors="replace").splitlines())


@dataclass
class ShellSource:
    """A metrics file on a remote host: its identity and size, then the new bytes, in one call."""

    files: ShellFiles
    path: str

    def read_from(self, identity: str | None, offset: int) -> tuple[str | None, bytes, bool]:
        q = shlex.quote(self.path)
        known = shlex.quote(identity or "-")
        out = self.files._run(
            f"s=$(stat -Lc '%d:%i %s' -- {q} 2>/dev/null) || exit 0; printf '%s\\n' \"$s\"; "
            f'if [ "${{s% *}}" != {known} ] || [ "${{s#* }}" -lt {int(offset)} ]; '
            f"then cat -- {q}; else tail -c +{int(offset) + 1} -- {q}; fi"
        )
        if not out:
            return None, b"", identity is not None
        head, _, data = out.partition(b"\n")
        now, _, size = head.decode(errors="replace").partition(" ")
        replaced = now != identity or (size.isdigit() and int(size) < offset)
        return now, data, replaced
