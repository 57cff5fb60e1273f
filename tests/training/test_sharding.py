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
import pytest

from tests.training.conftest import SIX_STEPS, TINY

# 8-device subprocesses that train or compile (8 to 50 s each)
pytestmark = pytest.mark.slow

EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
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
    env = {**os.environ, **EIGHT_DEVICES}
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


INIT_SCRIPT = """
import json
import jax, numpy as np
from flax import nnx
import dataclasses
from theseus.model.models import GPT2, Transformer
from theseus.parallel.mesh import Layout
from theseus.parallel.rules import abstract_on_mesh, param_initializer
config = dataclasses.replace(GPT2, n_layers=2, n_heads=4, d_model=64, block_size=16, vocab_size=256)
create = lambda: Transformer(config, rngs=nnx.Rngs(0))
out = {}
for name, mesh in [("one", Layout(1, 1, 1).mesh(jax.devices()[:1])), ("fsdp4-tensor2", Layout(1, 4, 2).mesh())]:
    _, abstract, _ = abstract_on_mesh(create, mesh)
    initialize = param_initializer(create, abstract)
    params = initialize()
    memory = initialize.lower().compile().memory_analysis()
    out[name] = {
        "values": [np.asarray(x).tolist() for x in jax.tree.leaves(params)],
        "placed": all(x.sharding == s.sharding for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(abstract))),
        "shards": {
            jax.tree_util.keystr(path): list(x.addressable_shards[0].data.shape)
            for path, x in jax.tree_util.tree_leaves_with_path(params)
        },
        "bytes": memory.output_size_in_bytes + memory.temp_size_in_bytes,
    }
print("INIT" + json.dumps(out))
"""


def test_parameters_are_created_on_their_shards_with_the_values_of_one_device():
    """Initialization runs sharded: each device computes only its shards (a fraction of the
    memory), and the values equal a one-device initialization bitwise."""
    env = {**os.environ, **EIGHT_DEVICES}
    result = subprocess.run(
        [sys.executable, "-c", INIT_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("INIT"))
    one, spread = json.loads(line[len("INIT") :]).values()
    assert one["placed"] and spread["placed"]
    for a, b in zip(one["values"], spread["values"], strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # the [256, 64] token embedding: vocabulary over tensor 2, width over fsdp 4
    assert spread["shards"]["['embed']['weight'].value"] == [128, 16]
    assert one["shards"]["['embed']['weight'].value"] == [256, 64]
    assert spread["bytes"] < one["bytes"] / 4


REDUCE_SCRIPT = """
import json, re
import jax, jax.numpy as jnp, optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
import dataclasses
from theseus.model.models import GPT2, Transformer
from theseus.parallel.reduction import ShardedGradients
from theseus.training.step import make_train_step
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
config = dataclasses.replace(GPT2, n_layers=2, n_heads=2, d_model=32, block_size=16, vocab_size=128)
graphdef, params, rest = nnx.split(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data"))
params = jax.device_put(params, replicated)
opt = jax.device_put(optax.adamw(1e-3).init(params), replicated)
batch = {
    key: jax.device_put(jnp.zeros((2, 4, 16), jnp.int32), rows)
    for key in ("inputs", "targets", "positions", "loss_mask")
}
step = make_train_step(
    graphdef, rest, optax.adamw(1e-3), seed=0, accumulation=2, gradients=ShardedGradients(2)
)
text = jax.jit(step, out_shardings=replicated).lower(
    {"params": params, "opt": opt}, batch, 0, 1e-3
).compile().as_text()
entry = text[text.index("ENTRY"):]
reduced = [
    (line in entry, re.findall(r"f32\\[([\\d,]*)\\]", line.split("=", 1)[1].split("all-reduce")[0]))
    for line in text.splitlines()
    if re.search(r"all-reduce(-start)?\\(", line)
]
print("REDUCED" + json.dumps({"n_params": sum(x.size for x in jax.tree.leaves(params)), "reduced": reduced}))
"""


def test_data_parallel_cpu_step_reduces_its_gradients_once_as_one_buffer():
    """XLA's CPU runtime makes each reduced array a meeting of all devices, so the step sums the
    shards' gradients itself: one all-reduce of one buffer of every parameter, after the
    accumulation loop, besides scalar sums."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-c", REDUCE_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REDUCED"))
    found = json.loads(line[len("REDUCED") :])
    arrays = [
        (in_entry, shape)
        for in_entry, shapes in found["reduced"]
        for shape in shapes
        if shape  # scalars: the loss and z-loss sums
    ]
    assert arrays == [(True, str(found["n_params"]))]
