"""Tiny local harness tasks (the harness's YAML format, JSON-lines data) and tiny random Hugging
Face folders (bytes tokenizer), for the harness tests: nothing comes from the network."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
]
TASKS = ["tiny_mc", "tiny_roll", "tiny_gen"]


def _data(folder: Path, name: str) -> str:
    return (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}\n"
        "test_split: test\n"
    )


def write_tasks(folder: Path, docs: int = 16) -> Path:
    """`folder` with three tasks: tiny_mc (multiple choice: acc, acc_norm), tiny_roll (rolling
    log-likelihood: perplexities) and tiny_gen (generate_until with stop sequences: exact match),
    and the group tiny_all of the three."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    sentence = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    rows = {"mc.jsonl": [], "roll.jsonl": [], "gen.jsonl": []}
    for _ in range(docs):
        question = sentence(3, 12)
        choices = [" " + sentence(1, 4) for _ in range(4)]
        rows["mc.jsonl"].append(
            {"question": question, "choices": choices, "answer": rng.randrange(4)}
        )
        rows["roll.jsonl"].append({"text": sentence(5, 60)})  # some longer than the window
        rows["gen.jsonl"].append({"question": question + ":", "answer": rng.choice(WORDS)})
    for name, items in rows.items():
        (folder / name).write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + _data(folder, "mc.jsonl") + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    (folder / "tiny_roll.yaml").write_text(
        "task: tiny_roll\n" + _data(folder, "roll.jsonl") + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + _data(folder, "gen.jsonl") + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs: {until: ["\\n", "."], max_gen_toks: 24, do_sample: false}\n'
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
    )
    (folder / "tiny_all.yaml").write_text("group: tiny_all\ntask: [tiny_mc, tiny_roll, tiny_gen]\n")
    return folder


def write_tokenizer(folder: Path) -> None:
    """theseus's bytes tokenizer as a Hugging Face tokenizer folder (`<|endoftext|>` = 256)."""
    from theseus.inference.export import bytes_tokenizer_json

    folder.mkdir(parents=True, exist_ok=True)
    bytes_tokenizer_json(folder / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "pad_token": "<|endoftext|>"})
    )
    ids = {"bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 256}
    (folder / "generation_config.json").write_text(json.dumps(ids))


def write_hf_model(folder: Path, kind: str, context: int = 96) -> Path:
    """A random 2-layer GPT-2 or Llama of the bytes vocabulary as a Hugging Face folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_head=4, n_embd=64, n_positions=context, vocab_size=257,
            bos_token_id=256, eos_token_id=256,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
            intermediate_size=128, max_position_embeddings=context, vocab_size=257,
            bos_token_id=256, eos_token_id=256, tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init: predictions that differ by context
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder
