"""A decoder-only transformer, read top to bottom: norm, attention, MLP, block, model.

GPT-2 and Llama are two presets of one config (`GPT2`, `LLAMA`, in `config.py`); the switches
other families need (Qwen's q/k biases and norms, GPT-NeoX's parallel residual and partial RoPE,
Mistral's sliding window) default to off. Every module takes the config.
Parameters name logical axes ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm");
`theseus.parallel` maps them onto a device mesh. Speed code (hand-written gradients, kernel
choice, rematerialization) sits behind the plain functions of `theseus.model.kernels`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model import kernels
from theseus.model.models.config import TransformerConfig

KVCache = tuple[jax.Array, jax.Array]
"""Keys and values of one layer: each [batch, cache_len, n_kv_heads, head_dim]."""


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
    """LayerNorm (scale and bias: GPT-2) or RMSNorm (scale only: Llama), in float32, over the
    last `width` features (default d_model; a head's width for `qk_norm`)."""

    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs, width: int | None = None) -> None:
        self.eps, pdtype, width = c.norm_eps, jnp.dtype(c.param_dtype), width or c.d_model
        self.scale = param(rngs, ones, (width,), ("norm",), pdtype)
        layernorm = c.norm == "layernorm"
        self.bias = param(rngs, zeros, (width,), ("norm",), pdtype) if layernorm else None

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
        self.lora: nnx.Module | None = None  # a LoRA adapter, set by theseus.model.lora.attach

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.lora is not None:
            y = y + self.lora(x.astype(self.dtype))
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
    """Causal self-attention; n_kv_heads < n_heads is grouped-query attention, positions="rope"
    rotates q and k (their first `rotary_dim` features); block `layer` may see only a sliding
    window of keys; with a KV cache, queries attend to the cache (`attend_cache`)."""

    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs, layer: int = 0) -> None:
        d, n, kv, h = c.d_model, c.n_heads, c.kv_heads, c.head_dim
        self.dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        self.rope_theta = c.rope_theta if c.positions == "rope" else None
        self.rotary_dim, self.window = c.rotary_dim, c.window(layer)
        self.kernel = kernels.attention_kernel(c.attention, self.dtype, h)
        self.joined = kernels.joins_qkv(n, kv)
        self.q = param(rngs, normal(0.02), (d, n, h), ("embed", "heads", "head_dim"), pdtype)
        self.k = param(rngs, normal(0.02), (d, kv, h), ("embed", "kv_heads", "head_dim"), pdtype)
        self.v = param(rngs, normal(0.02), (d, kv, h), ("embed", "kv_heads", "head_dim"), pdtype)
        self.o = param(rngs, normal(c.out_std), (n, h, d), ("heads", "head_dim", "embed"), pdtype)
        if c.bias or c.qkv_bias:  # Qwen2 biases q, k and v but not o
            self.q_bias = param(rngs, zeros, (n, h), ("heads", "head_dim"), pdtype)
            self.k_bias = param(rngs, zeros, (kv, h), ("kv_heads", "head_dim"), pdtype)
            self.v_bias = param(rngs, zeros, (kv, h), ("kv_heads", "head_dim"), pdtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.o_bias = param(rngs, zeros, (d,), ("embed",), pdtype) if c.bias else None
        # Qwen3: one norm of a head's width, shared by the heads, on each of q and k
        self.q_norm = Norm(c, rngs=rngs, width=h) if c.qk_norm else None
        self.k_norm = Norm(c, rngs=rngs, width=h) if c.qk_norm else None
        # LoRA adapters of each projection, set by theseus.model.lora.attach
        self.q_lora = self.k_lora = self.v_lora = self.o_lora = None

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        cache: KVCache | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """x [B, T, d_model] at `positions` [B, T] -> ([B, T, d_model], the updated cache); a
        `mask` [B, T, T] narrows which earlier tokens each token sees."""
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
        q, k, v = (
            t if adapter is None else t + adapter(x)
            for t, adapter in ((q, self.q_lora), (k, self.k_lora), (v, self.v_lora))
        )
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            q = rotate(q, positions, self.rope_theta, self.rotary_dim)
            k = rotate(k, positions, self.rope_theta, self.rotary_dim)
        if cache is None:
            window = self.window
            if mask is not None and window is not None:
                # packed sequences each count positions from their own start: the window is
                # one of positions, not of slots in the row
                mask &= positions[:, :, None] - positions[:, None, :] < window
                window = None
            y = kernels.causal_attention(q, k, v, self.kernel, window, mask)
        else:
            y, cache = attend_cache(q, k, v, positions, cache, self.window)
        out = jnp.einsum("btnh,nhd->btd", y, self.o[...].astype(dtype))
        if self.o_lora is not None:
            out = out + self.o_lora(y)
        return (out if self.o_bias is None else out + self.o_bias[...].astype(dtype)), cache


def rotate(x: jax.Array, positions: jax.Array, theta: float, dims: int) -> jax.Array:
    """RoPE on the first `dims` features of each head of `x` [B, T, heads, head_dim]; the rest
    pass unrotated (GPT-NeoX rotates a quarter of each head; other families all of it)."""
    if dims == x.shape[-1]:
        return kernels.rope(x, positions, theta)
    return jnp.concatenate([kernels.rope(x[..., :dims], positions, theta), x[..., dims:]], -1)


def attend_cache(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    window: int | None = None,
) -> tuple[jax.Array, KVCache]:
    """Write k and v into the cache from each row's first position (a prompt from 0, a decoded
    token at its slot), then attend each query to the slots up to its own position (and, with a
    `window`, the last `window` of them): rows of different lengths share a batch, and stale
    slots past a row's position are never read."""
    write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice_in_dim(c, new, i, axis=0))
    start = positions[:, 0]
    keys = write(cache[0], k.astype(cache[0].dtype), start)
    values = write(cache[1], v.astype(cache[1].dtype), start)
    slots = jnp.arange(keys.shape[1])[None, None, :]
    visible = slots <= positions[:, :, None]  # [B, T, slots]
    if window is not None:
        visible &= slots > positions[:, :, None] - window
    return jax.nn.dot_product_attention(q, keys, values, mask=visible[:, None]), (keys, values)


