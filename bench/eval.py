"""Harness benchmark: requests/s of theseus's lm-evaluation-harness backend against the
harness's own Hugging Face backend (`hf`, PyTorch), same model, same task, same CPU, one run.

    python bench/eval.py [--docs 256] [--batch 32] [--layers 4] [--width 128] [--context 256]

A random GPT-2 (bytes tokenizer) is written as a Hugging Face folder, with a local
multiple-choice task of `--docs` questions of four choices each. Both backends answer the same
loglikelihood requests (the tasks built once, then scored by each): theseus cold (its
compiles included) and warm (a second pass), and `hf` at the same batch size, after a pass of
the harness's dummy model (its own first-call costs belong to neither). Requests/s count the
time in each backend's `loglikelihood`, and the whole evaluation beside it. Both must agree on
every log-likelihood (to 1e-4) and on the accuracy. Needs the `hf` group (torch).
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args()

    from theseus.parallel.distributed import split_cpu_into_cores

    # as `theseus eval` does: one JAX device per core (the `hf` backend uses every core too)
    split_cpu_into_cores(None, global_batch=args.batch)
    import os

    import jax
    from lm_eval.models.dummy import DummyLM
    from lm_eval.models.huggingface import HFLM

    from theseus.evaluation.engine import engine_for
    from theseus.evaluation.harness.lm import TheseusLM
    from theseus.evaluation.harness.run import load_tasks
    from theseus.evaluation.source import load_scored

    with tempfile.TemporaryDirectory() as tmp:
        model, tasks = Path(tmp) / "model", Path(tmp) / "tasks"
        tasks.mkdir()
        write_model(model, args.layers, args.width, args.context)
        write_task(tasks, args.docs)
        loaded = load_tasks(["bench_mc"], str(tasks))
        # the harness's own first-call costs (templates, metrics), before either backend runs
        timed(DummyLM(), loaded)
        hf = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=args.batch)
        torch_in, torch_all, reference = timed(hf, loaded)
        scorer = load_scored(model, None, args.batch).scorer
        ours = TheseusLM(engine_for(scorer, scorer.tokenizer.vocab_size), scorer.tokenizer, model)
        cold_in, cold_all, results = timed(ours, loaded)
        warm_in, warm_all, _ = timed(ours, loaded)

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
        f"{len(jax.devices())} JAX devices"
    )
    print("requests/s     backend (its loglikelihood)   whole evaluation (harness included)")
    for name, inside, whole in [
        ("hf (torch)", torch_in, torch_all),
        ("theseus cold", cold_in, cold_all),
        ("theseus warm", warm_in, warm_all),
    ]:
        print(
            f"{name:13s} {requests / inside:9.1f} ({inside:5.2f} s)      {requests / whole:9.1f} ({whole:5.2f} s)"
        )
    print(
        f"speed-up      {torch_in / cold_in:.2f}x cold (compiles included), "
        f"{torch_in / warm_in:.2f}x warm; whole evaluation {torch_all / cold_all:.2f}x cold"
    )
    print(
        f"agreement     accuracy {accuracy:.4f} both: {same}; largest log-likelihood gap {worst:.2e}"
    )


if __name__ == "__main__":
    main()
