"""Tokenizers: bytes, trained BPE, identities and hashes, and offline errors that come at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from theseus.data.datasets import SourceConfig, open_source
from theseus.data.tokenizer_training import train_bpe
from theseus.data.tokenizers import BytesTokenizer, load_tokenizer, make_tokenizer
from theseus.errors import UserError


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    return train_bpe(open_source(SourceConfig(name="pystdlib")), 40, 400, 2, out)


def test_bytes_round_trip_and_end_of_text():
    tok = BytesTokenizer()
    text = "héllo, wörld ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and tok.decode([*ids, tok.eot_id]) == text
    assert (tok.vocab_size, tok.eot_id) == (257, 256)


def test_trained_bpe_round_trips_and_has_a_stable_identity(bpe_json: Path):
    tok = make_tokenizer("huggingface", str(bpe_json))
    text = "def main():\n    return sorted(items, key=len)\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    assert tok.vocab_size == 400 and tok.decode([tok.eot_id]) == "<|endoftext|>"
    again = make_tokenizer("huggingface", str(bpe_json.parent))  # a folder works too
    assert again.identity == tok.identity
    assert load_tokenizer(tok.identity).encode(text) == ids


def test_a_changed_tokenizer_file_is_refused(bpe_json: Path, tmp_path: Path):
    tok = make_tokenizer("huggingface", str(bpe_json))
    data = json.loads(bpe_json.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: same size, different tokenizer
    changed = tmp_path / "tokenizer.json"
    changed.write_text(json.dumps(data))
    identity = {**tok.identity, "name": str(changed)}
    with pytest.raises(UserError, match="has changed since the store was written"):
        load_tokenizer(identity)
    assert load_tokenizer(identity, fallback=bpe_json).encode("def x") == tok.encode("def x")


def test_tiktoken_without_a_cache_fails_fast_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """It downloads when its server answers; here the server is made unreachable (a proxy on a
    closed port), so that the test means the same on a machine with network."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(UserError) as error:
        make_tokenizer("tiktoken", "cl100k_base")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "cannot be downloaded (openaipublic.blob.core.windows.net unreachable: " in message
    assert (
        "TIKTOKEN_CACHE_DIR" in message
        and "tokenizer.backend=bytes" in message
        and "\n" not in message
    )
    assert list(tmp_path.iterdir()) == []


def test_unknown_encodings_and_missing_files_are_user_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with pytest.raises(UserError, match="not a tiktoken encoding"):
        make_tokenizer("tiktoken", "gpt5")
    with pytest.raises(UserError, match="no such file"):
        make_tokenizer("huggingface", str(tmp_path / "missing.json"))
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x8f\xff\xfe sentencepiece")
    with pytest.raises(UserError, match=r"cannot read .*tokenizer\.model \(not UTF-8 text\)"):
        make_tokenizer("huggingface", str(tmp_path / "tokenizer.model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"needs the Hugging Face hub.*tokenizer\.backend=bytes"):
        make_tokenizer("huggingface", "someone/some-tokenizer")
    assert time.perf_counter() - start < 5


def test_special_token_text_in_a_document_stays_text(bpe_json: Path):
    tok = make_tokenizer("huggingface", str(bpe_json))
    text = "quoting <|endoftext|> mid-document"
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.decode(ids) == text
    assert tok.encode_markup_batch(["<|endoftext|>"]) == [[tok.eot_id]]


def test_chat_markup_becomes_special_ids_and_messages_stay_text(bpe_json: Path, tmp_path: Path):
    from tokenizers import Tokenizer as HFTokenizer

    from theseus.data.encoding import Encoder, TokenizePlan

    with_markers = HFTokenizer.from_file(str(bpe_json))
    with_markers.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    with_markers.save(str(tmp_path / "tokenizer.json"))
    tok = make_tokenizer("huggingface", str(tmp_path / "tokenizer.json"))
    start, end = (tok.markup.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    chat = [
        {"role": "user<|endoftext|>", "content": "say <|im_end|> please"},
        {"role": "assistant", "content": "ok"},
    ]
    plan = TokenizePlan("blockwise", None, None, 0.0, 8, seq_len=64)
    encoded = Encoder(tok, plan, "uint16").encode([chat, chat[1:]])
    ids = encoded.arrays["train"]["tokens"][0, : int(encoded.tokens[0])].tolist()
    # the markup only: not the quote, nor a role that spells a special token
    assert ids.count(start) == 2 and ids.count(end) == 2 and ids.count(tok.eot_id) == 1
    assert "user<|endoftext|>\nsay <|im_end|> please" in tok.decode(ids)
    # markup and messages encoded apart give the ids of the whole chat encoded at once
    whole = tok.markup.encode("<|im_start|>assistant\nok<|im_end|>\n", add_special_tokens=False)
    plain = encoded.arrays["train"]["tokens"][1, : int(encoded.tokens[1])].tolist()
    assert plain == [*whole.ids, tok.eot_id]


def test_training_a_tokenizer_on_no_text_is_refused(tmp_path: Path):
    (tmp_path / "blank.txt").write_text("  \n")
    source = open_source(SourceConfig(name="files", paths=[str(tmp_path / "blank.txt")]))
    with pytest.raises(UserError, match=r"the source gave no text to train on \(1 documents"):
        train_bpe(source, None, 300, 2, tmp_path / "tokenizer.json")
    assert not (tmp_path / "tokenizer.json").exists()