class MLP(nnx.Module):
    """ "gelu": down(gelu(fc(x))) (GPT-2's tanh GELU; "gelu_exact": erf GELU, GPT-NeoX);
    "swiglu": down(silu(gate(x)) * up(x)) (Llama)."""

    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        self.kind = c.mlp
        if c.mlp != "swiglu":
            self.fc = Linear(c, c.d_model, c.hidden, ("embed", "mlp"), rngs=rngs)
        else:
            self.gate = Linear(c, c.d_model, c.hidden, ("embed", "mlp"), rngs=rngs)
            self.up = Linear(c, c.d_model, c.hidden, ("embed", "mlp"), rngs=rngs)
        self.down = Linear(c, c.hidden, c.d_model, ("mlp", "embed"), rngs=rngs, std=c.out_std)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "gelu":
            return self.down(kernels.gelu(self.fc(x)))
        if self.kind == "gelu_exact":
            return self.down(kernels.gelu_exact(self.fc(x)))
        return self.down(kernels.swiglu(self.gate(x), self.up(x)))


class Block(nnx.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)), dropout on both branches; with
    `parallel_residual`, both branches read x: x + attn(norm(x)) + mlp(norm'(x))."""

    def __init__(
        self,
        c: TransformerConfig,
        dropout_rngs: nnx.Rngs | None,
        *,
        rngs: nnx.Rngs,
        layer: int = 0,
    ) -> None:
        self.attn_norm = Norm(c, rngs=rngs)
        self.attn = Attention(c, rngs=rngs, layer=layer)
        self.mlp_norm = Norm(c, rngs=rngs)
        self.mlp = MLP(c, rngs=rngs)
        self.dropout = nnx.Dropout(c.dropout) if c.dropout > 0 else None
        self.dropout_rngs = dropout_rngs
        self.parallel = c.parallel_residual

    def _drop(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.dropout is None:
            return x
        return self.dropout(x, deterministic=deterministic, rngs=self.dropout_rngs)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        cache: KVCache | None,
        mask: jax.Array | None,
        deterministic: bool,
    ) -> tuple[jax.Array, KVCache | None]:
        h, cache = self.attn(self.attn_norm(x), positions, cache, mask)
        if self.parallel:
            mlp = self._drop(self.mlp(self.mlp_norm(x)), deterministic)
            return x + self._drop(h, deterministic) + mlp, cache
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
        self.blocks = nnx.List(
            Block(c, self.dropout_rngs, rngs=rngs, layer=i) for i in range(c.n_layers)
        )
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
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """tokens int32 [B, T] at `positions` [B, T] (default 0..T-1) -> logits [B, T, vocab].

        `cache` (one KVCache per layer, from `empty_cache`) is read and replaced in place: a
        prompt fills it, then each decoded token attends to it. Without a cache, `mask`
        [B, T, T] (token t may see token s, for s <= t) lets a row hold several sequences:
        evaluation packs requests, a question's answers each seeing only its context."""
        if cache is not None and mask is not None:
            raise ValueError("a mask packs sequences into rows without a KV cache; pass one")
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        # rows packed with sequences give each its own positions, and may be wider
        learned = c.positions == "learned" and positions is None
        if tokens.shape[1] > c.block_size and learned:
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
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(x, positions, layer_cache, mask, deterministic)
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
        # a layer with a sliding window scores each query against at most `window` keys
        seen = [min(seq_len, c.window(i) or seq_len) for i in range(c.n_layers)]
        attention = 12 * c.n_heads * c.head_dim * sum(seen)
        return float(6 * matmul_params + attention)
