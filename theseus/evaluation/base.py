"""The evaluation interface and the loop that runs a list of them.

Kept free of JAX imports at module level: job schemas import the config dataclasses here.
"""

from __future__ import annotations

import abc
import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig

from theseus.config import configure, field
from theseus.errors import UserError
from theseus.registry import EVALUATIONS

if TYPE_CHECKING:
    from theseus.data.tokenizers import Tokenizer
    from theseus.evaluation.scoring import Scorer

# Modules that register the built-in evaluations; their config dataclasses join a job's schema.
_BUILTIN = (
    "theseus.evaluation.perplexity",
    "theseus.evaluation.multiple_choice",
    "theseus.evaluation.generation",
    "theseus.evaluation.harness.config",
)


@dataclass
class EvalConfig:
    """Which evaluations to run, and how often during training."""

    evaluations: list[str] = field(
        "eval/evaluations",
        default_factory=list,
        help="registered evaluations to run, e.g. [perplexity]",
        registry="evaluation",
    )
    interval: int = field(
        "eval/interval",
        minimum=0,
        default=0,
        help="steps between evaluations in training (0: only at the end)",
    )
    batch_size: int = field(
        "eval/batch_size", minimum=1, default=8, help="sequences per forward pass when scoring"
    )


class Evaluation(abc.ABC):
    """One way of scoring a model. `CONFIG` holds its settings (under `eval.<name>`)."""

    CONFIG: ClassVar[type]
    # results are filed as eval/<name>/<metric>; False: the metric names carry their own
    # place (harness tasks: eval/<task>/<metric>)
    NAMESPACED: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        self.config = config
        self.files: dict[str, str] = {}  # file name -> text, written beside the results by a run

    def check(  # noqa: B027 - optional
        self, tokenizer: Tokenizer | None = None, seq_len: int | None = None
    ) -> None:
        """Refuse bad settings or missing data without a model. The model's tokenizer and
        scoring window, when known, also refuse data written with another tokenizer and items
        the model cannot score."""

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


def check_evaluations(
    names: list[str],
    cfg: DictConfig,
    tokenizer: Tokenizer | None = None,
    seq_len: int | None = None,
) -> None:
    """Refuse unknown evaluations, bad `eval.*` settings and missing or mismatched data in one
    line, without loading a model: cheap enough to call before training starts.

    The model's tokenizer and scoring window (`seq_len`), when known, also refuse a token
    store written with another tokenizer and data the model cannot score.
    """
    for name in names:
        cls = EVALUATIONS[name]
        cls(configure(cls.CONFIG, cfg)).check(tokenizer, seq_len)


def run_evaluations(
    names: list[str], scorer: Scorer, cfg: DictConfig, files: dict[str, str] | None = None
) -> dict[str, float]:
    """Run the named evaluations; results are keyed `eval/<name>/<metric>` (`eval/<metric>`
    for an evaluation whose metric names carry their own place). The files an evaluation
    writes beside its results (the harness's results JSON) go into `files` when given.

    A result that is not finite is an error, never a score.
    """
    results: dict[str, float] = {}
    for name in names:
        cls = EVALUATIONS[name]
        evaluation = cls(configure(cls.CONFIG, cfg))
        metrics = evaluation.run(scorer)
        for metric, value in metrics.items():
            if not math.isfinite(value):
                raise UserError(
                    f"{name}: {metric} is {value}: the model's outputs are not finite "
                    "(check its weights) or the data holds ids outside its vocabulary"
                )
            key = f"eval/{name}/{metric}" if cls.NAMESPACED else f"eval/{metric}"
            if key in results:
                raise UserError(f"{name}: {key} is also a result of an earlier evaluation")
            results[key] = value
        if files is not None:
            files.update(getattr(evaluation, "files", {}))  # an __init__ of its own may skip ours
    return results
