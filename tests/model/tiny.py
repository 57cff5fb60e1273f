"""Tiny models shared by the model tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from theseus.model.models import Transformer, TransformerConfig

TINY = {"n_layers": 2, "n_heads": 4, "d_model": 32, "block_size": 32, "dtype": "float32"}


def tiny(preset: TransformerConfig, vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer, 32-wide float32 transformer of `preset` (GPT2 or LLAMA)."""
    config = dataclasses.replace(preset, **{**TINY, "vocab_size": vocab_size, **overrides})
    return Transformer(config, rngs=nnx.Rngs(seed))
