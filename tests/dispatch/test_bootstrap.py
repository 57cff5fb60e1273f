"""`theseus bootstrap`: the script a submission would run, written for someone to start by hand,
run here as a user would: with `sbatch` on the test cluster, and with `bash` on a host whose
JuiceFS volume it mounts. It must carry no secret, in its text or in the files it packs."""

from __future__ import annotations

import base64
import gzip
import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, ArgvWatch, cli, wait_until, write_dispatch

# they run jobs on the test cluster (SLURM, sshd, JuiceFS) that scripts/testcluster/up.sh starts
pytestmark = pytest.mark.cluster


def packed(script: str) -> dict[str, bytes]:
    """The tarballs a script carries (the code snapshot, the job's folder), uncompressed."""
    found = {}
    for marker in ("THESEUS_SNAPSHOT", "THESEUS_JOB"):
        body = re.search(rf"<<'{marker}'.*?\n(.*?)\n{marker}\n", script, flags=re.S)
        assert body is not None, f"no {marker} payload"
        found[marker] = gzip.decompress(base64.b64decode(body.group(1)))
    return found


def assignment(script: str, name: str) -> str:
    """The value the script gives variable `name` (written shell-quoted)."""
    line = re.search(rf"^{name}=(.*)$", script, flags=re.M)
    assert line is not None, name
    return shlex.split(line.group(1))[0]


def slurm_job(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout


def test_a_script_sbatched_by_hand_runs_with_the_resources_asked_for(
    shared: Path, home: Path, count_yaml: Path, tmp_path: Path
) -> None:
    root, work = shared / "output", shared / "work"
    dispatch = write_dispatch(home.parent / "d.yaml", root, work, hosts=["lab-slurm"])
    project = "p" + uuid.uuid4().hex[:8]
    script_path = tmp_path / "run me.sh"
    written = cli(
        "bootstrap",
        "by-sbatch",
        str(count_yaml),
        str(script_path),
        "count.steps=3",
        *("--load", COUNTJOB, "-p", project, "-d", str(dispatch), "--cluster", "lab"),
        *("--mem", "100M", "--cpus", "2", "--target", "dev"),
    )
    assert written.returncode == 0, written.stderr
    assert "`sbatch" in written.stderr and "lab-slurm" in written.stderr, written.stderr
    script = script_path.read_text()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --mem=100M" in directives and "#SBATCH --cpus-per-task=2" in directives
    assert not [d for d in directives if d.startswith("#SBATCH --output")], "the user's to choose"
    assert oct(script_path.stat().st_mode & 0o777) == "0o700", "it holds the stage configs"

    # As a user would: sbatch on the login node, from a folder of theirs.
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    wait_until(
        lambda: "JobState=COMPLETED" in slurm_job(job_id) or "JobState=FAILED" in slurm_job(job_id)
    )
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "JobState=COMPLETED" in slurm_job(job_id), log
    assert "done at step 3" in log and "finished with exit code 0" in log, log
    assert (root / "runs" / project / "default" / "by-sbatch" / "metrics.jsonl").read_text().count(
        "\n"
    ) == 3
    job = slurm_job(job_id)
    assert "MinMemoryNode=100M" in job and "CPUs/Task=2" in job, job
    # --target: its group is installed on top of the host's, in an environment of its own
    lib = (Path(assignment(script, "JOB_DIR")) / "lib.sh").read_text()
    assert "UV_GROUP_ARGS=(--group all --group cpu --group dev)" in lib
    assert (Path(assignment(lib, "VENV")) / "bin" / "pytest").exists()


def test_a_script_run_with_bash_mounts_juicefs_and_holds_no_secret(
    shared: Path, home: Path, count_yaml: Path, lab: dict[str, str], tmp_path: Path
) -> None:
    """A cluster the dispatch file names no host of: the script is run by hand with bash."""
    password = lab["META_PASSWORD"]
    juicefs = lab["THESEUS_TESTCLUSTER_JUICEFS"]
    mount_point = shared / f"jfs {uuid.uuid4().hex[:6]}"
    mount_point.mkdir(parents=True)
    cluster = {
        "root": str(mount_point),
        "work": str(shared / "work" / "local"),
        # the password in the URL, as the reference system writes it: moved to META_PASSWORD
        "mount": lab["THESEUS_TESTCLUSTER_META_URL"].replace("://", f"://:{password}@", 1),
        "cache_dir": str(shared / "jfs-cache"),
    }
    dispatch = home.parent / "jfs.yaml"
    dispatch.write_text(yaml.safe_dump({"clusters": {"lab": cluster}}))
    project = "p" + uuid.uuid4().hex[:8]
    script_path = tmp_path / "by-bash.sh"
    args = ["--load", COUNTJOB, "-p", project, "--cluster", "lab", "count.steps=2"]
    written = cli(
        "bootstrap",
        "by-bash",
        str(count_yaml),
        str(script_path),
        *args,
        "--dispatch-config",
        str(dispatch),
    )
    assert written.returncode == 0, written.stderr
    assert "META_PASSWORD" in written.stderr and password not in written.stderr
    script = script_path.read_text()
    comments = " ".join(line[2:] for line in script.splitlines() if line.startswith("# "))
    assert "password from META_PASSWORD in the environment it runs with" in comments, comments
    assert password not in script
    assert not [name for name, tar in packed(script).items() if password.encode() in tar]

    env = {
        **os.environ,
        "META_PASSWORD": password,
        "PATH": f"{Path(juicefs).parent}:{os.environ['PATH']}",
    }
    watch = ArgvWatch(password.encode())
    try:
        ran = subprocess.run(
            ["bash", str(script_path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        watch.stop()
        if subprocess.run(["mountpoint", "-q", str(mount_point)]).returncode == 0:
            subprocess.run([juicefs, "umount", str(mount_point)], env=env, check=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (
        f"mounting JuiceFS at {mount_point}" in ran.stdout
        and f"unmounted {mount_point}" in ran.stdout
    )
    assert watch.scans > 10 and not watch.hits, "the password must not be on any command line"
    job_dir = Path(assignment(script, "JOB_DIR"))
    assert not [
        f for f in job_dir.rglob("*") if f.is_file() and password.encode() in f.read_bytes()
    ]
    subprocess.run(
        [juicefs, "mount", "-d", lab["THESEUS_TESTCLUSTER_META_URL"], str(mount_point)],
        check=True,
        env=env,
        capture_output=True,
    )
    try:
        metrics = mount_point / "runs" / project / "default" / "by-bash" / "metrics.jsonl"
        assert metrics.read_text().count("\n") == 2, "the outputs went into the volume"
    finally:
        subprocess.run([juicefs, "umount", str(mount_point)], env=env, check=True)
