"""`theseus quickstart`: the whole path — tokenize, train, sample, plot — on the embedded corpus.

Every step is a real CLI command, run in this process and printed at the end, so the user can
take over with exactly the commands that produced the result.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from theseus.errors import UserError

RUN = "quickstart-gpt"
STORE = "pystdlib"  # named by both steps: training's default store, fineweb, needs the network
TOKENIZE = [
    f"data.name={STORE}",
    "tokenizer.backend=bytes",
    "data.max_tokens=4000000",
    "data.val_pct=2",
]
# A character-level GPT that learns the look of Python in a couple of minutes on two CPU cores.
MODEL = [
    "architecture.n_layers=4",
    "architecture.n_heads=4",
    "architecture.d_model=128",
    "architecture.block_size=128",
    "architecture.dtype=float32",
    "training.batch_size=16",
    "optimization.lr=0.002",
    "optimization.min_lr=0.0002",
    "optimization.warmup_steps=50",
    "optimization.schedule=cosine",
    "logging.interval=25",
    "logging.val_interval=250",
    "logging.checkpoint_interval=250",
]
PROMPTS = ["def ", "class ", "import "]


def quickstart(out: Path, steps: int, cli_main: Callable[[list[str]], int]) -> list[list[str]]:
    """Run the quick start under `out`; returns the commands it ran (argv after `theseus`)."""
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenize_yaml, train_yaml = str(out / "tokenize.yaml"), str(out / "train.yaml")
    run_dir = out / "runs" / "default" / "default" / RUN
    commands = [
        ["configure", "data/tokenize_variable_dataset", tokenize_yaml, "--force", *TOKENIZE],
        ["run", "quickstart-tokenize", tokenize_yaml, str(out)],
        [
            "configure",
            "gpt/train/pretrain",
            train_yaml,
            "--force",
            f"training.dataset=[{{name: {STORE}}}]",
            f"training.steps={steps}",
            *MODEL,
        ],
        ["run", RUN, train_yaml, str(out)],
        [
            "sample",
            str(run_dir),
            *PROMPTS,
            "--max-new",
            "120",
            "--temperature",
            "0.8",
            "--seed",
            "0",
        ],
    ]
    titles = [
        "configure tokenization",
        "tokenize the Python standard library",
        "configure a small GPT",
        "train it",
        "sample from it",
    ]
    start = time.perf_counter()
    for title, argv in zip(titles, commands, strict=True):
        console.rule(f"[bold]{title}[/bold]: theseus {shlex.join(argv)}")
        code = cli_main(argv)
        if code != 0:
            raise UserError(f"quickstart stopped: `theseus {shlex.join(argv)}` exited with {code}")
    console.rule("[bold]done[/bold]")
    console.print(f"finished in {time.perf_counter() - start:.0f} s")
    console.print(f"checkpoints: {out / 'checkpoints' / 'default' / 'default' / RUN}")
    console.print(f"loss plot:   {run_dir / 'loss.png'}")
    console.print("the commands it ran, to take over from here:")
    for argv in commands:
        console.print(
            f"  theseus {shlex.join(argv)}", markup=False, highlight=False, soft_wrap=True
        )
    return commands
