"""LoRA fine-tuning: only the adapters train and hold optimizer state; checkpoints hold the
adapters and name their base; a run killed with SIGKILL resumes bitwise; a changed base is
refused; sharded runs equal one device; a trained run loads back (base + adapters) for sampling
and export (`lora.merge`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.training.conftest import ckpt_dir, last_step, losses, run_dir, spawn, wait_for
from tests.training.test_finetune import finetune_args, finetune_yaml, hf_folder
from theseus.cli import main
from theseus.errors import UserError

__all__ = ["finetune_yaml"]  # a fixture shared with test_finetune.py

# fine-tuning runs in-process and in subprocesses (5 to 30 s each)
pytestmark = pytest.mark.slow

STEPS = 40
LORA = (
    f"training.steps={STEPS}",
    "training.batch_size=16",
    "finetune.lora.rank=4",
    "finetune.lora.dropout=0.1",  # adapter dropout: its masks must resume too
    "optimization.lr=0.003",
    "logging.checkpoint_interval=8",
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    return hf_folder(tmp_path_factory.mktemp("lora-base") / "llama")


@pytest.fixture(scope="module")
def reference(root, finetune_yaml, base) -> list[tuple[int, float]]:
    assert main(finetune_args("lora-ref", finetune_yaml, root, base, *LORA)) == 0
    sequence = losses(root, "lora-ref")
    assert [step for step, _ in sequence] == list(range(1, STEPS + 1))
    return sequence


def test_only_the_adapters_train_and_the_checkpoint_names_the_base(root, base, reference):
    from theseus.checkpoint import Checkpointer
    from theseus.model import lora
    from theseus.training.pretrained import fingerprint

    log = (run_dir(root, "lora-ref") / "log.txt").read_text()
    line = next(x for x in log.splitlines() if "LoRA rank 4" in x)
    assert "on q, k, v, o: 3.58K trainable of 127K (2.8%)" in line, line
    assert "optimizer state 28.7 KB vs 1.01 MB for full fine-tuning" in line, line
    reader = Checkpointer(ckpt_dir(root, "lora-ref"), read_only=True, asynchronous=False)
    try:
        meta = reader.meta(STEPS)
        stored = reader._manager.item_metadata(STEPS)
    finally:
        reader.close()
    assert meta["base"] == {
        "init_from": str(base),
        "model_type": "llama",
        "fingerprint": fingerprint(base),
    }
    assert meta["lora"] == {"rank": 4, "alpha": 16.0, "dropout": 0.1, "targets": list("qkvo")}
    params, opt = (
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(stored[item])]
        for item in ("params", "opt")
    )
    assert len(params) == 16 and all("_lora" in p for p in params), params
    moments = [p for p in opt if "'mu'" in p or "'nu'" in p]
    assert len(moments) == 32 and all("_lora" in p for p in moments), opt
    assert not any("'embed'" in p or "'mlp'" in p for p in params + opt)
    # the run loads back as its base with the trained adapters
    from theseus.inference import load_model
    from theseus.interop import import_hf

    model, cfg, _ = load_model(run_dir(root, "lora-ref"))
    assert cfg.finetune.lora.rank == 4 and lora.adapted_parameters(model) == 3584
    frozen = nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.Adapted)))
    same = jax.tree.map(np.array_equal, frozen, nnx.state(import_hf(base), nnx.Param))
    assert all(jax.tree.leaves(same))
    tokens = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) + 40
    adapted = model(tokens)
    plain = import_hf(base)(tokens)
    assert float(jnp.abs(adapted - plain).max()) > 1e-3  # the adapters changed the function
    lora.merge(model)
    assert lora.adapted_parameters(model) == 0
    np.testing.assert_allclose(model(tokens), adapted, atol=1e-5)
    assert main(["sample", str(run_dir(root, "lora-ref")), "def ", "--max-new", "4"]) == 0


def _has_checkpoint(root, name: str) -> bool:
    folder = ckpt_dir(root, name)
    return folder.is_dir() and any(
        d.name.isdigit() and (d / "meta").exists() for d in folder.iterdir()
    )


def test_sigkill_during_lora_finetuning_then_resume_is_bitwise_identical(
    root, finetune_yaml, base, reference, capsys
):
    args = finetune_args("lora-killed", finetune_yaml, root, base, *LORA)
    proc = spawn(args)
    wait_for(
        lambda: (
            (last_step(root, "lora-killed") >= 10 and _has_checkpoint(root, "lora-killed"))
            or proc.poll() is not None
        )
    )
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last_step(root, "lora-killed") < STEPS
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming lora-killed from its checkpoint at step" in capsys.readouterr().err
    assert losses(root, "lora-killed") == reference


def test_resuming_on_a_changed_base_is_refused(root, finetune_yaml, base, tmp_path, capsys):
    from theseus.inference import load_model

    folder = tmp_path / "base"
    shutil.copytree(base, folder)
    lora = ("finetune.lora.rank=4", "logging.checkpoint_interval=2")
    assert (
        main(finetune_args("rebased", finetune_yaml, root, folder, "training.steps=2", *lora)) == 0
    )
    hf_folder(folder, seed=1)  # the same shapes and sizes, other weights
    capsys.readouterr()
    args = finetune_args("rebased", finetune_yaml, root, folder, "training.steps=4", *lora)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "its LoRA adapters were trained on base" in err and "restore that base" in err, err
    assert sorted(p.name for p in ckpt_dir(root, "rebased").iterdir() if p.name.isdigit()) == ["2"]
    with pytest.raises(UserError, match="its LoRA adapters were trained on base"):
        load_model(run_dir(root, "rebased"))


SHARDED = """
import json, sys
from pathlib import Path
from theseus.cli import main
from tests.training.conftest import losses
import jax
assert jax.device_count() == 8, jax.devices()
root, args = sys.argv[1], json.loads(sys.argv[2])
assert main(args) == 0
print("LOSSES" + json.dumps(losses(Path(root), args[1])))
"""


def test_lora_on_data_fsdp_and_tensor_shards_matches_one_device(
    root, finetune_yaml, base, reference
):
    args = finetune_args(
        "lora-sharded", finetune_yaml, root, base, *LORA, "parallel.fsdp=2", "parallel.tensor=2"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", SHARDED, str(root), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[data 2, fsdp 2, tensor 2]" in result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOSSES"))
    sharded = json.loads(line[len("LOSSES") :])
    assert [s for s, _ in sharded] == [s for s, _ in reference]
    np.testing.assert_allclose(
        [loss for _, loss in sharded], [loss for _, loss in reference], rtol=0, atol=1e-5
    )
