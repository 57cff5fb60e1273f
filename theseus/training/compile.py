"""Compiling a run's steps: the learning rates, the train step (its per-device batch lowered
until it fits memory, when that was left automatic) and the validation step."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from theseus.errors import UserError
from theseus.parallel.distributed import gathered
from theseus.parallel.placement import replicated, to_device
from theseus.parallel.reduction import Gradients
from theseus.training.optimizers import OptimizerConfig
from theseus.training.plan import Plan, smaller_per_device_batch, step_memory
from theseus.training.schedules import make_schedule
from theseus.training.settings import Settings
from theseus.training.state import Model
from theseus.training.step import TrainState, make_eval_step, make_train_step, on_leaves


def learning_rates(optim: OptimizerConfig, schedule: str, steps: int) -> np.ndarray:
    """The learning rate of each step's update. The update of step s (1-based) runs at
    schedule(s): the first moves the weights and the last is at `end_lr`."""
    rate = make_schedule(
        schedule,
        lr=optim.lr,
        min_lr=optim.end_lr,
        warmup_steps=optim.warmup_steps,
        total_steps=steps,
        decay_fraction=optim.decay_fraction,
    )
    return np.asarray(jax.jit(jax.vmap(rate))(jnp.arange(1, steps + 1)), np.float32)


def compile_train_step(
    plan: Plan,
    model: Model,
    state: TrainState,
    mesh: Mesh,
    settings: Settings,
    gradients: Gradients,
    say: Callable[[str], None],
    frozen: nnx.State | None = None,
) -> tuple[Any, Plan, float]:
    """The compiled train step over `state`'s leaves, the plan it fits and its compile seconds.
    An automatic per-device batch halves (`say` tells) until the step fits every device.

    `frozen` (LoRA: the base's parameters) is an input of the step that is neither trained nor
    donated; the step returned takes it already (its signature is the plain step's)."""
    frozen_leaves, frozen_treedef = jax.tree.flatten(frozen) if frozen is not None else ([], None)

    def build(plan: Plan) -> Any:
        training = settings.training
        step_fn = make_train_step(
            model.graphdef,
            model.rest,
            model.tx,
            seed=training.seed,
            accumulation=plan.accumulation,
            z_loss=training.z_loss,
            dropout=settings.architecture.dropout > 0,
            adapter_dropout=settings.adapted and settings.lora.dropout > 0,
            skip_nonfinite=training.on_nonfinite == "skip",
            gradients=gradients,
        )
        state_shardings = state.treedef.flatten_up_to(
            {"params": model.param_shardings, "opt": model.opt_shardings}
        )
        rows = (plan.global_batch // jax.process_count(), plan.seq_len)
        example = {
            "inputs": np.zeros(rows, np.int32),
            "targets": np.zeros(rows, np.int32),
            "loss_mask": np.zeros(rows, np.float32),
            "positions": np.zeros(rows, np.int32),
        }
        batch = to_device(example, mesh, plan.accumulation)
        batch_shardings = {k: v.sharding for k, v in batch.items()}
        scalars = (replicated(mesh), replicated(mesh))
        args = (state.leaves, batch, jnp.int32(0), jnp.float32(0))
        shardings = (state_shardings, batch_shardings, *scalars)
        if frozen_treedef is not None:
            args += (frozen_leaves,)
            shardings += ([x.sharding for x in frozen_leaves],)
        train = jax.jit(
            on_leaves(step_fn, state.treedef, frozen_treedef),
            in_shardings=shardings,
            out_shardings=(state_shardings, replicated(mesh)),
            donate_argnums=0,
        )
        return train.lower(*args).compile()

    def with_frozen(compiled: Any) -> Any:
        if frozen_treedef is None:
            return compiled
        return lambda *args: compiled(*args, frozen_leaves)

    while True:
        start = time.perf_counter()  # the compile that runs; a discarded one logs its size
        compiled = build(plan)
        compile_s = time.perf_counter() - start
        need, free, where = step_memory(compiled)
        if gathered(need <= free).all():  # the processes must agree on one step
            return with_frozen(compiled), plan, compile_s
        smaller = smaller_per_device_batch(plan)
        step = f"a train step with training.per_device_batch_size={plan.per_device_batch}"
        problem = (
            f"{step} needs {need / 2**30:.1f} GiB of working memory; {where} has "
            f"{free / 2**30:.1f} GiB free"
            if need > free
            else f"{step} does not fit the memory of another process"
        )
        if settings.training.per_device_batch_size is not None or smaller is None:
            raise UserError(
                f"{problem}. Lower training.per_device_batch_size (gradient accumulation keeps "
                "the global batch), or training.seq_len"
            )
        say(f"{problem}; trying {smaller.per_device_batch}")
        plan = smaller


def compile_eval_step(model: Model, mesh: Mesh, frozen: nnx.State | None = None) -> Any:
    """`(params, batch) -> (summed token loss, token count)`, jitted (with `frozen`, a LoRA
    run's base parameters, as a further input)."""
    evaluate = jax.jit(
        make_eval_step(model.graphdef, model.rest),
        out_shardings=(replicated(mesh), replicated(mesh)),
    )
    if frozen is None:
        return evaluate
    return lambda params, batch: evaluate(params, batch, frozen)
