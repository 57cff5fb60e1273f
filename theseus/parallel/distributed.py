"""Before and between a run's devices: XLA's flags, CPU devices per core, joining a
multi-process JAX job, and the small agreements its processes reach (`gathered`, `barrier`).

The same code runs on one CPU, on one GPU box and on a SLURM allocation: `initialize_distributed()`
reads the environment (explicit `THESEUS_*` variables first, then SLURM) and is a no-op for a
single process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from theseus.base.chips import usable_cores
from theseus.base.tasks import env_int
from theseus.errors import UserError
from theseus.parallel.mesh import Layout

_initialized = False


def is_multiprocess() -> bool:
    """Whether the environment describes a job of several processes (THESEUS_NUM_PROCESSES or
    SLURM_NTASKS above 1). A coordinator alone does not: a SLURM job of one task names one too."""
    coordinated = os.environ.get("THESEUS_COORDINATOR")
    if coordinated and None in (env_int("THESEUS_NUM_PROCESSES"), env_int("THESEUS_PROCESS_ID")):
        raise UserError(
            "THESEUS_COORDINATOR is set but THESEUS_NUM_PROCESSES or THESEUS_PROCESS_ID is not; set all three"
        )
    return (env_int("THESEUS_NUM_PROCESSES") or 1) > 1 or (env_int("SLURM_NTASKS") or 1) > 1


GPU_XLA_FLAGS = {"xla_gpu_enable_triton_gemm": "false"}
"""XLA settings theseus applies unless XLA_FLAGS names them: cuBLAS for every matmul, faster than
XLA's Triton GEMM fusions (bench/FINDINGS.md). XLA's CPU backend ignores them."""


def apply_default_xla_flags() -> list[str]:
    """Add `GPU_XLA_FLAGS` the user has not set to XLA_FLAGS, before JAX starts; returns them."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in GPU_XLA_FLAGS.items() if name not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


_CPU_DEVICES_SET: int | None = None
"""The CPU device count `split_cpu_into_cores` gave JAX in this process, if it did."""


def split_cpu_into_cores(
    requested: int | None,
    *,
    global_batch: int,
    per_device_batch: int | None = None,
    fsdp: int = 1,
    tensor: int = 1,
) -> int | None:
    """Give a single-process run one JAX CPU device per core; returns the count it set.

    XLA's CPU runtime runs a step's ops mostly one at a time, each on one core, so a step on a
    single device leaves cores idle; data parallelism over one device per core keeps them busy
    (bench/FINDINGS.md). `requested` (parallel.cpu_devices)
    fixes the count; None picks the most devices, at most one per core, that `Layout.solve`
    accepts for `fsdp` and `tensor` and whose batch shards split the batch. Nothing changes on
    an accelerator, in a multi-process job, once JAX has started its backends, or when
    XLA_FLAGS / jax_num_cpu_devices set a count.
    """
    import jax
    from jax._src import xla_bridge

    global _CPU_DEVICES_SET
    ours = _CPU_DEVICES_SET is not None and jax.config.jax_num_cpu_devices == _CPU_DEVICES_SET
    counted = not ours and (
        jax.config.jax_num_cpu_devices != -1
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    )
    if requested is not None and counted:
        print(
            f"warning: parallel.cpu_devices={requested} is ignored: XLA_FLAGS "
            "(--xla_force_host_platform_device_count) or JAX_NUM_CPU_DEVICES sets the count",
            file=sys.stderr,
        )
    if requested is not None and is_multiprocess():
        print(
            f"warning: parallel.cpu_devices={requested} is ignored: a run of several processes "
            "has one CPU device per process",
            file=sys.stderr,
        )
    if is_multiprocess() or counted:
        return None
    if requested is not None and requested < 1:
        raise UserError(f"parallel.cpu_devices must be >= 1 or null, got {requested}")

    def fits(n: int) -> bool:
        try:
            shards = Layout.solve(n, fsdp, tensor).batch_shards
        except UserError:
            return False
        if global_batch % shards:
            return False
        return per_device_batch is None or (global_batch // shards) % per_device_batch == 0

    count = requested or max((n for n in range(1, usable_cores() + 1) if fits(n)), default=1)
    if xla_bridge.backends_are_initialized():
        # an earlier run of this process (the Python API) gave JAX its devices, for good
        if ours and count != _CPU_DEVICES_SET and (requested or not fits(_CPU_DEVICES_SET)):
            raise UserError(
                f"JAX already runs on {_CPU_DEVICES_SET} CPU devices in this process (an earlier "
                f"run set them) and this run needs {count}; run it in a new process"
            )
        return None
    jax.config.update("jax_num_cpu_devices", count)
    _CPU_DEVICES_SET = count
    return count


def initialize_distributed() -> None:
    """Join a multi-process JAX job when the environment describes one; otherwise do nothing.

    `THESEUS_COORDINATOR` (host:port), `THESEUS_NUM_PROCESSES` and `THESEUS_PROCESS_ID` take
    precedence; else a SLURM step with more than one task is detected by JAX itself. On CPU the
    gloo collectives are selected first, since the default CPU backend has none across processes.
    """
    global _initialized
    if _initialized or not is_multiprocess():
        return
    coordinator = os.environ.get("THESEUS_COORDINATOR")
    num_processes = env_int("THESEUS_NUM_PROCESSES")
    process_id = env_int("THESEUS_PROCESS_ID")

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator and num_processes is not None and process_id is not None:  # is_multiprocess
        if not 0 <= process_id < num_processes:
            raise UserError(f"THESEUS_PROCESS_ID={process_id} is outside 0..{num_processes - 1}")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()
    _initialized = True


def gathered(flag: bool) -> Any:
    """`flag` as each process of the job holds it (a numpy array; one process: its own)."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return np.array([flag])
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(np.array([flag]))


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


def use_compilation_cache(folder: str | None, min_seconds: float | None = None) -> None:
    """Point JAX's persistent compilation cache at `folder` (keeping programs that took at least
    `min_seconds` to compile, when given), unless one is configured already."""
    import jax

    if folder is None or jax.config.jax_compilation_cache_dir:
        return
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(Path(folder).expanduser()))
    if min_seconds is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
