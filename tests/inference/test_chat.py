"""`theseus chat`: a conversation through the model's chat template, replies from the KV-cache
sampler that stop at the end of turn, and the same greedy replies as transformers' generate."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.chat_folders import TWO_TURNS, tokenizer_folder
from tests.data.conftest import THESEUS
from theseus.cli import main
from theseus.data.tokenizers import BytesTokenizer, make_tokenizer
from theseus.errors import UserError
from theseus.inference.chat import ChatFormat, Sampling, converse

LINES = "What is 2+2?\nHello there\n/reset\nHi\n/exit\nnot a turn: the chat has ended\n"


class Echo:
    """A stand-in chat that answers with the turn number and the text."""

    def __init__(self) -> None:
        self.turns: list[str] = []

    def respond(self, text: str, sampling: Sampling) -> str:
        if text == "fail":
            raise UserError("the conversation fills the model's context")
        self.turns.append(text)
        return f"{len(self.turns)}: {text}"

    def reset(self) -> None:
        self.turns.clear()


def test_each_line_is_a_turn_reset_forgets_and_exit_ends():
    said, noted = [], []
    converse(
        Echo(),
        io.StringIO("a\n\n  \nb\n/reset\nc\n/exit\nd\n"),
        Sampling(),
        said.append,
        noted.append,
    )
    assert said == ["1: a", "2: b", "1: c"] and noted == ["(conversation reset)"]
    with pytest.raises(UserError, match="fills"):
        converse(Echo(), ["fail\n"], Sampling(), said.append, noted.append)
    # at a terminal the session survives a turn's error
    converse(Echo(), ["fail\n", "e\n"], Sampling(), said.append, noted.append, keep_going=True)
    assert said[-1] == "1: e" and noted[-1].startswith("error: the conversation fills")


def test_theseus_templates_prompt_as_training_encoded_them():
    chat = ChatFormat(BytesTokenizer(), "chatml")
    prompt = chat.prompt_ids(TWO_TURNS[:1])
    assert (
        bytes(prompt).decode()
        == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.stop_ids == (256,)  # bytes spell <|im_end|> out: cut as text
    assert chat.reply_text(list(b" It is 4.<|im_end|>\n<|im_start|>user")) == "It is 4."
    plain = ChatFormat(BytesTokenizer(), "plain")
    assert bytes(plain.prompt_ids(TWO_TURNS[:1])).decode() == "user: What is 2+2?\n\nassistant: "
    assert plain.reply_text(list(b"It is 4.\n\nuser: more")) == "It is 4."


def test_the_model_template_stops_at_its_end_of_turn_token(tmp_path: Path):
    from theseus.data.chat import resolve_template

    tokenizer = make_tokenizer("huggingface", str(tokenizer_folder(tmp_path / "t")))
    name, template = resolve_template("auto", tokenizer)
    chat = ChatFormat(tokenizer, name, template)
    text = template.render(TWO_TURNS[:1], add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert chat.prompt_ids(TWO_TURNS[:1]) == tokenizer.markup.encode(text).ids
    end, eot = tokenizer.markup.token_to_id("<|im_end|>"), tokenizer.eot_id
    assert chat.stop_ids == tuple(sorted({end, eot}))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "missing",
            "missing: no such folder; give a run folder, a checkpoint folder or a Hugging Face",
        ),
        ("empty", "holds neither a theseus checkpoint nor a Hugging Face config.json"),
        ("tokenizerless", "holds no tokenizer.json; save the model's tokenizer beside it"),
    ],
)
def test_a_folder_without_a_model_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "tokenizerless").mkdir()
    (tmp_path / "tokenizerless" / "config.json").write_text("{}")
    capsys.readouterr()
    assert main(["chat", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow  # compiles generation loops of a tiny model (a few seconds)
def test_generation_stops_at_any_stop_id_and_padding_the_prompt_changes_nothing():
    from tests.model.tiny import tiny
    from theseus.inference import generate
    from theseus.model.models import LLAMA

    model = tiny(LLAMA, 64, seed=1, block_size=96)
    prompt = [[5, 9, 2, 33, 7]]
    free = generate(model, prompt, 12, temperature=0)[0]
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    cut = free[: free.index(stop)]
    assert generate(model, prompt, 12, temperature=0, stop_ids=[63, stop], pad_to=64)[0] == cut


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama saved by transformers, with the tokenizer and its Qwen-style template."""
    import torch
    import transformers

    folder = tokenizer_folder(tmp_path_factory.mktemp("hf") / "tiny-chat")
    vocab = make_tokenizer("huggingface", str(folder)).vocab_size
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab,  # no padding: transformers samples from every id, as theseus then does
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # wide logits: greedy picks are far from ties
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(str(folder))
    return folder


