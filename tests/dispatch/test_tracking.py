"""status / logs / cancel / re-submit on every backend (local, ssh, slurm), with a secret in the
job's environment that must reach the job and appear in no script, log or command line."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.dispatch.conftest import (
    COUNTJOB,
    ArgvWatch,
    cli,
    state_of,
    wait_state,
    wait_until,
    write_dispatch,
)
from theseus.dispatch import records

# they submit to the test cluster (SLURM, sshd, JuiceFS) that scripts/testcluster/up.sh starts
pytestmark = pytest.mark.cluster


def files_holding(needle: bytes, *folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for path in [folder] if folder.is_file() else folder.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def metrics_step(root: Path, project: str, name: str) -> int:
    path = root / "runs" / project / "default" / name / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_status_logs_cancel_resubmit_and_secrets_on_every_backend(
    shared: Path, home: Path, lab: dict[str, str], count_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("THESEUS_TEST_SECRET_SOURCE", secret)
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    extra = {"env": {"THESEUS_TEST_SECRET": "${oc.env:THESEUS_TEST_SECRET_SOURCE}"}}
    files = {
        host: write_dispatch(
            home.parent / f"{host}.yaml", root, work, hosts=[host], cluster_extra=extra
        )
        for host in ("box", "lab-slurm")
    }
    runs = {
        "c-local": ["-d", str(files["box"]), "--cluster", "local"],
        "c-ssh": ["-d", str(files["box"])],
        "c-slurm": ["-d", str(files["lab-slurm"])],
    }
    watch = ArgvWatch(secret.encode())
    try:
        for name, args in runs.items():
            result = cli(
                "submit",
                name,
                str(count_yaml),
                "-p",
                project,
                "--load",
                COUNTJOB,
                *args,
                "count.steps=3000",
                "count.sleep=0.1",
            )
            assert result.returncode == 0, result.stderr
        for name, args in runs.items():
            wait_until(
                lambda name=name: metrics_step(root, project, name) >= 2, timeout=120, every=0.1
            )
            assert state_of(name) == "running"
            again = cli("submit", name, str(count_yaml), "-p", project, "--load", COUNTJOB, *args)
            assert again.returncode == 2 and f"{name} is still running" in again.stderr
            cancelled = cli("cancel", name)
            assert cancelled.returncode == 0, cancelled.stderr
        for name in runs:
            # following a cancelled run ends (a cancelled SLURM job is not waiting to requeue)
            follow = [sys.executable, "-m", "theseus.cli", "logs", "-f", name]
            log = subprocess.run(follow, capture_output=True, text=True, timeout=90).stdout
            assert wait_state(name, ("cancelled",), timeout=60) == "cancelled"
            assert "secret set" in log and "checkpoint saved" in log, log
        for name, args in runs.items():
            result = cli(
                "submit",
                name,
                str(count_yaml),
                "-p",
                project,
                "--load",
                COUNTJOB,
                *args,
                "count.steps=3000",
                "count.sleep=0",
            )
            assert result.returncode == 0, result.stderr
        for name in runs:
            followed = cli("logs", "-f", name)
            assert (
                "resuming from step" in followed.stdout and "done at step 3000" in followed.stdout
            ), followed.stdout
            assert state_of(name) == "completed"
        status = cli("status", "--json").stdout
        assert all(
            '"step": 3000' in line for line in status.splitlines() if line.split()[0] in runs
        ), status
        for name in runs:  # an ended run keeps its state
            late = cli("cancel", name)
            assert late.returncode == 2 and "is completed already" in late.stderr, late.stderr
            assert state_of(name) == "completed"
    finally:
        watch.stop()
    assert watch.scans > 10 and not watch.hits, (
        f"secret on the command line of processes {watch.hits}"
    )
    lab_dir = Path(lab["THESEUS_TESTCLUSTER"])
    places = [
        work,
        root / "runs" / project,
        home,
        lab_dir / "ssh" / "sshd.log",
        lab_dir / "slurm" / "log",
    ]
    assert files_holding(secret.encode(), *places) == []
    job_dirs = {
        p.parent
        for pattern in ("jobs/c-*/*/launch.sh", "local/jobs/c-*/*/launch.sh")
        for p in work.glob(pattern)
    }
    assert len(job_dirs) == 6
    for job_dir in job_dirs:
        assert os.stat(job_dir).st_mode & 0o077 == 0, "job folders are private"
        written = [p for p in job_dir.iterdir() if p.suffix in (".sh", ".yaml", ".sbatch", ".log")]
        assert written and all(os.stat(p).st_mode & 0o077 == 0 for p in written), (
            "job files are private"
        )


def test_submit_fresh_starts_over_once_and_a_requeued_job_resumes(
    shared: Path, home: Path, count_yaml: Path
) -> None:
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    box = write_dispatch(home.parent / "box.yaml", root, work, hosts=["box"])
    args = ["fresh", str(count_yaml), "-p", project, "--load", COUNTJOB, "-d", str(box)]
    assert cli("submit", *args, "--cluster", "local", "count.steps=3").returncode == 0
    wait_state("fresh", ("completed",))
    again = cli("submit", *args, "--cluster", "local", "count.steps=5", "--fresh")
    assert again.returncode == 0, again.stderr
    wait_state("fresh", ("completed",))
    log = cli("logs", "fresh").stdout
    assert "resuming from step" not in log and "done at step 5" in log, log
    # the same job script, started as SLURM starts a requeued job: it resumes
    job_dir = records.load("fresh").job_dir
    requeued = subprocess.run(
        ["bash", "-c", 'source "$1" && run_stages', "-", f"{job_dir}/lib.sh"],
        env={**os.environ, "SLURM_RESTART_COUNT": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "resuming from step 5" in requeued.stdout, requeued.stdout + requeued.stderr
    relative = cli("submit", *args, "--restore", "output/runs/default/default/x", "--dry-run")
    assert relative.returncode == 2
    assert "--restore output/runs/default/default/x is relative to this folder" in relative.stderr


@pytest.mark.parametrize("host", ["local", "box"])
def test_a_finished_run_whose_process_id_is_reused_stays_finished(
    shared: Path, home: Path, count_yaml: Path, host: str
) -> None:
    """Once a job has ended, its process id may be given to another process: that one is not
    taken for the job, by `status` or by `cancel`."""
    root, work = shared / "output", shared / "work"
    box = write_dispatch(home.parent / "reuse.yaml", root, work, hosts=["box"])
    name = f"reused-{host}-" + uuid.uuid4().hex[:6]
    where = ["--cluster", "local"] if host == "local" else ["--exclude-cluster", "local"]
    args = [name, str(count_yaml), "--load", COUNTJOB, "-d", str(box), *where, "count.steps=2"]
    assert cli("submit", *args).returncode == 0
    wait_state(name, ("completed",))
    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        pid_file = Path(records.load(name).job_dir) / "pid"
        assert len(pid_file.read_text().split()) == 2  # the id and the start time
        pid_file.write_text(f"{stranger.pid} 1\n")  # that id, given since to another process
        assert state_of(name) == "completed"
        cli("cancel", name)
        assert stranger.poll() is None, "cancel killed a process that is not the job"
    finally:
        stranger.kill()
