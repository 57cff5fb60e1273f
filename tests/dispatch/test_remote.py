"""Real submissions of the real trainer to the test cluster: SLURM with two JAX processes (gloo),
an SSH host and this machine; SLURM preemption (USR1, then requeue) resumes to the same loss."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.dispatch.conftest import cli, theseus, wait_until, write_dispatch
from theseus.cli import main

# it submits to the test cluster (scripts/testcluster/up.sh) a job of two JAX processes
pytestmark = [pytest.mark.cluster, pytest.mark.multiprocess]

STEPS = 60
TINY = [
    "training.dataset=[{name: pystdlib}]",  # the store of the `train` fixture
    "architecture.n_layers=2",
    "architecture.d_model=32",
    "architecture.n_heads=4",
    "architecture.block_size=32",
    "architecture.dtype=float32",
    "training.batch_size=8",
    f"training.steps={STEPS}",
    "optimization.warmup_steps=3",
    "optimization.lr=0.003",
    "logging.interval=1",
    "logging.val_interval=0",
    "logging.checkpoint_interval=1000",
]


@pytest.fixture(scope="module")
def train(shared: Path) -> tuple[Path, Path]:
    """(root holding the token store `pystdlib`, a tiny gpt/train/pretrain YAML)."""
    root = shared / "output"
    tok = shared / "tok.yaml"
    if not (root / "data" / "pystdlib" / "manifest.json").exists():
        assert (
            main(
                [
                    "configure",
                    "data/tokenize_variable_dataset",
                    str(tok),
                    "data.name=pystdlib",
                    "--force",
                ]
            )
            == 0
        )
        # A subprocess, as a user would run it (the tokenizer may fork workers).
        result = theseus(
            "run", "tok", str(tok), str(root), "tokenizer.backend=bytes", "data.max_tokens=200000"
        )
        assert result.returncode == 0, result.stderr
    path = shared / "train.yaml"
    assert main(["configure", "gpt/train/pretrain", str(path), "--force", *TINY]) == 0
    return root, path


def final_loss(root: Path, project: str, name: str) -> float:
    lines = (root / "runs" / project / "default" / name / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line) for line in lines]
    last = [r for r in losses if "loss" in r][-1]
    assert last["step"] == STEPS
    return last["loss"]


def last_step(root: Path, project: str, name: str) -> int:
    path = root / "runs" / project / "default" / name / "metrics.jsonl"
    steps = (
        [json.loads(line).get("step", -1) for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )
    return max(steps, default=-1)


def test_slurm_two_processes_preempted_ssh_and_local_reach_the_same_loss(
    shared: Path, home: Path, train, lab
) -> None:
    """Three real runs: on SLURM with 2 JAX processes, signalled (USR1: checkpoint, requeue itself)
    and requeued by hand while it runs; then over SSH and here (the reference) at once."""
    root, yaml_path = train
    project = "p" + uuid.uuid4().hex[:8]
    ssh_file = write_dispatch(home.parent / "ssh.yaml", root, shared / "work", hosts=["box"])
    slurm_file = write_dispatch(
        home.parent / "slurm.yaml", root, shared / "work", hosts=["lab-slurm"]
    )
    submissions = {
        "on-slurm": ["-d", str(slurm_file), "-n", "2"],
        "on-ssh": ["-d", str(ssh_file)],
        "on-local": ["-d", str(ssh_file), "--cluster", "local"],
    }
    ids = {}

    def submit(name: str) -> None:
        result = cli("submit", name, str(yaml_path), "-p", project, *submissions[name])
        assert result.returncode == 0, result.stderr
        backend = {"on-slurm": "slurm", "on-ssh": "ssh", "on-local": "local"}[name]
        ids[name] = re.search(rf"\({backend} id (\d+)\)", result.stderr).group(1)

    # The SLURM run first and alone: its two processes must reach their first collective within
    # gloo's 30 s of each other, which a crowded CPU can break.
    submit("on-slurm")
    env = {**os.environ, "SLURM_CONF": lab["SLURM_CONF"]}

    def slurm_log() -> str:
        return cli("logs", "on-slurm").stdout

    wait_until(lambda: last_step(root, project, "on-slurm") >= 3, timeout=300, every=0.05)
    subprocess.run(["scancel", "--signal=USR1", ids["on-slurm"]], check=True, env=env)
    wait_until(lambda: "(restart 1)" in slurm_log(), timeout=180)
    first_stop = int(re.search(r"stopped by \S+ at step (\d+)", slurm_log()).group(1))
    assert 3 <= first_stop < STEPS
    wait_until(
        lambda: last_step(root, project, "on-slurm") >= first_stop + 3, timeout=300, every=0.05
    )
    subprocess.run(["scontrol", "requeue", ids["on-slurm"]], check=True, env=env)
    wait_until(lambda: "(restart 2)" in slurm_log(), timeout=180)
    wait_until(lambda: "finished with exit code 0" in slurm_log(), timeout=300)
    submit("on-ssh")
    submit("on-local")

    for name in submissions:
        followed = cli("logs", "-f", name)
        assert followed.returncode == 0, followed.stderr
        assert f"step {STEPS} " in followed.stdout, followed.stdout[-2000:]
        assert "finished with exit code 0" in followed.stdout, followed.stdout[-2000:]
    status = cli("status", "--json")
    for name in submissions:
        line = next(line for line in status.stdout.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == "completed" and f'"step": {STEPS}' in line, line
    text = slurm_log()
    assert text.count("[Gloo] Rank") == 6 and "on 2 cpu device(s)" in text, (
        "two JAX processes, three times"
    )
    assert (
        text.count("checkpoint saved") == 2
        and text.count("resuming on-slurm from its checkpoint") == 2
    ), text
    local, ssh, slurm = (final_loss(root, project, n) for n in ("on-local", "on-ssh", "on-slurm"))
    assert ssh == local
    # Two processes reduce gradients in another order than one: equal up to float rounding.
    assert slurm == pytest.approx(local, rel=1e-5)
