"""The transformer's settings (`architecture.*`) and the presets built from them.

One dataclass describes every decoder the model builds; a family is a preset (`GPT2`, `LLAMA`)
or the handful of switches its checkpoints need (`theseus.interop` sets them from a Hugging Face
`config.json`). Every switch added for a family defaults to off, so GPT-2 and Llama build the
same graph they always did.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from theseus.config import field
from theseus.errors import ConfigError
from theseus.model import kernels

DTYPES = ["float32", "bfloat16", "float16"]


@dataclass(unsafe_hash=True)  # hashable: the config is static data of the model graph
class TransformerConfig:
    """Shape and numerics of a decoder-only transformer (defaults: GPT-2 small)."""

    n_layers: int = field("architecture/n_layers", minimum=1, default=12, help="transformer blocks")
    n_heads: int = field(
        "architecture/n_heads", minimum=1, default=12, help="attention (query) heads"
    )
    n_kv_heads: int | None = field(
        "architecture/n_kv_heads", minimum=1, default=None, help="key/value heads (null = n_heads)"
    )
    d_model: int = field("architecture/d_model", minimum=1, default=768, help="residual width")
    head_width: int | None = field(
        "architecture/head_width",
        minimum=1,
        default=None,
        help="width of each attention head (null = d_model / n_heads); the output projection "
        "maps n_heads * head_width back to d_model (Qwen3 sets it apart from d_model / n_heads)",
    )
    d_ff: int | None = field(
        "architecture/d_ff",
        minimum=1,
        default=None,
        help="MLP hidden width (null = 4 * d_model for gelu, ~8/3 * d_model for swiglu)",
    )
    block_size: int = field(
        "architecture/block_size", minimum=1, default=1024, help="context (tokens)"
    )
    vocab_size: int | None = field(
        "architecture/vocab_size",
        minimum=1,
        default=None,
        help="vocabulary size (null = the training store's, padded up to a multiple of 128)",
    )
    vocab_used: int | None = field(
        "architecture/vocab_used",
        minimum=1,
        default=None,
        help="ids the model predicts (null = the training store's vocabulary); ids from here up "
        "to vocab_size only pad the embedding for speed and get no probability",
    )
    dropout: float = field(
        "architecture/dropout",
        minimum=0,
        below=1,
        default=0.0,
        help="on embeddings and residual branches",
    )
    dtype: str = field(
        "architecture/dtype", default="bfloat16", choices=DTYPES, help="compute dtype"
    )
    param_dtype: str = field(
        "architecture/param_dtype",
        default="float32",
        choices=DTYPES[:2],
        help="master weights' dtype",
    )
    positions: str = field(
        "architecture/positions",
        default="learned",
        choices=["learned", "rope"],
        help="learned or rotary",
    )
    rope_theta: float = field("architecture/rope_theta", above=0, default=1e4, help="RoPE base")
    rope_fraction: float = field(
        "architecture/rope_fraction",
        above=0,
        maximum=1,
        default=1.0,
        help="share of each head's width RoPE rotates: its first int(fraction * head width) "
        "dims; the rest carry no position (GPT-NeoX / Pythia: 0.25)",
    )
    mlp: str = field(
        "architecture/mlp",
        default="gelu",
        choices=["gelu", "gelu_exact", "swiglu"],
        help="gelu (tanh-approximated: GPT-2), gelu_exact (erf: GPT-NeoX) or swiglu (Llama)",
    )
    norm: str = field(
        "architecture/norm", default="layernorm", choices=["layernorm", "rmsnorm"], help="norm"
    )
    norm_eps: float = field("architecture/norm_eps", minimum=0, default=1e-5, help="norm epsilon")
    tie_embeddings: bool = field(
        "architecture/tie_embeddings",
        default=True,
        help="share the token embedding with the output head",
    )
    bias: bool = field("architecture/bias", default=True, help="biases in projections")
    qkv_bias: bool = field(
        "architecture/qkv_bias",
        default=False,
        help="biases on the q, k and v projections even where `bias` is off (Qwen2)",
    )
    qk_norm: bool = field(
        "architecture/qk_norm",
        default=False,
        help="normalize each query and key head over its width (the `norm` kind), before "
        "RoPE (Qwen3)",
    )
    parallel_residual: bool = field(
        "architecture/parallel_residual",
        default=False,
        help="x + attn(norm(x)) + mlp(norm'(x)): both branches read the block's input "
        "(GPT-NeoX / Pythia) instead of the MLP reading the attention's output",
    )
    sliding_window: int | None = field(
        "architecture/sliding_window",
        minimum=1,
        default=None,
        help="each query attends to the last sliding_window positions, itself included "
        "(Mistral); null = the whole context",
    )
    window_from_layer: int = field(
        "architecture/window_from_layer",
        minimum=0,
        default=0,
        help="the first layer that uses sliding_window; the layers before it attend to the "
        "whole context (Qwen2's max_window_layers)",
    )
    attention: str = field(
        "architecture/attention",
        default="auto",
        choices=list(kernels.ATTENTION_KERNELS),
        help="kernel: auto = cuDNN's on an NVIDIA GPU in bfloat16/float16, else XLA's",
    )

    def check(self) -> None:
        """Refuse head shapes no attention can build (run with the config's validation, before
        any work, and by the model it builds)."""
        if self.head_width is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"architecture.d_model={self.d_model} does not split into n_heads={self.n_heads} "
                "heads; choose n_heads dividing d_model, or set head_width"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"architecture.n_heads={self.n_heads} does not split into "
                f"n_kv_heads={self.kv_heads} groups; choose n_kv_heads dividing n_heads"
            )
        if self.vocab_used and self.vocab_size and self.vocab_used > self.vocab_size:
            raise ConfigError(
                f"architecture.vocab_used={self.vocab_used} is above architecture.vocab_size="
                f"{self.vocab_size}; raise vocab_size or lower vocab_used"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(
                "architecture.positions=rope needs an even head width, but "
                + (
                    f"head_width={self.head_width}; choose an even head_width"
                    if self.head_width
                    else f"d_model={self.d_model} / n_heads={self.n_heads} = {self.head_dim}; "
                    "choose d_model and n_heads so that d_model / n_heads is even"
                )
            )
        if self.positions == "rope" and (self.rotary_dim % 2 or self.rotary_dim == 0):
            raise ConfigError(
                f"architecture.positions=rope rotates pairs of dims, but rope_fraction="
                f"{self.rope_fraction} of the head width {self.head_dim} is {self.rotary_dim}; "
                "choose a head width and rope_fraction whose product is even and positive"
            )
        if self.rope_fraction != 1 and self.positions != "rope":
            raise ConfigError(
                f"architecture.rope_fraction={self.rope_fraction} needs positions=rope "
                f"(here {self.positions}); set positions=rope or drop rope_fraction"
            )
        if self.window_from_layer and self.sliding_window is None:
            raise ConfigError(
                f"architecture.window_from_layer={self.window_from_layer} is set, but "
                "sliding_window is null; set sliding_window or drop window_from_layer"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        """The width of one attention head."""
        return self.head_width or self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head RoPE rotates (Hugging Face rounds down too)."""
        return int(self.head_dim * self.rope_fraction)

    def window(self, layer: int) -> int | None:
        """The sliding window of block `layer` (0-based), or None where it sees all context."""
        return self.sliding_window if layer >= self.window_from_layer else None

    @property
    def hidden(self) -> int:
        """The MLP hidden width, derived when `d_ff` is null."""
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 256 * math.ceil(int(8 * self.d_model / 3) / 256)
        return 4 * self.d_model

    @property
    def out_std(self) -> float:
        """Init scale of the projections back into the residual stream (GPT-2's rule)."""
        return 0.02 / math.sqrt(2 * self.n_layers)


GPT2 = TransformerConfig()
"""GPT-2 small: learned positions, LayerNorm, GELU, biases, tied embeddings."""

LLAMA = dataclasses.replace(
    GPT2,
    n_kv_heads=4,
    positions="rope",
    mlp="swiglu",
    norm="rmsnorm",
    tie_embeddings=False,
    bias=False,
)
"""Llama's architecture at GPT-2-small scale: RoPE, RMSNorm, SwiGLU, 4 key/value heads, no
biases, an untied output head."""
