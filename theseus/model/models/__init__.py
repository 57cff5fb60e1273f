"""Registered models. Add your own here or in user code with `@model("name")`."""

from theseus.model.models.gpt import GPT, GPTConfig
from theseus.model.models.llama import Llama, LlamaConfig
from theseus.model.models.transformer import Transformer, TransformerConfig

__all__ = ["GPT", "GPTConfig", "Llama", "LlamaConfig", "Transformer", "TransformerConfig"]
