"""Two processes joined by jax.distributed (gloo collectives on CPU) train like one process.

Each process loads its half of every global batch; gradients are averaged across processes, so
the losses match the single-process run with the same global batch up to float32 reduction
order (|a - b| <= 1e-5 * |b| + 1e-6).
"""

from __future__ import annotations

import json

import numpy as np

from tests.training.conftest import SIX_STEPS, cli_args, free_port, losses, spawn


def _two_processes(args: list[str]) -> list[str]:
    """Run `theseus` ARGS as processes 0 and 1 of one job; returns their outputs."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        spawn(
            args,
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
        assert p.returncode == 0, out[-3000:]
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
