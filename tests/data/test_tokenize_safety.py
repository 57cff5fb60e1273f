"""A tokenize job stops cleanly on signals, never deletes what it did not write, and damage to a
finished store is found: by a re-run (checksums) and by training (ids outside the vocabulary)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import (
    THESEUS,
    configure_and_run,
    store_bytes,
    theseus,
    write_stream_store,
)
from tests.data.test_tokenize_jobs import run_job
from theseus.data.loader import DatasetMix, Loader, open_mixture
from theseus.data.store import TokenStore
from theseus.errors import UserError

SLOW_STDLIB = (
    "data.name=pystdlib",
    "tokenizer.backend=bytes",
    "data.max_samples=400",
    "data.batch_docs=4",
    "data.shard_tokens=400000",
)


def _signal_group_after(process: subprocess.Popen, progress: Path, sig: int) -> None:
    """Send `sig` to the job's whole process group (as a terminal's Ctrl-C or SLURM's scancel
    do) once it has committed some documents."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(progress.read_text())["docs_read"] >= 40:
                os.killpg(process.pid, sig)
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    pytest.fail(f"the run ended (rc={process.poll()}) before the signal could be sent")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_stops_at_a_commit_and_a_rerun_finishes(
    tmp_path: Path, sig: signal.Signals
):
    whole = configure_and_run(tmp_path, "data/tokenize_variable_dataset", "w", *SLOW_STDLIB)
    assert whole.returncode == 0, whole.stderr
    configured = theseus(
        "configure",
        "data/tokenize_variable_dataset",
        "s.yaml",
        *SLOW_STDLIB,
        "data.store=stopped",
        cwd=tmp_path,
    )
    assert configured.returncode == 0, configured.stderr
    command = [*THESEUS, "run", "s", "s.yaml", "out"]
    partial = tmp_path / "out" / "data" / "stopped.partial"
    process = subprocess.Popen(
        command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    _signal_group_after(process, partial / "progress.json", sig)
    try:
        _, err = process.communicate(timeout=60)  # the old pool could hang here for good
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the job did not stop within 60 s of {sig.name}")
    assert process.returncode == 75, err
    assert f"stopped by {sig.name} after" in err and "run again to resume" in err
    assert "Traceback" not in err
    assert partial.is_dir() and not (tmp_path / "out" / "data" / "stopped").exists()
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and "resuming stopped" in resumed.stderr, resumed.stderr
    assert store_bytes(tmp_path / "out" / "data" / "stopped") == store_bytes(
        tmp_path / "out" / "data" / "pystdlib"
    )


@pytest.mark.slow
def test_an_interrupted_fresh_rebuild_is_finished_by_a_plain_rerun(tmp_path: Path):
    job, rebuilt = "data/tokenize_variable_dataset", tmp_path / "data" / "pystdlib"
    run_job(tmp_path, job, "old", *SLOW_STDLIB, "data.max_samples=20")
    whole = run_job(tmp_path, job, "whole", *SLOW_STDLIB, "data.store=whole")
    configured = theseus("configure", job, "s.yaml", *SLOW_STDLIB, cwd=tmp_path)
    assert configured.returncode == 0, configured.stderr
    command = [*THESEUS, "run", "s", "s.yaml", str(tmp_path)]
    process = subprocess.Popen(
        [*command, "--fresh"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    partial = tmp_path / "data" / "pystdlib.partial"
    _signal_group_after(process, partial / "progress.json", signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 75 and partial.is_dir(), err
    old = TokenStore.open(rebuilt)
    assert old.n_docs("train") + old.n_docs("val") == 20  # kept until the rebuild is complete

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "finishing the interrupted --fresh rebuild of pystdlib" in rerun.stderr
    assert "resuming pystdlib after" in rerun.stderr
    assert store_bytes(rebuilt) == store_bytes(whole)


def test_a_folder_in_the_stores_place_is_refused_and_left_alone(tmp_path: Path):
    mine = tmp_path / "data" / "pystdlib"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("not a token store")
    with pytest.raises(UserError, match="is not a token store; move it away"):
        run_job(tmp_path, "data/tokenize_variable_dataset", "t", *SLOW_STDLIB[:3])
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "data" / "pystdlib.partial").exists()


def test_a_damaged_shard_is_found_by_a_rerun_and_by_training(tmp_path: Path):
    path = run_job(tmp_path, "data/tokenize_variable_dataset", "t", *SLOW_STDLIB[:3])
    shard = next(path.glob("train-*.tokens.bin"))
    shard.write_bytes(b"\xff" * shard.stat().st_size)  # same size: only checksums or ids tell

    with pytest.raises(UserError, match=f"shard {shard.name} was altered"):
        run_job(tmp_path, "data/tokenize_variable_dataset", "t", *SLOW_STDLIB[:3])
    stores = open_mixture(tmp_path, [DatasetMix("pystdlib")])
    loader = Loader(stores, [1.0], 64, 8)
    with pytest.raises(UserError, match="token id 65535, outside its vocabulary of 257"):
        for step in range(loader.steps_per_epoch):
            loader.batch(step)


def test_a_missing_store_names_the_job_that_writes_it(tmp_path: Path):
    with pytest.raises(UserError, match=r"data\.name=pystdlib` and"):
        open_mixture(tmp_path, [DatasetMix("pystdlib")])
    with pytest.raises(UserError, match=r"data.name=files 'data.paths=\[...\]' data.store=mine"):
        open_mixture(tmp_path, [DatasetMix("mine")])


def test_a_missing_store_lists_the_stores_there_and_the_override_to_train_on_one(tmp_path: Path):
    tokens = {"train": np.arange(100) % 50}
    for name in ("shakespeare", "pystdlib"):
        write_stream_store(tmp_path / "data" / name, tokens, vocab_size=50, eot_id=0)
    data = tmp_path / "data"
    with pytest.raises(UserError) as alone:
        open_mixture(tmp_path, [DatasetMix("fineweb")])
    assert str(alone.value) == (
        f"no token store 'fineweb' at {data / 'fineweb'}; {data} holds: pystdlib, shakespeare. "
        "Tokenize fineweb first (`theseus configure data/tokenize_variable_dataset tok.yaml "
        f"data.name=fineweb` and `theseus run tokenize-fineweb tok.yaml {tmp_path}`), "
        "or train on one of those: 'training.dataset=[{name: pystdlib}]'"
    )
    # in a mixture, the override replaces only that entry, with a store the mixture lacks
    with pytest.raises(UserError, match=r"one of those: training\.dataset\.1\.name=shakespeare$"):
        open_mixture(tmp_path, [DatasetMix("pystdlib"), DatasetMix("web")])
    every = [DatasetMix("pystdlib"), DatasetMix("shakespeare"), DatasetMix("web")]
    with pytest.raises(UserError, match=r"or leave it out: '~training\.dataset\.2'$"):
        open_mixture(tmp_path, every)


def test_training_store_names_cannot_leave_the_data_folder(tmp_path: Path):
    outside = write_stream_store(tmp_path / "outside", {"train": np.arange(100) % 9}, 10, 9)
    for name in ("../outside", str(outside.path)):  # both would open it
        with pytest.raises(UserError, match=r"bad training\.dataset\.0\.name"):
            open_mixture(tmp_path, [DatasetMix(name)])
    with pytest.raises(UserError, match=r"'x\.partial': a name ending in '\.partial'"):
        open_mixture(tmp_path, [DatasetMix("x.partial")])


def test_a_source_without_text_is_refused_and_leaves_nothing(tmp_path: Path):
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "empty.jsonl").write_text("")
    paths = f"data.paths=[{tmp_path / 'blank.txt'}, {tmp_path / 'empty.jsonl'}]"
    with pytest.raises(UserError, match=r"the source gave no text \(1 documents, all empty\)"):
        run_job(
            tmp_path,
            "data/tokenize_variable_dataset",
            "t",
            "data.name=files",
            paths,
            "tokenizer.backend=bytes",
        )
    assert not (tmp_path / "data").exists()


def test_a_source_file_rewritten_at_the_same_size_is_not_taken_for_the_old_one(tmp_path: Path):
    source = tmp_path / "x.txt"
    source.write_text("aaaa bbbb")
    args = ("data.name=files", f"data.paths=[{source}]", "tokenizer.backend=bytes")
    run_job(tmp_path, "data/tokenize_variable_dataset", "t", *args)
    source.write_text("cccc dddd")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="made with other settings; pass --fresh"):
        run_job(tmp_path, "data/tokenize_variable_dataset", "t", *args)


@pytest.mark.slow
def test_a_trained_tokenizer_is_kept_unless_fresh_asks_to_replace_it(tmp_path: Path):
    args = ("data.name=pystdlib", "data.max_samples=20", "tokenizer_training.vocab_size=300")
    trained = configure_and_run(tmp_path, "data/train_tokenizer", "bpe", *args)
    assert trained.returncode == 0, trained.stderr
    tokenizer_json = tmp_path / "out" / "tokenizers" / "bpe" / "tokenizer.json"
    first = tokenizer_json.read_bytes()

    again = theseus("run", "bpe", "bpe.yaml", "out", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    other = ("run", "bpe", "bpe.yaml", "out", "tokenizer_training.vocab_size=280")
    changed = theseus(*other, cwd=tmp_path)
    assert changed.returncode == 2 and "other settings; pass --fresh" in changed.stderr
    assert tokenizer_json.read_bytes() == first
    fresh = theseus(*other, "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert tokenizer_json.read_bytes() != first


def test_chats_with_nothing_to_learn_are_counted(tmp_path: Path, capsys):
    chats = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "anyone?"}],
        [{"role": "User", "content": "hi"}, {"role": "Assistant", "content": "hello"}],
    ]
    _tokenize_chats(tmp_path, [{"messages": c} for c in chats], "data.seq_len=64")
    assert "warning: 2 examples have no token to learn" in capsys.readouterr().err


