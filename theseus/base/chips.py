"""The accelerators theseus knows: memory and dense bf16 peak, from each vendor's datasheet.

Peaks are dense (no structured sparsity) bf16 matrix throughput per chip; MFU is measured against
them. The CPU has no datasheet figure: its peak is measured at start-up instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from theseus.errors import UserError

TERA = 1e12
GIB = 1024**3
GB = 1e9


@dataclass(frozen=True)
class Chip:
    """One accelerator model."""

    name: str
    vendor: str
    memory_bytes: float
    bf16_flops: float | None
    description: str

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


_CATALOGUE = [
    Chip("cpu", "any", 0.0, None, "host CPU (peak measured at start-up)"),
    Chip("h100", "nvidia", 80 * GB, 989.4 * TERA, "NVIDIA H100 SXM5 80GB"),
    Chip("h100-pcie", "nvidia", 80 * GB, 756.5 * TERA, "NVIDIA H100 PCIe 80GB"),
    Chip("h100-nvl", "nvidia", 94 * GB, 835.5 * TERA, "NVIDIA H100 NVL 94GB"),
    Chip("h200", "nvidia", 141 * GB, 989.4 * TERA, "NVIDIA H200 SXM 141GB"),
    Chip("b200", "nvidia", 180 * GB, 2250 * TERA, "NVIDIA B200 (HGX) 180GB"),
    Chip("a100-40gb", "nvidia", 40 * GB, 312 * TERA, "NVIDIA A100 SXM4 40GB"),
    Chip("a100-80gb", "nvidia", 80 * GB, 312 * TERA, "NVIDIA A100 SXM4 80GB"),
    Chip("a100-pcie-40gb", "nvidia", 40 * GB, 312 * TERA, "NVIDIA A100 PCIe 40GB"),
    Chip("l40s", "nvidia", 48 * GB, 362.05 * TERA, "NVIDIA L40S 48GB"),
    Chip("l40", "nvidia", 48 * GB, 181.05 * TERA, "NVIDIA L40 48GB"),
    Chip("a6000", "nvidia", 48 * GB, 154.8 * TERA, "NVIDIA RTX A6000 48GB"),
    # NVIDIA's Ada pro-visualization whitepaper lists 364.2 TFLOP/s dense bf16 (728.5 sparse),
    # as the datasheet's 1,457 TFLOP/s (FP8, sparse) implies; the ~182 often quoted scales the
    # RTX 4090's half-rate FP32 accumulation to this card, which NVIDIA's figures do not show.
    Chip("ada6000", "nvidia", 48 * GB, 364.2 * TERA, "NVIDIA RTX 6000 Ada Generation 48GB"),
    Chip("rtx4090", "nvidia", 24 * GB, 165.2 * TERA, "NVIDIA GeForce RTX 4090 24GB"),
    Chip("rtx5090", "nvidia", 32 * GB, 209.5 * TERA, "NVIDIA GeForce RTX 5090 32GB"),
    # NVIDIA gives only "1 PFLOP FP4 with sparsity". Its GPU is an RTX 5070's (6,144 cores,
    # sm_12x), on which dense bf16 with FP32 accumulation runs at 1/16 of sparse FP4 (RTX 5090:
    # 3,352 -> 209.5), hence 62.5 TFLOP/s.
    Chip("gb10", "nvidia", 128 * GB, 62.5 * TERA, "NVIDIA GB10 (DGX Spark) 128GB unified"),
    # v2 and v3 chips hold two TensorCores, each its own JAX device; figures are per chip.
    Chip("tpu-v2", "google", 16 * GIB, 45 * TERA, "Google Cloud TPU v2 (16 GiB HBM)"),
    Chip("tpu-v3", "google", 32 * GIB, 123 * TERA, "Google Cloud TPU v3 (32 GiB HBM)"),
    Chip("tpu-v4", "google", 32 * GIB, 275 * TERA, "Google Cloud TPU v4 (32 GiB HBM)"),
    Chip("tpu-v5e", "google", 16 * GIB, 197 * TERA, "Google Cloud TPU v5e (16 GiB HBM)"),
    Chip("tpu-v5p", "google", 95 * GIB, 459 * TERA, "Google Cloud TPU v5p (95 GiB HBM)"),
    Chip("tpu-v6e", "google", 32 * GIB, 918 * TERA, "Google Cloud TPU v6e Trillium (32 GiB HBM)"),
]

CHIPS: dict[str, Chip] = {chip.name: chip for chip in _CATALOGUE}

# The names the system theseus follows gives to chips of this catalogue, so that its commands
# and configs work as written.
ALIASES: dict[str, str] = {"a100-sxm4-80gb": "a100-80gb"}


def get_chip(name: str) -> Chip:
    """The catalogue entry for `name` or an alias of it; an unknown name is an error listing the
    known ones."""
    key = name.lower()
    chip = CHIPS.get(ALIASES.get(key, key))
    if chip is None:
        raise UserError(f"unknown chip {name!r}; known chips: {', '.join(CHIPS)}")
    return chip


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity (a SLURM or cgroup slice of a large
    node, `taskset`), not the node's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
