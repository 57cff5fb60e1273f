"""Dataset sources: local files of every type, the embedded stdlib corpus, and hub sources offline."""

from __future__ import annotations

import json
import time
from itertools import islice
from pathlib import Path

import pytest

from tests.data.conftest import configure_and_run
from theseus.data.datasets import SourceConfig, open_source
from theseus.errors import UserError


def documents(**settings) -> list:
    return list(open_source(SourceConfig(**settings)).documents())


def test_text_files_are_one_document_unless_split(corpus: Path):
    paths = [str(corpus / "a.txt"), str(corpus / "b.txt")]
    assert documents(name="files", paths=paths) == [
        "First document.\n\nSecond paragraph of a.",
        "Another file, one document.",
    ]
    overlapping = [str(corpus / "*.txt"), str(corpus / "a.txt")]
    assert documents(name="files", paths=overlapping) == documents(name="files", paths=paths)
    split = documents(name="files", paths=paths, separator="\n\n")
    assert split == ["First document.", "Second paragraph of a.", "Another file, one document."]


def test_globs_expand_sorted_and_tables_go_through_datasets(corpus: Path):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    table = pa.table({"id": [1, 2], "body": ["parquet one", "parquet two"]})
    pyarrow.parquet.write_table(table, corpus / "t.parquet")
    pyarrow.csv.write_csv(table, corpus / "t.csv")
    docs = documents(name="files", paths=[str(corpus / "t.*")], text_column="body")
    assert docs == [
        "parquet one",
        "parquet two",
        "parquet one",
        "parquet two",
    ]  # t.csv, then t.parquet
    lines = documents(name="files", paths=[str(corpus / "lines.jsonl")])
    assert len(lines) == 40 and lines[3].startswith("json line number 3 ")


def test_chat_records_become_message_lists(corpus: Path):
    chats = documents(name="files", paths=[str(corpus / "chats.jsonl")])
    assert chats[1] == [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "It is 2."},
    ]


