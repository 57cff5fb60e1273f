"""The steps of `BaseTrainer.run`, in order: mesh, data, state, outputs, compile, loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from theseus.base.stopping import StopSignals
from theseus.errors import UserError
from theseus.evaluation import check_evaluations
from theseus.parallel.distributed import barrier, use_compilation_cache
from theseus.parallel.mesh import Layout
from theseus.parallel.placement import to_device
from theseus.parallel.reduction import gradients_for
from theseus.training.compile import (
    compile_eval_step,
    compile_train_step,
    learning_rates,
)
from theseus.training.data import TrainingData
from theseus.training.evaluate import evaluator
from theseus.training.loop import TrainingLoop
from theseus.training.mfu import peak_flops
from theseus.training.optimizers import make_optimizer
from theseus.training.outputs import Outputs
from theseus.training.plan import device_memory_bytes, sequence_bytes, solve_plan
from theseus.training.plot import plot_runs
from theseus.training.report import start_report
from theseus.training.settings import Settings, resolved
from theseus.training.state import Model, RunState, check_restore


@contextlib.contextmanager
def collective_failures() -> Iterator[None]:
    """A process that stopped (a refused setting, a crash) leaves the others waiting in a
    collective until it times out; their own error would name only the collective."""
    try:
        yield
    except jax.errors.JaxRuntimeError as exc:
        if jax.process_count() > 1 and "DEADLINE_EXCEEDED" in str(exc):
            raise UserError(
                f"process {jax.process_index()}: the other processes of this job stopped "
                "answering (one of them most likely failed: see its output)"
            ) from None
        raise


def make_mesh(settings: Settings, tensor_shards: int) -> tuple[Mesh, Layout]:
    use_compilation_cache(settings.training.compilation_cache)
    devices = jax.devices()
    if devices[0].platform == "cpu" and settings.architecture.dtype == "float16":
        raise UserError(
            "architecture.dtype=float16 does not run on CPU (XLA's CPU matmuls have no "
            "float16 form); use bfloat16 or float32"
        )
    layout = Layout.solve(len(devices), settings.parallel.fsdp, tensor_shards)
    return layout.mesh(devices), layout


def build_state(
    trainer: Any, settings: Settings, mesh: Mesh, layout: Layout, data: TrainingData
) -> RunState:
    """The model and optimizer state, abstract on the mesh, and the run's plan; then every
    check that can still refuse the run, before --fresh moves anything aside."""
    training, arch, evals = settings.training, settings.architecture, settings.eval
    if evals.evaluations and jax.process_count() > 1:
        raise UserError(
            "eval.evaluations during training runs in a single process; "
            "score the checkpoint with gpt/evaluate instead"
        )
    create = type(trainer).model_factory(
        trainer.cfg, vocab_size=data.vocab_size, vocab_used=data.vocab_used, seed=training.seed
    )
    tx = make_optimizer(settings.optimization)
    model = Model.on_mesh(create, tx, mesh, adapted=settings.adapted)
    # trained parameters with their gradients and Adam moments; frozen ones as they are
    held = 16.0 * model.n_params() + 4.0 * model.n_frozen()
    plan = solve_plan(
        global_batch=training.batch_size,
        per_device_batch=training.per_device_batch_size,
        batch_shards=layout.batch_shards,
        process_count=jax.process_count(),
        seq_len=data.seq_len,
        steps=training.steps,
        tokens=training.tokens,
        memory_bytes=device_memory_bytes(jax.devices()[0], jax.local_device_count()),
        state_bytes=held / (layout.fsdp * layout.tensor),
        sequence_bytes=sequence_bytes(
            n_layers=arch.n_layers,
            d_model=arch.d_model,
            n_heads=arch.n_heads,
            seq_len=data.seq_len,
            vocab=data.vocab_size,
            compute_bytes=np.dtype(jax.numpy.dtype(arch.dtype)).itemsize,
        ),
    )
    # the step count training.tokens gives (training.steps's was checked with the config)
    if training.stop_at is not None and training.stop_at >= plan.steps:
        raise UserError(
            f"training.stop_at={training.stop_at} is not before the last step ({plan.steps}, "
            "from training.tokens); lower it, or leave it unset"
        )
    from theseus.registry import JOBS

    job = type(trainer)
    identity = {
        "job": JOBS.name_of(job),
        "trainer": f"{job.__module__}:{job.__qualname__}",
        "config": resolved(trainer.cfg),
        "spec": trainer.spec.as_dict(),
    }
    if trainer.spec.restore:
        check_restore(
            trainer.spec,
            data,
            plan,
            training.restore_weights_only,
            adapted=settings.adapted,
            pretrained=settings.pretrained,
        )
    if evals.evaluations:
        tokenizer = data.stores[0].tokenizer()
        check_evaluations(evals.evaluations, trainer.cfg, tokenizer, plan.seq_len)
    trainer.start_over_if_asked()
    return RunState(
        model,
        data,
        plan,
        identity,
        seed=training.seed,
        token_budget=training.tokens,
        pretrained=settings.pretrained,
        adapters=settings.lora,
    )


def compile_steps(
    settings: Settings, mesh: Mesh, layout: Layout, state: RunState, out: Outputs
) -> tuple[Any, float]:
    """The compiled train step; the plan takes the per-device batch that fits."""
    platform = jax.devices()[0].platform
    compiled, state.plan, compile_s = compile_train_step(
        state.plan,
        state.model,
        state.state,
        mesh,
        settings,
        gradients_for(layout, platform),
        out.log.info,
        state.frozen,
    )
    return compiled, compile_s


def make_loop(
    trainer: Any,
    settings: Settings,
    mesh: Mesh,
    layout: Layout,
    data: TrainingData,
    state: RunState,
    out: Outputs,
    step_fn: Any,
    compile_s: float,
) -> TrainingLoop:
    """The loop over the compiled step, once the run has said how it starts."""
    plan, logging, evals = state.plan, settings.logging, settings.eval
    schedule = settings.optimization.schedule or trainer.schedule()
    loader = data.loader("train", plan)
    out.closing.append(loader)
    peak, source = peak_flops(jax.devices(), jax.process_count())
    for line in start_report(
        trainer.spec, plan, layout, mesh, state, settings, schedule, compile_s, peak, source
    ):
        out.log.info(line)
    val_batches = (
        data.validation_batches(plan, logging.val_batches, out.log.info)
        if logging.val_interval
        else []
    )
    # steps dispatched past the one the loop waits for (None: once per logging interval). Several
    # devices in one process keep one step queued behind the running one, which hides the
    # dispatch (a few % of a small model's step on CPU) and bounds XLA's queue of executions with
    # collectives. Several processes wait for each step: the stop check between steps is a
    # collective of its own, which must not run beside a step's.
    steps_ahead = None
    if layout.n_devices > 1:
        steps_ahead = 1 if jax.process_count() == 1 else 0
    return TrainingLoop(
        step_fn=step_fn,
        eval_fn=compile_eval_step(state.model, mesh, state.frozen),
        run=state,
        loader=loader,
        to_device=lambda batch, accumulation: to_device(batch, mesh, accumulation),
        learning_rates=learning_rates(settings.optimization, schedule, plan.steps),
        log=out.log,
        logging=logging,
        val_batches=val_batches,
        evaluate=evaluator(trainer.cfg, settings, data, state, out.log)
        if evals.evaluations
        else None,
        eval_interval=evals.interval,
        flops_per_token=state.model.flops_per_token(plan.seq_len),
        peak_flops=peak,
        peak_source=source,
        steps_ahead=steps_ahead,
        stop_at=settings.training.stop_at,
        skip_nonfinite=settings.training.on_nonfinite == "skip",
        z_loss=bool(settings.training.z_loss),
    )


def train(loop: TrainingLoop, stop: StopSignals, out: Outputs, compile_s: float) -> dict[str, Any]:
    out.started = True
    barrier("theseus-first-step")  # compiling can take each process a different time
    plan = loop.run_state.plan
    try:
        last = loop.run(stop)
    except jax.errors.JaxRuntimeError as exc:
        if "RESOURCE_EXHAUSTED" not in str(exc):
            raise
        raise UserError(
            f"out of memory at step {loop.run_state.step} with training.per_device_batch_size="
            f"{plan.per_device_batch}; lower it (gradient accumulation keeps the global batch)"
        ) from None
    if out.main:
        plot_runs([out.spec.run_dir], out.spec.run_dir / "loss.png", labels=[out.spec.name])
    summary = {"compile_s": compile_s, "peak_flops": loop.peak_flops}
    return {**last, **summary, "peak_source": loop.peak_source}
