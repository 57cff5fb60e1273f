"""Local files: .txt read directly; .jsonl / .json / .parquet / .csv through Hugging Face `datasets`."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from theseus.data.datasets.base import Document, HeldOut, Source, table_documents
from theseus.errors import UserError, first_line
from theseus.registry import dataset

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def expand(patterns: list[str], what: str) -> list[Path]:
    """Every file the paths/globs name, once, in the order given (each glob sorted); none missing."""
    if not patterns:
        raise UserError(
            f"{what} needs data.paths: local files or globs, e.g. data.paths=[corpus/*.jsonl]"
        )
    files: list[Path] = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        # a file that exists is taken as named, even when its name holds glob characters ("[1]")
        literal = Path(expanded).is_file() or not glob.has_magic(expanded)
        matches = [expanded] if literal else sorted(glob.glob(expanded, recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise UserError(f"data.paths: {pattern!r} matches no file")
        files += [Path(m).resolve() for m in matches]
    files = list(dict.fromkeys(files))  # overlapping globs name a file once
    for path in files:
        if path.suffix.lower() not in BUILDERS:
            raise UserError(
                f"data.paths: {path} has an unsupported type; use {', '.join(BUILDERS)}"
            )
    return files


def text_documents(path: Path, separator: str | None) -> Iterator[str]:
    """A .txt file: one document, or one per piece between separators (empty pieces skipped)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); convert it, "
            f"e.g. `iconv -f latin1 -t utf-8`, or leave it out of data.paths"
        ) from None
    if not separator:
        yield text
        return
    for piece in text.split(separator):
        if piece.strip():
            yield piece


def _layout(path: Path) -> tuple[str, tuple[str, ...] | str]:
    """A file's builder and, for tables, its columns (with their types) as far as cheaply known,
    else its own path. Consecutive files are read in one load only when these agree, because
    one load takes the first file's schema (CSV columns are all read as text: names suffice)."""
    builder = BUILDERS[path.suffix.lower()]
    if builder == "text":
        return (builder, ())
    try:
        if builder == "parquet":
            import pyarrow.parquet

            schema = pyarrow.parquet.read_schema(path)
            return (builder, tuple(f"{f.name}:{f.type}" for f in schema))
        with path.open(encoding="utf-8") as f:
            if builder == "csv":
                return (builder, tuple(next(csv.reader(f), [])))
            if path.suffix.lower() == ".jsonl":
                first = next((line for line in f if line.strip()), "")
                row = json.loads(first)
                if isinstance(row, dict):
                    return (
                        builder,
                        tuple(f"{k}:{type(v).__name__}" for k, v in sorted(row.items())),
                    )
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        pass  # read alone, so that its own load names what is wrong with it
    return (builder, str(path))


@dataset("files")
class LocalFiles(Source):
    """Local text, JSON lines, JSON, Parquet or CSV files named by data.paths (and .txt files
    held out for validation by data.val_paths)."""

    reads_val_paths = True

    def check(self) -> None:
        self.files = expand(self.config.paths, "data.name=files")
        self.val_files = (
            expand(self.config.val_paths, "data.val_paths") if self.config.val_paths else []
        )
        for path in self.val_files:
            if path.suffix.lower() != ".txt":
                raise UserError(
                    f"data.val_paths: {path} is not a .txt file; only text is held out whole"
                )
            if path in self.files:
                raise UserError(
                    f"data.val_paths: {path} is in data.paths too; a file is for training or for "
                    "validation, not both"
                )

    def describe(self) -> dict[str, Any]:
        def stat(p: Path) -> dict[str, Any]:
            return {"path": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}

        return {
            "name": self.config.name,
            "files": [stat(p) for p in self.files],
            **({"val_files": [stat(p) for p in self.val_files]} if self.val_files else {}),
            "text_column": self.config.text_column,
            "chat_column": self.config.chat_column,
            "separator": self.config.separator,
        }

    def size_hint(self) -> int | None:
        if self.config.separator is None and all(p.suffix.lower() == ".txt" for p in self.files):
            return len(self.files) + len(self.val_files)
        return None

    def documents(self) -> Iterator[Document]:
        files = [p for p in self.files if p.stat().st_size > 0]  # an empty file holds no document
        for (builder, columns), group in groupby(files, key=_layout):
            paths = list(group)
            if builder == "text":
                for path in paths:
                    yield from text_documents(path, self.config.separator)
            else:
                yield from self._table_documents(builder, paths, columns)
        for path in self.val_files:
            for text in text_documents(path, self.config.separator):
                yield HeldOut(text)

    def _table_documents(
        self, builder: str, paths: list[Path], columns: tuple[str, ...] | str
    ) -> Iterator[Document]:
        import datasets

        where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
        options: dict[str, Any] = {}
        if builder == "csv" and isinstance(columns, tuple):  # a column of numbers is still text
            options["features"] = datasets.Features({c: datasets.Value("string") for c in columns})
        try:
            # datasets logs a failed read before raising it; the error below says it in one line
            with _quiet(datasets.logging):
                table = datasets.load_dataset(
                    builder,
                    data_files=[str(p) for p in paths],
                    split="train",
                    streaming=True,
                    **options,
                )
                yield from table_documents(table, self.config, where)
        except UserError:
            raise
        except Exception as exc:  # datasets raises many types for unreadable files
            raise UserError(f"cannot read {where} as {builder}: {first_line(exc)}") from None


@contextlib.contextmanager
def _quiet(logging: Any) -> Iterator[None]:
    """Silence the `datasets` library's logger while reading."""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        logging.set_verbosity(level)
