"""One writer at a time: an exclusive lock on a hidden file beside what is being written."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from theseus.errors import UserError


@contextlib.contextmanager
def exclusive(guarded: Path, what: str) -> Iterator[None]:
    """Hold the lock of `guarded` (the hidden file `.NAME.lock` beside it) while the block runs;
    refuse at once if another process holds it.

    The file names its holder (process id and host) for the error message; it is removed on
    release, with any folder made for it that is still empty. A process that dies releases its
    lock with it (flock), so nothing stale blocks a later run, also across hosts on a shared file
    system that supports flock (NFS, JuiceFS).
    """
    path = guarded.with_name(f".{guarded.name}.lock")
    made = [folder for folder in path.parents if not folder.exists()]  # deepest first
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its folder is not there (yet, or any more: see below)
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{what} is being written by {holder}; wait for it to finish, or stop it first"
            ) from None
        # the holder before us may have removed the file after we opened it: lock the new one
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        # folders made only for the lock go with it: a job that failed leaves nothing behind
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # holds something now
                break
