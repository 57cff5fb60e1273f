"""Peak FLOP/s for MFU: the chip catalogue for accelerators, a measured matmul peak on CPU."""

from __future__ import annotations

import time
from typing import Any

from theseus.base.chips import CHIPS, Chip

# device_kind substrings per catalogue chip: any alternative matches when all its parts occur;
# the first chip that matches wins, so a variant comes before its family's plain name
_KIND_MARKERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "h100-pcie": (("h100", "pcie"),),
    "h100-nvl": (("h100", "nvl"),),
    "h100": (("h100",),),
    "h200": (("h200",),),
    "b200": (("b200",),),
    "a100-80gb": (("a100", "80gb"),),
    "a100-pcie-40gb": (("a100", "pcie"),),
    "a100-40gb": (("a100",),),
    "l40s": (("l40s",),),
    "l40": (("l40",),),
    "ada6000": (("6000", "ada"),),
    "a6000": (("a6000",),),
    "rtx4090": (("4090",),),
    "rtx5090": (("5090",),),
    "gb10": (("gb10",),),
    "tpu-v2": (("tpu v2",),),
    "tpu-v3": (("tpu v3",),),
    "tpu-v4": (("tpu v4",),),
    "tpu-v5e": (("tpu v5 lite",), ("v5e",)),
    "tpu-v5p": (("tpu v5p",), ("v5p",), ("tpu v5",)),  # v5p calls itself "TPU v5"
    "tpu-v6e": (("tpu v6",), ("v6e",)),
}


def chip_of(device: Any) -> Chip | None:
    """The catalogue entry of a JAX device, from its device_kind string."""
    kind = str(getattr(device, "device_kind", "")).lower()
    for name, alternatives in _KIND_MARKERS.items():
        if any(all(part in kind for part in parts) for parts in alternatives):
            return CHIPS[name]
    return None


MEASURED = "measured f32 matmul"


def measure_matmul_peak(size: int = 1024, repeats: int = 10, seconds: float = 0.3) -> float:
    """FLOP/s of the fastest float32 `size`^3 matmul through XLA on the default device, out of at
    least `repeats` tries over at least `seconds` (one try is ~10 ms: too short to miss a busy
    moment of a shared machine, so a few are not enough)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best, tries, began = float("inf"), 0, time.perf_counter()
    while tries < repeats or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
        tries += 1
    return 2 * size**3 / best


def peak_flops(devices: list[Any], process_count: int) -> tuple[float, str]:
    """Total peak FLOP/s of `devices` and where the figure came from.

    CPU devices of one process share the same cores, so their peak is one measurement per process.
    """
    device = devices[0]
    if device.platform == "cpu":
        return measure_matmul_peak() * process_count, MEASURED
    chip = chip_of(device)
    if chip is None or chip.bf16_flops is None:
        return 0.0, f"unknown chip {device.device_kind!r}"
    # a TPU v2 or v3 chip is two JAX devices (one per TensorCore); the catalogue is per chip
    per_chip = 2 if chip.name in ("tpu-v2", "tpu-v3") else 1
    return chip.bf16_flops * len(devices) / per_chip, f"{chip.name} bf16 datasheet"
