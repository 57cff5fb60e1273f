"""Perplexity on a token store's split or on a text file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from theseus.config import field
from theseus.data.tokenizers import describe_tokenizer, same_tokenizer
from theseus.errors import UserError
from theseus.evaluation.base import Evaluation
from theseus.registry import evaluation

if TYPE_CHECKING:
    from theseus.data.store import TokenStore
    from theseus.data.tokenizers import Tokenizer
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
        "eval/perplexity/max_tokens",
        minimum=1,
        default=65536,
        help="score at most this many tokens",
    )


@evaluation("perplexity")
class Perplexity(Evaluation):
    """Perplexity (exp of the mean token negative log-likelihood) on a store split or a text file."""

    CONFIG = PerplexityConfig

    def check(self, tokenizer: Tokenizer | None = None, seq_len: int | None = None) -> None:
        if tokenizer is None:
            self._source(None)
        else:
            self.tokens(tokenizer)

    def _source(self, tokenizer: dict[str, str] | None) -> Path | TokenStore:
        """The text file or the variable token store to score, its settings checked."""
        from theseus.data.store import TokenStore

        cfg = self.config
        if (cfg.store is None) == (cfg.text is None):
            raise UserError(
                "perplexity: set exactly one of eval.perplexity.store and eval.perplexity.text"
            )
        if cfg.text is not None:
            path = Path(cfg.text).expanduser()
            if not path.is_file():
                raise UserError(f"perplexity: no such text file {path} (eval.perplexity.text)")
            return path
        # sizes only: hashing every shard would read the whole store to score max_tokens of it
        try:
            store = TokenStore.open(Path(cfg.store).expanduser(), verify=False)
        except UserError as exc:
            raise UserError(f"perplexity: {exc} (eval.perplexity.store)") from None
        if store.manifest.kind != "variable":
            raise UserError(
                f"perplexity: {store.path} is a {store.manifest.kind} store; give a variable one"
            )
        if store.n_rows(cfg.split) == 0:
            raise UserError(f"perplexity: the {cfg.split} split of {store.path} is empty")
        if tokenizer is not None and not same_tokenizer(store.manifest.tokenizer, tokenizer):
            raise UserError(
                f"perplexity: {store.path} was tokenized with {describe_tokenizer(store.manifest.tokenizer)} but "
                f"the model uses {describe_tokenizer(tokenizer)}; score a store written with the model's "
                "tokenizer, or a text file (eval.perplexity.text)"
            )
        return store

    def tokens(self, tokenizer: Tokenizer) -> np.ndarray:
        """The first max_tokens + 1 tokens to score (only those are read), at least two."""
        source = self._source(tokenizer.identity)
        limit = self.config.max_tokens + 1
        if isinstance(source, Path):
            tokens = np.asarray(
                tokenizer.encode(source.read_text(encoding="utf-8"))[:limit], np.int64
            )
        else:
            parts = []
            for part in source.memmaps(self.config.split):
                parts.append(np.asarray(part[:limit], np.int64))
                limit -= len(parts[-1])
                if limit == 0:
                    break
            tokens = np.concatenate(parts)
        if len(tokens) < 2:
            raise UserError(
                f"perplexity: {self.config.text or self.config.store} holds fewer than two "
                "tokens to score; give more text"
            )
        return tokens

    def run(self, scorer: Scorer) -> dict[str, float]:
        tokens = self.tokens(scorer.tokenizer)
        step = scorer.seq_len
        windows = [tokens[i : i + step + 1] for i in range(0, len(tokens) - 1, step)]
        nll, count = scorer.nll(windows)
        return {"loss": nll / count, "perplexity": math.exp(nll / count), "tokens": float(count)}
