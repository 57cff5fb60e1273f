"""Optimizers: AdamW (weight decay masked off norms, biases and, by default, embeddings) and Muon.

Both return an optax transformation whose updates still have to be multiplied by the learning
rate: the train step does that with the schedule evaluated at the step it is given, so the rate
is a pure function of the step (not of an optimizer counter that a skipped update would not
advance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from theseus.config import field
from theseus.errors import ConfigError, UserError

OPTIMIZERS = ("adamw", "muon")
_NO_DECAY = ("embed", "norm", "bias", "scale")


@dataclass
class OptimizerConfig:
    """Optimizer, learning-rate schedule and clipping."""

    optimizer: str = field(
        "optimization/optimizer", default="adamw", choices=OPTIMIZERS, help="adamw or muon"
    )
    lr: float = field("optimization/lr", minimum=0, default=6e-4, help="peak learning rate")
    min_lr: float | None = field(
        "optimization/min_lr",
        minimum=0,
        default=None,
        help="learning rate at the end of the decay (null = lr / 10)",
    )
    warmup_steps: int = field(
        "optimization/warmup_steps",
        minimum=0,
        default=200,
        help="steps of linear warmup (step s of it runs at lr * s / warmup_steps)",
    )
    schedule: str | None = field(
        "optimization/schedule",
        default=None,
        choices=("wsd", "cosine", "constant"),
        help="wsd, cosine or constant; null = the job's own choice (its schedule() method)",
    )
    decay_fraction: float = field(
        "optimization/decay_fraction",
        minimum=0,
        maximum=1,
        default=0.2,
        help="wsd: fraction of the run spent decaying",
    )
    b1: float = field(
        "optimization/b1",
        minimum=0,
        below=1,
        default=0.9,
        help="Adam beta1 (Muon: momentum of the Adam part)",
    )
    b2: float = field("optimization/b2", minimum=0, below=1, default=0.95, help="Adam beta2")
    eps: float = field("optimization/eps", above=0, default=1e-8, help="Adam epsilon")
    weight_decay: float = field(
        "optimization/weight_decay",
        minimum=0,
        default=0.1,
        help="decoupled weight decay; never applied to norms or biases",
    )
    decay_embeddings: bool = field(
        "optimization/decay_embeddings",
        default=False,
        help="weight decay on the token and position embeddings too (nanoGPT's rule)",
    )
    clip_norm: float | None = field(
        "optimization/clip_norm",
        above=0,
        default=1.0,
        help="clip gradients to this global norm; null = no clipping",
    )
    muon_momentum: float = field(
        "optimization/muon_momentum", minimum=0, below=1, default=0.95, help="Muon: momentum"
    )
    muon_lr: float | None = field(
        "optimization/muon_lr",
        minimum=0,
        default=None,
        help="Muon: peak learning rate of the hidden matrices (often ~0.02), on the same schedule; "
        "lr drives the Adam part (embeddings, head, norms); null = lr",
    )

    @property
    def end_lr(self) -> float:
        """The learning rate the schedule decays to."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def check(self) -> None:
        """Rules joining several settings (run with the config's validation, before any work)."""
        if self.muon_lr is not None and self.optimizer != "muon":
            raise ConfigError(
                f"optimization.muon_lr={self.muon_lr} is set, but optimization.optimizer="
                f"{self.optimizer} does not use it; choose optimization.optimizer=muon or drop it"
            )
        if self.min_lr is not None and self.min_lr > self.lr and self.schedule != "constant":
            raise ConfigError(
                f"optimization.min_lr={self.min_lr} is above optimization.lr={self.lr}, but the "
                "schedule decays from lr down to min_lr; lower min_lr or raise lr"
            )


def _path_names(path: tuple[Any, ...]) -> list[str]:
    names = []
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        names.append(str(name).lower())
    return names


