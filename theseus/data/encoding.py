"""Encoding documents into token arrays: one batch at a time (`Encoder`), or many at once on
every core, handed back in input order (`EncodeWorkers`)."""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from theseus.base.chips import usable_cores
from theseus.data.chat import ModelTemplate, example, learned_flags, segments
from theseus.data.datasets.base import Document, HeldOut
from theseus.data.tokenizers import Tokenizer
from theseus.errors import UserError

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
BATCHES_IN_FLIGHT = 2
_WORKER_ENCODER: Encoder | None = None  # in a worker process: the encoder its batches use


@dataclass
class TokenizePlan:
    """What to tokenize and how (all but `batch_docs` shape the store's bytes)."""

    kind: str
    max_samples: int | None
    max_tokens: int | None
    val_pct: float
    batch_docs: int
    template: str = "chatml"
    seq_len: int | None = None
    padding: str = "right"
    loss_on: str = "assistant"
    chat: ModelTemplate | None = None  # the tokenizer folder's own, for template "model"


def is_val(document: Document, val_pct: float) -> bool:
    """Held out for validation: a stable function of the document's content, not of run order
    (or held out by its source: `data.val_paths`)."""
    if isinstance(document, HeldOut):
        return True
    if val_pct <= 0:
        return False
    key = (
        document
        if isinstance(document, str)
        else repr([(m["role"], m["content"]) for m in document])
    )
    value = int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", errors="replace"), digest_size=8).digest(), "big"
    )
    return value < val_pct / 100.0 * 2**64


