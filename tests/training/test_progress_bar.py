"""The training progress bar on narrow and wide terminals (rendered by rich, as on a TTY)."""

from __future__ import annotations

import io
import os
import pty
import re
import sys

from rich.console import Console

from tests.training.conftest import run_log
from theseus.training.metrics import summary_line, training_bar

FIGURES = {"loss": 2.34567, "lr": 6e-4, "grad_norm": 0.8123, "tokens_per_s": 504321.0, "mfu": 0.436}


def rendered(width: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    bar = training_bar(console)
    bar.add_task("train", total=50000, completed=12000, summary=summary_line(FIGURES))
    console.print(bar.make_tasks_table(bar.tasks))
    return out.getvalue().rstrip("\n")


def test_a_narrow_terminal_cuts_the_last_figures_and_keeps_step_bar_and_time_left() -> None:
    line = rendered(80)
    assert "\n" not in line and len(line) <= 80, line
    assert re.match(
        r"step 12000/50000 .{12} -:--:-- loss 2\.3457  504,321 tok/s  MFU 43\.6%", line
    ), line
    assert line.rstrip().endswith("…") and "gnorm" not in line, line


def test_a_wide_terminal_shows_every_figure() -> None:
    line = rendered(160).rstrip()
    assert line.endswith("loss 2.3457  504,321 tok/s  MFU 43.6%  lr 6.00e-04  gnorm 0.812"), line
    assert line.startswith("step 12000/50000 "), line


def test_a_slow_run_still_shows_its_time_left() -> None:
    """The bar moves once per logging interval; at 40 s an interval the time left must still
    come from the intervals seen (rich's default keeps 30 s of samples: none left to use)."""
    now = [0.0]
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.get_time = lambda: now[0]
    bar = training_bar(console)
    task = bar.add_task("train", total=100, completed=0, summary="")
    for step in (10, 20, 30):
        now[0] += 40.0
        bar.update(task, completed=step)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(bar.make_tasks_table(bar.tasks))
    assert "0:04:40" in out.getvalue(), out.getvalue()  # 70 steps at 4 s


def test_a_terminal_run_keeps_every_interval_in_its_log(tmp_path, monkeypatch) -> None:
    """On a terminal the bar shows only the latest figures; log.txt still gets each interval."""
    master, replica = pty.openpty()
    try:
        with os.fdopen(replica, "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            log = run_log(tmp_path, "tty")
            with log.progress(0, 10):
                assert log._progress is not None  # the terminal path, with its live bar
                log.update(5, summary_line(FIGURES))
            log.close()
    finally:
        os.close(master)
    assert "step 5  loss 2.3457  504,321 tok/s" in (tmp_path / "log.txt").read_text()
