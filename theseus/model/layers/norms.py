"""LayerNorm and RMSNorm, computed in float32 whatever the activation dtype.

Both are rematerialized (`jax.checkpoint`): the backward pass recomputes the normalization from
the input instead of keeping float32 intermediates of every norm alive until then. The work is
elementwise, so recomputing it inside the backward fusions is cheaper than the memory traffic.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.params import param


@partial(jax.checkpoint, static_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / std * scale + bias over the last axis, in float32, returned in x's dtype."""
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + eps)
    return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


@partial(jax.checkpoint, static_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the last axis, in float32, returned in x's dtype."""
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.square(h).mean(-1, keepdims=True) + eps)
    return (h * scale.astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with a learned scale and bias (GPT-2)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale and no bias (Llama)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


def make_norm(
    kind: str, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Module:
    """ "layernorm" or "rmsnorm"."""
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
    raise ValueError(f"unknown norm {kind!r}; use layernorm or rmsnorm")
