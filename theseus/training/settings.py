"""A training run's settings, read out of its config once, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from theseus.config import configure
from theseus.evaluation.base import EvalConfig
from theseus.model.lora import LoRAConfig
from theseus.parallel.config import ParallelConfig
from theseus.training.config import BaseTrainerConfig
from theseus.training.metrics import LoggingConfig
from theseus.training.optimizers import OptimizerConfig
from theseus.training.pretrained import InitConfig, Pretrained


@dataclass(frozen=True)
class Settings:
    """Every component a trainer reads: `training`, `optimization`, `logging`, `parallel`,
    `architecture` (the model's config; `architecture.init_from`'s when set), `eval`, and
    `finetune.lora` (rank 0 where a job has no LoRA settings)."""

    training: BaseTrainerConfig
    optimization: OptimizerConfig
    logging: LoggingConfig
    parallel: ParallelConfig
    architecture: Any
    eval: EvalConfig
    lora: LoRAConfig
    pretrained: Pretrained | None
    """The folder of `architecture.init_from` (None: random initialization)."""

    @classmethod
    def read(cls, trainer: type, cfg: DictConfig) -> Settings:
        """The settings of `trainer` (a `BaseTrainer` class) in `cfg`; a hub id in
        `architecture.init_from` is downloaded here (before any device work)."""
        architecture = configure(trainer.MODEL.CONFIG, cfg)
        init_from = configure(InitConfig, cfg).init_from
        pretrained = Pretrained.open(init_from, architecture) if init_from else None
        return cls(
            training=configure(trainer.CONFIG, cfg),
            optimization=configure(OptimizerConfig, cfg),
            logging=configure(LoggingConfig, cfg),
            parallel=configure(ParallelConfig, cfg),
            architecture=pretrained.architecture if pretrained else architecture,
            eval=configure(EvalConfig, cfg),
            lora=configure(LoRAConfig, cfg),
            pretrained=pretrained,
        )

    @property
    def adapted(self) -> bool:
        """Whether the run trains LoRA adapters (and only them)."""
        return self.lora.rank > 0


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
