"""Feed-forward blocks: GELU (GPT-2) and SwiGLU (Llama).

The activations are rematerialized (`jax.checkpoint`): autodiff of tanh-GELU would keep five
[tokens, d_ff] intermediates for the backward pass; recomputing them from the pre-activation
inside the backward fusion costs no extra memory traffic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.params import param


@jax.checkpoint
def gelu(x: jax.Array) -> jax.Array:
    """tanh-approximated GELU: what GPT-2 was trained with ("gelu_new" in Hugging Face)."""
    return jax.nn.gelu(x, approximate=True)


@jax.checkpoint
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up."""
    return jax.nn.silu(gate) * up


class Dense(nnx.Module):
    """x @ kernel (+ bias) in the compute dtype; kernel is [in, out] with logical axes."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        axes: tuple[str, str],
        bias: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        std: float = 0.02,
    ) -> None:
        self.dtype = dtype
        self.kernel = param(rngs, nnx.initializers.normal(std), (d_in, d_out), axes, param_dtype)
        self.bias = (
            param(rngs, nnx.initializers.zeros, (d_out,), axes[1:], param_dtype) if bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class MLP(nnx.Module):
    """ "gelu": proj(gelu(fc(x))); "swiglu": down(silu(gate(x)) * up(x))."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        kind: str,
        bias: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        out_std: float = 0.02,
    ) -> None:
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"unknown mlp {kind!r}; use gelu or swiglu")
        self.kind = kind
        common = {"bias": bias, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        if kind == "gelu":
            self.fc = Dense(d_model, d_ff, axes=("embed", "mlp"), **common)
        else:
            self.gate = Dense(d_model, d_ff, axes=("embed", "mlp"), **common)
            self.up = Dense(d_model, d_ff, axes=("embed", "mlp"), **common)
        self.down = Dense(d_ff, d_model, axes=("mlp", "embed"), std=out_std, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "gelu":
            return self.down(gelu(self.fc(x)))
        return self.down(swiglu(self.gate(x), self.up(x)))
