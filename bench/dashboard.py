"""How fast the dashboard answers: a run page over 100k metric lines, and the list of 200 runs.

    uv run python bench/dashboard.py [--lines 100000] [--runs 200] [--repeats 20]

For each page: time to first byte of the page and of the data it draws (`/api/metrics`,
`/api/runs`), over HTTP from this process, and the full page load in Debian's chromium (driven by
Playwright): from navigation until the page says its data is drawn. A fresh server's first
answer (nothing read yet: the 100k lines parsed) and the first page load are printed on their
own; then p50/p95 over --repeats loads, each in a new browser context (one page load warms the
browser first), and as a reference the same loads of a stylesheet of the same server: what
the browser itself costs. Goal: p95 <= 1 s for both pages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from theseus.dashboard.server import Dashboard

GOAL = 1.0


def write_run(root: Path, name: str, lines: int) -> None:
    """A run folder as a trainer leaves it, with `lines` training lines (a validation line every
    500) and a log that states its plan."""
    folder = root / "runs" / "bench" / "default" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("job: gpt/train/pretrain\nconfig:\n  seed: 1\n")
    (folder / "log.txt").write_text(
        f"2026-01-01 00:00:00 {name}: {lines} steps x 64 seqs x 1024 tokens (...)\n"
    )
    with (folder / "metrics.jsonl").open("w") as out:
        for step in range(1, lines + 1):
            loss = 2.5 + 8 * math.exp(-step / 3000) + 0.05 * math.sin(step)
            line = {"step": step, "loss": loss, "lr": 6e-4, "grad_norm": 0.3 + 0.01 * (step % 9)}
            line |= {"tokens_per_s": 5.1e5, "mfu": 0.41, "tokens": step * 65536}
            out.write(json.dumps(line) + "\n")
            if step % 500 == 0:
                out.write(json.dumps({"step": step, "val_loss": loss + 0.05}) + "\n")


def first_byte(port: int, path: str) -> float:
    """Seconds from sending a GET until the first byte of the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read(1)
    elapsed = time.perf_counter() - started
    response.read()
    connection.close()
    return elapsed


def page_load(browser, url: str, ready: str) -> float:
    """Seconds from navigation until `ready` (a selector the page sets once its data is drawn)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(ready, timeout=60_000)
    elapsed = time.perf_counter() - started
    context.close()
    return elapsed


def report(name: str, samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    print(f"  {name:<34} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   (n={len(ordered)})")
    return p50, p95


def measure(
    browser, port: int, url: str, page: str, data: str, ready: str, repeats: int
) -> list[tuple[str, float, float]]:
    """A fresh server's first answer, a first page load, then `repeats` loads of each figure."""
    cold = first_byte(port, data)
    print(f"  {'first data request, fresh server':<34} {cold * 1000:7.1f} ms  (reads every file)")
    first = page_load(browser, url, ready)
    print(f"  {'first page load':<34} {first * 1000:7.1f} ms")
    rows = []
    sampled: dict[str, Callable[[], float]] = {
        "time to first byte, page": lambda: first_byte(port, page),
        "time to first byte, data": lambda: first_byte(port, data),
        "full page load (chromium)": lambda: page_load(browser, url, ready),
    }
    for what, sample in sampled.items():
        p50, p95 = report(what, [sample() for _ in range(repeats)])
        rows.append((what, p50, p95))
    # the reference: the browser's own cost of a new context and a navigation, on a stylesheet
    # of the same server
    blank = url.split("/run?")[0].rstrip("/") + "/static/style.css"
    report(
        "reference: a stylesheet, same way",
        [page_load(browser, blank, "body") for _ in range(repeats)],
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="metric lines of the long run")
    parser.add_argument("--runs", type=int, default=200, help="runs in the list")
    parser.add_argument("--repeats", type=int, default=20, help="loads per figure")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="theseus-bench-dashboard-") as tmp:
        long_root, many_root = Path(tmp, "long"), Path(tmp, "many")
        write_run(long_root, "long", args.lines)
        for i in range(args.runs):
            write_run(many_root, f"run-{i:03d}", 300)
        worst = 0.0
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, args=["--no-sandbox"]
            )
            page_load(browser, "about:blank", "body")  # the browser's own start is not measured
            run_id = urllib.parse.quote("0/bench/default/long", safe="")
            pages = [
                (
                    f"run page, {args.lines:,} metric lines",
                    long_root,
                    f"/run?run={run_id}",
                    f"/api/metrics?run={run_id}&x=step",
                    "body[data-ready='1'][data-shown='1']",
                ),
                (
                    f"run list, {args.runs} runs",
                    many_root,
                    "/",
                    "/api/runs",
                    "body[data-ready='1']",
                ),
            ]
            for title, root, page, data, ready in pages:
                dashboard = Dashboard([root], "127.0.0.1", 0).start()
                try:
                    print(title)
                    url = dashboard.url.rstrip("/") + page
                    rows = measure(browser, dashboard.port, url, page, data, ready, args.repeats)
                    worst = max(worst, *(p95 for _, _, p95 in rows))
                finally:
                    dashboard.stop()
            browser.close()
    verdict = "met" if worst <= GOAL else "missed"
    print(f"worst p95 {worst * 1000:.1f} ms; goal <= {GOAL * 1000:.0f} ms: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
