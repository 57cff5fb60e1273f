"""Multiple-choice scoring by the log-likelihood of each continuation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from theseus.config import field
from theseus.errors import UserError
from theseus.evaluation.base import Evaluation
from theseus.registry import evaluation

if TYPE_CHECKING:
    from theseus.data.tokenizers import Tokenizer
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


ITEM = '{"context": str, "choices": [str, str, ...], "answer": index}'


def read_items(path: Path) -> list[dict[str, Any]]:
    """The items of a JSON-lines file; a bad line is named as FILE:LINE with what is wrong."""
    if not path.is_file():
        raise UserError(f"multiple_choice: no such file {path} (eval.multiple_choice.path)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(
            f"multiple_choice: {path} is not UTF-8 text; give a JSON-lines file"
        ) from None
    items = []
    # "\n" only: JSON strings may hold characters that splitlines() also splits at
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            items.append(_item(line))
        except ValueError as exc:
            raise UserError(f"multiple_choice: {path}:{n}: {exc}; each line is {ITEM}") from None
    if not items:
        raise UserError(f"multiple_choice: {path} holds no items; each line is {ITEM}")
    return items


def _item(line: str) -> dict[str, Any]:
    """One item; a ValueError says what is wrong with it."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise ValueError(f"expected an object, got {_show(item)}")
    missing = [key for key in ("context", "choices", "answer") if key not in item]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    context, choices, answer = item["context"], item["choices"], item["answer"]
    if not isinstance(context, str):
        raise ValueError(f"context must be a string (empty is fine), got {_show(context)}")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"choices must be a list of 2 or more strings, got {_show(choices)}")
    for k, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            # an empty continuation has no token to score
            raise ValueError(f"choice {k} must be a non-empty string, got {_show(choice)}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(
            f"answer must be an integer index from 0 to {len(choices) - 1}, got {_show(answer)}"
        )
    return item


def _show(value: Any) -> str:
    """`value` as it reads in the file, cut short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


@evaluation("multiple_choice")
class MultipleChoice(Evaluation):
    """Accuracy at picking the answer whose continuation the model finds most likely."""

    CONFIG = MultipleChoiceConfig

    def check(self, tokenizer: Tokenizer | None = None, seq_len: int | None = None) -> None:
        items = self._items()
        if tokenizer is not None and seq_len is not None:
            self._pairs(items, tokenizer, seq_len)

    def _items(self) -> list[dict[str, Any]]:
        if self.config.path is None:
            raise UserError("multiple_choice: set eval.multiple_choice.path to a JSON-lines file")
        return read_items(Path(self.config.path).expanduser())

    def _pairs(
        self, items: list[dict[str, Any]], tokenizer: Tokenizer, seq_len: int
    ) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) tokens of every choice, refusing one the model cannot score."""
        pairs = []
        for item in items:
            # as in sampling, an empty context starts at end-of-text, so the first token is scored
            context = tokenizer.encode(item["context"]) or [tokenizer.eot_id]
            for choice in item["choices"]:
                continuation = tokenizer.encode(choice)
                if not continuation:
                    raise UserError(f"multiple_choice: choice {choice!r} encodes to no tokens")
                if len(continuation) > seq_len:  # part of it would go unscored
                    raise UserError(
                        f"multiple_choice: choice {_show(choice)} is {len(continuation)} tokens, "
                        f"more than the model's window of {seq_len}; shorten it"
                    )
                pairs.append((context, continuation))
        return pairs

    def predictions(self, scorer: Scorer, items: list[dict[str, Any]]) -> list[int]:
        pairs = self._pairs(items, scorer.tokenizer, scorer.seq_len)
        scores = scorer.continuation_logprobs(pairs)
        preds, i = [], 0
        for item in items:
            k = len(item["choices"])
            values = [lp / n if self.config.normalize else lp for lp, n in scores[i : i + k]]
            preds.append(max(range(k), key=values.__getitem__))
            i += k
        return preds

    def run(self, scorer: Scorer) -> dict[str, float]:
        items = self._items()
        preds = self.predictions(scorer, items)
        correct = sum(p == item["answer"] for p, item in zip(preds, items, strict=True))
        return {"accuracy": correct / len(items), "items": float(len(items))}
