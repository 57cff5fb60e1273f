"""Evaluations: perplexity and multiple-choice scoring, run on their own or during training.

Each evaluation is registered with `@evaluation("name")`, reads its settings from `eval.<name>.*`
and loads its data only when it runs; `check_evaluations` checks settings and data paths
beforehand, without a model.
"""

from theseus.evaluation.base import (
    EvalConfig,
    Evaluation,
    check_evaluations,
    evaluation_components,
    run_evaluations,
)

__all__ = [
    "EvalConfig",
    "Evaluation",
    "check_evaluations",
    "evaluation_components",
    "run_evaluations",
]
