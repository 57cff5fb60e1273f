"""Token stores several test packages build the same way."""

from __future__ import annotations

from pathlib import Path

from theseus.cli import main
from theseus.data.datasets import SourceConfig, open_source
from theseus.data.tokenizer_training import train_bpe


def write_bpe_store(root: Path, tokenize_yaml: Path) -> Path:
    """The standard library's text tokenized with a BPE of 300 ids trained on it, as the store
    `pystdlib-bpe` under `root`. Padded, its vocabulary size (384) is the bytes tokenizer's, so
    only a tokenizer check can tell the two apart."""
    bpe = train_bpe(open_source(SourceConfig(name="pystdlib")), 20, 300, 2, root / "bpe.json")
    overrides = [
        "tokenizer.backend=huggingface",
        f"tokenizer.name={bpe}",
        "data.store=pystdlib-bpe",
        "data.max_tokens=30000",
        "data.val_pct=10",
    ]
    assert main(["run", "tok-bpe", str(tokenize_yaml), str(root), *overrides]) == 0
    return root / "data" / "pystdlib-bpe"
