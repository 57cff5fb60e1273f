"""Evaluations during training: the run's current weights scored with `eval.evaluations`."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from theseus.evaluation import run_evaluations
from theseus.evaluation.scoring import Scorer
from theseus.training.data import TrainingData
from theseus.training.metrics import RunLog
from theseus.training.settings import Settings
from theseus.training.state import RunState


def evaluator(
    cfg: DictConfig, settings: Settings, data: TrainingData, state: RunState, log: RunLog
) -> Callable[[int], dict[str, float]]:
    """Scores the current weights with `eval.evaluations`; logged as `eval/<name>/<metric>`."""
    scorer: list[Scorer] = []

    def evaluate(step: int) -> dict[str, float]:
        model = state.current_model()
        if not scorer:
            tokenizer = data.stores[0].tokenizer()
            scorer.append(Scorer(model, tokenizer, state.plan.seq_len, settings.eval.batch_size))
        else:
            scorer[0].use(model)
        results = run_evaluations(settings.eval.evaluations, scorer[0], cfg)
        log.record({"step": step, **results})
        log.info(f"step {step}  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    return evaluate
