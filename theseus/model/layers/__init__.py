"""Building blocks for transformer language models (Flax NNX), each parameter named with
logical axes ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm")."""

from theseus.model.layers.attention import Attention, KVCache
from theseus.model.layers.block import Block
from theseus.model.layers.embedding import Embedding
from theseus.model.layers.mlp import MLP, Dense
from theseus.model.layers.norms import LayerNorm, RMSNorm, make_norm
from theseus.model.layers.params import dtype_of, logical_axes, param
from theseus.model.layers.rope import apply_rope

__all__ = [
    "MLP",
    "Attention",
    "Block",
    "Dense",
    "Embedding",
    "KVCache",
    "LayerNorm",
    "RMSNorm",
    "apply_rope",
    "dtype_of",
    "logical_axes",
    "make_norm",
    "param",
]
