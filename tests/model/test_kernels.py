"""Each fast path of `theseus.model.kernels` equals the plain computation it replaces, and the
attention kernel is chosen once, by the setting."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from theseus.errors import UserError
from theseus.model import kernels
from theseus.model.models import GPT2, LLAMA, Transformer

from .tiny import tiny

V, T = 96, 12


def small(preset, **overrides):
    return tiny(preset, V, block_size=16, **overrides)


def test_joined_qkv_projection_equals_three_projections():
    """The CPU path (one matmul against the joined kernels) and the GPU path give the same q, k, v."""
    attn = small(GPT2, dtype="float32").blocks[0].attn
    for name in ("q_bias", "k_bias", "v_bias"):  # non-zero, so the biases' order is checked too
        bias = getattr(attn, name)
        bias.set_value(jax.random.normal(jax.random.key(len(name)), bias.shape))
    x = jax.random.normal(jax.random.key(2), (2, T, 32))
    kernels_, biases = [[getattr(attn, n + suffix)[...] for n in "qkv"] for suffix in ("", "_bias")]
    joined = kernels.joined_qkv(x, kernels_, biases)
    separate = [
        jnp.einsum("btd,dnh->btnh", x, w) + b for w, b in zip(kernels_, biases, strict=True)
    ]
    for a, b in zip(joined, separate, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _plain_layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.square(x - mean).mean(-1, keepdims=True) + 1e-5) * scale + bias


def _plain_rms_norm(x, scale):
    return x / jnp.sqrt(jnp.square(x).mean(-1, keepdims=True) + 1e-5) * scale


@pytest.mark.slow
@pytest.mark.parametrize(
    "norm, plain, n_params",
    [(kernels.layer_norm, _plain_layer_norm, 2), (kernels.rms_norm, _plain_rms_norm, 1)],
    ids=["layernorm", "rmsnorm"],
)
def test_hand_written_norm_gradients_match_autodiff_in_float64(norm, plain, n_params):
    """The norms' own backward pass against autodiff of the textbook formula, in float64."""
    keys = jax.random.split(jax.random.key(7), 4)
    x = 3 * jax.random.normal(keys[0], (2, T, 48)) + 1  # an offset, so centering matters
    params = [jax.random.normal(k, (48,)) for k in keys[1 : 1 + n_params]]
    weights = jax.random.normal(keys[3], x.shape)
    argnums = tuple(range(1 + n_params))
    ours = jax.grad(lambda *a: jnp.sum(norm(*a, 1e-5) * weights), argnums)(x, *params)
    with jax.enable_x64(True):
        wide = [np.asarray(a, np.float64) for a in (x, *params)]
        expected = jax.grad(lambda *a: jnp.sum(plain(*a) * weights.astype(jnp.float64)), argnums)(
            *wide
        )
    for got, want in zip(ours, expected, strict=True):
        want = np.asarray(want)
        assert np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want) < 1e-5


def _plain_causal_attention(q, k, v):
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.slow
def test_xla_causal_attention_and_its_gradient_equal_the_textbook_formula():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, T, 4, 8)) for i in range(3))
    np.testing.assert_allclose(
        kernels.causal_attention(q, k, v, "xla"), _plain_causal_attention(q, k, v), atol=1e-5
    )
    ours = jax.grad(lambda q: jnp.sum(kernels.causal_attention(q, k, v, "xla") ** 2))(q)
    plain = jax.grad(lambda q: jnp.sum(_plain_causal_attention(q, k, v) ** 2))(q)
    np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-5)


