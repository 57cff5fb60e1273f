"""A decoder-only transformer assembled from `theseus.model.layers`; GPT and Llama are presets.

Reading order: `TransformerConfig` (every knob, GPT-2 small defaults), then `Transformer`:
embed -> blocks -> final norm -> output head. `prefill`/`decode` are the same network run with
a KV cache, used by `theseus.inference`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.config import field
from theseus.errors import ConfigError
from theseus.model.layers import Block, Dense, Embedding, KVCache, dtype_of, make_norm


@dataclass(unsafe_hash=True)  # hashable: the config is static data of the model graph
class TransformerConfig:
    """Shape and numerics of a decoder-only transformer (defaults: GPT-2 small)."""

    n_layers: int = field(
        "architecture/n_layers", minimum=1, default=12, help="number of transformer blocks"
    )
    n_heads: int = field(
        "architecture/n_heads", minimum=1, default=12, help="attention (query) heads"
    )
    n_kv_heads: int | None = field(
        "architecture/n_kv_heads",
        minimum=1,
        default=None,
        help="key/value heads for grouped-query attention (null = n_heads)",
    )
    d_model: int = field(
        "architecture/d_model", minimum=1, default=768, help="residual stream width"
    )
    d_ff: int | None = field(
        "architecture/d_ff",
        minimum=1,
        default=None,
        help="MLP hidden width (null = 4 * d_model for gelu, ~8/3 * d_model for swiglu)",
    )
    block_size: int = field(
        "architecture/block_size", minimum=1, default=1024, help="context length (tokens)"
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
        help="dropout on embeddings and residual branches",
    )
    dtype: str = field(
        "architecture/dtype",
        default="bfloat16",
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype",
    )
    param_dtype: str = field(
        "architecture/param_dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="parameter (master weight) dtype",
    )
    positions: str = field(
        "architecture/positions",
        default="learned",
        choices=["learned", "rope"],
        help="learned position embeddings or rotary (RoPE)",
    )
    rope_theta: float = field(
        "architecture/rope_theta", above=0, default=10000.0, help="RoPE base frequency"
    )
    mlp: str = field(
        "architecture/mlp", default="gelu", choices=["gelu", "swiglu"], help="MLP kind"
    )
    norm: str = field(
        "architecture/norm", default="layernorm", choices=["layernorm", "rmsnorm"], help="norm kind"
    )
    norm_eps: float = field(
        "architecture/norm_eps", minimum=0, default=1e-5, help="epsilon of the norms"
    )
    tie_embeddings: bool = field(
        "architecture/tie_embeddings",
        default=True,
        help="share the token embedding with the output head",
    )
    bias: bool = field(
        "architecture/bias", default=True, help="biases in attention and MLP projections"
    )

    def check(self) -> None:
        """Refuse head shapes no attention layer can build (run with the config's validation,
        before any work)."""
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"architecture.d_model={self.d_model} does not split into n_heads={self.n_heads} "
                "heads; choose n_heads dividing d_model"
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
        head_dim = self.d_model // self.n_heads
        if self.positions == "rope" and head_dim % 2:
            raise ConfigError(
                f"architecture.positions=rope needs an even head width, but d_model={self.d_model} "
                f"/ n_heads={self.n_heads} = {head_dim}; choose d_model and n_heads so that "
                "d_model / n_heads is even"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden(self) -> int:
        """The MLP hidden width, derived when `d_ff` is null."""
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 256 * math.ceil(int(8 * self.d_model / 3) / 256)
        return 4 * self.d_model


class Transformer(nnx.Module):
    """Decoder-only language model: `model(tokens) -> logits` [B, T, vocab]."""

    CONFIG: type[TransformerConfig] = TransformerConfig

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        if not isinstance(config.vocab_size, int):
            raise ValueError(
                "config.vocab_size must be an int (the trainer sets it from the token store)"
            )
        self.config = dataclasses.replace(config)
        dtype, param_dtype = dtype_of(config.dtype), dtype_of(config.param_dtype)
        self.dtype = dtype
        types = {"dtype": dtype, "param_dtype": param_dtype}
        # one stream shared by every dropout, so reseeding "dropout" fixes all masks of a step
        self.dropout_rngs = nnx.Rngs(dropout=rngs.dropout()) if config.dropout > 0 else None
        self.embed = Embedding(
            config.vocab_size, config.d_model, axes=("vocab", "embed"), rngs=rngs, **types
        )
        self.position_embed = (
            Embedding(
                config.block_size,
                config.d_model,
                axes=(None, "embed"),
                # nanoGPT's scale: at 0.01 a small model leaves its early plateau later and
                # learns less per step (bench/parity.py own)
                std=0.02,
                rngs=rngs,
                **types,
            )
            if config.positions == "learned"
            else None
        )
        self.embed_dropout = nnx.Dropout(config.dropout) if config.dropout > 0 else None
        self.blocks = nnx.List(
            Block(
                d_model=config.d_model,
                n_heads=config.n_heads,
                n_kv_heads=config.kv_heads,
                d_ff=config.hidden,
                mlp=config.mlp,
                norm=config.norm,
                norm_eps=config.norm_eps,
                rope_theta=config.rope_theta if config.positions == "rope" else None,
                bias=config.bias,
                dropout=config.dropout,
                dropout_rngs=self.dropout_rngs,
                out_std=0.02 / math.sqrt(2 * config.n_layers),
                rngs=rngs,
                **types,
            )
            for _ in range(config.n_layers)
        )
        self.final_norm = make_norm(
            config.norm, config.d_model, eps=config.norm_eps, param_dtype=param_dtype, rngs=rngs
        )
        self.lm_head = (
            None
            if config.tie_embeddings
            else Dense(
                config.d_model,
                config.vocab_size,
                axes=("embed", "vocab"),
                bias=False,
                rngs=rngs,
                **types,
            )
        )

    def _positions(self, tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
        if tokens.shape[1] > self.config.block_size and self.config.positions == "learned":
            raise ValueError(
                f"sequence of {tokens.shape[1]} tokens exceeds block_size {self.config.block_size}"
            )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        return positions

    def _embed(self, tokens: jax.Array, positions: jax.Array, deterministic: bool) -> jax.Array:
        x = self.embed(tokens)
        if self.position_embed is not None:
            x = x + self.position_embed(positions)
        if self.embed_dropout is not None:
            x = self.embed_dropout(x, deterministic=deterministic, rngs=self.dropout_rngs)
        return x

    def _head(self, x: jax.Array) -> jax.Array:
        x = self.final_norm(x)
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        used = self.config.vocab_used
        if used is None or used >= logits.shape[-1]:
            return logits
        # padding ids are no outcome: -inf takes them out of every softmax (training,
        # validation, scoring, sampling) and gives their rows of the head no gradient
        return jnp.where(jnp.arange(logits.shape[-1]) < used, logits, -jnp.inf)

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, *, deterministic: bool = True
    ) -> jax.Array:
        """tokens int32 [B, T] (positions [B, T], default 0..T-1) -> logits [B, T, vocab]."""
        positions = self._positions(tokens, positions)
        x = self._embed(tokens, positions, deterministic)
        for block in self.blocks:
            x = block(x, positions, deterministic=deterministic)
        return self._head(x)

    def prefill(
        self, tokens: jax.Array, positions: jax.Array | None, cache_len: int
    ) -> tuple[jax.Array, list[KVCache]]:
        """Logits of a prompt batch and every layer's KV cache, sized for `cache_len` positions."""
        positions = self._positions(tokens, positions)
        x = self._embed(tokens, positions, True)
        caches = []
        for block in self.blocks:
            x, cache = block.prefill(x, positions, cache_len)
            caches.append(cache)
        return self._head(x), caches

    def decode(
        self, tokens: jax.Array, positions: jax.Array, caches: list[KVCache]
    ) -> tuple[jax.Array, list[KVCache]]:
        """One token per row (tokens, positions [B, 1]) against the cache -> logits [B, 1, vocab]."""
        x = self._embed(tokens, positions, True)
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            x, cache = block.decode(x, positions, cache)
            new_caches.append(cache)
        return self._head(x), new_caches

    def n_params(self) -> int:
        return sum(p.size for p in jax.tree.leaves(nnx.state(self, nnx.Param)))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x the parameters used in matmuls, plus attention scores.

        Embedding lookups are not matmuls; a tied embedding still counts once, as the head.
        """
        c = self.config
        matmul_params = self.n_params()
        if self.position_embed is not None:
            matmul_params -= self.position_embed.weight.size
        if self.lm_head is not None:
            matmul_params -= self.embed.weight.size
        attention = 12 * c.n_layers * c.n_heads * (c.d_model // c.n_heads) * seq_len
        return float(6 * matmul_params + attention)
