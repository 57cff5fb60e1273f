"""Many scoring and greedy-generation requests through a model in a few static shapes.

Evaluations send thousands of requests of every length. Each call here runs on `rows` rows (the
batch, rounded up to the devices' batch shards) of a length from a short ladder, so a model
compiles once per rung rather than once per request; rows are sorted by length so that a batch
pads little. The rows are split over the devices the weights live on (a training run's mesh),
or over every local device when the weights sit on one.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from theseus.errors import UserError
from theseus.evaluation.scoring import Scorer
from theseus.evaluation.shapes import rung, widths
from theseus.parallel.mesh import BATCH_AXES, Layout
from theseus.parallel.rules import variable_shardings

DECODE_STEPS = 16  # greedy tokens per decode call: stop sequences are checked in between
_IN_FLIGHT = 4  # scoring batches dispatched ahead of the one being read back


class Engine:
    """Scores and greedily continues token rows with the weights a `Scorer` holds (it follows
    `Scorer.use`, so a training run's evaluations reuse the compiled programs)."""

    def __init__(self, scorer: Scorer, vocab_limit: int | None = None) -> None:
        self.scorer = scorer
        self.max_length = scorer.seq_len
        self.vocab_limit = vocab_limit
        graphdef = scorer.graphdef
        self._placed: tuple[Any, Any] | None = None  # (state as given, state on the mesh)
        # a model with a KV cache: continuations can share their context's pass
        self.cached = hasattr(nnx.merge(graphdef, scorer.state), "empty_cache")
        self.mesh = _mesh_of(scorer.state)
        shards = math.prod(self.mesh.shape[a] for a in BATCH_AXES)
        self.rows = -(-scorer.batch_size // shards) * shards

        @jax.jit
        def score(state: Any, inputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, ...]:
            logits = nnx.merge(graphdef, state)(inputs).astype(jnp.float32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
            return picked, jnp.argmax(logits, axis=-1) == targets

        self._score = score
        self._prefill = jax.jit(partial(_prefill, graphdef), static_argnames=("cache_len", "limit"))
        self._decode = jax.jit(
            partial(_decode, graphdef), static_argnames=("steps", "limit"), donate_argnums=(3,)
        )
        self._continue = jax.jit(partial(_continue, graphdef), donate_argnums=(1,))
        # the padded lengths compiled so far, by program (and its other static sizes)
        self._compiled: dict[tuple[Any, ...], set[int]] = {}

    def _state(self) -> Any:
        """The scorer's current weights, on the mesh (placed once per new set of weights)."""
        state = self.scorer.state
        if self._placed is None or self._placed[0] is not state:
            self._placed = (state, jax.device_put(state, variable_shardings(state, self.mesh)))
        return self._placed[1]

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
        shared: dict[tuple[int, ...], list[int]] = {}
        alone: list[int] = []
        for i, (context, continuation) in enumerate(pairs):
            whole = len(context) + len(continuation) <= self.max_length + 1
            if whole and self.cached:
                shared.setdefault(tuple(context), []).append(i)
            else:
                alone.append(i)
        for members in [m for m in shared.values() if len(m) == 1]:
            alone += members
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        rows = [(list(pairs[i][0]) + list(pairs[i][1]))[-(self.max_length + 1) :] for i in alone]
        counts = [len(pairs[i][1]) for i in alone]
        for i, result in zip(alone, self._score_rows(rows, counts), strict=True):
            results[i] = result
        groups = [(list(c), m) for c, m in shared.items() if len(m) > 1]
        self._score_shared(groups, pairs, results)
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
        for chunk, width in zip(
            chunks, widths(needed, self._compiled.setdefault(("score",), set())), strict=True
        ):
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

    def _score_shared(
        self,
        groups: list[tuple[list[int], list[int]]],
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        results: list[tuple[float, bool]],
    ) -> None:
        """Contexts with several continuations (a multiple-choice question's): all but the
        context's last token fill a KV cache once; then each round feeds every row one of its
        continuations, after that last token, at the positions that follow. A round overwrites
        the cache slots of the round before, and attends only to slots up to its positions."""
        if not groups:
            return
        state = self._state()
        # longest continuations first: later rounds, of shorter ones, run narrower
        groups = [
            (context, sorted(members, key=lambda i: -len(pairs[i][1])))
            for context, members in sorted(groups, key=lambda g: -len(g[0]))
        ]
        batches = [groups[start : start + self.rows] for start in range(0, len(groups), self.rows)]
        longest = max(len(pairs[members[0]][1]) for _, members in groups)
        # one cache length for the whole call: programs by context length and by round width,
        # not by pairs of them
        cache_len = rung(len(groups[0][0]) - 1 or 1, self.max_length) + rung(
            longest, self.max_length
        )
        needed = [rung(len(batch[0][0]) - 1 or 1, self.max_length) for batch in batches]
        prefills = widths(needed, self._compiled.setdefault(("prefill", cache_len), set()))
        rounds = [
            [
                rung(max(len(pairs[m[k]][1]) for _, m in batch if k < len(m)), self.max_length)
                for k in range(max(len(m) for _, m in batch))
            ]
            for batch in batches
        ]
        flat = widths(
            [w for steps in rounds for w in steps],
            self._compiled.setdefault(("continue", cache_len), set()),
        )
        pending: list[tuple[list[tuple[list[int], list[int]]], list[Any]]] = []
        for batch, width, steps in zip(batches, prefills, rounds, strict=True):
            steps, flat = flat[: len(steps)], flat[len(steps) :]
            outs = self._shared_batch(state, batch, pairs, width, cache_len, steps)
            pending.append((batch, outs))
            if len(pending) > 1:  # the host packs the next batch while this one runs
                self._collect_shared(*pending.pop(0), pairs, results)
        for batch, outs in pending:
            self._collect_shared(batch, outs, pairs, results)

    def _shared_batch(
        self,
        state: Any,
        batch: list[tuple[list[int], list[int]]],
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        width: int,
        cache_len: int,
        rounds: list[int],
    ) -> list[Any]:
        """Dispatch one batch of contexts, then its rounds of continuations (each padded to its
        width in `rounds`); returns each round's (log-probabilities, greedy flags), still on
        the devices."""
        tokens = np.zeros((self.rows, width), np.int32)
        lengths = np.ones((self.rows,), np.int32)
        starts = np.zeros((self.rows, 1), np.int32)
        for slot, (context, _) in enumerate(batch):
            tokens[slot, : len(context) - 1] = context[:-1]
            lengths[slot] = max(len(context) - 1, 1)
            starts[slot, 0] = len(context) - 1
        _, cache = self._prefill(
            state,
            self._put(tokens),
            self._put(lengths),
            cache_len=cache_len,
            limit=self.vocab_limit,
        )
        outs = []
        for round_, steps in enumerate(rounds):
            inputs = np.zeros((self.rows, steps), np.int32)
            targets = np.zeros((self.rows, steps), np.int32)
            for slot, (context, members) in enumerate(batch):
                if round_ < len(members):
                    continuation = list(pairs[members[round_]][1])
                    inputs[slot, : len(continuation)] = [context[-1], *continuation[:-1]]
                    targets[slot, : len(continuation)] = continuation
            # padding past a row's continuation stays inside the model's positions: a learned
            # embedding looked up past its end is NaN, which masked cache slots still spread
            at = np.minimum(starts + np.arange(steps), self.max_length - 1)
            picked, greedy, cache = self._continue(
                state, cache, self._put(inputs), self._put(at), self._put(targets)
            )
            outs.append((picked, greedy))
        return outs

    def _collect_shared(
        self,
        batch: list[tuple[list[int], list[int]]],
        outs: list[Any],
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        results: list[tuple[float, bool]],
    ) -> None:
        for round_, (picked, greedy) in enumerate(outs):
            picked, greedy = np.asarray(picked), np.asarray(greedy)
            for slot, (_, members) in enumerate(batch):
                if round_ < len(members):
                    n = len(pairs[members[round_]][1])
                    results[members[round_]] = _summed(picked[slot, :n], greedy[slot, :n])

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        eot_id: int | None,
        stopped: Callable[[list[int]], bool] | None = None,
    ) -> list[list[int]]:
        """Each prompt's greedy continuation, at most `max_new` tokens, ending before `eot_id`;
        `stopped(tokens)` says a row may end early (its stop sequence is in the text)."""
        if max_new < 1:
            raise UserError(f"max_new must be >= 1, got {max_new}")
        state = self._state()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), self.rows):
            chunk = order[start : start + self.rows]
            batch = [list(prompts[i]) for i in chunk]
            for i, row in zip(
                chunk, self._greedy_batch(state, batch, max_new, eot_id, stopped), strict=True
            ):
                results[i] = row
        return results

    def _greedy_batch(
        self,
        state: Any,
        prompts: list[list[int]],
        max_new: int,
        eot_id: int | None,
        stopped: Callable[[list[int]], bool] | None,
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
        last, cache = self._prefill(
            state,
            self._put(tokens),
            self._put(lengths),
            cache_len=cache_len,
            limit=self.vocab_limit,
        )
        out = [[int(t)] for t in np.asarray(last)[: len(prompts)]]
        positions = self._put(lengths)
        done = [_finished(row, max_new, eot_id, stopped) for row in out]
        while not all(done):
            block, last, positions, cache = self._decode(
                state, last, positions, cache, steps=DECODE_STEPS, limit=self.vocab_limit
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


def _pick(logits: jax.Array, limit: int | None) -> jax.Array:
    """The most likely id of each row of [B, V] logits, among the first `limit` ids."""
    logits = logits.astype(jnp.float32)
    if limit is not None and limit < logits.shape[-1]:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < limit, logits, -jnp.inf)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _prefill(
    graphdef: Any,
    state: Any,
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    cache_len: int,
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
    return _pick(logits[jnp.arange(tokens.shape[0]), lengths - 1], limit), cache


def _continue(
    graphdef: Any,
    state: Any,
    cache: Any,
    inputs: jax.Array,
    positions: jax.Array,
    targets: jax.Array,
) -> tuple[jax.Array, jax.Array, Any]:
    """Log-probabilities of `targets` (and whether each is the likeliest id) after `inputs` fed
    at `positions` into the cache, which comes back with them written."""
    cache = list(cache)  # filled in place by the model
    logits = nnx.merge(graphdef, state)(inputs, positions, cache=cache).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1) == targets, cache


def _decode(
    graphdef: Any,
    state: Any,
    last: jax.Array,
    positions: jax.Array,
    cache: Any,
    *,
    steps: int,
    limit: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """`steps` greedy tokens per row after `last`, which sits at `positions`."""
    model = nnx.merge(graphdef, state)

    def step(carry: tuple, _: None) -> tuple[tuple, jax.Array]:
        last, positions, cache = carry
        cache = list(cache)  # filled in place by the model: this step's copy
        logits = model(last[:, None], positions[:, None], cache=cache)
        token = _pick(logits[:, 0], limit)
        return (token, positions + 1, cache), token

    (last, positions, cache), block = jax.lax.scan(
        step, (last, positions, cache), None, length=steps
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