def _plain_windowed_attention(q, k, v, window):
    """Query t sees keys t - window + 1 .. t: the last `window` positions, itself included."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    t, s = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None, :]
    visible = (s <= t) & (s > t - window)
    weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("window", [1, 3, T + 5])
def test_windowed_attention_and_its_gradient_equal_the_textbook_masked_softmax(window):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, T, 4, 8)) for i in range(3))
    ours = kernels.causal_attention(q, k, v, "xla", window)
    np.testing.assert_allclose(ours, _plain_windowed_attention(q, k, v, window), atol=1e-5)
    if window == 1:  # each query sees itself only
        np.testing.assert_allclose(ours, v, atol=1e-6)
    grad = jax.grad(lambda q: jnp.sum(kernels.causal_attention(q, k, v, "xla", window) ** 2))(q)
    plain = jax.grad(lambda q: jnp.sum(_plain_windowed_attention(q, k, v, window) ** 2))(q)
    np.testing.assert_allclose(grad, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("window", [None, 5, kernels.QUERY_CHUNK + 9])
def test_cpu_attention_in_chunks_with_a_mask_and_grouped_heads_is_the_textbook_one(window, masked):
    """A length that is no multiple of the chunks, 2 kv heads for 4 query heads, windows that
    leave a chunk's first keys out, and a mask (query t sees key s when (s + t) % 3 != 1, or
    s == t): the chunked forward and its gradient equal the masked softmax written out."""
    t = kernels.QUERY_CHUNK * 2 + 7
    q = jax.random.normal(jax.random.key(0), (2, t, 4, 8))
    k, v = (jax.random.normal(jax.random.key(i), (2, t, 2, 8)) for i in (1, 2))
    s, r = np.arange(t)[None, :], np.arange(t)[:, None]
    mask = jnp.asarray(np.broadcast_to(((s + r) % 3 != 1) | (s == r) | (not masked), (2, t, t)))
    seen = (s <= r) & (True if window is None else s > r - window) & np.asarray(mask[0])

    def plain(q):
        wide = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, wide[0]) / np.sqrt(8)
        weights = jax.nn.softmax(jnp.where(seen, scores, -jnp.inf), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, wide[1])

    def ours(q):
        return kernels.causal_attention(q, k, v, "xla", window, mask if masked else None)

    np.testing.assert_allclose(ours(q), plain(q), atol=1e-5)
    grad = jax.grad(lambda q: jnp.sum(ours(q) ** 2))(q)
    np.testing.assert_allclose(grad, jax.grad(lambda q: jnp.sum(plain(q) ** 2))(q), atol=1e-4)


def test_the_window_reaches_cudnn_as_its_exclusive_left_bound(monkeypatch):
    """No GPU here: the call cuDNN's path makes is recorded. JAX turns (W - 1, 0) into cuDNN's
    sliding_window_length W, the window the XLA path masks (checked above)."""
    calls = []
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw))
    q = jnp.zeros((1, T, 2, 8))
    kernels.causal_attention(q, q, q, "cudnn", 4)
    kernels.causal_attention(q, q, q, "cudnn")
    assert [c["local_window_size"] for c in calls] == [(3, 0), None]
    assert all(c["is_causal"] and c["implementation"] == "cudnn" for c in calls)


def test_rope_and_activations_equal_their_plain_forms():
    x = jax.random.normal(jax.random.key(0), (2, T, 4, 8))
    positions = jnp.broadcast_to(jnp.arange(T), (2, T))
    angles = positions[..., None] / 10000.0 ** (jnp.arange(0, 8, 2) / 8)
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    first, second = x[..., :4], x[..., 4:]
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1)
    np.testing.assert_allclose(kernels.rope(x, positions, 10000.0), rotated, atol=1e-5)
    gelu = 0.5 * x * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(kernels.gelu(x), gelu, atol=1e-6)
    np.testing.assert_allclose(kernels.swiglu(x, 2 * x), x * jax.nn.sigmoid(x) * 2 * x, atol=1e-6)


@pytest.mark.parametrize(
    "backend, dtype, head_dim, setting, chosen",
    [
        ("gpu", jnp.bfloat16, 64, "auto", "cudnn"),
        ("gpu", jnp.float16, 128, "auto", "cudnn"),
        ("gpu", jnp.float32, 64, "auto", "xla"),  # cuDNN's fused kernel takes half precision
        ("gpu", jnp.bfloat16, 160, "auto", "xla"),  # nor heads wider than 128
        ("gpu", jnp.bfloat16, 64, "xla", "xla"),
        ("cpu", jnp.bfloat16, 64, "auto", "xla"),
        ("tpu", jnp.bfloat16, 64, "auto", "xla"),
    ],
)
def test_attention_kernel_is_chosen_by_the_setting(
    monkeypatch, backend, dtype, head_dim, setting, chosen
):
    """A stand-in for the GPU: the backend check is stubbed; the choice itself is the real code."""
    monkeypatch.setattr(kernels, "backend", lambda: backend)
    assert kernels.attention_kernel(setting, dtype, head_dim) == chosen


def test_a_gpu_model_in_bfloat16_runs_cudnn_attention(monkeypatch):
    """What a GPU run builds (the backend stubbed): every layer holds the cuDNN kernel, chosen
    once at construction; on this CPU the same config builds XLA's."""
    config = dataclasses.replace(GPT2, n_layers=2, n_heads=2, d_model=128, vocab_size=V)
    on_cpu = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    monkeypatch.setattr(kernels, "backend", lambda: "gpu")
    on_gpu = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    assert [b.attn.kernel for b in on_gpu.blocks] == ["cudnn", "cudnn"]
    assert [b.attn.kernel for b in on_cpu.blocks] == ["xla", "xla"]
    assert not any(b.attn.joined for b in on_gpu.blocks)  # three matmuls on a GPU


def test_cudnn_asked_where_it_cannot_run_is_a_one_line_error():
    with pytest.raises(
        UserError,
        match=r"architecture.attention=cudnn needs an NVIDIA GPU.*use attention=auto or xla",
    ):
        kernels.attention_kernel("cudnn", jnp.bfloat16, 64)


WINDOWED = {"n_kv_heads": 2, "sliding_window": 3, "window_from_layer": 1}
NEOX = {"positions": "rope", "rope_fraction": 0.25, "parallel_residual": True, "mlp": "gelu_exact"}
QWEN3 = {"n_kv_heads": 2, "head_width": 16, "qk_norm": True}


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, overrides",
    [(GPT2, {}), (LLAMA, {"n_kv_heads": 2}), (LLAMA, WINDOWED), (GPT2, NEOX), (LLAMA, QWEN3)],
    ids=["gpt2", "llama", "llama-sliding-window", "neox", "qwen3"],
)
def test_forward_with_a_cache_equals_the_plain_forward(preset, overrides):
    """A prompt run into a cache, then tokens decoded one at a time against it, give the logits
    of one forward over the whole sequence (with a window: the cache masks what it slid past)."""
    model = small(preset, **overrides)
    sequence = jax.random.randint(jax.random.key(1), (2, 10), 0, V, dtype=jnp.int32)
    expected = model(sequence)
    cache = model.empty_cache(2, 10)
    got = [model(sequence[:, :6], cache=cache)]
    for t in range(6, 10):
        got.append(model(sequence[:, t : t + 1], jnp.full((2, 1), t), cache=cache))
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), expected, rtol=1e-5, atol=1e-5)
