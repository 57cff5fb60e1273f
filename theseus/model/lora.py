"""LoRA: low-rank adapters beside a model's projections, trained while the base stays frozen.

A targeted projection W gains `scale * (x @ a) @ b`, with `a` [in, rank] and `b` [rank, out]
(`b` starts at zero, so an adapted model begins as its base) and `scale = alpha / rank`.
Adapters are `Adapted` parameters: `nnx.state(model, Adapted)` is what a trainer optimizes, and
`merge` folds them into the base weights (for export). Targets are projection names: `q`, `k`,
`v`, `o` of attention and `fc`, `gate`, `up`, `down` of the MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from theseus.config import field
from theseus.errors import ConfigError, UserError

TARGETS = ("q", "k", "v", "o", "fc", "gate", "up", "down")


@dataclass
class LoRAConfig:
    """Which projections get adapters, and their shape (rank 0: no adapters, full fine-tuning)."""

    rank: int = field(
        "finetune/lora/rank",
        minimum=0,
        default=0,
        help="adapter rank; 0 = no LoRA: every weight trains",
    )
    alpha: float = field(
        "finetune/lora/alpha", above=0, default=16.0, help="adapter output scale is alpha / rank"
    )
    dropout: float = field(
        "finetune/lora/dropout",
        minimum=0,
        below=1,
        default=0.0,
        help="dropout on the adapters' input while training",
    )
    targets: list[str] = field(
        "finetune/lora/targets",
        default_factory=lambda: ["q", "k", "v", "o"],
        help=f"projections to adapt: any of {', '.join(TARGETS)}",
    )

    def check(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ConfigError(
                f"finetune.lora.targets: {', '.join(map(str, unknown))} is no projection; "
                f"choose among {', '.join(TARGETS)}"
            )
        if self.rank and not self.targets:
            raise ConfigError("finetune.lora.targets is empty; name the projections to adapt")


class Adapted(nnx.Param):
    """A LoRA adapter's parameter: trained while the `nnx.Param`s of the base stay frozen."""


class Adapter(nnx.Module):
    """`scale * dropout(x) @ a @ b`, contracting the last `len(in_shape)` axes of x."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        in_axes: tuple[str | None, ...],
        out_axes: tuple[str | None, ...],
        config: LoRAConfig,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        rank, fan_in = config.rank, math.prod(in_shape)
        self.scale = config.alpha / rank
        # a as a Kaiming-uniform layer of fan_in inputs, b at zero: the model starts as its base
        bound = 1.0 / math.sqrt(fan_in)
        self.a = Adapted(
            jax.random.uniform(rngs.params(), (*in_shape, rank), jnp.float32, -bound, bound),
            out_sharding=(*in_axes, None),
            eager_sharding=False,
        )
        self.b = Adapted(
            jnp.zeros((rank, *out_shape), jnp.float32),
            out_sharding=(None, *out_axes),
            eager_sharding=False,
        )
        # its own stream named "dropout", so the step's `nnx.reseed(model, dropout=key)` sets it
        self.dropout = (
            nnx.Dropout(config.dropout, deterministic=True, rngs=nnx.Rngs(dropout=rngs.params()))
            if config.dropout > 0
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dropout is not None:  # active only under `model.train()` (the train step's)
            x = self.dropout(x)
        n_in = self.a.ndim - 1
        low = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=n_in)
        return jnp.tensordot(low, (self.scale * self.b[...]).astype(x.dtype), axes=1)


def _projections(model: nnx.Module) -> list[tuple[str, nnx.Module, str]]:
    """(target name, owning module, attribute holding its adapter) for every projection."""
    found = []
    for block in model.blocks:
        for name in ("q", "k", "v", "o"):
            found.append((name, block.attn, f"{name}_lora"))
        for name in ("fc", "gate", "up", "down"):
            if hasattr(block.mlp, name):
                found.append((name, getattr(block.mlp, name), "lora"))
    return found


def _shapes(owner: nnx.Module, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple, tuple]:
    """The input and output shapes (and logical axes) of projection `name` on `owner`."""
    if name in ("q", "k", "v", "o"):
        weight = getattr(owner, name)
        axes = tuple(weight.get_metadata().get("out_sharding") or (None,) * weight.ndim)
        n_in = 2 if name == "o" else 1
        return weight.shape[:n_in], weight.shape[n_in:], axes[:n_in], axes[n_in:]
    kernel = owner.kernel
    axes = tuple(kernel.get_metadata().get("out_sharding") or (None, None))
    return kernel.shape[:1], kernel.shape[1:], axes[:1], axes[1:]


def attach(model: nnx.Module, config: LoRAConfig, rngs: nnx.Rngs) -> nnx.Module:
    """Give `model`'s targeted projections adapters (in place; returns the model).

    A target that matches no projection of this model is refused: training would otherwise
    silently adapt less than asked."""
    config.check()
    projections = _projections(model)
    missing = [t for t in config.targets if t not in {name for name, _, _ in projections}]
    if missing:
        present = sorted({name for name, _, _ in projections}, key=TARGETS.index)
        raise UserError(
            f"finetune.lora.targets: {', '.join(missing)} matches no layer of this model "
            f"(its projections: {', '.join(present)}); choose among those"
        )
    for name, owner, slot in projections:
        if name in config.targets:
            in_shape, out_shape, in_axes, out_axes = _shapes(owner, name)
            adapter = Adapter(in_shape, out_shape, in_axes, out_axes, config, rngs=rngs)
            setattr(owner, slot, nnx.data(adapter))
    return model


def merge(model: nnx.Module) -> nnx.Module:
    """`model` with each adapter folded into its base weight (`W + scale * a @ b`), adapters
    removed: the same function without LoRA, for export or plain inference. Changes `model`."""
    for name, owner, slot in _projections(model):
        adapter = getattr(owner, slot, None)
        if adapter is None:
            continue
        weight = owner.kernel if slot == "lora" else getattr(owner, name)
        delta = jnp.tensordot(adapter.a[...], adapter.scale * adapter.b[...], axes=1)
        weight.set_value((weight[...] + delta.astype(weight.dtype)).astype(weight.dtype))
        setattr(owner, slot, None)
    return model


def adapter_key(seed: int) -> jax.Array:
    """The key adapters are initialized from in a run of `seed`: apart from the base's stream, so
    that a model initializes the same with or without adapters."""
    return jax.random.fold_in(jax.random.key(seed), 0x4C6F5241)  # "LoRA"


def adapted_parameters(model: nnx.Module) -> int:
    """How many adapter parameters `model` holds."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, Adapted)))


def describe(config: LoRAConfig) -> str:
    """`rank 8, alpha 16, dropout 0, on q, k, v, o`, for reports."""
    return (
        f"rank {config.rank}, alpha {config.alpha:g}, dropout {config.dropout:g}, "
        f"on {', '.join(config.targets)}"
    )
