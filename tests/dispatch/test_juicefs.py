"""JuiceFS mount logic against a real mount: the real `juicefs` CLI (1.x, from the test cluster)
with redis as metadata engine and local file storage, mounted through FUSE."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, ArgvWatch, cli, theseus, wait_state, wait_until
from theseus.dispatch import records

# they submit to the test cluster (SLURM, sshd, JuiceFS) that scripts/testcluster/up.sh starts
pytestmark = pytest.mark.cluster


def is_mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


@pytest.fixture
def volume(shared: Path, home: Path, lab: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """(mount point, dispatch file, juicefs binary, env with META_PASSWORD); unmounts at the end."""
    mount_point = shared / f"jfs {uuid.uuid4().hex[:6]}"
    mount_point.mkdir(parents=True)
    juicefs = lab["THESEUS_TESTCLUSTER_JUICEFS"]
    monkeypatch.setenv("THESEUS_TEST_META_PASSWORD", lab["META_PASSWORD"])
    cluster = {
        "root": str(mount_point),
        "work": str(shared / "work" / "local"),
        "mount": lab["THESEUS_TESTCLUSTER_META_URL"],
        "cache_dir": str(shared / "jfs-cache"),
        "cache_size": 200,
        "env": {
            "META_PASSWORD": "${oc.env:THESEUS_TEST_META_PASSWORD}",
            "PATH": f"{Path(juicefs).parent}:{os.environ['PATH']}",
        },
    }
    dispatch = home.parent / "jfs.yaml"
    dispatch.write_text(yaml.safe_dump({"clusters": {"local": cluster}}))
    env = {**os.environ, "META_PASSWORD": lab["META_PASSWORD"]}
    yield mount_point, dispatch, juicefs, env
    if is_mounted(mount_point):
        subprocess.run([juicefs, "umount", str(mount_point)], check=True, env=env)


def test_mounts_when_not_mounted_and_leaves_a_foreign_mount_alone(
    volume, count_yaml: Path, lab
) -> None:
    mount_point, dispatch, juicefs, env = volume
    project = "p" + uuid.uuid4().hex[:8]
    args = ["-d", str(dispatch), "-p", project, "--load", COUNTJOB, "count.steps=2"]
    watch = ArgvWatch(lab["META_PASSWORD"].encode())
    try:
        # Not mounted: the job mounts the volume, writes into it, and unmounts what it mounted,
        # waiting for a process it left behind to close its file in the volume.
        assert not is_mounted(mount_point)
        assert cli("submit", "jfs-a", str(count_yaml), *args, "count.linger=3").returncode == 0
        assert wait_state("jfs-a", ("completed", "failed")) == "completed"
        log = cli("logs", "jfs-a").stdout
        assert f"mounting JuiceFS at {mount_point}" in log and f"unmounted {mount_point}" in log, (
            log
        )
    finally:
        watch.stop()
    assert watch.scans > 10 and not watch.hits, (
        "the metadata password must not be on any command line"
    )
    assert not is_mounted(mount_point) and list(mount_point.iterdir()) == [], (
        "outputs went into the volume"
    )

    # Already mounted (by someone else): the job uses the mount and neither mounts nor unmounts.
    subprocess.run(
        [juicefs, "mount", "-d", lab["THESEUS_TESTCLUSTER_META_URL"], str(mount_point)],
        check=True,
        env=env,
        capture_output=True,
    )
    device = os.stat(mount_point).st_dev
    runs = mount_point / "runs" / project / "default"
    assert (runs / "jfs-a" / "metrics.jsonl").read_text().count("\n") == 2
    assert cli("submit", "jfs-b", str(count_yaml), *args).returncode == 0
    assert wait_state("jfs-b", ("completed", "failed")) == "completed"
    log = cli("logs", "jfs-b").stdout
    assert (
        f"{mount_point} is already mounted" in log
        and "mounting JuiceFS" not in log
        and "unmounted" not in log
    )
    assert is_mounted(mount_point) and os.stat(mount_point).st_dev == device
    assert (runs / "jfs-b" / "metrics.jsonl").read_text().count("\n") == 2


def test_a_password_in_the_mount_url_reaches_juicefs_only_in_its_environment(
    volume, count_yaml: Path, lab, home: Path
) -> None:
    # The reference system's form: the password in the URL, none in env; a size with a unit.
    mount_point, dispatch, _, _ = volume
    password = lab["META_PASSWORD"]
    data = yaml.safe_load(dispatch.read_text())
    cluster = data["clusters"]["local"]
    del cluster["env"]["META_PASSWORD"]
    cluster["mount"] = lab["THESEUS_TESTCLUSTER_META_URL"].replace("://", f"://:{password}@", 1)
    cluster["cache_size"] = "1G"
    dispatch.write_text(yaml.safe_dump(data))
    project = "p" + uuid.uuid4().hex[:8]
    args = ["-d", str(dispatch), "-p", project, "--load", COUNTJOB, "count.steps=2"]
    dry = cli("submit", "jfs-pw", str(count_yaml), *args, "--dry-run")
    assert dry.returncode == 0 and password not in dry.stdout + dry.stderr, dry.stderr
    watch = ArgvWatch(password.encode())
    try:
        assert cli("submit", "jfs-pw", str(count_yaml), *args).returncode == 0
        assert wait_state("jfs-pw", ("completed", "failed")) == "completed"
    finally:
        watch.stop()
    log = cli("logs", "jfs-pw").stdout
    # mounted (redis refuses a client without the password) and unmounted at the end
    assert f"mounting JuiceFS at {mount_point}" in log and f"unmounted {mount_point}" in log, log
    assert watch.scans > 10 and not watch.hits, "the password must not be on any command line"
    job_dir = Path(records.load("jfs-pw").job_dir)
    assert "JUICEFS_MOUNT_OPTIONS=(--cache-size 1024 " in (job_dir / "lib.sh").read_text()
    # nor in anything written: the job's scripts, configs and log, the run records
    written = [f for folder in (job_dir, home) for f in folder.rglob("*") if f.is_file()]
    assert job_dir / "output.log" in written and home / "runs" / "jfs-pw.json" in written
    assert not [f for f in written if password.encode() in f.read_bytes()]


def test_missing_juicefs_is_a_one_line_error(volume, count_yaml: Path) -> None:
    mount_point, dispatch, _, _ = volume
    data = yaml.safe_load(dispatch.read_text())
    del data["clusters"]["local"]["env"]["PATH"]
    dispatch.write_text(yaml.safe_dump(data))
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "juicefs").exists()
    )
    result = theseus(
        "submit",
        "jfs-c",
        str(count_yaml),
        "-d",
        str(dispatch),
        "--load",
        COUNTJOB,
        env={"PATH": path},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "juicefs is not installed" in result.stderr, (
        result.stderr
    )
    assert not is_mounted(mount_point)


def test_overlapping_jobs_share_the_mount_and_the_last_one_unmounts(
    volume, count_yaml: Path, lab
) -> None:
    mount_point, dispatch, juicefs, env = volume
    project = "p" + uuid.uuid4().hex[:8]
    args = ["-d", str(dispatch), "-p", project, "--load", COUNTJOB, "count.sleep=1"]
    # The short job mounts the volume; the long one starts while it runs and shares the mount.
    assert cli("submit", "jfs-short", str(count_yaml), *args, "count.steps=4").returncode == 0
    wait_until(lambda: "mounting JuiceFS" in cli("logs", "jfs-short").stdout, timeout=240)
    assert cli("submit", "jfs-long", str(count_yaml), *args, "count.steps=15").returncode == 0
    assert wait_state("jfs-short", ("completed", "failed")) == "completed"
    assert is_mounted(mount_point), "the short job unmounted the volume under the long one"
    short_log = cli("logs", "jfs-short").stdout
    assert "still used by 1 other job(s); left mounted" in short_log, short_log
    assert wait_state("jfs-long", ("completed", "failed")) == "completed", cli(
        "logs", "jfs-long"
    ).stdout
    long_log = cli("logs", "jfs-long").stdout
    assert "already mounted by theseus" in long_log and f"unmounted {mount_point}" in long_log, (
        long_log
    )
    # Both ended: the volume is unmounted and nothing was written under the bare mount point.
    assert not is_mounted(mount_point) and list(mount_point.iterdir()) == []
    subprocess.run(
        [juicefs, "mount", "-d", lab["THESEUS_TESTCLUSTER_META_URL"], str(mount_point)],
        check=True,
        env=env,
        capture_output=True,
    )
    runs = mount_point / "runs" / project / "default"
    assert (runs / "jfs-short" / "metrics.jsonl").read_text().count("\n") == 4
    assert (runs / "jfs-long" / "metrics.jsonl").read_text().count("\n") == 15


def test_a_job_killed_outright_does_not_keep_the_volume_mounted(volume, count_yaml: Path) -> None:
    mount_point, dispatch, _, _ = volume
    project = "p" + uuid.uuid4().hex[:8]
    args = ["-d", str(dispatch), "-p", project, "--load", COUNTJOB, "count.sleep=1"]
    assert cli("submit", "jfs-killed", str(count_yaml), *args, "count.steps=60").returncode == 0
    wait_until(lambda: "mounting JuiceFS" in cli("logs", "jfs-killed").stdout, timeout=240)
    assert cli("submit", "jfs-last", str(count_yaml), *args, "count.steps=4").returncode == 0
    wait_until(lambda: "already mounted by theseus" in cli("logs", "jfs-last").stdout, timeout=240)
    # The job that mounted the volume dies without a chance to leave it (kill -9 of its processes).
    pid = int(Path(records.load("jfs-killed").job_dir, "pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    assert wait_state("jfs-last", ("completed", "failed")) == "completed"
    log = cli("logs", "jfs-last").stdout
    assert f"unmounted {mount_point}" in log, log
    assert not is_mounted(mount_point)
