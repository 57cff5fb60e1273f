"""Trained models rebuilt from their checkpoints, and text generation from them with a KV cache."""

from theseus.inference.checkpoint import sample_checkpoint
from theseus.inference.generate import generate, sample, sample_logits
from theseus.inference.load import load_model

__all__ = ["generate", "load_model", "sample", "sample_checkpoint", "sample_logits"]
