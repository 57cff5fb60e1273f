"""Models. A job picks its model class (`MODEL`) and architecture preset (`ARCHITECTURE`);
subclass `Transformer` for a model of your own."""

from theseus.model.models.config import GPT2, LLAMA, TransformerConfig
from theseus.model.models.transformer import Transformer

__all__ = ["GPT2", "LLAMA", "Transformer", "TransformerConfig"]
