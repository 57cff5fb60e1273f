"""A Hugging Face model folder (config.json, safetensors, tokenizer.json) as a model and its
tokenizer, for the commands that take a run or released weights alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from theseus.errors import UserError


def is_hf_folder(path: str | Path) -> bool:
    """A folder with a Hugging Face `config.json` (a theseus run or checkpoint has none)."""
    return (Path(path) / "config.json").is_file()


def load_hf_folder(path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """`(model, tokenizer)` of a Hugging Face folder; its tokenizer must fit the model's
    vocabulary, else ids would index past the embedding."""
    from theseus.data.tokenizers import HuggingFaceTokenizer
    from theseus.interop.huggingface import import_hf

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise UserError(
            f"{path} holds no tokenizer.json; save the model's tokenizer beside it "
            "(tokenizer.save_pretrained) to use the folder here"
        )
    model = import_hf(path, dtype=dtype)
    tokenizer = HuggingFaceTokenizer(str(path))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(
            f"{path}: its tokenizer has {tokenizer.vocab_size} ids but the model embeds "
            f"{model.config.vocab_size}; the folder's tokenizer does not belong to its model"
        )
    return model, tokenizer
