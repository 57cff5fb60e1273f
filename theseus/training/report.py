"""What a training run says as it starts: its shape, and what it does differently than asked."""

from __future__ import annotations

from collections.abc import Iterator

import jax
from flax import nnx
from jax.sharding import Mesh

from theseus.job import ExecutionSpec
from theseus.parallel.doctor import unused_accelerators
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
    if settings.pretrained is not None:
        yield from settings.pretrained.describe()
    if state.model.frozen is not None:
        yield adapters_line(state, settings)
    if layout.fsdp * layout.tensor > 1:
        held = state.state.params
        if state.frozen is not None:
            held = nnx.merge_state(held, state.frozen)
        unsplit = unsplit_axes(held, mesh)
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
    yield from unused_accelerators()  # a collective: every process builds this report
    warmup = settings.optimization.warmup_steps
    if schedule != "constant" and warmup >= plan.steps:
        yield (
            f"warning: optimization.warmup_steps={warmup} covers the whole run "
            f"({steps}), so the learning rate never decays; lower warmup_steps"
        )


def adapters_line(state: RunState, settings: Settings) -> str:
    """LoRA: what trains, and the optimizer memory it takes against full fine-tuning."""
    model, config = state.model, settings.lora
    trained, total = model.n_params(), model.n_params() + model.n_frozen()
    everything = nnx.merge_state(model.abstract.params, model.frozen)
    full = _bytes(jax.eval_shape(model.tx.init, everything))
    return (
        f"LoRA rank {config.rank} (alpha {config.alpha:g}, dropout {config.dropout:g}) on "
        f"{', '.join(config.targets)}: {_count(trained)} trainable of {_count(total)} "
        f"({100 * trained / max(total, 1):.2g}%); optimizer state "
        f"{_megabytes(_bytes(model.abstract.opt))} vs {_megabytes(full)} for full fine-tuning"
    )


def _bytes(tree: object) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _megabytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"
