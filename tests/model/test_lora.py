"""LoRA adapters on the model: a fresh adapter leaves the model as it was, merging folds the
adapters into the weights exactly, and a target the model lacks is refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from theseus.errors import UserError
from theseus.model import lora
from theseus.model.models import GPT2, LLAMA, Transformer


def tiny(base, **changes) -> Transformer:
    config = dataclasses.replace(
        base,
        n_layers=2,
        d_model=64,
        n_heads=4,
        vocab_size=128,
        block_size=32,
        dtype="float32",
        **changes,
    )
    return Transformer(config, rngs=nnx.Rngs(0))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 12)), jnp.int32)
CASES = [
    (GPT2, {}, ["q", "k", "v", "o", "fc", "down"]),
    (LLAMA, {"n_kv_heads": 2}, ["q", "v", "o", "gate", "up", "down"]),
]


def perturb(model: Transformer) -> None:
    """Random `b`s: a fresh adapter adds zero, which would hide a wrong contraction."""
    for i, (_, variable) in enumerate(nnx.to_flat_state(nnx.state(model, lora.Adapted))):
        key = jax.random.key(i)
        variable.set_value(0.05 * jax.random.normal(key, variable.shape, variable.dtype))


@pytest.mark.parametrize(("base", "changes", "targets"), CASES)
def test_fresh_adapters_leave_the_model_as_it_was(base, changes, targets):
    model = tiny(base, **changes)
    before = model(TOKENS)
    lora.attach(model, lora.LoRAConfig(rank=4, targets=targets), nnx.Rngs(1))
    np.testing.assert_array_equal(model(TOKENS), before)
    assert lora.adapted_parameters(model) > 0


@pytest.mark.parametrize(("base", "changes", "targets"), CASES)
def test_merging_folds_each_adapter_into_its_weight(base, changes, targets):
    model = tiny(base, **changes)
    lora.attach(model, lora.LoRAConfig(rank=4, alpha=8, targets=targets), nnx.Rngs(1))
    perturb(model)
    adapted = model(TOKENS)
    merged = lora.merge(model)
    assert lora.adapted_parameters(merged) == 0
    np.testing.assert_allclose(merged(TOKENS), adapted, atol=2e-5)
    # the adapters changed the function: merging has something to fold
    assert float(jnp.abs(adapted - tiny(base, **changes)(TOKENS)).max()) > 1e-3


def test_adapters_are_the_only_adapted_state_and_get_gradients():
    model = tiny(LLAMA, n_kv_heads=2)
    lora.attach(model, lora.LoRAConfig(rank=2, targets=["q", "down"]), nnx.Rngs(1))
    adapters = nnx.state(model, lora.Adapted)
    names = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(adapters)}
    assert names == {
        f"blocks.{i}.{where}.{ab}"
        for i in range(2)
        for where in ("attn.q_lora", "mlp.down.lora")
        for ab in "ab"
    }
    graphdef, adapters, frozen = nnx.split(model, lora.Adapted, ...)

    def loss(adapters):
        return jnp.mean(jnp.square(nnx.merge(graphdef, adapters, frozen)(TOKENS)))

    grads = jax.grad(loss)(adapters)
    # b starts at zero, so only b's gradient is non-zero at the start
    for path, g in nnx.to_flat_state(grads):
        assert float(jnp.abs(g[...]).max()) > 0 if path[-1] == "b" else True


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["gate"], "gate matches no layer of this model (its projections: q, k, v, o, fc, down)"),
        (["attn"], "attn is no projection"),
    ],
)
def test_a_target_the_model_lacks_is_refused(targets, message):
    model = tiny(GPT2)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lora.attach(model, lora.LoRAConfig(rank=4, targets=targets), nnx.Rngs(1))
    assert lora.adapted_parameters(model) == 0
