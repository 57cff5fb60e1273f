"""The shape of a run: global batch, per-device batch, gradient accumulation, step count.

The global batch (sequences per optimizer step) is what the config fixes, so the same config
trains the same way on any number of devices: the per-device batch is chosen to fit memory (or
set by `training.per_device_batch_size`) and gradient accumulation covers the rest.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from theseus.errors import UserError


@dataclass(frozen=True)
class Plan:
    """How one optimizer step is split across devices and micro-batches."""

    global_batch: int
    per_device_batch: int
    accumulation: int
    batch_shards: int
    seq_len: int
    steps: int

    @property
    def micro_batch(self) -> int:
        """Sequences per micro-batch across all devices."""
        return self.per_device_batch * self.batch_shards

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


def device_memory_bytes(device: Any, n_local_devices: int) -> float:
    """Memory one device may use: the accelerator's limit, or host RAM shared by CPU devices."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:
        stats = None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / max(1, n_local_devices)


def sequence_bytes(
    *, n_layers: int, d_model: int, n_heads: int, seq_len: int, vocab: int, compute_bytes: int
) -> float:
    """A rough upper bound of activation memory per sequence in one train step."""
    per_layer = (
        seq_len * d_model * 34 * compute_bytes / 2 + 2 * n_heads * seq_len * seq_len * compute_bytes
    )
    logits = seq_len * vocab * (compute_bytes + 4 + 4)
    return n_layers * per_layer + logits


def solve_plan(
    *,
    global_batch: int,
    per_device_batch: int | None,
    batch_shards: int,
    process_count: int,
    seq_len: int,
    steps: int | None,
    tokens: int | None,
    memory_bytes: float,
    state_bytes: float,
    sequence_bytes: float,
) -> Plan:
    """Check the batch settings against the devices and derive what was left automatic."""
    if global_batch < 1:
        raise UserError(f"training.batch_size must be >= 1, got {global_batch}")
    if global_batch % batch_shards:
        raise UserError(
            f"training.batch_size={global_batch} does not split over {batch_shards} data-parallel devices; "
            f"use a multiple of {batch_shards}"
        )
    if global_batch % process_count:
        raise UserError(
            f"training.batch_size={global_batch} does not split over {process_count} processes"
        )
    if batch_shards % process_count:  # each process loads its own rows of every batch
        raise UserError(
            f"the batch splits {batch_shards} way(s) (data x fsdp), which {process_count} processes "
            "cannot share; lower parallel.tensor so that each process holds its own batch shards"
        )
    rows = global_batch // batch_shards
    if per_device_batch is None:
        budget = max(0.0, 0.85 * memory_bytes - state_bytes)
        fit = max(1, int(budget // max(1.0, sequence_bytes)))
        per_device_batch = max(d for d in range(1, rows + 1) if rows % d == 0 and d <= fit)
    elif per_device_batch < 1 or rows % per_device_batch:
        raise UserError(
            f"training.per_device_batch_size={per_device_batch} does not divide the {rows} sequences each "
            f"of {batch_shards} device(s) gets from training.batch_size={global_batch}; use a divisor of {rows}"
        )
    if tokens is not None:
        if tokens < 1:
            raise UserError(f"training.tokens must be >= 1, got {tokens}")
        steps = math.ceil(tokens / (global_batch * seq_len))
    if steps is None or steps < 1:
        raise UserError(f"training.steps must be >= 1 (or set training.tokens), got {steps}")
    return Plan(
        global_batch, per_device_batch, rows // per_device_batch, batch_shards, seq_len, steps
    )


def _host_available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def step_memory(compiled: Any) -> tuple[float, float, str]:
    """(working memory a compiled step needs, memory free for it, where) from XLA's buffer plan.

    CPU devices of one process share the host's RAM, so their needs add up; an accelerator's
    need is compared with what its parameters and optimizer state left free.
    """
    import jax

    stats = compiled.memory_analysis()
    device = jax.local_devices()[0]
    temp = float(getattr(stats, "temp_size_in_bytes", 0) or 0)
    if device.platform == "cpu":
        return temp * jax.local_device_count(), _host_available_bytes(), "this host"
    memory = device.memory_stats() or {}
    if not memory.get("bytes_limit"):
        return 0.0, math.inf, str(device.device_kind)
    free = float(memory["bytes_limit"] - memory.get("bytes_in_use", 0))
    return temp, free, f"each {device.device_kind}"


def smaller_per_device_batch(plan: Plan) -> Plan | None:
    """The plan with the next smaller per-device batch (at most half), or None at 1."""
    rows = plan.global_batch // plan.batch_shards
    smaller = [d for d in range(1, plan.per_device_batch // 2 + 1) if rows % d == 0]
    if not smaller:
        return None
    return dataclasses.replace(plan, per_device_batch=smaller[-1], accumulation=rows // smaller[-1])
