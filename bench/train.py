"""Training benchmark: nanoGPT's CPU example, or GPT-2 small on one GPU, through `theseus run`.

    python bench/train.py [TEXT] [--steps 2000] [--devices 2]     # CPU, nanoGPT's example
    python bench/train.py --preset gpt2-gpu [--steps 60]            # GPT-2 small, bf16, ctx 1024

`cpu` (nanoGPT's "baby GPT" on CPU): Tiny Shakespeare (TEXT, default
../shared/data/tinyshakespeare.txt) with the bytes tokenizer, paragraphs as documents and 10%
of them held out for validation; 4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW lr
1e-3 (beta2 0.99) with 100 warmup steps and cosine decay to 1e-4 at 2000 steps, no dropout,
float32. `gpt2-gpu`: GPT-2 small (124M parameters, vocabulary 50304), bf16 compute with f32
master weights, context 1024, on the Python standard library's source (no download).

Prints the validation loss at the end, tokens/s (median over log intervals, validation
excluded), MFU against the peak measured in the same process (CPU: an f32 matmul) or the chip's
datasheet, and the compile time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/train.py` puts bench/ first on the path, where bench/tokenize.py would shadow
# the standard library's tokenize module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

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
        "training.batch_size=32",
        "training.per_device_batch_size=32",
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
        "text", nargs="?", default=str(SHARED_TEXT), help="Tiny Shakespeare text (cpu preset)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, help="default: 2000 (cpu), 60 (gpt2-gpu)")
    parser.add_argument(
        "--devices", type=int, default=1, help="CPU: split the host into this many devices"
    )
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", default=[], help="extra KEY=VALUE settings")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.devices > 1:
        # must be set before JAX starts; one device per core, each single-threaded
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()
    from theseus.cli import main as theseus

    out = Path(args.out or tempfile.mkdtemp(prefix="theseus-bench-"))
    steps = args.steps or (2000 if args.preset == "cpu" else 60)
    if args.preset == "cpu":
        if not Path(args.text).is_file():
            sys.exit(
                f"error: no text at {args.text}; give the Tiny Shakespeare file as the first argument"
            )
        data = [
            "data.name=tinyshakespeare",
            f"data.paths=[{args.text}]",
            'data.separator="\\n\\n"',
            "data.val_pct=10",
            "data.store=shakespeare-bytes",
        ]
        store = "shakespeare-bytes"
        run_settings = [f"logging.val_interval={steps}", f"logging.checkpoint_interval={steps}"]
    else:
        data = ["data.name=pystdlib", "data.max_tokens=20000000", "data.store=stdlib-bytes"]
        store = "stdlib-bytes"
        run_settings = [f"logging.checkpoint_interval={10 * steps}"]
    tokenize_yaml, train_yaml = out / "tokenize.yaml", out / "train.yaml"
    started = time.perf_counter()
    if not (out / "data" / store / "manifest.json").exists():
        assert (
            theseus(["configure", "data/tokenize_variable_dataset", str(tokenize_yaml), "--force"])
            == 0
        )
        code = theseus(
            ["run", "tokenize", str(tokenize_yaml), str(out), "tokenizer.backend=bytes", *data]
        )
        if code:
            sys.exit(code)
    print(f"tokenized in {time.perf_counter() - started:.1f}s", flush=True)

    from theseus.quick import quick

    with quick("gpt/train/pretrain", out, f"bench-{args.preset}-{args.devices}dev") as job:
        job.override(
            f"training.dataset=[{{name: {store}}}]",
            f"training.steps={steps}",
            "training.compilation_cache=null",
            *PRESETS[args.preset],
            *run_settings,
            *args.overrides,
        )
        job.save(train_yaml)
        started = time.perf_counter()
        summary = _run_fresh(job)
        wall = time.perf_counter() - started
    report(out, job, summary, wall, steps)


def _run_fresh(job) -> dict:
    """Run the benchmark from step 0, moving an earlier run of the same name aside."""
    job.override("training.overwrite=true")
    return job(fresh=True)


def report(out: Path, job, summary: dict, wall: float, steps: int) -> None:
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
        print(f"val loss          {val[-1]:.4f} (step {steps})")
    print(f"tokens/s          {tokens_per_s:,.0f} (median of log intervals after the first)")
    if mfus:
        print(
            f"MFU               {100 * statistics.median(mfus):.1f}% of {summary['peak_flops'] / 1e12:.3f} TFLOP/s ({summary['peak_source']})"
        )
    print(f"compile           {summary['compile_s']:.1f}s")
    print(f"wall              {wall:.1f}s for the whole run")


if __name__ == "__main__":
    main()
