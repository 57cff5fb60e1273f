"""Where a train step's time goes: trace compiled steps with JAX's profiler, print the top ops.

    python bench/profile_step.py [--preset cpu|gpt2-gpu] [--steps 20] [--no-trace] [KEY=VALUE ...]

Uses `bench/train.py`'s presets and data (tokenized into --out on first use), builds the
trainer's run steps (mesh, data, state), compiles its step, runs a few warm-up steps, then traces `--steps` steps.
Prints the wall time per step, how much of it the device threads were busy, and the ops with
the most time per step (fusions grouped by kind, and the largest single ops with their shapes).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OP_NAME = re.compile(r"^[a-z][\w\-]*\.\d+$|^(dot|all-reduce|custom-call)$")


def _bench_train() -> Any:
    spec = importlib.util.spec_from_file_location("bench_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def trace_events(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.glob("plugins/profile/*/*.trace.json.gz"))
    if not files:
        raise SystemExit(f"error: the profiler wrote no trace under {folder}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    # on a GPU the kernels run under the device's own process; on CPU, ops run on host threads
    gpu = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and "/device:GPU" in str(e["args"])
    }
    return [
        e
        for e in events
        if e.get("ph") == "X" and (e["pid"] in gpu if gpu else OP_NAME.match(e["name"]))
    ]


def summarize(events: list[dict[str, Any]], steps: int, hlo: str, top: int) -> None:
    ops = events
    if not ops:
        print("no device ops in the trace")
        return
    start = min(e["ts"] for e in ops)
    end = max(e["ts"] + e["dur"] for e in ops)
    busy = sum(e["dur"] for e in ops)
    print(
        f"span {(end - start) / 1e3 / steps:.2f} ms/step; op time {busy / 1e3 / steps:.2f} ms/step"
    )
    kinds: collections.Counter[str] = collections.Counter()
    single: collections.Counter[str] = collections.Counter()
    for e in ops:
        kinds[re.sub(r"[._]\d+$", "", e["name"])[:70]] += e["dur"]
        single[e["name"]] += e["dur"]
    print("\nby kind (ms/step, share of op time):")
    for name, us in kinds.most_common(top):
        print(f"  {us / 1e3 / steps:8.2f}  {100 * us / busy:5.1f}%  {name}")
    print("\nlargest ops:")
    for name, us in single.most_common(top):
        found = re.search(r"%" + re.escape(name) + r" = (\S+)", hlo)
        name = name[:70]
        shape = found.group(1) if found else ""
        print(f"  {us / 1e3 / steps:8.2f}  {name:40s} {shape[:60]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="traced steps")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--no-trace", action="store_true", help="only time the steps; skip the profiler trace"
    )
    parser.add_argument(
        "--out", help="output folder, kept with its trace (default: a temporary one, removed)"
    )
    parser.add_argument("overrides", nargs="*", default=[])
    args = parser.parse_args()
    bench = _bench_train()
    with bench.output_folder(args.out, "theseus-profile-") as out:
        profile(bench, args, out)


def profile(bench: Any, args: argparse.Namespace, out: Path) -> None:
    store = bench.prepare_data(args.preset, out, bench.SHARED_TEXT)

    import jax
    import numpy as np

    from theseus.parallel.placement import to_device
    from theseus.quick import quick
    from theseus.training import run as train_run
    from theseus.training.data import TrainingData
    from theseus.training.outputs import Outputs
    from theseus.training.settings import Settings

    with quick("gpt/train/pretrain", out, f"profile-{args.preset}") as job:
        job.override(*bench.preset_overrides(args.preset, store), *args.overrides)
        trainer = job._stage.instantiate(job.spec())
    settings = Settings.read(type(trainer), trainer.cfg)
    trainer.prepare_devices(settings)
    mesh, layout = train_run.make_mesh(settings, trainer.tensor_shards(settings))
    data = TrainingData.open(trainer.spec.root, settings)
    state = train_run.build_state(trainer, settings, mesh, layout, data)
    with Outputs(trainer, settings, state) as outputs:
        state.start(trainer.spec, outputs.log, weights_only=False)
        compiled, compile_s = train_run.compile_steps(settings, mesh, layout, state, outputs)
    plan = state.plan
    print(
        f"{plan}; compiled in {compile_s:.1f}s on {jax.device_count()} {jax.devices()[0].device_kind} device(s)"
    )
    loader = data.loader("train", plan)
    batches = [to_device(loader.batch(i), mesh, plan.accumulation) for i in range(4)]
    loader.close()

    def run(n: int) -> None:
        for i in range(n):
            leaves, metrics = compiled(
                state.state.leaves, batches[i % 4], np.int32(i), np.float32(1e-4)
            )
            state.state.advance(leaves)
            metrics["loss"].block_until_ready()

    run(5)
    started = time.perf_counter()
    run(args.steps)
    wall = (time.perf_counter() - started) / args.steps
    print(f"untraced: {wall * 1e3:.2f} ms/step, {plan.tokens_per_step / wall:,.0f} tokens/s")
    if args.no_trace:
        return
    folder = out / "trace"
    shutil.rmtree(folder, ignore_errors=True)
    jax.profiler.start_trace(str(folder))
    run(args.steps)
    jax.profiler.stop_trace()
    hlo = compiled.as_text()
    targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
    print(f"custom calls: {', '.join(targets) or 'none'}")
    summarize(trace_events(folder), args.steps, hlo, args.top)


if __name__ == "__main__":
    main()
