"""Training benchmark: nanoGPT's CPU example, or GPT-2 small on one GPU, through `theseus run`.

    python bench/train.py [--text FILE] [--steps 2000] [KEY=VALUE ...]   # CPU, nanoGPT's example
    python bench/train.py --preset gpt2-gpu [--steps 60] [KEY=VALUE ...]  # GPT-2 small, bf16, ctx 1024

`cpu` (nanoGPT's "baby GPT" on CPU): Tiny Shakespeare (--text, default
../shared/data/tinyshakespeare.txt) with the bytes tokenizer, split as nanoGPT splits it (the last
10% of the characters held out for validation); 4 layers, 4 heads, 128 wide, context 64, batch
12, AdamW lr 1e-3 (beta2 0.99) with 100 warmup steps and cosine decay to 1e-4 at 2000 steps, no
dropout, float32. With torch installed, the PyTorch reference of nanoGPT's semantics
(bench/reference.py, its own initialization) then trains on the same batches, and its
validation loss on the same validation batches is printed beside ours. `gpt2-gpu`: GPT-2 small
(124M parameters, vocabulary 50304), bf16 compute with f32 master weights, context 1024, batch
64, on the Python standard library's source (no download).

Prints the validation loss at the end, tokens/s (median over log intervals, validation
excluded), MFU against the peak measured in the same process (CPU: an f32 matmul) or the chip's
datasheet, and the compile time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

PRESETS = {
    "cpu": [
        "architecture.n_layers=4",
        "architecture.n_heads=4",
        "architecture.d_model=128",
        "architecture.block_size=64",
        "architecture.dropout=0.0",
        "architecture.dtype=float32",
        "training.batch_size=12",
        "optimization.lr=1e-3",
        "optimization.min_lr=1e-4",
        "optimization.warmup_steps=100",
        "optimization.schedule=cosine",
        "optimization.b2=0.99",
        "optimization.weight_decay=0.1",
        "logging.interval=100",
        "logging.val_batches=200",
    ],
    "gpt2-gpu": [
        "architecture.vocab_size=50304",
        "architecture.dtype=bfloat16",
        "training.batch_size=64",
        "training.per_device_batch_size=64",
        "optimization.warmup_steps=10",
        "logging.interval=10",
        "logging.val_interval=0",
    ],
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--text", default=str(SHARED_TEXT), help="Tiny Shakespeare text (cpu preset)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, help="default: 2000 (cpu), 60 (gpt2-gpu)")
    parser.add_argument(
        "--devices",
        type=int,
        help="CPU: split the host into this many devices (default: the trainer's choice, one per core)",
    )
    parser.add_argument(
        "--out",
        help="output folder, kept with the run's metrics and loss curve "
        "(default: a temporary one, removed at the end)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="cpu preset: skip the PyTorch speed reference (it runs when torch is installed)",
    )
    parser.add_argument("overrides", nargs="*", default=[], help="extra KEY=VALUE settings")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.devices:
        # must be set before JAX starts; one device per core, each single-threaded
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()
    with output_folder(args.out, "theseus-bench-") as out:
        benchmark(args, out)


@contextlib.contextmanager
def output_folder(given: str | None, prefix: str) -> Iterator[Path]:
    """The folder `given` (kept), else a temporary one removed afterwards."""
    if given:
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as out:
        yield Path(out)


def benchmark(args: argparse.Namespace, out: Path) -> None:
    steps = args.steps or (2000 if args.preset == "cpu" else 60)
    started = time.perf_counter()
    store = prepare_data(args.preset, out, Path(args.text))
    print(f"tokenized in {time.perf_counter() - started:.1f}s", flush=True)
    # PyTorch is timed before and after our run, so a slow or fast spell of a shared machine
    # shows up as a gap between the two rather than as a false ratio
    references: list[float] = []
    if args.preset == "cpu" and not args.no_reference:
        references = torch_reference(Path(args.text))
    if args.preset == "cpu":
        run_settings = [f"logging.val_interval={steps}", f"logging.checkpoint_interval={steps}"]
    else:
        run_settings = [f"logging.checkpoint_interval={10 * steps}"]

    from theseus.quick import quick

    with quick(
        "gpt/train/pretrain", out, f"bench-{args.preset}-{args.devices or 'auto'}dev"
    ) as job:
        job.override(
            *preset_overrides(args.preset, store),
            f"training.steps={steps}",
            *run_settings,
            *args.overrides,
        )
        job.save(out / "train.yaml")
        started = time.perf_counter()
        summary = _run_fresh(job)
        wall = time.perf_counter() - started
    reference_val = None
    if references:
        references += torch_reference(Path(args.text))
        reference_val = reference_validation(job, out, steps)
    report(out, job, summary, wall, steps, references, reference_val)


def preset_overrides(preset: str, store: str) -> list[str]:
    """What every benchmark run of `preset` on the token store `store` sets."""
    return [
        f"training.dataset=[{{name: {store}}}]",
        "training.compilation_cache=null",
        *PRESETS[preset],
    ]


def prepare_data(preset: str, out: Path, text: Path) -> str:
    """Tokenize the preset's corpus into OUT/data once; returns the token store's name."""
    from theseus.cli import main as theseus

    store = "shakespeare-bytes" if preset == "cpu" else "stdlib-bytes"
    if (out / "data" / store / "manifest.json").exists():
        return store
    if preset == "cpu":
        if not text.is_file():
            sys.exit(f"error: no text at {text}; give the Tiny Shakespeare file with --text")
        train, val = split_like_nanogpt(text, out / "corpus")
        data = [
            "data.name=files",
            f"data.paths=[{train}]",
            f"data.val_paths=[{val}]",
            "data.val_pct=0",
        ]
    else:
        data = ["data.name=pystdlib", "data.max_tokens=20000000"]
    tokenize_yaml = out / "tokenize.yaml"
    if theseus(["configure", "data/tokenize_variable_dataset", str(tokenize_yaml), "--force"]):
        sys.exit("error: could not configure the tokenize job")
    code = theseus(
        [
            "run",
            "tokenize",
            str(tokenize_yaml),
            str(out),
            "tokenizer.backend=bytes",
            *data,
            f"data.store={store}",
        ]
    )
    if code:
        sys.exit(code)
    return store


def split_like_nanogpt(text: Path, folder: Path) -> tuple[Path, Path]:
    """The text's first 90% of characters (training) and last 10% (validation), as two files in
    `folder`: nanoGPT's split, so that validation losses compare with its."""
    content = text.read_text(encoding="utf-8")
    cut = int(len(content) * 0.9)
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.txt", folder / "val.txt"
    train.write_text(content[:cut], encoding="utf-8")
    val.write_text(content[cut:], encoding="utf-8")
    return train, val


