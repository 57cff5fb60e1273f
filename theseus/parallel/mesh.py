"""The device mesh: its axes, and how a run's devices split among them.

Mesh axes: "data" (batch only), "fsdp" (batch, and parameters sharded ZeRO-3 style) and
"tensor" (heads, MLP width and vocabulary split Megatron style). `rules.py` maps the model's
logical axes onto them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from theseus.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
"""The mesh axes a batch is split over."""


@dataclass(frozen=True)
class Layout:
    """How the devices split into data-parallel, FSDP and tensor-parallel groups."""

    data: int
    fsdp: int
    tensor: int

    @property
    def n_devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        """How many ways the batch is split (data and FSDP both shard the batch)."""
        return self.data * self.fsdp

    @classmethod
    def solve(cls, n_devices: int, fsdp: int = 1, tensor: int | None = None) -> Layout:
        """Split `n_devices`: `tensor` and `fsdp` as asked, the rest data-parallel."""
        tensor = tensor or 1
        if fsdp < 1 or tensor < 1:
            raise UserError(
                f"parallel.fsdp and tensor shards must be >= 1, got fsdp={fsdp} tensor={tensor}"
            )
        if n_devices % (fsdp * tensor):
            raise UserError(
                f"{n_devices} devices do not split into fsdp={fsdp} x tensor={tensor}; "
                f"choose parallel.fsdp and parallel.tensor (or --n_shards) whose product divides "
                f"{n_devices}, or on a CPU set parallel.cpu_devices to a multiple of {fsdp * tensor}"
            )
        return cls(n_devices // (fsdp * tensor), fsdp, tensor)

    def mesh(self, devices: Any = None) -> Any:
        """The `jax.sharding.Mesh` of this layout over `devices` (default: all), which must number
        `n_devices`."""
        import jax

        devices = jax.devices() if devices is None else list(devices)
        if len(devices) != self.n_devices:
            raise ValueError(
                f"mesh {self.data}x{self.fsdp}x{self.tensor} needs {self.n_devices} devices, "
                f"found {len(devices)}"
            )
        return jax.make_mesh(
            (self.data, self.fsdp, self.tensor),
            MESH_AXES,
            axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
            devices=devices,
        )
