"""A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.attention import Attention, KVCache
from theseus.model.layers.mlp import MLP
from theseus.model.layers.norms import make_norm


class Block(nnx.Module):
    """Attention and MLP sublayers, each behind a norm, with dropout on their outputs."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        d_ff: int,
        mlp: str,
        norm: str,
        norm_eps: float,
        rope_theta: float | None,
        bias: bool,
        dropout: float,
        dropout_rngs: nnx.Rngs | None,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        out_std: float,
        rngs: nnx.Rngs,
    ) -> None:
        types = {"dtype": dtype, "param_dtype": param_dtype}
        self.attn_norm = make_norm(norm, d_model, eps=norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.attn = Attention(
            d_model,
            n_heads,
            n_kv_heads,
            rope_theta=rope_theta,
            bias=bias,
            out_std=out_std,
            rngs=rngs,
            **types,
        )
        self.mlp_norm = make_norm(norm, d_model, eps=norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MLP(d_model, d_ff, kind=mlp, bias=bias, out_std=out_std, rngs=rngs, **types)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.dropout_rngs = dropout_rngs

    def _drop(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.dropout is None:
            return x
        return self.dropout(x, deterministic=deterministic, rngs=self.dropout_rngs)

    def __call__(
        self, x: jax.Array, positions: jax.Array, *, deterministic: bool = True
    ) -> jax.Array:
        x = x + self._drop(self.attn(self.attn_norm(x), positions), deterministic)
        return x + self._drop(self.mlp(self.mlp_norm(x)), deterministic)

    def prefill(
        self, x: jax.Array, positions: jax.Array, cache_len: int
    ) -> tuple[jax.Array, KVCache]:
        h, cache = self.attn.prefill(self.attn_norm(x), positions, cache_len)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        h, cache = self.attn.decode(self.attn_norm(x), positions, cache)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache
