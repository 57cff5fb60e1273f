"""Ids that only pad the vocabulary (for speed) are no outcome of the model: no probability in
training, validation, scoring or sampling (all of which take the model's logits), no gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from theseus.model.kernels import cross_entropy
from theseus.model.models import GPT2, LLAMA

from .tiny import tiny

# compiles and differentiates whole models (3 to 15 s each)
pytestmark = pytest.mark.slow

PADDED, USED = 96, 80


@pytest.mark.parametrize("cls", [GPT2, LLAMA])
def test_padding_ids_get_no_probability_and_no_gradient(cls):
    model = tiny(cls, PADDED, vocab_used=USED)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, USED, dtype=jnp.int32)
    logits = model(tokens)
    assert bool(jnp.all(logits[..., USED:] == -jnp.inf))
    assert bool(jnp.isfinite(logits[..., :USED]).all())
    np.testing.assert_allclose(jax.nn.softmax(logits, -1).sum(-1), 1.0, rtol=1e-6)

    # the same model over exactly its USED ids gives the same log-probabilities
    unpadded = tiny(cls, USED)
    params = nnx.state(model, nnx.Param)
    own = nnx.state(unpadded, nnx.Param)
    own["embed"]["weight"].set_value(params["embed"]["weight"][...][:USED])
    if cls is LLAMA:  # untied head
        own["lm_head"]["kernel"].set_value(params["lm_head"]["kernel"][...][:, :USED])
    for name in ("blocks", "final_norm", "position_embed"):
        if name in own:
            nnx.update(unpadded, nnx.State({name: params[name]}))
    np.testing.assert_allclose(
        jax.nn.log_softmax(logits, -1)[..., :USED],
        jax.nn.log_softmax(unpadded(tokens), -1),
        atol=1e-5,
    )

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        out = nnx.merge(graphdef, params, rest)(tokens[:, :-1])
        total, _ = cross_entropy(out, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))
        return total

    grads = jax.grad(loss)(params)
    head = grads["embed"]["weight"] if cls is GPT2 else grads["lm_head"]["kernel"].T
    assert bool(jnp.all(head[USED:] == 0)) and bool(jnp.any(head[:USED] != 0))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