def test_a_chat_column_wins_over_text_and_empty_files_hold_nothing(corpus: Path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (corpus / "both.jsonl").write_text(json.dumps({"text": "summary", "conversations": chat}))
    (corpus / "empty.jsonl").write_text("")
    got = documents(
        name="files",
        paths=[str(corpus / "empty.jsonl"), str(corpus / "both.jsonl")],
        chat_column="conversations",
    )
    assert got == [chat]


def test_tables_of_different_columns_are_read_in_the_order_given(corpus: Path):
    chats, lines = str(corpus / "chats.jsonl"), str(corpus / "lines.jsonl")
    for paths in ([lines, chats], [chats, lines]):
        got = documents(name="files", paths=paths)
        expected = documents(name="files", paths=paths[:1]) + documents(
            name="files", paths=paths[1:]
        )
        assert got == expected and len(got) == 52


def test_bad_paths_and_columns_are_one_line_errors(corpus: Path):
    with pytest.raises(UserError, match=r"needs data\.paths"):
        open_source(SourceConfig(name="files"))
    with pytest.raises(UserError, match="matches no file"):
        open_source(SourceConfig(name="files", paths=[str(corpus / "nothing*.jsonl")]))
    (corpus / "notes.md").write_text("x")
    with pytest.raises(UserError, match="unsupported type"):
        open_source(SourceConfig(name="files", paths=[str(corpus / "notes.md")]))
    with pytest.raises(UserError, match=r"lines\.jsonl, row 1: no column 'body'.*columns: text"):
        documents(
            name="files",
            paths=[str(corpus / "lines.jsonl")],
            text_column="body",
            chat_column="none",
        )
    (corpus / "number.jsonl").write_text('{"text": "fine"}\n{"text": 7}\n')
    with pytest.raises(UserError, match=r"number\.jsonl, row 2: column 'text' is int"):
        documents(name="files", paths=[str(corpus / "number.jsonl")])
    with pytest.raises(UserError, match="unknown dataset 'finewbe'; did you mean fineweb"):
        open_source(SourceConfig(name="finewbe"))
    (corpus / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt: not UTF-8 text \(byte 3 is 0xe9\)"):
        documents(name="files", paths=[str(corpus / "latin1.txt")])


def test_a_null_text_is_an_empty_document(corpus: Path):
    """Skipped and counted like "", rather than ending the run: hub tables often hold nulls."""
    (corpus / "gap.jsonl").write_text('{"text": "fine"}\n{"text": null}\n')
    (corpus / "gap.csv").write_text("id,text\n1,fine\n2,\n")
    for name in ("gap.jsonl", "gap.csv"):
        assert documents(name="files", paths=[str(corpus / name)]) == ["fine", ""]


def test_files_whose_columns_differ_in_type_are_read_together(corpus: Path):
    """Files that each read alone also read as one set, whatever the types of columns that are
    not read; and a CSV column of numbers is text."""
    import pyarrow as pa
    import pyarrow.parquet

    (corpus / "mix").mkdir()
    (corpus / "mix" / "a.jsonl").write_text('{"text": "alpha", "id": 1}\n')
    (corpus / "mix" / "b.jsonl").write_text('{"text": "beta", "id": "x7"}\n')
    (corpus / "mix" / "c.csv").write_text("text,id\ngamma,1\n")
    (corpus / "mix" / "d.csv").write_text("text,id\n1999,x7\n")
    pyarrow.parquet.write_table(pa.table({"text": ["e"], "id": [1]}), corpus / "mix" / "e.parquet")
    pyarrow.parquet.write_table(
        pa.table({"text": ["f"], "id": ["x"]}), corpus / "mix" / "f.parquet"
    )
    got = documents(name="files", paths=[str(corpus / "mix" / "*")])
    assert got == ["alpha", "beta", "gamma", "1999", "e", "f"]


def test_a_file_named_with_glob_characters_is_read_as_named(corpus: Path):
    (corpus / "notes[1].txt").write_text("bracketed")
    assert documents(name="files", paths=[str(corpus / "notes[1].txt")]) == ["bracketed"]


def test_a_hub_source_records_its_chat_column():
    """What the store's manifest compares on a re-run: another chat column is another store."""
    from theseus.data.datasets.hubdata import HubDataset

    described = [
        HubDataset(SourceConfig(name="hf", hub_id="org/chats", chat_column=c)).describe()
        for c in ("messages", "conversations")
    ]
    assert described[0] != described[1]


def test_pystdlib_is_the_stdlib_in_a_fixed_order():
    source = open_source(SourceConfig(name="pystdlib"))
    files = source.files()
    assert len(files) > 500 and source.size_hint() == len(files)
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    first = list(islice(source.documents(), 3))
    assert first == [f.read_text(errors="replace") for f in files[:3]]
    assert list(islice(open_source(SourceConfig(name="pystdlib")).documents(), 3)) == first


def test_tinyshakespeare_reads_a_local_copy(tmp_path: Path):
    copy = tmp_path / "input.txt"
    copy.write_text("First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n")
    assert documents(name="tinyshakespeare", paths=[str(copy)], separator="\n\n") == [
        "First Citizen:\nBefore we proceed.",
        "All:\nSpeak, speak.\n",
    ]


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline", "unreachable"],
)
def test_fineweb_without_network_fails_fast_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict
):
    """The README's fineweb commands with no hub: one line naming the fix, exit 2, no output folder.

    The hub is made unreachable on purpose (offline flag, or a closed local port) so the test
    means the same on a machine with network.
    """
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    result = configure_and_run(
        tmp_path,
        "data/tokenize_variable_dataset",
        "tokenize-fineweb",
        "data.name=fineweb",
        "data.max_samples=1000000",
        out="output",
    )
    assert time.perf_counter() - start < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: data.name=fineweb needs the Hugging Face hub"
    )
    assert "data.name=files" in lines[0] and "data.name=pystdlib" in lines[0]
    assert not (tmp_path / "output").exists()


def test_hf_source_needs_a_hub_id():
    with pytest.raises(UserError, match=r"needs data\.hub_id"):
        open_source(SourceConfig(name="hf"))


def test_source_description_names_the_files(corpus: Path):
    source = open_source(SourceConfig(name="files", paths=[str(corpus / "*.txt")]))
    described = json.loads(json.dumps(source.describe()))
    assert [Path(f["path"]).name for f in described["files"]] == ["a.txt", "b.txt"]


