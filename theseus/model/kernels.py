"""The model's speed code, behind plain functions: each computes what its docstring says, and
`tests/model/test_kernels.py` holds it equal to the plain JAX it replaces.

- Norms and cross-entropy have hand-written backward passes: they keep only the inputs and
  per-row float32 statistics, and produce the gradient once in the input's dtype.
- Activations, RoPE and XLA's attention are rematerialized (`jax.checkpoint`): the backward pass
  recomputes them from their inputs instead of keeping wide intermediates alive.
- The attention kernel is chosen once per model (`attention_kernel`), by the `architecture.attention`
  setting; q, k and v come from one joined matmul on CPU (`joins_qkv`).
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from theseus.errors import UserError

ATTENTION_KERNELS = ("auto", "xla", "cudnn")


def backend() -> str:
    """The platform JAX computes on ("cpu", "gpu", "tpu"); one place for tests to stub."""
    return jax.default_backend()


# norms ------------------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / std * scale + bias over the last axis, in float32, returned in x's dtype."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> Any:
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(h - mean).mean(-1, keepdims=True) + eps)
    y = (h - mean) * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype), (x, scale, bias, mean, rstd)


def _layer_norm_bwd(eps: float, residuals: Any, dy: jax.Array) -> Any:
    x, scale, bias, mean, rstd = residuals
    dy = dy.astype(jnp.float32)
    dx, dscale = _norm_grads((x.astype(jnp.float32) - mean) * rstd, rstd, scale, dy, centered=True)
    dbias = dy.sum(tuple(range(x.ndim - 1)))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the last axis, in float32, returned in x's dtype."""
    return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x: jax.Array, scale: jax.Array, eps: float) -> Any:
    h = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.square(h).mean(-1, keepdims=True) + eps)
    y = h * rstd * scale.astype(jnp.float32)
    return y.astype(x.dtype), (x, scale, rstd)


def _rms_norm_bwd(eps: float, residuals: Any, dy: jax.Array) -> Any:
    x, scale, rstd = residuals
    xhat = x.astype(jnp.float32) * rstd
    dx, dscale = _norm_grads(xhat, rstd, scale, dy.astype(jnp.float32), centered=False)
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def _norm_grads(
    xhat: jax.Array, rstd: jax.Array, scale: jax.Array, dy: jax.Array, *, centered: bool
) -> tuple[jax.Array, jax.Array]:
    """Float32 gradients of `xhat * scale` for the norm's input and scale; `centered` when the
    norm subtracted the row mean (LayerNorm), which the input gradient then subtracts too."""
    g = dy * scale.astype(jnp.float32)
    g_in = g - g.mean(-1, keepdims=True) if centered else g
    dx = rstd * (g_in - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum(tuple(range(xhat.ndim - 1)))


# cross-entropy ----------------------------------------------------------------------------------


@jax.custom_vjp
def nll_and_lse(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood and log-sum-exp of `logits` (any float dtype), in f32."""
    return _nll_and_lse_fwd(logits, targets)[0]


def _nll_and_lse_fwd(logits: jax.Array, targets: jax.Array) -> Any:
    wide = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(wide, axis=-1)
    label = jnp.take_along_axis(wide, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return (lse - label, lse), (logits, targets, lse)


def _nll_and_lse_bwd(residuals: Any, grads: tuple[jax.Array, jax.Array]) -> Any:
    # the [tokens, vocab] gradient is written once, in the logits' dtype (autodiff of the f32
    # upcast writes it in f32 and converts it after); the label's -1 is an index comparison
    # in the same elementwise pass, not a one-hot array
    logits, targets, lse = residuals
    g_nll, g_lse = grads
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    is_label = jnp.arange(logits.shape[-1]) == targets[..., None]
    grad = probs * (g_nll + g_lse)[..., None] - jnp.where(is_label, g_nll[..., None], 0.0)
    return grad.astype(logits.dtype), None


nll_and_lse.defvjp(_nll_and_lse_fwd, _nll_and_lse_bwd)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Masked sums of the token cross-entropy and of log-sum-exp squared (for z-loss), in f32."""
    nll, lse = nll_and_lse(logits, targets)
    mask = mask.astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(jnp.square(lse) * mask)


# activations and positions (rematerialized) -----------------------------------------------------


@jax.checkpoint
def gelu(x: jax.Array) -> jax.Array:
    """tanh-approximated GELU: what GPT-2 was trained with ("gelu_new" in Hugging Face)."""
    return jax.nn.gelu(x, approximate=True)


@jax.checkpoint
def gelu_exact(x: jax.Array) -> jax.Array:
    """GELU through the error function: what GPT-NeoX / Pythia use ("gelu" in Hugging Face)."""
    return jax.nn.gelu(x, approximate=False)


@jax.checkpoint
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up."""
    return jax.nn.silu(gate) * up


@partial(jax.checkpoint, static_argnums=(2,))
def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate `x` [B, T, heads, head_dim] by the angles of `positions` [B, T], in the
    rotate-half layout of Hugging Face's Llama checkpoints."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    h = x.astype(jnp.float32)
    first, second = jnp.split(h, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (h * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


# attention --------------------------------------------------------------------------------------


def attention_kernel(setting: str, dtype: Any, head_dim: int) -> str:
    """The causal-attention kernel a model uses: "cudnn" or "xla".

    "auto" takes cuDNN's fused kernel on an NVIDIA GPU in bfloat16/float16 when it takes the head
    width (the faster one there: bench/FINDINGS.md), else XLA's."""
    if setting not in ATTENTION_KERNELS:
        raise UserError(
            f"architecture.attention={setting!r} is not a kernel; use {', '.join(ATTENTION_KERNELS)}"
        )
    cudnn_fits = (
        backend() == "gpu"
        and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        and head_dim % 8 == 0
        and head_dim <= 128
    )
    if setting == "cudnn" and not cudnn_fits:
        raise UserError(
            f"architecture.attention=cudnn needs an NVIDIA GPU, dtype bfloat16 or float16 and a "
            f"head width divisible by 8 up to 128 (here: {backend()}, {jnp.dtype(dtype).name}, "
            f"{head_dim}); use attention=auto or xla"
        )
    if setting == "auto":
        return "cudnn" if cudnn_fits else "xla"
    return setting


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kernel: str,
    window: int | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(d), causal) v for [B, T, heads, head_dim] inputs, with `kernel`.

    With a `window`, query t sees keys t - window + 1 .. t: the last `window` positions, itself
    included (Mistral's and Qwen2's sliding window, as Hugging Face masks it). A `mask` [B, T, T]
    (query t sees key s) narrows the causal one further: rows that pack several sequences. It
    runs on XLA's kernel, which takes any mask."""
    if kernel == "cudnn" and mask is None:
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=True, local_window_size=_left(window), implementation="cudnn"
        )
    if backend() == "cpu":
        return _cpu_causal_attention(q, k, v, window, mask)
    return _xla_causal_attention(q, k, v, window, mask)


def _left(window: int | None) -> tuple[int, int] | None:
    # JAX counts the keys left of the query (inclusive bounds): a window of W is (W - 1, 0)
    return None if window is None else (window - 1, 0)


def _dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, window: int | None, mask: jax.Array | None
) -> jax.Array:
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=None if mask is None else mask[:, None],
        is_causal=True,
        local_window_size=_left(window),
    )


# the backward pass recomputes the [T, T] scores and probabilities rather than keeping four of
# them per layer alive
_xla_causal_attention = jax.checkpoint(_dot_product_attention, static_argnums=(3,))


QUERY_CHUNK = 192  # about how many queries a chunk of CPU attention holds (bench/FINDINGS.md)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _cpu_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, window: int | None, mask: jax.Array | None
) -> jax.Array:
    """Chunks of queries when only the output is wanted (evaluation, sampling); XLA's kernel,
    rematerialized, when the gradient is: it differentiates faster than the chunks do."""
    return _chunked_attention(q, k, v, window, mask)


