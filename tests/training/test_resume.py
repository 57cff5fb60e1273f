"""Exact resume: a run killed at any moment and resumed equals an uninterrupted run, bitwise (f32).

The interrupted runs are real subprocesses killed with real signals; resuming is `theseus run`
with the same name again.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket

import pytest

from tests.training.conftest import (
    ckpt_dir,
    cli_args,
    last_step,
    losses,
    run_dir,
    spawn,
    wait_for,
)
from theseus.cli import main

# training runs killed and resumed in subprocesses (4 to 20 s each)
pytestmark = pytest.mark.slow

STEPS = ["training.steps=24"]


@pytest.fixture(scope="module")
def reference(root, train_yaml) -> list[tuple[int, float]]:
    assert (
        main(cli_args("reference", train_yaml, root, *STEPS, "logging.checkpoint_interval=8")) == 0
    )
    sequence = losses(root, "reference")
    assert [step for step, _ in sequence] == list(range(1, 25))
    return sequence


def _has_checkpoint(root, name: str) -> bool:
    folder = ckpt_dir(root, name)
    return folder.is_dir() and any(
        d.name.isdigit() and (d / "meta").exists() for d in folder.iterdir()
    )


def _resume(root, train_yaml, name: str, *overrides: str, capsys) -> str:
    assert main(cli_args(name, train_yaml, root, *STEPS, *overrides)) == 0
    return capsys.readouterr().err


def test_sigkill_at_random_step_then_resume_is_bitwise_identical(
    root, train_yaml, reference, capsys
):
    kill_after = random.randint(6, 18)
    print(f"killing after step {kill_after}")
    overrides = ("logging.checkpoint_interval=4",)
    proc = spawn(cli_args("killed", train_yaml, root, *STEPS, *overrides))
    # a busy machine may still be writing the first checkpoint: kill once one is complete
    wait_for(
        lambda: (
            (last_step(root, "killed") >= kill_after and _has_checkpoint(root, "killed"))
            or proc.poll() is not None
        )
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    assert last_step(root, "killed") < 24
    err = _resume(root, train_yaml, "killed", *overrides, capsys=capsys)
    assert "resuming killed from its checkpoint at step" in err
    assert losses(root, "killed") == reference


def test_sigkill_during_checkpoint_write_leaves_a_resumable_run(
    root, train_yaml, reference, capsys
):
    overrides = ("logging.checkpoint_interval=1",)
    proc = spawn(cli_args("torn", train_yaml, root, *STEPS, *overrides))
    directory = ckpt_dir(root, "torn")

    def writing() -> bool:
        if proc.poll() is not None:
            return True
        try:
            names = [p.name for p in directory.iterdir()]
        except FileNotFoundError:
            return False
        # Orbax writes each step under a temporary name and renames it when complete
        return any("tmp" in n for n in names) and last_step(root, "torn") >= 3

    wait_for(writing)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        "the run finished before a checkpoint write was caught"
    )
    err = _resume(root, train_yaml, "torn", *overrides, capsys=capsys)
    assert "resuming torn from its checkpoint at step" in err
    assert losses(root, "torn") == reference
    assert not any("tmp" in p.name for p in directory.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_saves_at_step_boundary_and_exits_75(root, train_yaml, reference, capsys, sig):
    overrides = ("logging.checkpoint_interval=1000",)
    proc = spawn(cli_args("stopped", train_yaml, root, *STEPS, *overrides))
    wait_for(lambda: last_step(root, "stopped") >= 5 or proc.poll() is not None)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert f"stopped by {sig.name} at step" in out and "checkpoint saved" in out
    saved = [int(p.name) for p in ckpt_dir(root, "stopped").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 5 <= saved[0] < 24
    err = _resume(root, train_yaml, "stopped", *overrides, capsys=capsys)
    assert f"from its checkpoint at step {saved[0]}" in err
    assert losses(root, "stopped") == reference


def test_failed_save_keeps_the_previous_checkpoint_and_reports_it(
    root, train_yaml, reference, capsys
):
    """A full disk, made real by lowering the running process's file-size limit (writes past
    it fail with EFBIG) once its step-10 checkpoint is complete. Long validations at steps 15
    and 20 keep the step-20 checkpoint from starting before the limit is in place (the one at
    step 5 compiles the validation step before it)."""
    overrides = (
        "logging.checkpoint_interval=10",
        "logging.val_interval=5",
        "logging.val_batches=200",
    )
    proc = spawn(cli_args("full-disk", train_yaml, root, *STEPS, *overrides))
    directory = ckpt_dir(root, "full-disk")
    wait_for(lambda: (directory / "10" / "meta").exists() or proc.poll() is not None)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert (
        "checkpoint of step 20 failed" in out
        and "the previous checkpoint (step 10) is intact" in out
    ), out
    # (Orbax's own threads log their tracebacks too; our report is one line)
    assert any(
        line.startswith("error: the final checkpoint was not written") for line in out.splitlines()
    )
    assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [10]
    err = _resume(root, train_yaml, "full-disk", *overrides, capsys=capsys)
    assert "resuming full-disk from its checkpoint at step 10" in err
    assert losses(root, "full-disk") == reference


def test_resuming_reads_the_state_without_running_the_initializers(
    root, train_yaml, capsys, monkeypatch
):
    """A new run initializes its parameters once; resuming it restores them from the checkpoint
    and never runs the (for a large model, slow) initializers again."""
    from theseus.training import state

    built = []
    real = state.param_initializer

    def counted(create, abstract):
        built.append(1)
        return real(create, abstract)

    monkeypatch.setattr(state, "param_initializer", counted)
    first = ("training.steps=3", "logging.checkpoint_interval=3")
    assert main(cli_args("lazy", train_yaml, root, *first)) == 0
    assert built == [1]
    assert main(cli_args("lazy", train_yaml, root, "training.steps=5")) == 0
    assert "resuming lazy from its checkpoint at step 3" in capsys.readouterr().err
    assert built == [1]
    assert [step for step, _ in losses(root, "lazy")] == [1, 2, 3, 4, 5]


def test_dropout_trains_and_resumes_with_the_same_masks(root, train_yaml, capsys):
    drop = ("architecture.dropout=0.1", *STEPS, "logging.checkpoint_interval=4")
    assert main(cli_args("dropout-ref", train_yaml, root, *drop)) == 0
    reference = losses(root, "dropout-ref")
    assert [step for step, _ in reference] == list(range(1, 25))
    proc = spawn(cli_args("dropout-cut", train_yaml, root, *drop))
    wait_for(
        lambda: (
            (last_step(root, "dropout-cut") >= 6 and _has_checkpoint(root, "dropout-cut"))
            or proc.poll() is not None
        )
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last_step(root, "dropout-cut") < 24
    assert "resuming dropout-cut" in _resume(root, train_yaml, "dropout-cut", *drop, capsys=capsys)
    assert losses(root, "dropout-cut") == reference


def test_a_second_run_of_the_same_name_is_refused_while_the_first_trains(root, train_yaml, capsys):
    """Two writers would interleave one run's metrics and checkpoints."""
    args = cli_args("busy", train_yaml, root, "training.steps=100000")
    first = spawn(args)
    try:
        wait_for(lambda: last_step(root, "busy") >= 1, timeout=300)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: run 'busy' is being written by process {first.pid} on " + (
            f"{socket.gethostname()}; wait for it to finish, or stop it first"
        ), err
    finally:
        first.kill()
        first.wait()
    # a killed holder releases its lock: the run resumes
    assert main(cli_args("busy", train_yaml, root, "training.steps=2")) == 0
    assert not list(run_dir(root, "busy").parent.glob(".busy.lock"))


