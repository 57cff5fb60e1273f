"""Files on disk: atomic writes, writable output folders, and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from theseus.errors import UserError

_HASH_CHUNK = 1 << 23  # read in pieces: a token shard need not fit in memory to be hashed


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a crash never leaves half a file."""
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_output(path: Path, what: str = "") -> Iterator[Path]:
    """A temporary file to write in the block; it becomes `path` only once the block is done.

    A failed write removes it and says why in one line (`what` names the writer, e.g. "plot")."""
    if path.name in ("", ".", ".."):
        raise UserError(f"cannot write {str(path)!r}: not a file name; give one, e.g. train.yaml")
    if path.is_symlink():  # the file it links to is the one to update, the link stays
        path = path.resolve()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = unwritable(path.parent) or exc.strerror or str(exc)
        prefix = f"{what}: " if what else ""
        raise UserError(f"{prefix}cannot write {path}: {why}; choose another path") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written under `folder` (made if need be), or None; creates nothing."""
    existing = next(p for p in [folder.absolute(), *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror or exc})"


def require_output_folder(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any job starts."""
    why = unwritable(out)
    if why:
        raise UserError(f"cannot use output folder {out}: {why}; choose another OUT")


def sha256_hex(content: bytes | Path) -> str:
    """The hex SHA-256 of `content`: the bytes themselves, or the file a path names."""
    digest = hashlib.sha256()
    if isinstance(content, Path):
        with content.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    else:
        digest.update(content)
    return digest.hexdigest()
