"""Which process of a job this one is, as its launcher tells it: `THESEUS_PROCESS_ID` and
`THESEUS_NUM_PROCESSES` (theseus's SLURM template sets them, or a user by hand), else SLURM's own
`SLURM_PROCID` and `SLURM_NTASKS`; a single process when neither is set."""

from __future__ import annotations

import os
from dataclasses import dataclass

from theseus.errors import UserError


def env_int(name: str) -> int | None:
    """The integer in environment variable `name`; None when it is unset or empty."""
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer") from None


@dataclass(frozen=True)
class Task:
    """This process's place in its job: task `index` of `count`."""

    index: int
    count: int


def this_task() -> Task:
    """The task this process runs, from the environment (see the module docstring)."""
    names = (
        ("THESEUS_NUM_PROCESSES", "THESEUS_PROCESS_ID")
        if env_int("THESEUS_NUM_PROCESSES") is not None
        else ("SLURM_NTASKS", "SLURM_PROCID")
    )
    count, index = env_int(names[0]) or 1, env_int(names[1])
    if index is None and count > 1:
        raise UserError(
            f"{names[0]}={count} but {names[1]} is not set; set it to this process's index"
        )
    if not 0 <= (index or 0) < count:
        raise UserError(f"{names[1]}={index} is outside 0..{count - 1}")
    return Task(index or 0, count)
