"""`theseus checkpoints RUN`: a run's checkpoints as a table, with the losses at their steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from theseus.checkpoint import StoredCheckpoint, stored_checkpoints, twin_folder
from theseus.errors import UserError
from theseus.training.metrics import interval_records, read_metrics

HEADER = ("step", "written (UTC)", "size", "loss", "val_loss", "")
RIGHT_ALIGNED = {"step", "size", "loss", "val_loss"}


@dataclass(frozen=True)
class Row:
    checkpoint: StoredCheckpoint
    loss: Any  # a number, or a string for a value metrics.jsonl kept as text ("nan"); None: none
    val_loss: Any


def run_folders(given: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) of a run given by either: OUT/runs/P/G/NAME and
    OUT/checkpoints/P/G/NAME name each other. A checkpoint folder outside that layout is both
    (it has no metrics.jsonl, so no losses)."""
    path = Path(given).expanduser().resolve()
    if not path.is_dir():
        raise UserError(
            f"no such run folder: {path}; give a run folder (OUT/runs/PROJECT/GROUP/NAME)"
        )
    run_dir, checkpoint_dir = twin_folder(path, "runs"), twin_folder(path, "checkpoints")
    if run_dir is None or checkpoint_dir is None:
        return path, path
    return run_dir, checkpoint_dir


def checkpoint_rows(given: str | Path) -> list[Row]:
    """The run's complete checkpoints, oldest first, each with the training loss logged at its
    step (or the last line before it) and the validation loss of exactly its step."""
    run_dir, checkpoint_dir = run_folders(given)
    checkpoints = stored_checkpoints(checkpoint_dir) if checkpoint_dir.is_dir() else []
    if not checkpoints:
        raise UserError(
            f"no checkpoints under {checkpoint_dir}; a run saves one every "
            "logging.checkpoint_interval steps and at its end: run it (or give a run that has)"
        )
    records = read_metrics(run_dir / "metrics.jsonl")
    # a later line of the same step wins: it is what a resumed run wrote last
    training = sorted(interval_records(records), key=lambda r: r["step"])
    validation = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    rows = []
    for checkpoint in checkpoints:
        before = [r["loss"] for r in training if r["step"] <= checkpoint.step]
        loss = before[-1] if before else None
        rows.append(Row(checkpoint, loss, validation.get(checkpoint.step)))
    return rows


def best_step(rows: list[Row]) -> int | None:
    """The step of the lowest finite validation loss (what logging.keep_best keeps)."""
    scored = [r for r in rows if isinstance(r.val_loss, int | float) and math.isfinite(r.val_loss)]
    return min(scored, key=lambda r: r.val_loss).checkpoint.step if scored else None


def checkpoint_table(given: str | Path) -> str:
    """An aligned plain-text table of the run's checkpoints; the newest is marked `latest`, the
    one with the lowest validation loss `best`."""
    rows = checkpoint_rows(given)
    best, latest = best_step(rows), rows[-1].checkpoint.step
    lines = [HEADER]
    for row in rows:
        step = row.checkpoint.step
        marks = [mark for mark, at in (("latest", latest), ("best", best)) if at == step]
        lines.append(
            (
                str(step),
                row.checkpoint.written.strftime("%Y-%m-%d %H:%M:%S"),
                _size(row.checkpoint.size),
                _loss(row.loss),
                _loss(row.val_loss),
                ", ".join(marks),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if name in RIGHT_ALIGNED else cell.ljust(width)
            for name, cell, width in zip(HEADER, line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def _loss(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n_bytes} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
