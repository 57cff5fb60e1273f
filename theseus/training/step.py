"""The train step: one pure function of (state, batch, step), jitted once with donated state.

The loss is integer-label cross-entropy computed in float32 from the logits (log-sum-exp minus
the label's logit; never a one-hot of the vocabulary; `theseus.model.kernels.cross_entropy`),
with an optional z-loss. Gradient
accumulation runs inside the step as a scan over micro-batches. Dropout keys are
`fold_in(key(seed), step)` (and the micro-batch and batch-shard index), so a resumed run draws
the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from theseus.model.kernels import cross_entropy
from theseus.parallel.reduction import Gradients

PLAIN = Gradients()


def make_train_step(
    graphdef: Any,
    rest: nnx.State,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    accumulation: int,
    z_loss: float = 0.0,
    dropout: bool = False,
    adapter_dropout: bool = False,
    skip_nonfinite: bool = False,
    gradients: Gradients = PLAIN,
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """The pure train step `(state, batch, step, lr[, frozen]) -> (state, metrics)`.

    The learning rate comes in as an argument (the schedule evaluated at `step`), so one compiled
    step serves any schedule, peak rate or run length.

    `state` is `{"params": ..., "opt": ...}`; `batch` arrays are `[accumulation, micro, seq]`.
    Metrics: loss (mean token cross-entropy of the batch), z_loss, grad_norm (before clipping),
    lr, and finite (whether loss and gradients were finite).

    `gradients` says how they meet across data-parallel devices (`theseus.parallel.reduction`).

    `frozen` (LoRA: the base's parameters) joins `state["params"]` in the model but is no
    variable of the differentiation: it gets no gradient and no optimizer state, and the step
    does not return it. `adapter_dropout` turns on the adapters' dropout (`model.train()`).
    """

    def loss_fn(
        params: nnx.State, rows: dict[str, jax.Array], key: jax.Array, frozen: tuple[Any, ...]
    ) -> Any:
        # `rows`: a micro-batch, or one shard of it. Divided by the batch's (static) number of
        # positions, not by its count of loss tokens: that count is a sum across devices, and
        # waiting for it would put a collective before the backward pass. The gradients are
        # rescaled to the token count after their reduction.
        # a copy: reseeding must not touch the dropout keys of `rest`, made outside this trace
        model = nnx.merge(graphdef, params, *frozen, rest, copy=True)
        if dropout or adapter_dropout:
            nnx.reseed(model, dropout=key)
        if adapter_dropout:
            model.train()
        logits = model(rows["inputs"], rows["positions"], deterministic=not dropout)
        ce, z = cross_entropy(logits, rows["targets"], rows["loss_mask"])
        positions = accumulation * gradients.shards * rows["loss_mask"].size
        return (ce + z_loss * z) / positions, (ce, z)

    def step_fn(
        state: dict[str, Any],
        batch: dict[str, jax.Array],
        step: jax.Array,
        lr: jax.Array,
        *frozen: Any,
    ) -> Any:
        def differentiated(params: nnx.State, rows: dict[str, jax.Array], key: jax.Array) -> Any:
            return loss_fn(params, rows, key, frozen)

        micro_grads = gradients.of(jax.grad(differentiated, has_aux=True))
        params = state["params"]
        key = jax.random.fold_in(jax.random.key(seed), step)
        n_tokens = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
        if accumulation == 1:
            micro = jax.tree.map(lambda x: x[0], batch)
            grads, (ce, z) = micro_grads(params, micro, key)
        else:

            def body(carry: Any, xs: Any) -> Any:
                grads, ce, z = carry
                index, micro = xs
                g, (c, zz) = micro_grads(params, micro, jax.random.fold_in(key, index))
                return (jax.tree.map(jnp.add, grads, g), ce + c, z + zz), None

            init = (gradients.zeros(params), jnp.float32(0.0), jnp.float32(0.0))
            (grads, ce, z), _ = jax.lax.scan(body, init, (jnp.arange(accumulation), batch))
        grads = gradients.reduce(grads)
        rescale = batch["loss_mask"].size / n_tokens
        grads = jax.tree.map(lambda g, p: (g * rescale).astype(p.dtype), grads, params)
        loss = ce / n_tokens
        grad_norm = optax.tree.norm(grads)
        updates, opt = tx.update(grads, state["opt"], params)
        updates = jax.tree.map(lambda u: (u * lr).astype(u.dtype), updates)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_params = jax.tree.map(keep, new_params, params)
            opt = jax.tree.map(keep, opt, state["opt"])
        metrics = {
            "loss": loss,
            "z_loss": z / n_tokens,
            "grad_norm": grad_norm,
            "lr": jnp.asarray(lr, jnp.float32),
            "finite": finite,
        }
        return {"params": new_params, "opt": opt}, metrics

    return step_fn


class TrainState:
    """Parameters and optimizer state, held as the flat list of arrays the compiled step takes
    and returns (see `on_leaves`): flattening nnx's Variables at every call is a measurable part
    of a small model's step (bench/FINDINGS.md). The tree is rebuilt when asked for."""

    def __init__(self, params: nnx.State, opt: Any) -> None:
        tree = {"params": params, "opt": opt}
        self.leaves, self.treedef = jax.tree.flatten(tree)
        self._tree: dict[str, Any] | None = tree

    @property
    def tree(self) -> dict[str, Any]:
        if self._tree is None:
            self._tree = jax.tree.unflatten(self.treedef, self.leaves)
        return self._tree

    @property
    def params(self) -> nnx.State:
        return self.tree["params"]

    @property
    def opt(self) -> Any:
        return self.tree["opt"]

    def advance(self, leaves: list[jax.Array]) -> None:
        """Take a step's new leaves (the step consumed the old ones)."""
        self.leaves, self._tree = leaves, None


def on_leaves(
    step_fn: Callable[..., Any], treedef: Any, frozen_treedef: Any = None
) -> Callable[..., Any]:
    """`step_fn` taking and returning the leaves of a `TrainState` instead of its tree (and,
    given `frozen_treedef`, taking the leaves of the frozen parameters as its last argument)."""

    def flat_step(leaves: list[jax.Array], *args: Any) -> tuple[list[jax.Array], Any]:
        if frozen_treedef is not None:
            *args, frozen = args
            args = [*args, jax.tree.unflatten(frozen_treedef, frozen)]
        state, metrics = step_fn(jax.tree.unflatten(treedef, leaves), *args)
        return treedef.flatten_up_to(state), metrics

    return flat_step


def make_eval_step(graphdef: Any, rest: nnx.State) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """`(params, batch[, frozen]) -> (summed token loss, token count)` for a `[batch, seq]`
    batch (`frozen`: the parameters a LoRA run does not train)."""

    def eval_fn(
        params: nnx.State, batch: dict[str, jax.Array], *frozen: Any
    ) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(graphdef, params, *frozen, rest, copy=True)
        logits = model(batch["inputs"], batch["positions"], deterministic=True)
        ce, _ = cross_entropy(logits, batch["targets"], batch["loss_mask"])
        return ce, jnp.sum(batch["loss_mask"].astype(jnp.float32))

    return eval_fn
