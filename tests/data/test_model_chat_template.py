"""A Hugging Face folder's own chat template: rendered as transformers renders it, tokenized to
the ids of the rendered text, and only the assistant's replies (with their end of turn) learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.chat_folders import QWEN_TEMPLATE, TWO_TURNS, tokenizer_folder
from tests.data.conftest import configure_and_run
from theseus.cli import main
from theseus.data.chat import ModelTemplate, resolve_template
from theseus.data.encoding import Encoder, TokenizePlan
from theseus.data.store import TokenStore
from theseus.data.tokenizers import make_tokenizer
from theseus.errors import UserError

SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
RENDERED = (
    SYSTEM
    + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n"
    + "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\nI am fine.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tokenizer_folder(tmp_path_factory.mktemp("qwen") / "tokenizer")


def encode_rows(folder: Path, docs: list, loss_on: str = "assistant") -> tuple[list, list]:
    """(ids, learned flags per target) of each document, as the blockwise tokenize job writes them."""
    tokenizer = make_tokenizer("huggingface", str(folder))
    name, template = resolve_template("auto", tokenizer)
    plan = TokenizePlan(
        "blockwise", None, None, 0.0, 8, template=name, chat=template, seq_len=128, loss_on=loss_on
    )
    encoded = Encoder(tokenizer, plan, "uint16").encode(docs)
    rows = encoded.arrays["train"]
    lengths = encoded.tokens.tolist()
    ids = [rows["tokens"][i, :n].tolist() for i, n in enumerate(lengths)]
    return ids, [rows["loss_mask"][i, : n - 1].tolist() for i, n in enumerate(lengths)]


def test_the_folder_template_renders_chatml_with_its_default_system_prompt(folder: Path):
    tokenizer = make_tokenizer("huggingface", str(folder))
    name, template = resolve_template("auto", tokenizer)
    assert name == "model" and template is not None
    assert template.render(TWO_TURNS) == RENDERED
    own = [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:1]]
    assert template.render(own, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # the named tokens come from tokenizer_config.json
    assert template.tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert tokenizer.eos_id == tokenizer.markup.token_to_id("<|im_end|>")


def test_a_chat_is_its_rendered_text_encoded_whole_and_only_the_replies_are_learned(folder: Path):
    tokenizer = make_tokenizer("huggingface", str(folder))
    (ids,), (learned,) = encode_rows(folder, [TWO_TURNS])
    # the ids of the whole rendered text, special markers parsed; no end-of-text appended
    assert ids == tokenizer.markup.encode(RENDERED, add_special_tokens=False).ids
    im_start, im_end = (tokenizer.markup.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    newline = tokenizer.encode("\n")
    assert len(newline) == 1
    reply_1, reply_2 = tokenizer.encode("It is 4."), tokenizer.encode("I am fine.")
    header = [im_start, *tokenizer.encode("assistant\n")]
    # learned: exactly each reply's ids, its <|im_end|> and the newline after it
    first = len(tokenizer.markup.encode(SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n").ids)
    first += len(header)
    second = first + len(reply_1) + 2
    second += len(tokenizer.markup.encode("<|im_start|>user\nHello there<|im_end|>\n").ids)
    second += len(header)
    counted = [first + k for k in range(len(reply_1) + 2)]
    counted += [second + k for k in range(len(reply_2) + 2)]
    assert [i + 1 for i, m in enumerate(learned) if m] == counted  # mask i is target i + 1
    assert [ids[i] for i in counted] == [*reply_1, im_end, *newline, *reply_2, im_end, *newline]
    assert ids[first - len(header) : first] == header
    assert second + len(reply_2) + 2 == len(ids)


def test_loss_on_all_learns_every_token_and_text_documents_keep_their_end_of_text(folder: Path):
    tokenizer = make_tokenizer("huggingface", str(folder))
    (chat, text), (learned_chat, learned_text) = encode_rows(
        folder, [TWO_TURNS, "Hello there <|im_end|>"], loss_on="all"
    )
    assert all(learned_chat) and all(learned_text) and len(learned_chat) == len(chat) - 1
    # a plain document is text (a quoted marker stays text) and ends with end-of-text
    assert text == [*tokenizer.encode("Hello there <|im_end|>"), tokenizer.eot_id]
    assert tokenizer.markup.token_to_id("<|im_end|>") not in text


def test_the_template_file_beside_the_tokenizer_wins_and_named_tokens_reach_it(tmp_path: Path):
    folder = tokenizer_folder(tmp_path / "t", template="config's", jinja_file=False)
    (folder / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "bos_token": "<|im_start|>"})
    )
    _, template = resolve_template("model", make_tokenizer("huggingface", str(folder)))
    assert template is not None
    assert template.render(TWO_TURNS[:2]) == (
        "<|im_start|>[user] What is 2+2?<|im_end|>[assistant] It is 4.<|im_end|>"
    )
    # named templates in tokenizer_config.json: the "default" one
    named = tokenizer_folder(tmp_path / "n", template=None)
    config = json.loads((named / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D"},
    ]
    (named / "tokenizer_config.json").write_text(json.dumps(config))
    assert make_tokenizer("huggingface", str(named)).chat_template == "D"


def test_a_template_that_is_not_prefix_stable_is_refused_in_one_line():
    # earlier replies are rendered differently once a later message follows
    template = ModelTemplate(
        "{% for m in messages %}{% if loop.last %}<{{ m.content }}>{% else %}{{ m.content }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(UserError, match=r"not prefix-stable: message 1 \(assistant\)") as caught:
        template.learned_spans(TWO_TURNS, "assistant")
    assert "\n" not in str(caught.value)
    assert template.learned_spans(TWO_TURNS, "all")[1] == [(0, len(template.render(TWO_TURNS)))]
    with pytest.raises(UserError, match=r"fails on a chat of 1 message.*boom"):
        ModelTemplate("{{ raise_exception('boom') }}").render(TWO_TURNS[:1])


def test_the_model_template_from_a_folder_without_one_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tokenizer_folder(tmp_path / "plain", template=None)
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": TWO_TURNS}) + "\n")
    yaml_path = str(tmp_path / "t.yaml")
    overrides = [
        "data.name=files",
        f"data.paths=[{tmp_path / 'chats.jsonl'}]",
        "tokenizer.backend=huggingface",
        f"tokenizer.name={folder}",
        "data.chat_template=model",
    ]
    assert main(["configure", "data/tokenize_blockwise_dataset", yaml_path, *overrides]) == 0
    capsys.readouterr()
    assert main(["run", "t", yaml_path, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.chat_template=model: the tokenizer has no chat template")
    assert "\n" not in err and not (tmp_path / "out" / "data").exists()
    # auto falls back to chatml for such a folder
    assert resolve_template("auto", make_tokenizer("huggingface", str(folder))) == ("chatml", None)


def test_tokenizing_a_chat_jsonl_through_the_cli_uses_the_folder_template(
    tmp_path: Path, folder: Path
):
    chats = [TWO_TURNS, [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:2]]] * 3
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    args = (
        "data.name=files",
        f"data.paths=[{path}]",
        "tokenizer.backend=huggingface",
        f"tokenizer.name={folder}",
        "data.val_pct=0",
        "data.seq_len=96",
    )
    result = configure_and_run(tmp_path, "data/tokenize_blockwise_dataset", "chats", *args)
    assert result.returncode == 0, result.stderr
    store = TokenStore.open(tmp_path / "out" / "data" / "files")
    settings = store.manifest.settings
    assert settings["chat_template"] == "model"  # data.chat_template=auto, the folder has one
    assert settings["chat_template_jinja"] == QWEN_TEMPLATE
    assert settings["chat_template_tokens"]["eos_token"] == "<|im_end|>"
    assert store.n_rows("train") == 6
    tokens, mask, lengths = (
        store.memmaps("train", a)[0] for a in ("tokens", "loss_mask", "lengths")
    )
    expected_ids, expected_mask = encode_rows(folder, chats[:2])
    for row in range(2):
        n = int(lengths[row])
        assert tokens[row, :n].tolist() == expected_ids[row]
        assert mask[row, : n - 1].tolist() == expected_mask[row] and not mask[row, n - 1 :].any()
    tokenizer = make_tokenizer("huggingface", str(folder))
    learned = tokenizer.decode(tokens[1, 1:][mask[1].astype(bool)].tolist())
    assert learned == "It is 4.<|im_end|>\n"
    assert np.all(tokens[1, int(lengths[1]) :] == store.manifest.eot_id)  # padding


@pytest.mark.slow  # loads transformers (and torch): about 6 s
@pytest.mark.parametrize("jinja_file", [False, True])
def test_text_and_ids_equal_transformers_apply_chat_template(tmp_path: Path, jinja_file: bool):
    from transformers import AutoTokenizer

    folder = tokenizer_folder(tmp_path / "t", jinja_file=jinja_file)
    reference = AutoTokenizer.from_pretrained(str(folder))
    if jinja_file:  # as transformers 5 writes a folder: the template in chat_template.jinja
        reference.save_pretrained(str(tmp_path / "saved"))
        assert (tmp_path / "saved" / "chat_template.jinja").is_file()
        folder = tmp_path / "saved"
    tokenizer = make_tokenizer("huggingface", str(folder))
    _, template = resolve_template("model", tokenizer)
    assert template is not None
    chats = [
        TWO_TURNS,
        [{"role": "system", "content": "Answer in French, tersely."}, *TWO_TURNS],
        [
            {"role": "user", "content": "  spaces\n\nand lines  "},
            {"role": "assistant", "content": "ok ✓"},
        ],
    ]
    ids, _ = encode_rows(folder, chats)
    for chat, row in zip(chats, ids, strict=True):
        assert template.render(chat) == reference.apply_chat_template(chat, tokenize=False)
        assert row == reference.apply_chat_template(chat, tokenize=True)["input_ids"]
        prompt = chat[:-1]
        assert template.render(prompt, add_generation_prompt=True) == reference.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
