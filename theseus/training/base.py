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

`run` reads top to bottom: settings, devices, mesh, data, state, compile, loop. Metrics are
logged every `logging.interval` steps, validation every `logging.val_interval`, checkpoints
every `logging.checkpoint_interval` and when a signal (SIGTERM, SIGUSR1, SIGINT) asks to stop:
then the run exits with code 75 ("stopped early, checkpoint saved; run again to resume").
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from flax import nnx
from omegaconf import DictConfig

from theseus.base.stopping import StoppedEarly, StopSignals
from theseus.config import configure
from theseus.errors import UserError
from theseus.job import RestoreableJob
from theseus.parallel.config import ParallelConfig
from theseus.training.config import BaseTrainerConfig
from theseus.training.data import TrainingData
from theseus.training.metrics import LoggingConfig
from theseus.training.optimizers import OptimizerConfig
from theseus.training.outputs import Outputs
from theseus.training.pretrained import InitConfig
from theseus.training.run import (
    build_state,
    collective_failures,
    compile_steps,
    make_loop,
    make_mesh,
    train,
)
from theseus.training.settings import Settings

__all__ = ["BaseTrainer", "BaseTrainerConfig"]

C = TypeVar("C")
M = TypeVar("M", bound=nnx.Module)


class BaseTrainer(RestoreableJob[C], Generic[C, M]):
    """Pretrain `MODEL` on token stores; subclasses set MODEL and CONFIG, may set ARCHITECTURE
    (a preset of `MODEL.CONFIG` whose values are the job's defaults) and may override
    `schedule()` ("wsd", "cosine" or "constant")."""

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type | None] = BaseTrainerConfig
    ARCHITECTURE: ClassVar[Any] = None
    DISTRIBUTED = True

    @classmethod
    def components(cls) -> list[Any]:
        from theseus.evaluation import evaluation_components

        architecture = cls.ARCHITECTURE if cls.ARCHITECTURE is not None else cls.MODEL.CONFIG
        return [
            cls.CONFIG,
            OptimizerConfig,
            LoggingConfig,
            ParallelConfig,
            architecture,
            InitConfig,
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
        or `nnx.eval_shape`: `theseus.parallel.rules` does both). With `finetune.lora.rank` > 0
        the model carries LoRA adapters (`theseus.model.lora`)."""
        from theseus.model import lora

        config = configure(cls.MODEL.CONFIG, cfg)
        config = dataclasses.replace(
            config, vocab_size=vocab_size, vocab_used=vocab_used or config.vocab_used
        )
        adapters = configure(lora.LoRAConfig, cfg)

        def create() -> M:
            model = cls.MODEL(config, rngs=nnx.Rngs(seed))
            if adapters.rank:  # their own stream: the base initializes as without them
                lora.attach(model, adapters, nnx.Rngs(params=lora.adapter_key(seed)))
            return model

        return create

    @classmethod
    def base_weights(cls, cfg: DictConfig, meta: dict[str, Any], abstract: Any, where: str) -> Any:
        """A LoRA run's frozen base, for a checkpoint of it (`meta`) configured by `cfg`: the
        weights of its `architecture.init_from` in the shapes and shardings of `abstract`,
        refused when that folder is no longer the base the adapters were trained on."""
        from theseus.training.pretrained import InitConfig, Pretrained, check_base

        init_from = configure(InitConfig, cfg).init_from
        architecture = configure(cls.MODEL.CONFIG, cfg)
        pretrained = Pretrained.open(init_from, architecture) if init_from else None
        check_base(meta, pretrained, where)
        assert pretrained is not None  # check_base refuses a LoRA checkpoint without a base
        return pretrained.weights(abstract)

    @classmethod
    def fresh_start_refusal(cls, cfg: DictConfig) -> str | None:
        if configure(BaseTrainerConfig, cfg).overwrite:
            return None
        return "add training.overwrite=true to move them and its logs aside"

    def run(self) -> dict[str, Any]:
        """Train to the configured step count (resuming when this run has checkpoints)."""
        settings = Settings.read(type(self), self.cfg)
        if settings.pretrained is not None:  # config.yaml and checkpoints name the real model
            self.cfg = settings.pretrained.applied_to(self.cfg)
        self.prepare_devices(settings)
        with self._one_writer(), StopSignals() as stop, collective_failures():
            mesh, layout = make_mesh(settings, self.tensor_shards(settings))
            data = TrainingData.open(self.spec.root, settings)
            state = build_state(self, settings, mesh, layout, data)
            with Outputs(self, settings, state) as out:
                state.start(self.spec, out.log, weights_only=settings.training.restore_weights_only)
                if state.step >= state.plan.steps:
                    out.log.info(f"{self.spec.name} already finished at step {state.step}")
                    return {"step": state.step}
                stop_at = settings.training.stop_at
                if stop_at is not None and state.step >= stop_at:
                    out.log.info(
                        f"{self.spec.name} is at step {state.step}, not before training.stop_at="
                        f"{stop_at}: nothing to do; run it without training.stop_at (or with a "
                        "later one) to go on"
                    )
                    raise StoppedEarly(f"training.stop_at at step {state.step}", code=0)
                out.write_config()
                step_fn, compile_s = compile_steps(settings, mesh, layout, state, out)
                loop = make_loop(self, settings, mesh, layout, data, state, out, step_fn, compile_s)
                return train(loop, stop, out, compile_s)

    def _one_writer(self) -> contextlib.AbstractContextManager[None]:
        """Two runs of one name would interleave their metrics and checkpoints: the second is
        refused. Process 0 holds the lock for all the run's processes."""
        import jax

        if jax.process_index() != 0:
            return contextlib.nullcontext()
        from theseus.base.locks import exclusive

        return exclusive(self.spec.place("runs"), f"run {self.spec.name!r}")

    def prepare_devices(self, settings: Settings) -> None:
        """Before JAX starts: XLA's defaults, one CPU device per core (single process), or join
        the job's processes."""
        from theseus.parallel.distributed import (
            apply_default_xla_flags,
            initialize_distributed,
            split_cpu_into_cores,
        )

        apply_default_xla_flags()
        split_cpu_into_cores(
            settings.parallel.cpu_devices,
            global_batch=settings.training.batch_size,
            per_device_batch=settings.training.per_device_batch_size,
            fsdp=settings.parallel.fsdp,
            tensor=self.tensor_shards(settings),
        )
        initialize_distributed()

    def tensor_shards(self, settings: Settings) -> int:
        """Tensor-parallel shards: parallel.tensor, else the job's --n_shards, else 1."""
        return settings.parallel.tensor or self.spec.request.n_shards or 1

    def start_over_if_asked(self) -> None:
        """--fresh: move an earlier attempt's folders aside, so that nothing of it (metrics,
        TensorBoard events, W&B run) carries on; checkpoints only if training.overwrite says so.
        `run` calls it once every other check has passed (a --restore among them)."""
        if not self.spec.fresh:
            return
        import jax

        from theseus.parallel.distributed import barrier

        directory = self.spec.place("checkpoints")
        existing = directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
        # every process has looked before the first one moves anything, and waits until it has
        barrier("theseus-fresh-looked")
        if existing and not self.config.overwrite:
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
