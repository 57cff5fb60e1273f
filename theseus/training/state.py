"""A run's state: the model built abstract on the mesh, then resumed from the run's own
checkpoint, restored from another's (--restore), or initialized (from `architecture.init_from`
when set); saved as it trains.

A LoRA run (`finetune.lora.rank` > 0) trains and checkpoints only its adapters: the checkpoint's
`params` and `opt` are theirs, and its `meta` adds `lora` (the adapters' settings) and `base`
(`architecture.init_from`, the folder's model_type and fingerprint). The base's weights are read
from that folder again on resume, refused if its fingerprint changed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from theseus.checkpoint import FORMAT, Checkpointer, complete_steps, key_data, locate
from theseus.config import changed_settings
from theseus.data.tokenizers import describe_tokenizer, same_tokenizer
from theseus.errors import UserError
from theseus.job import ExecutionSpec
from theseus.model import lora
from theseus.parallel.distributed import barrier
from theseus.parallel.rules import (
    abstract_on_mesh,
    abstract_with,
    mirror_shardings,
    param_initializer,
)
from theseus.training.data import TrainingData
from theseus.training.metrics import RunLog
from theseus.training.plan import Plan
from theseus.training.pretrained import Pretrained, check_base
from theseus.training.step import TrainState


@dataclass
class Model:
    """The model of a run as the compiled steps take it: its graph and non-parameter state, and
    where its parameters and optimizer state live on the mesh. A LoRA run trains only its
    adapters (`lora.Adapted`): the rest of the parameters is `frozen`, with no optimizer state."""

    create: Callable[[], nnx.Module]
    graphdef: Any
    rest: nnx.State
    tx: optax.GradientTransformation
    param_shardings: Any
    opt_shardings: Any
    abstract: TrainState
    """Trained parameters and optimizer state as shapes carrying their shardings."""
    frozen: nnx.State | None = None
    """LoRA: the base's parameters, as shapes carrying their shardings; else None."""

    @classmethod
    def on_mesh(
        cls,
        create: Callable[[], nnx.Module],
        tx: optax.GradientTransformation,
        mesh: Mesh,
        *,
        adapted: bool = False,
    ) -> Model:
        graphdef, params, rest = abstract_on_mesh(create, mesh)
        frozen = None
        if adapted:
            params, frozen = nnx.split_state(params, lora.Adapted, ...)
        param_shardings = jax.tree.map(lambda x: x.sharding, params)
        opt = jax.eval_shape(tx.init, params)
        opt_shardings = mirror_shardings(param_shardings, opt, mesh)
        abstract = TrainState(params, abstract_with(opt, opt_shardings))
        return cls(create, graphdef, rest, tx, param_shardings, opt_shardings, abstract, frozen)

    def n_params(self) -> int:
        """Trained parameters (a LoRA run's adapters)."""
        return sum(x.size for x in jax.tree.leaves(self.abstract.params))

    def n_frozen(self) -> int:
        """Parameters held but not trained (a LoRA run's base)."""
        return sum(x.size for x in jax.tree.leaves(self.frozen)) if self.frozen else 0

    def merged(self, params: nnx.State, frozen: nnx.State | None = None) -> nnx.Module:
        """The model holding `params` (and the frozen ones: `frozen`, else their shapes)."""
        parts = [] if self.frozen is None else [self.frozen if frozen is None else frozen]
        return nnx.merge(self.graphdef, params, *parts, self.rest)

    def flops_per_token(self, seq_len: int) -> float:
        return float(self.merged(self.abstract.params).flops_per_token(seq_len))

    def initialize(self, abstract: nnx.State, kind: Any) -> nnx.State:
        """The parameters of `kind` (a filter) run through their initializers, in the shardings
        of `abstract` (only theirs are computed: the rest is dead code to XLA)."""
        shardings = jax.tree.map(lambda x: x.sharding, abstract)
        return jax.jit(lambda: nnx.state(self.create(), kind), out_shardings=shardings)()


def _is_abstract(tree: Any) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


