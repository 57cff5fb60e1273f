"""`BaseTrainer[Config, Model]`: pretraining with exact, crash-safe checkpoint and resume.

A trainer job names its model class and config, and optionally its schedule::

    @job("my/train/pretrain")
    class PretrainMyModel(BaseTrainer[BaseTrainerConfig, MyModel]):
        \"\"\"Pretrain MyModel.\"\"\"
        MODEL = MyModel
        CONFIG = BaseTrainerConfig

        @classmethod
        def schedule(cls) -> str:
            return "wsd"

The loop (`run`) is: open the token stores, build the model and optimizer on a device mesh,
resume or restore, then for each step feed the deterministic batch to one jitted step. Metrics
are logged every `logging.interval` steps, validation every `logging.val_interval`, checkpoints
every `logging.checkpoint_interval` and when a signal (SIGTERM, SIGUSR1, SIGINT) asks to stop:
then the run exits with code 75 ("stopped early, checkpoint saved; run again to resume").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from flax import nnx
from omegaconf import DictConfig, OmegaConf

from theseus.base.stopping import StopSignals
from theseus.config import configure, field
from theseus.data.loader import DatasetMix, check_rates
from theseus.data.store import check_store_name
from theseus.errors import UserError
from theseus.job import RestoreableJob
from theseus.training.metrics import LoggingConfig
from theseus.training.optimizers import OptimizerConfig

C = TypeVar("C")
M = TypeVar("M", bound=nnx.Module)


@dataclass
class BaseTrainerConfig:
    """What to train on, for how long, with which batch; the seed; failure policies."""

    dataset: list[DatasetMix] = field(
        "training/dataset",
        default_factory=lambda: [DatasetMix("pystdlib")],
        help="token stores under OUT/data to train on, each with a sampling rate",
    )
    steps: int = field(
        "training/steps",
        minimum=1,
        default=5000,
        help="optimizer steps (ignored when training.tokens is set)",
    )
    tokens: int | None = field(
        "training/tokens",
        minimum=1,
        default=None,
        help="token budget; sets the step count when given",
    )
    batch_size: int = field(
        "training/batch_size",
        minimum=1,
        default=512,
        help="global batch in sequences per optimizer step",
    )
    per_device_batch_size: int | None = field(
        "training/per_device_batch_size",
        minimum=1,
        default=None,
        help="sequences per device per micro-batch (null = the most that fits; gradient accumulation covers the rest)",
    )
    seq_len: int | None = field(
        "training/seq_len",
        minimum=1,
        default=None,
        help="training sequence length (null = architecture.block_size)",
    )
    seed: int = field(
        "training/seed",
        minimum=0,
        maximum=2**32 - 1,
        default=0,
        help="seed of initialization, data order and dropout (0 to 2**32 - 1)",
    )
    z_loss: float = field(
        "training/z_loss",
        minimum=0,
        default=0.0,
        help="weight of the z-loss (log-sum-exp squared); 0 = off",
    )
    reset_at_eot: bool = field(
        "training/reset_at_eot",
        default=False,
        help="restart positions after each end-of-text token, with no loss on the token after it "
        "(attention still spans the whole row)",
    )
    on_nonfinite: str = field(
        "training/on_nonfinite",
        default="stop",
        choices=("stop", "skip"),
        help="a non-finite loss or gradient: stop the run naming the step, or skip that update",
    )
    overwrite: bool = field(
        "training/overwrite",
        default=False,
        help="with --fresh: move this run's existing checkpoints and logs aside (else --fresh refuses)",
    )
    compilation_cache: str | None = field(
        "training/compilation_cache",
        default="~/.cache/theseus/xla",
        help="folder of JAX's persistent compilation cache (a restarted run skips compiling); null = off",
    )
    restore_weights_only: bool = field(
        "training/restore_weights_only",
        default=False,
        help="with --restore: take only the weights (fresh optimizer, step 0) instead of the full state",
    )

    def check(self) -> None:
        """Rules on the dataset list (run with the config's validation, before any work)."""
        if not self.dataset:
            raise UserError(
                "training.dataset is empty; name a token store, e.g. [{name: pystdlib}]"
            )
        check_rates([mix.rate for mix in self.dataset])
        for k, mix in enumerate(self.dataset):
            check_store_name(f"training.dataset.{k}.name", mix.name)


@dataclass
class ParallelConfig:
    """How devices split into data-parallel, FSDP and tensor-parallel groups."""

    fsdp: int = field(
        "parallel/fsdp",
        minimum=1,
        default=1,
        help="devices sharing one copy of parameters and optimizer state (FSDP)",
    )
    tensor: int | None = field(
        "parallel/tensor",
        minimum=1,
        default=None,
        help="tensor-parallel shards (null = --n_shards, else 1); the rest is data-parallel",
    )
    cpu_devices: int | None = field(
        "parallel/cpu_devices",
        minimum=1,
        default=None,
        help="CPU runs: JAX devices to split this host into (null = one per core, as many as divide the batch)",
    )


class BaseTrainer(RestoreableJob[C], Generic[C, M]):
    """Pretrain `MODEL` on token stores; subclasses set MODEL and CONFIG and may override
    `schedule()` ("wsd", "cosine" or "constant")."""

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type | None] = BaseTrainerConfig
    DISTRIBUTED = True

    @classmethod
    def components(cls) -> list[type]:
        from theseus.evaluation import evaluation_components

        return [
            cls.CONFIG,
            OptimizerConfig,
            LoggingConfig,
            ParallelConfig,
            cls.MODEL.CONFIG,
            *evaluation_components(),
        ]

    @classmethod
    def schedule(cls) -> str:
        """The learning-rate schedule when `optimization.schedule` is null."""
        return "cosine"

    @classmethod
    def model_factory(
        cls, cfg: DictConfig, *, vocab_size: int, seed: int, vocab_used: int | None = None
    ) -> Callable[[], M]:
        """A function building the model of `cfg`, its vocabulary set (`vocab_used` of its
        `vocab_size` ids predicted; None: all), initialized from `seed` (trace it under `jax.jit`
        or `nnx.eval_shape`: `theseus.model.sharding` does both)."""
        config = configure(cls.MODEL.CONFIG, cfg)
        config = dataclasses.replace(
            config, vocab_size=vocab_size, vocab_used=vocab_used or config.vocab_used
        )

        def create() -> M:
            return cls.MODEL(config, rngs=nnx.Rngs(seed))

        return create

    # RestoreableJob ------------------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        step = self._checkpointer().latest_step()
        return None if step is None else self.spec.checkpoint_dir / str(step)

    def save(self) -> Path:
        self.session.save(self.session.step)
        self.session.checkpointer.wait()
        return self.spec.checkpoint_dir / str(self.session.step)

    def load(self, path: Path) -> None:
        self.session.load(Path(path), weights_only=False, own=True)

    def restore(self, path: Path, weights_only: bool = False) -> None:
        self.session.load(Path(path), weights_only=weights_only, own=False)

    # Running -------------------------------------------------------------------------------------

    def _checkpointer(self) -> Any:
        from theseus.checkpoint import Checkpointer

        logging = configure(LoggingConfig, self.cfg)
        return Checkpointer(
            self.spec.checkpoint_dir,
            keep_last=logging.checkpoint_keep,
            keep_every=logging.checkpoint_keep_every,
        )

    def run(self) -> dict[str, Any]:
        """Train to the configured step count (resuming when this run has checkpoints)."""
        import jax

        from theseus.training.session import Session

        self.prepare_devices()
        try:
            with self._one_writer():
                # the session starts the run over (--fresh) once nothing refuses
                self.session = Session(self)
                with StopSignals() as stop:
                    return self.session.train(stop)
        except jax.errors.JaxRuntimeError as exc:
            # a process that stopped (a refused setting, a crash) leaves the others waiting in a
            # collective until it times out; their own error would name only the collective
            if jax.process_count() > 1 and "DEADLINE_EXCEEDED" in str(exc):
                raise UserError(
                    f"process {jax.process_index()}: the other processes of this job stopped "
                    "answering (one of them most likely failed: see its output)"
                ) from None
            raise

    def _one_writer(self) -> contextlib.AbstractContextManager[None]:
        """Two runs of one name would interleave their metrics and checkpoints: the second is
        refused. Process 0 holds the lock for all the run's processes."""
        import jax

        if jax.process_index() != 0:
            return contextlib.nullcontext()
        from theseus.base.locks import exclusive

        return exclusive(self.spec.place("runs"), f"run {self.spec.name!r}")

    def prepare_devices(self) -> None:
        """Before JAX starts: XLA's defaults, one CPU device per core (single process), or join
        the job's processes."""
        from theseus.base.topology import (
            apply_default_xla_flags,
            initialize_distributed,
            split_cpu_into_cores,
        )

        apply_default_xla_flags()
        config = configure(BaseTrainerConfig, self.cfg)
        parallel = configure(ParallelConfig, self.cfg)
        split_cpu_into_cores(
            parallel.cpu_devices,
            global_batch=config.batch_size,
            per_device_batch=config.per_device_batch_size,
            fsdp=parallel.fsdp,
            tensor=self.tensor_shards(),
        )
        initialize_distributed()

    def tensor_shards(self) -> int:
        """Tensor-parallel shards: parallel.tensor, else the job's --n_shards, else 1."""
        return configure(ParallelConfig, self.cfg).tensor or self.spec.request.n_shards or 1

    def start_over_if_asked(self) -> None:
        """--fresh: move an earlier attempt's folders aside, so that nothing of it (metrics,
        TensorBoard events, W&B run) carries on; checkpoints only if training.overwrite says so.
        The session calls it once every other check has passed (a --restore among them)."""
        if not self.spec.fresh:
            return
        import jax

        from theseus.base.topology import barrier

        directory = self.spec.place("checkpoints")
        existing = directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
        # every process has looked before the first one moves anything, and waits until it has
        barrier("theseus-fresh-looked")
        config = configure(BaseTrainerConfig, self.cfg)
        if existing and not config.overwrite:
            raise UserError(
                f"--fresh: run {self.spec.name!r} already has checkpoints in {directory}; "
                "add training.overwrite=true to move them (and its logs) aside, or pick another run name"
            )
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            for folder in (directory, self.spec.place("runs")):
                if not folder.is_dir() or not any(folder.iterdir()):
                    continue
                target = folder.with_name(f"{folder.name}.replaced-{stamp}")
                shutil.move(str(folder), str(target))
                sys.stderr.write(f"--fresh: moved {folder} to {target}\n")
        barrier("theseus-fresh-moved")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    return multiple * math.ceil(vocab_size / multiple)
