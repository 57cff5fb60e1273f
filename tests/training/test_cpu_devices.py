"""A single-process CPU run splits the host into one JAX device per core (as many as divide the
batch); parallel.cpu_devices fixes the count; a split run resumes bitwise. Runs are subprocesses:
the split must happen before JAX starts, which in the pytest process has happened already."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.training.conftest import TINY, cli_args, losses, spawn

# training runs in subprocesses split over CPU devices (9 to 40 s each)
pytestmark = pytest.mark.slow

AUTOMATIC = {"XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "-1"}
# a learning rate that does not depend on the run's length, so 2 steps then 2 more = 4 steps
FLAT = ("optimization.schedule=constant", "optimization.warmup_steps=0")


def _run(root, train_yaml, name, *overrides) -> int:
    """Run in a subprocess; returns how many CPU devices the run used."""
    proc = spawn(cli_args(name, train_yaml, root, *FLAT, *overrides), env=AUTOMATIC)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return int(re.search(r"on (\d+) cpu device\(s\)", out).group(1))


def test_one_device_per_core_dividing_the_batch_and_exact_resume(root, train_yaml):
    cores = len(os.sched_getaffinity(0))
    assert cores >= 2, "this test needs a machine with at least two cores"
    expected = max(n for n in range(1, cores + 1) if 8 % n == 0)  # TINY's batch is 8
    assert _run(root, train_yaml, "cores", "training.steps=2") == expected
    assert _run(root, train_yaml, "cores", "training.steps=4") == expected  # resumes at 2
    assert _run(root, train_yaml, "cores-straight", "training.steps=4") == expected
    assert losses(root, "cores") == losses(root, "cores-straight")
    assert _run(root, train_yaml, "pinned", "training.steps=2", "parallel.cpu_devices=1") == 1


def test_a_device_count_in_xla_flags_wins_and_says_so(root, train_yaml):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_NUM_CPU_DEVICES": "-1"}
    args = cli_args(
        "flagged", train_yaml, root, *FLAT, "training.steps=1", "parallel.cpu_devices=2"
    )
    proc = spawn(args, env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "warning: parallel.cpu_devices=2 is ignored" in out and "on 1 cpu device(s)" in out
    assert "flagged: 1 step x 8 seqs" in out


QUICK_RUNS = """
import sys
from theseus.errors import UserError
from theseus.quick import quick

root, tiny = sys.argv[1], sys.argv[2:]
for name, extra in [
    ("q-a", []),
    ("q-b", ["training.batch_size=4"]),
    ("q-c", ["training.batch_size=3"]),
    ("q-d", ["parallel.cpu_devices=1"]),
]:
    with quick("gpt/train/pretrain", root, name) as j:
        j.override(*tiny, "training.steps=1", *extra)
        try:
            j()
            print(name, "ok")
        except UserError as exc:
            print(name, "error:", exc)
"""


def test_later_runs_of_one_process_keep_its_devices_or_say_so(root):
    """The Python API runs several jobs in one process; JAX's device count is set once."""
    assert len(os.sched_getaffinity(0)) >= 2, "this test needs a machine with at least two cores"
    command = [sys.executable, "-c", QUICK_RUNS, str(root), *TINY, *FLAT]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, **AUTOMATIC}
    )
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("q-")}
    assert lines["q-a"] == "q-a ok" and lines["q-b"] == "q-b ok", done.stdout + done.stderr
    needs = "error: JAX already runs on 2 CPU devices in this process (an earlier run set them)"
    assert lines["q-c"].startswith(f"q-c {needs} and this run needs 1"), lines
    assert lines["q-d"].startswith(f"q-d {needs} and this run needs 1"), lines
    assert "is ignored" not in done.stderr


def test_a_split_the_model_sizes_do_not_divide_says_what_stays_whole(root, train_yaml):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_NUM_CPU_DEVICES": "-1"}
    overrides = (*FLAT, "training.steps=1", "training.batch_size=6", "parallel.fsdp=3")
    proc = spawn(cli_args("fsdp3", train_yaml, root, *overrides), env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "[data 1, fsdp 3, tensor 1]" in out
    assert (
        "warning: parameters stay whole on every device along these axes, whose sizes do not "
        in out
    )
    assert "split: embed 32 over fsdp 3;" in out


QUEUE_ORDER = """
import sys

import theseus.training.loop as loop
import theseus.training.run as run
from theseus.quick import quick

events, step_of = [], {}


class RecordingLoop(loop.TrainingLoop):
    def __init__(self, *, step_fn, **kwargs):
        def step(leaves, batch, index, lr):
            leaves, metrics = step_fn(leaves, batch, index, lr)
            step_of[id(metrics["loss"])] = int(index)
            events.append(f"run {int(index)}")
            return leaves, metrics

        super().__init__(step_fn=step, **kwargs)


wait = loop.wait_interruptibly


def recording_wait(blocking):
    events.append(f"wait {step_of[id(blocking.__self__)]}")
    return wait(blocking)


run.TrainingLoop, loop.wait_interruptibly = RecordingLoop, recording_wait
root, tiny = sys.argv[1], sys.argv[2:]
with quick("gpt/train/pretrain", root, "queue") as j:
    j.override(*tiny, "training.steps=6", "logging.interval=100", "parallel.cpu_devices=2")
    j()
print(" ".join(events))
"""


def test_two_devices_run_one_step_queued_behind_the_running_one(root):
    """The next step is dispatched before the loop waits for the running one (hiding the
    dispatch), and never more than one: step k waits for step k - 1."""
    command = [sys.executable, "-c", QUEUE_ORDER, str(root), *TINY, *FLAT]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, **AUTOMATIC}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = "run 0 run 1 wait 0 run 2 wait 1 run 3 wait 2 run 4 wait 3 run 5 wait 4 wait 5"
    assert done.stdout.splitlines()[-1] == expected
