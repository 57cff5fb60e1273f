"""Trainer features end to end through `theseus run`: checkpoint retention, the wsd learning rates
as logged, the Muon optimizer (on one device and sharded over 8), and the Llama pretraining job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.training.conftest import TINY, ckpt_dir, cli_args, losses, run_dir
from theseus.cli import main
from theseus.training.metrics import read_metrics

# every test trains (2 to 50 s each)
pytestmark = pytest.mark.slow


def _kept_steps(root, name: str) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir(root, name).iterdir() if p.name.isdigit())


@pytest.mark.parametrize(
    ("keep", "keep_every"), [(2, None), (2, 4)], ids=["last-2", "last-2-every-4"]
)
def test_checkpoint_retention_keeps_the_latest_and_every_multiple(
    root, train_yaml, keep, keep_every
):
    """12 steps, a checkpoint every 2 (the last one, 12, is the final save): the newest `keep`
    of them stay, and every one whose step `keep_every` divides."""
    name = f"keep-{keep}-{keep_every}"
    overrides = [
        "training.steps=12",
        "logging.checkpoint_interval=2",
        f"logging.checkpoint_keep={keep}",
        f"logging.checkpoint_keep_every={'null' if keep_every is None else keep_every}",
    ]
    assert main(cli_args(name, train_yaml, root, *overrides)) == 0
    saved = list(range(2, 13, 2))
    expected = set(saved[-keep:]) | {s for s in saved if keep_every and s % keep_every == 0}
    assert _kept_steps(root, name) == sorted(expected)
    assert _kept_steps(root, name) == ([10, 12] if keep_every is None else [4, 8, 10, 12])


def _wsd(step: int, *, lr: float, min_lr: float, warmup: int, total: int, fraction: float):
    """The documented wsd rate of (1-based) step `step`: linear warmup to lr, lr held, then a
    linear decay over the last `fraction` of the run that reaches min_lr at the last step."""
    decay = min(round(total * fraction), total - warmup)
    stable_until = total - decay
    if step <= warmup:
        return lr * step / warmup
    if step <= stable_until:
        return lr
    return lr + (min_lr - lr) * (step - stable_until) / decay


def test_wsd_learning_rates_are_logged_per_step_as_the_schedule_says(root, train_yaml):
    overrides = (
        "training.steps=12",
        "optimization.schedule=wsd",
        "optimization.warmup_steps=3",
        "optimization.decay_fraction=0.25",
        "optimization.lr=0.004",
        "optimization.min_lr=0.001",
        "logging.checkpoint_interval=1000",
    )
    assert main(cli_args("wsd-lr", train_yaml, root, *overrides)) == 0
    records = [r for r in read_metrics(run_dir(root, "wsd-lr") / "metrics.jsonl") if "lr" in r]
    logged = {r["step"]: r["lr"] for r in records}
    assert sorted(logged) == list(range(1, 13))
    shape = {"lr": 0.004, "min_lr": 0.001, "warmup": 3, "total": 12, "fraction": 0.25}
    expected = {s: _wsd(s, **shape) for s in range(1, 13)}
    assert logged == pytest.approx(expected, rel=1e-6)
    # the three phases, spelled out: warmup 1-3, stable 4-9, decay 10-12 ending at min_lr
    assert [logged[s] for s in (1, 2, 3)] == pytest.approx([0.004 / 3, 0.008 / 3, 0.004])
    assert [logged[s] for s in range(3, 10)] == pytest.approx([0.004] * 7)
    assert [logged[s] for s in (10, 11, 12)] == pytest.approx([0.003, 0.002, 0.001])


MUON = ("optimization.optimizer=muon", "optimization.muon_lr=0.02")
MUON_STEPS = ("training.steps=8", "logging.checkpoint_interval=1000")


@pytest.fixture(scope="module")
def muon_losses(root, train_yaml) -> list[float]:
    """Losses of an 8-step Muon run on one device: the reference for the sharded runs."""
    assert main(cli_args("muon", train_yaml, root, *MUON, *MUON_STEPS)) == 0
    return [loss for _, loss in losses(root, "muon")]


def test_muon_trains_through_the_trainer_and_checkpoints(root, muon_losses):
    assert len(muon_losses) == 8 and all(np.isfinite(muon_losses))
    assert muon_losses[-1] < muon_losses[0] - 0.3, muon_losses
    assert _kept_steps(root, "muon") == [8]
    config = (run_dir(root, "muon") / "config.yaml").read_text()
    assert "optimizer: muon" in config and "muon_lr: 0.02" in config


EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
MUON_LAYOUTS = {
    "muon-data8": [],
    "muon-fsdp4-data2": ["parallel.fsdp=4"],
    "muon-tensor4-fsdp2": ["parallel.fsdp=2", "parallel.tensor=4"],
}
SHARDED = """
import json, sys
from pathlib import Path
import jax
from theseus.cli import main
from tests.training.conftest import losses
root, yaml, layouts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
assert jax.device_count() == 8, jax.devices()
out = {}
for name, args in layouts.items():
    assert main(["run", name, yaml, root, *args]) == 0
    out[name] = [loss for _, loss in losses(Path(root), name)]
print("LOSSES" + json.dumps(out))
"""


def test_muon_sharded_over_eight_devices_matches_one_device(root, train_yaml, muon_losses):
    """Muon orthogonalizes whole matrices: split over data, FSDP and tensor shards it must
    compute what one device does, up to float32 reduction order."""
    layouts = {name: [*TINY, *MUON, *MUON_STEPS, *extra] for name, extra in MUON_LAYOUTS.items()}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED, str(root), str(train_yaml), json.dumps(layouts)],
        capture_output=True,
        text=True,
        env={**os.environ, **EIGHT_DEVICES},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for layout in ("[data 8, fsdp 1, tensor 1]", "[data 2, fsdp 4, tensor 1]"):
        assert layout in result.stderr
    assert "[data 1, fsdp 2, tensor 4]" in result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOSSES"))
    for name, sharded in json.loads(line[len("LOSSES") :]).items():
        assert len(sharded) == 8
        np.testing.assert_allclose(sharded, muon_losses, rtol=1e-4, atol=1e-5, err_msg=name)
        assert _kept_steps(root, name) == [8]


def test_the_llama_pretrain_job_trains_with_its_wsd_schedule(root, tmp_path, capsys):
    yaml = tmp_path / "llama.yaml"
    assert main(["configure", "llama/train/pretrain", str(yaml)]) == 0
    overrides = ("training.steps=8", "architecture.n_kv_heads=2", "logging.checkpoint_interval=4")
    capsys.readouterr()
    assert main(cli_args("llama", yaml, root, *overrides)) == 0
    err = capsys.readouterr().err
    assert "llama: 8 steps x 8 seqs x 32 tokens" in err and "schedule wsd" in err, err
    trained = [loss for _, loss in losses(root, "llama")]
    assert len(trained) == 8 and all(np.isfinite(trained))
    assert trained[-1] < trained[0] - 0.3, trained
    assert _kept_steps(root, "llama") == [4, 8]
    written = (run_dir(root, "llama") / "config.yaml").read_text()
    assert written.startswith("job: llama/train/pretrain\n") and "n_kv_heads: 2" in written
    # wsd, not the GPT job's cosine: the rate holds at lr between the warmup and the decay
    rates = {r["step"]: r["lr"] for r in read_metrics(run_dir(root, "llama") / "metrics.jsonl")}
    assert rates[3] == rates[4] == rates[6] == pytest.approx(0.003)
