"""Text generation from trained models with a KV cache."""

from theseus.inference.checkpoint import sample_checkpoint
from theseus.inference.generate import generate, sample, sample_logits

__all__ = ["generate", "sample", "sample_checkpoint", "sample_logits"]
