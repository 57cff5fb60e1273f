"""Training a byte-level BPE with Hugging Face `tokenizers` on any dataset source."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from theseus.base.files import atomic_write
from theseus.data.chat import render
from theseus.data.datasets import Source
from theseus.data.tokenizers import EOT_TEXT
from theseus.errors import UserError


def train_bpe(
    source: Source, max_samples: int | None, vocab_size: int, min_frequency: int, out: Path
) -> Path:
    """Train on the source's documents (at most `max_samples`) and write `out` atomically."""
    if vocab_size < 257:
        raise UserError(
            f"tokenizer_training.vocab_size={vocab_size}: must be >= 257 (256 bytes + end-of-text)"
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )

    read = {"documents": 0, "texts": 0}

    def texts() -> Iterator[str]:
        for document in islice(source.documents(), max_samples):
            text = render(document, "chatml")
            read["documents"] += 1
            read["texts"] += bool(text.strip())
            yield text

    total = source.size_hint() if max_samples is None else max_samples
    tokenizer.train_from_iterator(texts(), trainer=trainer, length=total)
    if not read["texts"]:
        raise UserError(
            f"the source gave no text to train on ({read['documents']:,} documents, all empty); "
            "check data.paths, data.text_column and data.chat_column"
        )
    atomic_write(out, tokenizer.to_str(pretty=True))
    return out
