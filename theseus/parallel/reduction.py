"""How the train step's gradients meet across data-parallel devices.

By default XLA reduces each gradient array where the step's sharding asks, overlapping each
reduction with the rest of the backward pass (what a GPU wants). `ShardedGradients` is the CPU
form: XLA's CPU runtime makes each reduced array a meeting of all devices, so each batch
shard's gradients are kept apart and reduced once, as one flat buffer (bench/FINDINGS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theseus.parallel.mesh import Layout

GradFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[Any, tuple[jax.Array, ...]]]
"""`(params, rows, key) -> (grads, (summed losses...))`, as `jax.grad(..., has_aux=True)` gives."""


@dataclass(frozen=True)
class Gradients:
    """Gradients reduced by XLA where the sharding says: the plain step."""

    shards: int = 1

    def of(self, grad_fn: GradFn) -> GradFn:
        return grad_fn

    def zeros(self, params: Any) -> Any:
        """Float32 accumulators for gradients of `params`."""
        return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def reduce(self, grads: Any) -> Any:
        return grads


@dataclass(frozen=True)
class ShardedGradients(Gradients):
    """Each of `shards` batch shards' gradients apart (a vmap over the micro-batch split that many
    ways, which the data axis spreads over devices), summed once with `sum_shards`. Needs the
    parameters replicated on every device."""

    def of(self, grad_fn: GradFn) -> GradFn:
        def per_shard(params: Any, rows: dict[str, jax.Array], key: jax.Array) -> Any:
            split = jax.tree.map(lambda x: x.reshape(self.shards, -1, *x.shape[1:]), rows)
            keys = jax.vmap(lambda shard: jax.random.fold_in(key, shard))(jnp.arange(self.shards))
            grads, sums = jax.vmap(grad_fn, in_axes=(None, 0, 0))(params, split, keys)
            return grads, tuple(x.sum() for x in sums)

        return per_shard

    def zeros(self, params: Any) -> Any:
        return jax.tree.map(lambda p: jnp.zeros((self.shards, *p.shape), jnp.float32), params)

    def reduce(self, grads: Any) -> Any:
        return sum_shards(grads)


def sum_shards(grads: Any) -> Any:
    """Sum per-shard gradients (each leaf `[shards, ...]`) as one flat buffer, so a data-parallel
    reduction is one collective."""
    leaves, treedef = jax.tree.flatten(grads)
    shards = leaves[0].shape[0]
    flat = jnp.concatenate([g.reshape(shards, -1).astype(jnp.float32) for g in leaves], axis=1)
    ends = np.cumsum([g[0].size for g in leaves])[:-1]
    parts = jnp.split(flat.sum(axis=0), ends)
    return treedef.unflatten([p.reshape(g.shape[1:]) for p, g in zip(parts, leaves, strict=True)])


def gradients_for(layout: Layout, platform: str) -> Gradients:
    """`ShardedGradients` for a replicated model's data-parallel devices on CPU; else plain."""
    replicated = layout.fsdp == layout.tensor == 1
    if replicated and platform == "cpu" and layout.data > 1:
        return ShardedGradients(layout.data)
    return Gradients()
