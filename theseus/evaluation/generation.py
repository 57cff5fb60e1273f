"""Generation scored by exact match or a regular expression: quick checks during training."""

from __future__ import annotations

import json
import re
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

ITEM = '{"prompt": str, "answer": str} or {"prompt": str, "pattern": regex}'


@dataclass
class GenerationConfig:
    path: str | None = field(
        "eval/generation/path",
        default=None,
        help=f"JSON lines, one item each: {ITEM}",
    )
    max_new: int = field(
        "eval/generation/max_new", minimum=1, default=32, help="tokens generated per prompt at most"
    )
    stop: list[str] = field(
        "eval/generation/stop",
        default_factory=lambda: ["\n"],
        help="a generation ends at the first of these strings (and at end of text)",
    )
    extract: str | None = field(
        "eval/generation/extract",
        default=None,
        help="a regex whose first group (else whole match) is the answer given, e.g. "
        "'#### (-?[0-9.,]+)'; null = the whole generation, stripped",
    )

    def check(self) -> None:
        if self.extract is not None:
            _compiled(self.extract, "eval.generation.extract")


def _compiled(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserError(
            f"generation: {where} {pattern!r} is not a regular expression ({exc})"
        ) from None


def read_items(path: Path) -> list[dict[str, Any]]:
    """The items of a JSON-lines file; a bad line is named as FILE:LINE with what is wrong."""
    if not path.is_file():
        raise UserError(f"generation: no such file {path} (eval.generation.path)")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"generation: {path}:{n}: not JSON ({exc.msg}); each line is {ITEM}"
            ) from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise UserError(f"generation: {path}:{n}: no prompt string; each line is {ITEM}")
        if isinstance(item.get("answer"), str) == isinstance(item.get("pattern"), str):
            raise UserError(
                f"generation: {path}:{n}: give an answer or a pattern (one); each line is {ITEM}"
            )
        if "pattern" in item:
            _compiled(item["pattern"], f"{path}:{n}: pattern")
        items.append(item)
    if not items:
        raise UserError(f"generation: {path} holds no items; each line is {ITEM}")
    return items


@evaluation("generation")
class Generation(Evaluation):
    """Greedy generation from each prompt, until a stop string: exact match with the answer
    (after eval.generation.extract), or a regex the generation must match."""

    CONFIG = GenerationConfig

    def check(self, tokenizer: Tokenizer | None = None, seq_len: int | None = None) -> None:
        items = self._items()
        if tokenizer is not None and seq_len is not None:
            self._prompts(items, tokenizer, seq_len)

    def _items(self) -> list[dict[str, Any]]:
        if self.config.path is None:
            raise UserError("generation: set eval.generation.path to a JSON-lines file")
        return read_items(Path(self.config.path).expanduser())

    def _prompts(
        self, items: list[dict[str, Any]], tokenizer: Tokenizer, seq_len: int
    ) -> list[list[int]]:
        """Each prompt's tokens, cut from the left to leave room for max_new new ones."""
        room = seq_len - self.config.max_new
        if room < 1:
            raise UserError(
                f"generation: eval.generation.max_new={self.config.max_new} leaves no room for a "
                f"prompt in the model's window of {seq_len}; lower it"
            )
        return [(tokenizer.encode(item["prompt"]) or [tokenizer.eot_id])[-room:] for item in items]

    def generations(self, scorer: Scorer, items: list[dict[str, Any]]) -> list[str]:
        from theseus.evaluation.engine import engine_for

        tokenizer, stops = scorer.tokenizer, [s for s in self.config.stop if s]
        engine = engine_for(scorer, vocab_limit=tokenizer.vocab_size)

        def stopped(tokens: list[int]) -> bool:
            text = tokenizer.decode(tokens)
            return any(stop in text for stop in stops)

        prompts = self._prompts(items, tokenizer, scorer.seq_len)
        outputs = engine.generate(prompts, self.config.max_new, tokenizer.eot_id, stopped)
        texts = []
        for tokens in outputs:
            text = tokenizer.decode(tokens)
            for stop in stops:
                text = text.split(stop)[0]
            texts.append(text)
        return texts

    def run(self, scorer: Scorer) -> dict[str, float]:
        items = self._items()
        extract = _compiled(self.config.extract, "extract") if self.config.extract else None
        correct = 0
        for item, text in zip(items, self.generations(scorer, items), strict=True):
            if "pattern" in item:
                correct += re.search(item["pattern"], text) is not None
                continue
            if extract is not None:
                found = extract.search(text)
                text = "" if found is None else found.group(1 if extract.groups else 0)
            correct += text.strip() == item["answer"].strip()
        return {"exact_match": correct / len(items), "items": float(len(items))}
