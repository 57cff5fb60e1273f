"""Content-addressed snapshots of the code a job runs.

A snapshot is the repository's tracked files as they are in the working tree (uncommitted changes
included), or as committed (`clean`), plus untracked files on request. Its id is a hash of every
path, mode and content, so a host that already holds a snapshot is never sent it again.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from theseus.errors import UserError


@dataclass(frozen=True)
class Snapshot:
    """Files of one snapshot: `files` maps a repository path to (mode, content)."""

    id: str
    files: dict[str, tuple[int, bytes]]

    def tarball(self) -> bytes:
        """A gzip tarball of the files, with fixed metadata so equal content gives equal bytes."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
            for path, (mode, content) in sorted(self.files.items()):
                info = tarfile.TarInfo(path)
                info.size = len(content)
                info.mode = mode
                info.mtime = 0
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()


def _git(repo: Path, *args: str) -> bytes:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True
        ).stdout
    except FileNotFoundError:
        raise UserError("git is not installed; install it to submit jobs") from None
    except subprocess.CalledProcessError as exc:
        problem = exc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(
            f"git {' '.join(args)} failed in {repo}: {problem[-1] if problem else exc}"
        ) from None


def repository_root(start: Path | None = None) -> Path:
    """The git checkout holding `start` (default: the current folder)."""
    start = (start or Path.cwd()).resolve()
    try:
        out = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise UserError("git is not installed; install it to submit jobs") from None
    if out.returncode != 0:
        raise UserError(f"{start} is not inside a git checkout; submit from your theseus checkout")
    return Path(out.stdout.strip())


def _mode(path: Path) -> int:
    return 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644


def take(repo: Path, *, clean: bool = False, untracked: bool = False) -> Snapshot:
    """Snapshot `repo`: the working tree's tracked files (or HEAD's, if `clean`), plus untracked."""
    files: dict[str, tuple[int, bytes]] = {}
    if clean:
        status = _git(repo, "status", "--porcelain", "--untracked-files=no").strip()
        if status:
            raise UserError(f"{repo} has uncommitted changes; commit them or submit with --dirty")
        for line in _git(repo, "ls-tree", "-r", "-z", "HEAD").split(b"\0"):
            if not line:
                continue
            meta, path = line.split(b"\t", 1)
            mode, kind, sha = meta.split()
            if kind != b"blob":
                continue
            name = _name(path)
            if mode == b"120000":  # the working tree is HEAD's here: its link's file is too
                target = _linked_file(repo, name)
                files[name] = (_mode(target), target.read_bytes())
                continue
            files[name] = (
                0o755 if mode == b"100755" else 0o644,
                _git(repo, "cat-file", "blob", sha.decode()),
            )
    else:
        listing = _git(
            repo,
            "ls-files",
            "-z",
            "--cached",
            *(["--others", "--exclude-standard"] if untracked else []),
        )
        for raw in sorted(set(listing.split(b"\0")) - {b""}):
            name = _name(raw)
            path = repo / name
            if path.is_symlink():
                path = _linked_file(repo, name)
            elif not path.is_file():
                continue  # deleted in the working tree, or a submodule
            files[name] = (_mode(path), path.read_bytes())
    digest = hashlib.sha256()
    for name, (mode, content) in sorted(files.items()):
        digest.update(f"{name}\0{mode:o}\0{len(content)}\0".encode())
        digest.update(content)
    return Snapshot(digest.hexdigest()[:20], files)


def _name(raw: bytes) -> str:
    """A repository path as text; one that is not UTF-8 cannot be named in the job's files."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise UserError(
            f"{os.fsdecode(raw)!r} in the repository is not a UTF-8 file name; rename it"
        ) from None


def _linked_file(repo: Path, name: str) -> Path:
    """The file the link `name` points to: the snapshot holds a copy of it under the link's name,
    which must be a file of the repository (the job's copy of the code has nothing else)."""
    target = (repo / name).resolve()
    try:
        target.relative_to(repo.resolve())
    except ValueError:
        raise UserError(
            f"{name} in {repo} links outside it (to {target}), where the job's copy of the code "
            "cannot follow; commit the file itself instead of the link"
        ) from None
    if not target.is_file():
        raise UserError(
            f"{name} in {repo} links to {target}, which is not a file; link a file, or commit "
            "the files themselves"
        )
    return target
