"""A decoder-only transformer, read top to bottom: config, attention, MLP, block, model.

GPT-2 and Llama are two presets of one config (`GPT2`, `LLAMA`). Every module takes the config.
Parameters name logical axes ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm");
`theseus.parallel` maps them onto a device mesh. Speed code (hand-written gradients, kernel
choice, rematerialization) sits behind the plain functions of `theseus.model.kernels`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.config import field
from theseus.errors import ConfigError
from theseus.model import kernels

DTYPES = ["float32", "bfloat16", "float16"]

KVCache = tuple[jax.Array, jax.Array]
"""Keys and values of one layer: each [batch, cache_len, n_kv_heads, head_dim]."""


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
    mlp: str = field("architecture/mlp", default="gelu", choices=["gelu", "swiglu"], help="MLP")
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
    attention: str = field(
        "architecture/attention",
        default="auto",
        choices=list(kernels.ATTENTION_KERNELS),
        help="kernel: auto = cuDNN's on an NVIDIA GPU in bfloat16/float16, else XLA's",
    )

    def check(self) -> None:
        """Refuse head shapes no attention can build (run with the config's validation, before
        any work, and by the model it builds)."""
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
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"architecture.positions=rope needs an even head width, but d_model={self.d_model} "
                f"/ n_heads={self.n_heads} = {self.head_dim}; choose d_model and n_heads so that "
                "d_model / n_heads is even"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

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


def param(
    rngs: nnx.Rngs,
    init: Callable[..., jax.Array],
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype: jnp.dtype,
) -> nnx.Param:
    """A parameter named by logical axes: metadata only, so a model builds without a mesh."""
    return nnx.Param(
        init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False
    )


normal, zeros, ones = nnx.initializers.normal, nnx.initializers.zeros, nnx.initializers.ones


class Norm(nnx.Module):
    """LayerNorm (scale and bias: GPT-2) or RMSNorm (scale only: Llama), in float32."""

    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        self.eps, pdtype = c.norm_eps, jnp.dtype(c.param_dtype)
        self.scale = param(rngs, ones, (c.d_model,), ("norm",), pdtype)
        layernorm = c.norm == "layernorm"
        self.bias = param(rngs, zeros, (c.d_model,), ("norm",), pdtype) if layernorm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.bias is None:
            return kernels.rms_norm(x, self.scale[...], self.eps)
        return kernels.layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Embedding(nnx.Module):
    """A [num, d_model] lookup table."""

    def __init__(
        self, c: TransformerConfig, num: int, axes: tuple[str | None, str], *, rngs: nnx.Rngs
    ) -> None:
        self.dtype = jnp.dtype(c.dtype)
        self.weight = param(rngs, normal(0.02), (num, c.d_model), axes, jnp.dtype(c.param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)


class Linear(nnx.Module):
    """x @ kernel (+ bias) in the compute dtype; kernel [in, out] named by logical `axes`."""

    def __init__(
        self,
        c: TransformerConfig,
        d_in: int,
        d_out: int,
        axes: tuple[str, str],
        *,
        rngs: nnx.Rngs,
        std: float = 0.02,
        bias: bool | None = None,
    ) -> None:
        self.dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        self.kernel = param(rngs, normal(std), (d_in, d_out), axes, pdtype)
        with_bias = c.bias if bias is None else bias
        self.bias = param(rngs, zeros, (d_out,), axes[1:], pdtype) if with_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
    """Causal self-attention; n_kv_heads < n_heads is grouped-query attention, positions="rope"
    rotates q and k; with a KV cache, queries attend to the cache (`attend_cache`)."""

    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        d, n, kv, h = c.d_model, c.n_heads, c.kv_heads, c.head_dim
        self.dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        self.rope_theta = c.rope_theta if c.positions == "rope" else None
        self.kernel = kernels.attention_kernel(c.attention, self.dtype, h)
        self.joined = kernels.joins_qkv(n, kv)
        self.q = param(rngs, normal(0.02), (d, n, h), ("embed", "heads", "head_dim"), pdtype)
        self.k = param(rngs, normal(0.02), (d, kv, h), ("embed", "kv_heads", "head_dim"), pdtype)
        self.v = param(rngs, normal(0.02), (d, kv, h), ("embed", "kv_heads", "head_dim"), pdtype)
        self.o = param(rngs, normal(c.out_std), (n, h, d), ("heads", "head_dim", "embed"), pdtype)
        if c.bias:
            self.q_bias = param(rngs, zeros, (n, h), ("heads", "head_dim"), pdtype)
            self.k_bias = param(rngs, zeros, (kv, h), ("kv_heads", "head_dim"), pdtype)
            self.v_bias = param(rngs, zeros, (kv, h), ("kv_heads", "head_dim"), pdtype)
            self.o_bias = param(rngs, zeros, (d,), ("embed",), pdtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = self.o_bias = None

    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        """x [B, T, d_model] at `positions` [B, T] -> ([B, T, d_model], the updated cache)."""
        x, dtype = x.astype(self.dtype), self.dtype
        w = [p[...] for p in (self.q, self.k, self.v)]
        b = (
            None
            if self.q_bias is None
            else [p[...] for p in (self.q_bias, self.k_bias, self.v_bias)]
        )
        if self.joined:
            q, k, v = kernels.joined_qkv(x, w, b)
        else:
            q, k, v = (jnp.einsum("btd,dnh->btnh", x, w[i].astype(dtype)) for i in range(3))
            if b is not None:
                q, k, v = q + b[0].astype(dtype), k + b[1].astype(dtype), v + b[2].astype(dtype)
        if self.rope_theta is not None:
            q = kernels.rope(q, positions, self.rope_theta)
            k = kernels.rope(k, positions, self.rope_theta)
        if cache is None:
            y = kernels.causal_attention(q, k, v, self.kernel)
        else:
            y, cache = attend_cache(q, k, v, positions, cache)
        out = jnp.einsum("btnh,nhd->btd", y, self.o[...].astype(dtype))
        return (out if self.o_bias is None else out + self.o_bias[...].astype(dtype)), cache


def attend_cache(
    q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Write k and v into the cache from each row's first position (a prompt from 0, a decoded
    token at its slot), then attend each query to the slots up to its own position: rows of
    different lengths share a batch, and stale slots past a row's position are never read."""
    write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice_in_dim(c, new, i, axis=0))
    start = positions[:, 0]
    keys = write(cache[0], k.astype(cache[0].dtype), start)
    values = write(cache[1], v.astype(cache[1].dtype), start)
    visible = jnp.arange(keys.shape[1])[None, None, :] <= positions[:, :, None]  # [B, T, slots]
    return jax.nn.dot_product_attention(q, keys, values, mask=visible[:, None]), (keys, values)


