"""The README's Usage lines, as written: tokenize fineweb, then train a GPT on the store written.

FineWeb streams from the Hugging Face hub, which this machine cannot reach, so the hub's end is
stood in for, and only it: a local HTTP server answers theseus's reachability check (through
HF_ENDPOINT, as a mirror would), and `datasets.load_dataset`, asked for the fineweb id, streams
local parquet rows with FineWeb's columns through `datasets`' own parquet reader, the same
streaming IterableDataset the hub returns. Everything from `theseus.cli.main` to the reading of
each record is the real code.
"""

from __future__ import annotations

import http.server
import random
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from theseus.checkpoint import locate
from theseus.cli import main
from theseus.config import read_yaml
from theseus.data.store import TokenStore
from theseus.training.metrics import read_metrics

# it tokenizes a few hundred documents and trains a GPT for a few steps (about 30 s)
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
FINEWEB = ("HuggingFaceFW/fineweb", "sample-10BT")  # what data.name=fineweb streams by default
# GPT-2's BPE file is downloaded from OpenAI's server too, and tiktoken checks its sha256, so no
# local stand-in can take its place: the bytes tokenizer is the one offline.
OFFLINE_TOKENIZER = "tokenizer.backend=bytes"
# the README's GPU-sized run (GPT-2 small, 512 sequences of 1024 tokens a step), sized for a CPU
CPU_SIZED = [
    "architecture.n_layers=2",
    "architecture.d_model=32",
    "architecture.n_heads=4",
    "architecture.block_size=32",
    "training.batch_size=8",
    "training.steps=4",
]
WORDS = "the web page of a small town lists its parks roads schools and a market open on sunday"


def usage_lines() -> list[list[str]]:
    """The README's Usage commands from tokenizing to training, each an argv after `theseus`."""
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("## Usage") :], re.S)
    assert block is not None
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    start = lines.index(next(argv for argv in lines if "data/tokenize_variable_dataset" in argv))
    return [argv[1:] for argv in lines[start : start + 4]]


def fineweb_rows(count: int) -> dict[str, list[Any]]:
    """`count` short English-like documents in FineWeb's columns."""
    rng, words = random.Random(0), WORDS.split()
    texts = [" ".join(rng.choices(words, k=rng.randint(60, 120))) + "." for _ in range(count)]
    return {
        "text": texts,
        "id": [f"<urn:uuid:{i:08d}>" for i in range(count)],
        "dump": ["CC-MAIN-2024-10"] * count,
        "url": [f"https://example.org/page/{i}" for i in range(count)],
        "date": ["2024-02-21T00:00:00Z"] * count,
        "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/warc.gz"] * count,
        "language": ["en"] * count,
        "language_score": [0.95] * count,
        "token_count": [len(t.split()) for t in texts],
    }


class _AnyAnswer(http.server.BaseHTTPRequestHandler):
    """A hub endpoint that answers, which is all theseus's reachability check asks of it."""

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fineweb_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """FineWeb's rows, served as the hub would stream them; yields {"rows", "asked"}: the rows,
    and the (id, subset, options) of each load_dataset call for FineWeb."""
    rows = fineweb_rows(300)
    parquet = tmp_path / "hub" / "fineweb-000.parquet"
    parquet.parent.mkdir()
    pq.write_table(pa.table(rows), parquet)
    real_load_dataset, asked = datasets.load_dataset, []

    def hub_or_local(path: str, name: str | None = None, **options: Any) -> Any:
        if path != FINEWEB[0]:
            return real_load_dataset(path, name, **options)
        asked.append((path, name, options))
        return real_load_dataset(
            "parquet", data_files={options["split"]: [str(parquet)]}, **options
        )

    monkeypatch.setattr(datasets, "load_dataset", hub_or_local)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnyAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # set, theseus would not ask the stand-in
    try:
        yield {"rows": rows, "asked": asked}
    finally:
        server.shutdown()
        server.server_close()


def test_the_usage_lines_train_on_the_fineweb_store_they_tokenize(
    fineweb_hub, tmp_path, monkeypatch, capsys
):
    tokenize_configure, tokenize_run, train_configure, train_run = usage_lines()
    assert [tokenize_configure, tokenize_run, train_configure, train_run] == [
        [
            "configure",
            "data/tokenize_variable_dataset",
            "tokenize.yaml",
            "data.name=fineweb",
            "data.max_samples=1000000",
        ],
        ["run", "tokenize-fineweb", "tokenize.yaml", "./output"],
        ["configure", "gpt/train/pretrain", "train.yaml", "--chip", "h100", "-n", "8"],
        ["run", "my-gpt-run", "train.yaml", "./output"],
    ], "the README's Usage lines changed: check that they still run, then update this test"
    monkeypatch.chdir(tmp_path)
    assert main(tokenize_configure) == 0
    assert main([*tokenize_run, OFFLINE_TOKENIZER]) == 0
    assert fineweb_hub["asked"] == [(*FINEWEB, {"split": "train", "streaming": True})]
    store = TokenStore.open(tmp_path / "output" / "data" / "fineweb")
    assert store.manifest.source["hub_id"] == FINEWEB[0]
    written = {
        split: store.tokenizer().decode(np.concatenate(store.memmaps(split)).tolist())
        for split in ("train", "val")
    }
    assert all(
        text in written["train"] or text in written["val"] for text in fineweb_hub["rows"]["text"]
    )

    assert main(train_configure) == 0
    capsys.readouterr()
    assert main([*train_run, *CPU_SIZED]) == 0
    assert "note: the config asks for 8 x h100; it runs here on" in capsys.readouterr().err
    run = tmp_path / "output" / "runs" / "default" / "default" / "my-gpt-run"
    training = read_yaml(run / "config.yaml")["config"]["training"]
    assert training["dataset"] == [{"name": "fineweb", "rate": 1.0}]
    [logged] = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]  # one interval
    assert logged["step"] == 4 and np.isfinite(logged["loss"])
    assert locate(run)[1] == 4
    # the only store there: no other could have been read
    assert sorted(p.name for p in (tmp_path / "output" / "data").iterdir()) == ["fineweb"]

    # naming a store not written: one line with the override that trains on the one there
    assert main(["run", "elsewhere", "train.yaml", "./output", "training.dataset=[{name: x}]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no token store 'x' at ") and err.count("\n") == 1
    assert f"{Path('output', 'data')} holds: fineweb. Tokenize x first (" in err
    assert err.endswith("or train on one of those: 'training.dataset=[{name: fineweb}]'\n")
    assert not (run.parent / "elsewhere").exists()
