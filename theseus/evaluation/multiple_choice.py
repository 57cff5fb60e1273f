"""Multiple-choice scoring by the log-likelihood of each continuation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from theseus.config import field
from theseus.errors import UserError
from theseus.evaluation.base import Evaluation
from theseus.registry import evaluation

if TYPE_CHECKING:
    from theseus.evaluation.scoring import Scorer


@dataclass
class MultipleChoiceConfig:
    path: str | None = field(
        "eval/multiple_choice/path",
        default=None,
        help='JSON lines, one item each: {"context": str, "choices": [str, ...], "answer": index}',
    )
    normalize: bool = field(
        "eval/multiple_choice/normalize",
        default=False,
        help="divide each choice's log-likelihood by its token count",
    )


def read_items(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"multiple_choice: no such file {path} (eval.multiple_choice.path)")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            ok = isinstance(item["context"], str) and len(item["choices"]) >= 2
            ok = ok and 0 <= int(item["answer"]) < len(item["choices"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(
                f"multiple_choice: {path} line {n} is not {{context, choices (2+), answer (index)}}"
            )
        items.append(item)
    if not items:
        raise UserError(f"multiple_choice: {path} holds no items")
    return items


@evaluation("multiple_choice")
class MultipleChoice(Evaluation):
    """Accuracy at picking the answer whose continuation the model finds most likely."""

    CONFIG = MultipleChoiceConfig

    def predictions(self, scorer: Scorer, items: list[dict]) -> list[int]:
        encode = scorer.tokenizer.encode
        pairs = [
            (encode(item["context"]), encode(choice))
            for item in items
            for choice in item["choices"]
        ]
        scores = scorer.continuation_logprobs(pairs)
        preds, i = [], 0
        for item in items:
            k = len(item["choices"])
            values = [lp / n if self.config.normalize else lp for lp, n in scores[i : i + k]]
            preds.append(max(range(k), key=values.__getitem__))
            i += k
        return preds

    def run(self, scorer: Scorer) -> dict[str, float]:
        if self.config.path is None:
            raise UserError("multiple_choice: set eval.multiple_choice.path to a JSON-lines file")
        items = read_items(Path(self.config.path).expanduser())
        preds = self.predictions(scorer, items)
        correct = sum(p == int(item["answer"]) for p, item in zip(preds, items, strict=True))
        return {"accuracy": correct / len(items), "items": float(len(items))}
