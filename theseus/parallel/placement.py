"""Host batches onto the mesh: each process's rows become its part of one global array."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from theseus.parallel.mesh import BATCH_AXES


def batch_sharding(mesh: Mesh, rank: int) -> NamedSharding:
    """Rows split over the batch axes: `[rows, seq]`, or `[accumulation, rows, seq]`."""
    spec = (None, BATCH_AXES, None) if rank == 3 else (BATCH_AXES, None)
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def to_device(
    batch: dict[str, np.ndarray], mesh: Mesh, accumulation: int | None
) -> dict[str, jax.Array]:
    """This process's host rows -> one global array per key (`[accumulation, micro, seq]` when
    `accumulation` is given, else `[rows, seq]`)."""
    out = {}
    processes = jax.process_count()
    for key, local in batch.items():
        if accumulation is not None:
            local = local.reshape(accumulation, -1, local.shape[-1])
        sharding = batch_sharding(mesh, local.ndim)
        if processes == 1:
            out[key] = jax.device_put(local, sharding)
        else:
            shape = list(local.shape)
            shape[-2] *= processes
            out[key] = jax.make_array_from_process_local_data(sharding, local, tuple(shape))
    return out
