"""Loss curves as PNG: one run at the end of training, or several overlaid by `theseus plot`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from theseus.base.files import atomic_output, unwritable
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
    curves, evals = [], []
    for run in runs:
        path = metrics_file(run)
        records = read_metrics(path)
        curves.append((path, _curve(records, "loss"), _curve(records, "val_loss")))
        evals.append(records)
    if not any(train or val for _, train, val in curves):
        names = ", ".join(str(path) for path, _, _ in curves)
        raise UserError(f"plot: no losses in {names} yet; give the folders of training runs")
    labels = labels or _names([path.parent for path, _, _ in curves])
    keys = _eval_keys(evals)
    # the loss on top; below it a panel per evaluation result (eval/<task>/<metric>)
    fig, axes = plt.subplots(1 + len(keys), 1, figsize=(8, 5 + 2.5 * len(keys)), squeeze=False)
    ax = axes[0][0]
    for i, ((_, train, val), label) in enumerate(zip(curves, labels, strict=True)):
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
    _plot_evals([row[0] for row in axes[1:]], keys, evals, labels)
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


def _curve(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of `key`; a non-finite value (written as "nan" or "inf") is NaN, which
    leaves a gap in the line rather than joining its neighbours."""
    points = []
    for record in records:
        value = record.get(key)
        if isinstance(value, str) and value in ("nan", "inf", "-inf"):
            value = float("nan")
        if isinstance(value, int | float):
            points.append((record["step"], float(value)))
    return points


def _names(folders: list[Path]) -> list[str]:
    """Each run's name, with as many of its parent folders (group, project) as tell runs apart."""
    for depth in (1, 2, 3):
        names = ["/".join(folder.parts[-depth:]) for folder in folders]
        if len(set(names)) == len(names):
            return names
    return [str(folder) for folder in folders]


MAX_EVAL_PANELS = 12  # a harness group (MMLU: 57 tasks) would make a figure no one reads


def _eval_keys(runs: list[list[dict]]) -> list[str]:
    """The evaluation results (`eval/...`) any run logged, the first MAX_EVAL_PANELS of them."""
    keys = {
        key for records in runs for record in records for key in record if key.startswith("eval/")
    }
    return sorted(keys)[:MAX_EVAL_PANELS]


def _plot_evals(axes: list, keys: list[str], runs: list[list[dict]], labels: Sequence[str]) -> None:
    for ax, key in zip(axes, keys, strict=True):
        for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
            points = _curve(records, key)
            if points:
                ax.plot(*zip(*points, strict=True), color=f"C{i % 10}", marker="o", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(key.removeprefix("eval/"))
        ax.grid(alpha=0.3)
