"""The training loader: the batch for step s on process p is a pure function of its inputs.

Each store is cut into windows (variable stores: `seq_len + 1` tokens starting every `seq_len`;
blockwise stores: one example each). Global batch rows are dealt to stores by a fixed table
that follows the mixture rates, and each store serves its windows through a seeded permutation,
a new one per epoch — so every window is served exactly once per epoch, processes take
disjoint slices of the same global batch, and any step can be computed directly (O(1) seek),
which is what makes resuming exact.
"""

from __future__ import annotations

import math
import queue
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from theseus.data.shuffle import permute, round_keys
from theseus.data.store import TokenStore, check_store_name
from theseus.data.tokenizers import same_tokenizer
from theseus.errors import UserError

MIX_PERIOD = 4096


@dataclass
class DatasetMix:
    """One entry of `training.dataset`: the store `<root>/data/<name>` and its relative share of each batch."""

    name: str
    rate: float = 1.0


def check_rates(rates: list[float]) -> None:
    """Mixture rates are finite, not negative, and not all 0."""
    for k, rate in enumerate(rates):
        if not (math.isfinite(rate) and rate >= 0):
            raise UserError(
                f"training.dataset.{k}.rate={rate}: a rate must be a finite number >= 0"
            )
    if sum(rates) <= 0:
        raise UserError(f"training.dataset: every rate is 0 ({rates}); give one a rate > 0")


class _Windows:
    """One store's split seen as numbered windows of `seq_len + 1` tokens."""

    def __init__(self, store: TokenStore, split: str, seq_len: int) -> None:
        self.store, self.split, self.seq_len = store, split, seq_len
        self.kind = store.manifest.kind
        self.eot = store.manifest.eot_id
        self.tokens = store.memmaps(split, "tokens")
        sizes = np.array([len(m) for m in self.tokens], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        if self.kind == "blockwise":
            if store.manifest.seq_len != seq_len:
                raise UserError(
                    f"store {store.path.name} holds examples of seq_len {store.manifest.seq_len}, "
                    f"the loader asks for {seq_len}; set the training seq_len to match or re-tokenize"
                )
            self.masks = store.memmaps(split, "loss_mask")
            self.lengths = store.memmaps(split, "lengths")
            self.left_padded = store.manifest.padding == "left"
            self.count = int(self.offsets[-1])
        else:
            self.count = max(0, int(self.offsets[-1]) - 1) // seq_len
        if self.count == 0:
            raise UserError(
                f"store {store.path.name} has no {split} window of {seq_len + 1} tokens "
                f"({store.n_tokens(split):,} tokens); "
                + (
                    "tokenize with data.val_pct > 0"
                    if split == "val"
                    else "tokenize more data or lower seq_len"
                )
            )

    def _locate(self, start: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        return shard, start - int(self.offsets[shard])

    def read(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of `seq_len + 1` tokens, plus (blockwise stores) their loss masks. Left-padded rows
        come with their padding moved to the end: a causal model without a padding mask would
        otherwise attend to it from every real token."""
        rows, masks = self._read(windows)
        self._check_ids(rows)
        return rows, masks

    def _check_ids(self, rows: np.ndarray) -> None:
        """Opening a store checks only shard sizes (checksums would read it all): damage inside a
        shard shows here, as ids the tokenizer cannot have written."""
        vocab = self.store.manifest.vocab_size
        if rows.min() >= 0 and rows.max() < vocab:
            return
        bad = int(rows[(rows < 0) | (rows >= vocab)][0])
        raise UserError(
            f"token store {self.store.path}: its {self.split} split holds token id {bad}, outside its "
            f"vocabulary of {vocab}, so a shard is damaged; run its tokenize job again to find the "
            "shard (it verifies every checksum), and rebuild with --fresh"
        )

    def _read(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.empty((len(windows), self.seq_len + 1), dtype=np.int32)
        if self.kind == "blockwise":
            masks = np.zeros((len(windows), self.seq_len), dtype=np.float32)
            for i, w in enumerate(windows):
                shard, at = self._locate(int(w))
                pad = self.seq_len + 1 - int(self.lengths[shard][at]) if self.left_padded else 0
                rows[i] = np.roll(self.tokens[shard][at], -pad)
                masks[i, : self.seq_len - pad] = self.masks[shard][at][pad:]
            return rows, masks
        for i, w in enumerate(windows):
            start, filled = int(w) * self.seq_len, 0
            while filled < self.seq_len + 1:
                shard, at = self._locate(start + filled)
                piece = self.tokens[shard][at : at + self.seq_len + 1 - filled]
                rows[i, filled : filled + len(piece)] = piece
                filled += len(piece)
        return rows, None


def mixture_table(
    rates: list[float], period: int = MIX_PERIOD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(store of each row of a period, rows per store per period, rows of each store before row i)."""
    total = float(sum(rates))
    exact = np.array(rates, dtype=np.float64) / total * period
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: period - int(counts.sum())]] += 1
    for k, rate in enumerate(rates):
        if rate > 0 and counts[k] == 0:
            raise UserError(
                f"training.dataset.{k}.rate={rate} is below 1/{period} of the mixture; raise it or drop the entry"
            )
    slots = [((j + 0.5) / c, k) for k, c in enumerate(counts) for j in range(c)]
    table = np.array([k for _, k in sorted(slots)], dtype=np.int64)
    before = np.zeros((len(rates), period + 1), dtype=np.int64)
    for k in range(len(rates)):
        before[k, 1:] = np.cumsum(table == k)
    return table, counts, before


class Loader:
    """Batches for training or validation from a mixture of token stores.

    `batch(step)` -> {"inputs", "targets", "positions"} int32 and {"loss_mask"} float32, each
    [global_batch / process_count, seq_len]: this process's slice of the global batch.
    """

    def __init__(
        self,
        stores: list[TokenStore],
        rates: list[float],
        seq_len: int,
        global_batch: int,
        *,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        split: str = "train",
        reset_at_eot: bool = False,
    ) -> None:
        if not stores or len(stores) != len(rates):
            raise UserError(
                f"the loader needs one rate per store (got {len(stores)} stores, {len(rates)} rates)"
            )
        check_rates(rates)
        if seq_len < 1 or global_batch < 1:
            raise UserError(
                f"seq_len and global batch size must be >= 1 (got {seq_len}, {global_batch})"
            )
        if not 0 <= process_index < process_count:
            raise UserError(f"process index {process_index} is outside 0..{process_count - 1}")
        if global_batch % process_count:
            raise UserError(
                f"global batch {global_batch} does not split over {process_count} processes; use a multiple of {process_count}"
            )
        hashes = {s.manifest.tokenizer.get("hash") for s in stores}
        if len(hashes) > 1:
            names = ", ".join(s.path.name for s in stores)
            raise UserError(
                f"stores {names} were written by different tokenizers; a mixture needs one tokenizer"
            )
        self.stores, self.seq_len, self.global_batch = stores, seq_len, global_batch
        self.seed, self.split, self.reset_at_eot = seed, split, reset_at_eot
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = global_batch // process_count
        self.windows = [_Windows(s, split, seq_len) for s in stores]
        self.table, self.per_period, self.before = mixture_table(list(rates))
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    @property
    def steps_per_epoch(self) -> int:
        """Steps until the first store (at its rate) starts serving its windows again."""
        steps = [
            w.count * MIX_PERIOD // (int(c) * self.global_batch)
            for w, c in zip(self.windows, self.per_period, strict=True)
            if c
        ]
        return max(1, min(steps))

    def assignments(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """For this process's rows of `step`: (store index, ordinal of the row within that store)."""
        start = step * self.global_batch + self.process_index * self.local_batch
        rows = np.arange(start, start + self.local_batch, dtype=np.int64)
        cycle, at = rows // MIX_PERIOD, rows % MIX_PERIOD
        store = self.table[at]
        ordinal = cycle * self.per_period[store] + self.before[store, at]
        return store, ordinal

    def window_ids(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(store index, window index) of each of this process's rows of `step`."""
        if step < 0:
            raise UserError(f"step must be >= 0, got {step}")
        store, ordinal = self.assignments(step)
        window = np.empty_like(ordinal)
        for k, source in enumerate(self.windows):
            mine = store == k
            if not mine.any():
                continue
            epochs, index = np.divmod(ordinal[mine], source.count)
            out = np.empty_like(index)
            for epoch in np.unique(epochs):
                same = epochs == epoch
                out[same] = permute(index[same], source.count, round_keys(self.seed, k, int(epoch)))
            window[mine] = out
        return store, window

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of the global batch of `step`."""
        store, window = self.window_ids(step)
        rows = np.empty((self.local_batch, self.seq_len + 1), dtype=np.int32)
        mask = np.ones((self.local_batch, self.seq_len), dtype=np.float32)
        positions = np.broadcast_to(
            np.arange(self.seq_len, dtype=np.int32), (self.local_batch, self.seq_len)
        ).copy()
        for k, source in enumerate(self.windows):
            mine = np.flatnonzero(store == k)
            if not len(mine):
                continue
            tokens, masks = source.read(window[mine])
            rows[mine] = tokens
            if masks is not None:
                mask[mine] = masks
            elif self.reset_at_eot:
                mask[mine], positions[mine] = self._document_bounds(tokens[:, :-1], source.eot)
        return {
            "inputs": rows[:, :-1].copy(),
            "targets": rows[:, 1:].copy(),
            "loss_mask": mask,
            "positions": positions,
        }

    @staticmethod
    def _document_bounds(inputs: np.ndarray, eot: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions restart after each end-of-text; no loss on predicting across a boundary."""
        t = np.arange(inputs.shape[1], dtype=np.int32)
        starts = np.zeros(inputs.shape, dtype=bool)
        starts[:, 0] = True
        starts[:, 1:] = inputs[:, :-1] == eot
        last_start = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
        return (inputs != eot).astype(np.float32), (t - last_start).astype(np.int32)

    def iterate(
        self, start_step: int = 0, prefetch: int = 4
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(step, batch) from `start_step` on, computed ahead in a thread into a queue of `prefetch`."""
        slots: queue.Queue[tuple[int, dict[str, np.ndarray] | BaseException]] = queue.Queue(
            maxsize=max(1, prefetch)
        )
        stop = threading.Event()

        def produce() -> None:
            step = start_step
            while not stop.is_set():
                try:
                    item: dict[str, np.ndarray] | BaseException = self.batch(step)
                except BaseException as exc:  # re-raised in the consumer
                    item = exc
                while not stop.is_set():
                    try:
                        slots.put((step, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if isinstance(item, BaseException):
                    return
                step += 1

        thread = threading.Thread(target=produce, name="theseus-loader", daemon=True)
        self._threads.append((thread, stop))
        thread.start()
        try:
            while True:
                step, item = slots.get()
                if isinstance(item, BaseException):
                    raise item
                yield step, item
        finally:
            stop.set()

    def close(self) -> None:
        """Stop every prefetch thread."""
        for thread, stop in self._threads:
            stop.set()
            thread.join(timeout=5)
        self._threads.clear()


def open_mixture(root: Path, mixes: list[DatasetMix]) -> list[TokenStore]:
    """The token stores a training mixture names under ROOT/data, checked to share one tokenizer
    and to hold training tokens."""
    if not mixes:
        raise UserError(
            "training.dataset is empty; add a token store, e.g. training.dataset=[{name: pystdlib}]"
        )
    stores = []
    for k, mix in enumerate(mixes):
        path = root / "data" / check_store_name(f"training.dataset.{k}.name", mix.name)
        if (
            not (path / "manifest.json").is_file()
            and not path.with_name(f"{mix.name}.partial").exists()
        ):
            raise _missing_store(root, mixes, k)
        stores.append(TokenStore.open(path, verify=False))  # says so if the store is unfinished
    for store in stores[1:]:
        if not same_tokenizer(store.manifest.tokenizer, stores[0].manifest.tokenizer):
            raise UserError(
                f"token stores {stores[0].path.name} and {store.path.name} use different tokenizers; "
                "train on stores written with the same tokenizer"
            )
    for store in stores:
        if store.n_tokens("train") == 0:
            raise UserError(f"token store {store.path} has no training tokens")
    return stores


def _missing_store(root: Path, mixes: list[DatasetMix], k: int) -> UserError:
    """The error for entry `k` of the mixture having no store: how to write it, and how to train
    on a store that is there instead (a new user's first run names the default store, which may
    not be the one they tokenized)."""
    from theseus.registry import DATASETS

    name, data = mixes[k].name, root / "data"
    source = (
        f"data.name={name}"
        if name in DATASETS
        else f"data.name=files 'data.paths=[...]' data.store={name}"
    )
    tokenize = (
        f"`theseus configure data/tokenize_variable_dataset tok.yaml {source}` and "
        f"`theseus run tokenize-{name} tok.yaml {root}`"
    )
    present = sorted(p.name for p in data.glob("*") if (p / "manifest.json").is_file())
    if not present:
        return UserError(
            f"no token store {name!r} at {data / name} ({data} holds no store); write it first with {tokenize}"
        )
    shown = ", ".join(present[:10]) + (
        f" and {len(present) - 10} more" if len(present) > 10 else ""
    )
    named = {mix.name for mix in mixes}
    others = [store for store in present if store not in named]
    if not others:
        instead = f"or leave it out: {shlex.quote(f'~training.dataset.{k}')}"
    else:
        override = (
            f"training.dataset=[{{name: {others[0]}}}]"
            if len(mixes) == 1
            else f"training.dataset.{k}.name={others[0]}"
        )
        instead = f"or train on one of those: {shlex.quote(override)}"
    return UserError(
        f"no token store {name!r} at {data / name}; {data} holds: {shown}. "
        f"Tokenize {name} first ({tokenize}), {instead}"
    )
