"""Log-likelihoods of token sequences under a model, in fixed-shape jitted batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Scorer:
    """Scores token sequences with `model`; every call runs on [batch_size, seq_len] so it compiles once."""

    def __init__(
        self,
        model: nnx.Module,
        tokenizer,
        seq_len: int,
        batch_size: int = 8,
        hf_folder: Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        # the Hugging Face folder the model came from: harness tasks encode text as
        # transformers does there (its BOS, its special tokens), not as theseus trains
        self.hf_folder = hf_folder
        # public: evaluations with programs of their own (theseus.evaluation.engine) run these
        self.graphdef, self.state = nnx.split(model)
        graphdef = self.graphdef

        @jax.jit
        def token_logprobs(state, inputs, targets):
            logits = nnx.merge(graphdef, state)(inputs).astype(jnp.float32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

        self._token_logprobs = token_logprobs

    def use(self, model: nnx.Module) -> None:
        """Score with `model`'s current weights (same architecture: nothing recompiles)."""
        self.state = nnx.state(model)

    def _batched(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Log-probabilities of tokens 1.. of each row (each at most seq_len + 1 tokens)."""
        out: list[np.ndarray] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            tokens = np.zeros((self.batch_size, self.seq_len + 1), np.int32)
            for i, row in enumerate(chunk):
                tokens[i, : len(row)] = row
            logp = np.asarray(self._token_logprobs(self.state, tokens[:, :-1], tokens[:, 1:]))
            out += [logp[i, : len(row) - 1] for i, row in enumerate(chunk)]
        return out

    def nll(self, windows: Sequence[np.ndarray]) -> tuple[float, int]:
        """Summed negative log-likelihood and token count over windows of up to seq_len + 1 tokens."""
        logps = self._batched([np.asarray(w, np.int32) for w in windows])
        return -float(sum(lp.sum(dtype=np.float64) for lp in logps)), sum(lp.size for lp in logps)

    def continuation_logprobs(
        self, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, int]]:
        """For each (context, continuation): log P(continuation | context) and its token count.

        Each context needs a token (start an empty one with end-of-text) so that every
        continuation token is scored; contexts longer than the model's window are cut from the left.
        """
        rows, spans = [], []
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError("a context and a continuation each need at least one token")
            row = (list(context) + list(continuation))[-(self.seq_len + 1) :]
            rows.append(np.asarray(row, np.int32))
            spans.append(min(len(continuation), len(row) - 1))
        logps = self._batched(rows)
        return [
            (float(lp[-n:].sum(dtype=np.float64)), n) for lp, n in zip(logps, spans, strict=True)
        ]
