"""The running interpreter's standard library as a corpus: needs no network, always the same order."""

from __future__ import annotations

import os
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

    _files: list[Path] | None = None

    def files(self) -> list[Path]:
        if self._files is None:
            root = sysconfig.get_paths()["stdlib"]
            found: list[
                tuple[str, str]
            ] = []  # (path relative to root, with "/", for sorting; path)
            for folder, subfolders, names in os.walk(root):
                subfolders[:] = [d for d in subfolders if d not in _SKIP]
                relative = os.path.relpath(folder, root).replace(os.sep, "/")
                prefix = "" if relative == "." else relative + "/"
                found += [(prefix + n, os.path.join(folder, n)) for n in names if n.endswith(".py")]
            self._files = [Path(path) for _, path in sorted(found)]
        return self._files

    def describe(self) -> dict[str, Any]:
        return {"name": self.config.name, "python": sys.version.split()[0]}

    def size_hint(self) -> int | None:
        return len(self.files())

    def documents(self) -> Iterator[Document]:
        for path in self.files():
            yield path.read_bytes().decode("utf-8", errors="replace")
