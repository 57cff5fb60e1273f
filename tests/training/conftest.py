"""Shared set-up for the trainer tests: one small token store, a train YAML, tiny-model settings.

Everything is real: the store is written by the tokenize job (bytes tokenizer over the Python
standard library's source), runs go through `theseus run` (in-process or as subprocesses).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from theseus.cli import main
from theseus.training.metrics import LoggingConfig, RunLog

# Runs of the same program in several processes compile it once (JAX's persistent cache).
CACHE = tempfile.mkdtemp(prefix="theseus-test-xla-")
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache() -> None:
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


TINY = [
    "training.dataset=[{name: pystdlib}]",  # the store of the `root` fixture
    "architecture.n_layers=2",
    "architecture.d_model=32",
    "architecture.n_heads=4",
    "architecture.block_size=32",
    "architecture.dtype=float32",
    "training.batch_size=8",
    "optimization.warmup_steps=3",
    "optimization.lr=0.003",
    "logging.interval=1",
    "logging.val_interval=0",
]


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder holding the token store `pystdlib` (bytes tokenizer, ~300k tokens)."""
    out = tmp_path_factory.mktemp("out")
    tok = out / "tok.yaml"
    assert (
        main(["configure", "data/tokenize_variable_dataset", str(tok), "data.name=pystdlib"]) == 0
    )
    code = main(
        [
            "run",
            "tok",
            str(tok),
            str(out),
            "tokenizer.backend=bytes",
            "data.max_tokens=400000",
            "data.val_pct=20",
        ]
    )
    assert code == 0
    assert (out / "data" / "pystdlib" / "manifest.json").is_file()
    return out


@pytest.fixture(scope="session")
def train_yaml(root: Path) -> Path:
    path = root / "train.yaml"
    assert main(["configure", "gpt/train/pretrain", str(path)]) == 0
    return path


def run_dir(root: Path, name: str) -> Path:
    return root / "runs" / "default" / "default" / name


def ckpt_dir(root: Path, name: str) -> Path:
    return root / "checkpoints" / "default" / "default" / name


def losses(root: Path, name: str) -> list[tuple[int, float]]:
    """(step, loss) of every training line of a run's metrics.jsonl."""
    lines = (run_dir(root, name) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def cli_args(name: str, yaml: Path, root: Path, *overrides: str) -> list[str]:
    return ["run", name, str(yaml), str(root), *TINY, *overrides]


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`theseus ARGS` as a subprocess (its own session, so signals reach only it).

    One CPU device, like the runs inside the pytest process, so that a run started in one and
    resumed in the other is the same computation (JAX_NUM_CPU_DEVICES=-1 in `env` lifts it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "theseus.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", **(env or {})},
        start_new_session=True,
    )


def wait_for(condition, timeout: float = 120.0, every: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(every)


def last_step(root: Path, name: str) -> int:
    path = run_dir(root, name) / "metrics.jsonl"
    if not path.exists():
        return -1
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return max(steps, default=-1)


SIX_STEPS = ["training.steps=6", "logging.checkpoint_interval=1000"]


@pytest.fixture(scope="session")
def six_step_losses(root: Path, train_yaml: Path) -> list[float]:
    """Losses of a 6-step run on one device: the reference for sharded and multi-process runs."""
    assert main(cli_args("single", train_yaml, root, *SIX_STEPS)) == 0
    return [loss for _, loss in losses(root, "single")]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_log(folder: Path, name: str = "r") -> RunLog:
    """A run's log writer under `folder`, with default logging settings."""
    return RunLog(
        folder,
        enabled=True,
        config=LoggingConfig(),
        run_name=name,
        project="p",
        group="g",
        hyperparameters={},
    )