class MLP(nnx.Module):
    """ "gelu": down(gelu(fc(x))) (GPT-2); "swiglu": down(silu(gate(x)) * up(x)) (Llama)."""

    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        self.kind = c.mlp
        if c.mlp == "gelu":
            self.fc = Linear(c, c.d_model, c.hidden, ("embed", "mlp"), rngs=rngs)
        else:
            self.gate = Linear(c, c.d_model, c.hidden, ("embed", "mlp"), rngs=rngs)
            self.up = Linear(c, c.d_model, c.hidden, ("embed", "mlp"), rngs=rngs)
        self.down = Linear(c, c.hidden, c.d_model, ("mlp", "embed"), rngs=rngs, std=c.out_std)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "gelu":
            return self.down(kernels.gelu(self.fc(x)))
        return self.down(kernels.swiglu(self.gate(x), self.up(x)))


class Block(nnx.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)), dropout on both branches."""

    def __init__(
        self, c: TransformerConfig, dropout_rngs: nnx.Rngs | None, *, rngs: nnx.Rngs
    ) -> None:
        self.attn_norm = Norm(c, rngs=rngs)
        self.attn = Attention(c, rngs=rngs)
        self.mlp_norm = Norm(c, rngs=rngs)
        self.mlp = MLP(c, rngs=rngs)
        self.dropout = nnx.Dropout(c.dropout) if c.dropout > 0 else None
        self.dropout_rngs = dropout_rngs

    def _drop(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.dropout is None:
            return x
        return self.dropout(x, deterministic=deterministic, rngs=self.dropout_rngs)

    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: KVCache | None, deterministic: bool
    ) -> tuple[jax.Array, KVCache | None]:
        h, cache = self.attn(self.attn_norm(x), positions, cache)
        x = x + self._drop(h, deterministic)
        return x + self._drop(self.mlp(self.mlp_norm(x)), deterministic), cache


class Transformer(nnx.Module):
    """Decoder-only language model: `model(tokens) -> logits` [B, T, vocab]."""

    CONFIG: type[TransformerConfig] = TransformerConfig

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        if not isinstance(config.vocab_size, int):
            raise ValueError(
                "config.vocab_size must be an int (the trainer sets it from the token store)"
            )
        config.check()
        self.config = c = dataclasses.replace(config)
        # one stream shared by every dropout, so reseeding "dropout" fixes all masks of a step
        self.dropout_rngs = nnx.Rngs(dropout=rngs.dropout()) if c.dropout > 0 else None
        self.embed = Embedding(c, c.vocab_size, ("vocab", "embed"), rngs=rngs)
        # nanoGPT's 0.02: at 0.01 a small model leaves its early plateau later (bench/parity.py own)
        self.position_embed = (
            Embedding(c, c.block_size, (None, "embed"), rngs=rngs)
            if c.positions == "learned"
            else None
        )
        self.embed_dropout = nnx.Dropout(c.dropout) if c.dropout > 0 else None
        self.blocks = nnx.List(Block(c, self.dropout_rngs, rngs=rngs) for _ in range(c.n_layers))
        self.final_norm = Norm(c, rngs=rngs)
        self.lm_head = (
            None
            if c.tie_embeddings
            else Linear(c, c.d_model, c.vocab_size, ("embed", "vocab"), rngs=rngs, bias=False)
        )

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        cache: list[KVCache] | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """tokens int32 [B, T] at `positions` [B, T] (default 0..T-1) -> logits [B, T, vocab].

        `cache` (one KVCache per layer, from `empty_cache`) is read and replaced in place: a
        prompt fills it, then each decoded token attends to it."""
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        if tokens.shape[1] > c.block_size and c.positions == "learned":
            raise ValueError(
                f"sequence of {tokens.shape[1]} tokens exceeds block_size {c.block_size}"
            )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        x = self.embed(tokens)
        if self.position_embed is not None:
            x = x + self.position_embed(positions)
        if self.embed_dropout is not None:
            x = self.embed_dropout(x, deterministic=deterministic, rngs=self.dropout_rngs)
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, positions, None if cache is None else cache[i], deterministic)
            if cache is not None:
                cache[i] = layer_cache
        x = self.final_norm(x)
        if self.lm_head is None:
            logits = jnp.einsum("btd,vd->btv", x, self.embed.weight[...].astype(dtype))
        else:
            logits = self.lm_head(x)
        if c.vocab_used is None or c.vocab_used >= logits.shape[-1]:
            return logits
        # padding ids are no outcome: -inf takes them out of every softmax (training,
        # validation, scoring, sampling) and gives their rows of the head no gradient
        return jnp.where(jnp.arange(logits.shape[-1]) < c.vocab_used, logits, -jnp.inf)

    def empty_cache(self, batch: int, length: int) -> list[KVCache]:
        """A KV cache of `length` positions for `batch` rows, for `__call__(..., cache=)`."""
        c = self.config
        zeros = jnp.zeros((batch, length, c.kv_heads, c.head_dim), jnp.dtype(c.dtype))
        return [(zeros, zeros) for _ in range(c.n_layers)]

    def n_params(self) -> int:
        return sum(p.size for p in jax.tree.leaves(nnx.state(self, nnx.Param)))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x the parameters used in matmuls, plus attention scores.

        Embedding lookups are not matmuls; a tied embedding still counts once, as the head."""
        c = self.config
        matmul_params = self.n_params()
        if self.position_embed is not None:
            matmul_params -= self.position_embed.weight.size
        if self.lm_head is not None:
            matmul_params -= self.embed.weight.size
        attention = 12 * c.n_layers * c.n_heads * c.head_dim * seq_len
        return float(6 * matmul_params + attention)
