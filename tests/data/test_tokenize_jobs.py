"""The tokenize jobs end to end: valid stores, idempotence, kill -9 resume, splits, limits, blockwise."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import THESEUS, configure_and_run, store_bytes, theseus
from theseus.base.locks import exclusive
from theseus.cli import main
from theseus.data.store import TokenStore
from theseus.data.tokenizers import make_tokenizer
from theseus.errors import UserError
from theseus.job import ExecutionSpec
from theseus.stages import Stage, override, run_stages


def run_job(root: Path, job: str, name: str, *overrides: str, fresh: bool = False) -> Path:
    """Configure and run a job in this process (the CLI's own code path)."""
    stage = Stage.new(job)
    override([stage], list(overrides))
    return run_stages([stage], ExecutionSpec(name, root, fresh=fresh))[0]


def stream_documents(store: TokenStore, split: str) -> list[str]:
    tokens = (
        np.concatenate(store.memmaps(split)) if store.memmaps(split) else np.zeros(0, np.uint16)
    )
    tokenizer = store.tokenizer()
    cuts = np.flatnonzero(tokens == store.manifest.eot_id)
    starts = np.concatenate([[0], cuts + 1])[: len(cuts)]
    return [tokenizer.decode(tokens[a:b].tolist()) for a, b in zip(starts, cuts, strict=True)]


@pytest.mark.slow
def test_pystdlib_bytes_store_is_valid_and_a_rerun_does_nothing(tmp_path: Path):
    args = (
        "data.name=pystdlib",
        "tokenizer.backend=bytes",
        "data.max_samples=60",
        "data.shard_tokens=150000",
    )
    result = configure_and_run(tmp_path, "data/tokenize_variable_dataset", "stdlib", *args)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "out" / "data" / "pystdlib"
    store = TokenStore.open(path)
    m = store.manifest
    assert (m.kind, m.vocab_size, m.eot_id, m.dtype, m.tokenizer["backend"]) == (
        "variable",
        257,
        256,
        "uint16",
        "bytes",
    )
    assert store.n_docs("train") + store.n_docs("val") == 60
    shards = store.shards("train")
    assert len(shards) > 1 and all(s["n_rows"] == 150000 for s in shards[:-1])
    from theseus.data.datasets import SourceConfig, open_source

    first = next(open_source(SourceConfig(name="pystdlib")).documents())
    assert first in stream_documents(store, "train") + stream_documents(store, "val")
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    again = theseus("run", "stdlib", "stdlib.yaml", "out", cwd=tmp_path)
    assert (
        again.returncode == 0
        and "already complete" in again.stderr
        and "nothing to do" in again.stderr
    )
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before

    changed = theseus("run", "stdlib", "stdlib.yaml", "out", "data.max_samples=30", cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert "other settings" in changed.stderr and "--fresh" in changed.stderr
    fresh = theseus(
        "run", "stdlib", "stdlib.yaml", "out", "data.max_samples=30", "--fresh", cwd=tmp_path
    )
    assert fresh.returncode == 0, fresh.stderr
    assert TokenStore.open(path).n_docs("train") + TokenStore.open(path).n_docs("val") == 30


def _kill_when(process: subprocess.Popen, progress: Path, docs: int) -> int:
    """SIGKILL `process` once its committed progress passes `docs` documents."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = json.loads(progress.read_text())["docs_read"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= docs:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return done
        time.sleep(0.002)
    pytest.fail(f"the run ended (rc={process.poll()}) before {docs} documents were committed")


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_a_byte_identical_store(tmp_path: Path):
    args = (
        "data.name=pystdlib",
        "tokenizer.backend=bytes",
        "data.max_samples=400",
        "data.batch_docs=4",
        "data.shard_tokens=400000",
        "data.val_pct=10",
    )
    whole = configure_and_run(
        tmp_path, "data/tokenize_variable_dataset", "whole", *args, "data.store=whole"
    )
    assert whole.returncode == 0, whole.stderr

    theseus(
        "configure",
        "data/tokenize_variable_dataset",
        "killed.yaml",
        *args,
        "data.store=killed",
        cwd=tmp_path,
    )
    command = [*THESEUS, "run", "killed", "killed.yaml", "out"]
    partial = tmp_path / "out" / "data" / "killed.partial"
    killed_at = []
    for threshold in (24, 160):
        process = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        killed_at.append(_kill_when(process, partial / "progress.json", threshold))
        assert partial.is_dir() and not (tmp_path / "out" / "data" / "killed").exists()
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=os.environ)
    assert resumed.returncode == 0, resumed.stderr
    resumed_at = re.search(r"resuming killed after ([\d,]+) documents", resumed.stderr)
    assert (
        resumed_at and int(resumed_at.group(1).replace(",", "")) >= killed_at[-1]
    )  # commits may land before the kill
    assert not partial.exists()
    assert store_bytes(tmp_path / "out" / "data" / "killed") == store_bytes(
        tmp_path / "out" / "data" / "whole"
    )


def test_the_validation_split_depends_on_the_document_not_the_order(tmp_path: Path, corpus: Path):
    files = [str(corpus / "lines.jsonl"), str(corpus / "a.txt")]
    common = (
        "data.name=files",
        "tokenizer.backend=bytes",
        "data.val_pct=30",
        "data.separator='\n\n'",
    )
    one = TokenStore.open(
        run_job(
            tmp_path,
            "data/tokenize_variable_dataset",
            "a",
            *common,
            f"data.paths={json.dumps(files)}",
            "data.store=a",
        )
    )
    two = TokenStore.open(
        run_job(
            tmp_path,
            "data/tokenize_variable_dataset",
            "b",
            *common,
            f"data.paths={json.dumps(files[::-1])}",
            "data.store=b",
        )
    )
    val = stream_documents(one, "val")
    assert 0 < len(val) < 42
    assert sorted(val) == sorted(stream_documents(two, "val"))
    assert sorted(stream_documents(one, "train")) == sorted(stream_documents(two, "train"))
    assert stream_documents(one, "train") != stream_documents(two, "train")  # the order did change


def test_max_tokens_stops_at_a_document_boundary(tmp_path: Path, corpus: Path):
    path = run_job(
        tmp_path,
        "data/tokenize_variable_dataset",
        "limited",
        "data.name=files",
        f"data.paths=[{corpus / 'lines.jsonl'}]",
        "tokenizer.backend=bytes",
        "data.val_pct=0",
        "data.max_tokens=300",
        "data.batch_docs=3",
    )
    store = TokenStore.open(path)
    tokens = np.concatenate(store.memmaps("train"))
    assert 300 <= len(tokens) < 300 + 60 and tokens[-1] == store.manifest.eot_id
    assert store.n_tokens("val") == 0 and store.shards("val") == []


def test_blockwise_chats_learn_only_the_assistant(tmp_path: Path, corpus: Path):
    common = (
        "data.name=files",
        f"data.paths=[{corpus / 'chats.jsonl'}]",
        "tokenizer.backend=bytes",
        "data.val_pct=0",
        "data.seq_len=96",
    )
    right = TokenStore.open(
        run_job(tmp_path, "data/tokenize_blockwise_dataset", "r", *common, "data.store=right")
    )
    left = TokenStore.open(
        run_job(
            tmp_path,
            "data/tokenize_blockwise_dataset",
            "l",
            *common,
            "data.store=left",
            "data.padding=left",
        )
    )
    assert (right.manifest.kind, right.manifest.seq_len, right.manifest.padding) == (
        "blockwise",
        96,
        "right",
    )
    assert right.n_rows("train") == 12
    tokens, mask, length = (
        right.memmaps("train", a)[0][3] for a in ("tokens", "loss_mask", "lengths")
    )
    text = "<|im_start|>user\nWhat is 3+3?<|im_end|>\n<|im_start|>assistant\nIt is 6.<|im_end|>\n"
    assert (
        bytes(tokens[: length - 1].astype(np.uint8)).decode() == text and tokens[length - 1] == 256
    )
    learned = "".join(
        chr(t) if t < 256 else "<EOT>" for t, m in zip(tokens[1:], mask, strict=True) if m
    )
    assert learned == "It is 6.<|im_end|>\n<EOT>"
    assert (tokens[length:] == 256).all() and not mask[length - 1 :].any()
    l_tokens, l_mask, l_length = (
        left.memmaps("train", a)[0][3] for a in ("tokens", "loss_mask", "lengths")
    )
    pad = 97 - int(l_length)
    assert (
        l_length == length
        and (l_tokens[pad:] == tokens[:length]).all()
        and (l_mask[pad:] == mask[: length - 1]).all()
    )
    assert not l_mask[:pad].any()

    from theseus.data.loader import Loader

    # training reads the left-padded store as the right-padded one
    from_left, from_right = (Loader([store], [1.0], 96, 12).batch(0) for store in (left, right))
    for key in from_right:
        np.testing.assert_array_equal(from_left[key], from_right[key], err_msg=key)


def test_train_tokenizer_then_tokenize_with_it(tmp_path: Path):
    trained = configure_and_run(
        tmp_path,
        "data/train_tokenizer",
        "bpe",
        "data.name=pystdlib",
        "data.max_samples=30",
        "tokenizer_training.vocab_size=320",
    )
    assert trained.returncode == 0, trained.stderr
    tokenizer_json = tmp_path / "out" / "tokenizers" / "bpe" / "tokenizer.json"
    assert f"tokenizer.name={tokenizer_json}" in trained.stderr
    path = run_job(
        tmp_path,
        "data/tokenize_variable_dataset",
        "with-bpe",
        "data.name=pystdlib",
        "data.max_samples=30",
        "tokenizer.backend=huggingface",
        f"tokenizer.name={tokenizer_json}",
    )
    store = TokenStore.open(path)
    expected = make_tokenizer("huggingface", str(tokenizer_json))
    assert store.manifest.tokenizer == expected.identity and store.manifest.vocab_size == 320
    assert (path / "tokenizer.json").read_text() == tokenizer_json.read_text()
    tokenizer_json.unlink()  # the store's copy is enough to decode it
    from theseus.data.datasets import SourceConfig, open_source

    first = next(open_source(SourceConfig(name="pystdlib")).documents())
    assert first in stream_documents(store, "train") + stream_documents(store, "val")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("data.val_pct=100", "data.val_pct=100.0: must be < 100"),
        ("data.max_samples=0", "data.max_samples=0: must be >= 1"),
        ("data.batch_docs=0", "data.batch_docs=0: must be >= 1"),
        ("data.store=../x", "bad data.store"),
        ("data.store=x.partial", "bad data.store 'x.partial': a name ending in '.partial'"),
    ],
)
def test_bad_settings_fail_before_writing(tmp_path: Path, setting: str, message: str):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        run_job(
            tmp_path, "data/tokenize_variable_dataset", "bad", "tokenizer.backend=bytes", setting
        )
    assert not (tmp_path / "data").exists()


ENCODE_PATH = """
import json, os, sys
os.sched_setaffinity(0, json.loads(sys.argv[1]))
from theseus.cli import main
from theseus.data import encoding
taken = []
enter = encoding.EncodeWorkers.__enter__
def recorded(self):
    entered = enter(self)
    taken.append({"workers": self.workers, "processes": self.pool is not None})
    return entered
encoding.EncodeWorkers.__enter__ = recorded
code = main(sys.argv[2:])
print("TAKEN" + json.dumps(taken))
sys.exit(code)
"""


@pytest.mark.slow
def test_worker_processes_and_threads_write_the_same_store(tmp_path: Path):
    """Linux encodes in forked processes, one per core the process may run on (its CPU
    affinity); on one core, threads do it. Both must give the same bytes. Each run is a fresh
    process: once JAX has started in a process, it never forks."""
    cores = sorted(os.sched_getaffinity(0))
    assert len(cores) >= 2, "this test needs a machine with at least two cores"
    yaml_path = tmp_path / "tok.yaml"
    assert main(["configure", "data/tokenize_variable_dataset", str(yaml_path)]) == 0
    common = (
        "data.name=pystdlib",
        "tokenizer.backend=bytes",
        "data.max_samples=40",
        "data.batch_docs=3",
        "data.val_pct=20",
    )

    def tokenize(store: str, cpus: list[int]) -> list[dict]:
        args = ["run", store, str(yaml_path), str(tmp_path), *common, f"data.store={store}"]
        result = subprocess.run(
            [sys.executable, "-c", ENCODE_PATH, json.dumps(cpus), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("TAKEN"))
        return json.loads(line[len("TAKEN") :])

    assert tokenize("forked", cores) == [{"workers": len(cores), "processes": True}]
    assert tokenize("threaded", cores[:1]) == [{"workers": 1, "processes": False}]
    forked, threaded = tmp_path / "data" / "forked", tmp_path / "data" / "threaded"
    assert store_bytes(forked) == store_bytes(threaded)


def test_configure_refuses_what_run_would(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "tok.yaml"
    for setting in ("data.val_pct=200", "data.max_tokens=-1", "tokenizer_training.vocab_size=0"):
        job = "data/train_tokenizer" if setting.startswith("tokenizer_") else None
        job = job or "data/tokenize_variable_dataset"
        assert main(["configure", job, str(out), setting]) == 2, setting
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {setting.split('=')[0]}=") and "must be" in err, err
        assert not out.exists()


def test_a_store_being_written_is_not_written_by_a_second_run(tmp_path: Path):
    """The lock a running tokenize holds (here: this process) refuses a second writer."""
    held = exclusive(tmp_path / "data" / "pystdlib", "token store pystdlib")
    refused = pytest.raises(UserError, match=f"being written by process {os.getpid()} on ")
    with held, refused:
        run_job(tmp_path, "data/tokenize_variable_dataset", "second", "data.name=pystdlib")
    assert not (tmp_path / "data").exists()  # the folder made for the lock went with it


def test_a_process_running_jax_tokenizes_without_forking_it(tmp_path: Path):
    import warnings

    import jax

    settings = ("data.name=pystdlib", "tokenizer.backend=bytes", "data.max_samples=60")
    forked = configure_and_run(tmp_path, "data/tokenize_variable_dataset", "forked", *settings)
    assert forked.returncode == 0, forked.stderr
    jax.devices()  # JAX's thread pools now run here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        here = run_job(tmp_path / "here", "data/tokenize_variable_dataset", "t", *settings)
    assert not [w for w in caught if "fork" in str(w.message)]  # JAX warns at any fork
    assert store_bytes(here) == store_bytes(tmp_path / "out" / "data" / "pystdlib")
