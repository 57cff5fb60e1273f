"""Shared helpers for the data tests: run the CLI, write small corpora, build stores directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from theseus.data.store import Manifest, StoreWriter, TokenStore, token_dtype

THESEUS = [sys.executable, "-m", "theseus.cli"]


def theseus(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess."""
    return subprocess.run(
        [*THESEUS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def configure_and_run(
    tmp: Path, job: str, name: str, *overrides: str, out: str = "out"
) -> subprocess.CompletedProcess:
    yaml_path = tmp / f"{name}.yaml"
    configured = theseus("configure", job, str(yaml_path), "--force", *overrides, cwd=tmp)
    assert configured.returncode == 0, configured.stderr
    return theseus("run", name, str(yaml_path), out, cwd=tmp)


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def write_stream_store(
    path: Path,
    splits: dict[str, np.ndarray],
    vocab_size: int,
    eot_id: int,
    shard_tokens: int = 1000,
    tokenizer: dict[str, str] | None = None,
) -> TokenStore:
    """A variable store holding exactly `splits` (token arrays), written by the real writer."""
    dtype = token_dtype(vocab_size)
    manifest = Manifest(
        kind="variable",
        vocab_size=vocab_size,
        eot_id=eot_id,
        dtype=dtype,
        tokenizer=tokenizer or {"backend": "bytes", "name": "test", "hash": f"vocab-{vocab_size}"},
        source={"name": "synthetic"},
        settings={},
        splits={},
    )
    writer = StoreWriter(path, manifest, shard_tokens)
    writer.resume()
    for split, tokens in splits.items():
        writer.add(split, {"tokens": tokens.astype(dtype)})
    writer.commit(1, {})
    return writer.finish()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A few local files of every supported type."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("First document.\n\nSecond paragraph of a.")
    (folder / "b.txt").write_text("Another file, one document.")
    rows = [{"text": f"json line number {i} " + "word " * (i % 7)} for i in range(40)]
    (folder / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i}+{i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
        }
        for i in range(12)
    ]
    (folder / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    return folder
