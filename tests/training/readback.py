"""Read back what a run sent to TensorBoard and to W&B (offline), to compare with metrics.jsonl.

Neither `tensorboard` nor a W&B log reader is installed (the venv has tensorboardX, which only
writes, and wandb, whose reader moved into its Go core), so both files are parsed here from
their formats: TFRecord framing around `Event` protos, and the LevelDB-style log of `Record`
protos that W&B writes. Each frame's checksum is verified, so a torn or misread file fails.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event
from wandb.proto.wandb_internal_pb2 import Record


def _masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(path: Path) -> list[bytes]:
    """The payloads of a TFRecord file: [u64 length][u32 masked crc of it][data][u32 crc]."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert header_crc == _masked_crc32c(header), f"{path}: bad length checksum at {pos}"
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert payload_crc == _masked_crc32c(payload), f"{path}: bad record checksum at {pos}"
        out.append(payload)
        pos += 16 + length
    return out


def tensorboard_scalars(folder: Path) -> dict[tuple[str, int], list[float]]:
    """Every scalar of every event file under `folder`, by (tag, step), in file order."""
    scalars: dict[tuple[str, int], list[float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for payload in tfrecords(path):
            event = Event.FromString(payload)
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                scalars.setdefault((value.tag, event.step), []).append(value.simple_value)
    return scalars


_W_AND_B_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Record]:
    """The records of a `.wandb` file: 32 KiB blocks of [u32 crc32][u16 length][u8 type][data]
    chunks (a record too long for the rest of its block is split FIRST, MIDDLE..., LAST; a block
    tail shorter than a chunk header is padding)."""
    data = path.read_bytes()
    assert data.startswith(_W_AND_B_HEADER), f"{path}: not a W&B log ({data[:7]!r})"
    pos, pieces, records = len(_W_AND_B_HEADER), b"", []
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero fill at the end of a preallocated block
            continue
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad chunk checksum at {pos}"
        pieces += chunk
        if kind in (_FULL, _LAST):
            records.append(Record.FromString(pieces))
            pieces = b""
    assert pieces == b"", f"{path}: ends inside a record"
    return records


def wandb_history(folder: Path) -> dict[int, dict[str, Any]]:
    """The logged rows of every offline W&B run under `folder`, by step, W&B's own `_` keys left
    out."""
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.rglob("run-*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            row = rows.setdefault(record.history.step.num, {})
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    row[key] = json.loads(item.value_json)
    return rows
