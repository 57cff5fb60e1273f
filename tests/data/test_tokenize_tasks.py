"""A tokenize job of several tasks, started as SLURM starts a job's tasks (SLURM_JOB_ID,
SLURM_NTASKS, SLURM_PROCID): each task encodes its share of the batches, and task 0 writes the
store a single process writes, byte for byte. A task killed mid-way resumes at its next missing
batch; a merge killed mid-way resumes at its last commit. The tasks are real processes on this
machine; tests/dispatch/test_multinode_tokenize.py runs them on two SLURM nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.data.conftest import THESEUS, store_bytes, theseus

# several tokenize processes at once, a few seconds each
pytestmark = pytest.mark.slow

STDLIB = ("data.name=pystdlib", "tokenizer.backend=bytes", "data.val_pct=20")


def configure(tmp: Path, job: str, *settings: str) -> Path:
    path = tmp / "tok.yaml"
    result = theseus("configure", job, str(path), *STDLIB, *settings, cwd=tmp)
    assert result.returncode == 0, result.stderr
    return path


def single(tmp: Path, yaml_path: Path) -> dict[str, bytes]:
    """The store one process writes under tmp/one, file by file."""
    result = theseus("run", "tok", str(yaml_path), "one", cwd=tmp)
    assert result.returncode == 0, result.stderr
    return store_bytes(tmp / "one" / "data" / "pystdlib")


def task(tmp: Path, yaml_path: Path, index: int, count: int, job: str) -> subprocess.Popen:
    """Task INDEX of COUNT of SLURM job JOB, writing under tmp/many."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "THESEUS_NUM"))}
    env |= {"SLURM_JOB_ID": job, "SLURM_NTASKS": str(count), "SLURM_PROCID": str(index)}
    return subprocess.Popen(
        [*THESEUS, "run", "tok", str(yaml_path), "many"],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, code: int = 0) -> str:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == code, out[-3000:]
    return out


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


@pytest.mark.parametrize(
    "job, settings",
    [
        # data.max_tokens cuts the store a third of the way through the source
        ("data/tokenize_variable_dataset", ("data.max_tokens=600000", "data.shard_tokens=100000")),
        ("data/tokenize_blockwise_dataset", ("data.seq_len=256", "data.shard_tokens=10000")),
    ],
    ids=["variable", "blockwise"],
)
def test_three_tasks_write_the_store_one_process_writes(
    tmp_path: Path, job: str, settings: tuple[str, ...]
) -> None:
    yaml_path = configure(tmp_path, job, "data.max_samples=200", "data.batch_docs=3", *settings)
    expected = single(tmp_path, yaml_path)
    tasks = [task(tmp_path, yaml_path, i, 3, "101") for i in range(3)]
    logs = [finish(proc) for proc in tasks]
    for index, log in enumerate(logs):
        dealt = f"task {index} of 3: tokenizing batches {index}, {index + 3}, {index + 6}, ..."
        assert dealt in log, log
    assert "task 0 of 3: writing the batches of 3 tasks into pystdlib" in logs[0], logs[0]
    assert "wrote" in logs[0] and not any("wrote" in log for log in logs[1:])
    assert store_bytes(tmp_path / "many" / "data" / "pystdlib") == expected
    assert sorted(p.name for p in (tmp_path / "many" / "data").iterdir()) == ["pystdlib"]


def test_a_task_killed_midway_and_a_merge_killed_midway_resume(tmp_path: Path) -> None:
    """Task 1 is SIGKILLed once it has saved 10 batches (task 0 then stopped by SIGTERM, as
    SLURM ends a job's other tasks); started again in the same job (a requeue) it skips what it
    saved. Task 0, started again, is SIGKILLed once its merge has committed some batches; started
    once more, it resumes the merge. The store is the one a single process writes."""
    yaml_path = configure(
        tmp_path, "data/tokenize_variable_dataset", "data.max_samples=800", "data.batch_docs=1"
    )
    expected = single(tmp_path, yaml_path)
    data = tmp_path / "many" / "data"

    def saved(index: int) -> dict[Path, int]:
        found = data.glob(".pystdlib.parts/*/*.npz")
        return {p: p.stat().st_mtime_ns for p in found if int(p.stem) % 2 == index}

    first = [task(tmp_path, yaml_path, i, 2, "201") for i in (0, 1)]
    # task 0 tokenizing too (a stop signal before it starts would end it as SIGTERM does any
    # process that has saved nothing, not with 75)
    wait_for(lambda: (len(saved(1)) >= 10 and saved(0)) or first[1].poll() is not None)
    os.killpg(first[1].pid, signal.SIGKILL)
    finish(first[1], -signal.SIGKILL)
    first[0].send_signal(signal.SIGTERM)
    assert "task 0 of 2: stopped by SIGTERM" in finish(first[0], 75)
    before = saved(1)
    assert 10 <= len(before) < 400 and not list(data.glob(".pystdlib.parts/*/task-1.done"))

    again = task(tmp_path, yaml_path, 1, 2, "201")
    wait_for(lambda: any(data.glob(".pystdlib.parts/*/task-1.done")) or again.poll() is not None)
    assert {p: t for p, t in saved(1).items() if p in before} == before  # none written again

    progress = data / "pystdlib.partial" / "progress.json"

    def merged_some() -> bool:
        try:
            return json.loads(progress.read_text())["docs_read"] > 0
        except (FileNotFoundError, ValueError):
            return False

    merger = task(tmp_path, yaml_path, 0, 2, "201")
    wait_for(lambda: merged_some() or merger.poll() is not None)
    os.killpg(merger.pid, signal.SIGKILL)
    finish(merger, -signal.SIGKILL)
    last = finish(task(tmp_path, yaml_path, 0, 2, "201"))
    assert "resuming pystdlib after" in last, last
    log = finish(again)
    assert f"; {len(before)} of them were saved before" in log, log
    assert store_bytes(data / "pystdlib") == expected
    assert sorted(p.name for p in data.iterdir()) == ["pystdlib"]
