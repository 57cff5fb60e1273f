"""A run's data: its token stores, the vocabulary they fix, and the batches read from them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from theseus.data.loader import Loader, open_mixture
from theseus.data.store import TokenStore
from theseus.errors import UserError
from theseus.training.plan import Plan
from theseus.training.settings import Settings


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    return multiple * math.ceil(vocab_size / multiple)


PRETRAINED_SEQ_LEN = 2048


def default_seq_len(stores: list[TokenStore], block_size: int, settings: Settings) -> int:
    """`training.seq_len` when null: the examples' length of blockwise stores, else the model's
    context (at most PRETRAINED_SEQ_LEN for a pretrained model, whose context is often far
    longer than a fine-tuning batch wants)."""
    lengths = {s.manifest.seq_len for s in stores if s.manifest.kind == "blockwise"}
    if len(lengths) == 1 and all(s.manifest.kind == "blockwise" for s in stores):
        return int(lengths.pop())
    if settings.pretrained is not None:
        return min(block_size, PRETRAINED_SEQ_LEN)
    return block_size


@dataclass(frozen=True)
class TrainingData:
    """The stores of `training.dataset`, their sampling rates, and the model's vocabulary."""

    stores: list[TokenStore]
    rates: list[float]
    seed: int
    reset_at_eot: bool
    vocab_size: int
    """The embedding's rows: `architecture.vocab_size`, else the stores' padded to 128."""
    vocab_used: int
    """The ids the model predicts: `architecture.vocab_used`, else the stores' vocabulary."""
    seq_len: int

    @classmethod
    def open(cls, root: Path, settings: Settings) -> TrainingData:
        arch, training = settings.architecture, settings.training
        stores = open_mixture(root, training.dataset)
        store_vocab = stores[0].manifest.vocab_size
        vocab = arch.vocab_size or padded_vocab(store_vocab)
        if vocab < store_vocab and settings.pretrained is not None:
            raise UserError(
                f"the token store {stores[0].path.name} has a vocabulary of {store_vocab} ids, "
                f"more than the {vocab} the model of architecture.init_from="
                f"{settings.pretrained.source} embeds; tokenize with that model's tokenizer"
            )
        if vocab < store_vocab:
            raise UserError(
                f"architecture.vocab_size={vocab} is smaller than the token store's vocabulary ({store_vocab})"
            )
        used = arch.vocab_used or store_vocab
        if not store_vocab <= used <= vocab:
            raise UserError(
                f"architecture.vocab_used={used} must lie between the token store's "
                f"vocabulary ({store_vocab}) and architecture.vocab_size ({vocab}); leave it null"
            )
        seq_len = training.seq_len or default_seq_len(stores, arch.block_size, settings)
        if seq_len > arch.block_size and arch.positions == "learned":
            raise UserError(
                f"training.seq_len={seq_len} exceeds architecture.block_size={arch.block_size}"
            )
        rates = [mix.rate for mix in training.dataset]
        return cls(stores, rates, training.seed, training.reset_at_eot, vocab, used, seq_len)

    @property
    def tokenizer(self) -> dict:
        """The tokenizer identity of the (first) store."""
        return dict(self.stores[0].manifest.tokenizer)

    def loader(self, split: str, plan: Plan) -> Loader:
        """This process's rows of `split`, a global batch per step."""
        return Loader(
            self.stores,
            self.rates,
            plan.seq_len,
            plan.global_batch,
            seed=self.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            split=split,
            reset_at_eot=self.reset_at_eot,
        )

    def validation_batches(
        self, plan: Plan, n_batches: int, say: Callable[[str], None]
    ) -> list[dict[str, np.ndarray]]:
        """This process's rows of the validation set, `n_batches` batches of the global batch
        each (so the same set whatever the device count or per-device batch), in micro-batches.
        Empty (and `say` tells why) when the stores hold too little validation data."""
        if not n_batches:
            return []
        if any(store.n_tokens("val") == 0 for store in self.stores):
            say("no validation split in the token store(s); validation is off")
            return []
        window = plan.seq_len + 1
        # a blockwise row is one padded sequence however few real tokens it holds
        short = [
            s for s in self.stores if s.manifest.kind != "blockwise" and s.n_tokens("val") < window
        ]
        if short:
            say(
                f"warning: the validation split of {short[0].path.name} holds "
                f"{short[0].n_tokens('val'):,} tokens, less than one sequence of {window}; "
                "validation is off (tokenize with a larger data.val_pct)"
            )
            return []
        loader = self.loader("val", plan)
        batches = []
        try:
            for i in range(n_batches):
                parts = {
                    k: np.split(rows, plan.accumulation) for k, rows in loader.batch(i).items()
                }
                batches += [{k: p[j] for k, p in parts.items()} for j in range(plan.accumulation)]
        finally:
            loader.close()
        return batches
