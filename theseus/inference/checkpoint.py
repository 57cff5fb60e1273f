"""Sampling straight from a run or checkpoint folder (what `theseus sample` does)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from theseus.errors import UserError
from theseus.inference.generate import sample
from theseus.inference.load import load_trained


def sample_checkpoint(
    path: str | Path,
    prompts: Sequence[str],
    *,
    max_new: int | None = None,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.95,
    seed: int = 0,
) -> list[str]:
    """Load the latest checkpoint under `path` with its tokenizer and continue each prompt.

    `max_new` defaults to 200 tokens, or fewer when the model's learned positions end sooner.
    """
    model, _, tokenizer = load_trained(path)
    if max_new is None and getattr(model.config, "positions", "learned") != "learned":
        max_new = 200  # rotary positions have no last position: no context to fill
    if max_new is None:
        longest = max(len(tokenizer.encode(p)) or 1 for p in prompts)
        # the last new token is never fed back: it may sit one past the context
        max_new = min(200, model.config.block_size - longest + 1)
        if max_new < 1:
            raise UserError(
                f"the prompt ({longest} tokens) is longer than the model's context of "
                f"{model.config.block_size}; shorten it"
            )
    return sample(
        model,
        tokenizer,
        list(prompts),
        max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
