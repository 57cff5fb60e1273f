"""LayerNorm and RMSNorm, computed in float32 whatever the activation dtype.

Both have a hand-written backward pass that keeps only the input and its per-row float32
statistics (LayerNorm: mean and 1/std; RMSNorm: 1/rms), and recomputes the normalized input inside
the gradient's fusions. Autodiff would keep float32 [tokens, width] intermediates of every norm
until the backward pass, and even rematerialized it writes one out there: on GPT-2 small on an
H100 the hand-written one made the step 1.3% faster (133.5 -> 131.7 ms).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.params import param


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / std * scale + bias over the last axis, in float32, returned in x's dtype."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> Any:
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(h - mean).mean(-1, keepdims=True) + eps)
    y = (h - mean) * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype), (x, scale, bias, mean, rstd)


def _layer_norm_bwd(eps: float, residuals: Any, dy: jax.Array) -> Any:
    x, scale, bias, mean, rstd = residuals
    dy = dy.astype(jnp.float32)
    dx, dscale = _norm_grads((x.astype(jnp.float32) - mean) * rstd, rstd, scale, dy, centered=True)
    dbias = dy.sum(tuple(range(x.ndim - 1)))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the last axis, in float32, returned in x's dtype."""
    return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x: jax.Array, scale: jax.Array, eps: float) -> Any:
    h = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.square(h).mean(-1, keepdims=True) + eps)
    y = h * rstd * scale.astype(jnp.float32)
    return y.astype(x.dtype), (x, scale, rstd)


def _rms_norm_bwd(eps: float, residuals: Any, dy: jax.Array) -> Any:
    x, scale, rstd = residuals
    xhat = x.astype(jnp.float32) * rstd
    dx, dscale = _norm_grads(xhat, rstd, scale, dy.astype(jnp.float32), centered=False)
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def _norm_grads(
    xhat: jax.Array, rstd: jax.Array, scale: jax.Array, dy: jax.Array, *, centered: bool
) -> tuple[jax.Array, jax.Array]:
    """Float32 gradients of `xhat * scale` for the norm's input and scale; `centered` when the
    norm subtracted the row mean (LayerNorm), which the input gradient then subtracts too."""
    g = dy * scale.astype(jnp.float32)
    g_in = g - g.mean(-1, keepdims=True) if centered else g
    dx = rstd * (g_in - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum(tuple(range(xhat.ndim - 1)))


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