def test_stop_at_stops_like_a_preemption_and_a_run_without_it_goes_on(
    root, train_yaml, reference, capsys
):
    """training.stop_at=10: the run saves its checkpoint at step 10 and ends there with exit code
    0 (a SLURM job is then not queued again); run again with it, it has nothing to do; without
    it, it resumes and ends as the run never stopped did."""
    overrides = ("logging.checkpoint_interval=1000",)
    stopping = cli_args("paused", train_yaml, root, *STEPS, *overrides, "training.stop_at=10")
    proc = spawn(stopping)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (
        "stopped by training.stop_at at step 10; checkpoint saved; run again without "
        "training.stop_at (or with a later one) to go on"
    ) in out, out
    assert [p.name for p in ckpt_dir(root, "paused").iterdir() if p.name.isdigit()] == ["10"]
    assert losses(root, "paused") == reference[:10]
    with pytest.raises(SystemExit) as again:
        main(stopping)
    assert again.value.code == 0 and "nothing to do" in capsys.readouterr().err
    err = _resume(root, train_yaml, "paused", *overrides, capsys=capsys)
    assert "resuming paused from its checkpoint at step 10" in err
    assert losses(root, "paused") == reference


@pytest.mark.parametrize(
    "settings",
    [
        ("training.stop_at=24",),
        ("training.stop_at=0",),
        ("training.tokens=2560", "training.stop_at=10"),  # 10 steps of 8 x 32 tokens
    ],
    ids=["at-the-end", "zero", "after-the-token-budget"],
)
def test_stop_at_must_be_a_step_before_the_last(root, train_yaml, settings, capsys):
    assert main(cli_args("early", train_yaml, root, *STEPS, *settings)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "training.stop_at" in err and "\n" not in err, err
    assert not ckpt_dir(root, "early").exists()
