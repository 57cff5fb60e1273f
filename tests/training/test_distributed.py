"""Two processes joined by jax.distributed (gloo collectives on CPU) train like one process.

Each process loads its half of every global batch; gradients are averaged across processes, so
the losses match the single-process run with the same global batch up to float32 reduction
order (|a - b| <= 1e-5 * |b| + 1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import SIX_STEPS, cli_args, free_port, losses, spawn

# every test starts two processes of one job, joined by jax.distributed
pytestmark = pytest.mark.multiprocess


def _two_processes(
    args: list[str], expect: int = 0, *, second: list[str] | None = None
) -> list[str]:
    """Run `theseus` ARGS (process 1: SECOND, if given) as processes 0 and 1 of one job, each to
    exit with `expect`; returns their outputs."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        spawn(
            second if i == 1 and second is not None else args,
            env={
                "THESEUS_COORDINATOR": coordinator,
                "THESEUS_NUM_PROCESSES": "2",
                "THESEUS_PROCESS_ID": str(i),
            },
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == expect, out[-3000:]
    return outputs


def test_two_processes_match_one_and_start_over_together(root, train_yaml, six_step_losses):
    outputs = _two_processes(cli_args("two-procs", train_yaml, root, *SIX_STEPS))
    assert "on 2 cpu device(s) [data 2, fsdp 1, tensor 1]" in outputs[0]
    both = np.array([loss for _, loss in losses(root, "two-procs")])
    assert both.shape == (6,)
    np.testing.assert_allclose(both, np.array(six_step_losses), rtol=1e-5, atol=1e-6)
    print(json.dumps({"one": six_step_losses, "two": both.tolist()}))

    # --fresh: process 0 moves the checkpoints aside; process 1 must not resume from them
    again = _two_processes(
        [*cli_args("two-procs", train_yaml, root, *SIX_STEPS, "training.overwrite=true"), "--fresh"]
    )
    assert "--fresh: moved" in again[0]
    assert all("resuming" not in out for out in again)
    np.testing.assert_array_equal([loss for _, loss in losses(root, "two-procs")], both)


def test_processes_shrink_their_batch_together(root, train_yaml, six_step_losses):
    """When the step fits on one process but not on the other, both take the smaller per-device
    batch: two processes running different steps could never meet in a collective."""
    less_memory = str(Path(__file__).with_name("less_memory.py"))
    overrides = (*SIX_STEPS, "parallel.cpu_devices=2")  # one device per process all the same
    args = [*cli_args("shrunk", train_yaml, root, *overrides), "--load", less_memory]
    outputs = _two_processes(args)
    assert "warning: parallel.cpu_devices=2 is ignored: a run of several processes" in outputs[0]
    assert (
        "per_device_batch_size=4 does not fit the memory of another process; trying 2"
        in (outputs[0])
    )
    shrunk = [loss for _, loss in losses(root, "shrunk")]
    np.testing.assert_allclose(shrunk, six_step_losses, rtol=1e-5, atol=1e-6)


def test_a_batch_the_processes_cannot_share_is_refused_in_one_line(root, train_yaml):
    """Tensor-parallel over both processes leaves one batch shard: no process has rows of its own."""
    args = cli_args("unshared", train_yaml, root, *SIX_STEPS, "parallel.tensor=2")
    for out in _two_processes(args, expect=2):
        assert out.strip().splitlines()[-1] == (
            "error: the batch splits 1 way(s) (data x fsdp), which 2 processes cannot share; "
            "lower parallel.tensor so that each process holds its own batch shards"
        ), out


def test_when_one_process_fails_the_other_says_so_in_one_line(root, train_yaml):
    """Process 1 is refused a setting process 0 was not given: process 0, left waiting for it
    in a collective, ends with a line that points at the other process, not a traceback."""
    args = cli_args("half-refused", train_yaml, root, *SIX_STEPS)
    outputs = _two_processes(args, expect=2, second=[*args, "training.dataset=[{name: nosuch}]"])
    assert outputs[1].strip().splitlines()[-1].startswith("error: no token store 'nosuch'")
    assert outputs[0].strip().splitlines()[-1] == (
        "error: process 0: the other processes of this job stopped answering (one of them most "
        "likely failed: see its output)"
    )
