"""What an evaluation scores: a theseus run (or one of its checkpoints) or a Hugging Face folder,
as a `Scorer` with the window it scores in. Imports JAX only when it loads (job schemas import
this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from theseus.evaluation.scoring import Scorer

# a released model's context can be 32k or more; scoring windows that long by default would turn
# a quick evaluation into hours on a CPU
HF_DEFAULT_CONTEXT = 2048


@dataclass
class Scored:
    scorer: Scorer
    path: Path  # the checkpoint step folder scored (or the Hugging Face folder)


def load_scored(given: Path, context: int | None, batch_size: int) -> Scored:
    """The model at `given` in a `Scorer`; `context` tokens per window (None: what a run trained
    on; a Hugging Face folder's max_position_embeddings, at most HF_DEFAULT_CONTEXT)."""
    from theseus.checkpoint import locate
    from theseus.evaluation.scoring import Scorer
    from theseus.inference.hf_folder import is_hf_folder, load_hf_folder
    from theseus.inference.load import load_trained, trained_context

    if is_hf_folder(given):
        model, tokenizer = load_hf_folder(given)
        window = context or min(model.config.block_size, HF_DEFAULT_CONTEXT)
        return Scored(Scorer(model, tokenizer, window, batch_size, hf_folder=given), given)
    directory, step = locate(given)
    scored = directory / str(step)
    model, trained_cfg, tokenizer = load_trained(scored)
    # scored in windows of the length it was trained on
    window = context or trained_context(model, trained_cfg)
    return Scored(Scorer(model, tokenizer, window, batch_size), scored)
