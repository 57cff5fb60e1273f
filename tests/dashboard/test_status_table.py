"""`theseus status` for people (aligned columns, step/total, losses, speed, ETA) and `--json`,
the older machine-readable lines."""

from __future__ import annotations

import io
import json
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from tests.dashboard.conftest import metric_line, write_run
from theseus.cli import main
from theseus.dispatch import records
from theseus.dispatch.backends import Observation
from theseus.dispatch.records import Record
from theseus.dispatch.status_table import json_line, parse_plan, status_table


def record(name: str, **fields: str) -> Record:
    values = dict(
        name=name,
        host_name="box",
        backend="ssh",
        backend_id="123",
        job_dir=f"/w/jobs/{name}",
        root="/out",
        project="p",
        group="g",
        snapshot="s",
    )
    return Record(**{**values, **fields})


def test_the_table_aligns_figures_a_person_reads() -> None:
    train = json.dumps({**metric_line(350), "loss": 2.108196973800659, "tokens_per_s": 51234.5})
    seen = [
        Observation(
            "running",
            metrics=train,
            train=train,
            val=json.dumps({"step": 300, "val_loss": 2.25}),
            plan="2026-01-02 03:04:05 long-run: 1000 steps x 8 seqs x 32 tokens (...)",
        ),
        Observation("failed", "exit 2: error: out of memory", metrics="step 12  loss 5.5"),
        Observation("queued", "Resources"),
    ]
    chosen = [record("long-run"), record("oom", host_name="lab-slurm"), record("waits")]
    lines = status_table(chosen, seen).splitlines()
    assert lines[0].split() == [
        "name", "state", "host", "step", "loss", "val_loss", "tok/s", "MFU", "ETA",
    ]  # fmt: skip
    assert lines[1].split() == [
        "long-run",
        "running",
        "box",
        "350/1000",
        "2.1082",
        "2.2500",
        "51,234",
        "25.0%",
        "3s",
    ]  # fmt: skip: 650 steps x 256 tokens at 51,234 tokens/s
    assert lines[2].split()[:6] == ["oom", "failed", "lab-slurm", "12", "5.5000", "-"]
    assert lines[2].endswith("exit 2: error: out of memory")
    assert lines[3].split() == ["waits", "queued", "box", "-", "-", "-", "-", "-", "-", "Resources"]
    # aligned: text columns start, number columns end, at the same place on every line
    states = ["state", "running", "failed", "queued"]
    assert {line.index(word) for line, word in zip(lines, states, strict=True)} == {10}
    steps = ["step", "350/1000", "12", "-"]
    assert len({line.index(word) + len(word) for line, word in zip(lines, steps, strict=True)}) == 1


def test_the_json_form_is_the_line_status_printed_before() -> None:
    seen = Observation("failed", "exit 2", metrics='{"step": 2, "loss": 0.5}')
    assert (
        json_line(record("r"), seen)
        == 'r  failed (exit 2)  box (ssh 123)  {"step": 2, "loss": 0.5}'
    )


def test_a_resumed_run_states_its_plan_again() -> None:
    log = b"a: 100 steps x 4 seqs x 8 tokens (...)\nstep 1\nb: 300 steps x 2 seqs x 16 tokens (x)\n"
    plan = parse_plan(log)
    assert plan is not None and (plan.steps, plan.tokens_per_step) == (300, 32)
    assert parse_plan(b"no plan here\n") is None


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_status_reads_a_local_run_it_submitted(tmp_path: Path) -> None:
    root = tmp_path / "out"
    write_run(root, "done", lines=40, steps=40, val_every=10)
    job = tmp_path / "jobs" / "done"
    job.mkdir(parents=True)
    (job / "status").write_text("completed\n")
    records.save(
        record("done", host_name="local", backend="local", job_dir=str(job), root=str(root))
    )
    table = cli("status")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["name", "state", "host", "step"]
    assert row.split() == [
        "done",
        "completed",
        "local",
        "40/40",
        "2.2966",
        "3.0244",
        "20,040",
        "25.0%",
        "-",
    ]
    as_json = cli("status", "--json", "done")
    assert as_json.stdout.startswith("done  completed  local (local 123)  {")
    assert json.loads(as_json.stdout.split("  ", 3)[3]) == {"step": 40, "val_loss": 4.0 - 40 / 41}