def transformers_replies(
    folder: Path, turns: list[list[str]], system: str, stops: tuple
) -> list[str]:
    """Greedy replies of transformers' generate, 8 tokens at most, each turn's prompt through
    the folder's template (transformers' own apply_chat_template), decoded."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder)).eval()
    replies = []
    for session in turns:
        history = [{"role": "system", "content": system}]
        for user in session:
            history.append({"role": "user", "content": user})
            ids = tokenizer.apply_chat_template(history, add_generation_prompt=True)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=8,
                    do_sample=False,
                    eos_token_id=list(stops),
                    pad_token_id=stops[0],
                )
            new = out[0, len(ids) :].tolist()
            new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
            reply = tokenizer.decode(new, skip_special_tokens=False).strip()
            history.append({"role": "assistant", "content": reply})
            replies.append(reply)
    return replies


@pytest.mark.slow  # transformers, torch and a theseus process (about 10 s)
def test_chat_with_a_hugging_face_folder_replies_as_transformers_generate(hf_folder: Path):
    options = ["--temperature", "0", "--max-tokens", "8", "--system", "Be brief."]
    result = subprocess.run(
        [*THESEUS, "chat", str(hf_folder), *options],
        input=LINES,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, result.stderr
    assert "(conversation reset)" in result.stderr
    tokenizer = make_tokenizer("huggingface", str(hf_folder))
    stops = tuple(sorted({tokenizer.markup.token_to_id("<|im_end|>"), tokenizer.eot_id}))
    expected = transformers_replies(
        hf_folder, [["What is 2+2?", "Hello there"], ["Hi"]], "Be brief.", stops
    )
    assert result.stdout == "".join(reply + "\n" for reply in expected)
    assert any(expected)


@pytest.mark.slow  # tokenizes, fine-tunes one step and chats, in this process (about 15 s)
def test_chat_with_a_fine_tuned_run_uses_the_template_its_store_recorded(
    hf_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    import json
    import shutil

    from tests.data.chat_folders import QWEN_TEMPLATE
    from theseus.inference.chat import open_chat

    base = tmp_path / "base"
    shutil.copytree(hf_folder, base)
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": TWO_TURNS}) + "\n")
    out, tok, ft = tmp_path / "out", str(tmp_path / "tok.yaml"), str(tmp_path / "ft.yaml")
    assert main(["configure", "data/tokenize_blockwise_dataset", tok, "data.name=files"]) == 0
    data = [f"data.paths=[{tmp_path / 'chats.jsonl'}]", "data.val_pct=0", "data.seq_len=160"]
    tokenizer = ["tokenizer.backend=huggingface", f"tokenizer.name={base}", "data.store=chats"]
    assert main(["run", "tok", tok, str(out), *data, *tokenizer]) == 0
    assert main(["configure", "llama/train/finetune", ft, f"architecture.init_from={base}"]) == 0
    training = [
        "training.dataset=[{name: chats}]",
        "training.batch_size=1",
        "training.steps=1",
        "optimization.warmup_steps=1",
        "logging.val_interval=0",
        "logging.checkpoint_interval=1",
        "architecture.dtype=float32",
    ]
    assert main(["run", "ft", ft, str(out), *training]) == 0
    # the folder's template changes after training: the run still chats as it was trained
    config = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ x }}"}))
    run = out / "runs" / "default" / "default" / "ft"
    chat = open_chat(run)
    assert chat.format.name == "model" and chat.format.template.source == QWEN_TEMPLATE
    greedy = Sampling(temperature=0, max_tokens=8)
    expected = [chat.respond(text, greedy) for text in ("What is 2+2?", "Hello there")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2+2?\nHello there\n"))
    capsys.readouterr()
    assert main(["chat", str(run), "--temperature", "0", "--max-tokens", "8"]) == 0
    assert capsys.readouterr().out == "".join(reply + "\n" for reply in expected)
