"""Tiny models shared by the model tests."""

from __future__ import annotations

from typing import Any

from flax import nnx

TINY = {"n_layers": 2, "n_heads": 4, "d_model": 32, "block_size": 32, "dtype": "float32"}


def tiny(cls: type, vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer, 32-wide float32 model of `cls` (GPT or Llama)."""
    config = cls.CONFIG(**{**TINY, "vocab_size": vocab_size, **overrides})
    return cls(config, rngs=nnx.Rngs(seed))
