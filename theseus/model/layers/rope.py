"""Rotary position embeddings, in the rotate-half layout Hugging Face Llama checkpoints use."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


@partial(jax.checkpoint, static_argnums=(2,))
def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate `x` [B, T, heads, head_dim] by the angles of `positions` [B, T].

    Rematerialized: the backward pass recomputes the angles rather than keeping them."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    h = x.astype(jnp.float32)
    first, second = jnp.split(h, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (h * cos + rotated * sin).astype(x.dtype)
