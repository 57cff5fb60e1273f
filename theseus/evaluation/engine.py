"""Many scoring and greedy-generation requests through a model in a few static shapes.

Evaluations send thousands of requests of every length. Scoring packs them into rows of one
width (theseus.evaluation.packing: a question's answers share their context's pass), so an
evaluation compiles its scoring once. Greedy generation runs `rows` rows (the batch, rounded up
to the devices' batch shards) of a length from a short ladder, so a model compiles once per
rung rather than once per prompt. The rows are split over the devices the weights live on (a
training run's mesh), or over every local device when the weights sit on one.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from theseus.errors import UserError
from theseus.evaluation.packing import (
    Segment,
    arrays,
    batches,
    pack,
    row_width,
    segments,
    visible,
)
from theseus.evaluation.scoring import Scorer
from theseus.evaluation.shapes import rung, widths
from theseus.inference.generate import sample_logits
from theseus.parallel.mesh import BATCH_AXES, Layout
from theseus.parallel.rules import variable_shardings

DECODE_STEPS = 16  # greedy tokens per decode call: stop sequences are checked in between
# on a CPU, past about 2 MB of residual stream a device, a scoring call's activations leave the
# cores' caches and every token costs about a third more; calls of half that cost no more a
# row than larger ones below it (bench/FINDINGS.md)
CPU_CALL_BYTES = 1 << 20
_IN_FLIGHT = 4  # scoring batches dispatched ahead of the one being read back
PACKED = ("tokens", "positions", "targets", "segments", "branches")  # the packed program's inputs


@dataclass(frozen=True)
class Sampling:
    """How generated tokens are chosen: greedily (temperature 0), else drawn from the
    temperature-scaled distribution cut to the top-k ids (0: all) and the top-p mass."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @property
    def pick(self) -> tuple[float, int, float]:
        """What the compiled programs depend on (not the seed)."""
        return (self.temperature, self.top_k, self.top_p)


GREEDY = Sampling()


