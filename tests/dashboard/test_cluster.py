"""A run submitted to the real test cluster's SLURM (scripts/testcluster) appears in the
dashboard with its state and its metrics as they grow, read over ssh; and it is cancelled from
the dashboard."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.dispatch.conftest import (  # noqa: F401 — fixtures: the cluster, a private home
    COUNTJOB,
    cli,
    count_yaml,
    home,
    lab,
    shared,
    wait_until,
    write_dispatch,
)
from theseus.dashboard.files import ShellFiles

pytestmark = pytest.mark.cluster


def fetch(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_a_slurm_run_shows_its_state_and_live_metrics(
    shared: Path,  # noqa: F811
    home: Path,  # noqa: F811
    count_yaml: Path,  # noqa: F811
    serve,
) -> None:
    root, work = shared / "output", shared / "work"
    dispatch = write_dispatch(home.parent / "slurm.yaml", root, work, hosts=["lab-slurm"])
    name = "dash-" + uuid.uuid4().hex[:6]
    submitted = cli(
        "submit",
        name,
        str(count_yaml),
        "-p",
        "dashp",
        "--load",
        COUNTJOB,
        "-d",
        str(dispatch),
        "--exclude-cluster",
        "local",
        "--untracked",
        "count.steps=400",
        "count.sleep=0.25",
    )  # fmt: skip  (--untracked: a working tree's new files go too, as they would once committed)
    assert submitted.returncode == 0, submitted.stderr
    dashboard = serve()  # no output root: the run is known from its record only
    run_id = f"@{name}"

    def row() -> dict[str, Any]:
        runs = fetch(dashboard.url + "api/runs")["runs"]
        return next(r for r in runs if r["id"] == run_id)

    wait_until(lambda: row()["state"] == "running" and (row()["step"] or 0) >= 2, timeout=240)
    seen = row()
    assert seen["host"] == "lab-slurm" and seen["backend"] == "slurm" and seen["submitted"]
    assert dashboard.catalog.get(run_id).files.__class__ is ShellFiles  # read over ssh

    query = urllib.parse.urlencode({"run": run_id})
    first = fetch(dashboard.url + f"api/metrics?{query}")["counts"]["loss"]
    wait_until(
        lambda: fetch(dashboard.url + f"api/metrics?{query}")["counts"]["loss"] > first + 2,
        timeout=60,
    )
    chart = fetch(dashboard.url + f"api/metrics?{query}")
    steps, losses = chart["series"]["loss"]
    assert steps == [float(s) for s in range(1, len(steps) + 1)]
    assert losses == pytest.approx([1.0 / s for s in range(1, len(steps) + 1)])
    log = fetch(dashboard.url + f"api/log?{query}")
    assert log["path"].endswith("/output.log") and "step 2  loss 0.5000" in log["text"]

    done = fetch(dashboard.url + "api/cancel", {"run": run_id, "confirm": name})
    assert done == {"cancelled": name, "host": "lab-slurm"}
    wait_until(lambda: row()["state"] in ("cancelled", "preempted"), timeout=120)
