"""KV-cache generation: the cached decode loop produces what full recomputation produces."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from theseus.errors import UserError
from theseus.inference import generate, sample_logits
from theseus.model.models import GPT2, LLAMA

from .tiny import tiny

# each test compiles generation loops of tiny models (2 to 13 s each)
pytestmark = pytest.mark.slow

V = 64
PROMPTS = [[5, 9, 2, 33, 7, 1, 40], [3], [11, 12, 13, 14]]


def small(cls, **overrides):
    return tiny(cls, V, seed=1, **overrides)


def recompute(model, prompts, max_new, *, seed=0, **sampling):
    """Reference without a cache: every new token runs the whole sequence through the model.

    Rows sit left-aligned in a fixed-width buffer (causal attention makes the padding on the
    right irrelevant) and draw with the key schedule of `generate`: one split per token.
    """
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    pick = jax.jit(partial(sample_logits, **sampling))
    buffer = np.zeros((len(prompts), model.config.block_size), np.int32)
    lengths = np.array([len(p) for p in prompts])
    for row, prompt in enumerate(prompts):
        buffer[row, : len(prompt)] = prompt
    key = jax.random.key(seed)
    for _ in range(max_new):
        logits = forward(state, buffer)[np.arange(len(prompts)), lengths - 1]
        key, sub = jax.random.split(key)
        buffer[np.arange(len(prompts)), lengths] = np.asarray(pick(logits, sub))
        lengths += 1
    return [buffer[row, len(p) : len(p) + max_new].tolist() for row, p in enumerate(prompts)]


@pytest.mark.parametrize(
    ("cls", "sampling"),
    [
        (GPT2, {"temperature": 0.0}),
        (LLAMA, {"temperature": 1.3, "top_k": 20, "top_p": 0.9}),
    ],
    ids=["gpt-greedy", "llama-sampled"],
)
def test_cached_decoding_equals_full_recompute(cls, sampling):
    model = small(cls, n_kv_heads=2) if cls is LLAMA else small(cls)
    cached = generate(model, PROMPTS, 8, seed=3, **sampling)
    assert cached == recompute(model, PROMPTS, 8, seed=3, **sampling)
    assert all(len(row) == 8 for row in cached)


def test_stops_at_end_of_text():
    model = small(GPT2)
    # sampled, so that a row holds several tokens whatever the random weights favour greedily
    free = generate(model, PROMPTS, 8, temperature=1.0, seed=0)
    row = free[0]
    k = next(i for i, t in enumerate(row) if t not in row[:i] and i >= 2)
    eot = row[k]
    stopped = generate(model, PROMPTS, 8, temperature=1.0, seed=0, eot_id=eot)
    for full, cut in zip(free, stopped, strict=True):
        assert cut == (full[: full.index(eot)] if eot in full else full)
    assert stopped[0] == row[:k]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = jax.random.normal(jax.random.key(0), (4, V))
    greedy = np.asarray(jnp.argmax(logits, -1))
    for seed in range(3):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(
            np.asarray(sample_logits(logits, key, temperature=2.0, top_k=1)), greedy
        )
        np.testing.assert_array_equal(
            np.asarray(sample_logits(logits, key, temperature=2.0, top_p=1e-6)), greedy
        )


def test_top_k_and_vocab_limit_restrict_the_choice():
    logits = jax.random.normal(jax.random.key(1), (256, V))
    allowed = np.asarray(jax.lax.top_k(logits, 5)[1])
    picks = np.asarray(sample_logits(logits, jax.random.key(2), temperature=5.0, top_k=5))
    assert all(p in a for p, a in zip(picks, allowed, strict=True))
    limited = np.asarray(sample_logits(logits, jax.random.key(3), temperature=5.0, vocab_limit=10))
    assert limited.max() < 10 and len(set(limited.tolist())) > 3


def test_the_last_new_token_may_sit_one_past_the_context():
    """The last new token is predicted at the context's last position and never fed back, so a
    learned-position model of context 32 continues 30 tokens by 3, and 32 tokens by 1."""
    model = small(GPT2)
    assert model.config.block_size == 32
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    prompt = np.asarray(jax.random.randint(jax.random.key(4), (30,), 0, V)).tolist()
    sequence = list(prompt)
    for _ in range(3):  # the last of these runs the model over all 32 positions
        sequence.append(int(jnp.argmax(forward(state, jnp.asarray([sequence]))[0, -1])))
    assert generate(model, [prompt], 3, temperature=0) == [sequence[30:]]
    assert generate(model, [sequence[:32]], 1, temperature=0) == [sequence[32:]]


def test_a_tiny_temperature_is_greedy():
    logits = jax.random.normal(jax.random.key(5), (64, V)) * 10
    greedy = np.asarray(jnp.argmax(logits[:, : V - 8], -1))
    for temperature in (1e-30, 1e-45):
        picks = sample_logits(logits, jax.random.key(6), temperature=temperature, vocab_limit=V - 8)
        np.testing.assert_array_equal(np.asarray(picks), greedy)


def test_bad_requests_are_user_errors():
    model = small(GPT2)
    with pytest.raises(UserError, match="context of 32; with it max_new can be at most 3,"):
        generate(model, [[1] * 30], 5)
    generate(model, [[1] * 30], 3)  # the most it said
    # a prompt longer than the context leaves no max_new that works: the fix is a shorter prompt
    with pytest.raises(
        UserError, match=r"longest prompt \(33 tokens\) is longer .* at most 32 tokens"
    ):
        generate(model, [[1] * 33, [1]], 1)
    for temperature in (float("inf"), float("nan"), -1.0):
        with pytest.raises(UserError, match="finite temperature"):
            generate(model, [[1]], 1, temperature=temperature)
    for seed in (-1, 2**32, 2**64):
        with pytest.raises(UserError, match="seed must be between 0 and 4294967295"):
            generate(model, [[1]], 1, seed=seed)
    with pytest.raises(UserError, match="at least one token"):
        generate(model, [[]], 5)
