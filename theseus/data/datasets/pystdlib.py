"""The running interpreter's standard library as a corpus: needs no network, always the same order."""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from theseus.data.datasets.base import Document, Source
from theseus.registry import dataset

_SKIP = {"site-packages", "dist-packages", "__pycache__"}


@dataset("pystdlib")
class PythonStdlib(Source):
    """The .py files of Python's standard library, one document each, sorted by path."""

    def files(self) -> list[Path]:
        root = Path(sysconfig.get_paths()["stdlib"])
        found = [p for p in root.rglob("*.py") if not _SKIP.intersection(p.relative_to(root).parts)]
        return sorted(found, key=lambda p: p.relative_to(root).as_posix())

    def describe(self) -> dict[str, Any]:
        return {"name": self.config.name, "python": sys.version.split()[0]}

    def size_hint(self) -> int | None:
        return len(self.files())

    def documents(self) -> Iterator[Document]:
        for path in self.files():
            yield path.read_bytes().decode("utf-8", errors="replace")
