"""Token stores: manifest contents, exact shards, and one-line errors for damaged stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import write_stream_store
from theseus.data.store import FORMAT_VERSION, TokenStore, token_dtype
from theseus.errors import UserError


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    tokens = np.arange(2500) % 300
    return write_stream_store(
        tmp_path / "s", {"train": tokens, "val": tokens[:50]}, vocab_size=300, eot_id=299
    )


def test_dtype_follows_the_vocabulary():
    assert (
        token_dtype(257) == "uint16"
        and token_dtype(65536) == "uint16"
        and token_dtype(100277) == "uint32"
    )


def test_shards_hold_exactly_what_was_written(store: TokenStore):
    assert [s["n_rows"] for s in store.shards("train")] == [1000, 1000, 500]
    assert np.array_equal(np.concatenate(store.memmaps("train")), np.arange(2500) % 300)
    assert store.n_tokens("val") == 50 and store.n_docs("train") == 8  # token 299 ends a "document"
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["dtype"] == "uint16"
    assert all(
        len(s["files"]["tokens"]["sha256"]) == 64 for s in manifest["splits"]["train"]["shards"]
    )


def _one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as error:
        TokenStore.open(path)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_truncated_shard_is_detected(store: TokenStore):
    shard = store.path / "train-00001.tokens.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    assert "train-00001.tokens.bin is truncated" in _one_line_error(store.path)


def test_an_altered_shard_is_detected(store: TokenStore):
    shard = store.path / "train-00002.tokens.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    assert "train-00002.tokens.bin was altered" in _one_line_error(store.path)
    TokenStore.open(store.path, verify=False)  # sizes alone still match


def test_a_missing_shard_and_another_format_version_are_detected(store: TokenStore, tmp_path: Path):
    manifest = json.loads((store.path / "manifest.json").read_text())
    (store.path / "val-00000.tokens.bin").unlink()
    assert "val-00000.tokens.bin is missing" in _one_line_error(store.path)
    manifest["format_version"] = FORMAT_VERSION + 1
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    assert f"format version {FORMAT_VERSION + 1}" in _one_line_error(store.path)
    assert "no token store" in _one_line_error(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m["splits"]["train"]["shards"][0].pop("files"),
        lambda m: m.update(splits=[]),
        lambda m: m.update(kind="blockwise"),  # without a seq_len
    ],
    ids=["shard-without-files", "splits-not-a-table", "blockwise-without-seq_len"],
)
def test_a_manifest_with_broken_fields_is_a_one_line_error(store: TokenStore, damage):
    manifest = json.loads((store.path / "manifest.json").read_text())
    damage(manifest)
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    message = _one_line_error(store.path)
    assert f"{store.path / 'manifest.json'} is damaged" in message
    assert f"delete {store.path} and tokenize again" in message


@pytest.mark.parametrize("content", [b'{"format": "theseus-token-st', b"\x00\x81\xfe\xff"])
def test_a_manifest_that_is_not_json_is_a_one_line_error(store: TokenStore, content: bytes):
    (store.path / "manifest.json").write_bytes(content)
    message = _one_line_error(store.path)
    assert f"{store.path / 'manifest.json'} is not valid JSON" in message
    assert f"delete {store.path} and tokenize again" in message


@pytest.mark.parametrize("content", [b'{"docs_read": 3,', b"\xff\xfe", b"[]"])
def test_a_damaged_progress_file_starts_the_store_over(tmp_path: Path, content: bytes):
    from theseus.data.store import PROGRESS, Manifest, StoreWriter

    manifest = Manifest(
        kind="variable",
        vocab_size=100,
        eot_id=0,
        dtype=token_dtype(100),
        tokenizer={"backend": "bytes", "name": "test", "hash": "vocab-100"},
        source={"name": "synthetic"},
        settings={},
        splits={},
    )
    first = StoreWriter(tmp_path / "s", manifest, 10)
    first.resume()
    first.add("train", {"tokens": np.arange(1, 8, dtype=manifest.dtype)})
    first.commit(1, {})
    (first.partial / PROGRESS).write_bytes(content)
    again = StoreWriter(tmp_path / "s", manifest, 10)
    assert not again.can_resume()
    assert again.resume() is False  # starts over instead of failing on every rerun
    assert again.docs_read == 0 and not list(again.partial.glob("*.bin"))