def test_chat_content_in_text_parts_is_joined_and_other_content_refused(tmp_path: Path):
    parts = [{"type": "text", "text": "What is "}, "2+2?"]
    rows = [
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 4}]},
    ]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = open_source(SourceConfig(name="files", paths=[str(tmp_path / "chats.jsonl")]))
    chats = source.documents()
    assert next(chats) == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": ""},
    ]
    with pytest.raises(
        UserError, match=r"chats\.jsonl, row 2: messages\[1\]\.content is not text \(4\); give a"
    ):
        next(chats)
    image = [{"type": "image_url", "image_url": {"url": "x.png"}}]
    (tmp_path / "chats.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": image}]})
    )
    with pytest.raises(UserError, match=r"row 1: messages\[0\]\.content\[0\] is not text \("):
        documents(name="files", paths=[str(tmp_path / "chats.jsonl")])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("data.paths=[BAD]", "error: cannot read BAD as json: "),
        (
            "data.name=tinyshakespeare data.paths=[BAD,BAD]",
            "error: data.paths: tinyshakespeare reads one",
        ),
    ],
    ids=["malformed-jsonl", "two-shakespeares"],
)
def test_a_bad_file_is_one_line_on_the_command_line(tmp_path: Path, setting: str, message: str):
    """Our line is the only error on stderr: not also the line `datasets` logs before it raises."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    overrides = [
        "data.name=files",
        "tokenizer.backend=bytes",
        *setting.replace("BAD", str(bad)).split(),
    ]
    result = configure_and_run(tmp_path, "data/tokenize_variable_dataset", "bad", *overrides)
    assert result.returncode == 2, result.stderr
    *before, last = result.stderr.splitlines()  # before: the progress line, when there was one
    assert last.startswith(message.replace("BAD", str(bad)))
    assert len(before) <= 1 and not any("error" in line.lower() for line in before), before
    assert not (tmp_path / "out" / "data").exists()


def test_a_name_lookup_that_hangs_is_no_answer_within_the_timeout(monkeypatch: pytest.MonkeyPatch):
    """A resolver that hangs cannot be arranged for real here: a stand-in lookup sleeps."""
    import socket

    from theseus.data.hub import url_reachable

    def hang(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror("the name lookup timed out")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    start = time.perf_counter()
    reason = url_reachable("https://example.invalid/x", timeout=1)
    assert time.perf_counter() - start < 3
    assert reason == "example.invalid unreachable: no answer in 1 s"


def test_val_paths_are_held_out_whole_into_the_validation_split(tmp_path: Path):
    """nanoGPT's split: the end of a corpus as a file of its own, all of it validation."""
    (tmp_path / "train.txt").write_text("the first ninety percent " * 40)
    (tmp_path / "val.txt").write_text("the last ten percent " * 8)
    done = configure_and_run(
        tmp_path,
        "data/tokenize_variable_dataset",
        "tok",
        "data.name=files",
        f"data.paths=[{tmp_path / 'train.txt'}]",
        f"data.val_paths=[{tmp_path / 'val.txt'}]",
        "data.val_pct=0",
        "tokenizer.backend=bytes",
        "data.store=split",
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "data" / "split" / "manifest.json").read_text())
    # each split holds its file's bytes and one end-of-text
    assert manifest["splits"]["train"]["n_tokens"] == 25 * 40 + 1
    assert manifest["splits"]["val"]["n_tokens"] == 21 * 8 + 1
    assert manifest["source"]["val_files"][0]["path"] == str(tmp_path / "val.txt")


def test_val_paths_that_cannot_be_held_out_are_one_line_errors(tmp_path: Path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n')
    a, b = str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")
    with pytest.raises(UserError, match=r"is in data\.paths too"):
        documents(name="files", paths=[a], val_paths=[a])
    with pytest.raises(UserError, match=r"is not a \.txt file"):
        documents(name="files", paths=[a], val_paths=[b])
    with pytest.raises(UserError, match=r"data\.val_paths is read by data\.name=files only"):
        documents(name="pystdlib", val_paths=[a])
