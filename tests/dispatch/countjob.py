"""A test-only job for the dispatch tests: counts steps, checkpoints on a signal, resumes.

It stands in for the trainer where a test checks the dispatch machinery itself (it imports no
JAX, so it starts fast); the end-to-end tests use the real trainer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from theseus.config import field
from theseus.errors import UserError
from theseus.job import CheckpointedJob
from theseus.registry import job

STOPPED_EARLY = 75


@dataclass
class CountConfig:
    steps: int = field("count/steps", default=5, help="steps to count")
    sleep: float = field("count/sleep", default=0.0, help="seconds per step")
    fail_at: int = field("count/fail_at", default=0, help="fail with a user error at this step")
    linger: float = field(
        "count/linger",
        default=0.0,
        help="seconds a child process keeps a file in the run folder open after the job ends",
    )


@job("test/dispatch/count")
class CountJob(CheckpointedJob[CountConfig]):
    """Count steps; checkpoint and exit 75 on SIGTERM/SIGUSR1/SIGINT."""

    CONFIG = CountConfig
    DISTRIBUTED = True  # stands in for training, which SLURM starts as several tasks

    def _latest_checkpoint(self) -> Path | None:
        path = self.spec.checkpoint_dir / "state.json"
        return path if path.exists() else None

    def _save_checkpoint(self) -> Path:
        path = self.spec.checkpoint_dir / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": self.step}))
        return path

    def _load_checkpoint(self, path: Path) -> None:
        self.step = json.loads(path.read_text())["step"]

    def run(self) -> int:
        stop: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, lambda num, frame: stop.append(num))
        self.step = 0
        latest = None if self.spec.fresh else self._latest_checkpoint()
        if latest is not None:
            self._load_checkpoint(latest)
            print(f"resuming from step {self.step}", flush=True)
        print(
            f"count: pid {os.getpid()} secret {'set' if os.environ.get('THESEUS_TEST_SECRET') else 'unset'}",
            flush=True,
        )
        print(f"echo: {os.environ.get('THESEUS_TEST_ECHO')!r}", flush=True)
        print(f"gpus: {os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
        metrics = self.spec.run_dir / "metrics.jsonl"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        while self.step < self.config.steps:
            if stop:
                self._save_checkpoint()
                print(f"stopped at step {self.step}, checkpoint saved", flush=True)
                sys.exit(STOPPED_EARLY)
            time.sleep(self.config.sleep)
            self.step += 1
            if self.step == self.config.fail_at:
                raise UserError(f"count failed at step {self.step} as asked")
            with metrics.open("a") as out:
                out.write(json.dumps({"step": self.step, "loss": 1.0 / self.step}) + "\n")
            print(f"step {self.step}  loss {1.0 / self.step:.4f}", flush=True)  # as training logs
        self._save_checkpoint()  # as training does at its last step
        print(f"done at step {self.step}", flush=True)
        if self.config.linger:
            with (self.spec.run_dir / "linger.log").open("w") as held:
                subprocess.Popen(
                    ["sleep", str(self.config.linger)], stdout=held, start_new_session=True
                )
        return self.step


@job("test/dispatch/count-alone")
class CountAlone(CountJob):
    """The count job as one that runs as one process, as training a tokenizer does."""

    DISTRIBUTED = False
