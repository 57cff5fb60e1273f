"""Loss parity with PyTorch: theseus's trainer and an independent PyTorch reference of nanoGPT's
semantics (`bench/reference.py`) start from the same weights and train on the same batches (the
ones theseus's loader serves); their per-step losses agree to 1e-4 relative for 50 steps.

A wrong gradient (a hand-written backward pass, the cross-entropy, the accumulation, the
reduction over devices), a wrong optimizer step, schedule, clipping or weight-decay mask, or
probability leaking to padding ids, all move the losses apart within a few steps.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from tests.training.conftest import cli_args, losses, spawn
from theseus.cli import main
from theseus.inference import load_model
from theseus.quick import quick

# training runs compared with PyTorch references (15 to 35 s each)
pytestmark = pytest.mark.slow

STEPS = 50
TOLERANCE = 1e-4

_path = Path(__file__).resolve().parents[2] / "bench" / "reference.py"
_spec = importlib.util.spec_from_file_location("theseus_bench_reference", _path)
reference = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = reference  # dataclasses resolve the module's annotations through it
_spec.loader.exec_module(reference)

SMALL = [
    "architecture.n_layers=2",
    "architecture.d_model=64",
    "architecture.n_heads=4",
    "architecture.block_size=32",
    "architecture.dtype=float32",
    "training.batch_size=8",
    f"training.steps={STEPS}",
    "optimization.warmup_steps=5",
    "optimization.lr=0.003",
    "optimization.min_lr=0.0003",
    "logging.interval=1",
    "logging.val_interval=0",
    "logging.checkpoint_interval=1000",
]

CASES = {
    # GPT-2 layout: LayerNorm, GELU, learned positions, biases, tied head, cosine schedule
    "gpt": ("gpt/train/pretrain", [], 1),
    # Llama layout: RMSNorm, SwiGLU, RoPE, grouped-query attention, untied head, wsd schedule
    "llama": ("llama/train/pretrain", ["architecture.n_kv_heads=2"], 1),
    # micro-batches of 2 accumulated four times, nanoGPT's weight decay on the embeddings too
    "gpt-accumulated": (
        "gpt/train/pretrain",
        ["training.per_device_batch_size=2", "optimization.decay_embeddings=true"],
        1,
    ),
    # two CPU devices (per-device gradients reduced as one buffer), accumulated twice
    "llama-2-devices": (
        "llama/train/pretrain",
        [
            "architecture.n_kv_heads=2",
            "parallel.cpu_devices=2",
            "training.per_device_batch_size=2",
        ],
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_losses_equal_the_pytorch_reference_from_the_same_weights(root, case):
    job, extra, devices = CASES[case]
    name = f"parity-{case}"
    with quick(job, root, name) as j:
        j.override("training.dataset=[{name: pystdlib}]", *SMALL, *extra)
        yaml = j.save(root / f"{name}.yaml")
        run = reference.Run(job, j.config, root)
    args = ["run", name, str(yaml), str(root)]
    if devices == 1:
        assert main(args) == 0
    else:  # the split into devices happens before JAX starts: a process of its own
        proc = spawn(args, env={"XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "-1"})
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        assert f"on {devices} cpu device(s)" in out, out
    ours = [loss for _, loss in losses(root, name)]
    theirs = [step["loss"] for step in run.same_weights(STEPS)]
    assert len(ours) == STEPS
    differences = reference.relative_differences(ours, theirs)
    worst = max(range(STEPS), key=differences.__getitem__)
    assert differences[worst] <= TOLERANCE, (
        f"step {worst + 1}: theseus {ours[worst]:.6f}, reference {theirs[worst]:.6f}"
    )
    assert theirs[-1] < theirs[0] - 1.0  # both learned: equal losses are not two flat lines


def test_a_run_predicts_only_its_stores_ids_and_its_checkpoint_says_so(root, train_yaml):
    """The bytes store has 257 ids, padded to 384: the checkpoint's model masks the other 127."""
    assert main(cli_args("padded", train_yaml, root, "training.steps=2")) == 0
    model, _, _ = load_model(root / "checkpoints" / "default" / "default" / "padded")
    assert (model.config.vocab_size, model.config.vocab_used) == (384, 257)
    logits = model(jnp.zeros((1, 4), jnp.int32))
    assert bool(jnp.all(logits[..., 257:] == -jnp.inf))
    assert bool(jnp.isfinite(logits[..., :257]).all())


def test_vocab_used_outside_the_store_and_the_vocabulary_is_refused(root, train_yaml, capsys):
    args = cli_args("bad-used", train_yaml, root, "training.steps=1", "architecture.vocab_used=200")
    assert main(args) == 2
    assert "architecture.vocab_used=200 must lie between" in capsys.readouterr().err
    args = cli_args(
        "bad-used", train_yaml, root, "architecture.vocab_size=256", "architecture.vocab_used=300"
    )
    assert main(args) == 2
    assert "architecture.vocab_used=300 is above architecture.vocab_size=256" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("job", ["gpt/train/pretrain", "llama/train/pretrain"])
def test_initial_weights_follow_nanogpts_rules(job):
    """Same weights prove the step; this proves the start: each matrix drawn at nanoGPT's scale
    (0.02, projections into the residual stream 0.02 / sqrt(2 * layers), embeddings included),
    norms at one, biases at zero. A position embedding at 0.01 once cost 0.17 nats."""
    from flax import nnx

    from theseus.registry import JOBS

    with quick(job, "/nonexistent", "init") as j:
        j.override("architecture.n_layers=4", "architecture.d_model=256", "architecture.n_heads=4")
        j.override("architecture.block_size=256", "architecture.dtype=float32")
        ref = reference.Reference.of_config(
            j.config, vocab_size=384, vocab_used=257, job_schedule="cosine"
        )
        create = JOBS[job].model_factory(j.config, vocab_size=384, vocab_used=257, seed=0)
    params = reference.flat_params(nnx.state(create(), nnx.Param))
    model = reference.load_theseus(reference.GPT(ref), params)
    for name, p in model.named_parameters():
        value = p.detach().numpy()
        std = reference.nanogpt_std(name, ref.n_layers)
        if std is None:
            expected = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            assert (value == expected).all(), name
        else:
            assert abs(value.mean()) < 0.1 * std, name
            assert value.std() == pytest.approx(std, rel=0.05), name
