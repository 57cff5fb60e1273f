"""Logical axis names -> mesh axes. Model code names axes; only this table knows the mesh.

Also where a model's state lands on the mesh: abstract on it (to restore into), initialized in
its shards, and the optimizer state mirroring the parameters'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from theseus.parallel.mesh import BATCH_AXES

RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "sequence": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
}


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a parameter was created with (None when it has none)."""
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes is not None else None


def _mesh_axes(name: str | None) -> tuple[str, ...]:
    """The mesh axes the rules map logical axis `name` to (none: replicated)."""
    target = RULES.get(name) if name is not None else None
    return (target,) if isinstance(target, str) else tuple(target or ())


def spec_for(
    axes: tuple[str | None, ...], shape: tuple[int, ...] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """The PartitionSpec for logical `axes`. With `shape` and `mesh`, a dimension that the mesh
    axes do not divide evenly (e.g. 2 key/value heads over 4 tensor shards) stays replicated."""
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for i, name in enumerate(axes):
        names = tuple(n for n in _mesh_axes(name) if n not in used)
        if names and shape is not None and mesh is not None:
            size = int(np.prod([mesh.shape[n] for n in names]))
            if shape[i] % size:
                names = ()
        used.update(names)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*out)


def unsplit_axes(state: nnx.State, mesh: Mesh) -> list[str]:
    """The logical axes of `state`'s variables whose sizes their mesh axes do not divide, so
    that those variables stay whole along them (see `spec_for`): `"embed 36 over fsdp 8"`, once
    each. Key/value heads fewer than the tensor shards are left out: grouped-query attention
    replicates them by design."""
    found: dict[str, None] = {}
    for variable in jax.tree.leaves(state, is_leaf=_is_variable):
        for name, dim in zip(logical_axes(variable) or (), variable.shape, strict=False):
            names = _mesh_axes(name) if name != "kv_heads" else ()
            size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
            if size > 1 and dim % size:
                found[f"{name} {dim} over {' x '.join(names)} {size}"] = None
    return list(found)


def variable_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """`state` (abstract or concrete) with each variable's value replaced by its NamedSharding on
    `mesh`, from its logical axes; variables without axes (RNG counters) are replicated."""

    def place(variable: nnx.Variable) -> nnx.Variable:
        spec = spec_for(logical_axes(variable) or (), tuple(variable.shape), mesh)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(place, state, is_leaf=_is_variable)


def abstract_on_mesh(
    create: Callable[[], nnx.Module], mesh: Mesh
) -> tuple[Any, nnx.State, nnx.State]:
    """What `create` builds, as (graphdef, parameters, other state), placed on `mesh`.

    The parameters come back abstract (`jax.ShapeDtypeStruct`s carrying their sharding): a
    checkpoint restores into them, or `param_initializer` runs their initializers. The other state
    (RNG counters and the like) is created here, already sharded.
    """
    graphdef, params, rest = nnx.split(nnx.eval_shape(create), nnx.Param, ...)
    placed = abstract_with(params, variable_shardings(params, mesh))
    if jax.tree.leaves(rest):
        rest = jax.jit(
            lambda: nnx.split(create(), nnx.Param, ...)[2],
            out_shardings=variable_shardings(rest, mesh),
        )()
    return graphdef, placed, rest


def abstract_with(abstract: Any, shardings: Any) -> Any:
    """`abstract` (a tree of shapes and dtypes) as `jax.ShapeDtypeStruct`s carrying `shardings`."""
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract,
        shardings,
    )


def param_initializer(create: Callable[[], nnx.Module], abstract: nnx.State) -> Any:
    """The jitted program running the parameter initializers of `create` (eagerly, every shape
    would compile on its own). Its outputs are created directly in the shardings `abstract`
    gives them, so each device computes and holds only its shards; the values do not depend on
    the sharding."""
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    return jax.jit(lambda: nnx.state(create(), nnx.Param), out_shardings=shardings)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def mirror_shardings(param_shardings: Any, abstract: Any, mesh: Mesh) -> Any:
    """Shardings for optimizer state (`abstract`, e.g. from `jax.eval_shape(tx.init, params)`):
    a leaf under a parameter's path gets that parameter's sharding; the rest is replicated."""
    flat = {
        jax.tree_util.keystr(path): sharding
        for path, sharding in jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path: tuple[Any, ...], leaf: Any) -> Any:
        for i in range(len(path)):
            sharding = flat.get(jax.tree_util.keystr(path[i:]))
            if sharding is not None and len(sharding.spec) <= len(leaf.shape):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract)
