"""What a training run says as it starts: its shape, and what it does differently than asked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax

from theseus.model.sharding import unsplit_axes
from theseus.training.mfu import chip_of

if TYPE_CHECKING:
    from theseus.training.session import Session


def start_report(session: Session, compile_s: float, peak: float, source: str) -> Iterator[str]:
    """The lines logged before the first step."""
    s, plan, layout = session, session.plan, session.layout
    devices = jax.devices()
    steps = f"{plan.steps} step{'' if plan.steps == 1 else 's'}"
    yield (
        f"{s.spec.name}: {steps} x {plan.global_batch} seqs x {plan.seq_len} tokens "
        f"(per device {plan.per_device_batch}, accumulation {plan.accumulation}) on "
        f"{layout.n_devices} {devices[0].platform} device(s) "
        f"[data {layout.data}, fsdp {layout.fsdp}, tensor {layout.tensor}]; "
        f"schedule {s.schedule_name}; compiled in {compile_s:.1f}s; "
        f"peak {peak / 1e12:.2f} TFLOP/s ({source})"
    )
    if layout.fsdp * layout.tensor > 1:
        unsplit = unsplit_axes(s.state.params, s.mesh)
        if unsplit:
            yield (
                "warning: parameters stay whole on every device along these axes, whose sizes "
                f"do not split: {', '.join(unsplit)}; choose sizes the splits divide (or fewer "
                "parallel.fsdp / parallel.tensor shards) to shard them"
            )
    asked, here = s.spec.request, chip_of(devices[0])
    kind = here.name if here is not None else devices[0].platform
    if asked.chip and (asked.chip != kind or (asked.n or len(devices)) != len(devices)):
        yield (
            f"note: the config asks for {asked.n or 'some'} x {asked.chip}; it runs here on "
            f"{len(devices)} x {kind} (the same global batch, so the same training, at "
            "another speed)"
        )
    if s.schedule_name != "constant" and s.optim.warmup_steps >= plan.steps:
        yield (
            f"warning: optimization.warmup_steps={s.optim.warmup_steps} covers the whole run "
            f"({steps}), so the learning rate never decays; lower warmup_steps"
        )
