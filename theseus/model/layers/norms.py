"""LayerNorm and RMSNorm, computed in float32 whatever the activation dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.params import param


class LayerNorm(nnx.Module):
    """LayerNorm with a learned scale and bias (GPT-2)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (
            h * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        ).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale and no bias (Llama)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.square(h).mean(-1, keepdims=True) + self.eps)
        return (h * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def make_norm(
    kind: str, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Module:
    """ "layernorm" or "rmsnorm"."""
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
    raise ValueError(f"unknown norm {kind!r}; use layernorm or rmsnorm")
