"""Text generation from trained models with a KV cache."""

from theseus.inference.generate import generate, sample, sample_logits

__all__ = ["generate", "sample", "sample_logits"]
