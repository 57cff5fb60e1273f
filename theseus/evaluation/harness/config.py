"""The `harness` evaluation: lm-evaluation-harness tasks (HellaSwag, ARC, MMLU, GSM8K, ... or
task YAMLs of your own) scored on the model, on its own (`gpt/evaluate`, `theseus eval`) or
during training. Results are `eval/<task>/<metric>`.

Imports neither JAX nor the harness: job schemas read `HarnessConfig`, and its check runs at
`theseus configure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from theseus.config import field
from theseus.errors import UserError
from theseus.evaluation.base import Evaluation
from theseus.registry import evaluation

if TYPE_CHECKING:
    from theseus.data.tokenizers import Tokenizer
    from theseus.evaluation.scoring import Scorer


@dataclass
class HarnessConfig:
    tasks: list[str] = field(
        "eval/harness/tasks",
        default_factory=list,
        help="harness tasks, groups or tags (globs too), or task YAML files, e.g. "
        "[hellaswag, arc_easy, mmlu]",
    )
    num_fewshot: int | None = field(
        "eval/harness/num_fewshot",
        minimum=0,
        default=None,
        help="examples put before each question (null = each task's own, else 0)",
    )
    limit: int | None = field(
        "eval/harness/limit",
        minimum=1,
        default=None,
        help="score only the first N documents of each task (null = all; set one during training)",
    )
    include_path: str | None = field(
        "eval/harness/include_path",
        default=None,
        help="a folder of task YAMLs of your own (the harness's format), named in tasks",
    )
    bootstrap_iters: int = field(
        "eval/harness/bootstrap_iters",
        minimum=0,
        default=100000,
        help="resamples for the standard errors of metrics without a formula (0 = none)",
    )

    def check(self) -> None:
        """Unknown task names and task files that do not parse or lack a field, before any
        work (the harness's own names come from a cached index: the harness is not imported)."""
        if self.tasks:
            from theseus.evaluation.harness.tasks import resolve_tasks

            resolve_tasks(self.tasks, self.include_path)


@evaluation("harness")
class Harness(Evaluation):
    """lm-evaluation-harness tasks (eval.harness.tasks), scored as its Hugging Face backend
    scores them; metrics are logged as eval/<task>/<metric>."""

    CONFIG = HarnessConfig
    NAMESPACED: ClassVar[bool] = False  # metric names carry their task

    def check(self, tokenizer: Tokenizer | None = None, seq_len: int | None = None) -> None:
        if not self.config.tasks:
            raise UserError(
                "harness: set eval.harness.tasks, e.g. eval.harness.tasks=[hellaswag,arc_easy]"
            )
        if tokenizer is None:
            from theseus.evaluation.harness.tasks import resolve_tasks

            resolve_tasks(self.config.tasks, self.config.include_path)
        else:  # just before scoring: the datasets too, so that a missing one stops no run midway
            from theseus.evaluation.harness.run import load_tasks

            load_tasks(list(self.config.tasks), self.config.include_path)

    def run(self, scorer: Scorer) -> dict[str, float]:
        results = run_harness(scorer, self.config)
        from theseus.evaluation.harness.run import metrics, results_json, table

        self.files = {"harness.json": results_json(results), "harness.md": table(results)}
        return metrics(results)


def run_harness(scorer: Scorer, config: HarnessConfig) -> dict[str, Any]:
    """The harness's results dict of `config`'s tasks, scored with `scorer`'s model."""
    from theseus.evaluation.engine import engine_for
    from theseus.evaluation.harness.lm import TheseusLM
    from theseus.evaluation.harness.run import load_tasks, run_tasks

    tokenizer = scorer.tokenizer
    engine = engine_for(scorer, vocab_limit=tokenizer.vocab_size)
    lm = TheseusLM(engine, tokenizer, scorer.hf_folder)
    loaded = load_tasks(list(config.tasks), config.include_path)
    return run_tasks(
        lm,
        loaded,
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        bootstrap_iters=config.bootstrap_iters,
    )
