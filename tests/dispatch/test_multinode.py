"""The trainer on a real two-node SLURM cluster (scripts/testcluster/nodes-up.sh: each node its
own network namespace, address and hostname, so a process that advertised its loopback, or a
collective that stayed on one node, would fail here): submitted through the normal SLURM
template with one JAX process per node, it trains like one process; preempted on both nodes it
resumes bitwise; one node's process killed, the job ends and resumes from its last checkpoint;
and it resumes on another number of nodes than it started on. `theseus doctor` reports each
node's process, and a root that is not the same folder on both nodes; `theseus logs -r` picks
one process's lines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.dispatch.conftest import REPO, cli, host_env, wait_state, wait_until
from tests.dispatch.test_remote import last_step
from tests.dispatch.test_remote import train as train  # a fixture: the store and a tiny config

# it submits jobs of two JAX processes, one on each node of the two-node test cluster
pytestmark = [pytest.mark.cluster, pytest.mark.multiprocess]

# More steps than test_remote's: the window in which a run is stopped must outlast the polling.
STEPS = 150
LONGER = f"training.steps={STEPS}"
# How long a job may take to end once one of its processes is killed: srun's --wait=60 for the
# others (job.sbatch), SLURM's KillWait of 10 s, and slack for a loaded machine.
KILL_TIMEOUT = 120
STOP_AT = 5


@pytest.fixture
def nodes_file(
    home: Path, nodes: dict[str, str], shared: Path, train, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A dispatch file whose one host is the two-node cluster (local sbatch, one CPU per node so
    that `-n 2` takes both nodes), its outputs and environments where the other dispatch tests
    keep theirs."""
    root, _ = train
    monkeypatch.setenv("SLURM_CONF", nodes["SLURM_CONF"])
    data = {
        "clusters": {"lab": {"root": str(root), "work": str(shared / "work")}},
        "hosts": {
            "nodes": {
                "type": "slurm",
                "cluster": "lab",
                "chips": {"cpu": 1},
                "time": "00:20:00",
                # the nodes have no route out: the job's environment comes from uv's cache
                "env": {**host_env(), "UV_OFFLINE": "1"},
            }
        },
    }
    path = home.parent / "nodes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def losses(root: Path, project: str, name: str) -> list[float]:
    """The loss of each step, from the run's metrics (a resumed run rewrote those after its
    checkpoint)."""
    path = root / "runs" / project / "default" / name / "metrics.jsonl"
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            by_step[record["step"]] = record["loss"]
    assert sorted(by_step) == list(range(1, STEPS + 1)), sorted(by_step)
    return [by_step[s] for s in range(1, STEPS + 1)]


def submit(name: str, yaml_path: Path, project: str, file: Path, n: int, *more: str) -> str:
    """Submit NAME on the two-node cluster with N processes; returns its SLURM job id."""
    # --untracked: the jobs run the working tree as it is, committed or not
    result = cli(
        "submit",
        name,
        str(yaml_path),
        LONGER,
        *more,
        "-p",
        project,
        "-d",
        str(file),
        "-n",
        str(n),
        "--untracked",
    )
    assert result.returncode == 0, result.stderr
    return re.search(r"\(slurm id (\d+)\)", result.stderr).group(1)


def reached(root: Path, project: str, name: str, step: int) -> bool:
    """Whether the run has logged STEP; a run that ended before fails the test."""
    if last_step(root, project, name) >= step:
        return True
    state = cli("status", "--json", name).stdout.split()[1]
    assert state in ("starting", "queued", "running"), cli("logs", name).stdout[-3000:]
    return False


def stop_each_at(root: Path, project: str, stoppers: dict, timeout: float = 300) -> None:
    """For stoppers[NAME] = (STEP, stop), call stop() as soon as run NAME has logged STEP
    (metrics read every 50 ms, the runs' states every few seconds). Each stop runs on its own
    thread: a stop (`scancel`, `theseus cancel`) takes seconds on a loaded machine, and a fast run
    waiting behind another's stop would train to its end before its own signal arrives."""
    waiting, deadline, polls = dict(stoppers), time.monotonic() + timeout, 0
    stopping: list[threading.Thread] = []
    while waiting:
        assert time.monotonic() < deadline, f"{sorted(waiting)} never reached their steps"
        for name, (step, stop) in list(waiting.items()):
            # not while a stop runs: the in-process `cli` of both would swap sys.stdout
            quiet = not any(thread.is_alive() for thread in stopping)
            if last_step(root, project, name) >= step or (
                polls % 60 == 59 and quiet and reached(root, project, name, step)
            ):
                del waiting[name]
                stopping.append(threading.Thread(target=stop))
                stopping[-1].start()
        polls += 1
        time.sleep(0.05)
    for thread in stopping:
        thread.join()


