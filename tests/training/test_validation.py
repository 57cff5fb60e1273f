"""Settings a run cannot use are refused before any work, in one line; optimizer details that a
resume or a correct update depends on (clipping toggled, Muon's Adam part)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.training.conftest import ckpt_dir, cli_args, losses, run_dir
from theseus.checkpoint import _shapes
from theseus.cli import main
from theseus.errors import UserError
from theseus.model.models import LLAMA, Transformer
from theseus.training.optimizers import OptimizerConfig, decay_mask, make_optimizer

REFUSED = {
    "training.seed=-1": "training.seed=-1: must be >= 0",
    "training.seed=4294967296": "training.seed=4294967296: must be <= 4294967295",
    "optimization.b1=1.0": "optimization.b1=1.0: must be < 1",
    "optimization.b1=-0.1": "optimization.b1=-0.1: must be >= 0",
    "optimization.b2=1.0": "optimization.b2=1.0: must be < 1",
    "optimization.b2=1.5": "optimization.b2=1.5: must be < 1",
    "optimization.eps=0": "optimization.eps=0.0: must be > 0",
    "optimization.lr=nan": "optimization.lr=nan: must be a finite number",
    "optimization.lr=inf": "optimization.lr=inf: must be a finite number",
    "optimization.lr=-0.1": "optimization.lr=-0.1: must be >= 0",
    "optimization.min_lr=0.01": "optimization.min_lr=0.01 is above optimization.lr=0.003",
    "optimization.decay_fraction=1.5": "optimization.decay_fraction=1.5: must be <= 1",
    "optimization.decay_fraction=-0.5": "optimization.decay_fraction=-0.5: must be >= 0",
    "optimization.warmup_steps=-1": "optimization.warmup_steps=-1: must be >= 0",
    "optimization.clip_norm=0": "optimization.clip_norm=0.0: must be > 0",
    "optimization.muon_momentum=1": "optimization.muon_momentum=1.0: must be < 1",
    "optimization.muon_lr=0.02": "optimization.muon_lr=0.02 is set, but optimization.optimizer=adamw",
    "architecture.dropout=1.0": "architecture.dropout=1.0: must be < 1",
    "architecture.dropout=-0.1": "architecture.dropout=-0.1: must be >= 0",
    "architecture.rope_theta=0": "architecture.rope_theta=0.0: must be > 0",
    "training.steps=1.5": "training.steps: expected int, got 1.5 (float); write a whole number",
    "training.dataset.0.rate=-1": "training.dataset.0.rate=-1.0: a rate must be a finite number",
    "training.dataset.0.rate=nan": "training.dataset.0.rate=nan: a rate must be a finite number",
    "training.dataset.0.rate=0": "training.dataset: every rate is 0 ([0.0]); give one a rate > 0",
    "training.dataset=[]": "training.dataset is empty; name a token store",
}


@pytest.fixture(scope="module")
def yamls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("yamls")
    paths = {}
    for job in ("gpt/train/pretrain", "llama/train/pretrain"):
        paths[job] = str(folder / f"{job.split('/')[0]}.yaml")
        assert main(["configure", job, paths[job]]) == 0
    return paths


@pytest.mark.parametrize("override", list(REFUSED))
def test_nonsense_settings_are_refused_in_one_line_before_any_work(
    override, yamls, tmp_path, capsys
):
    capsys.readouterr()
    assert main(cli_args("bad", yamls["gpt/train/pretrain"], tmp_path, override)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert REFUSED[override] in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


def test_rope_with_an_odd_head_width_is_refused_naming_width_and_heads(yamls, tmp_path, capsys):
    capsys.readouterr()
    odd = ("architecture.d_model=36", "architecture.n_kv_heads=2")  # 36 / 4 heads = 9
    assert main(cli_args("odd", yamls["llama/train/pretrain"], tmp_path, *odd)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "positions=rope needs an even head width, but d_model=36 / n_heads=4 = 9" in err
    assert not (tmp_path / "runs").exists()
    # learned positions take any head width
    assert main(["configure", "gpt/train/pretrain", str(tmp_path / "g.yaml"), *odd[:1]]) == 0
    # and the model itself refuses, when built without a config check
    odd_llama = dataclasses.replace(LLAMA, d_model=36, n_heads=4, vocab_size=64)
    with pytest.raises(UserError, match="positions=rope needs an even head width"):
        Transformer(odd_llama, rngs=nnx.Rngs(0))


def test_whole_numbers_written_as_floats_set_integer_settings(yamls, tmp_path, capsys):
    from theseus.stages import Stage, override

    stage = Stage.from_yaml(yamls["gpt/train/pretrain"])
    override([stage], ["training.tokens=1e9", "training.steps=2.0", "logging.interval=1e1"])
    stage.check()
    assert stage.cfg.training.tokens == 10**9 and isinstance(stage.cfg.training.tokens, int)
    assert stage.cfg.training.steps == 2 and stage.cfg.logging.interval == 10
    written = tmp_path / "t.yaml"
    text = Path(yamls["gpt/train/pretrain"]).read_text()
    written.write_text(text.replace("tokens: null", "tokens: 1e9"))
    assert Stage.from_yaml(written).cfg.training.tokens == 10**9


def _params():
    config = dataclasses.replace(
        LLAMA, n_layers=1, n_heads=4, d_model=32, block_size=16, vocab_size=128, dtype="float32"
    )
    return nnx.state(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)


def test_toggling_clip_norm_keeps_the_optimizer_state_a_checkpoint_holds():
    params = _params()
    states = {
        clip: jax.eval_shape(make_optimizer(OptimizerConfig(clip_norm=clip)).init, params)
        for clip in (1.0, None)
    }
    # what the checkpoint compares before a resume reads anything
    assert _shapes(states[1.0]) == _shapes(states[None])
    # clipping off leaves the updates exactly those of AdamW alone
    grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
    off = make_optimizer(OptimizerConfig(clip_norm=None))
    plain = optax.adamw(1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=decay_mask)
    ours, _ = off.update(grads, off.init(params), params)
    theirs, _ = plain.update(grads, plain.init(params), params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_clip_norm_may_be_turned_off_when_resuming(root, train_yaml, capsys):
    short = ("logging.checkpoint_interval=1000", "logging.val_interval=0")
    assert main(cli_args("toggle", train_yaml, root, "training.steps=2", *short)) == 0
    off = ("training.steps=3", "optimization.clip_norm=null", *short)
    capsys.readouterr()
    assert main(cli_args("toggle", train_yaml, root, *off)) == 0, capsys.readouterr().err
    assert [s for s, _ in losses(root, "toggle")] == [1, 2, 3]


def test_muon_adam_part_takes_eps_and_masked_weight_decay():
    """Parameters Muon hands to Adam (embeddings, norms, the untied head) update as AdamW with
    the same eps and weight-decay mask would update them (gradients below the clipping norm)."""
    params = _params()
    muon = make_optimizer(
        OptimizerConfig(optimizer="muon", b1=0.8, b2=0.9, eps=1e-2, weight_decay=0.5)
    )
    # optax's muon runs its Adam part with Nesterov momentum
    adamw = optax.adamw(
        1.0, b1=0.8, b2=0.9, eps=1e-2, weight_decay=0.5, mask=decay_mask, nesterov=True
    )
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(params))))
    grads = jax.tree.map(lambda p: 1e-3 * jax.random.normal(next(keys), p.shape), params)
    by_muon, _ = muon.update(grads, muon.init(params), params)
    by_adamw, _ = adamw.update(grads, adamw.init(params), params)
    flat = lambda tree: {  # noqa: E731
        jax.tree_util.keystr(k, simple=True, separator="."): v
        for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }
    muon_flat, adamw_flat = flat(by_muon), flat(by_adamw)
    adam_part = [k for k in muon_flat if any(m in k for m in ("embed", "head", "norm"))]
    assert "lm_head.kernel.value" in adam_part and "embed.weight.value" in adam_part
    for key in adam_part:
        np.testing.assert_allclose(muon_flat[key], adamw_flat[key], rtol=1e-6, err_msg=key)


def test_muon_lr_scales_the_matrices_and_leaves_the_adam_part():
    params = _params()
    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)

    def update(**settings):
        tx = make_optimizer(OptimizerConfig(optimizer="muon", lr=1e-3, **settings))
        updates, _ = tx.update(grads, tx.init(params), params)
        return {
            jax.tree_util.keystr(k, simple=True, separator="."): v
            for k, v in jax.tree_util.tree_leaves_with_path(updates)
        }

    same, doubled = update(), update(muon_lr=2e-3)
    adam_part = {k for k in same if any(m in k for m in ("embed", "head", "norm"))}
    assert adam_part and len(adam_part) < len(same)
    for key in same:
        factor = 1.0 if key in adam_part else 2.0
        np.testing.assert_allclose(doubled[key], factor * same[key], rtol=1e-6, err_msg=key)


@pytest.mark.slow
def test_fresh_moves_nothing_when_the_run_is_refused(root, train_yaml, capsys):
    """--fresh with training.overwrite=true moves the run aside only once its settings hold."""
    assert main(cli_args("refused-fresh", train_yaml, root, "training.steps=2")) == 0
    overwrite = ("--fresh", "training.overwrite=true", "training.steps=2")
    capsys.readouterr()
    bad = cli_args("refused-fresh", train_yaml, root, *overwrite, "training.seq_len=64")
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "training.seq_len=64 exceeds architecture.block_size=32" in err and "moved" not in err
    assert [s for s, _ in losses(root, "refused-fresh")] == [1, 2]
    assert not list(run_dir(root, "refused-fresh").parent.glob("refused-fresh.replaced-*"))
    assert main(cli_args("refused-fresh", train_yaml, root, *overwrite)) == 0
    assert "--fresh: moved" in capsys.readouterr().err


def test_fresh_with_a_missing_restore_moves_nothing(root, train_yaml, capsys):
    """--fresh moves the run aside only once --restore is known to be readable."""
    step = ckpt_dir(root, "kept") / "4"
    step.mkdir(parents=True)
    run_dir(root, "kept").mkdir(parents=True)
    missing = str(root / "missing")
    args = cli_args("kept", train_yaml, root, "training.overwrite=true")
    capsys.readouterr()
    assert main([*args, "--fresh", "--restore", missing]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no such run or checkpoint") and "moved" not in err, err
    assert step.is_dir() and run_dir(root, "kept").is_dir()
    assert not list(ckpt_dir(root, "kept").parent.glob("kept.replaced-*"))


def test_fresh_restoring_from_the_run_itself_moves_nothing(root, train_yaml, capsys):
    """--fresh would move aside the very checkpoint --restore names: refused, nothing moved."""
    step = ckpt_dir(root, "self-restore") / "4"
    (step / "meta").mkdir(parents=True)
    run_dir(root, "self-restore").mkdir(parents=True)
    args = cli_args("self-restore", train_yaml, root, "training.overwrite=true")
    capsys.readouterr()
    for source in (run_dir(root, "self-restore"), step):
        assert main([*args, "--fresh", "--restore", str(source)]) == 2
        err = capsys.readouterr().err.strip()
        assert "that is this run's own checkpoint" in err and len(err.splitlines()) == 1, err
        assert step.is_dir()


def test_configure_refuses_a_dataset_mixture_run_would_refuse(tmp_path, capsys):
    out = tmp_path / "train.yaml"
    assert main(["configure", "gpt/train/pretrain", str(out), "training.dataset.0.rate=-1"]) == 2
    assert "training.dataset.0.rate=-1.0: a rate must be" in capsys.readouterr().err
    assert main(["configure", "gpt/train/pretrain", str(out), "training.dataset.0.name=../x"]) == 2
    assert "bad training.dataset.0.name '../x'" in capsys.readouterr().err
    tokenize = ["configure", "data/tokenize_variable_dataset", str(out)]
    assert main([*tokenize, "data.store=x.partial"]) == 2
    assert "bad data.store 'x.partial'" in capsys.readouterr().err
    assert not out.exists()
    assert main([*tokenize, "data.name=pystdlib"]) == 0  # the store name follows data.name


def test_carrying_another_jobs_config_over_takes_only_its_hand_set_values(tmp_path):
    from theseus.config import read_yaml

    gpt, llama = tmp_path / "gpt.yaml", tmp_path / "llama.yaml"
    assert main(["configure", "gpt/train/pretrain", str(gpt), "architecture.n_layers=6"]) == 0
    assert main(["configure", "llama/train/pretrain", str(llama), "-p", str(gpt)]) == 0
    architecture = read_yaml(llama)["config"]["architecture"]
    assert architecture["n_layers"] == 6  # set by hand in gpt.yaml
    assert (architecture["positions"], architecture["norm"]) == ("rope", "rmsnorm")  # Llama's own
