"""One training session of a `BaseTrainer`: devices, data, model, optimizer, checkpoints, loop.

Kept apart from `base.py` so that the job class stays a short, readable declaration while this
module holds the moving parts, in the order they happen.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from theseus.base.topology import Layout, barrier, gathered
from theseus.checkpoint import FORMAT, Checkpointer, complete_steps, key_data, locate
from theseus.config import changed_settings, configure
from theseus.data.loader import Loader, open_mixture
from theseus.data.tokenizers import describe_tokenizer, same_tokenizer
from theseus.errors import UserError
from theseus.evaluation import check_evaluations
from theseus.evaluation.base import EvalConfig
from theseus.model.sharding import (
    abstract_on_mesh,
    abstract_with,
    mirror_shardings,
    param_initializer,
)
from theseus.training.loop import TrainingLoop
from theseus.training.metrics import LoggingConfig, RunLog
from theseus.training.mfu import MEASURED, peak_flops
from theseus.training.optimizers import OptimizerConfig, make_optimizer
from theseus.training.plan import (
    Plan,
    device_memory_bytes,
    sequence_bytes,
    smaller_per_device_batch,
    solve_plan,
    step_memory,
)
from theseus.training.plot import plot_runs
from theseus.training.report import start_report
from theseus.training.schedules import make_schedule
from theseus.training.step import TrainState, make_eval_step, make_train_step, on_leaves

if TYPE_CHECKING:
    from theseus.base.stopping import StopSignals
    from theseus.training.base import BaseTrainer, BaseTrainerConfig

BATCH_AXES = ("data", "fsdp")


def _is_abstract(state: Any) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))


class Session:
    """Everything one `run()` of a trainer holds; `train()` is the loop."""

    def __init__(self, trainer: BaseTrainer) -> None:
        from theseus.training.base import ParallelConfig, padded_vocab

        self.trainer = trainer
        self.spec = trainer.spec
        cfg = trainer.cfg
        self.config: BaseTrainerConfig = trainer.config
        self.optim = configure(OptimizerConfig, cfg)
        self.logging = configure(LoggingConfig, cfg)
        parallel = configure(ParallelConfig, cfg)
        self.arch = configure(type(trainer).MODEL.CONFIG, cfg)
        self.evals = configure(EvalConfig, cfg)
        self._scorer: Any = None
        self.process = jax.process_index()
        self.process_count = jax.process_count()
        self.main = self.process == 0
        if self.evals.evaluations and self.process_count > 1:
            raise UserError(
                "eval.evaluations during training runs in a single process; "
                "score the checkpoint with gpt/evaluate instead"
            )

        _use_compilation_cache(self.config.compilation_cache)

        # devices
        devices = jax.devices()
        if devices[0].platform == "cpu" and self.arch.dtype == "float16":
            raise UserError(
                "architecture.dtype=float16 does not run on CPU (XLA's CPU matmuls have no "
                "float16 form); use bfloat16 or float32"
            )
        self.layout = Layout.solve(len(devices), parallel.fsdp, trainer.tensor_shards())
        self.mesh = self.layout.mesh(devices)
        # steps dispatched past the one the loop waits for (None: it waits once per logging
        # interval). Several devices in one process keep one step queued behind the running one,
        # which hides the dispatch (2% of a small model's step on CPU) and bounds XLA's queue of
        # executions with collectives. Several processes wait for each step: the stop check
        # between steps is a collective of its own, which must not run beside a step's.
        self.steps_ahead: int | None = None
        if len(devices) > 1:
            self.steps_ahead = 1 if self.process_count == 1 else 0
        # a replicated model's gradients are reduced once, as one buffer, on CPU (see sum_shards);
        # a GPU overlaps each array's reduction with the rest of the backward pass instead
        replicated = self.layout.fsdp == self.layout.tensor == 1
        self.grad_shards = self.layout.data if replicated and devices[0].platform == "cpu" else 1

        # data
        self.stores = open_mixture(self.spec.root, self.config.dataset)
        self.rates = [mix.rate for mix in self.config.dataset]
        store_vocab = self.stores[0].manifest.vocab_size
        vocab = self.arch.vocab_size or padded_vocab(store_vocab)
        if vocab < store_vocab:
            raise UserError(
                f"architecture.vocab_size={vocab} is smaller than the token store's vocabulary ({store_vocab})"
            )
        self.vocab_size = vocab
        self.vocab_used = self.arch.vocab_used or store_vocab
        if not store_vocab <= self.vocab_used <= vocab:
            raise UserError(
                f"architecture.vocab_used={self.vocab_used} must lie between the token store's "
                f"vocabulary ({store_vocab}) and architecture.vocab_size ({vocab}); leave it null"
            )
        seq_len = self.config.seq_len or self.arch.block_size
        if seq_len > self.arch.block_size and self.arch.positions == "learned":
            raise UserError(
                f"training.seq_len={seq_len} exceeds architecture.block_size={self.arch.block_size}"
            )

        # model, plan: the parameters stay abstract until `start_state` restores or initializes them
        self._create = type(trainer).model_factory(
            cfg, vocab_size=vocab, vocab_used=self.vocab_used, seed=self.config.seed
        )
        self.graphdef, params, self.rest = abstract_on_mesh(self._create, self.mesh)
        n_params = sum(x.size for x in jax.tree.leaves(params))
        compute_bytes = jnp.dtype(self.arch.dtype).itemsize
        self.plan: Plan = solve_plan(
            global_batch=self.config.batch_size,
            per_device_batch=self.config.per_device_batch_size,
            batch_shards=self.layout.batch_shards,
            process_count=self.process_count,
            seq_len=seq_len,
            steps=self.config.steps,
            tokens=self.config.tokens,
            memory_bytes=device_memory_bytes(devices[0], jax.local_device_count()),
            state_bytes=16.0 * n_params / (self.layout.fsdp * self.layout.tensor),
            sequence_bytes=sequence_bytes(
                n_layers=self.arch.n_layers,
                d_model=self.arch.d_model,
                n_heads=self.arch.n_heads,
                seq_len=seq_len,
                vocab=vocab,
                compute_bytes=compute_bytes,
            ),
        )
        abstract_model = nnx.merge(self.graphdef, params, self.rest)
        self.flops_per_token = float(abstract_model.flops_per_token(seq_len))

        # optimizer, its state abstract like the parameters
        self.param_shardings = jax.tree.map(lambda x: x.sharding, params)
        self.tx = make_optimizer(self.optim)
        opt = jax.eval_shape(self.tx.init, params)
        self.opt_shardings = mirror_shardings(self.param_shardings, opt, self.mesh)
        self.state = TrainState(params, abstract_with(opt, self.opt_shardings))
        self.step = 0
        # tokens trained before `resumed_at` (a checkpoint's count: its batch may differ from ours)
        self.resumed_at, self.tokens_before = 0, 0

        # what can still be refused is checked before --fresh moves the run aside and before the
        # run's folders are made
        if self.spec.restore:
            self._check_restore(Path(self.spec.restore))
        if self.evals.evaluations:
            tokenizer = self.stores[0].tokenizer()
            check_evaluations(self.evals.evaluations, cfg, tokenizer, self.plan.seq_len)
        trainer.start_over_if_asked()
        self._new_folders = [
            folder
            for folder in map(self.spec.place, ("runs", "checkpoints"))
            if not folder.exists()
        ]
        self.train_loader = self._loader("train", self.plan.global_batch)
        self.checkpointer = Checkpointer(
            self.spec.checkpoint_dir,
            keep_last=self.logging.checkpoint_keep,
            keep_every=self.logging.checkpoint_keep_every,
        )
        self.log = RunLog(
            self.spec.run_dir,
            enabled=self.main,
            config=self.logging,
            run_name=self.spec.name,
            project=self.spec.project,
            group=self.spec.group,
            hyperparameters=_resolved(cfg),
        )

    # checkpoints ---------------------------------------------------------------------------------

    def meta(self, step: int) -> dict[str, Any]:
        from theseus.registry import JOBS

        trainer = type(self.trainer)
        return {
            "format": FORMAT,
            "step": step,
            "seed": self.config.seed,
            "rng_key": key_data(jax.random.key(self.config.seed)),
            "job": JOBS.name_of(trainer),
            "trainer": f"{trainer.__module__}:{trainer.__qualname__}",
            "vocab_size": self.vocab_size,
            "vocab_used": self.vocab_used,
            "tokenizer": dict(self.stores[0].manifest.tokenizer),
            "config": _resolved(self.trainer.cfg),
            "spec": self.spec.as_dict(),
            "tokens": self.tokens_trained(step),
        }

    def tokens_trained(self, step: int) -> int:
        """Tokens the run has trained on by the end of `step`."""
        return self.tokens_before + (step - self.resumed_at) * self.plan.tokens_per_step

    def save(self, step: int) -> bool:
        before = len(self.checkpointer.failures)
        ok = self.checkpointer.save(step, self.state.params, self.state.opt, self.meta(step))
        for message in self.checkpointer.failures[before:]:
            self.log.info(f"warning: {message}")
        return ok

    def _check_restore(self, path: Path) -> None:
        """Refuse a --restore that cannot apply: another vocabulary or tokenizer, or (full state)
        a checkpoint already at the last step. Ignored when the run resumes from its own."""
        directory, step = locate(path)
        own = self.spec.place("checkpoints")
        if self.spec.fresh and directory.resolve() == own.resolve():
            raise UserError(
                f"--fresh --restore {path}: that is this run's own checkpoint, which --fresh "
                "moves aside; restore from another run (or drop --fresh to resume)"
            )
        if not self.spec.fresh and complete_steps(own):
            return
        reader = Checkpointer(directory, read_only=True, asynchronous=False)
        try:
            meta = reader.meta(step)
        finally:
            reader.close()
        self._check_compatible(meta, f"--restore {path}")
        if not self.config.restore_weights_only and step >= self.plan.steps:
            raise UserError(
                f"--restore {path}: its checkpoint is at step {step} and this run ends at step "
                f"{self.plan.steps}, so nothing is left to train; raise training.steps (or "
                "training.tokens), or set training.restore_weights_only=true to start from its weights"
            )

    def _check_compatible(self, meta: dict[str, Any], where: str) -> None:
        """A checkpoint's weights only mean something with its vocabulary and tokenizer."""
        if int(meta.get("vocab_size", self.vocab_size)) != self.vocab_size:
            raise UserError(
                f"{where}: the checkpoint has vocabulary {meta['vocab_size']}, this run {self.vocab_size}; "
                "set architecture.vocab_size to match"
            )
        theirs, ours = meta.get("tokenizer"), self.stores[0].manifest.tokenizer
        if theirs and not same_tokenizer(theirs, ours):
            raise UserError(
                f"{where}: the checkpoint was trained with tokenizer {describe_tokenizer(theirs)}, "
                f"but the token store {self.stores[0].path.name} holds {describe_tokenizer(ours)}; "
                "train on a store tokenized with the checkpoint's tokenizer, or start a new run"
            )

    def load(self, path: Path, *, weights_only: bool, own: bool) -> dict[str, Any]:
        """Replace the state by a checkpoint (a step folder, checkpoint folder or run folder);
        returns the checkpoint's metadata."""
        directory, step = locate(path)
        other = (
            self.checkpointer
            if own
            else Checkpointer(directory, read_only=True, asynchronous=False)
        )
        try:
            params, opt, meta = other.restore(
                step, self.state.params, None if weights_only else self.state.opt
            )
        finally:
            if not own:
                other.close()
        self._check_compatible(meta, f"checkpoint {directory}/{step}")
        self.state = TrainState(params, self.state.opt if weights_only else opt)
        if not weights_only:
            self.step = self.resumed_at = int(meta["step"])
            # checkpoints written before the count was kept: as if at this run's batch
            self.tokens_before = int(meta.get("tokens", self.step * self.plan.tokens_per_step))
            if self.config.tokens is not None:  # the budget holds whatever batch got this far
                left = max(0, self.config.tokens - self.tokens_before)
                steps = self.step + math.ceil(left / self.plan.tokens_per_step)
                self.plan = dataclasses.replace(self.plan, steps=steps)
        return meta

    def start_state(self) -> None:
        """Resume from this run's latest checkpoint; else apply --restore and initialize whatever
        it did not fill. A resumed run never runs the initializers."""
        barrier("theseus-start-state")
        latest = self.checkpointer.latest_step()
        if latest is not None:
            meta = self.load(self.spec.checkpoint_dir / str(latest), weights_only=False, own=True)
            note = (
                f" (--restore {self.spec.restore} ignored: the run has its own checkpoints)"
                if self.spec.restore
                else ""
            )
            self.log.info(
                f"resuming {self.spec.name} from its checkpoint at step {self.step}{note}"
            )
            changed = changed_settings(meta.get("config", {}), _resolved(self.trainer.cfg))
            if changed:
                more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
                goes_on = (
                    "; the run goes on with the new ones (the learning-rate schedule too)"
                    if self.step < self.plan.steps
                    else ""
                )
                self.log.info(
                    f"warning: settings changed since that checkpoint: {', '.join(changed[:5])}"
                    f"{more}{goes_on}"
                )
            self.log.keep_until(self.step)
            return
        if self.spec.restore:
            weights_only = self.config.restore_weights_only
            self.load(Path(self.spec.restore), weights_only=weights_only, own=False)
            what = "weights" if weights_only else f"full state at step {self.step}"
            self.log.info(f"restored {what} from {self.spec.restore}")
        params, opt = self.state.params, self.state.opt
        if _is_abstract(params):
            params = param_initializer(self._create, params)()
        if _is_abstract(opt):
            opt = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)
        self.state = TrainState(params, opt)
        self.log.keep_until(self.step)

    # the loop ------------------------------------------------------------------------------------

    def _batch_sharding(self, rank: int) -> NamedSharding:
        spec = (None, BATCH_AXES, None) if rank == 3 else (BATCH_AXES, None)
        return NamedSharding(self.mesh, P(*spec))

    def to_device(
        self, batch: dict[str, np.ndarray], accumulation: int | None
    ) -> dict[str, jax.Array]:
        """Host rows of this process -> one global array per key ([accumulation, micro, seq])."""
        out = {}
        for key, local in batch.items():
            if accumulation is not None:
                local = local.reshape(accumulation, -1, local.shape[-1])
            sharding = self._batch_sharding(local.ndim)
            if self.process_count == 1:
                out[key] = jax.device_put(local, sharding)
            else:
                shape = list(local.shape)
                shape[-2] *= self.process_count
                out[key] = jax.make_array_from_process_local_data(sharding, local, tuple(shape))
        return out

    def _compile(self) -> tuple[Any, Any, float]:
        """Compile the train step; an automatic per-device batch shrinks until the step fits memory."""
        name = self.optim.schedule or self.trainer.schedule()
        self.schedule_name = name
        schedule = make_schedule(
            name,
            lr=self.optim.lr,
            min_lr=self.optim.end_lr,
            warmup_steps=self.optim.warmup_steps,
            total_steps=self.plan.steps,
            decay_fraction=self.optim.decay_fraction,
        )
        # the update of step s (1-based) runs at schedule(s): the first moves the weights and the
        # last is at min_lr
        self.learning_rates = np.asarray(
            jax.jit(jax.vmap(schedule))(jnp.arange(1, self.plan.steps + 1)), np.float32
        )
        while True:
            start = time.perf_counter()  # the compile that runs; a discarded one logs its size
            compiled = self._compile_step(self.plan)
            compile_s = time.perf_counter() - start
            need, free, where = step_memory(compiled)
            if gathered(need <= free).all():  # the processes must agree on one step
                break
            smaller = smaller_per_device_batch(self.plan)
            step = f"a train step with training.per_device_batch_size={self.plan.per_device_batch}"
            problem = (
                f"{step} needs {need / 2**30:.1f} GiB of working memory; {where} has "
                f"{free / 2**30:.1f} GiB free"
                if need > free
                else f"{step} does not fit the memory of another process"
            )
            if self.config.per_device_batch_size is not None or smaller is None:
                raise UserError(
                    f"{problem}. Lower training.per_device_batch_size (gradient accumulation keeps "
                    "the global batch), or training.seq_len"
                )
            self.log.info(f"{problem}; trying {smaller.per_device_batch}")
            self.plan = smaller
        replicated = NamedSharding(self.mesh, P())
        evaluate = jax.jit(
            make_eval_step(self.graphdef, self.rest), out_shardings=(replicated, replicated)
        )
        return compiled, evaluate, compile_s

    def _compile_step(self, plan: Plan) -> Any:
        step_fn = make_train_step(
            self.graphdef,
            self.rest,
            self.tx,
            seed=self.config.seed,
            accumulation=plan.accumulation,
            z_loss=self.config.z_loss,
            dropout=self.arch.dropout > 0,
            skip_nonfinite=self.config.on_nonfinite == "skip",
            grad_shards=self.grad_shards,
        )
        treedef = self.state.treedef
        state_shardings = treedef.flatten_up_to(
            {"params": self.param_shardings, "opt": self.opt_shardings}
        )
        local = plan.global_batch // self.process_count
        example = {
            "inputs": np.zeros((local, plan.seq_len), np.int32),
            "targets": np.zeros((local, plan.seq_len), np.int32),
            "loss_mask": np.zeros((local, plan.seq_len), np.float32),
            "positions": np.zeros((local, plan.seq_len), np.int32),
        }
        batch = self.to_device(example, plan.accumulation)
        batch_shardings = {k: v.sharding for k, v in batch.items()}
        replicated = NamedSharding(self.mesh, P())
        train = jax.jit(
            on_leaves(step_fn, treedef),
            in_shardings=(state_shardings, batch_shardings, replicated, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )
        return train.lower(self.state.leaves, batch, jnp.int32(0), jnp.float32(0)).compile()

    def _validation_batches(self) -> list[dict[str, np.ndarray]]:
        """This process's rows of the validation set, `val_batches` batches of the global batch
        each (so the same set whatever the device count or per-device batch), in micro-batches."""
        if not self.logging.val_interval or not self.logging.val_batches:
            return []
        if any(store.n_tokens("val") == 0 for store in self.stores):
            self.log.info("no validation split in the token store(s); validation is off")
            return []
        window = self.plan.seq_len + 1
        # a blockwise row is one padded sequence however few real tokens it holds
        short = [
            s for s in self.stores if s.manifest.kind != "blockwise" and s.n_tokens("val") < window
        ]
        if short:
            self.log.info(
                f"warning: the validation split of {short[0].path.name} holds "
                f"{short[0].n_tokens('val'):,} tokens, less than one sequence of {window}; "
                "validation is off (tokenize with a larger data.val_pct)"
            )
            return []
        loader = self._loader("val", self.plan.global_batch)
        chunks = self.plan.accumulation
        batches = []
        try:
            for i in range(self.logging.val_batches):
                parts = {key: np.split(rows, chunks) for key, rows in loader.batch(i).items()}
                batches += [{key: part[k] for key, part in parts.items()} for k in range(chunks)]
        finally:
            loader.close()
        return batches

    def _loader(self, split: str, global_batch: int) -> Loader:
        return Loader(
            self.stores,
            self.rates,
            self.plan.seq_len,
            global_batch,
            seed=self.config.seed,
            process_index=self.process,
            process_count=self.process_count,
            split=split,
            reset_at_eot=self.config.reset_at_eot,
        )

    def train(self, stop: StopSignals) -> dict[str, Any]:
        """Restore or initialize, compile, and train to the plan's last step. A run that cannot
        start (a refused restore, a step too big for memory) leaves no folders behind."""
        try:
            compiled = self._prepare()
        except UserError:
            self._close()
            if self.main:
                for folder in self._new_folders:
                    shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            if compiled is None:
                self.log.info(f"{self.spec.name} already finished at step {self.step}")
                return {"step": self.step}
            return self._train(stop, *compiled)
        finally:
            self._close()

    def _close(self) -> None:
        self.train_loader.close()
        self.checkpointer.close()
        self.log.close()

    def _prepare(self) -> tuple[Any, Any, float] | None:
        """The state, the run's config.yaml, and the compiled steps (None: nothing left to train)."""
        self.start_state()
        if self.step >= self.plan.steps:
            return None
        if self.main:
            from theseus.config import atomic_write

            atomic_write(self.spec.run_dir / "config.yaml", self.trainer.settings_yaml())
        return self._compile()

    def _train(
        self, stop: StopSignals, compiled: Any, evaluate: Any, compile_s: float
    ) -> dict[str, Any]:
        log, plan = self.log, self.plan  # compiling may have lowered the per-device batch
        peak, peak_source = peak_flops(jax.devices(), self.process_count)
        for line in start_report(self, compile_s, peak, peak_source):
            log.info(line)
        val_batches = self._validation_batches()
        summary = {"compile_s": compile_s, "peak_flops": peak, "peak_source": peak_source}
        barrier("theseus-first-step")  # compiling can take each process a different time
        try:
            loop = TrainingLoop(
                self, compiled, evaluate, val_batches, peak, peak_source == MEASURED
            )
            last = loop.run(stop)
            summary["peak_flops"] = loop.peak_flops
        except jax.errors.JaxRuntimeError as exc:
            if "RESOURCE_EXHAUSTED" not in str(exc):
                raise
            raise UserError(
                f"out of memory at step {self.step} with training.per_device_batch_size="
                f"{plan.per_device_batch}; lower it (gradient accumulation keeps the global batch)"
            ) from None
        if self.main:
            plot_runs([self.spec.run_dir], self.spec.run_dir / "loss.png", labels=[self.spec.name])
        return {**last, **summary}

    def run_evaluations(self, step: int) -> dict[str, float]:
        """Score the current weights with `eval.evaluations`; logged as `eval/<name>/<metric>`."""
        from theseus.evaluation import run_evaluations
        from theseus.evaluation.scoring import Scorer

        model = nnx.merge(self.graphdef, self.state.params, self.rest)
        if self._scorer is None:
            self._scorer = Scorer(
                model, self.stores[0].tokenizer(), self.plan.seq_len, self.evals.batch_size
            )
        else:
            self._scorer.use(model)
        results = run_evaluations(self.evals.evaluations, self._scorer, self.trainer.cfg)
        self.log.record({"step": step, **results})
        self.log.info(f"step {step}  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results


def _use_compilation_cache(folder: str | None) -> None:
    """Point JAX's persistent compilation cache at `folder`, unless one is configured already."""
    if folder is None or jax.config.jax_compilation_cache_dir:
        return
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(Path(folder).expanduser()))


def _resolved(cfg: Any) -> dict[str, Any]:
    from theseus.training.base import resolved

    return resolved(cfg)
