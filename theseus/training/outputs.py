"""A run's outputs: its log, its checkpointer, and the folders it made."""

from __future__ import annotations

import shutil
from typing import Any

import jax

from theseus.checkpoint import Checkpointer
from theseus.errors import UserError
from theseus.training.metrics import RunLog
from theseus.training.settings import Settings
from theseus.training.state import RunState


class Outputs:
    """The run's log and checkpointer. A run refused before its first step (a restore that does
    not fit, a step too big for memory) leaves none of the folders it created behind."""

    def __init__(self, trainer: Any, settings: Settings, state: RunState) -> None:
        spec = self.spec = trainer.spec
        self.trainer, self.main, self.started = trainer, jax.process_index() == 0, False
        self.new_folders = [f for f in map(spec.place, ("runs", "checkpoints")) if not f.exists()]
        self.checkpointer = state.checkpointer = Checkpointer(
            spec.checkpoint_dir,
            keep_last=settings.logging.checkpoint_keep,
            keep_every=settings.logging.checkpoint_keep_every,
            keep_best=settings.logging.keep_best,
        )
        self.log = RunLog(
            spec.run_dir,
            enabled=self.main,
            config=settings.logging,
            run_name=spec.name,
            project=spec.project,
            group=spec.group,
            hyperparameters=state.identity["config"],
        )
        self.closing: list[Any] = []  # loaders

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        for thing in self.closing:
            thing.close()
        self.checkpointer.close()
        self.log.close()
        if kind is not None and issubclass(kind, UserError) and not self.started and self.main:
            for folder in self.new_folders:
                shutil.rmtree(folder, ignore_errors=True)

    def write_config(self) -> None:
        """The settings the run trains with, as a file `theseus run` takes back."""
        if self.main:
            from theseus.base.files import atomic_write

            atomic_write(self.spec.run_dir / "config.yaml", self.trainer.settings_yaml())
