"""Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, untied head."""

from __future__ import annotations

from dataclasses import dataclass

from theseus.config import field
from theseus.model.models.transformer import Transformer, TransformerConfig
from theseus.registry import model


@dataclass(unsafe_hash=True)  # hashable: the config is static data of the model graph
class LlamaConfig(TransformerConfig):
    """Llama architecture at GPT-2-small scale by default, with 4 key/value heads."""

    n_kv_heads: int | None = field(
        "architecture/n_kv_heads",
        minimum=1,
        default=4,
        help="key/value heads for grouped-query attention (null = n_heads)",
    )
    positions: str = field(
        "architecture/positions",
        default="rope",
        choices=["learned", "rope"],
        help="learned position embeddings or rotary (RoPE)",
    )
    mlp: str = field(
        "architecture/mlp", default="swiglu", choices=["gelu", "swiglu"], help="MLP kind"
    )
    norm: str = field(
        "architecture/norm", default="rmsnorm", choices=["layernorm", "rmsnorm"], help="norm kind"
    )
    tie_embeddings: bool = field(
        "architecture/tie_embeddings",
        default=False,
        help="share the token embedding with the output head",
    )
    bias: bool = field(
        "architecture/bias", default=False, help="biases in attention and MLP projections"
    )


@model("llama")
class Llama(Transformer):
    """Llama style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention)."""

    CONFIG = LlamaConfig
