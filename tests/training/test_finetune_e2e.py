"""Released weights in, tuned weights out: a tiny Qwen3 folder -> tokenize chats with its own
tokenizer and template -> LoRA fine-tuning -> `theseus export` -> transformers continues three
prompts exactly as `theseus sample` does on the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from tests.data.chat_folders import TWO_TURNS, tokenizer_folder
from theseus.cli import main

pytestmark = pytest.mark.slow  # tokenizes, fine-tunes and exports (about 30 s)

PROMPTS = ["What is", "Hello there,", "You are"]


def qwen3_folder(folder: Path) -> Path:
    tokenizer_folder(folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    config = transformers.Qwen3Config(
        vocab_size=len(vocab) + 3,  # the BPE's merges plus its three special tokens
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # wider than hidden / heads, as Qwen3's are
        intermediate_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(folder)
    return folder


def test_lora_fine_tuned_qwen3_exports_to_what_transformers_runs_alike(tmp_path, capsys):
    base = qwen3_folder(tmp_path / "qwen3")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": TWO_TURNS}) + "\n" for _ in range(8)))
    out, tok, ft = tmp_path / "out", str(tmp_path / "tok.yaml"), str(tmp_path / "ft.yaml")
    assert main(["configure", "data/tokenize_blockwise_dataset", tok, "data.name=files"]) == 0
    tokenize = [
        f"data.paths=[{chats}]",
        "data.val_pct=0",
        "data.seq_len=96",
        "data.store=chats",
        "tokenizer.backend=huggingface",
        f"tokenizer.name={base}",
    ]
    assert main(["run", "tok", tok, str(out), *tokenize]) == 0
    manifest = json.loads((out / "data" / "chats" / "manifest.json").read_text())
    assert manifest["settings"]["chat_template"] == "model"  # the folder's own template

    assert main(["configure", "qwen/train/finetune", ft, f"architecture.init_from={base}"]) == 0
    training = [
        "training.dataset=[{name: chats}]",
        "training.batch_size=4",
        "training.steps=6",
        "optimization.lr=0.01",
        "optimization.warmup_steps=1",
        "finetune.lora.rank=4",
        "finetune.lora.targets=[q,k,v,o,gate,up,down]",
        "logging.val_interval=0",
        "logging.checkpoint_interval=6",
        "architecture.dtype=float32",
    ]
    assert main(["run", "ft", ft, str(out), *training]) == 0
    run = out / "runs" / "default" / "default" / "ft"

    exported = tmp_path / "exported"
    assert main(["export", str(run), str(exported)]) == 0
    assert "LoRA merged into the base" in capsys.readouterr().err
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    # the exported folder prompts as the run was trained: the base folder's template
    assert hf_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False) == (
        transformers.AutoTokenizer.from_pretrained(base).apply_chat_template(
            TWO_TURNS, tokenize=False
        )
    )
    # the tuned weights moved away from the base: the comparison below is about them
    original = transformers.AutoModelForCausalLM.from_pretrained(base)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(hf.state_dict().values(), original.state_dict().values(), strict=True)
    )

    assert main(["sample", str(run), *PROMPTS, "--temperature", "0", "--max-new", "6"]) == 0
    printed = capsys.readouterr().out
    for prompt in PROMPTS:
        ids = hf_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            generated = hf.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
        continuation = hf_tokenizer.decode(generated[0, ids.shape[1] :])
        assert f"{prompt}{continuation}\n" in printed, (prompt, continuation, printed)