def decays(path: tuple[Any, ...], leaf: Any, *, embeddings: bool = False) -> bool:
    """Whether weight decay applies to the parameter at `path`: matrices only, never norms or
    biases, embeddings only when `embeddings`."""
    names = _path_names(path)
    markers = _NO_DECAY if not embeddings else tuple(m for m in _NO_DECAY if m != "embed")
    if any(marker in name for name in names for marker in markers):
        return False
    return getattr(leaf, "ndim", 2) >= 2


def decay_mask(params: Any, *, embeddings: bool = False) -> Any:
    """A pytree of bools shaped like `params`: True where weight decay applies."""
    import jax

    return jax.tree_util.tree_map_with_path(partial(decays, embeddings=embeddings), params)


def _muon_dim(path: tuple[Any, ...], leaf: Any) -> Any:
    """How Muon orthogonalizes the parameter at `path`, or None where Adam updates it instead."""
    from optax.contrib import MuonDimensionNumbers

    names = [n for n in _path_names(path) if n != "value"]
    if any(marker in name for name in names for marker in ("embed", "head", *_NO_DECAY)):
        return None
    if leaf.ndim == 2:
        return MuonDimensionNumbers(0, 1)
    if leaf.ndim == 3 and names and names[-1] == "o":
        return MuonDimensionNumbers((0, 1), 2)
    if leaf.ndim == 3:
        return MuonDimensionNumbers(0, (1, 2))
    return None


def _muon_dims(params: Any) -> Any:
    """Muon orthogonalizes hidden matrices; embeddings, the head, norms and biases use Adam.

    Attention kernels are stored per head: q/k/v are [d_model, heads, head_dim] (reduce over
    axis 0) and o is [heads, head_dim, d_model] (reduce over axes 0 and 1).
    """
    import jax

    return jax.tree_util.tree_map_with_path(_muon_dim, params)


def _adam_part_decay_mask(params: Any, *, embeddings: bool = False) -> Any:
    """True where Muon hands a parameter to Adam and weight decay applies to it (an untied
    output head, embeddings when `embeddings`; never norms or biases)."""
    import jax

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            _muon_dim(path, leaf) is None and decays(path, leaf, embeddings=embeddings)
        ),
        params,
    )


def make_optimizer(config: OptimizerConfig) -> Any:
    """The optax transformation for `config` (learning rate 1: the step scales by the schedule)."""
    import optax

    # Always there (an infinite norm clips nothing), so that the optimizer state a checkpoint
    # holds is the same with clipping on or off, and a resumed run may toggle it.
    max_norm = math.inf if config.clip_norm is None else config.clip_norm
    parts = [optax.clip_by_global_norm(max_norm)]
    if config.optimizer == "adamw":
        parts.append(
            optax.adamw(
                1.0,
                b1=config.b1,
                b2=config.b2,
                eps=config.eps,
                weight_decay=config.weight_decay,
                mask=partial(decay_mask, embeddings=config.decay_embeddings),
            )
        )
    elif config.optimizer == "muon":
        from optax.contrib import muon

        # the step scales every update by the schedule's lr; the matrices' share is muon_lr / lr
        ratio = 1.0 if config.muon_lr is None or config.lr == 0 else config.muon_lr / config.lr
        parts.append(
            muon(
                ratio,
                adam_learning_rate=1.0,
                beta=config.muon_momentum,
                eps=config.eps,
                weight_decay=config.weight_decay,
                weight_decay_mask=partial(decay_mask, embeddings=config.decay_embeddings),
                adam_b1=config.b1,
                adam_b2=config.b2,
                adam_weight_decay=0.0,
                muon_weight_dimension_numbers=_muon_dims,
            )
        )
        # optax's muon decays all of its Adam part or none of it: decay the part that takes
        # weight decay here. Muon's updates already carry the descent sign (its learning rate 1
        # is applied as -1), hence the negative factor: u - wd * p, as AdamW does.
        adam_part = partial(_adam_part_decay_mask, embeddings=config.decay_embeddings)
        parts.append(optax.add_decayed_weights(-config.weight_decay, mask=adam_part))
    else:
        raise UserError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    return optax.chain(*parts)