def ordered_map(fn: Callable[[Any], Any], items: Iterator[Any], workers: int) -> Iterator[Any]:
    """`map(fn, items)` with `workers` calls in flight, results in input order.

    Several batches encode at once so that one batch's slowest document, or another's
    GIL-bound conversion to arrays, does not leave cores idle; encoding goes on while the
    caller writes.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="theseus-encode")
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Encoded:
    """One batch, tokenized. Per written (non-empty) document, in order: where it was in the
    batch, whether it is held out, its token count and row count, whether it was truncated, has
    no token to learn, and has none only because truncation cut off its learned tokens; the rows
    of each split; and where in the batch the chats with no message were (skipped)."""

    n_read: int
    index: np.ndarray
    held_out: np.ndarray
    tokens: np.ndarray
    rows: np.ndarray
    truncated: np.ndarray
    unlearned: np.ndarray
    cut_off: np.ndarray
    arrays: dict[str, dict[str, np.ndarray]]
    empty_chats: np.ndarray

    def cut(self, n_docs: int) -> Encoded:
        """Only the first `n_docs` written documents (and the batch up to the last of them)."""
        out = {}
        for split, held_out in (("train", False), ("val", True)):
            keep = int(self.rows[:n_docs][self.held_out[:n_docs] == held_out].sum())
            out[split] = {name: values[:keep] for name, values in self.arrays[split].items()}
        n_read = int(self.index[n_docs - 1]) + 1 if n_docs else 0
        fields = (
            self.index,
            self.held_out,
            self.tokens,
            self.rows,
            self.truncated,
            self.unlearned,
            self.cut_off,
        )
        return Encoded(
            n_read, *(f[:n_docs] for f in fields), out, self.empty_chats[self.empty_chats < n_read]
        )


class Encoder:
    """Turns a batch of documents into store rows, a whole batch at a time (little per-document Python)."""

    def __init__(self, tokenizer: Tokenizer, plan: TokenizePlan, dtype: str) -> None:
        self.tokenizer = tokenizer
        self.plan = plan
        self.dtype = np.dtype(dtype)

    def encode(self, batch: list[Document]) -> Encoded:
        index = [i for i, d in enumerate(batch) if d and (not isinstance(d, str) or d.strip())]
        docs = [batch[i] for i in index]
        held_out = np.array([is_val(d, self.plan.val_pct) for d in docs], dtype=bool)
        if self.plan.kind == "variable":
            tokens, arrays = self.variable(docs)
            rows = tokens
            truncated = unlearned = cut_off = np.zeros(len(docs), dtype=bool)
        else:
            tokens, truncated, cut_off, arrays = self.blockwise(docs)
            rows = np.ones(len(docs), dtype=np.int64)
            unlearned = ~arrays["loss_mask"].any(axis=1)
        by_split = {
            "train": {k: v[np.repeat(~held_out, rows)] for k, v in arrays.items()},
            "val": {k: v[np.repeat(held_out, rows)] for k, v in arrays.items()},
        }
        empty_chats = [i for i, d in enumerate(batch) if isinstance(d, list) and not d]
        return Encoded(
            len(batch),
            np.array(index, dtype=np.int64),
            held_out,
            tokens,
            rows,
            truncated,
            unlearned,
            cut_off,
            by_split,
            np.array(empty_chats, dtype=np.int64),
        )

    def variable(self, docs: list[Document]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Each document's ids followed by the end-of-text id, all in one array."""
        texts = [d for d in docs if isinstance(d, str)]
        if len(texts) == len(docs):
            flat, lengths = self.tokenizer.encode_batch_flat(texts)
        else:
            ids = [doc_ids for doc_ids, _, _ in self.documents(docs, "all")]
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        counts = lengths + 1
        stream = np.empty(int(counts.sum()), dtype=self.dtype)
        is_eot = np.zeros(len(stream), dtype=bool)
        is_eot[np.cumsum(counts) - 1] = True
        stream[is_eot] = self.tokenizer.eot_id
        stream[~is_eot] = flat
        return counts, {"tokens": stream}

    def encode_pieces(self, pieces: list[list[tuple[str, bool, bool]]]) -> list[list[list[int]]]:
        """The ids of every piece of every document (see `segments`), markup parsed apart."""
        return encode_pieces(self.tokenizer, pieces)

    def documents(
        self, docs: list[Document], loss_on: str
    ) -> list[tuple[list[int], list[bool], bool]]:
        """Per document: its ids, whether each is learned, and whether an end-of-text id
        follows in a fixed-length example (not after a chat in the model's own template,
        which ends each turn itself: the model sees its chats exactly as it was trained)."""
        if self.plan.chat is not None:
            return self.model_chats(docs, self.plan.chat, loss_on)
        pieces = [segments(d, self.plan.template, loss_on) for d in docs]
        out = []
        for doc_pieces, piece_ids in zip(pieces, self.encode_pieces(pieces), strict=True):
            ids: list[int] = []
            weights: list[bool] = []
            for (_, learn, _), piece in zip(doc_pieces, piece_ids, strict=True):
                ids += piece
                weights += [learn] * len(piece)
            out.append((ids, weights, True))
        return out

    def model_chats(
        self, docs: list[Document], template: ModelTemplate, loss_on: str
    ) -> list[tuple[list[int], list[bool], bool]]:
        """`documents` for the model's template: a chat is its rendered text encoded whole (the
        ids transformers' apply_chat_template gives), a token learned when it overlaps an
        assistant span; plain text is encoded as text."""
        chats = [template.learned_spans(d, loss_on) for d in docs if not isinstance(d, str)]
        encoded = iter(self.tokenizer.encode_markup_offsets([text for text, _ in chats]))
        texts = iter(self.tokenizer.encode_batch([d for d in docs if isinstance(d, str)]))
        spans = iter(chats)
        out = []
        for doc in docs:
            if isinstance(doc, str):
                ids = next(texts)
                out.append((ids, [True] * len(ids), True))
            else:
                ids, offsets = next(encoded)
                out.append((ids, learned_flags(offsets, next(spans)[1]), False))
        return out

    def blockwise(
        self, docs: list[Document]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One fixed-length example per document: (real token counts, truncated, learns nothing
        only because truncation cut off every learned token, arrays)."""
        plan, seq_len = self.plan, int(self.plan.seq_len or 0)
        tokens = np.empty((len(docs), seq_len + 1), dtype=self.dtype)
        masks = np.empty((len(docs), seq_len), dtype=np.uint8)
        lengths = np.empty(len(docs), dtype=np.int64)
        truncated = np.zeros(len(docs), dtype=bool)
        cut_off = np.zeros(len(docs), dtype=bool)
        for row, (ids, weights, end) in enumerate(self.documents(docs, plan.loss_on)):
            if end:  # learned as the piece before it is
                ids = [*ids, self.tokenizer.eot_id]
                weights = [*weights, weights[-1] if weights else True]
            tokens[row], masks[row], lengths[row], truncated[row] = example(
                ids, weights, seq_len, self.tokenizer.eot_id, plan.padding
            )
            # the first token is never learned (nothing precedes it)
            cut_off[row] = truncated[row] and any(weights[1:]) and not masks[row].any()
        return (
            lengths,
            truncated,
            cut_off,
            {"tokens": tokens, "loss_mask": masks, "lengths": lengths.astype(np.int32)},
        )


def encode_pieces(
    tokenizer: Tokenizer, pieces: list[list[tuple[str, bool, bool]]]
) -> list[list[list[int]]]:
    """The ids of every piece of every document (see `segments`), markup parsed apart."""
    flat = [piece for doc in pieces for piece in doc]
    text = iter(tokenizer.encode_batch([t for t, _, m in flat if not m]))
    markup = iter(tokenizer.encode_markup_batch([t for t, _, m in flat if m]))
    return [[next(markup) if m else next(text) for _, _, m in doc] for doc in pieces]


def _jax_started() -> bool:
    """Whether JAX runs its thread pools in this process (the Python API after training, say):
    a fork of it is unsafe, as a lock one of them held at the fork stays held in the child."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bridge is not None and bridge.backends_are_initialized()


def _start_worker(encoder: Encoder) -> None:
    global _WORKER_ENCODER
    # Out of the job's process group, so that Ctrl-C or a `kill -TERM -PGID` reaches only the
    # parent, which stops at a commit: a worker killed while sending a batch back would leave
    # the pool waiting for the rest of it. A worker still dies with the parent, however it dies.
    os.setpgid(0, 0)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    encoder.tokenizer.use_one_thread()  # the processes are the parallelism now
    _WORKER_ENCODER = encoder


def _encode_in_worker(batch: list[Document]) -> Encoded:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER.encode(batch)


class EncodeWorkers:
    """Encodes batches on every core and hands them back in input order.

    On Linux: one forked worker process per core, each encoding single-threaded, so that the
    conversion of ids to arrays (Python, under a lock per process) runs in parallel too. Elsewhere,
    or once JAX has started (no safe fork): threads calling the tokenizer's own multi-threaded
    batch encode.
    Enter it before starting any other thread: forking a process that runs threads is unsafe.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.workers = usable_cores()
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> EncodeWorkers:
        if self.workers > 1 and sys.platform == "linux" and not _jax_started():
            import multiprocessing

            # Children must not inherit a thread pool that forking broke; the parent's own
            # setting comes back once they exist.
            previous = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            gc.freeze()  # children's collections then skip, and so do not copy, the parent's heap
            try:
                self.pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("fork"),
                    initializer=_start_worker,
                    initargs=(self.encoder,),
                )
                self.pool.submit(int).result()  # forks every worker now, before other threads
            finally:
                gc.unfreeze()
                if previous is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = previous
        return self

    def __exit__(self, *_: object) -> None:
        if self.pool is not None:
            # at most 2 * workers batches are in flight; a dead worker only breaks the pool
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, batches: Iterator[list[Document]]) -> Iterator[Encoded]:
        if self.pool is None:
            yield from ordered_map(self.encoder.encode, batches, BATCHES_IN_FLIGHT)
            return
        pending: deque[Future[Encoded]] = deque()
        try:
            for batch in batches:
                pending.append(self.pool.submit(_encode_in_worker, batch))
                if len(pending) > 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise UserError(
                "a tokenize worker process died (out of memory, or killed); run the job again "
                "to resume from its last commit"
            ) from None
