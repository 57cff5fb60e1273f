"""Loss curves as PNG: one run at the end of training, or several overlaid by `theseus plot`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from theseus.config import atomic_output, unwritable
from theseus.errors import UserError
from theseus.training.metrics import read_metrics


def metrics_file(run: str | Path) -> Path:
    """The metrics.jsonl of a run folder (or the file itself)."""
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise UserError(
            f"no metrics.jsonl at {path}; give a run folder (OUT/runs/PROJECT/GROUP/NAME)"
        )
    return path


def plot_runs(
    runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Plot training (solid) and validation (dashed) loss of each run against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise UserError("give at least one run folder to plot")
    out = Path(out).expanduser()
    why = unwritable(out.parent)
    if why:
        raise UserError(f"plot: cannot write {out}: {why}; choose another path")
    curves = []
    for run in runs:
        path = metrics_file(run)
        records = read_metrics(path)
        train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), int | float)]
        val = [
            (r["step"], r["val_loss"])
            for r in records
            if isinstance(r.get("val_loss"), int | float)
        ]
        curves.append((path, train, val))
    if not any(train or val for _, train, val in curves):
        names = ", ".join(str(path) for path, _, _ in curves)
        raise UserError(f"plot: no losses in {names} yet; give the folders of training runs")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (path, train, val) in enumerate(curves):
        label = labels[i] if labels else path.parent.name
        color = f"C{i % 10}"
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{label} train")
        if val:
            ax.plot(
                *zip(*val, strict=True),
                color=color,
                linestyle="--",
                marker="o",
                label=f"{label} val",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    kind = out.suffix.lower().lstrip(".")
    if kind not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        raise UserError(f"plot: cannot write {out}: name it .png, .pdf or .svg")
    try:
        with atomic_output(out, "plot") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out
