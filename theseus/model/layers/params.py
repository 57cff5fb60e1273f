"""Parameter creation with logical axis names, and dtype names."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.errors import UserError

Initializer = Callable[..., jax.Array]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> jnp.dtype:
    """The JAX dtype for a config dtype name ("float32", "bfloat16", "float16")."""
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}")
    return jnp.dtype(_DTYPES[name])


def param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype: jnp.dtype,
) -> nnx.Param:
    """A parameter annotated with logical axis names.

    The names are metadata only (no eager sharding), so a model can be built without an active
    mesh; `theseus.model.sharding.variable_shardings` maps them to mesh axes at the jit boundary.
    """
    if len(axes) != len(shape):
        raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a parameter was created with (None when it has none)."""
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes is not None else None