class Engine:
    """Scores and greedily continues token rows with the weights a `Scorer` holds (it follows
    `Scorer.use`, so a training run's evaluations reuse the compiled programs)."""

    def __init__(self, scorer: Scorer, vocab_limit: int | None = None) -> None:
        self.scorer = scorer
        self.max_length = scorer.seq_len
        self.vocab_limit = vocab_limit
        graphdef = scorer.graphdef
        self._placed: tuple[Any, Any] | None = None  # (state as given, state on the mesh)
        # a model that takes a mask scores requests packed, a question's answers sharing its
        # context's pass
        model = nnx.merge(graphdef, scorer.state)
        self.packs = "mask" in inspect.signature(type(model).__call__).parameters
        # a token's attention against its matmuls: ~4 width flops per key against ~24 width^2
        self.d_model = getattr(getattr(model, "config", None), "d_model", 512)
        self.attention_scale = 6.0 * self.d_model
        self.mesh = _mesh_of(scorer.state)
        self.shards = math.prod(self.mesh.shape[a] for a in BATCH_AXES)
        self.rows = -(-scorer.batch_size // self.shards) * self.shards
        self.on_cpu = self.mesh.devices.flat[0].platform == "cpu"

        @jax.jit
        def score(state: Any, inputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, ...]:
            logits = nnx.merge(graphdef, state)(inputs).astype(jnp.float32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
            return picked, jnp.argmax(logits, axis=-1) == targets

        @jax.jit
        def packed(state: Any, *given: jax.Array) -> tuple[jax.Array, ...]:
            tokens, positions, targets, segments, branches = given
            model = nnx.merge(graphdef, state)
            logits = model(tokens, positions, mask=visible(segments, branches))
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
            return picked, jnp.argmax(logits, axis=-1) == targets

        self._score, self._packed = score, packed
        self._prefill = jax.jit(
            partial(_prefill, graphdef), static_argnames=("cache_len", "pick", "limit")
        )
        self._decode = jax.jit(
            partial(_decode, graphdef),
            static_argnames=("steps", "pick", "limit"),
            donate_argnums=(3,),
        )
        # the padded lengths the whole-row program has compiled so far
        self._row_widths: set[int] = set()

    def _state(self) -> Any:
        """The scorer's current weights, on the mesh (placed once per new set of weights)."""
        state = self.scorer.state
        if self._placed is None or self._placed[0] is not state:
            self._placed = (state, jax.device_put(state, variable_shardings(state, self.mesh)))
        return self._placed[1]

    def _call_rows(self, width: int) -> int:
        """Packed rows of `width` a scoring call takes: the batch, fewer on a CPU where the
        batch's activations would not stay in cache (float32, the residual stream's width)."""
        if not self.on_cpu:
            return self.rows
        fits = CPU_CALL_BYTES // (width * self.d_model * 4)
        return min(self.rows, max(1, fits) * self.shards)

    def _put(self, array: np.ndarray) -> jax.Array:
        spec = P(BATCH_AXES, *([None] * (array.ndim - 1)))
        return jax.device_put(array, NamedSharding(self.mesh, spec))

    def score(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> list[tuple[float, bool]]:
        """For each (context, continuation) of tokens: log P(continuation | context), and whether
        each continuation token is the model's most likely next one. A context cut from the
        left fits the window; continuations of one context share its pass through the model.

        A request asked twice is scored once: equal choices of a question tie exactly, as they
        do in the harness's own backend, and the first of them wins."""
        unique: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        for context, continuation in pairs:
            unique.setdefault((tuple(context), tuple(continuation)), len(unique))
        if len(unique) < len(pairs):
            scored = self.score(list(unique))
            return [scored[unique[(tuple(c), tuple(k))]] for c, k in pairs]
        if not pairs:
            return []
        if not self.packs:  # a model that takes no mask: each request a row of its own
            rows = [(list(c) + list(k))[-(self.max_length + 1) :] for c, k in pairs]
            return self._score_rows(rows, [len(k) for _, k in pairs])
        return self._score_packed(segments(pairs, self.max_length), len(pairs))

    def _score_packed(self, parts: list[Segment], n: int) -> list[tuple[float, bool]]:
        """The requests the segments score, in rows packed to one width."""
        state = self._state()
        width = row_width(parts, self._call_rows, self.shards, self.attention_scale)
        rows = pack(parts, width)
        _, each = batches(len(rows), self._call_rows(width), self.shards)
        results: list[tuple[float, bool]] = [(0.0, False)] * n
        pending: list[tuple[list[list[Segment]], Any]] = []

        def collect(batch: list[list[Segment]], out: Any) -> None:
            picked, greedy = (np.asarray(x) for x in out)
            for r, row in enumerate(batch):
                at = 0
                for part in row:
                    for i, slot, count in part.scored:
                        span = slice(at + slot, at + slot + count)
                        results[i] = _summed(picked[r, span], greedy[r, span])
                    at += len(part.tokens)

        for start in range(0, len(rows), each):
            batch = rows[start : start + each]
            given = arrays(batch, each, width)
            out = self._packed(state, *(self._put(given[k]) for k in PACKED))
            pending.append((batch, out))
            if len(pending) > _IN_FLIGHT:  # the host packs the next batch while this one runs
                collect(*pending.pop(0))
        for batch, out in pending:
            collect(batch, out)
        return results

    def _score_rows(self, rows: list[list[int]], counts: list[int]) -> list[tuple[float, bool]]:
        """Each row whole (at most max_length + 1 tokens), its last `count` tokens scored."""
        state = self._state()
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        pending: list[tuple[list[int], Any]] = []

        def collect(chunk: list[int], out: Any) -> None:
            picked, greedy = (np.asarray(x) for x in out)
            for slot, i in enumerate(chunk):
                end, n = len(rows[i]) - 1, counts[i]
                results[i] = _summed(picked[slot, end - n : end], greedy[slot, end - n : end])

        chunks = [order[start : start + self.rows] for start in range(0, len(order), self.rows)]
        needed = [rung(len(rows[chunk[0]]) - 1, self.max_length) for chunk in chunks]
        for chunk, width in zip(chunks, widths(needed, self._row_widths), strict=True):
            tokens = np.zeros((self.rows, width + 1), np.int32)
            for slot, i in enumerate(chunk):
                tokens[slot, : len(rows[i])] = rows[i]
            out = self._score(state, self._put(tokens[:, :-1]), self._put(tokens[:, 1:]))
            pending.append((chunk, out))
            if len(pending) > _IN_FLIGHT:  # the host packs the next batch while this one runs
                collect(*pending.pop(0))
        for chunk, out in pending:
            collect(chunk, out)
        return results

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        eot_id: int | None,
        stopped: Callable[[list[int]], bool] | None = None,
        sampling: Sampling = GREEDY,
    ) -> list[list[int]]:
        """Each prompt's continuation, at most `max_new` tokens, ending before `eot_id`;
        `stopped(tokens)` says a row may end early (its stop sequence is in the text). Greedy,
        or drawn as `sampling` says (the same seed and batch give the same draws)."""
        if max_new < 1:
            raise UserError(f"max_new must be >= 1, got {max_new}")
        state = self._state()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), self.rows):
            chunk = order[start : start + self.rows]
            batch = [list(prompts[i]) for i in chunk]
            key = jax.random.fold_in(jax.random.key(sampling.seed), start)
            for i, row in zip(
                chunk,
                self._generate_batch(state, batch, max_new, eot_id, stopped, sampling, key),
                strict=True,
            ):
                results[i] = row
        return results

    def _generate_batch(
        self,
        state: Any,
        prompts: list[list[int]],
        max_new: int,
        eot_id: int | None,
        stopped: Callable[[list[int]], bool] | None,
        sampling: Sampling,
        key: jax.Array,
    ) -> list[list[int]]:
        width = rung(max(len(p) for p in prompts), self.max_length)
        steps = -(-(max_new - 1) // DECODE_STEPS) * DECODE_STEPS
        tokens = np.zeros((self.rows, width), np.int32)
        lengths = np.ones((self.rows,), np.int32)  # rows past the prompts: one padding token
        for slot, prompt in enumerate(prompts):
            tokens[slot, : len(prompt)] = prompt
            lengths[slot] = len(prompt)
        # every decode step writes its own slot: none is ever clamped onto another
        cache_len = width + steps + 1
        pick = {"pick": sampling.pick, "limit": self.vocab_limit}
        last, cache = self._prefill(
            state, self._put(tokens), self._put(lengths), key, cache_len=cache_len, **pick
        )
        out = [[int(t)] for t in np.asarray(last)[: len(prompts)]]
        positions = self._put(lengths)
        done = [_finished(row, max_new, eot_id, stopped) for row in out]
        calls = 0
        while not all(done):
            calls += 1
            block, last, positions, cache = self._decode(
                state,
                last,
                positions,
                cache,
                jax.random.fold_in(key, calls),
                steps=DECODE_STEPS,
                **pick,
            )
            for slot, row in enumerate(np.asarray(block)[: len(prompts)].tolist()):
                if not done[slot]:
                    out[slot] += row
                    done[slot] = _finished(out[slot], max_new, eot_id, stopped)
        return [_trimmed(row, max_new, eot_id) for row in out]


def _finished(
    row: list[int], max_new: int, eot_id: int | None, stopped: Callable[[list[int]], bool] | None
) -> bool:
    if len(row) >= max_new or (eot_id is not None and eot_id in row):
        return True
    return stopped is not None and stopped(_trimmed(row, max_new, eot_id))


def _summed(picked: np.ndarray, greedy: np.ndarray) -> tuple[float, bool]:
    return float(picked.sum(dtype=np.float64)), bool(greedy.all())


def _trimmed(row: list[int], max_new: int, eot_id: int | None) -> list[int]:
    row = row[:max_new]
    return row[: row.index(eot_id)] if eot_id is not None and eot_id in row else row


def _choose(
    logits: jax.Array, key: jax.Array, pick: tuple[float, int, float], limit: int | None
) -> jax.Array:
    temperature, top_k, top_p = pick
    return sample_logits(
        logits, key, temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=limit
    )


def _prefill(
    graphdef: Any,
    state: Any,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    cache_len: int,
    pick: tuple[float, int, float],
    limit: int | None,
) -> tuple[jax.Array, Any]:
    """The prompts [B, W] (each row its `lengths` first tokens) into a fresh KV cache; returns
    each row's first new token and the cache."""
    model = nnx.merge(graphdef, state)
    # the prompts attend within their own width; the slots after it are only added
    cache = model.empty_cache(tokens.shape[0], tokens.shape[1])
    logits = model(tokens, cache=cache)
    room = ((0, 0), (0, cache_len - tokens.shape[1]), (0, 0), (0, 0))
    cache = [tuple(jnp.pad(part, room) for part in layer) for layer in cache]
    return _choose(logits[jnp.arange(tokens.shape[0]), lengths - 1], key, pick, limit), cache


def _decode(
    graphdef: Any,
    state: Any,
    last: jax.Array,
    positions: jax.Array,
    cache: Any,
    key: jax.Array,
    *,
    steps: int,
    pick: tuple[float, int, float],
    limit: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """`steps` tokens per row after `last`, which sits at `positions`."""
    model = nnx.merge(graphdef, state)

    def step(carry: tuple, step_key: jax.Array) -> tuple[tuple, jax.Array]:
        last, positions, cache = carry
        cache = list(cache)  # filled in place by the model: this step's copy
        logits = model(last[:, None], positions[:, None], cache=cache)
        token = _choose(logits[:, 0], step_key, pick, limit)
        return (token, positions + 1, cache), token

    (last, positions, cache), block = jax.lax.scan(
        step, (last, positions, cache), jax.random.split(key, steps)
    )
    return block.T, last, positions, cache


def _mesh_of(state: Any) -> Mesh:
    """The mesh the weights are laid out on; weights on one device spread over every local
    device (rows split among them, each holding a copy)."""
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    devices = jax.local_devices()
    return Layout.solve(len(devices)).mesh(devices)


_ENGINES: weakref.WeakKeyDictionary[Scorer, Engine] = weakref.WeakKeyDictionary()


def engine_for(scorer: Scorer, vocab_limit: int | None = None) -> Engine:
    """The engine of `scorer`, built once: evaluations that share a scorer share its programs."""
    engine = _ENGINES.get(scorer)
    if engine is None or engine.vocab_limit != vocab_limit:
        engine = _ENGINES[scorer] = Engine(scorer, vocab_limit)
    return engine
