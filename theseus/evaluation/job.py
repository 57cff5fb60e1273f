"""The `gpt/evaluate` job: score a trained model with registered evaluations."""

from __future__ import annotations

import json
from dataclasses import dataclass

from theseus.config import configure, field
from theseus.errors import UserError
from theseus.evaluation.base import EvalConfig, evaluation_components, run_evaluations
from theseus.job import BasicJob
from theseus.registry import job


@dataclass
class EvaluateConfig:
    checkpoint: str = field(
        "eval/checkpoint",
        help="what to score: a run folder, a checkpoint folder, or a run name under the output root",
    )


@job("gpt/evaluate")
class Evaluate(BasicJob[EvaluateConfig]):
    """Score a trained model with the evaluations in eval.evaluations; results go to eval.json."""

    CONFIG = EvaluateConfig

    @classmethod
    def components(cls) -> list[type]:
        return [EvaluateConfig, *evaluation_components()]

    def run(self) -> dict[str, float]:
        from rich.console import Console

        from theseus.checkpoint import load_model
        from theseus.data.tokenizers import load_tokenizer
        from theseus.evaluation.scoring import Scorer

        settings = configure(EvalConfig, self.cfg)
        if not settings.evaluations:
            raise UserError(
                "nothing to evaluate: set eval.evaluations, e.g. eval.evaluations=[perplexity]"
            )
        model, _, tokenizer_identity = load_model(self.config.checkpoint, root=self.spec.root)
        if not tokenizer_identity:
            raise UserError(
                f"{self.config.checkpoint}: the checkpoint does not record its tokenizer"
            )
        scorer = Scorer(
            model, load_tokenizer(tokenizer_identity), model.config.block_size, settings.batch_size
        )
        results = run_evaluations(settings.evaluations, scorer, self.cfg)
        (self.spec.run_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        console = Console(stderr=True)
        for key, value in results.items():
            console.print(f"{key:40s} {value:.4f}")
        return results