def _tokenize_chats(tmp_path: Path, rows: list[dict], *overrides: str) -> Path:
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_job(
        tmp_path,
        "data/tokenize_blockwise_dataset",
        "t",
        "data.name=files",
        f"data.paths=[{tmp_path / 'chats.jsonl'}]",
        "tokenizer.backend=bytes",
        "data.val_pct=0",
        *overrides,
    )


def _chat(question: str, answer: str | None = "fine") -> dict:
    messages = [{"role": "user", "content": question}]
    return {"messages": messages + ([{"role": "assistant", "content": answer}] if answer else [])}


def test_examples_learning_nothing_are_warned_about_by_cause(tmp_path: Path, capsys):
    rows = [_chat("hi"), _chat("long question " * 8), _chat("anyone?", None)]
    _tokenize_chats(tmp_path, rows, "data.seq_len=64")
    err = capsys.readouterr().err
    assert "warning: 2 examples have no token to learn" in err
    assert "1 were cut at data.seq_len=64 before their first learned token" in err
    assert "1 have nothing to learn with data.loss_on=assistant" in err


def test_a_store_with_nothing_to_learn_is_refused(tmp_path: Path):
    rows = [_chat("long question " * 8), _chat("another long question " * 5)]
    with pytest.raises(UserError, match=r"no example has a token to learn: of 2, 2 were cut at "):
        _tokenize_chats(tmp_path, rows, "data.seq_len=64")
    assert not (tmp_path / "data").exists()


def test_chats_without_messages_are_skipped_and_counted(tmp_path: Path, capsys):
    path = _tokenize_chats(tmp_path, [_chat("hi"), {"messages": [], "text": "lost"}])
    assert TokenStore.open(path).n_rows("train") == 1
    err = capsys.readouterr().err
    assert "warning: 1 chat(s) had no message and were skipped" in err
    assert "1 empty documents skipped" in err
