"""The trainer's parts on their own: loss, weight-decay mask, schedules, optimizers, batch plan."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from theseus.base.chips import CHIPS
from theseus.errors import UserError
from theseus.model.kernels import cross_entropy
from theseus.model.models import GPT2, LLAMA, Transformer
from theseus.parallel.reduction import Gradients, ShardedGradients
from theseus.training.mfu import chip_of, peak_flops
from theseus.training.optimizers import OptimizerConfig, decay_mask, make_optimizer
from theseus.training.plan import solve_plan
from theseus.training.schedules import make_schedule
from theseus.training.step import TrainState, make_train_step, on_leaves


def small(preset):
    config = dataclasses.replace(
        preset, n_layers=1, n_heads=4, d_model=32, block_size=16, vocab_size=128, dtype="float32"
    )
    return Transformer(config, rngs=nnx.Rngs(0))


def test_cross_entropy_matches_log_softmax_without_one_hot():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 50)).astype(np.float32) * 4
    targets = rng.integers(0, 50, size=(2, 5))
    mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
    ce, z = cross_entropy(
        jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets), jnp.asarray(mask)
    )
    ref_logits = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
    lse = np.log(np.exp(ref_logits).sum(-1))
    nll = lse - np.take_along_axis(ref_logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(ce), (nll * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(z), (lse**2 * mask).sum(), rtol=1e-5)
    jaxpr = str(
        jax.make_jaxpr(cross_entropy)(
            jnp.zeros((2, 5, 50)), jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5))
        )
    )
    assert (
        "f32[2,5,50]" in jaxpr and "eq" not in jaxpr.split()
    )  # no one-hot comparison of the vocab


@pytest.mark.slow
@pytest.mark.parametrize("cls", [GPT2, LLAMA])
def test_weight_decay_skips_norms_biases_and_embeddings(cls):
    params = nnx.state(small(cls), nnx.Param)
    flat = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    }
    decayed = sorted(k for k, v in flat.items() if v)
    kept = sorted(k for k, v in flat.items() if not v)
    assert decayed and kept
    assert all("embed" not in k and "norm" not in k and "bias" not in k for k in decayed)
    assert any("embed" in k for k in kept) and any("norm" in k for k in kept)
    assert any("'q'" in k for k in decayed) and any("kernel" in k for k in decayed)


@pytest.mark.parametrize("cls", [GPT2, LLAMA])
def test_decay_embeddings_adds_the_embeddings_and_nothing_else(cls):
    params = nnx.state(small(cls), nnx.Param)

    def decayed(**options):
        mask = decay_mask(params, **options)
        return {
            jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_flatten_with_path(mask)[0] if v
        }

    added = decayed(embeddings=True) - decayed()
    assert added and all("embed" in k for k in added)
    assert decayed() <= decayed(embeddings=True)


def test_schedules():
    wsd = make_schedule(
        "wsd", lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=100, decay_fraction=0.2
    )
    assert float(wsd(0)) == 0.0 and float(wsd(5)) == pytest.approx(0.5)
    assert float(wsd(10)) == pytest.approx(1.0) and float(wsd(79)) == pytest.approx(1.0)
    assert float(wsd(90)) == pytest.approx(0.55) and float(wsd(100)) == pytest.approx(0.1)
    # a decay longer than what the warmup leaves starts right after it and still ends at min_lr
    short = make_schedule(
        "wsd", lr=1.0, min_lr=0.1, warmup_steps=5, total_steps=10, decay_fraction=0.6
    )
    assert float(short(5)) == pytest.approx(1.0) and float(short(10)) == pytest.approx(0.1)
    cosine = make_schedule("cosine", lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=100)
    assert float(cosine(10)) == pytest.approx(1.0) and float(cosine(55)) == pytest.approx(0.55)
    assert float(cosine(100)) == pytest.approx(0.1)
    constant = make_schedule("constant", lr=0.5, min_lr=0.0, warmup_steps=0, total_steps=10)
    assert float(constant(0)) == float(constant(9)) == 0.5
    with pytest.raises(UserError, match="unknown schedule"):
        make_schedule("linear", lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizers_lower_the_loss(name):
    model = small(LLAMA)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 128)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
        ce, _ = cross_entropy(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))
        return ce / tokens[:, 1:].size

    tx = make_optimizer(OptimizerConfig(optimizer=name, weight_decay=0.0))
    state = tx.init(params)
    first = float(loss(params))
    for _ in range(10):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: 1e-2 * u, updates))
    assert float(loss(params)) < first - 0.3


def test_batch_plan():
    common = dict(batch_shards=4, process_count=1, seq_len=8, tokens=None, state_bytes=0.0)
    plan = solve_plan(
        global_batch=64,
        per_device_batch=None,
        steps=10,
        memory_bytes=100.0,
        sequence_bytes=10.0,
        **common,
    )
    assert (plan.per_device_batch, plan.accumulation) == (8, 2)  # 16 rows per device, 8 fit
    plan = solve_plan(
        global_batch=64,
        per_device_batch=4,
        steps=None,
        memory_bytes=0,
        sequence_bytes=1,
        **{**common, "tokens": 5000},
    )
    assert (plan.accumulation, plan.steps) == (4, 10)
    with pytest.raises(UserError, match="does not split over 4"):
        solve_plan(
            global_batch=6,
            per_device_batch=None,
            steps=1,
            memory_bytes=1,
            sequence_bytes=1,
            **common,
        )


def test_chip_names_from_device_kind():
    class Device:
        def __init__(self, kind: str) -> None:
            self.device_kind = kind

    assert chip_of(Device("NVIDIA H100 80GB HBM3")).name == "h100"
    assert chip_of(Device("NVIDIA A100-SXM4-80GB")).name == "a100-80gb"
    assert chip_of(Device("TPU v5 lite")).name == "tpu-v5e"
    assert chip_of(Device("TPU v5")).name == "tpu-v5p"
    assert chip_of(Device("NVIDIA H100 PCIe")).name == "h100-pcie"
    assert chip_of(Device("NVIDIA H100 NVL")).name == "h100-nvl"
    assert chip_of(Device("NVIDIA A100-PCIE-40GB")).name == "a100-pcie-40gb"
    assert chip_of(Device("NVIDIA L40S")).name == "l40s"
    assert chip_of(Device("NVIDIA L40")).name == "l40"
    assert chip_of(Device("NVIDIA RTX 6000 Ada Generation")).name == "ada6000"
    assert chip_of(Device("NVIDIA RTX A6000")).name == "a6000"
    assert chip_of(Device("NVIDIA GB10")).name == "gb10"
    assert chip_of(Device("TPU v3")).name == "tpu-v3"
    assert chip_of(Device("cpu")) is None
    # a v3 chip is two devices: eight devices are four chips' peak
    tpu = Device("TPU v3")
    tpu.platform = "tpu"
    assert peak_flops([tpu] * 8, 1)[0] == 4 * CHIPS["tpu-v3"].bf16_flops


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cross_entropy_gradient_matches_autodiff_in_the_logits_dtype(dtype):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(3, 7, 50)) * 3, dtype)
    targets = jnp.asarray(rng.integers(0, 50, size=(3, 7)))
    mask = jnp.asarray(rng.random((3, 7)) > 0.3, jnp.float32)

    def reference(logits, targets, mask):
        wide = logits.astype(jnp.float32)
        lse = jax.nn.logsumexp(wide, -1)
        label = jnp.take_along_axis(wide, targets[..., None], -1)[..., 0]
        return jnp.sum((lse - label) * mask), jnp.sum(lse**2 * mask)

    def grad_of(fn):
        return jax.grad(lambda x: (lambda ce, z: 0.7 * ce + 0.01 * z)(*fn(x, targets, mask)))(
            logits
        )

    ours, ref = grad_of(cross_entropy), grad_of(reference)
    assert ours.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(ours, np.float32),
        np.asarray(ref, np.float32),
        atol=1e-6 if dtype == jnp.float32 else 1e-2,
    )


@pytest.mark.slow
@pytest.mark.parametrize("accumulation, grad_shards", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_step_gradient_is_the_mean_over_loss_tokens(accumulation, grad_shards):
    """The step divides summed losses by the batch's positions, then rescales the reduced
    gradients to its loss tokens: the result is the gradient of the masked mean loss, whether
    the shards' gradients are reduced by the partitioner or summed by the step."""
    model = small(GPT2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(2)
    shape = (accumulation, 4 // accumulation, 16)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, 128, shape), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, 128, shape), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), shape),
        "loss_mask": jnp.asarray(rng.random(shape) > 0.6, jnp.int32),
    }
    step = make_train_step(
        graphdef,
        rest,
        optax.identity(),
        seed=0,
        accumulation=accumulation,
        gradients=ShardedGradients(grad_shards) if grad_shards > 1 else Gradients(),
    )
    state, metrics = jax.jit(step)({"params": params, "opt": ()}, batch, 0, 1.0)
    grads = jax.tree.map(lambda new, old: new - old, state["params"], params)

    def mean_loss(params):
        flat = jax.tree.map(lambda x: x.reshape(4, 16), batch)
        logits = nnx.merge(graphdef, params, rest)(flat["inputs"], flat["positions"])
        ce, _ = cross_entropy(logits, flat["targets"], flat["loss_mask"])
        return ce / jnp.sum(flat["loss_mask"])

    loss, expected = jax.value_and_grad(mean_loss)(params)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_steps_on_a_train_states_leaves_match_steps_on_its_tree():
    """The loop hands the compiled step the state's flat leaves; the tree it rebuilds after
    each step holds what stepping the tree itself gives."""
    graphdef, params, rest = nnx.split(small(GPT2), nnx.Param, ...)
    tx = optax.adamw(1e-2)
    step = make_train_step(graphdef, rest, tx, seed=0, accumulation=1)
    rng = np.random.default_rng(3)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, 128, (1, 4, 16)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, 128, (1, 4, 16)), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (1, 4, 16)),
        "loss_mask": jnp.ones((1, 4, 16), jnp.float32),
    }
    tree = {"params": params, "opt": tx.init(params)}
    state = TrainState(params, tx.init(params))
    on_tree, on_flat = jax.jit(step), jax.jit(on_leaves(step, state.treedef))
    for i in range(3):
        tree, expected = on_tree(tree, batch, i, 1.0)
        leaves, metrics = on_flat(state.leaves, batch, i, 1.0)
        state.advance(leaves)
        assert float(metrics["loss"]) == float(expected["loss"])
    assert jax.tree.structure(state.tree) == jax.tree.structure(tree)
    for ours, theirs in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(tree["params"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert int(state.opt[0].count) == 3


@pytest.mark.slow
def test_default_xla_flags_before_jax_starts_and_never_over_the_users():
    """Run in fresh interpreters: XLA reads its flags when JAX starts its backend."""
    probe = (
        "import json, os, jax\n"
        "from theseus.parallel.distributed import apply_default_xla_flags\n"
        "first = apply_default_xla_flags()\n"
        "jax.devices()\n"
        "os.environ['XLA_FLAGS'] = ''\n"
        "print(json.dumps([first, apply_default_xla_flags()]))\n"
    )

    def run(xla_flags):
        env = {**os.environ, "XLA_FLAGS": xla_flags}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.splitlines()[-1])

    first, after_start = run("--xla_cpu_enable_fast_math=false")
    assert first == ["--xla_gpu_enable_triton_gemm=false"] and after_start == []
    first, _ = run("--xla_gpu_enable_triton_gemm=true")
    assert first == []


@pytest.mark.parametrize("where", ["runs/default/default/runs", "runs/runs/runs/x", "runs/p/g/n"])
def test_a_run_folder_maps_to_its_checkpoints_whatever_its_names(tmp_path, where):
    from theseus.checkpoint import checkpoint_dir_of

    run = tmp_path / "out" / where
    checkpoints = tmp_path / "out" / "checkpoints" / Path(where).relative_to("runs")
    run.mkdir(parents=True)
    (checkpoints / "4").mkdir(parents=True)
    assert checkpoint_dir_of(run) == checkpoints.resolve()
    assert checkpoint_dir_of(checkpoints) == checkpoints.resolve()