def kill_task(job_id: str, rank: int) -> int:
    """SIGKILL the theseus process of task RANK of SLURM job JOB_ID (its node's namespaces share
    this machine's process ids), not a worker it forked (a tokenizer's); returns its pid."""
    parents = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(
                item.split(b"=", 1)
                for item in (proc / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
            parent = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
        if (
            b"theseus.cli" in argv
            and env.get(b"SLURM_JOB_ID") == job_id.encode()
            and env.get(b"SLURM_PROCID") == str(rank).encode()
        ):
            parents[int(proc.name)] = parent
    task = [pid for pid, parent in parents.items() if parent not in parents]
    assert len(task) == 1, f"no single process of task {rank} of job {job_id}: {parents}"
    os.kill(task[0], signal.SIGKILL)
    return task[0]


def finished(name: str) -> str:
    """The run's whole log once it has ended with exit code 0."""
    followed = cli("logs", "-f", name)
    assert followed.returncode == 0, followed.stderr
    assert "finished with exit code 0" in followed.stdout, followed.stdout[-3000:]
    return followed.stdout


def stop_at(name: str) -> int:
    """The step at which the run stopped on a signal with its checkpoint saved (process 0 may
    learn of the signal from another process before its own arrives: "by a signal")."""
    text = cli("logs", name).stdout
    found = re.search(r"stopped by (?:SIG\w+|a signal) at step (\d+); checkpoint saved", text)
    assert found, text[-3000:]
    return int(found.group(1))


def test_two_nodes_train_like_one_process_resume_bitwise_and_on_another_world_size(
    nodes_file: Path, train, nodes: dict[str, str]
) -> None:
    """Six runs at once. On 2 nodes (one JAX process each): `two`, uninterrupted; `pre`,
    preempted (`scancel --signal=USR1 --full`: every process of the job is signalled), which
    checkpoints and requeues itself; `kill`, whose process on node2 is SIGKILLed, then requeued
    by hand; `shrink`, stopped at step 5 by training.stop_at (a checkpoint, as on a signal) and
    resubmitted without it on 1 node. `grow`, on 1 node, stopped likewise and resubmitted on 2.
    And the single-process reference, `ref`, on this machine.

    `two` reaches the reference's losses within 1e-5 (gradients are summed in another order);
    `pre` and `kill` equal `two` bitwise; `shrink` and `grow` reach the reference's within 1e-5
    and say that the world changed."""
    root, yaml_path = train
    project = "n" + uuid.uuid4().hex[:8]
    ids = {name: submit(name, yaml_path, project, nodes_file, 2) for name in ("two", "pre")}
    # stopped at a step fixed in advance: a stop sent once a step is logged can arrive after a
    # fast run's end
    stop = f"training.stop_at={STOP_AT}"
    ids["shrink"] = submit("shrink", yaml_path, project, nodes_file, 2, stop)
    ids["grow"] = submit("grow", yaml_path, project, nodes_file, 1, stop)
    ids["kill"] = submit(
        "kill", yaml_path, project, nodes_file, 2, "logging.checkpoint_interval=10"
    )
    reference = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "theseus.cli",
            "run",
            "ref",
            str(yaml_path),
            str(root),
            LONGER,
            "-p",
            project,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    env = {**os.environ, "SLURM_CONF": nodes["SLURM_CONF"]}
    preempt = ["scancel", "--signal=USR1", "--full", ids["pre"]]
    killed: list[float] = []

    def kill() -> None:
        kill_task(ids["kill"], 1)
        killed.append(time.monotonic())

    # SIGKILL one node's process of `kill` mid-run (checkpoints every 10 steps): the job ends
    # (srun gives the other task --wait=60 s, then stops it) within KILL_TIMEOUT, keeps its
    # committed checkpoints, and the job requeued resumes from the latest of them.
    stop_each_at(
        root,
        project,
        {
            "pre": (5, lambda: subprocess.run(preempt, check=True, env=env)),
            "kill": (25, kill),
        },
    )
    for name in ("shrink", "grow"):
        # exit code 0: the job is not queued again by itself, and is resubmitted without stop_at
        state = wait_state(name, ("completed", "failed", "cancelled"), timeout=300)
        text = cli("logs", name).stdout
        assert state == "completed", text[-3000:]
        assert f"stopped by training.stop_at at step {STOP_AT}; checkpoint saved" in text, text
        submit(name, yaml_path, project, nodes_file, 1 if name == "shrink" else 2)

    assert wait_state("kill", ("failed",), timeout=KILL_TIMEOUT) == "failed"
    assert time.monotonic() - killed[0] < KILL_TIMEOUT
    folder = root / "checkpoints" / project / "default" / "kill"
    kept = [int(d.name) for d in folder.iterdir() if d.name.isdigit() and (d / "meta").exists()]
    assert kept and max(kept) >= 10, sorted(p.name for p in folder.iterdir())
    subprocess.run(["scontrol", "requeue", ids["kill"]], check=True, env=env)
    wait_until(lambda: "(restart 1)" in cli("logs", "kill").stdout, timeout=180)

    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]

    logs = {name: finished(name) for name in ("two", "pre", "shrink", "grow", "kill")}
    two = logs["two"]
    # one JAX process on each node, joined across the nodes' own addresses
    assert two.count("[Gloo] Rank") == 2 and "on 2 cpu device(s)" in two, two[-3000:]
    assert re.search(r"starting job \d+ \(restart 0\) on node\[1-2\]", two), two[:2000]
    one = np.array(losses(root, project, "ref"))
    np.testing.assert_allclose(losses(root, project, "two"), one, rtol=1e-5, atol=1e-6)

    # preempted on both nodes: one checkpoint, which both processes resume from after the requeue
    pre, at = logs["pre"], stop_at("pre")
    assert 5 <= at < STEPS, pre[-3000:]
    assert pre.count("checkpoint saved") == 1 and "(restart 1) on node[1-2]" in pre, pre[-3000:]
    assert f"resuming pre from its checkpoint at step {at}" in pre, pre[-3000:]
    assert losses(root, project, "pre") == losses(root, project, "two")
    saved = sorted(p.name for p in (root / "checkpoints" / project / "default" / "pre").iterdir())
    assert not [name for name in saved if "tmp" in name], saved  # no half-written checkpoint

    worlds = {
        "shrink": ("2 process(es)", "1 process(es)"),
        "grow": ("1 process(es)", "2 process(es)"),
    }
    for name, (before, after) in worlds.items():
        text = logs[name]
        assert f"resuming {name} from its checkpoint at step {STOP_AT}" in text, text[-3000:]
        assert re.search(
            rf"note: the world changed since that checkpoint: written by {re.escape(before)}, "
            rf"\d+ cpu device\(s\), resumed on {re.escape(after)}",
            text,
        ), text[-3000:]
        np.testing.assert_allclose(losses(root, project, name), one, rtol=1e-5, atol=1e-6)

    kill = logs["kill"]
    assert f"resuming kill from its checkpoint at step {max(kept)}" in kill, kill[-3000:]
    assert losses(root, project, "kill") == losses(root, project, "two")


def test_doctor_on_two_nodes_reports_each_process_and_a_root_that_differs(
    nodes_file: Path, nodes: dict[str, str], tmp_path: Path
) -> None:
    """`theseus submit` of the `doctor` job with one process per node: a line per process (its
    node, devices, the coordinator reached, a timed all-reduce). Then with an output root that
    node2 mounts a folder of its own over (a tmpfs in its mount namespace): one problem line,
    and the job fails."""
    doctor_yaml = tmp_path / "doctor.yaml"
    assert cli("configure", "doctor", str(doctor_yaml), "doctor.all_reduce_mb=1").returncode == 0
    split = Path(f"/tmp/theseus-doctor-split-{uuid.uuid4().hex[:8]}")
    split.mkdir()
    data = yaml.safe_load(nodes_file.read_text())
    data["clusters"]["split"] = {**data["clusters"]["lab"], "root": str(split)}
    data["hosts"]["split-nodes"] = {**data["hosts"]["nodes"], "cluster": "split"}
    nodes_file.write_text(yaml.safe_dump(data))
    on_node2 = [f"{nodes['THESEUS_TESTCLUSTER_NODES']}/bin/on", "node2"]
    subprocess.run([*on_node2, "mount", "-t", "tmpfs", "tmpfs", str(split)], check=True)
    try:
        for name, cluster in (("doc", "lab"), ("doc-split", "split")):
            result = cli(
                "submit", name, str(doctor_yaml), "-d", str(nodes_file), "-n", "2",
                "--cluster", cluster, "--untracked",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        whole = cli("logs", "-f", "doc").stdout
        assert "finished with exit code 0" in whole, whole[-3000:]
        # each process's lines carry its rank; -r picks one process's, without it
        assert "\n1: [Gloo] Rank 1 is connected" in whole, whole[-3000:]
        good, second = (cli("logs", "-r", str(r), "doc").stdout for r in (0, 1))
        assert "[Gloo] Rank 1 is connected" in second and "Rank 0" not in second, second
        assert "theseus: finished" not in good and "Rank 1" not in good, good
        for rank, host in enumerate(("node1", "node2")):
            assert re.search(
                rf"process {rank}/2 on {host} \(10\.213\.79\.1{rank + 1}\): 1 of 2 cpu device\(s\); "
                r"coordinator node1:\d+ reached; all-reduce 1 MiB in [\d.]+ ms \([\d.]+ GB/s\); "
                "root writable$",
                good,
                re.M,
            ), good[-3000:]
        whole = cli("logs", "-f", "doc-split").stdout
        assert "finished with exit code 1" in whole, whole[-3000:]
        bad = cli("logs", "-r", "0", "doc-split").stdout
        problems = [line for line in bad.splitlines() if line.startswith("problem: ")]
        assert problems == [
            f"problem: process 1 on node2: the output root {split} on node2 is not the folder "
            "process 0 writes to: mount the same shared storage there on every node"
        ], bad[-3000:]
    finally:
        subprocess.run([*on_node2, "umount", str(split)], check=False)
        subprocess.run(["rm", "-rf", str(split)], check=False)
