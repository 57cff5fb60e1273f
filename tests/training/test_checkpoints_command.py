"""`theseus checkpoints RUN` lists a real run's checkpoints with the losses of metrics.jsonl, and
`logging.keep_best` keeps the checkpoint of the lowest validation loss outside the rotation,
across a resume."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.training.conftest import ckpt_dir, cli_args, run_dir
from theseus.cli import main
from theseus.training.metrics import read_metrics

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _table(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    """Run `theseus checkpoints ARGS` and read its table back: one dict per row, by header."""
    capsys.readouterr()
    assert main(["checkpoints", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() == ["step", "written", "(UTC)", "size", "loss", "val_loss"]
    # aligned: every row's time starts under the header's, and right-aligned columns end together
    for row in rows:
        assert re.search(r"\d{4}-\d\d-\d\d ", row).start() == header.index("written")
        assert len(row[: header.index("val_loss") + len("val_loss")].rstrip()) == len(
            header.rstrip()
        )
    names = ["step", "written", "size", "loss", "val_loss", "marks"]
    split = [re.split(r"\s{2,}", row.strip()) for row in rows]  # marks may be absent: ""
    return [dict(zip(names, [*cells, ""][: len(names)], strict=True)) for cells in split]


def _steps_on_disk(root: Path, name: str) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir(root, name).iterdir() if p.name.isdigit())


def _val_losses(root: Path, name: str) -> dict[int, float]:
    records = read_metrics(run_dir(root, name) / "metrics.jsonl")
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def _bytes(shown: str) -> float:
    number, unit = shown.split()
    return float(number) * UNITS[unit]


@pytest.mark.slow
def test_the_table_lists_each_checkpoint_with_its_losses_and_marks(root, train_yaml, capsys):
    """6 steps, a checkpoint every 2, validation every 4 (and at the end): steps 2, 4, 6, the
    first without a validation loss."""
    name = "listed"
    started = datetime.now(UTC).replace(microsecond=0)
    overrides = (
        "training.steps=6",
        "logging.checkpoint_interval=2",
        "logging.val_interval=4",
        "logging.val_batches=2",
    )
    assert main(cli_args(name, train_yaml, root, *overrides)) == 0
    records = read_metrics(run_dir(root, name) / "metrics.jsonl")
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = _val_losses(root, name)
    assert sorted(val) == [4, 6]
    best = min(val, key=val.get)

    rows = _table(capsys, str(run_dir(root, name)))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert [r["loss"] for r in rows] == [f"{train[s]:.4f}" for s in (2, 4, 6)]
    assert [r["val_loss"] for r in rows] == ["-", f"{val[4]:.4f}", f"{val[6]:.4f}"]
    marks = {int(r["step"]): r["marks"] for r in rows}
    assert marks == {2: "", 4: "", 6: "latest"} | {best: "latest, best" if best == 6 else "best"}
    written = [datetime.fromisoformat(r["written"]).replace(tzinfo=UTC) for r in rows]
    assert started - timedelta(seconds=1) <= written[0] <= written[1] <= written[2]
    assert written[2] <= datetime.now(UTC)
    for row in rows:
        folder = ckpt_dir(root, name) / row["step"]
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert _bytes(row["size"]) == pytest.approx(size, rel=0.01)

    # the checkpoint folder names the same run; a training line missing at a checkpoint's step
    # (a line lost to a crash) gives way to the last one before it
    assert _table(capsys, str(ckpt_dir(root, name))) == rows
    metrics = run_dir(root, name) / "metrics.jsonl"
    training_line_of_4 = json.dumps(next(r for r in records if r["step"] == 4 and "loss" in r))
    lines = metrics.read_text().splitlines()
    assert training_line_of_4 in lines
    metrics.write_text("".join(f"{line}\n" for line in lines if line != training_line_of_4))
    assert [r["loss"] for r in _table(capsys, str(run_dir(root, name)))] == [
        f"{train[s]:.4f}" for s in (2, 3, 6)
    ]


@pytest.mark.slow
def test_keep_best_keeps_the_lowest_validation_loss_outside_the_rotation_across_a_resume(
    root, train_yaml, capsys
):
    """checkpoint_keep=1 with a validation at every checkpoint. At lr 0.03 the validation loss
    bottoms out at step 4 and rises after it; resumed at lr 0.3 it stays above that. Rotation
    alone would keep only the newest."""
    name = "keep-best"
    overrides = (
        "logging.checkpoint_interval=2",
        "logging.val_interval=2",
        "logging.val_batches=2",
        "logging.checkpoint_keep=1",
        "logging.keep_best=true",
        "optimization.schedule=constant",
        "optimization.warmup_steps=0",
    )
    first = ("training.steps=8", "optimization.lr=0.03")
    assert main(cli_args(name, train_yaml, root, *overrides, *first)) == 0
    val = _val_losses(root, name)
    assert sorted(val) == [2, 4, 6, 8]
    assert min(val, key=val.get) == 4 and val[6] > val[4] and val[8] > val[4], val
    assert _steps_on_disk(root, name) == [4, 8]  # 2 and 6 rotated out, 4 kept as the best

    # resumed (the best so far read back from its checkpoint), a higher rate: 10 and 12 are worse
    resumed = ("training.steps=12", "optimization.lr=0.3")
    assert main(cli_args(name, train_yaml, root, *overrides, *resumed)) == 0
    val = _val_losses(root, name)
    assert sorted(val) == [2, 4, 6, 8, 10, 12]
    assert min(val, key=val.get) == 4, val
    assert _steps_on_disk(root, name) == [4, 12]

    rows = _table(capsys, str(run_dir(root, name)))
    assert [(int(r["step"]), r["val_loss"], r["marks"]) for r in rows] == [
        (4, f"{val[4]:.4f}", "best"),
        (12, f"{val[12]:.4f}", "latest"),
    ]


def test_a_missing_run_folder_is_one_line_naming_the_fix(tmp_path, capsys):
    capsys.readouterr()
    assert main(["checkpoints", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no such run folder: {tmp_path / 'nowhere'}" in err
    assert "give a run folder (OUT/runs/PROJECT/GROUP/NAME)" in err


def test_a_run_without_checkpoints_is_one_line_naming_the_fix(tmp_path, capsys):
    run = tmp_path / "runs" / "p" / "g" / "young"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    capsys.readouterr()
    assert main(["checkpoints", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no checkpoints under {tmp_path / 'checkpoints' / 'p' / 'g' / 'young'}" in err
    assert "logging.checkpoint_interval" in err
