"""`quick()`: configure and run a job from Python, or save it for `theseus run` / `submit`.

from theseus.quick import quick
with quick("gpt/train/pretrain", "/path/to/output", "my-run") as j:
    j.config.training.per_device_batch_size = 16
    j()                                         # run locally
    j.save("config.yaml", chip="h100", n_chips=8)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from theseus.job import ExecutionSpec, Request
from theseus.stages import Stage, override, run_stages, save_config


class QuickJob:
    """A job being set up in Python: `.config` is live and type-checked on assignment."""

    def __init__(
        self, job: str, out_path: str | Path, name: str, project: str | None, group: str | None
    ) -> None:
        self._stage = Stage.new(job)
        self.job = job
        self.out_path = Path(out_path)
        self.name = name
        self.project = project or "default"
        self.group = group or "default"

    @property
    def config(self) -> DictConfig:
        return self._stage.cfg

    def override(self, *overrides: str) -> QuickJob:
        """Apply `KEY=VALUE` strings, as on the command line."""
        override([self._stage], list(overrides))
        return self

    def spec(self, fresh: bool = False, restore: str | None = None) -> ExecutionSpec:
        return ExecutionSpec(
            self.name,
            self.out_path,
            self.project,
            self.group,
            self._stage.request,
            fresh=fresh,
            restore=restore,
        )

    def __call__(self, fresh: bool = False, restore: str | None = None) -> Any:
        """Run the job here, in this process."""
        return run_stages([self._stage], self.spec(fresh, restore))[0]

    def save(
        self,
        path: str | Path,
        chip: str | None = None,
        n_chips: int | None = None,
        n_shards: int | None = None,
    ) -> Path:
        """Write a YAML that `theseus run` and `theseus submit` accept (`n_chips=0` means CPU).

        Values `run` would refuse (a choice or bound broken, an interpolation that does not
        resolve) are refused here with the same error, and nothing is written; required values
        may still be unset, as with `theseus configure`.
        """
        from theseus.base.chips import get_chip

        request = Request(get_chip(chip).name if chip else None, n_chips, n_shards)
        request.check("save()")
        # the file's request only: the job run here keeps its own
        return save_config(dataclasses.replace(self._stage, request=request), path)


@contextlib.contextmanager
def quick(
    job: str, out_path: str | Path, name: str, project: str | None = None, group: str | None = None
) -> Iterator[QuickJob]:
    """Set up `job` to run as `name` under `out_path`; see the module docstring."""
    yield QuickJob(job, out_path, name, project, group)
