"""The dashboard in a real browser (Debian's chromium driven by Playwright) over the runs of a
real tiny training: the list, a run's live charts, the compare view, and names shown as text."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import metric_line, write_run
from tests.training.conftest import (  # noqa: F401 — fixtures: the token store, the train config
    _compilation_cache,
    cli_args,
    root,
    train_yaml,
)
from theseus.cli import main

pytestmark = pytest.mark.slow

PROJECT = "dash"
STEPS = 8


@pytest.fixture(scope="module")
def trained(root: Path, train_yaml: Path) -> Path:  # noqa: F811
    """Two tiny real trainings that differ in their learning rate, validated every 4 steps."""
    for name, lr in (("tiny-a", "0.003"), ("tiny-b", "0.001")):
        overrides = [f"training.steps={STEPS}", "logging.val_interval=4", f"optimization.lr={lr}"]
        overrides += ["logging.checkpoint_interval=4", "-p", PROJECT]
        assert main(cli_args(name, train_yaml, root, *overrides)) == 0
    return root


def screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    """A picture of the page for the test log (THESEUS_SCREENSHOTS names a folder to keep them)."""
    folder = Path(os.environ.get("THESEUS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000
    return path


def lines_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def points(page: Any, chart: str, series: int = 0) -> int:
    return page.evaluate(f"window.theseus.charts[{json.dumps(chart)}].points({series})")


def test_the_list_and_a_run_page_follow_a_real_training(
    trained: Path, serve, page: Any, tmp_path: Path
) -> None:
    folder = trained / "runs" / PROJECT / "default" / "tiny-a"
    live = folder.with_name("live")  # a copy that "keeps training": lines are appended to it
    shutil.copytree(folder, live)
    dashboard = serve(trained)
    page.goto(dashboard.url)
    row = page.locator('tr[data-id="0/dash/default/tiny-a"]')
    row.wait_for()
    cells = row.locator("td").all_text_contents()
    last = [r for r in lines_of(folder) if "loss" in r][-1]
    assert (
        cells[1].startswith("tiny-a") and cells[2] == "completed" and cells[4] == f"{STEPS}/{STEPS}"
    )
    assert cells[5] == f"{last['loss']:.4f}" and cells[7] == f"{round(last['tokens_per_s']):,}"

    row.locator("a").click()
    page.wait_for_selector("body[data-ready='1'][data-shown='1']")
    records = lines_of(folder)
    assert points(page, "loss", 0) == sum("loss" in r for r in records) == STEPS
    assert points(page, "loss", 1) == sum("val_loss" in r for r in records) == 2
    for chart in ("lr", "grad_norm", "tokens_per_s", "mfu"):
        assert points(page, chart) == STEPS, chart
    assert page.locator("#checkpoints tbody tr").count() == 2
    assert "training.steps" not in page.text_content("#config") and "steps: 8" in page.text_content(
        "#config"
    )
    assert "val_loss" in page.text_content("#log")
    screenshot(page, "dashboard-run", tmp_path)

    page.goto(dashboard.url + "run?run=0/dash/default/live")
    page.wait_for_selector("body[data-ready='1']")
    assert points(page, "loss") == STEPS
    with (live / "metrics.jsonl").open("a") as out:
        for step in range(STEPS + 1, STEPS + 4):
            out.write(json.dumps(metric_line(step)) + "\n")
    appended = time.monotonic()
    page.wait_for_function(f"window.theseus.charts.loss.points(0) === {STEPS + 3}", timeout=2000)
    assert time.monotonic() - appended < 2.0


def test_the_compare_view_overlays_two_runs(
    trained: Path, serve, page: Any, tmp_path: Path
) -> None:
    dashboard = serve(trained)
    page.goto(dashboard.url)
    for name in ("tiny-a", "tiny-b"):
        page.locator(f'tr[data-id="0/dash/default/{name}"] input[type=checkbox]').check()
    page.click("#compare")
    page.wait_for_url("**/compare?**")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("document.querySelectorAll('#diff tbody tr').length > 0")
    assert page.evaluate("window.theseus.charts.loss.plot.series.map(s => s.label)") == [
        "step",
        "tiny-a",
        "tiny-b",
    ]
    assert points(page, "loss", 0) == points(page, "loss", 1) == STEPS
    assert points(page, "val_loss", 0) == points(page, "val_loss", 1) == 2
    rows = {
        r.split("\t")[0]: r.split("\t")[1:]
        for r in page.locator("#diff tbody tr").evaluate_all("rows => rows.map(r => r.innerText)")
    }
    assert rows["optimization.lr"] == ["0.003", "0.001"]
    page.select_option("#x", "tokens")
    page.wait_for_function(
        "window.theseus.charts.loss && window.theseus.charts.loss.points(1) === 8"
    )
    tokens = page.evaluate("window.theseus.charts.loss.plot.data[0]")
    assert tokens[-1] == max(
        r["tokens"]
        for r in lines_of(trained / "runs" / PROJECT / "default" / "tiny-a")
        if "tokens" in r
    )
    screenshot(page, "dashboard-compare", tmp_path)


def test_names_and_values_show_as_text(tmp_path: Path, serve, page: Any) -> None:
    """A name or value that is markup is shown as its characters, and runs nothing (the page
    fixture fails the test on any dialog or script error)."""
    name = "<img src=x onerror=alert(1)><script>alert(1)<\\script>"
    script = "<script>alert(1)</script>"
    folder = write_run(tmp_path, name, config=f"job: x\nconfig:\n  note: '{script}'\n")
    (folder / "samples.txt").write_text(f"{script}<img src=x onerror=alert(2)>\n")
    with (folder / "log.txt").open("a") as log:
        log.write(f"{script}\n")
    dashboard = serve(tmp_path)
    page.goto(dashboard.url)
    link = page.locator("td.name a")
    link.wait_for()
    assert link.text_content() == name and page.locator("td.name img, td.name script").count() == 0
    link.click()
    page.wait_for_selector("body[data-ready='1'][data-shown='1']")
    page.wait_for_function("document.getElementById('log').textContent.length > 0")
    assert page.text_content("#name").startswith(name) and page.title().startswith(name)
    assert script in page.text_content("#config") and script in page.text_content("#log")
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 4  # the page's own


def test_a_long_run_loads_downsampled(tmp_path: Path, serve, page: Any) -> None:
    write_run(tmp_path, "long", lines=100_000, val_every=1000)
    dashboard = serve(tmp_path)
    page.goto(dashboard.url + "run?run=0/p/g/long")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    drawn = page.evaluate("fetch('/api/metrics?run=0/p/g/long').then(r => r.json())")
    assert drawn["counts"]["loss"] == 100_000
    assert points(page, "loss") == len(drawn["series"]["loss"][0]) <= 2000
    assert points(page, "loss", 1) == 100
