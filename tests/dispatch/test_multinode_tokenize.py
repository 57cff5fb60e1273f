"""A tokenize job on the two-node test cluster (scripts/testcluster/nodes-up.sh), submitted with
one task on each node through the normal SLURM template: each task encodes every other batch,
task 0 alone writes the store, and the store is byte for byte the one a single process writes
here. One task SIGKILLed mid-way; the job submitted again, the task skips the batches it had
saved."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.data.conftest import store_bytes
from tests.dispatch.conftest import cli, theseus, wait_state, wait_until
from tests.dispatch.test_multinode import KILL_TIMEOUT, finished, kill_task
from tests.dispatch.test_multinode import nodes_file as nodes_file  # a fixture
from tests.dispatch.test_remote import train as train  # a fixture: the cluster's output root

# jobs of two processes, one on each node of the two-node test cluster
pytestmark = [pytest.mark.cluster, pytest.mark.multiprocess]

STDLIB = ("data.name=pystdlib", "tokenizer.backend=bytes", "data.val_pct=10")


def configure(folder: Path, store: str, *settings: str) -> Path:
    path = folder / f"{store}.yaml"
    result = cli(
        "configure", "data/tokenize_variable_dataset", str(path), *STDLIB, f"data.store={store}",
        *settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return path


def submit(name: str, yaml_path: Path, file: Path) -> str:
    """Submit NAME with one task on each node; returns its SLURM job id."""
    result = cli("submit", name, str(yaml_path), "-d", str(file), "-n", "2", "--untracked")
    assert result.returncode == 0, result.stderr
    return re.search(r"\(slurm id (\d+)\)", result.stderr).group(1)


def single(yaml_path: Path, out: Path, store: str) -> dict[str, bytes]:
    """The store one process writes here, file by file."""
    result = theseus("run", "one", str(yaml_path), str(out))
    assert result.returncode == 0, result.stderr
    return store_bytes(out / "data" / store)


def test_a_tokenize_job_on_two_nodes_writes_the_store_one_process_writes(
    nodes_file: Path, train, tmp_path: Path
) -> None:
    """data.max_tokens cuts the store mid-way: the merge cuts where one process does."""
    root, _ = train
    store = "tok" + uuid.uuid4().hex[:8]
    settings = ("data.max_samples=400", "data.batch_docs=8", "data.max_tokens=3000000")
    yaml_path = configure(tmp_path, store, *settings, "data.shard_tokens=500000")
    submit(store, yaml_path, nodes_file)
    expected = single(yaml_path, tmp_path / "one", store)
    log = finished(store)
    assert re.search(r"starting job \d+ \(restart 0\) on node\[1-2\]", log), log[:2000]
    for rank in (0, 1):
        dealt = f"{rank}: task {rank} of 2: tokenizing batches {rank}, {rank + 2}, {rank + 4}, ..."
        assert dealt in log, log[-3000:]
    # task 0 alone commits the store
    assert f"0: task 0 of 2: writing the batches of 2 tasks into {store}" in log, log[-3000:]
    assert len(re.findall(rf"^0: wrote .*/data/{store}: ", log, re.M)) == 1, log[-3000:]
    assert not re.search(r"^1: wrote ", log, re.M), log[-3000:]
    assert store_bytes(root / "data" / store) == expected
    assert not (root / "data" / f".{store}.parts").exists()


def test_a_tokenize_task_killed_midway_resumes_when_the_job_is_submitted_again(
    nodes_file: Path, train, tmp_path: Path
) -> None:
    """One document per batch, so that task 1 is SIGKILLed with most of its batches to go. The
    job is then cancelled rather than left to srun's minute of waiting (a job ending after one
    of its processes is killed is test_multinode's)."""
    root, _ = train
    store = "tok" + uuid.uuid4().hex[:8]
    yaml_path = configure(tmp_path, store, "data.batch_docs=1")
    job = submit(store, yaml_path, nodes_file)
    parts = root / "data" / f".{store}.parts"

    def saved() -> int:
        return sum(int(p.stem) % 2 for p in parts.glob("*/*.npz"))

    try:
        wait_until(lambda: saved() >= 20, timeout=300, every=0.05)
    except TimeoutError:
        raise AssertionError(cli("logs", store).stdout[-3000:]) from None
    kill_task(job, 1)
    count = saved()
    assert cli("cancel", store).returncode == 0
    expected = single(yaml_path, tmp_path / "one", store)
    assert wait_state(store, ("cancelled",), timeout=KILL_TIMEOUT) == "cancelled"
    assert saved() == count  # task 1 saved nothing after it was killed
    assert count < 1790 // 2 and not list(parts.glob("*/task-1.done")), count

    submit(store, yaml_path, nodes_file)
    log = finished(store)
    resumed = f"1: task 1 of 2: tokenizing batches 1, 3, 5, ... of {store} into "
    assert re.search(
        rf"^{re.escape(resumed)}.*; {count:,} of them were saved before$", log, re.M
    ), log[-3000:]
    assert store_bytes(root / "data" / store) == expected
    assert not parts.exists()
