"""The `gpt/evaluate` job: score a trained model with registered evaluations."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from theseus.config import configure, field
from theseus.errors import UserError
from theseus.evaluation.base import (
    EvalConfig,
    check_evaluations,
    evaluation_components,
    run_evaluations,
)
from theseus.evaluation.source import HF_DEFAULT_CONTEXT
from theseus.job import BasicJob
from theseus.registry import job


@dataclass
class EvaluateConfig:
    checkpoint: str = field(
        "eval/checkpoint",
        help="what to score: a run folder, a checkpoint folder, a run name under the output root, "
        "or a Hugging Face model folder (config.json, safetensors, tokenizer.json)",
    )
    context: int | None = field(
        "eval/context",
        minimum=1,
        default=None,
        help="tokens per scoring window (null = the length a run trained on; a Hugging Face "
        f"folder's max_position_embeddings, at most {HF_DEFAULT_CONTEXT})",
    )


@job("gpt/evaluate")
class Evaluate(BasicJob[EvaluateConfig]):
    """Score a trained model with the evaluations in eval.evaluations; results go to eval.json
    and the config (naming the checkpoint step scored) to eval-config.yaml."""

    CONFIG = EvaluateConfig

    @classmethod
    def components(cls) -> list[type]:
        return [EvaluateConfig, *evaluation_components()]

    def checkpoint_path(self) -> Path:
        """eval.checkpoint as given relative to the current folder (like every other path
        setting), else to the output root, else as a run name: OUT/runs/<project>/<group>/NAME
        with this run's project and group, then the defaults."""
        given = Path(self.config.checkpoint).expanduser()
        places = [given] if given.is_absolute() else [given.resolve(), self.spec.root / given]
        if len(given.parts) == 1:
            places += [
                self.spec.root / "runs" / project / group / given
                for project, group in [(self.spec.project, self.spec.group), ("default", "default")]
            ]
        places = list(dict.fromkeys(places))
        for place in places:
            if place.exists():
                return place
        raise UserError(
            f"eval.checkpoint={self.config.checkpoint}: no run or checkpoint at "
            f"{', '.join(map(str, places))}; give a run folder, a checkpoint folder or a run name"
        )

    def run(self) -> dict[str, float]:
        from rich.console import Console

        from theseus.base.files import atomic_write
        from theseus.evaluation.source import load_scored

        settings = configure(EvalConfig, self.cfg)
        if not settings.evaluations:
            raise UserError(
                "nothing to evaluate: set eval.evaluations, e.g. eval.evaluations=[perplexity]"
            )
        check_evaluations(settings.evaluations, self.cfg)
        from theseus.parallel.distributed import split_cpu_into_cores

        # on a CPU, one JAX device per core: the harness splits a batch's rows over them
        split_cpu_into_cores(None, global_batch=settings.batch_size)
        from theseus.evaluation.shapes import keep_compiled

        keep_compiled()  # the next evaluation of this model compiles nothing
        loaded = load_scored(self.checkpoint_path(), self.config.context, settings.batch_size)
        scorer, scored = loaded.scorer, loaded.path
        # every evaluation's data is checked against the model before the first one scores
        check_evaluations(settings.evaluations, self.cfg, scorer.tokenizer, scorer.seq_len)
        files: dict[str, str] = {}
        results = run_evaluations(settings.evaluations, scorer, self.cfg, files)
        # the step folder, not the name given: a run that trains on would score another one later
        cfg = copy.deepcopy(self.cfg)
        cfg.eval.checkpoint = str(scored)
        # its own name: evaluating under a training run's name (a -s stage after training, say)
        # must not replace that run's config.yaml
        atomic_write(self.spec.run_dir / "eval-config.yaml", self.settings_yaml(cfg))
        atomic_write(self.spec.run_dir / "eval.json", json.dumps(results, indent=2) + "\n")
        for name, text in files.items():  # the harness's results JSON and table
            atomic_write(self.spec.run_dir / name, text)
        console = Console(stderr=True)
        if "harness.md" in files:
            console.print(files["harness.md"], markup=False, highlight=False)
        for key, value in results.items():
            console.print(f"{key:40s} {value:.4f}", markup=False, highlight=False)
        return results
