"""The dashboard's API, served for real on 127.0.0.1: the runs it lists, a run's details, and
what it refuses (paths outside its roots, requests not addressed to it, changes not in JSON)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.dashboard.conftest import write_run
from theseus.dispatch import records
from theseus.dispatch.records import Record

REPO = Path(__file__).resolve().parents[2]


def get(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, Any, Any]:
    """(status, body as JSON or text, headers) of one request."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body, head = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, body, head = error.code, error.read(), error.headers
    try:
        return status, json.loads(body), head
    except ValueError:
        return status, body.decode(errors="replace"), head


def test_the_list_shows_every_run_with_its_figures(tmp_path: Path, serve) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_run(first, "done", lines=30, steps=30)
    write_run(second, "partway", lines=10, steps=100, project="proj", group="grp")
    lock = second / "runs" / "proj" / "grp" / ".partway.lock"  # what a running `theseus run` holds
    lock.write_text(f"process {os.getpid()} on {os.uname().nodename}")
    dashboard = serve(first, second)
    status, body, _ = get(dashboard.url + "api/runs")
    assert status == 200 and body["roots"] == [str(first), str(second)]
    runs = {run["name"]: run for run in body["runs"]}
    done, partway = runs["done"], runs["partway"]
    assert done["id"] == "0/p/g/done" and partway["id"] == "1/proj/grp/partway"
    assert (done["state"], done["step"], done["total"], done["eta_s"]) == (
        "completed",
        30,
        30,
        None,
    )
    assert partway["state"] == "running" and (partway["step"], partway["total"]) == (10, 100)
    assert round(partway["eta_s"], 3) == round(90 * 256 / 20010.0, 3)
    assert partway["started"] == 1767323045  # 2026-01-02 03:04:05 UTC, the log's first line
    assert done["val_loss"] == 4.0 - 30 / 31 and done["mfu"] == 0.25


def test_a_run_page_has_its_config_checkpoints_samples_and_log(tmp_path: Path, serve) -> None:
    folder = write_run(tmp_path, "r", lines=20)
    (folder / "samples.txt").write_text("def main(): pass\n")
    step = tmp_path / "checkpoints" / "p" / "g" / "r" / "10"
    (step / "meta").mkdir(parents=True)
    (step / "meta" / "x").write_bytes(b"0" * 100)
    (step.parent / "15").mkdir()  # no meta: still being written, not a checkpoint
    dashboard = serve(tmp_path)
    status, run, _ = get(dashboard.url + "api/run?run=0/p/g/r&full=1")
    assert status == 200 and run["config"].startswith("job: gpt/train/pretrain")
    assert [(c["step"], c["size"]) for c in run["checkpoints"]] == [(10, 100)]
    assert run["checkpoints"][0]["val_loss"] == 4.0 - 10 / 21
    assert run["samples"] == [{"name": "samples.txt", "text": "def main(): pass\n"}]
    assert run["resume"] == f"theseus run r {folder}/config.yaml {tmp_path} -p p -g g"
    _, log, _ = get(dashboard.url + "api/log?run=0/p/g/r")
    assert log["path"] == f"{folder}/log.txt" and "20 steps x 8 seqs" in log["text"]
    _, config, head = get(dashboard.url + "api/config?run=0/p/g/r")
    assert config.startswith("job:") and "attachment" in head["content-disposition"]


def test_polling_gets_new_points_and_nothing_when_nothing_changed(tmp_path: Path, serve) -> None:
    folder = write_run(tmp_path, "r", lines=10, val_every=0)
    dashboard = serve(tmp_path)
    _, first, _ = get(dashboard.url + "api/metrics?run=0/p/g/r")
    assert first["counts"]["loss"] == 10
    _, same, _ = get(dashboard.url + f"api/metrics?run=0/p/g/r&since={first['version']}")
    assert same == {"version": first["version"], "unchanged": True}
    with (folder / "metrics.jsonl").open("a") as out:
        out.write(json.dumps({"step": 11, "loss": 1.0}) + "\n")
    _, moved, _ = get(dashboard.url + f"api/metrics?run=0/p/g/r&since={first['version']}")
    assert moved["counts"]["loss"] == 11 and moved["series"]["loss"][1][-1] == 1.0


def test_the_compare_view_lists_the_config_keys_that_differ(tmp_path: Path, serve) -> None:
    base = "job: gpt/train/pretrain\nconfig:\n  optimization:\n    lr: {lr}\n  seed: 1\n{extra}"
    write_run(tmp_path, "a", config=base.format(lr=0.003, extra=""))
    write_run(tmp_path, "b", config=base.format(lr=0.001, extra="  logging:\n    interval: 5\n"))
    dashboard = serve(tmp_path)
    _, diff, _ = get(dashboard.url + "api/diff?run=0/p/g/a&run=0/p/g/b")
    assert diff["keys"] == [
        {"key": "logging.interval", "values": [None, "5"]},
        {"key": "optimization.lr", "values": ["0.003", "0.001"]},
    ]


