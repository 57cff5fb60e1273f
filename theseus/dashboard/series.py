"""A run's `metrics.jsonl` as columns: read once, then only what was appended, and downsampled
on the server so that a chart of a 100k-line run stays a few thousand points.

Reading goes through a `Source` (a local file, or a file on a remote host reached through its
dispatch shell); the parsed lines stay in memory, so each poll costs one stat and the new bytes.
A file that was replaced (a resumed run rewrites its tail through a new file) or shrank is read
again from the start.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Points per series a chart gets at most: min and max of each of POINTS / 2 buckets, which keeps
# the spikes a plain stride would skip.
POINTS = 2000


class Source(Protocol):
    """Where a metrics file's bytes come from."""

    def read_from(self, identity: str | None, offset: int) -> tuple[str | None, bytes, bool]:
        """(identity of the file now, its bytes from `offset` on, whether the file is not the one
        `identity` names any more, in which case the bytes are the whole file). Identity None:
        no such file."""
        ...


@dataclass
class LocalSource:
    path: Path

    def read_from(self, identity: str | None, offset: int) -> tuple[str | None, bytes, bool]:
        try:
            with self.path.open("rb") as f:
                stat = os.fstat(f.fileno())
                now = f"{stat.st_dev}:{stat.st_ino}"
                replaced = now != identity or stat.st_size < offset
                if not replaced and stat.st_size == offset:
                    return now, b"", False
                f.seek(0 if replaced else offset)
                return now, f.read(), replaced
        except FileNotFoundError:
            return None, b"", identity is not None


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """The metric records in complete lines; lines that are not one (a note, a torn line) are
    skipped. The lines are parsed as one JSON array first: one call instead of one per line."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    if not lines:
        return []
    try:
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
    return [r for r in parsed if isinstance(r, dict) and _is_number(r.get("step"))]


@dataclass
class MetricsFile:
    """The columns of one metrics file, kept up to date by `refresh()`; thread-safe."""

    source: Source
    lines: int = 0  # metric lines read (the lines themselves are not kept: a 100k-line run
    # would hold ~100 MB of dicts)
    # name -> (steps, values) chunks, appended to as lines come: a chart then only runs numpy
    columns: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    identity: str | None = None
    offset: int = 0
    version: int = 0  # changes whenever `records` does
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _charts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    def refresh(self) -> None:
        with self._lock:
            identity, data, replaced = self.source.read_from(self.identity, self.offset)
            if replaced:
                self.lines, self.columns, self.offset = 0, {}, 0
                self.version += 1
            self.identity = identity
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
            if end:
                new = parse_lines(data[:end])
                self.lines += len(new)
                add_columns(self.columns, new)
                self.offset += end
                self.version += 1
            if replaced or end:
                self._charts.clear()

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, values) of one key, in order of step; None when no line has it."""
        with self._lock:
            chunks = self.columns.get(name)
            if not chunks:
                return None
            steps = np.concatenate([s for s, _ in chunks])
            values = np.concatenate([v for _, v in chunks])
        order = np.argsort(steps, kind="stable")
        return steps[order], values[order]

    def chart(self, x: str = "step", points: int = POINTS) -> dict[str, Any]:
        """Every numeric series of the run against `x` ("step" or "tokens"), each downsampled to
        at most `points`: {"x", "version", "lines", "series": {key: [[x...], [y...]]},
        "counts": {key: points before downsampling}}."""
        self.refresh()
        with self._lock:
            key = (x, points)
            if key not in self._charts:
                self._charts[key] = build_chart(self.columns, x, points)
                self._charts[key]["lines"] = self.lines
                self._charts[key]["version"] = f"{self.identity}:{self.version}"
            return self._charts[key]


def add_columns(columns: dict[str, list[tuple[np.ndarray, np.ndarray]]], records: list) -> None:
    """Append each numeric value of `records` to its column (a list of (steps, values) chunks).
    Lines with the same keys become one numpy table at once, which is several times faster
    than a loop over values; text ("nan") and null are NaN, a gap."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        shapes.setdefault(tuple(record), []).append(record)
    for names, group in shapes.items():
        try:
            table = np.array([tuple(r.values()) for r in group], dtype=float)
        except (TypeError, ValueError):  # a value that is no number (a list, a word)
            table = np.array([[_value(v) for v in r.values()] for r in group], dtype=float)
        steps = table[:, names.index("step")]
        for i, name in enumerate(names):
            if name != "step" and not np.isnan(table[:, i]).all():
                columns.setdefault(name, []).append((steps, table[:, i]))


def build_chart(
    columns: dict[str, list[tuple[np.ndarray, np.ndarray]]], x: str, points: int
) -> dict[str, Any]:
    """The series of `columns` (see `MetricsFile.chart`). A validation or evaluation line carries
    no token count: its tokens are read off the training lines around its step."""
    joined = {
        name: (np.concatenate([s for s, _ in chunks]), np.concatenate([v for _, v in chunks]))
        for name, chunks in columns.items()
    }
    tokens = joined.get("tokens")
    series: dict[str, list[list[float | None]]] = {}
    counts: dict[str, int] = {}
    for name, (steps, values) in joined.items():
        if x == "tokens":
            if tokens is None:
                continue
            steps = np.interp(steps, tokens[0], tokens[1])
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        keep = downsample(values, points)
        counts[name] = len(values)
        series[name] = [steps[keep].tolist(), _nulls(values[keep])]
    return {"x": x, "series": series, "counts": counts}


def downsample(values: np.ndarray, points: int) -> np.ndarray:
    """Indices of at most `points` values that draw the same line: the first, the last, and the
    lowest and highest of each bucket between them, in order. NaN (a gap) is never a bucket's
    extreme unless its bucket holds nothing else."""
    n = len(values)
    if n <= points:
        return np.arange(n)
    buckets = max(1, (points - 2) // 2)
    size = math.ceil(n / buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = values
    rows = padded.reshape(buckets, size)
    low = np.where(np.isnan(rows), np.inf, rows).argmin(axis=1)
    high = np.where(np.isnan(rows), -np.inf, rows).argmax(axis=1)
    start = np.arange(buckets) * size
    chosen = np.concatenate([[0, n - 1], start + low, start + high])
    return np.unique(chosen[chosen < n])


def _value(value: Any) -> float | None:
    """A number of a metrics line; "nan"/"inf" (how non-finite values are written) are NaN, a
    gap in the chart; anything else (text, lists) is no point."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else math.nan
    if value in ("nan", "inf", "-inf"):
        return math.nan
    return None


def _nulls(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: a gap is null (which the charts draw as a gap)."""
    out: list[float | None] = values.tolist()
    if np.isnan(values).any():
        out = [None if v != v else v for v in out]
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
