"""Where a run executes: joining a multi-process JAX job, and laying devices out as a mesh.

The same code runs on one CPU, on one GPU box and on a SLURM allocation: `initialize_distributed()`
reads the environment (explicit `THESEUS_*` variables first, then SLURM) and is a no-op for a
single process. `Layout` splits the visible devices into the `data`, `fsdp` and `tensor` axes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from theseus.errors import UserError

_initialized = False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer") from None


def initialize_distributed() -> None:
    """Join a multi-process JAX job when the environment describes one; otherwise do nothing.

    `THESEUS_COORDINATOR` (host:port), `THESEUS_NUM_PROCESSES` and `THESEUS_PROCESS_ID` take
    precedence; else a SLURM step with more than one task is detected by JAX itself. On CPU the
    gloo collectives are selected first, since the default CPU backend has none across processes.
    """
    global _initialized
    if _initialized:
        return
    coordinator = os.environ.get("THESEUS_COORDINATOR")
    num_processes = _env_int("THESEUS_NUM_PROCESSES")
    process_id = _env_int("THESEUS_PROCESS_ID")
    slurm_tasks = _env_int("SLURM_NTASKS") or 1
    if not coordinator and (num_processes or 1) <= 1 and slurm_tasks <= 1:
        return

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        if num_processes is None or process_id is None:
            raise UserError(
                "THESEUS_COORDINATOR is set but THESEUS_NUM_PROCESSES or THESEUS_PROCESS_ID is not; set all three"
            )
        if not 0 <= process_id < num_processes:
            raise UserError(f"THESEUS_PROCESS_ID={process_id} is outside 0..{num_processes - 1}")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()
    _initialized = True


def barrier(name: str, timeout_s: float = 900.0) -> None:
    """Wait until every process reaches `name`, through the coordination service.

    Gloo builds its cross-process context at the first collective and gives up if the processes
    arrive more than 30 s apart (start-up on a busy machine can differ by more), so processes meet
    here first. A no-op for one process.
    """
    import jax

    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination-service client has no public handle

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(name, int(timeout_s * 1000))


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
                f"choose parallel.fsdp and --n_shards whose product divides {n_devices}"
            )
        return cls(n_devices // (fsdp * tensor), fsdp, tensor)

    def mesh(self, devices: Any = None) -> Any:
        """A `jax.sharding.Mesh` with axes ("data", "fsdp", "tensor")."""
        import jax

        devices = jax.devices() if devices is None else devices
        return jax.make_mesh(
            (self.data, self.fsdp, self.tensor),
            ("data", "fsdp", "tensor"),
            axis_types=(jax.sharding.AxisType.Auto,) * 3,
            devices=devices,
        )
