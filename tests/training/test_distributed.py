"""Two processes joined by jax.distributed (gloo collectives on CPU) train like one process.

Each process loads its half of every global batch; gradients are averaged across processes, so
the losses match the single-process run with the same global batch up to float32 reduction
order (|a - b| <= 1e-5 * |b| + 1e-6).
"""

from __future__ import annotations

import json

import numpy as np

from tests.training.conftest import SIX_STEPS, cli_args, free_port, losses, spawn


def test_two_processes_match_one(root, train_yaml, six_step_losses):
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        spawn(
            cli_args("two-procs", train_yaml, root, *SIX_STEPS),
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
    assert "on 2 cpu device(s) [data 2, fsdp 1, tensor 1]" in outputs[0]
    both = np.array([loss for _, loss in losses(root, "two-procs")])
    assert both.shape == (6,)
    np.testing.assert_allclose(both, np.array(six_step_losses), rtol=1e-5, atol=1e-6)
    print(json.dumps({"one": six_step_losses, "two": both.tolist()}))
