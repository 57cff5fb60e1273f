"""Token stores: a folder with `manifest.json` and flat binary shards read by `np.memmap`.

Layout of `<root>/data/<store>/`::

    manifest.json                  format + version, kind, tokenizer identity and hash, vocab size,
                                   end-of-text id, dtype, source, settings, and per split its shards
                                   (rows, tokens, documents, and each file's size and sha256)
    train-00000.tokens.bin ...     shards of the "train" and "val" splits
    tokenizer.json                 a copy of a Hugging Face tokenizer, when one was used

Two kinds. `variable`: one token stream per split, documents each followed by the end-of-text id.
`blockwise`: fixed-size examples; `tokens` rows hold `seq_len + 1` ids (inputs and targets),
`loss_mask` rows `seq_len` flags (one per target), `lengths` the real (unpadded) token count.

A store is written in `<store>.partial/` and renamed into place when complete, so a store folder
that exists is whole. `StoreWriter` commits progress after every batch of documents; a writer
killed at any moment resumes from its last commit and produces the same bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from theseus.base.files import sha256_hex
from theseus.errors import UserError
from theseus.job import check_name

FORMAT = "theseus-token-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SPLITS = ("train", "val")
KINDS = ("variable", "blockwise")


def check_store_name(kind: str, name: str) -> str:
    """A store's folder name under `<root>/data`: safe as a path (see `check_name`), and not
    `X.partial`, the folder store X is written in (tokenizing X resumes or deletes it)."""
    check_name(kind, name)
    if name.endswith(".partial"):
        raise UserError(
            f"bad {kind} {name!r}: a name ending in '.partial' is the folder of an unfinished "
            "store; choose another name"
        )
    return name


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def arrays_of(kind: str, dtype: str, seq_len: int | None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The files of one shard: name -> (dtype, shape of one row)."""
    if kind == "variable":
        return {"tokens": (dtype, ())}
    assert seq_len is not None
    return {
        "tokens": (dtype, (seq_len + 1,)),
        "loss_mask": ("uint8", (seq_len,)),
        "lengths": ("int32", ()),
    }


@dataclass
class Manifest:
    """What a store holds. `splits[split]` = {n_rows, n_tokens, n_docs, shards: [...]}."""

    kind: str
    vocab_size: int
    eot_id: int
    dtype: str
    tokenizer: dict[str, str]
    source: dict[str, Any]
    settings: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    seq_len: int | None = None
    padding: str | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: Path) -> Manifest:
        """The manifest of the store at `where`; a one-line UserError when it is damaged."""
        file = where / MANIFEST
        fix = f"delete {where} and tokenize again (or re-run its tokenize job with --fresh)"
        try:
            data = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise UserError(f"{file} is not valid JSON ({reason}); {fix}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(
                f"{where} is not a theseus token store; write one with data/tokenize_variable_dataset"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{where}: token store format version {data.get('format_version')!r}, this theseus reads "
                f"version {FORMAT_VERSION}; re-tokenize with this version (theseus run ... --fresh)"
            )
        try:
            manifest = cls(**data)
        except TypeError as exc:
            raise UserError(
                f"{file} does not match format version {FORMAT_VERSION} ({exc}); {fix}"
            ) from None
        problem = manifest._damage()
        if problem:
            raise UserError(f"{file} is damaged: {problem}; {fix}")
        return manifest

    def _damage(self) -> str | None:
        """What in this manifest cannot describe a store (a hand edit, a torn write), or None."""
        if self.kind not in KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(KINDS)}"
        if self.dtype not in ("uint16", "uint32"):
            return f"dtype {self.dtype!r} is not uint16 or uint32"
        if self.kind == "blockwise" and not (isinstance(self.seq_len, int) and self.seq_len > 0):
            return f"a blockwise store with seq_len {self.seq_len!r}"
        if not isinstance(self.splits, dict):
            return "'splits' is not a table"
        arrays = arrays_of(self.kind, self.dtype, self.seq_len)
        for split, entry in self.splits.items():
            shards = entry.get("shards") if isinstance(entry, dict) else None
            if not isinstance(shards, list):
                return f"split {split!r} has no list of shards"
            for i, shard in enumerate(shards):
                files = shard.get("files") if isinstance(shard, dict) else None
                whole = (
                    isinstance(files, dict)
                    and all(isinstance(shard.get(k), int) for k in ("n_rows", "n_tokens", "n_docs"))
                    and all(
                        isinstance(f := files.get(a), dict)
                        and isinstance(f.get("file"), str)
                        and isinstance(f.get("bytes"), int)
                        and isinstance(f.get("sha256"), str)
                        for a in arrays
                    )
                )
                if not whole:
                    return f"shard {i} of split {split!r} lacks its counts or files"
        return None


