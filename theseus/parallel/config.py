"""The parallel settings of a run."""

from __future__ import annotations

from dataclasses import dataclass

from theseus.config import field


@dataclass
class ParallelConfig:
    """How devices split into data-parallel, FSDP and tensor-parallel groups."""

    fsdp: int = field(
        "parallel/fsdp",
        minimum=1,
        default=1,
        help="devices sharing one copy of parameters and optimizer state (FSDP)",
    )
    tensor: int | None = field(
        "parallel/tensor",
        minimum=1,
        default=None,
        help="tensor-parallel shards (null = --n_shards, else 1); the rest is data-parallel",
    )
    cpu_devices: int | None = field(
        "parallel/cpu_devices",
        minimum=1,
        default=None,
        help="CPU runs: JAX devices to split this host into (null = one per core, as many as divide the batch)",
    )
