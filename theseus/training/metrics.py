"""What a run reports: a live progress bar, `metrics.jsonl`, `log.txt`, W&B and TensorBoard.

`metrics.jsonl` is always written (one JSON object per log interval, validation lines carry
`val_loss`); Weights & Biases (`logging.wandb`, honours `WANDB_MODE=offline`) and TensorBoard
(`logging.tensorboard`) only when asked. Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TimeRemainingColumn

from theseus.base.files import atomic_write
from theseus.base.progress import fitted_progress, fixed_text
from theseus.config import field
from theseus.errors import UserError


@dataclass
class LoggingConfig:
    """How often to log, validate and checkpoint, and where metrics go."""

    interval: int = field(
        "logging/interval",
        minimum=1,
        default=10,
        help="steps between metric lines (losses are averaged over them)",
    )
    val_interval: int = field(
        "logging/val_interval", minimum=0, default=500, help="steps between validations (0 = never)"
    )
    val_batches: int = field(
        "logging/val_batches",
        minimum=0,
        default=20,
        help="validation batches of training.batch_size sequences "
        "(the same set each time and on any devices)",
    )
    checkpoint_interval: int = field(
        "logging/checkpoint_interval", minimum=1, default=1000, help="steps between checkpoints"
    )
    checkpoint_keep: int = field(
        "logging/checkpoint_keep", minimum=1, default=3, help="keep this many latest checkpoints"
    )
    checkpoint_keep_every: int | None = field(
        "logging/checkpoint_keep_every",
        minimum=1,
        default=None,
        help="also keep every checkpoint whose step is a multiple of this",
    )
    keep_best: bool = field(
        "logging/keep_best",
        default=False,
        help="also keep the checkpoint with the lowest validation loss: the best of the "
        "checkpoints written at a step that was validated (make logging.checkpoint_interval a "
        "multiple of logging.val_interval), whatever checkpoint_keep",
    )
    wandb: bool = field(
        "logging/wandb", default=False, help="log to Weights & Biases (WANDB_MODE=offline works)"
    )
    tensorboard: bool = field(
        "logging/tensorboard", default=False, help="write TensorBoard events to RUN/tensorboard"
    )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`; lines that are not one (a torn last line from a crash,
    a note written into it) are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    return [r for r in map(_record, path.read_bytes().splitlines()) if r is not None]


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int | float):
        return None
    return record


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write of the run's own files (a full disk, a folder made read-only) is a
    one-line error; the run resumes from its last checkpoint once it is fixed."""
    try:
        yield
    except OSError as exc:
        raise UserError(
            f"cannot write {path}: {exc.strerror or exc}; free space or fix its permissions, then "
            "run again to resume from the last checkpoint"
        ) from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _wandb_id(run_dir: Path) -> str:
    """The run's W&B id, kept in its folder so that every resume continues the same W&B run."""
    path = run_dir / "wandb_id"
    if not path.is_file():
        atomic_write(path, secrets.token_hex(8))
    return path.read_text(encoding="utf-8").strip()


class RunLog:
    """Writes a run's metrics and log, and shows progress; a no-op on processes other than 0."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        config: LoggingConfig,
        run_name: str,
        project: str,
        group: str,
        hyperparameters: dict[str, Any],
    ) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.console = Console(stderr=True)
        self._wandb: Any = None
        self._tensorboard: Any = None
        self._progress: Progress | None = None
        self._task: Any = None
        if not enabled:
            return
        with _writing(run_dir / "log.txt"):
            run_dir.mkdir(parents=True, exist_ok=True)
            self._log = (run_dir / "log.txt").open("a", buffering=1, encoding="utf-8")
        if config.wandb:
            import wandb

            self._wandb = wandb.init(
                project=project,
                group=group,
                name=run_name,
                dir=str(run_dir),
                config=hyperparameters,
                id=_wandb_id(run_dir),
                resume="allow",
            )
        if config.tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def info(self, message: str) -> None:
        """A line for the user (stderr) and for log.txt."""
        if not self.enabled:
            return
        self._write_log(message)
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _write_log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with _writing(self.run_dir / "log.txt"):
            self._log.write(f"{stamp} {message}\n")

    def keep_until(self, step: int) -> None:
        """Drop metric lines after `step` (a resumed run rewrites them identically) and a torn
        last line; other lines stay as they are."""
        if not self.enabled or not self.metrics_path.exists():
            return
        tmp = self.metrics_path.with_name(".metrics.jsonl.tmp")
        with _writing(self.metrics_path):
            lines = self.metrics_path.read_bytes().splitlines(keepends=True)
            if lines and not lines[-1].endswith(b"\n"):
                lines.pop()
            kept = [line for line in lines if (r := _record(line)) is None or r["step"] <= step]
            tmp.write_bytes(b"".join(kept))
            tmp.replace(self.metrics_path)

    def record(self, values: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl and forward it to W&B / TensorBoard."""
        if not self.enabled:
            return
        clean = {k: _finite(v) for k, v in values.items()}
        with _writing(self.metrics_path), self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        step = int(values["step"])
        numbers = {k: v for k, v in values.items() if k != "step" and isinstance(v, int | float)}
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, step)

    def progress(self, start: int, total: int) -> _ProgressContext:
        return _ProgressContext(self, start, total)

    def update(self, step: int, summary: str) -> None:
        """Advance the bar to `step` with the latest interval's figures."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, summary=summary)
            if summary:  # the bar shows only the latest figures; log.txt keeps them all
                self._write_log(f"step {step}  {summary}")
        elif self.enabled and summary:
            self.info(f"step {step}  {summary}")

    def close(self) -> None:
        if not self.enabled:
            return
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()
        with contextlib.suppress(OSError):  # what a full disk kept out of log.txt is on stderr
            self._log.close()


class _ProgressContext:
    def __init__(self, log: RunLog, start: int, total: int) -> None:
        self.log, self.start, self.total = log, start, total

    def __enter__(self) -> RunLog:
        log = self.log
        if log.enabled and sys.stderr.isatty():
            log._progress = training_bar(log.console)
            # the step is compiled by now; figures come with the first log interval
            log._task = log._progress.add_task(
                "train", total=self.total, completed=self.start, summary="measuring…"
            )
            log._progress.start()
        return log

    def __exit__(self, *exc: Any) -> None:
        if self.log._progress is not None:
            self.log._progress.stop()
            self.log._progress = None


def training_bar(console: Console) -> Progress:
    """Step, bar and time left, then the latest interval's figures in what is left of the line."""
    return fitted_progress(
        fixed_text("step {task.completed}/{task.total}"),
        BarColumn(bar_width=12),
        TimeRemainingColumn(),
        figures="summary",
        console=console,
        refresh_per_second=4,
        # the bar moves once per logging interval: rich's default 30 s window of speed samples
        # would hold at most one of them in a slow run, and show no time left at all
        speed_estimate_period=7 * 24 * 3600,
    )


def summary_line(values: dict[str, Any]) -> str:
    """The figures shown on the progress bar for one interval, most looked-at first (a narrow
    terminal cuts the last)."""
    parts = [f"loss {values['loss']:.4f}", f"{values['tokens_per_s']:,.0f} tok/s"]
    if values.get("mfu") is not None:
        parts.append(f"MFU {100 * values['mfu']:.1f}%")
    parts += [f"lr {values['lr']:.2e}", f"gnorm {values['grad_norm']:.3f}"]
    return "  ".join(parts)


def interval_records(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The training lines of a metrics file (validation lines excluded)."""
    return (r for r in records if "loss" in r)
