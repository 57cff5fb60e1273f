"""Fine-tuning benchmark: full fine-tuning against LoRA of the same small model on CPU, in one run.

    python bench/finetune.py [--steps 30] [--rank 8] [--out DIR] [KEY=VALUE ...]

The model is Qwen3-shaped (q/k norms, a head width apart from d_model / n_heads, grouped-query
attention, tied embeddings; 4 layers, 256 wide, about 4M parameters), written as a Hugging Face
folder: by transformers' Qwen3ForCausalLM when torch is installed, else as a random theseus
model through `export_hf`. `qwen/train/finetune` trains it on the Python standard library's
source (bytes tokenizer, 128-token sequences, batch 16, float32) twice: every weight, then LoRA
adapters of rank --rank on q, k, v, o. Each mode runs in a fresh subprocess, so that its peak
resident memory (getrusage) is its own.

Prints per mode: tokens/s (median of log intervals after the first), peak RSS, compile time,
trainable parameters and optimizer state (bytes of the Adam moments and counters); then LoRA's
ratios to full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import output_folder  # bench/train.py: a kept or temporary folder

JOB = "qwen/train/finetune"
QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 384,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
}
SETTINGS = [
    "architecture.dtype=float32",
    "training.batch_size=16",
    "training.seq_len=128",
    "optimization.warmup_steps=5",
    "logging.interval=5",
    "logging.val_interval=0",
    "training.compilation_cache=null",
]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--out", help="output folder, kept (default: a temporary one)")
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", default=[], help="extra KEY=VALUE settings")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        print("RESULT" + json.dumps(train(args.child, Path(args.out), args)), flush=True)
        return
    with output_folder(args.out, "theseus-bench-finetune-") as out:
        started = time.perf_counter()
        folder, made_by = hf_folder(out / "qwen3")
        store = tokenize(out)
        print(f"model             {folder} ({made_by})")
        print(f"prepared in       {time.perf_counter() - started:.1f}s", flush=True)
        results = {mode: in_subprocess(mode, out, args) for mode in ("full", "lora")}
        report(results, args, store)


def hf_folder(folder: Path) -> tuple[Path, str]:
    """The Qwen3-shaped model as a Hugging Face folder, and what wrote it."""
    if (folder / "config.json").is_file():
        return folder, "kept from an earlier run"
    try:
        import torch
        from transformers import Qwen3Config, Qwen3ForCausalLM
    except ImportError:
        from flax import nnx

        from theseus.interop import export_hf
        from theseus.interop.huggingface import hf_config_to_transformer
        from theseus.model.models import Transformer

        config = hf_config_to_transformer(QWEN3, folder)
        export_hf(Transformer(config, rngs=nnx.Rngs(0)), folder)
        return folder, "a random theseus model through export_hf (no torch)"
    torch.manual_seed(0)
    config = {k: v for k, v in QWEN3.items() if k not in ("model_type", "architectures")}
    Qwen3ForCausalLM(Qwen3Config(**config)).save_pretrained(folder)
    return folder, "transformers' Qwen3ForCausalLM, random"


def tokenize(out: Path) -> str:
    from theseus.cli import main as theseus

    store = "stdlib-bytes"
    if (out / "data" / store / "manifest.json").exists():
        return store
    yaml = out / "tokenize.yaml"
    if theseus(["configure", "data/tokenize_variable_dataset", str(yaml), "--force"]):
        sys.exit("error: could not configure the tokenize job")
    settings = ["tokenizer.backend=bytes", "data.name=pystdlib", "data.max_tokens=2000000"]
    code = theseus(["run", "tokenize", str(yaml), str(out), *settings, f"data.store={store}"])
    if code:
        sys.exit(code)
    return store


def in_subprocess(mode: str, out: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--rank",
        str(args.rank),
        *args.overrides,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: the {mode} run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def train(mode: str, out: Path, args: argparse.Namespace) -> dict:
    """One mode's run (in this fresh process) and its figures."""
    from theseus.quick import quick
    from theseus.training.metrics import read_metrics

    name = f"finetune-{mode}"
    lora = [f"finetune.lora.rank={args.rank}", "optimization.lr=1e-3"] if mode == "lora" else []
    with quick(JOB, out, name) as job:
        job.override(
            f"architecture.init_from={out / 'qwen3'}",
            "training.dataset=[{name: stdlib-bytes}]",
            f"training.steps={args.steps}",
            f"logging.checkpoint_interval={args.steps}",
            *SETTINGS,
            *lora,
            *args.overrides,
            "training.overwrite=true",
        )
        started = time.perf_counter()
        summary = job(fresh=True)
        wall = time.perf_counter() - started
    run = out / "runs" / "default" / "default" / name
    records = [r for r in read_metrics(run / "metrics.jsonl") if "tokens_per_s" in r]
    steady = records[1:] or records
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "compile_s": summary["compile_s"],
        "wall_s": wall,
        "loss": records[-1]["loss"],
        **state_sizes(run / "config.yaml"),
    }


def state_sizes(config_yaml: Path) -> dict:
    """Parameters (all, trained) and optimizer-state bytes of the run configured by the file."""
    import jax
    from flax import nnx
    from omegaconf import OmegaConf

    from theseus.config import configure
    from theseus.model import lora
    from theseus.registry import JOBS
    from theseus.training.optimizers import OptimizerConfig, make_optimizer

    cfg = OmegaConf.load(config_yaml).config
    create = JOBS[JOB].model_factory(cfg, vocab_size=int(cfg.architecture.vocab_size), seed=0)
    model = nnx.eval_shape(create)
    adapted = cfg.finetune.lora.rank > 0
    trained = nnx.state(model, lora.Adapted if adapted else nnx.Param)
    opt = jax.eval_shape(make_optimizer(configure(OptimizerConfig, cfg)).init, trained)
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    return {
        "params": size(nnx.state(model, nnx.Param)),
        "trained": size(trained),
        "opt_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt)),
    }


def report(results: dict, args: argparse.Namespace, store: str) -> None:
    full, lora = results["full"], results["lora"]
    print(f"data              {store}; {args.steps} steps x 16 seqs x 128 tokens, float32, CPU")
    for mode, r in results.items():
        what = "every weight" if mode == "full" else f"LoRA rank {args.rank} on q, k, v, o"
        print(
            f"{mode:<17} {what}: {r['trained'] / 1e6:.3f}M of {r['params'] / 1e6:.3f}M trained; "
            f"optimizer state {r['opt_bytes'] / 1e6:.2f} MB; {r['tokens_per_s']:,.0f} tokens/s; "
            f"peak RSS {r['peak_rss'] / 2**20:,.0f} MiB; compile {r['compile_s']:.1f}s; "
            f"loss {r['loss']:.4f} at the end"
        )
    print(
        f"LoRA / full       trainable {lora['trained'] / full['trained']:.4f} "
        f"({100 * lora['trained'] / full['trained']:.2f}%); optimizer state "
        f"{lora['opt_bytes'] / full['opt_bytes']:.4f}; tokens/s "
        f"{lora['tokens_per_s'] / full['tokens_per_s']:.2f}x; peak RSS "
        f"{lora['peak_rss'] / full['peak_rss']:.2f}x"
    )


if __name__ == "__main__":
    main()
