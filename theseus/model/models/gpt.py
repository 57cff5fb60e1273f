"""GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from theseus.model.models.transformer import Transformer, TransformerConfig
from theseus.registry import model


@dataclass(unsafe_hash=True)  # hashable: the config is static data of the model graph
class GPTConfig(TransformerConfig):
    """GPT-2 architecture; the defaults are GPT-2 small (12 layers, 768 wide, 12 heads, 1024 context)."""


@model("gpt")
class GPT(Transformer):
    """GPT-2 style decoder (learned positions, LayerNorm, GELU, tied embeddings)."""

    CONFIG = GPTConfig
