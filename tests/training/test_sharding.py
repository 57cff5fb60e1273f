"""Sharded training (8 virtual CPU devices: data, FSDP, tensor) matches one device.

Tolerance: the sharded runs reduce gradients in another order, so losses agree to float32
rounding accumulated over the steps, not bitwise: |a - b| <= 1e-4 * |b| + 1e-5 per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.training.conftest import SIX_STEPS, TINY

LAYOUTS = {
    "data8": [],
    "fsdp4-data2": ["parallel.fsdp=4"],
    "tensor4-fsdp2": ["parallel.fsdp=2", "parallel.tensor=4"],
}
SCRIPT = """
import json, sys
from theseus.cli import main
from tests.training.conftest import losses
root, yaml, layouts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import jax
assert jax.device_count() == 8, jax.devices()
out = {}
for name, extra in layouts.items():
    assert main(["run", name, yaml, root, *extra]) == 0
    out[name] = losses(__import__("pathlib").Path(root), name)
print("LOSSES" + json.dumps(out))
"""


def test_data_fsdp_tensor_parallel_match_one_device(root, train_yaml, six_step_losses):
    single = np.array(six_step_losses)
    layouts = {name: [*TINY, *SIX_STEPS, *extra] for name, extra in LAYOUTS.items()}
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(train_yaml), json.dumps(layouts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[data 8, fsdp 1, tensor 1]" in result.stderr
    assert "[data 2, fsdp 4, tensor 1]" in result.stderr
    assert "[data 1, fsdp 2, tensor 4]" in result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOSSES"))
    for name, sequence in json.loads(line[len("LOSSES") :]).items():
        sharded = np.array([loss for _, loss in sequence])
        assert sharded.shape == single.shape == (6,)
        np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-5, err_msg=name)
