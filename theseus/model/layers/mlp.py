"""Feed-forward blocks: GELU (GPT-2) and SwiGLU (Llama)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.model.layers.params import param


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
            # tanh approximation: what GPT-2 was trained with ("gelu_new" in Hugging Face)
            return self.down(jax.nn.gelu(self.fc(x), approximate=True))
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
