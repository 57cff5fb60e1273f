"""Scoring requests laid out as segments packed into rows of one width.

A request (context, continuation) is a segment of its own; the answers of a multiple-choice
question share one segment, a tree: the context once, then each answer after it, each seeing
the context and itself but no other answer. Segments are packed into rows (a row holds as many
as fit), so a batch computes about the tokens the requests have, and one width serves a whole
evaluation: it compiles once.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np

ROWS_OF = 64  # row widths are multiples of this: few widths, few compiled programs


@dataclass
class Segment:
    """Tokens fed at their positions; branch 0 is seen by the whole segment, branch k > 0 only
    by itself. `targets` holds the token each slot predicts; `scored` lists (request, first
    slot, count): the request's log-probability sums those slots."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    branches: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    scored: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, tokens: Sequence[int], start: int, branch: int, targets: Sequence[int]) -> int:
        """Append `tokens` at positions from `start`; returns the slot of the first."""
        slot = len(self.tokens)
        self.tokens += tokens
        self.positions += range(start, start + len(tokens))
        self.branches += [branch] * len(tokens)
        self.targets += targets
        return slot


def segments(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], window: int) -> list[Segment]:
    """The segments that score each (context, continuation) in a model of `window` positions: a
    context with several continuations that fit it whole is one tree; any other request is one
    row of its own, its context cut from the left to fit."""
    shared: dict[tuple[int, ...], list[int]] = {}
    for i, (context, continuation) in enumerate(pairs):
        if context and len(context) + len(continuation) <= window + 1:
            shared.setdefault(tuple(context), []).append(i)
    out, alone = [], set(range(len(pairs)))
    for context, members in shared.items():
        size = len(context) - 1 + sum(len(pairs[i][1]) for i in members)
        if len(members) < 2 or size > window:
            continue
        tree = Segment()
        tree.add(context[:-1], 0, 0, context[1:])
        for branch, i in enumerate(members, start=1):
            continuation = list(pairs[i][1])
            inputs = [context[-1], *continuation[:-1]]
            slot = tree.add(inputs, len(context) - 1, branch, continuation)
            tree.scored.append((i, slot, len(continuation)))
            alone.discard(i)
        out.append(tree)
    for i in sorted(alone):
        context, continuation = pairs[i]
        row = (list(context) + list(continuation))[-(window + 1) :]
        single = Segment()
        slot = single.add(row[:-1], 0, 0, row[1:])
        n = len(continuation)
        single.scored.append((i, slot + len(row) - 1 - n, n))
        out.append(single)
    return out


def pack(parts: list[Segment], width: int) -> list[list[Segment]]:
    """The segments in rows of at most `width` tokens, longest first, each into the fullest row
    it fits (best fit decreasing: within a few percent of the fewest rows)."""
    rows: list[list[Segment]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for part in sorted(parts, key=lambda p: -len(p.tokens)):
        at = bisect.bisect_left(free, (len(part.tokens), -1))
        if at == len(free):
            rows.append([part])
            room, row = width, len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(part)
        if room - len(part.tokens) > 0:
            bisect.insort(free, (room - len(part.tokens), row))
    return rows


def row_width(
    parts: list[Segment], rows: Callable[[int], int], shards: int, attention_scale: float
) -> int:
    """The width to pack rows to: of the widths from the longest segment's to twice it, the one
    whose batches (at most `rows(width)` rows a call) cost least. Wider rows fill better (large
    segments pair up) but a token's attention grows with its row: the keys before it, about
    half the row on average, add width / (2 * attention_scale) to its cost."""
    longest = -(-max(len(p.tokens) for p in parts) // ROWS_OF) * ROWS_OF
    best: tuple[float, int] | None = None
    for width in range(longest, max(2 * longest, 2 * ROWS_OF) + 1, ROWS_OF):
        calls, each = batches(len(pack(parts, width)), rows(width), shards)
        cost = calls * each * width * (1 + width / (2 * attention_scale))
        if best is None or cost < best[0]:
            best = (cost, width)
    assert best is not None
    return best[1]


def batches(needed: int, rows: int, shards: int) -> tuple[int, int]:
    """(calls, rows per call) for `needed` rows, at most `rows` a call: the calls as even as a
    multiple of `shards` rows allows, rather than full ones and a last one mostly padding."""
    calls = -(-needed // rows)
    return calls, -(-needed // (calls * shards)) * shards


def arrays(rows: list[list[Segment]], n_rows: int, width: int) -> dict[str, np.ndarray]:
    """A batch of packed rows as [n_rows, width] arrays: tokens, positions, targets, each
    token's segment in its row (-1 for padding) and branch."""
    out = {
        name: np.zeros((n_rows, width), np.int32)
        for name in ("tokens", "positions", "targets", "branches")
    }
    out["segments"] = np.full((n_rows, width), -1, np.int32)
    for r, row in enumerate(rows):
        at = 0
        for s, part in enumerate(row):
            end = at + len(part.tokens)
            out["tokens"][r, at:end] = part.tokens
            out["positions"][r, at:end] = part.positions
            out["targets"][r, at:end] = part.targets
            out["branches"][r, at:end] = part.branches
            out["segments"][r, at:end] = s
            at = end
    return out


def visible(segments: jax.Array, branches: jax.Array) -> jax.Array:
    """[B, T, T]: token t may see token s (the model adds s <= t) when both are of one segment
    and s is of the segment's shared branch or of t's own."""
    same = segments[:, :, None] == segments[:, None, :]
    own = branches[:, :, None] == branches[:, None, :]
    return same & ((branches[:, None, :] == 0) | own)
