"""Perplexity on a token store's split or on a text file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from theseus.config import field
from theseus.errors import UserError
from theseus.evaluation.base import Evaluation
from theseus.registry import evaluation

if TYPE_CHECKING:
    from theseus.evaluation.scoring import Scorer


@dataclass
class PerplexityConfig:
    store: str | None = field(
        "eval/perplexity/store", default=None, help="token store folder to score (its split below)"
    )
    split: str = field(
        "eval/perplexity/split", default="val", choices=["train", "val"], help="split of the store"
    )
    text: str | None = field(
        "eval/perplexity/text",
        default=None,
        help="or: a text file, tokenized with the model's tokenizer",
    )
    max_tokens: int = field(
        "eval/perplexity/max_tokens", default=65536, help="score at most this many tokens"
    )


@evaluation("perplexity")
class Perplexity(Evaluation):
    """Perplexity (exp of the mean token negative log-likelihood) on a store split or a text file."""

    CONFIG = PerplexityConfig

    def tokens(self, scorer: Scorer) -> np.ndarray:
        cfg = self.config
        if (cfg.store is None) == (cfg.text is None):
            raise UserError(
                "perplexity: set exactly one of eval.perplexity.store and eval.perplexity.text"
            )
        if cfg.text is not None:
            path = Path(cfg.text).expanduser()
            if not path.is_file():
                raise UserError(f"perplexity: no such text file {path} (eval.perplexity.text)")
            return np.asarray(scorer.tokenizer.encode(path.read_text()), np.int64)
        from theseus.data.store import TokenStore

        store = TokenStore.open(Path(cfg.store).expanduser())
        if store.manifest.kind != "variable":
            raise UserError(
                f"perplexity: {store.path} is a {store.manifest.kind} store; give a variable one"
            )
        maps = store.memmaps(cfg.split)
        if not maps:
            raise UserError(f"perplexity: the {cfg.split} split of {store.path} is empty")
        return np.concatenate(maps)[: cfg.max_tokens + 1]

    def run(self, scorer: Scorer) -> dict[str, float]:
        tokens = self.tokens(scorer)[: self.config.max_tokens + 1]
        step = scorer.seq_len
        windows = [tokens[i : i + step + 1] for i in range(0, len(tokens) - 1, step)]
        windows = [w for w in windows if len(w) > 1]
        if not windows:
            raise UserError("perplexity: fewer than two tokens to score")
        nll, count = scorer.nll(windows)
        return {"loss": nll / count, "perplexity": math.exp(nll / count), "tokens": float(count)}
