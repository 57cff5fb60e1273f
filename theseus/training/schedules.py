"""Learning-rate schedules: warmup, then constant, cosine, or warmup-stable-decay (wsd).

Each is a pure function of the step (an optax schedule), so the rate at step s never depends on
how the run was interrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from theseus.errors import UserError

SCHEDULES = ("wsd", "cosine", "constant")


def make_schedule(
    name: str,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_fraction: float = 0.2,
) -> Callable[[Any], Any]:
    """The schedule `name` as a function step -> learning rate, for steps 1 to `total_steps`
    (0 is the start of the warmup, at rate 0).

    - `constant`: linear warmup to `lr`, then `lr`.
    - `cosine`: linear warmup, then cosine decay to `min_lr` at `total_steps`.
    - `wsd`: linear warmup, `lr` until the last `decay_fraction` of the run, then linear decay to
      `min_lr`.
    """
    import optax

    if name not in SCHEDULES:
        raise UserError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    rest = max(1, total_steps - warmup_steps)
    warmup = optax.linear_schedule(0.0 if warmup_steps else lr, lr, max(1, warmup_steps))
    if name == "constant":
        after = optax.constant_schedule(lr)
    elif name == "cosine":
        after = optax.cosine_decay_schedule(lr, rest, alpha=min_lr / lr if lr else 0.0)
    else:
        if not 0.0 <= decay_fraction <= 1.0:
            raise UserError(f"optimization.decay_fraction must be in [0, 1], got {decay_fraction}")
        decay = min(round(total_steps * decay_fraction), rest)  # a long warmup shortens it
        stable = max(0, rest - decay)
        after = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, min_lr, max(1, decay))],
            [stable],
        )
    if not warmup_steps:
        return after
    return optax.join_schedules([warmup, after], [warmup_steps])
