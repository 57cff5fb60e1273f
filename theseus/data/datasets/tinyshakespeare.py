"""Tiny Shakespeare (about 1 MB): a local copy, or a download checked against a pinned hash."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from theseus.base.files import sha256_hex
from theseus.data.datasets.base import Document, Source
from theseus.data.datasets.files import text_documents
from theseus.errors import UserError
from theseus.registry import dataset

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_TIMEOUT_S = 10.0


def cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "theseus" / "tinyshakespeare.txt"


@dataset("tinyshakespeare")
class TinyShakespeare(Source):
    """Tiny Shakespeare: data.paths=[local copy], else downloaded once and verified by sha256."""

    def check(self) -> None:
        if len(self.config.paths) > 1:
            raise UserError(
                f"data.paths: tinyshakespeare reads one local copy, got {len(self.config.paths)} "
                "paths; give one, or use data.name=files for several files"
            )
        if self.config.paths:
            self.path = Path(self.config.paths[0]).expanduser().resolve()
            if not self.path.is_file():
                raise UserError(f"data.paths: {self.config.paths[0]} is not a file")
            return
        self.path = cache_path()
        if self.path.is_file() and sha256_hex(self.path) == SHA256:
            return
        self._download()

    def _download(self) -> None:
        fix = "download it yourself and pass data.paths=[/path/to/input.txt], or use data.name=pystdlib"
        try:
            with urllib.request.urlopen(URL, timeout=_TIMEOUT_S) as response:
                data = response.read()
        except OSError as exc:
            raise UserError(
                f"cannot download tinyshakespeare ({getattr(exc, 'reason', exc)}); {fix}"
            ) from None
        if sha256_hex(data) != SHA256:
            raise UserError(f"the tinyshakespeare download does not match its pinned sha256; {fix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "sha256": sha256_hex(self.path),
            "separator": self.config.separator,
        }

    def size_hint(self) -> int | None:
        return 1 if not self.config.separator else None

    def documents(self) -> Iterator[Document]:
        yield from text_documents(self.path, self.config.separator)
