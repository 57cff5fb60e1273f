"""Loss parity with a PyTorch reference of nanoGPT's semantics (`bench/reference.py`), fed the
very batches theseus's loader produces.

    python bench/parity.py same [--preset gpt|llama] [--steps 200] [--corpus FILE|lookup|plateau] [KEY=VALUE ...]
    python bench/parity.py own  [--preset gpt|llama] [--seeds 0 1 2] [--corpus FILE|lookup|plateau] [KEY=VALUE ...]

`same`: the reference starts from theseus's initial weights and both train on the same batches;
prints both losses per step and their relative difference over the first 50 steps and all of
them (any difference in gradients, optimizer, schedule, clipping or masking shows up here).

`own`: each side initializes itself (theseus its defaults, the reference nanoGPT's) and trains
the cpu preset of `bench/train.py` (nanoGPT's CPU example) on the same batches; prints the
validation loss of both on the same validation batches, for each seed and their mean.

Corpora: a text file (default: Tiny Shakespeare next to the repository, as bench/train.py), or
a generated one whose next symbol is a fixed function of two earlier ones: `lookup` (learned
gradually) or `plateau` (learned only after a long plateau at the symbols' entropy); see
`synthetic_text`. Each is split as nanoGPT splits (the last 10% of characters for validation).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import GPT, Run, evaluate, nanogpt_init, relative_differences, train
from train import PRESETS, SHARED_TEXT, output_folder, split_like_nanogpt

LLAMA = ["architecture.n_kv_heads=2"]  # the cpu preset's shapes, with grouped-query attention


SYNTHETIC = ("lookup", "plateau")


def synthetic_text(kind: str, n_chars: int = 1_000_000, seed: int = 0) -> str:
    """Symbols a-p in lines of 64, each a fixed function of the previous one and the third
    previous one, replaced by a random symbol 20% of the time (floor ~1.0 nat).

    `lookup`: the function is a random table, so the previous symbol alone already tells a
    little and the loss falls gradually. `plateau`: their sum modulo 16, so neither symbol alone
    tells anything: the loss sits at ln 16 until a model attends to both positions at once, and
    only then falls (nanoGPT's settings leave that plateau after several hundred steps)."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 16, size=(16, 16))
    if kind == "plateau":
        table = np.add.outer(np.arange(16), np.arange(16)) % 16
    symbols = rng.integers(0, 16, size=n_chars)
    noise = rng.random(n_chars) < 0.2
    for t in range(3, n_chars):
        if not noise[t]:
            symbols[t] = table[symbols[t - 1], symbols[t - 3]]
    letters = np.frombuffer(b"abcdefghijklmnop", dtype=np.uint8)[symbols].tobytes().decode()
    return "\n".join(letters[i : i + 64] for i in range(0, len(letters), 64)) + "\n"


def prepare(corpus: str, out: Path) -> str:
    """Tokenize the corpus (bytes, nanoGPT's split) into OUT/data once; returns the store name."""
    from theseus.cli import main as theseus

    store = f"{Path(corpus).stem}-bytes"
    if (out / "data" / store / "manifest.json").exists():
        return store
    text = Path(corpus)
    out.mkdir(parents=True, exist_ok=True)
    if corpus in SYNTHETIC:
        text = out / f"{corpus}.txt"
        text.write_text(synthetic_text(corpus), encoding="utf-8")
    elif not text.is_file():
        sys.exit(f"error: no text at {text}; give a corpus with --corpus FILE|lookup|plateau")
    train_file, val_file = split_like_nanogpt(text, out / "corpus" / store)
    tokenize_yaml = out / "tokenize.yaml"
    if theseus(["configure", "data/tokenize_variable_dataset", str(tokenize_yaml), "--force"]):
        sys.exit("error: could not configure the tokenize job")
    code = theseus(
        [
            "run",
            f"tokenize-{store}",
            str(tokenize_yaml),
            str(out),
            "tokenizer.backend=bytes",
            "data.name=files",
            f"data.paths=[{train_file}]",
            f"data.val_paths=[{val_file}]",
            "data.val_pct=0",
            f"data.store={store}",
        ]
    )
    if code:
        sys.exit(code)
    return store


def theseus_run(
    job: str, out: Path, name: str, settings: list[str]
) -> tuple[Run, list[dict[str, float]]]:
    """Train with theseus (the real trainer, in this process); returns the run as the reference
    sees it and the lines of its metrics.jsonl."""
    from theseus.quick import quick

    with quick(job, out, name) as j:
        j.override(*settings, "training.overwrite=true", "training.compilation_cache=null")
        j(fresh=True)
        run = Run(job, j.config, out)
    lines = (out / "runs" / "default" / "default" / name / "metrics.jsonl").read_text()
    return run, [json.loads(line) for line in lines.splitlines()]


def job_and_settings(args: argparse.Namespace, store: str, steps: int) -> tuple[str, list[str]]:
    job = "llama/train/pretrain" if args.preset == "llama" else "gpt/train/pretrain"
    settings = [
        *PRESETS["cpu"],
        *(LLAMA if args.preset == "llama" else []),
        f"training.dataset=[{{name: {store}}}]",
        f"training.steps={steps}",
        f"logging.checkpoint_interval={steps}",
    ]
    return job, settings


def same(args: argparse.Namespace, out: Path, store: str) -> None:
    steps = args.steps or 200
    job, settings = job_and_settings(args, store, steps)
    settings += ["logging.interval=1", "logging.val_interval=0", *args.overrides]
    run, records = theseus_run(job, out, f"parity-same-{args.preset}", settings)
    ours = [r for r in records if "loss" in r]
    theirs = run.same_weights(steps)
    loss = relative_differences([r["loss"] for r in ours], [h["loss"] for h in theirs])
    norm = relative_differences([r["grad_norm"] for r in ours], [h["grad_norm"] for h in theirs])
    print(f"same weights, {job}, {steps} steps, seed {run.training.seed}")
    print(f"{'step':>5} {'theseus':>10} {'reference':>10} {'rel. diff':>10}")
    for k in sorted({*range(0, steps, max(1, steps // 20)), steps - 1}):
        print(f"{k + 1:>5} {ours[k]['loss']:>10.5f} {theirs[k]['loss']:>10.5f} {loss[k]:>10.1e}")
    first = min(50, steps)
    print(f"loss, steps 1-{first}: max relative difference {max(loss[:first]):.1e}")
    print(f"loss, steps 1-{steps}: max relative difference {max(loss):.1e} (drift)")
    print(f"grad norm, steps 1-{first}: max relative difference {max(norm[:first]):.1e}")


def own(args: argparse.Namespace, out: Path, store: str) -> None:
    steps = args.steps or 2000
    job, settings = job_and_settings(args, store, steps)
    settings += [f"logging.val_interval={steps}", *args.overrides]
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        run, records = theseus_run(
            job, out, f"parity-own-{args.preset}-{seed}", [*settings, f"training.seed={seed}"]
        )
        ours = [r["val_loss"] for r in records if "val_loss" in r][-1]
        middle = time.perf_counter()
        theirs = math.nan
        if not args.no_reference:
            # nanoGPT's own rules: its init and weight decay on every matrix, embeddings included
            model = nanogpt_init(GPT(run.reference(decay_embeddings=True)), seed)
            train(model, run.batches("train", steps))
            theirs = evaluate(model, run.batches("val", run.cfg.logging.val_batches))
        rows.append((seed, ours, theirs))
        print(
            f"seed {seed}: theseus {ours:.4f} ({middle - started:.0f}s), "
            f"reference {theirs:.4f} ({time.perf_counter() - middle:.0f}s)",
            flush=True,
        )
    print(f"own init, {job}, {steps} steps, {args.corpus}, validation loss:")
    print(f"{'seed':>5} {'theseus':>9} {'reference':>9}")
    for seed, ours, theirs in rows:
        print(f"{seed:>5} {ours:>9.4f} {theirs:>9.4f}")
    ours_mean = statistics.mean(r[1] for r in rows)
    theirs_mean = statistics.mean(r[2] for r in rows)
    print(
        f"{'mean':>5} {ours_mean:>9.4f} {theirs_mean:>9.4f}  (theseus - reference: {ours_mean - theirs_mean:+.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("same", "own"))
    parser.add_argument("--preset", choices=("gpt", "llama"), default="gpt")
    parser.add_argument("--corpus", default=str(SHARED_TEXT), help="a text file, lookup or plateau")
    parser.add_argument("--steps", type=int, help="default: 200 (same), 2000 (own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="own: seeds")
    parser.add_argument(
        "--no-reference", action="store_true", help="own: train theseus only (to compare settings)"
    )
    parser.add_argument("--out", help="output folder to keep (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", default=[], help="extra theseus KEY=VALUE settings")
    args = parser.parse_intermixed_args()
    with output_folder(args.out, "theseus-parity-") as out:
        store = prepare(args.corpus, out)
        (same if args.mode == "same" else own)(args, out, store)


if __name__ == "__main__":
    main()