class RunState:
    """The run's parameters and optimizer state (`state`), its step, and its checkpoints."""

    def __init__(
        self,
        model: Model,
        data: TrainingData,
        plan: Plan,
        identity: dict[str, Any],
        *,
        seed: int,
        token_budget: int | None,
        pretrained: Pretrained | None = None,
        adapters: lora.LoRAConfig | None = None,
    ) -> None:
        self.model, self.data, self.plan = model, data, plan
        self.checkpointer: Checkpointer  # the run's outputs give it one
        self.identity = identity  # job, trainer, config, spec: written with each checkpoint
        self.seed, self.token_budget = seed, token_budget
        self.pretrained, self.adapters = pretrained, adapters
        self.state = model.abstract
        self.frozen: nnx.State | None = None  # LoRA: the base's parameters, once loaded
        self.step = 0
        # tokens trained before `resumed_at` (a checkpoint's count: its batch may differ from ours)
        self.resumed_at, self.tokens_before = 0, 0

    def tokens_trained(self, step: int) -> int:
        """Tokens the run has trained on by the end of `step`."""
        return self.tokens_before + (step - self.resumed_at) * self.plan.tokens_per_step

    def meta(self, step: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "step": step,
            "seed": self.seed,
            "rng_key": key_data(jax.random.key(self.seed)),
            **self.identity,
            "vocab_size": self.data.vocab_size,
            "vocab_used": self.data.vocab_used,
            "tokenizer": self.data.tokenizer,
            "tokens": self.tokens_trained(step),
            "world": world(),
            **({"base": self.pretrained.record()} if self.pretrained else {}),
            **({"lora": dataclasses.asdict(self.adapters)} if self.model.frozen else {}),
        }

    def current_model(self) -> nnx.Module:
        """The model with the run's current weights."""
        return self.model.merged(self.state.params, self.frozen)

    def save(self, step: int, log: RunLog, val_loss: float | None = None) -> bool:
        before = len(self.checkpointer.failures)
        ok = self.checkpointer.save(
            step, self.state.params, self.state.opt, self.meta(step), val_loss
        )
        for message in self.checkpointer.failures[before:]:
            log.info(f"warning: {message}")
        return ok

    def load(self, path: Path, *, weights_only: bool, own: bool) -> dict[str, Any]:
        """Replace the state by a checkpoint (a step folder, checkpoint folder or run folder);
        returns the checkpoint's metadata."""
        directory, step = locate(path)
        reader = (
            self.checkpointer
            if own
            else Checkpointer(directory, read_only=True, asynchronous=False)
        )
        try:
            params, opt, meta = reader.restore(
                step, self.state.params, None if weights_only else self.state.opt
            )
        finally:
            if not own:
                reader.close()
        check_compatible(meta, self.data, f"checkpoint {directory}/{step}")
        if self.model.frozen is not None:
            check_base(meta, self.pretrained, f"checkpoint {directory}/{step}")
        self.state = TrainState(params, self.state.opt if weights_only else opt)
        if not weights_only:
            self.step = self.resumed_at = int(meta["step"])
            # checkpoints written before the count was kept: as if at this run's batch
            self.tokens_before = int(meta.get("tokens", self.step * self.plan.tokens_per_step))
            if self.token_budget is not None:  # the budget holds whatever batch got this far
                left = max(0, self.token_budget - self.tokens_before)
                steps = self.step + math.ceil(left / self.plan.tokens_per_step)
                self.plan = dataclasses.replace(self.plan, steps=steps)
        return meta

    def start(self, spec: ExecutionSpec, log: RunLog, *, weights_only: bool) -> None:
        """Resume from this run's latest checkpoint; else apply --restore and initialize whatever
        it did not fill. A resumed run never runs the initializers."""
        barrier("theseus-start-state")
        latest = self.checkpointer.latest_step()
        if latest is not None:
            meta = self.load(spec.checkpoint_dir / str(latest), weights_only=False, own=True)
            ignored = " (--restore {} ignored: the run has its own checkpoints)"
            note = ignored.format(spec.restore) if spec.restore else ""
            log.info(f"resuming {spec.name} from its checkpoint at step {self.step}{note}")
            if moved := world_change(meta.get("world"), world()):
                log.info(moved)
            self._warn_changed(meta, log)
            self._load_frozen()
            log.keep_until(self.step)
            return
        if spec.restore:
            self.load(Path(spec.restore), weights_only=weights_only, own=False)
            what = "weights" if weights_only else f"full state at step {self.step}"
            log.info(f"restored {what} from {spec.restore}")
        params, opt = self.state.params, self.state.opt
        if _is_abstract(params):
            if self.model.frozen is not None:  # LoRA: new adapters (the base is loaded below)
                params = self.model.initialize(params, lora.Adapted)
            elif self.pretrained is not None:
                params = self.pretrained.weights(params)
            else:
                params = param_initializer(self.model.create, params)()
        if _is_abstract(opt):
            opt = jax.jit(self.model.tx.init, out_shardings=self.model.opt_shardings)(params)
        self.state = TrainState(params, opt)
        self._load_frozen()
        log.keep_until(self.step)

    def _load_frozen(self) -> None:
        """LoRA: the base's parameters, from `architecture.init_from` (else initialized)."""
        if self.model.frozen is None or self.frozen is not None:
            return
        if self.pretrained is not None:
            self.frozen = self.pretrained.weights(self.model.frozen)
        else:
            base = nnx.All(nnx.Param, nnx.Not(lora.Adapted))
            self.frozen = self.model.initialize(self.model.frozen, base)

    def _warn_changed(self, meta: dict[str, Any], log: RunLog) -> None:
        changed = changed_settings(meta.get("config", {}), self.identity["config"])
        if not changed:
            return
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        goes_on = (
            "; the run goes on with the new ones (the learning-rate schedule too)"
            if self.step < self.plan.steps
            else ""
        )
        log.info(
            f"warning: settings changed since that checkpoint: {', '.join(changed[:5])}"
            f"{more}{goes_on}"
        )


