"""Token and position embeddings; a tied embedding also serves as the output head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.params import param


class Embedding(nnx.Module):
    """A [num, dim] lookup table; `attend` projects back onto it (tied output head)."""

    def __init__(
        self,
        num: int,
        dim: int,
        *,
        axes: tuple[str | None, str | None],
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        std: float = 0.02,
    ) -> None:
        self.dtype = dtype
        self.weight = param(rngs, nnx.initializers.normal(std), (num, dim), axes, param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("btd,vd->btv", x, self.weight[...].astype(self.dtype))