def _cpu_attention_fwd(
    q: jax.Array, k: jax.Array, v: jax.Array, window: int | None, mask: jax.Array | None
) -> tuple[jax.Array, Any]:
    return _dot_product_attention(q, k, v, window, mask), (q, k, v, mask)


def _cpu_attention_bwd(window: int | None, residuals: Any, grad: jax.Array) -> Any:
    q, k, v, mask = residuals
    _, pull = jax.vjp(lambda q, k, v: _dot_product_attention(q, k, v, window, mask), q, k, v)
    return (*pull(grad), None)


_cpu_causal_attention.defvjp(_cpu_attention_fwd, _cpu_attention_bwd)


def _chunked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, window: int | None, mask: jax.Array | None
) -> jax.Array:
    """The causal attention a few chunks of queries at a time, each against only the keys it
    can see (those up to its last query, within the window): the chunks skip most of the
    square's upper half, and their scores stay closer to the CPU's caches."""
    batch, t, heads, width = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    chunks = -(-t // QUERY_CHUNK)
    # about even chunks, cut at multiples of 64 queries (matmul-friendly shapes)
    cuts = sorted({0, t} | {min(t, -(-(t * c // chunks) // 64) * 64) for c in range(1, chunks)})
    lowest = jnp.finfo(jnp.float32).min
    outs = []
    for start, end in itertools.pairwise(cuts):
        first = 0 if window is None else max(0, start - window + 1)
        queries, keys = jnp.arange(start, end)[:, None], jnp.arange(first, end)[None, :]
        seen = keys <= queries
        if window is not None:
            seen &= keys > queries - window
        seen = seen[None] if mask is None else seen & mask[:, start:end, first:end]
        # heads first, a kv head's group of query heads stacked as rows: one batched matmul
        # over (row, kv head)
        chunk = q[:, start:end].reshape(batch, end - start, kv_heads, group, width)
        chunk = chunk.transpose(0, 2, 3, 1, 4).reshape(batch, kv_heads, -1, width)
        k_seen, v_seen = (x[:, first:end].transpose(0, 2, 1, 3) for x in (k, v))
        scores = jnp.einsum("bkqd,bksd->bkqs", chunk, k_seen, preferred_element_type=jnp.float32)
        scores = scores.reshape(batch, kv_heads, group, end - start, end - first)
        scores = jnp.where(seen[:, None, None], scores * width**-0.5, lowest)
        weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
        out = jnp.einsum(
            "bkqs,bksd->bkqd",
            weights.reshape(batch, kv_heads, -1, end - first).astype(v.dtype),
            v_seen,
            preferred_element_type=jnp.float32,
        )
        # normalized after the product: [queries, width] divisions instead of [queries, keys]
        out = out.reshape(batch, kv_heads, group, end - start, width) / weights.sum(-1)[..., None]
        outs.append(out.transpose(0, 3, 1, 2, 4).reshape(batch, end - start, heads, width))
    return jnp.concatenate(outs, axis=1).astype(q.dtype)


def joins_qkv(n_heads: int, n_kv_heads: int) -> bool:
    """Whether q, k and v come from one matmul: on CPU, where XLA runs each dot on one core and
    one larger dot beats three; on a GPU the joined result costs copies for the attention kernel
    and the weight gradient, and three matmuls are faster. Needs as many kv heads as q heads."""
    return backend() == "cpu" and n_heads == n_kv_heads


def joined_qkv(
    x: jax.Array, kernels: tuple[jax.Array, ...], biases: tuple[jax.Array, ...] | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v = x @ each of `kernels` [d, heads, head_dim] (+ `biases`), as one matmul against
    the kernels joined along the head width: the heads axis, which tensor parallelism shards,
    stays aligned, and the result needs no transpose."""
    kernel = jnp.concatenate(kernels, axis=-1).astype(x.dtype)
    qkv = jnp.einsum("btd,dnx->btnx", x, kernel)
    if biases is not None:
        qkv = qkv + jnp.concatenate(biases, axis=-1).astype(x.dtype)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    return q, k, v
