"""What a training run says as it starts: its shape, and what it does differently than asked."""

from __future__ import annotations

from collections.abc import Iterator

import jax
from jax.sharding import Mesh

from theseus.job import ExecutionSpec
from theseus.parallel.mesh import Layout
from theseus.parallel.rules import unsplit_axes
from theseus.training.mfu import chip_of
from theseus.training.plan import Plan
from theseus.training.settings import Settings
from theseus.training.state import RunState


def start_report(
    spec: ExecutionSpec,
    plan: Plan,
    layout: Layout,
    mesh: Mesh,
    state: RunState,
    settings: Settings,
    schedule: str,
    compile_s: float,
    peak: float,
    source: str,
) -> Iterator[str]:
    """The lines logged before the first step."""
    devices = jax.devices()
    steps = f"{plan.steps} step{'' if plan.steps == 1 else 's'}"
    yield (
        f"{spec.name}: {steps} x {plan.global_batch} seqs x {plan.seq_len} tokens "
        f"(per device {plan.per_device_batch}, accumulation {plan.accumulation}) on "
        f"{layout.n_devices} {devices[0].platform} device(s) "
        f"[data {layout.data}, fsdp {layout.fsdp}, tensor {layout.tensor}]; "
        f"schedule {schedule}; compiled in {compile_s:.1f}s; "
        f"peak {peak / 1e12:.2f} TFLOP/s ({source})"
    )
    if layout.fsdp * layout.tensor > 1:
        unsplit = unsplit_axes(state.state.params, mesh)
        if unsplit:
            yield (
                "warning: parameters stay whole on every device along these axes, whose sizes "
                f"do not split: {', '.join(unsplit)}; choose sizes the splits divide (or fewer "
                "parallel.fsdp / parallel.tensor shards) to shard them"
            )
    asked, here = spec.request, chip_of(devices[0])
    kind = here.name if here is not None else devices[0].platform
    if asked.chip and (asked.chip != kind or (asked.n or len(devices)) != len(devices)):
        yield (
            f"note: the config asks for {asked.n or 'some'} x {asked.chip}; it runs here on "
            f"{len(devices)} x {kind} (the same global batch, so the same training, at "
            "another speed)"
        )
    warmup = settings.optimization.warmup_steps
    if schedule != "constant" and warmup >= plan.steps:
        yield (
            f"warning: optimization.warmup_steps={warmup} covers the whole run "
            f"({steps}), so the learning rate never decays; lower warmup_steps"
        )
