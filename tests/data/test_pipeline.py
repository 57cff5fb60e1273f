"""The tokenize loop's background reader: stopping it early leaves no thread and no open reader."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from theseus.data.datasets import SourceConfig, open_source
from theseus.data.encoding import TokenizePlan
from theseus.data.pipeline import batches, prefetch


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "theseus-read" and t.is_alive()]


@pytest.mark.slow
def test_closing_the_prefetch_stops_its_reader_and_closes_the_source(tmp_path: Path):
    """A reader still inside pyarrow when the interpreter exits can abort a finished job."""
    rows = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(5000))
    (tmp_path / "lines.jsonl").write_text(rows)
    source = open_source(SourceConfig(name="files", paths=[str(tmp_path / "lines.jsonl")]))
    read = prefetch(batches(source, 0, TokenizePlan("variable", None, None, 0.0, 10)), depth=1)
    assert len(next(read)) == 10
    read.close()  # as when data.max_tokens is reached
    assert _readers() == []

    closed = threading.Event()

    def documents():
        try:
            yield from range(100)
        finally:
            closed.set()

    read = prefetch(documents(), depth=1)
    next(read)
    read.close()
    assert closed.is_set() and _readers() == []


def test_encoding_uses_the_cores_this_process_may_run_on():
    """On a slice of a large node (SLURM, cgroups, taskset) one worker per allowed core, not one
    per core of the node."""
    from theseus.data.encoding import Encoder, EncodeWorkers
    from theseus.data.tokenizers import BytesTokenizer

    allowed = os.sched_getaffinity(0)
    assert len(allowed) > 1, "this test needs a machine with at least 2 cores"
    encoder = Encoder(BytesTokenizer(), TokenizePlan("variable", None, None, 0.0, 8), "uint16")
    assert EncodeWorkers(encoder).workers == len(allowed)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert EncodeWorkers(encoder).workers == 1
    finally:
        os.sched_setaffinity(0, allowed)