def world() -> dict[str, Any]:
    """The processes and devices a checkpoint is written by (and a resumed run reads it on)."""
    return {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
    }


def world_change(saved: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """The start report's line when a run resumes on other processes or devices than its
    checkpoint was written by ("" when none changed, or the checkpoint did not record them).

    Changing them is allowed: the global batch and the batch of each step do not depend on
    them (data/loader.py), the checkpoint is restored onto the new mesh, and only the order in
    which gradients are summed changes (losses equal up to float rounding, not bitwise)."""
    if not saved:
        return ""
    keys = ("processes", "devices", "platform")
    if all(saved.get(k) == now[k] for k in keys):
        return ""

    def said(w: dict[str, Any]) -> str:
        return f"{w.get('processes')} process(es), {w.get('devices')} {w.get('platform')} device(s)"

    return (
        f"note: the world changed since that checkpoint: written by {said(saved)}, resumed on "
        f"{said(now)}; the same batches follow, split anew (losses equal up to float rounding)"
    )


def check_restore(
    spec: ExecutionSpec,
    data: TrainingData,
    plan: Plan,
    weights_only: bool,
    *,
    adapted: bool = False,
    pretrained: Pretrained | None = None,
) -> None:
    """Refuse a --restore that cannot apply: another vocabulary or tokenizer, or (full state)
    a checkpoint already at the last step. Ignored when the run resumes from its own."""
    path = Path(spec.restore)
    directory, step = locate(path)
    own = spec.place("checkpoints")
    if spec.fresh and directory.resolve() == own.resolve():
        raise UserError(
            f"--fresh --restore {path}: that is this run's own checkpoint, which --fresh "
            "moves aside; restore from another run (or drop --fresh to resume)"
        )
    if not spec.fresh and complete_steps(own):
        return
    reader = Checkpointer(directory, read_only=True, asynchronous=False)
    try:
        meta = reader.meta(step)
    finally:
        reader.close()
    check_compatible(meta, data, f"--restore {path}")
    if adapted:
        check_base(meta, pretrained, f"--restore {path}")
    if not weights_only and step >= plan.steps:
        raise UserError(
            f"--restore {path}: its checkpoint is at step {step} and this run ends at step "
            f"{plan.steps}, so nothing is left to train; raise training.steps (or "
            "training.tokens), or set training.restore_weights_only=true to start from its weights"
        )


def check_compatible(meta: dict[str, Any], data: TrainingData, where: str) -> None:
    """A checkpoint's weights only mean something with its vocabulary and tokenizer."""
    vocab = data.vocab_size
    if int(meta.get("vocab_size", vocab)) != vocab:
        raise UserError(
            f"{where}: the checkpoint has vocabulary {meta['vocab_size']}, this run {vocab}; "
            "set architecture.vocab_size to match"
        )
    theirs, ours = meta.get("tokenizer"), data.tokenizer
    if theirs and not same_tokenizer(theirs, ours):
        raise UserError(
            f"{where}: the checkpoint was trained with tokenizer {describe_tokenizer(theirs)}, "
            f"but the token store {data.stores[0].path.name} holds "
            f"{describe_tokenizer(ours)}; train on a store tokenized with the checkpoint's "
            "tokenizer, or start a new run"
        )
