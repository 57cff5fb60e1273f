"""Metrics files read incrementally and downsampled on the server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tests.dashboard.conftest import metric_line, write_run
from theseus.dashboard.series import LocalSource, MetricsFile, downsample


def test_downsampling_keeps_the_ends_and_every_buckets_extremes() -> None:
    values = np.sin(np.arange(100_000) / 500.0)
    values[31_337] = 50.0  # a spike a stride would skip
    values[77_777] = -50.0
    keep = downsample(values, 2000)
    assert len(keep) <= 2000 and list(keep) == sorted(set(keep))
    assert keep[0] == 0 and keep[-1] == len(values) - 1
    assert 31_337 in keep and 77_777 in keep
    assert list(downsample(values[:500], 2000)) == list(range(500))


def test_a_metrics_file_is_read_once_then_only_what_was_appended(tmp_path: Path) -> None:
    folder = write_run(tmp_path, "r", lines=10, val_every=5)
    path = folder / "metrics.jsonl"
    metrics = MetricsFile(LocalSource(path))
    chart = metrics.chart()
    assert (
        chart["lines"] == 12 and chart["counts"]["loss"] == 10 and chart["counts"]["val_loss"] == 2
    )
    assert chart["series"]["val_loss"] == [[5.0, 10.0], [4.0 - 5 / 11, 4.0 - 10 / 11]]
    assert metrics.chart() is chart  # nothing new: the same answer, not recomputed

    with path.open("a") as out:  # a whole line and a torn one (being written)
        out.write(json.dumps(metric_line(11)) + "\n" + '{"step": 12, "lo')
    chart = metrics.chart()
    assert chart["counts"]["loss"] == 11 and chart["lines"] == 13
    with path.open("a") as out:
        out.write('ss": 1.5}\nnot json\n{"no step": 1}\n')
    assert metrics.chart()["series"]["loss"][1][-1] == 1.5


def test_a_replaced_metrics_file_is_read_again(tmp_path: Path) -> None:
    """A resumed run rewrites the lines after its checkpoint through a new file."""
    path = write_run(tmp_path, "r", lines=30, val_every=0) / "metrics.jsonl"
    metrics = MetricsFile(LocalSource(path))
    assert metrics.chart()["counts"]["loss"] == 30
    kept = path.read_text().splitlines()[:12]
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("\n".join(kept) + "\n")
    os.replace(tmp, path)
    assert metrics.chart()["counts"]["loss"] == 12


def test_series_by_tokens_and_gaps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 1, "loss": 3.0, "tokens": 100},
        {"step": 2, "loss": "nan", "tokens": 200},
        {"step": 2, "val_loss": 2.5},
        {"step": 3, "loss": 2.0, "tokens": 300, "mfu": None, "eval/mc/accuracy": 0.5},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = MetricsFile(LocalSource(path))
    by_step = metrics.chart("step")["series"]
    assert by_step["loss"] == [[1.0, 2.0, 3.0], [3.0, None, 2.0]]  # NaN: a gap (null in JSON)
    assert "mfu" not in by_step and by_step["eval/mc/accuracy"] == [[3.0], [0.5]]
    by_tokens = metrics.chart("tokens")["series"]
    assert by_tokens["val_loss"] == [[200.0], [2.5]]  # a validation line's tokens: its step's
    json.dumps(metrics.chart("tokens"), allow_nan=False)


def test_a_long_run_is_downsampled(tmp_path: Path) -> None:
    path = write_run(tmp_path, "long", lines=20_000, val_every=1000) / "metrics.jsonl"
    chart = MetricsFile(LocalSource(path)).chart(points=2000)
    assert chart["counts"]["loss"] == 20_000 and len(chart["series"]["loss"][0]) <= 2000
    assert chart["series"]["val_loss"][0] == [float(s) for s in range(1000, 20_001, 1000)]
