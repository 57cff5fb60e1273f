"""Harness benchmark: requests/s of theseus's lm-evaluation-harness backend against the
harness's own Hugging Face backend (`hf`, PyTorch), same model, same task, same CPU, one run.

    python bench/eval.py [--docs 256] [--batch 32] [--layers 4] [--width 128] [--context 256]
                         [--repeats 3]

A random GPT-2 (bytes tokenizer) is written as a Hugging Face folder, with a local
multiple-choice task of `--docs` questions of four choices each. Both backends answer the same
loglikelihood requests (the tasks built once, then scored by each), after a pass of the
harness's dummy model (its own first-call costs belong to neither): `hf` at the same batch
size, and theseus cold (its compiles included), warm (a second pass in the same process) and
cached (its programs read back from the persistent compilation cache, as a second `theseus
eval` of the same model finds them). Requests/s count the time in each backend's
`loglikelihood`, and the whole evaluation beside it; each figure is the best of `--repeats`
interleaved passes (a shared machine slows one pass or another). Both must agree on every
log-likelihood (to 1e-4) and on the accuracy. Needs the `hf` group (torch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "far",
    "away",
    "to",
    "see",
    "big",
    "red",
    "sun",
    "in",
    "sky",
]


def write_model(folder: Path, layers: int, width: int, context: int) -> None:
    import torch
    import transformers

    from theseus.inference.export import bytes_tokenizer_json

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=layers,
        n_head=4,
        n_embd=width,
        n_positions=context,
        vocab_size=257,
        bos_token_id=256,
        eos_token_id=256,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    bytes_tokenizer_json(folder / "tokenizer.json")
    tokenizer = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))


def write_task(folder: Path, docs: int) -> None:
    rng = random.Random(0)
    data = folder / "mc.jsonl"
    with data.open("w") as f:
        for _ in range(docs):
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            choices = [" " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(4)]
            f.write(json.dumps({"q": question, "choices": choices, "answer": rng.randrange(4)}))
            f.write("\n")
    (folder / "bench_mc.yaml").write_text(
        "task: bench_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_target: "{{answer}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def timed(lm: Any, loaded: dict[str, Any]) -> tuple[float, float, dict[str, Any]]:
    """(seconds in the backend's loglikelihood, seconds of the whole evaluation, results)."""
    from lm_eval.evaluator import evaluate

    inner = lm.loglikelihood
    spent = []

    def loglikelihood(requests: list[Any], **kwargs: Any) -> list[Any]:
        start = time.perf_counter()
        answers = inner(requests)
        spent.append(time.perf_counter() - start)
        return answers

    lm.loglikelihood = loglikelihood
    start = time.perf_counter()
    try:
        results = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True)
    finally:
        del lm.loglikelihood
    return sum(spent), time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved passes; the best counts"
    )
    args = parser.parse_args()

    from theseus.parallel.distributed import split_cpu_into_cores

    # as `theseus eval` does: one JAX device per core (the `hf` backend uses every core too)
    split_cpu_into_cores(None, global_batch=args.batch)
    import jax
    from jax.experimental.compilation_cache import compilation_cache
    from lm_eval.models.dummy import DummyLM
    from lm_eval.models.huggingface import HFLM

    from theseus.evaluation.engine import Engine
    from theseus.evaluation.harness.lm import TheseusLM
    from theseus.evaluation.harness.run import load_tasks
    from theseus.evaluation.shapes import keep_compiled
    from theseus.evaluation.source import load_scored

    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model, tasks = Path(tmp) / "model", Path(tmp) / "tasks"
        tasks.mkdir()
        write_model(model, args.layers, args.width, args.context)
        write_task(tasks, args.docs)
        loaded = load_tasks(["bench_mc"], str(tasks))
        # the harness's own first-call costs (templates, metrics), before either backend runs
        timed(DummyLM(), loaded)
        hf = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=args.batch)
        scorer = load_scored(model, None, args.batch).scorer
        keep_compiled(str(Path(tmp) / "xla"))  # as `theseus eval` keeps its programs

        def theseus_lm() -> TheseusLM:
            jax.clear_caches()  # as in a new process: nothing compiled in memory
            return TheseusLM(Engine(scorer, scorer.tokenizer.vocab_size), scorer.tokenizer, model)

        # the best of a few interleaved passes: a shared machine slows one pass or another
        for attempt in range(args.repeats):
            passes = {"hf (torch)": timed(hf, loaded)}
            compilation_cache.reset_cache()  # an empty persistent cache: everything compiles
            jax.config.update("jax_compilation_cache_dir", str(Path(tmp) / f"xla-{attempt}"))
            ours = theseus_lm()
            passes["theseus cold"] = timed(ours, loaded)
            passes["theseus warm"] = timed(ours, loaded)
            # a second `theseus eval` of the model: its programs read back from the cache
            passes["theseus cached"] = timed(theseus_lm(), loaded)
            if attempt == 0:
                reference, results = passes["hf (torch)"][2], passes["theseus cold"][2]
            for name, (inside, whole, _) in passes.items():
                seen = best.get(name, (inside, whole))
                best[name] = (min(seen[0], inside), min(seen[1], whole))

    requests = args.docs * 4
    worst = max(
        abs(a[0][0] - b[0][0])
        for x, y in zip(
            results["samples"]["bench_mc"], reference["samples"]["bench_mc"], strict=True
        )
        for a, b in zip(x["resps"], y["resps"], strict=True)
    )
    accuracy = results["results"]["bench_mc"]["acc,none"]
    same = accuracy == reference["results"]["bench_mc"]["acc,none"] and worst <= 1e-4
    print(
        f"model: GPT-2 {args.layers} layers, {args.width} wide, context {args.context}; "
        f"{requests} loglikelihood requests, batch {args.batch}, {os.cpu_count()} CPUs, "
        f"{len(jax.devices())} JAX devices; best of {args.repeats}"
    )
    print("requests/s      backend (its loglikelihood)  whole evaluation (harness included)")
    for name in ("hf (torch)", "theseus cold", "theseus cached", "theseus warm"):
        inside, whole = best[name]
        print(
            f"{name:15s} {requests / inside:8.1f} ({inside:5.2f} s)        "
            f"{requests / whole:8.1f} ({whole:5.2f} s)"
        )
    torch_in, torch_all = best["hf (torch)"]
    for name in ("theseus cold", "theseus cached", "theseus warm"):
        inside, whole = best[name]
        print(
            f"speed-up {name.split()[1]:6s} {torch_in / inside:.2f}x ({torch_all / whole:.2f}x whole)"
        )
    print(
        f"agreement       accuracy {accuracy:.4f} both: {same}; "
        f"largest log-likelihood gap {worst:.2e}"
    )


if __name__ == "__main__":
    main()
