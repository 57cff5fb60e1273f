"""`submit --mem/--cpus/--target` and the three names of the dispatch file option: what reaches
the job's scripts, what SLURM gives the job, and the one-line refusals."""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, cli, wait_state, write_dispatch
from tests.dispatch.test_scripts import CLUSTER, SLURM_HOST, sections
from theseus.cli import main
from theseus.dispatch import records


@pytest.mark.cluster
def test_mem_cpus_and_targets_reach_a_slurm_job(shared: Path, home: Path, count_yaml: Path) -> None:
    root, work = shared / "output", shared / "work"
    dispatch = write_dispatch(home.parent / "d.yaml", root, work, hosts=["lab-slurm"])
    project = "p" + uuid.uuid4().hex[:8]
    args = ["--load", COUNTJOB, "-p", project, "--dispatch-config", str(dispatch)]
    resources = ["--mem", "100M", "--cpus", "2", "--target", "dev"]
    submitted = cli("submit", "sized", str(count_yaml), *args, *resources, "count.steps=2")
    assert submitted.returncode == 0, submitted.stderr
    assert wait_state("sized", ("completed", "failed")) == "completed", cli("logs", "sized").stdout
    record = records.load("sized")
    job = subprocess.run(
        ["scontrol", "show", "job", record.backend_id], capture_output=True, text=True, check=True
    ).stdout
    assert "MinMemoryNode=100M" in job and "CPUs/Task=2" in job, job
    lib = (Path(record.job_dir) / "lib.sh").read_text()
    assert "UV_GROUP_ARGS=(--group all --group cpu --group dev)" in lib
    venv = shlex.split(re.search(r"^VENV=(.*)$", lib, flags=re.M).group(1))[0]
    assert (Path(venv) / "bin" / "pytest").exists(), "the dev group is installed"
    assert (root / "runs" / project / "default" / "sized" / "metrics.jsonl").exists()


def _hpc_dispatch(tmp_path: Path, host: dict) -> Path:
    dispatch = tmp_path / "d.yaml"
    dispatch.write_text(yaml.safe_dump({"clusters": {"hpc": CLUSTER}, "hosts": {"hpc": host}}))
    return dispatch


def test_mem_and_cpus_reach_the_sbatch_header_and_each_task(
    tmp_path: Path, count_yaml: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    dispatch = _hpc_dispatch(tmp_path, SLURM_HOST)
    args = ["submit", "r", str(count_yaml), "--chip", "h100", "-n", "8", "--load", COUNTJOB]
    assert main([*args, "-d", str(dispatch), "--dry-run", "--mem", "64G", "--cpus", "16"]) == 0
    files = sections(capsys.readouterr().out)
    directives = [line for line in files["job.sbatch"].splitlines() if line.startswith("#SBATCH")]
    # in place of the host's (mem 0, cpus_per_task 64), for this submission only
    assert "#SBATCH --mem=64G" in directives and "#SBATCH --cpus-per-task=16" in directives
    assert "#SBATCH --mem=0" not in directives and "#SBATCH --cpus-per-task=64" not in directives
    # srun (SLURM 22.05 on) gives each task one CPU unless told the job's count again
    assert "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK" in files["job.sbatch"]


@pytest.mark.parametrize("option", ["-d", "--dispatch", "--dispatch-config"])
def test_the_dispatch_file_option_has_three_names(
    option: str, tmp_path: Path, count_yaml: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    dispatch = _hpc_dispatch(tmp_path, SLURM_HOST)
    common = [str(count_yaml), "--chip", "h100", "-n", "8", "--load", COUNTJOB, option]
    assert main(["submit", "r", *common, str(dispatch), "--dry-run"]) == 0
    assert "/shared/work/jobs/r/" in capsys.readouterr().out
    script = tmp_path / "r.sh"
    assert main(["bootstrap", "r", str(count_yaml), str(script), *common[1:], str(dispatch)]) == 0
    assert "for cluster hpc" in capsys.readouterr().err
    assert "JOB_DIR=/shared/work/jobs/r/" in script.read_text()


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["--mem", "lots"], "--mem 'lots': expected memory per node such as 64G"),
        (["--mem", "64 G"], "--mem '64 G': expected memory per node such as 64G"),
        (["--cpus", "0"], "--cpus 0: expected at least 1 CPU per task"),
        (["--target", "a/b"], "--target 'a/b': expected a dependency group name"),
        (["--target", "nope"], "--target nope: pyproject.toml defines no dependency group"),
        (["--target", "cuda13"], "--target cuda13: cannot be installed with cuda12"),
    ],
)
def test_bad_values_are_one_line_errors(
    given: list[str], said: str, tmp_path: Path, count_yaml: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    dispatch = _hpc_dispatch(tmp_path, SLURM_HOST)
    args = ["submit", "r", str(count_yaml), "--chip", "h100", "-n", "8", "-d", str(dispatch)]
    assert main([*args, "--load", COUNTJOB, "--dry-run", *given]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and err.count("\n") == 1, err


def test_mem_and_cpus_are_refused_where_nothing_reserves_them(
    tmp_path: Path, count_yaml: Path, capsys, monkeypatch
) -> None:
    """An SSH host and this machine have no scheduler: the values would be silently ignored."""
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    box = {"type": "ssh", "ssh": "box.example", "cluster": "hpc", "chips": {"cpu": 4}}
    dispatch = _hpc_dispatch(tmp_path, box)
    args = ["submit", "r", str(count_yaml), "-d", str(dispatch), "--load", COUNTJOB, "--dry-run"]
    assert main([*args, "--mem", "8G", "--cpus", "2"]) == 2
    assert capsys.readouterr().err == (
        "error: --mem and --cpus: hpc is an SSH host, where no scheduler reserves memory or CPUs "
        "for a job; leave them out, or pick a SLURM host with --cluster\n"
    )
    assert main([*args, "--cluster", "local", "--cpus", "2"]) == 2
    assert "--cpus: local is this machine, where no scheduler" in capsys.readouterr().err
    assert main([*args, "--target", "dev"]) == 0  # a group means something everywhere
    assert "UV_GROUP_ARGS=(--group all --group cpu --group dev)" in capsys.readouterr().out
