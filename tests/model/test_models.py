"""Model layers and presets: shapes, causality, grouped-query attention, tying, FLOPs, sharding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals
from jax.sharding import PartitionSpec as P

from theseus.model.models import GPT2, LLAMA, Transformer
from theseus.parallel.mesh import Layout
from theseus.parallel.rules import RULES, spec_for, unsplit_axes, variable_shardings

from .tiny import tiny

V, T = 96, 12


def small(cls, **overrides):
    return tiny(cls, V, block_size=16, **overrides)


def tokens(seed=0, shape=(2, T)):
    return jax.random.randint(jax.random.key(seed), shape, 0, V, dtype=jnp.int32)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [GPT2, LLAMA])
def test_logits_shape_and_dtype(cls):
    model = small(cls, dtype="bfloat16")
    logits = model(tokens())
    assert logits.shape == (2, T, V)
    assert logits.dtype == jnp.bfloat16
    assert bool(jnp.isfinite(logits.astype(jnp.float32)).all())


@pytest.mark.slow
@pytest.mark.parametrize("cls", [GPT2, LLAMA])
def test_future_tokens_never_change_past_logits(cls):
    model = small(cls)
    x = tokens()
    changed = x.at[:, 7].set((x[:, 7] + 1) % V)
    a, b = model(x), model(changed)
    np.testing.assert_array_equal(np.asarray(a[:, :7]), np.asarray(b[:, :7]))
    assert not np.allclose(np.asarray(a[:, 7:]), np.asarray(b[:, 7:]))


@pytest.mark.slow
def test_grouped_query_attention_equals_repeated_kv_heads():
    """GQA with 2 key/value heads == full multi-head attention whose k/v heads are repeated."""
    gqa = small(LLAMA, n_heads=4, n_kv_heads=2)
    mha = small(LLAMA, n_heads=4, n_kv_heads=4)
    assert gqa.blocks[0].attn.k.shape == (32, 2, 8)
    x = tokens(1)
    expected = np.asarray(gqa(x))
    state = nnx.state(gqa, nnx.Param)  # shares gqa's variables: gqa is not used again
    for block in state["blocks"].values():
        for name in ("k", "v"):
            block["attn"][name].set_value(jnp.repeat(block["attn"][name][...], 2, axis=1))
    nnx.update(mha, state)
    np.testing.assert_allclose(expected, np.asarray(mha(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls, overrides",
    [(GPT2, {}), (LLAMA, {"n_kv_heads": 2}), (LLAMA, {"sliding_window": 3})],
    ids=["gpt2", "llama-gqa", "llama-window"],
)
def test_a_masked_row_packs_sequences_each_as_if_alone(cls, overrides):
    """Two sequences and a third's two branches sharing its start, in one row: with their own
    positions and a mask, each token's logits equal those of its sequence run alone."""
    model = small(cls, **overrides)
    a, b, shared, left, right = (tokens(seed, (1, n))[0] for seed, n in enumerate((5, 4, 3, 2, 2)))
    row = jnp.concatenate([a, b, shared, left, right])[None]
    positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3, 4, 3, 4]])
    segment = np.array([0] * 5 + [1] * 4 + [2] * 7)
    branch = np.array([0] * 12 + [1, 1, 2, 2])
    sees = (segment[:, None] == segment[None]) & (
        (branch[None] == 0) | (branch[:, None] == branch[None])
    )
    packed = np.asarray(model(row, positions, mask=jnp.asarray(sees)[None]))[0]
    np.testing.assert_allclose(packed[:5], np.asarray(model(a[None]))[0], atol=1e-5)
    np.testing.assert_allclose(packed[5:9], np.asarray(model(b[None]))[0], atol=1e-5)
    for branch_slots, tail in ((slice(12, 14), left), (slice(14, 16), right)):
        alone = np.asarray(model(jnp.concatenate([shared, tail])[None]))[0]
        np.testing.assert_allclose(packed[9:12], alone[:3], atol=1e-5)
        np.testing.assert_allclose(packed[branch_slots], alone[3:], atol=1e-5)


@pytest.mark.parametrize("cls", [GPT2, LLAMA])
def test_backward_pass_keeps_only_the_activations_matmuls_need(cls, capsys):
    """Norms, GELU/SwiGLU, RoPE and XLA's attention are recomputed in the backward pass: no
    float32 [batch, seq, d_model] intermediate and no attention probabilities are kept, and the
    MLP keeps two [batch, seq, d_ff] tensors per layer (GELU: its input and output)."""
    model = small(cls, dtype="bfloat16", n_layers=1)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32))

    print_saved_residuals(loss, params, tokens())
    saved = [
        line for line in capsys.readouterr().out.splitlines() if "from the argument" not in line
    ]
    d_ff = model.config.hidden
    assert not [line for line in saved if line.startswith(f"f32[2,{T},32]")], saved
    assert not [line for line in saved if f",{T},{T}]" in line], saved  # attention scores
    n_mlp = 2 if cls is GPT2 else 3  # SwiGLU: gate and up projections, then their product
    assert len([line for line in saved if line.startswith(f"bf16[2,{T},{d_ff}]")]) == n_mlp, saved


