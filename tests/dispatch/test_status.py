"""What `status` says about runs that went wrong, and how `submit` copes with hosts that do: a
failed run's exit code and last words, a host that is down, an sbatch that refuses the job."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, cli, wait_state, wait_until, write_dispatch
from theseus.dispatch import records
from theseus.dispatch.backends import Backend
from theseus.dispatch.control import observe

# they submit to the test cluster (SLURM, sshd, JuiceFS) that scripts/testcluster/up.sh starts
pytestmark = pytest.mark.cluster


def submit(name: str, count_yaml: Path, project: str, *args: str):
    return cli("submit", name, str(count_yaml), "-p", project, "--load", COUNTJOB, *args)


def test_status_says_why_a_run_failed_on_every_backend(
    shared: Path, home: Path, count_yaml: Path
) -> None:
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    files = {
        host: write_dispatch(home.parent / f"{host}.yaml", root, work, hosts=[host])
        for host in ("box", "lab-slurm")
    }
    runs = {
        "f-local": ["-d", str(files["box"]), "--cluster", "local"],
        "f-ssh": ["-d", str(files["box"])],
        "f-slurm": ["-d", str(files["lab-slurm"])],
    }
    for name, args in runs.items():
        result = submit(name, count_yaml, project, *args, "count.steps=10", "count.fail_at=3")
        assert result.returncode == 0, result.stderr
    for name in runs:
        wait_state(name, ("failed",), timeout=240)
    lines = {line.split()[0]: line for line in cli("status", "--json").stdout.splitlines()}
    for name in runs:
        # the exit code, then the run's own one-line error (not the job script's closing line)
        assert "failed (exit 2: error: count failed at step 3 as asked)" in lines[name], lines
        assert '"step": 2' in lines[name], lines[name]


def test_a_job_that_runs_as_one_process_runs_on_slurm(
    shared: Path, home: Path, tmp_path: Path
) -> None:
    """SLURM starts it as one task; the coordinator its job script names does not make that
    task one of several."""
    root, work = shared / "output", shared / "work"
    alone = tmp_path / "alone.yaml"
    assert (
        cli("configure", "test/dispatch/count-alone", str(alone), "--load", COUNTJOB).returncode
        == 0
    )
    dispatch = write_dispatch(home.parent / "alone-dispatch.yaml", root, work, hosts=["lab-slurm"])
    name = "alone-" + uuid.uuid4().hex[:6]
    result = submit(name, alone, "p" + uuid.uuid4().hex[:8], "-d", str(dispatch), "count.steps=2")
    assert result.returncode == 0, result.stderr
    assert wait_state(name, ("completed", "failed"), timeout=240) == "completed", cli(
        "logs", name
    ).stdout


def test_status_asks_each_host_once_for_all_its_runs(
    shared: Path, home: Path, count_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    box = write_dispatch(home.parent / "box.yaml", root, work, hosts=["box"])
    for i in range(3):
        result = submit(f"once-{i}", count_yaml, project, "-d", str(box), "count.steps=2")
        assert result.returncode == 0, result.stderr
    for i in range(3):
        wait_state(f"once-{i}", ("completed",))
    calls: list[int] = []
    original = Backend.observe

    def counted(self: Backend, chosen: list[records.Record]):
        calls.append(len(chosen))
        return original(self, chosen)

    monkeypatch.setattr(Backend, "observe", counted)
    seen = observe(records.all_records())
    assert [s.state for s in seen] == ["completed"] * 3 and calls == [3]
    assert all('"step": 2' in s.metrics for s in seen)


def with_dead_host(path: Path, root: Path, work: Path) -> Path:
    """The `box` dispatch file with a host `dead` ahead of it: nothing listens on its port."""
    write_dispatch(path, root, work, hosts=["box"])
    data = yaml.safe_load(path.read_text())
    dead = {"type": "ssh", "ssh": "127.0.0.1", "port": 9, "cluster": "lab", "chips": {"cpu": 2}}
    data["hosts"]["dead"] = dead
    data["priority"] = ["dead", "box"]
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_host_that_is_down_is_passed_over_and_reported(
    shared: Path, home: Path, count_yaml: Path
) -> None:
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    dispatch = with_dead_host(home.parent / "d.yaml", root, work)
    result = submit("past-dead", count_yaml, project, "-d", str(dispatch), "count.steps=2")
    assert result.returncode == 0, result.stderr
    passed, submitted = result.stderr.splitlines()
    assert passed.startswith("passed over: dead is unreachable (cannot reach 127.0.0.1 over ssh")
    assert submitted.startswith("submitted past-dead to box"), result.stderr
    wait_state("past-dead", ("completed",))

    # a record on a host that is down: status says so and still reports the others
    record = records.load("past-dead")
    dead = {**record.host, "ssh": "127.0.0.1", "port": 9}
    records.save(records.Record(**{**record.__dict__, "name": "on-dead", "host": dead}))
    lines = {line.split()[0]: line for line in cli("status", "--json").stdout.splitlines()}
    assert lines["on-dead"].startswith("on-dead  unknown (cannot reach 127.0.0.1 over ssh:"), lines
    assert "  completed  box" in lines["past-dead"], lines


def test_when_every_host_is_down_the_error_says_so(
    shared: Path, home: Path, count_yaml: Path
) -> None:
    root, work = shared / "output", shared / "work"
    dispatch = with_dead_host(home.parent / "dead.yaml", root, work)
    data = yaml.safe_load(dispatch.read_text())
    del data["hosts"]["box"]
    data["priority"] = ["dead"]
    dispatch.write_text(yaml.safe_dump(data))
    result = submit("nowhere", count_yaml, "p", "-d", str(dispatch), "--exclude-cluster", "local")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no host can run 1 × cpu now: dead is unreachable (cannot reach 127.0.0.1 over ssh:" in (
        result.stderr
    ), result.stderr


def test_a_job_sbatch_refuses_leaves_no_job_folder(
    shared: Path, home: Path, count_yaml: Path
) -> None:
    root, work = shared / "output", shared / "work"
    dispatch = write_dispatch(home.parent / "s.yaml", root, work, hosts=["lab-slurm"])
    data = yaml.safe_load(dispatch.read_text())
    data["hosts"]["lab-slurm"]["partitions"] = ["nosuchpartition"]
    dispatch.write_text(yaml.safe_dump(data))
    name = "refused-" + uuid.uuid4().hex[:6]
    result = submit(name, count_yaml, "p", "-d", str(dispatch), "--exclude-cluster", "local")
    assert result.returncode == 2, result.stderr
    assert "sbatch failed on testcluster" in result.stderr and "partition" in result.stderr
    assert not list((work / "jobs" / name).glob("*")), "the refused job's folder is left behind"
    with pytest.raises(Exception, match="no submitted run"):
        records.load(name)


def test_a_waiting_slurm_run_says_why(shared: Path, home: Path, count_yaml: Path) -> None:
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    dispatch = write_dispatch(home.parent / "s.yaml", root, work, hosts=["lab-slurm"])
    args = ["-d", str(dispatch), "--exclude-cluster", "local", "-n", "2", "count.sleep=0.1"]
    first = submit("holds-node", count_yaml, project, *args, "count.steps=3000")
    assert first.returncode == 0, first.stderr
    wait_state("holds-node", ("running",))
    second = submit("waits", count_yaml, project, *args, "count.steps=2")
    assert second.returncode == 0 and "queued" in second.stderr, second.stderr
    # the reason is "None" until the scheduler has looked at the job
    wait_until(lambda: "queued (" in cli("status", "--json", "waits").stdout, timeout=120)
    line = cli("status", "--json", "waits").stdout
    assert re.match(r"waits  queued \((Resources|Priority)\)  lab-slurm", line), line


def test_status_reads_the_job_log_when_the_run_folder_is_out_of_reach(
    shared: Path, home: Path, count_yaml: Path
) -> None:
    root, work = shared / "output", shared / "work"
    project = "p" + uuid.uuid4().hex[:8]
    box = write_dispatch(home.parent / "box.yaml", root, work, hosts=["box"])
    result = submit("unmounted", count_yaml, project, "-d", str(box), "count.steps=3")
    assert result.returncode == 0, result.stderr
    wait_state("unmounted", ("completed",))
    record = records.load("unmounted")
    # as on a login node that does not mount the cluster's JuiceFS volume
    Path(record.metrics).rename(Path(record.metrics).with_suffix(".away"))
    line = cli("status", "--json", "unmounted").stdout.strip()
    assert line.endswith("step 3  loss 0.3333"), line
