"""A training run's settings, read out of its config once, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from theseus.config import configure
from theseus.evaluation.base import EvalConfig
from theseus.parallel.config import ParallelConfig
from theseus.training.config import BaseTrainerConfig
from theseus.training.metrics import LoggingConfig
from theseus.training.optimizers import OptimizerConfig


@dataclass(frozen=True)
class Settings:
    """Every component a trainer reads: `training`, `optimization`, `logging`, `parallel`,
    `architecture` (the model's config) and `eval`."""

    training: BaseTrainerConfig
    optimization: OptimizerConfig
    logging: LoggingConfig
    parallel: ParallelConfig
    architecture: Any
    eval: EvalConfig

    @classmethod
    def read(cls, trainer: type, cfg: DictConfig) -> Settings:
        """The settings of `trainer` (a `BaseTrainer` class) in `cfg`."""
        return cls(
            training=configure(trainer.CONFIG, cfg),
            optimization=configure(OptimizerConfig, cfg),
            logging=configure(LoggingConfig, cfg),
            parallel=configure(ParallelConfig, cfg),
            architecture=configure(trainer.MODEL.CONFIG, cfg),
            eval=configure(EvalConfig, cfg),
        )


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