class TokenStore:
    """A finished store, opened for reading; `open()` verifies every shard's size and checksum."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays = arrays_of(manifest.kind, manifest.dtype, manifest.seq_len)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> TokenStore:
        """Open the store at `path`; `verify=False` checks sizes but skips the checksums."""
        path = Path(path).expanduser().resolve()
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            hint = (
                " (an unfinished tokenize run; run it again to finish)"
                if path.with_name(path.name + ".partial").exists()
                else ""
            )
            raise UserError(
                f"no token store at {path}{hint}; write one with data/tokenize_variable_dataset"
            )
        manifest = Manifest.from_json(manifest_path.read_bytes(), path)
        store = cls(path, manifest)
        store.check(verify)
        return store

    def check(self, checksums: bool = True) -> None:
        """Raise a one-line UserError for a missing, truncated or altered shard."""
        for split in SPLITS:
            for shard in self.shards(split):
                for entry in shard["files"].values():
                    file = self.path / entry["file"]
                    size = file.stat().st_size if file.is_file() else None
                    fix = "re-run the tokenize job with --fresh"
                    if size is None:
                        raise UserError(
                            f"token store {self.path}: shard {entry['file']} is missing; {fix}"
                        )
                    if size != entry["bytes"]:
                        raise UserError(
                            f"token store {self.path}: shard {entry['file']} is truncated or grown "
                            f"({size} bytes, manifest says {entry['bytes']}); {fix}"
                        )
                    if checksums and sha256_hex(file) != entry["sha256"]:
                        raise UserError(
                            f"token store {self.path}: shard {entry['file']} was altered (sha256 differs); {fix}"
                        )

    def shards(self, split: str) -> list[dict[str, Any]]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self.manifest.splits.get(split, {}).get("shards", [])

    def n_tokens(self, split: str) -> int:
        """Tokens in `split` (blockwise: real tokens, padding excluded)."""
        return sum(s["n_tokens"] for s in self.shards(split))

    def n_rows(self, split: str) -> int:
        """Tokens (variable) or examples (blockwise) in `split`."""
        return sum(s["n_rows"] for s in self.shards(split))

    def n_docs(self, split: str) -> int:
        return sum(s["n_docs"] for s in self.shards(split))

    def memmaps(self, split: str, array: str = "tokens") -> list[np.memmap]:
        """Read-only views of one array of every shard of `split`, in order."""
        dtype, row = self._arrays[array]
        maps = []
        for shard in self.shards(split):
            if shard["n_rows"] == 0:
                continue
            file = self.path / shard["files"][array]["file"]
            maps.append(
                np.memmap(file, dtype=np.dtype(dtype), mode="r", shape=(shard["n_rows"], *row))
            )
        return maps

    def tokenizer(self) -> Any:
        """The tokenizer that wrote this store (its own copy of a Hugging Face file if need be)."""
        from theseus.data.tokenizers import load_tokenizer

        return load_tokenizer(self.manifest.tokenizer, fallback=self.path / "tokenizer.json")


@dataclass
class _OpenShard:
    index: int
    n_rows: int = 0
    n_tokens: int = 0
    n_docs: int = 0
    bytes: dict[str, int] = field(default_factory=dict)


class StoreWriter:
    """Writes a store in `<final>.partial/`, committing after each batch so a kill loses one batch.

    Rows are cut into shards of exactly `shard_rows` (the last may be shorter), so shard bounds
    depend only on the data, not on batch sizes or where a run was interrupted.
    """

    def __init__(self, final: Path, manifest: Manifest, shard_rows: int) -> None:
        self.final = final
        self.partial = final.with_name(final.name + ".partial")
        self.manifest = manifest
        self.shard_rows = max(1, shard_rows)
        self.arrays = arrays_of(manifest.kind, manifest.dtype, manifest.seq_len)
        self.fingerprint = {
            "kind": manifest.kind,
            "tokenizer": manifest.tokenizer,
            "source": manifest.source,
            "settings": manifest.settings,
        }
        self.docs_read = 0
        self.stats: dict[str, int] = {}
        self.closed: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self.open: dict[str, _OpenShard] = {s: _OpenShard(0) for s in SPLITS}
        self.pending: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in SPLITS}

    def _progress(self) -> dict[str, Any] | None:
        """The partial folder's last commit, if it was made with these settings."""
        progress_path = self.partial / PROGRESS
        if not progress_path.is_file():
            return None
        try:
            progress = json.loads(progress_path.read_bytes())
        except ValueError:  # damaged: the partial folder is rebuilt rather than trusted
            return None
        if not isinstance(progress, dict):
            return None
        if progress.get("fingerprint") != json.loads(json.dumps(self.fingerprint)):
            return None
        return progress

    def can_resume(self) -> bool:
        """Whether the partial folder holds progress made with these settings."""
        return self._progress() is not None

    def resume(self) -> bool:
        """Pick up the partial folder's last commit; False (and a clean folder) when starting over."""
        progress = self._progress()
        if progress is not None:
            self.docs_read = progress["docs_read"]
            self.stats = progress["stats"]
            self.closed = progress["closed"]
            self.open = {s: _OpenShard(**o) for s, o in progress["open"].items()}
            self._trim()
            return True
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self._commit_progress()
        return False

    def _file(self, split: str, index: int, array: str) -> Path:
        return self.partial / f"{split}-{index:05d}.{array}.bin"

    def _trim(self) -> None:
        """Drop whatever was written after the last commit."""
        for split, shard in self.open.items():
            for array in self.arrays:
                path = self._file(split, shard.index, array)
                with path.open("ab") as f:
                    f.truncate(shard.bytes.get(array, 0))
        known = {self._file(s, o.index, a).name for s, o in self.open.items() for a in self.arrays}
        known |= {
            e["file"]
            for shards in self.closed.values()
            for s in shards
            for e in s["files"].values()
        }
        for path in self.partial.glob("*.bin"):
            if path.name not in known:
                path.unlink()

    def add(self, split: str, arrays: dict[str, np.ndarray]) -> None:
        """Queue rows for `split`; they reach disk at the next `commit()`."""
        self.pending[split].append(arrays)

    def commit(self, docs_read: int, stats: dict[str, int]) -> None:
        """Write every queued row, then record that `docs_read` source documents are done."""
        for split in SPLITS:
            batches, self.pending[split] = self.pending[split], []
            if not batches:
                continue
            merged = {a: np.concatenate([b[a] for b in batches]) for a in self.arrays}
            self._write(split, merged)
        self.docs_read = docs_read
        self.stats = dict(stats)
        self._commit_progress()

    def _write(self, split: str, arrays: dict[str, np.ndarray]) -> None:
        total = len(arrays["tokens"])
        start = 0
        while start < total:
            shard = self.open[split]
            take = min(self.shard_rows - shard.n_rows, total - start)
            part = {a: np.ascontiguousarray(v[start : start + take]) for a, v in arrays.items()}
            for array, values in part.items():
                with self._file(split, shard.index, array).open("ab") as f:
                    f.write(values.tobytes())
                shard.bytes[array] = shard.bytes.get(array, 0) + values.nbytes
            shard.n_rows += take
            shard.n_tokens += self._tokens_in(part)
            shard.n_docs += self._docs_in(part)
            start += take
            if shard.n_rows == self.shard_rows:
                self._close(split)

    def _tokens_in(self, part: dict[str, np.ndarray]) -> int:
        if self.manifest.kind == "variable":
            return len(part["tokens"])
        return int(part["lengths"].sum())

    def _docs_in(self, part: dict[str, np.ndarray]) -> int:
        """Examples (blockwise), or documents ended in this part (variable: each ends with EOT)."""
        if self.manifest.kind == "blockwise":
            return len(part["tokens"])
        return int(np.count_nonzero(part["tokens"] == self.manifest.eot_id))

    def _close(self, split: str) -> None:
        shard = self.open[split]
        if shard.n_rows:
            files = {}
            for array in self.arrays:
                path = self._file(split, shard.index, array)
                files[array] = {
                    "file": path.name,
                    "bytes": path.stat().st_size,
                    "sha256": sha256_hex(path),
                }
            self.closed[split].append(
                {
                    "n_rows": shard.n_rows,
                    "n_tokens": shard.n_tokens,
                    "n_docs": shard.n_docs,
                    "files": files,
                }
            )
            self.open[split] = _OpenShard(shard.index + 1)

    def _commit_progress(self) -> None:
        progress = {
            "fingerprint": self.fingerprint,
            "docs_read": self.docs_read,
            "stats": self.stats,
            "closed": self.closed,
            "open": {s: asdict(o) for s, o in self.open.items()},
        }
        tmp = self.partial / (PROGRESS + ".tmp")
        tmp.write_text(json.dumps(progress, sort_keys=True), encoding="utf-8")
        tmp.replace(self.partial / PROGRESS)

    def finish(self, extra_files: dict[str, Path] | None = None) -> TokenStore:
        """Close the last shards, write the manifest and move the store into place.

        No fsync: the rename makes a finished store appear whole to other processes, and after a
        power loss a torn shard fails its checksum when the store is opened with verify=True.
        """
        for split in SPLITS:
            self._close(split)
            for array in self.arrays:
                empty = self._file(split, self.open[split].index, array)
                if empty.exists():
                    empty.unlink()
        self.manifest.splits = {
            split: {
                "n_rows": sum(s["n_rows"] for s in self.closed[split]),
                "n_tokens": sum(s["n_tokens"] for s in self.closed[split]),
                "n_docs": sum(s["n_docs"] for s in self.closed[split]),
                "shards": self.closed[split],
            }
            for split in SPLITS
        }
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, self.partial / name)
        (self.partial / MANIFEST).write_text(self.manifest.to_json(), encoding="utf-8")
        (self.partial / PROGRESS).unlink()
        self.partial.replace(self.final)
        return TokenStore.open(
            self.final, verify=False
        )  # checksums were just computed from these files
