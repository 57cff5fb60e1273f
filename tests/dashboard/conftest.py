"""Shared set-up for the dashboard tests: run folders written as a trainer writes them, the
dashboard served on 127.0.0.1 from a thread, and Debian's chromium driven by Playwright."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from theseus.dashboard.server import Dashboard

CHROMIUM = ("chromium", "chromium-browser")


@pytest.fixture(autouse=True)
def _no_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own submitted runs stay out of the tests (the cluster tests set their own)."""
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "theseus-home"))


def write_run(
    root: Path,
    name: str,
    lines: int = 20,
    *,
    project: str = "p",
    group: str = "g",
    steps: int | None = None,
    val_every: int = 5,
    config: str = "job: gpt/train/pretrain\nconfig:\n  optimization:\n    lr: 0.003\n",
) -> Path:
    """A run folder as a trainer leaves it: config.yaml, log.txt with its plan line, and
    metrics.jsonl with `lines` training lines and a validation line every `val_every`."""
    folder = root / "runs" / project / group / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config)
    total = steps or lines
    (folder / "log.txt").write_text(
        f"2026-01-02 03:04:05 {name}: {total} steps x 8 seqs x 32 tokens (per device 8); ...\n"
    )
    with (folder / "metrics.jsonl").open("w") as out:
        for step in range(1, lines + 1):
            out.write(json.dumps(metric_line(step)) + "\n")
            if val_every and step % val_every == 0:
                out.write(json.dumps({"step": step, "val_loss": 4.0 - step / (lines + 1)}) + "\n")
    return folder


def metric_line(step: int) -> dict[str, Any]:
    return {
        "step": step,
        "loss": 5.0 * math.exp(-step / 50) + 0.01 * (step % 7),
        "lr": 0.003,
        "grad_norm": 1.0 + 0.1 * (step % 3),
        "tokens_per_s": 20000.0 + step,
        "mfu": 0.25,
        "tokens": 256 * step,
    }


@pytest.fixture
def serve() -> Iterator[Callable[..., Dashboard]]:
    """Start dashboards over the given roots on 127.0.0.1 (a free port); all stop at the end."""
    started: list[Dashboard] = []

    def start(*roots: Path) -> Dashboard:
        dashboard = Dashboard(list(roots), "127.0.0.1", 0).start()
        started.append(dashboard)
        return dashboard

    yield start
    for dashboard in started:
        dashboard.stop()


def chromium_path() -> str:
    """Debian's chromium: the tests use the system browser, never a downloaded one."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "chromium is not installed: the dashboard's browser tests need it "
        "(apt-get install -y chromium; .ci/run installs it)"
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; a script error on it or a dialog (an alert an injected script would open)
    fails the test."""
    # Playwright's waits evaluate strings, which the dashboard's Content-Security-Policy forbids
    # to pages; without it the tests also show that escaping alone keeps markup out.
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, bypass_csp=True)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def dialog(d: Any) -> None:
        if d.type != "confirm":
            problems.append(f"a {d.type} dialog opened: {d.message}")
        d.dismiss()

    opened.on("dialog", dialog)
    yield opened
    context.close()
    assert not problems, problems