def _run_fresh(job) -> dict:
    """Run the benchmark from step 0, moving an earlier run of the same name aside."""
    job.override("training.overwrite=true")
    return job(fresh=True)


def torch_reference(text: Path) -> list[float]:
    """[tokens/s] of the same model in eager PyTorch on this machine ([] without torch)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("torch") is None:
        print("reference         skipped: torch is not installed (uv sync --group hf)")
        return []
    script = Path(__file__).resolve().parent / "torch_reference.py"
    done = subprocess.run(
        [sys.executable, str(script), str(text)], capture_output=True, text=True, check=True
    )
    print(f"reference         PyTorch eager: {done.stdout.strip()}", flush=True)
    return [float(done.stdout.split()[0])]


def reference_validation(job, out: Path, steps: int) -> float:
    """Validation loss of the PyTorch reference (nanoGPT's init and weight-decay rule) trained
    on this run's batches, on this run's validation batches."""
    from reference import GPT, Run, evaluate, nanogpt_init, train

    started = time.perf_counter()
    run = Run("gpt/train/pretrain", job.config, out)
    model = nanogpt_init(GPT(run.reference(decay_embeddings=True)), run.training.seed)
    train(model, run.batches("train", steps))
    loss = evaluate(model, run.batches("val", job.config.logging.val_batches))
    print(f"reference         trained in {time.perf_counter() - started:.0f}s", flush=True)
    return loss


def report(
    out: Path,
    job,
    summary: dict,
    wall: float,
    steps: int,
    references: list[float],
    reference_val: float | None,
) -> None:
    from theseus.training.metrics import read_metrics

    records = read_metrics(out / "runs" / "default" / "default" / job.name / "metrics.jsonl")
    intervals = [r for r in records if "tokens_per_s" in r]
    steady = intervals[1:] or intervals
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in steady)
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    print(f"preset            {job.name}")
    print(f"steps             {steps}")
    print(
        f"final train loss  {intervals[-1]['loss']:.4f} (mean of the last {job.config.logging.interval} steps)"
    )
    if val:
        beside = "" if reference_val is None else f"; PyTorch reference {reference_val:.4f}"
        print(f"val loss          {val[-1]:.4f} (step {steps}{beside})")
    print(f"tokens/s          {tokens_per_s:,.0f} (median of log intervals after the first)")
    if references:
        reference = statistics.mean(references)
        spread = " / ".join(f"{r:,.0f}" for r in references)
        print(
            f"vs PyTorch        {tokens_per_s / reference:.2f}x its {reference:,.0f} tokens/s "
            f"(mean of {spread}, before and after the run)"
        )
    if mfus:
        print(
            f"MFU               {100 * statistics.median(mfus):.1f}% of {summary['peak_flops'] / 1e12:.3f} TFLOP/s ({summary['peak_source']})"
        )
    print(f"compile           {summary['compile_s']:.1f}s")
    print(f"wall              {wall:.1f}s for the whole run")


if __name__ == "__main__":
    main()
