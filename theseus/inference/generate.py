"""Autoregressive generation with a KV cache: the prompts fill it, then one jitted decode loop.

Prompts of different lengths share a batch: each row keeps its own position, writes its next
key/value into its own cache slot, and attends only to slots up to that position, so a row's
logits are exactly those it would have alone (its random draws depend on its place in the batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from theseus.errors import UserError

NO_TOKEN = -1
MAX_SEED = 2**32 - 1  # the range of training.seed and of `theseus sample --seed`


def sample_logits(
    logits: jax.Array,
    key: jax.Array,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_limit: int | None = None,
) -> jax.Array:
    """Pick one token per row from logits [B, V]: greedy when temperature is 0, else sample
    from the temperature-scaled distribution restricted to the top-k ids and the top-p mass."""
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        # a padded vocabulary has ids no tokenizer can decode
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # shifted so the likeliest id is at 0: a tiny temperature can only push the others to -inf,
    # never several of them to +inf
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely ids
        cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "cache_len",
        "max_new",
        "temperature",
        "top_k",
        "top_p",
        "stops",
        "vocab_limit",
    ),
)
def _generate(
    graphdef: Any,
    state: Any,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    cache_len: int,
    max_new: int,
    temperature: float,
    top_k: int,
    top_p: float,
    stops: tuple[int, ...],
    vocab_limit: int | None,
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    pick = partial(
        sample_logits, temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit
    )
    batch = tokens.shape[0]
    cache = model.empty_cache(batch, cache_len)
    logits = model(tokens, cache=cache)
    key, sub = jax.random.split(key)
    first = pick(logits[jnp.arange(batch), lengths - 1], sub)
    out = jnp.full((batch, max_new), NO_TOKEN, jnp.int32).at[:, 0].set(first)
    stop_ids = jnp.asarray(stops, jnp.int32)
    done = jnp.isin(first, stop_ids) if stops else jnp.zeros((batch,), bool)

    def more(carry: tuple) -> jax.Array:
        i, _, _, _, done, _ = carry
        return (i < max_new) & ~jnp.all(done)

    def step(carry: tuple) -> tuple:
        i, last, cache, out, done, key = carry
        positions = (lengths + i - 1)[:, None]
        cache = list(cache)  # filled in place by the model: this step's copy
        logits = model(last[:, None], positions, cache=cache)
        key, sub = jax.random.split(key)
        token = pick(logits[:, 0], sub)
        out = out.at[:, i].set(jnp.where(done, NO_TOKEN, token))
        if stops:
            done = done | jnp.isin(token, stop_ids)
        return i + 1, token, cache, out, done, key

    carry = (jnp.int32(1), first, cache, out, done, key)
    return jax.lax.while_loop(more, step, carry)[3]


def generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    max_new: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eot_id: int | None = None,
    vocab_limit: int | None = None,
    stop_ids: Sequence[int] = (),
    pad_to: int = 1,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to `max_new` tokens.

    A row stops early at `eot_id` or any of `stop_ids` (a chat's end-of-turn; not included in
    its output). `vocab_limit` keeps sampling to ids below it (the tokenizer's vocabulary when
    the model's is padded). `pad_to` rounds the prompt width up to a multiple of it, so that
    prompts of nearby lengths (a chat's turns) reuse one compiled loop.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError(
            "every prompt needs at least one token (an empty prompt can start with the end-of-text token)"
        )
    if max_new < 1:
        raise UserError(f"max_new must be >= 1, got {max_new}")
    if not 0 <= temperature < math.inf or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise UserError(
            f"need a finite temperature >= 0, 0 < top_p <= 1, top_k >= 0; "
            f"got {temperature}, {top_p}, {top_k}"
        )
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    if not hasattr(model, "empty_cache"):
        raise UserError(
            f"{type(model).__name__} cannot generate with a KV cache: it needs empty_cache() and "
            "a cache= argument (subclass theseus.model.models.Transformer)"
        )
    lengths = np.array([len(p) for p in prompts], np.int32)
    width = int(lengths.max())
    block_size = model.config.block_size
    # the last new token is never fed back, so it may sit one past the last position
    if (
        getattr(model.config, "positions", "learned") == "learned"
        and width + max_new - 1 > block_size
    ):
        which = "the longest prompt" if len(prompts) > 1 else "the prompt"
        if width > block_size:
            raise UserError(
                f"{which} ({width} tokens) is longer than the model's context of {block_size}; "
                f"shorten it to at most {block_size} tokens"
            )
        raise UserError(
            f"{which} ({width} tokens) + max_new ({max_new}) runs past the model's context of "
            f"{block_size}; with it max_new can be at most {block_size - width + 1}, or shorten it"
        )
    # the padding is never attended to: a row's decoding overwrites the slots past its prompt
    padded = -(-width // max(pad_to, 1)) * max(pad_to, 1)
    if getattr(model.config, "positions", "learned") == "learned":
        padded = min(padded, block_size - max_new + 1)
    width = max(width, padded)
    # sorted: one compiled loop per set of stops, whatever their order
    stops = tuple(
        sorted({int(t) for t in stop_ids} | ({int(eot_id)} if eot_id is not None else set()))
    )
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    graphdef, state = nnx.split(model)
    out = _generate(
        graphdef,
        state,
        jnp.asarray(tokens),
        jnp.asarray(lengths),
        jax.random.key(seed),
        cache_len=width + max_new - 1,
        max_new=int(max_new),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        stops=stops,
        vocab_limit=vocab_limit,
    )
    results = []
    for row in np.asarray(out).tolist():
        kept = []
        for token in row:
            if token == NO_TOKEN or token in stops:
                break
            kept.append(token)
        results.append(kept)
    return results


def sample(
    model: nnx.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.95,
    seed: int = 0,
) -> list[str]:
    """Text in, text out: each prompt's continuation (without the prompt), stopping at end-of-text."""
    encoded = [tokenizer.encode(text) or [tokenizer.eot_id] for text in prompts]
    ids = generate(
        model,
        encoded,
        max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eot_id=tokenizer.eot_id,
        vocab_limit=tokenizer.vocab_size,
    )
    return [tokenizer.decode(row) for row in ids]
