"""The evaluation interface and the loop that runs a list of them.

Kept free of JAX imports at module level: job schemas import the config dataclasses here.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig

from theseus.config import configure, field
from theseus.registry import EVALUATIONS

if TYPE_CHECKING:
    from theseus.evaluation.scoring import Scorer

# Modules that register the built-in evaluations; their config dataclasses join a job's schema.
_BUILTIN = ("theseus.evaluation.perplexity", "theseus.evaluation.multiple_choice")


@dataclass
class EvalConfig:
    """Which evaluations to run, and how often during training."""

    evaluations: list[str] = field(
        "eval/evaluations",
        default_factory=list,
        help="registered evaluations to run, e.g. [perplexity]",
    )
    interval: int = field(
        "eval/interval",
        default=0,
        help="steps between evaluations in training (0: only at the end)",
    )
    batch_size: int = field(
        "eval/batch_size", default=8, help="sequences per forward pass when scoring"
    )


class Evaluation(abc.ABC):
    """One way of scoring a model. `CONFIG` holds its settings (under `eval.<name>`)."""

    CONFIG: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def run(self, scorer: Scorer) -> dict[str, float]:
        """Score the model; returns metric name -> value."""


def evaluation_components() -> list[type]:
    """The config dataclasses of every built-in evaluation, for a job's schema."""
    components: list[type] = [EvalConfig]
    for module in _BUILTIN:
        importlib.import_module(module)
    for name in EVALUATIONS.names():
        components.append(EVALUATIONS[name].CONFIG)
    return components


def run_evaluations(names: list[str], scorer: Scorer, cfg: DictConfig) -> dict[str, float]:
    """Run the named evaluations; results are keyed `eval/<name>/<metric>`."""
    results: dict[str, float] = {}
    for name in names:
        cls = EVALUATIONS[name]
        metrics = cls(configure(cls.CONFIG, cfg)).run(scorer)
        results.update({f"eval/{name}/{metric}": value for metric, value in metrics.items()})
    return results
