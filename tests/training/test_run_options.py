"""`theseus run` options and failure policies: --fresh, --restore, non-finite loss, bad input,
W&B (offline) and TensorBoard, validation, plots."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from tests.training.conftest import ckpt_dir, cli_args, losses, run_dir, run_log, spawn
from tests.training.readback import tensorboard_scalars, wandb_history
from theseus.cli import main
from theseus.training.metrics import read_metrics

SHORT = ("training.steps=3", "logging.checkpoint_interval=1000")


@pytest.mark.slow
def test_fresh_refuses_existing_checkpoints_unless_overwrite(root, train_yaml, capsys):
    assert main(cli_args("again", train_yaml, root, *SHORT)) == 0
    assert "warmup_steps=3 covers the whole run (3 steps)" in capsys.readouterr().err
    assert main(cli_args("again", train_yaml, root, *SHORT)) == 0
    err = capsys.readouterr().err
    assert "already finished at step 3" in err and "compiled in" not in err, err
    assert main(cli_args("again", train_yaml, root, "training.steps=2")) == 0  # fewer steps
    err = capsys.readouterr().err
    assert "settings changed since that checkpoint: training.steps" in err, err
    assert "goes on with the new ones" not in err and "already finished at step 3" in err, err

    assert main([*cli_args("again", train_yaml, root, *SHORT), "--fresh"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --fresh: run 'again' already has checkpoints")
    assert "training.overwrite=true" in err and len(err.splitlines()) == 1
    assert (ckpt_dir(root, "again") / "3").is_dir()

    assert (
        main([*cli_args("again", train_yaml, root, *SHORT, "training.overwrite=true"), "--fresh"])
        == 0
    )
    err = capsys.readouterr().err
    moved = sorted(
        p.name
        for p in ckpt_dir(root, "again").parent.iterdir()
        if p.name.startswith("again.replaced-")
    )
    assert len(moved) == 1 and f"moved {ckpt_dir(root, 'again')}" in err
    assert (ckpt_dir(root, "again").parent / moved[0] / "3").is_dir()
    assert [s for s, _ in losses(root, "again")] == [1, 2, 3]


@pytest.mark.slow
def test_fresh_sets_an_attempt_without_checkpoints_aside(root, train_yaml, capsys):
    """An attempt killed before its first checkpoint leaves only logs: --fresh moves them aside,
    so that none of its metrics, TensorBoard events or W&B run carries on into the new run."""
    args = cli_args("early", train_yaml, root, *SHORT, "logging.tensorboard=true")
    assert main(args) == 0
    shutil.rmtree(ckpt_dir(root, "early"))  # as if killed before its first checkpoint
    (run_dir(root, "early") / "wandb_id").write_text("0123456789abcdef")
    capsys.readouterr()
    assert main([*args, "--fresh"]) == 0
    err = capsys.readouterr().err
    aside = [p for p in run_dir(root, "early").parent.iterdir() if p.name.startswith("early.")]
    assert len(aside) == 1 and f"moved {run_dir(root, 'early')} to {aside[0]}" in err
    assert (aside[0] / "wandb_id").read_text() == "0123456789abcdef"
    assert len(list((aside[0] / "tensorboard").iterdir())) == 1
    assert not (run_dir(root, "early") / "wandb_id").exists()
    assert len(list((run_dir(root, "early") / "tensorboard").iterdir())) == 1
    assert [s for s, _ in losses(root, "early")] == [1, 2, 3]


@pytest.mark.slow
def test_restore_full_state_and_weights_only(root, train_yaml, capsys):
    assert main(cli_args("base", train_yaml, root, *SHORT)) == 0
    base = losses(root, "base")
    source = str(run_dir(root, "base"))

    assert main([*cli_args("cont", train_yaml, root, "training.steps=5"), "--restore", source]) == 0
    assert "restored full state at step 3" in capsys.readouterr().err
    assert [s for s, _ in losses(root, "cont")] == [4, 5]

    weights = ("training.steps=3", "training.restore_weights_only=true")
    assert main([*cli_args("tuned", train_yaml, root, *weights), "--restore", source]) == 0
    assert "restored weights" in capsys.readouterr().err
    tuned = losses(root, "tuned")
    assert [s for s, _ in tuned] == [1, 2, 3]
    assert tuned[0][1] < base[0][1] - 0.1  # starts from trained weights, not from scratch

    assert main([*cli_args("nowhere", train_yaml, root), "--restore", str(root / "missing")]) == 2
    assert "no such run or checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_or_skips(root, train_yaml, capsys):
    explode = ("optimization.lr=1e30", "optimization.warmup_steps=0", "optimization.clip_norm=null")
    assert main(cli_args("nan", train_yaml, root, *SHORT, *explode)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # step 1's update (lr 1e30) is finite; it sends the weights, and step 2's loss, to inf/nan
    assert err.startswith("error: loss became non-finite at step 2 "), err
    assert not any(p.name.isdigit() for p in ckpt_dir(root, "nan").iterdir())

    assert (
        main(cli_args("nan-skip", train_yaml, root, *SHORT, *explode, "training.on_nonfinite=skip"))
        == 0
    )
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step 2; update skipped" in err
    assert "at step 3; update skipped" in err


def test_bad_settings_fail_in_one_line(root, train_yaml, capsys):
    cases = {
        "training.per_device_batch_size=3": "does not divide the 8 sequences",
        "training.dataset=[{name: nope}]": "no token store 'nope'",
        "parallel.fsdp=3": "do not split into fsdp=3",
        "logging.checkpoint_keep=0": "logging.checkpoint_keep=0: must be >= 1",
        "logging.interval=0": "logging.interval=0: must be >= 1",
        "architecture.n_heads=3": "d_model=32 does not split into n_heads=3 heads",
        "architecture.dtype=float16": "architecture.dtype=float16 does not run on CPU",
    }
    cases["--restore=nowhere"] = "no such run or checkpoint"
    cases["eval.evaluations=[multiple_choice]"] = "eval.multiple_choice.path"
    cases["training.dataset=[{name: pystdlib, rate: -1}]"] = "training.dataset.0.rate=-1"
    for override, message in cases.items():
        assert main(cli_args("bad", train_yaml, root, *SHORT, override)) == 2, override
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not run_dir(root, "bad").exists() and not ckpt_dir(root, "bad").exists()


@pytest.mark.slow
def test_resuming_a_changed_model_or_optimizer_fails_in_one_line(root, train_yaml, capsys):
    """The checkpoint's shapes are compared before any array is read: the error names the first
    mismatch, and no read is left running to print a traceback at exit."""
    assert main(cli_args("changed", train_yaml, root, *SHORT)) == 0
    capsys.readouterr()
    resume = ("training.steps=5", "logging.checkpoint_interval=1000")
    assert main(cli_args("changed", train_yaml, root, *resume, "optimization.optimizer=muon")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not fit this optimizer" in err, err
    assert "training.restore_weights_only=true" in err and len(err.splitlines()) == 1, err

    proc = spawn(cli_args("changed", train_yaml, root, *resume, "architecture.d_model=64"))
    out = proc.communicate(timeout=300)[0].strip()
    assert proc.returncode == 2, out
    assert out.startswith("error: ") and len(out.splitlines()) == 1, out
    assert "does not fit this model: it has blocks.0.attn.k.value of shape (32, 4, 8)" in out, out


@pytest.mark.slow
def test_validation_wandb_tensorboard_and_plot(
    root, train_yaml, tmp_path, capsys, monkeypatch, six_step_losses
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    extra = (
        "logging.val_interval=2",
        "logging.val_batches=2",
        "logging.wandb=true",
        "logging.tensorboard=true",
    )
    assert main(cli_args("logged", train_yaml, root, "training.steps=4", *extra)) == 0
    folder = run_dir(root, "logged")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4] and val[1]["val_loss"] < val[0]["val_loss"]
    train = [r for r in records if "loss" in r]
    assert {"lr", "grad_norm", "tokens_per_s", "mfu"} <= set(train[0])
    # cosine, 3 warmup steps to 0.003 (TINY), down to min_lr (lr / 10) at the last step
    assert [r["lr"] for r in train] == pytest.approx([0.001, 0.002, 0.003, 3e-4])
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(cli_args("logged", train_yaml, root, "training.steps=6", *extra)) == 0
    resumed = capsys.readouterr()
    assert "settings changed since that checkpoint: training.steps 4 -> 6;" in (
        resumed.out + resumed.err
    )
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run
    # both sinks, read back from their own files, hold exactly the figures of metrics.jsonl
    expected: dict[int, dict[str, float]] = {}
    for record in read_metrics(folder / "metrics.jsonl"):
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        expected.setdefault(record["step"], {}).update(numbers)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6] and "val_loss" in expected[6]
    assert wandb_history(folder / "wandb") == expected
    assert tensorboard_scalars(folder / "tensorboard") == {
        (key, step): [float(np.float32(value))]  # TensorBoard keeps float32
        for step, row in expected.items()
        for key, value in row.items()
    }
    assert (folder / "loss.png").stat().st_size > 1000
    assert (folder / "config.yaml").read_text().startswith("job: gpt/train/pretrain\nconfig:")

    out = tmp_path / "both.png"
    assert main(["plot", str(folder), str(run_dir(root, "single")), "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main(["plot", str(folder), "-o", str(tmp_path / "curve.txt")]) == 2
    assert "name it .png, .pdf or .svg" in capsys.readouterr().err
    assert not (tmp_path / "curve.txt").exists()
    assert main(["plot", str(folder), "-o", str(tmp_path / "curve.svg")]) == 0
    assert (tmp_path / "curve.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.slow
def test_a_step_that_cannot_fit_memory_shrinks_or_refuses(root, train_yaml, capsys, monkeypatch):
    # The host cannot be given less RAM, so the free-memory figure is lowered instead: just
    # under what the first compiled step asks for. XLA's own buffer plan is the real need.
    from theseus.training import compile as compile_

    first: list[float] = []

    def tight(compiled):
        need, _, where = session_step_memory(compiled)
        first.append(need)
        return need, first[0] * 0.999, where

    session_step_memory = compile_.step_memory
    monkeypatch.setattr(compile_, "step_memory", tight)
    assert main(cli_args("tight", train_yaml, root, *SHORT)) == 0
    err = capsys.readouterr().err
    assert "training.per_device_batch_size=8 needs" in err and "trying 4" in err
    assert len(first) == 2 and first[1] < first[0]

    first.clear()
    pinned = "training.per_device_batch_size=8"
    assert main(cli_args("tight-pinned", train_yaml, root, *SHORT, pinned)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Lower training.per_device_batch_size" in err, err
    assert (
        not run_dir(root, "tight-pinned").exists() and not ckpt_dir(root, "tight-pinned").exists()
    )


@pytest.mark.slow
def test_the_validation_set_does_not_depend_on_the_per_device_batch(root, train_yaml):
    def val_losses(name: str, *extra: str) -> list[float]:
        options = ("training.steps=2", "logging.val_interval=1", "logging.val_batches=2", *extra)
        assert main(cli_args(name, train_yaml, root, *options)) == 0
        lines = (run_dir(root, name) / "metrics.jsonl").read_text().splitlines()
        return [r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r]

    whole = val_losses("val-whole")
    accumulated = val_losses("val-accumulated", "training.per_device_batch_size=2")
    assert len(whole) == 2 and accumulated == pytest.approx(whole, rel=1e-5)


@pytest.mark.slow
def test_a_damaged_metrics_file_neither_stops_a_resume_nor_a_plot(root, train_yaml, tmp_path):
    from theseus.training.metrics import read_metrics

    assert main(cli_args("damaged", train_yaml, root, "training.steps=2")) == 0
    metrics = run_dir(root, "damaged") / "metrics.jsonl"
    with metrics.open("ab") as f:
        f.write(b'5\n{"step": "x", "loss": 1.0}\n\xff\xfe not text\n# my note\n{"step": 9, "lo')
    assert main(cli_args("damaged", train_yaml, root, "training.steps=4")) == 0
    text = metrics.read_bytes()
    assert b"# my note\n" in text and b'{"step": 9, "lo' not in text  # a torn last line goes
    assert [r["step"] for r in read_metrics(metrics) if "loss" in r] == [1, 2, 3, 4]
    assert main(["plot", str(run_dir(root, "damaged")), "-o", str(tmp_path / "d.png")]) == 0


def test_a_run_file_that_cannot_be_written_is_a_one_line_error(tmp_path):
    from theseus.errors import UserError

    (tmp_path / "metrics.jsonl").mkdir()  # as good as a full disk or a read-only file to open()
    log = run_log(tmp_path)
    with pytest.raises(UserError, match=r"cannot write .*metrics\.jsonl: Is a directory; free"):
        log.record({"step": 1, "loss": 1.0})
    with pytest.raises(UserError, match=r"cannot write .*metrics\.jsonl: Is a directory; free"):
        log.keep_until(0)
    log.close()


@pytest.mark.slow
def test_a_run_folders_config_runs_again_as_written(root, train_yaml):
    assert main(cli_args("written", train_yaml, root, "training.steps=2")) == 0
    config = run_dir(root, "written") / "config.yaml"
    assert config.read_text().startswith("job: gpt/train/pretrain\n")
    assert main(["run", "written-again", str(config), str(root)]) == 0
    assert losses(root, "written-again") == losses(root, "written")


@pytest.mark.slow
def test_validation_time_is_left_out_of_tokens_per_s_and_steps_before_it_are_not(
    root, train_yaml, monkeypatch
):
    """Steps made to take 0.2 s each, and validation 1 s: an interval of 4 steps with a
    validation inside it took 0.8 s of training, whatever the validation took."""
    from theseus.training import loop

    original = loop.TrainingLoop.__init__

    def slowed(self, *, step_fn, eval_fn, **kwargs):
        def step(*a):
            time.sleep(0.2)
            return step_fn(*a)

        def evaluate(*a):
            time.sleep(1.0)
            return eval_fn(*a)

        original(self, step_fn=step, eval_fn=evaluate, **kwargs)

    monkeypatch.setattr(loop.TrainingLoop, "__init__", slowed)
    overrides = (
        "training.steps=4",
        "logging.interval=4",
        "logging.val_interval=2",
        "logging.val_batches=1",  # one 1 s evaluation per validation
    )
    assert main(cli_args("timed", train_yaml, root, *overrides)) == 0
    [line] = [
        r for r in read_metrics(run_dir(root, "timed") / "metrics.jsonl") if "tokens_per_s" in r
    ]
    elapsed = 4 * 8 * 32 / line["tokens_per_s"]  # 4 steps of 8 sequences of 32 tokens
    assert 0.8 <= elapsed < 1.6, elapsed


@pytest.mark.slow
def test_metrics_end_at_each_checkpoint_so_a_resume_loses_no_step(root, train_yaml):
    """Checkpoints every 6 steps, lines every 4: a run resumed from step 6 must still have a
    line covering steps 5-6."""
    overrides = ("training.steps=8", "logging.interval=4", "logging.checkpoint_interval=6")
    assert main(cli_args("ends", train_yaml, root, *overrides)) == 0
    records = read_metrics(run_dir(root, "ends") / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [4, 6, 8]


@pytest.mark.slow
def test_a_cpu_peak_measured_in_a_busy_moment_is_measured_again(
    root, train_yaml, monkeypatch, capsys
):
    """The first measurement stands in for one taken while the machine was busy: training runs
    above it, so the peak is measured again and MFU never reads above 100%."""
    from theseus.training import mfu

    measure = mfu.measure_matmul_peak
    calls: list[int] = []

    def busy_first(*args, **kwargs) -> float:
        calls.append(1)
        return 1e6 if len(calls) == 1 else measure(*args, **kwargs)

    monkeypatch.setattr(mfu, "measure_matmul_peak", busy_first)
    # its own run name: test_resume.py trains a run named "busy" in the same output folder
    assert main(cli_args("peak-remeasured", train_yaml, root, *SHORT)) == 0
    assert "note: training ran above the CPU peak measured at start (0.000 TFLOP/s" in (
        capsys.readouterr().err
    )
    metrics = run_dir(root, "peak-remeasured") / "metrics.jsonl"
    mfus = [r["mfu"] for r in read_metrics(metrics) if "mfu" in r]
    assert len(calls) == 2 and len(mfus) == 3 and all(0 < m < 1 for m in mfus), mfus


@pytest.mark.slow
def test_a_token_budget_holds_when_a_resume_changes_the_batch(root, train_yaml):
    """10 steps of 8 x 32 tokens, then the budget doubled at batch 16: 5 more steps, not 0."""
    first = ("training.tokens=2560", "logging.checkpoint_interval=1000")
    assert main(cli_args("budget", train_yaml, root, *first)) == 0
    assert (
        main(cli_args("budget", train_yaml, root, "training.tokens=5120", "training.batch_size=16"))
        == 0
    )
    records = [r for r in read_metrics(run_dir(root, "budget") / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records][-1] == 15
    assert [r["tokens"] for r in records][9:] == [2560 + 512 * k for k in range(6)]


@pytest.mark.slow
def test_a_run_on_other_hardware_than_its_request_says_so(root, tmp_path, capsys):
    gpu = tmp_path / "gpu.yaml"
    assert main(["configure", "gpt/train/pretrain", str(gpu), "--chip", "h100", "-n", "8"]) == 0
    assert main(cli_args("elsewhere", gpu, root, *SHORT)) == 0
    assert "note: the config asks for 8 x h100; it runs here on 1 x cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stop_signal_in_the_last_step_ends_the_run_as_done(root, train_yaml, monkeypatch, capsys):
    """Nothing is left to resume: exit 0 with the final checkpoint, not 75 with a stop one."""
    from theseus.base.stopping import StopSignals

    enter = StopSignals.__enter__

    def signalled(self):
        entered = enter(self)
        self.signal_name = "SIGTERM"  # as if it came while the only step ran
        return entered

    monkeypatch.setattr(StopSignals, "__enter__", signalled)
    assert main(cli_args("last-step", train_yaml, root, "training.steps=1")) == 0
    assert "stopped by" not in capsys.readouterr().err
    assert sorted(p.name for p in ckpt_dir(root, "last-step").iterdir() if p.name.isdigit()) == [
        "1"
    ]