def test_paths_in_urls_cannot_leave_the_roots(tmp_path: Path, serve) -> None:
    root = tmp_path / "root"
    write_run(root, "inside")
    write_run(tmp_path / "elsewhere", "secret")
    (root / "runs" / "p" / "g" / "link").symlink_to(
        tmp_path / "elsewhere" / "runs" / "p" / "g" / "secret"
    )
    dashboard = serve(root)
    for bad in [
        "0/p/g/../../../elsewhere/runs/p/g/secret",
        "0/p/g/..",
        "0/../../elsewhere/runs",
        "0/p/g/link",  # a link out of the root
        "1/p/g/inside",  # no such root
        "0/p/g/inside/../inside",
        "@../../etc/passwd",
        "/etc/passwd",
    ]:
        for api in ("run", "log", "metrics", "config"):
            query = urllib.parse.urlencode({"run": bad})
            status, body, _ = get(dashboard.url + f"api/{api}?{query}")
            assert status == 404, (bad, api, body)
    for path in ["static/../server.py", "static/%2e%2e/server.py", "static/..%2fserver.py"]:
        status, body, _ = get(dashboard.url + path)
        assert status == 404 and "Guard" not in str(body), path
    assert get(dashboard.url + "api/run?run=0/p/g/inside")[0] == 200


def test_only_requests_addressed_to_this_machine_are_answered(tmp_path: Path, serve) -> None:
    """A page of another site reaching 127.0.0.1 through a name it controls (DNS rebinding)
    gets nothing; a change must come as JSON (a form of another site cannot send it)."""
    dashboard = serve(tmp_path)
    status, body, _ = get(dashboard.url + "api/runs", {"Host": "evil.example:8765"})
    assert status == 403 and "127.0.0.1" in body
    for headers in (
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "application/json", "origin": "http://evil.example"},
    ):
        status, _, _ = get(dashboard.url + "api/cancel", headers, b'{"run": "@x", "confirm": "x"}')
        assert status == 403, headers
    _, page, head = get(dashboard.url)
    assert "default-src 'self'" in head["content-security-policy"] and "<table" in page


def test_cancel_needs_a_submitted_run_and_its_name(tmp_path: Path, serve) -> None:
    write_run(tmp_path, "folder-only")
    job = tmp_path / "job"
    job.mkdir()
    (job / "status").write_text("completed\n")
    fields = dict(host_name="local", backend="local", backend_id="1", job_dir=str(job))
    records.save(
        Record(name="sub", root=str(tmp_path), project="p", group="g", snapshot="s", **fields)
    )
    write_run(tmp_path, "sub")
    dashboard = serve(tmp_path)
    _, listed, _ = get(dashboard.url + "api/runs")
    sub = next(r for r in listed["runs"] if r["name"] == "sub")
    assert sub["submitted"] and sub["state"] == "completed" and sub["id"] == "0/p/g/sub"

    def cancel(run: str, confirm: str) -> tuple[int, Any]:
        body = json.dumps({"run": run, "confirm": confirm}).encode()
        status, answer, _ = get(
            dashboard.url + "api/cancel", {"content-type": "application/json"}, body
        )
        return status, answer

    assert cancel("0/p/g/folder-only", "folder-only") == (
        409,
        {"error": "folder-only was not submitted"},
    )
    assert cancel("0/p/g/sub", "other")[0] == 400
    json_header = {"content-type": "application/json"}
    assert get(dashboard.url + "api/cancel", json_header, b"not json")[0] == 400
    status, answer = cancel("0/p/g/sub", "sub")
    assert status == 409 and "is completed already" in answer["error"]
    _, run, _ = get(dashboard.url + "api/run?run=0/p/g/sub")
    assert (
        run["resume"]
        == f"theseus submit sub {tmp_path}/runs/p/g/sub/config.yaml -p p -g g --cluster local"
    )


def test_any_other_address_needs_the_printed_token(tmp_path: Path) -> None:
    """The one test that listens beyond 127.0.0.1: without the token nothing is answered."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "theseus.cli",
            "dashboard",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--root",
            str(tmp_path),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "THESEUS_HOME": str(tmp_path / "home")},
    )
    try:
        line = process.stderr.readline()
        found = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=([\w-]+)", line)
        assert found, line
        port, token = found.groups()
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body, _ = get(base + "api/runs")
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.1)
        assert status == 401 and "token" in body
        assert get(base + "api/runs?token=wrong")[0] == 401
        assert get(base, {"Authorization": "Bearer " + token[:-1]})[0] == 401
        status, body, head = get(base + f"api/runs?token={token}")
        assert status == 200 and body["runs"] == []
        cookie = head["set-cookie"].split(";")[0]
        assert (
            "HttpOnly" in head["set-cookie"]
            and get(base + "api/runs", {"cookie": cookie})[0] == 200
        )
        assert get(base + "api/runs", {"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