def test_tied_embeddings_share_the_output_head():
    tied, untied = small(GPT2, tie_embeddings=True), small(GPT2, tie_embeddings=False)
    assert tied.lm_head is None and untied.lm_head is not None
    assert untied.n_params() - tied.n_params() == V * 32
    # the head projects onto the embedding table: zero table, zero logits
    x = tokens(2)
    before = tied(x)
    tied.embed.weight.set_value(tied.embed.weight[...] * 0)
    assert np.allclose(np.asarray(tied(x)), 0.0)
    assert not np.allclose(np.asarray(before), 0.0)


def test_dropout_only_when_not_deterministic():
    model = small(GPT2, dropout=0.5)
    x = tokens(3)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))
    nnx.reseed(model, dropout=7)
    a = model(x, deterministic=False)
    nnx.reseed(model, dropout=7)
    b = model(x, deterministic=False)
    c = model(x, deterministic=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(model(x)))
    assert not np.allclose(np.asarray(b), np.asarray(c))


def test_gpt_defaults_are_gpt2_small_and_flops_match_the_shape():
    config = dataclasses.replace(GPT2, vocab_size=50304)
    assert (config.n_layers, config.d_model, config.n_heads, config.block_size) == (
        12,
        768,
        12,
        1024,
    )
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    L, D, Vp, S = 12, 768, 50304, 1024
    per_layer = (4 * D * D + 4 * D) + (8 * D * D + 5 * D) + 4 * D  # attention, MLP, two LayerNorms
    assert model.n_params() == Vp * D + S * D + L * per_layer + 2 * D  # ~124M, GPT-2 small
    matmul_params = Vp * D + L * per_layer + 2 * D  # the position table is a lookup, not a matmul
    assert model.flops_per_token(S) == 6 * matmul_params + 12 * L * D * S


def test_llama_swiglu_width_and_untied_flops():
    config = dataclasses.replace(
        LLAMA, n_layers=2, n_heads=4, n_kv_heads=2, d_model=48, vocab_size=V
    )
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    assert model.blocks[0].mlp.gate.kernel.shape == (48, 256)  # 8/3 * 48 rounded up to 256
    assert model.flops_per_token(T) == 6 * (model.n_params() - V * 48) + 12 * 2 * 48 * T


def test_presets_are_values_of_one_config():
    """Llama differs from GPT-2 only in the values its preset sets; both build one model."""
    differ = {
        f.name for f in dataclasses.fields(GPT2) if getattr(GPT2, f.name) != getattr(LLAMA, f.name)
    }
    assert differ == {"n_kv_heads", "positions", "mlp", "norm", "tie_embeddings", "bias"}
    assert type(GPT2) is type(LLAMA)


def test_variable_shardings_follow_the_rules():
    model = small(LLAMA, n_heads=4, n_kv_heads=2)
    mesh = Layout(1, 1, 1).mesh(jax.devices()[:1])
    shardings = variable_shardings(nnx.state(model, nnx.Param), mesh)
    specs = jax.tree.map(lambda sharding: sharding.spec, shardings)
    assert specs["embed"]["weight"].get_value() == P(RULES["vocab"], RULES["embed"])
    assert specs["blocks"][0]["attn"]["q"].get_value() == P("fsdp", "tensor", None)
    assert specs["blocks"][0]["mlp"]["down"]["kernel"].get_value() == P("tensor", "fsdp")
    assert specs["final_norm"]["scale"].get_value() == P(None)
    # a dimension the mesh does not divide stays replicated
    fake_mesh = type("M", (), {"shape": {"data": 1, "fsdp": 1, "tensor": 4}})()
    assert spec_for(("embed", "kv_heads", "head_dim"), (32, 2, 8), fake_mesh) == P(
        "fsdp", None, None
    )
    assert spec_for(("embed", "heads", "head_dim"), (32, 4, 8), fake_mesh) == P(
        "fsdp", "tensor", None
    )
    assert spec_for(("batch", None), (8, 4), mesh) == P(("data", "fsdp"), None)


def test_sizes_a_split_does_not_divide_are_reported():
    """Those parameters stay whole: the run says so rather than claim a split it does not make.
    Fewer key/value heads than tensor shards are not reported: their replication is by design."""
    model = small(LLAMA, n_heads=4, n_kv_heads=2, d_ff=90)  # d_model 32
    params = nnx.state(model, nnx.Param)
    mesh = type("M", (), {"shape": {"data": 1, "fsdp": 3, "tensor": 4}})()
    assert sorted(unsplit_axes(params, mesh)) == ["embed 32 over fsdp 3", "mlp 90 over tensor 4"]
    fits = type("M", (), {"shape": {"data": 1, "fsdp": 2, "tensor": 4}})()
    assert unsplit_axes(params, fits) == ["mlp 90 over tensor 4"]
