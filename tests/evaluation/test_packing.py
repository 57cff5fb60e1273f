"""How evaluation lays requests out in packed rows: a question's answers as branches of one
segment after their shared context, segments packed into as few rows as fit, calls even."""

from __future__ import annotations

import numpy as np

from theseus.evaluation.packing import arrays, batches, pack, row_width, segments


def test_answers_of_one_context_branch_off_it_and_lone_requests_are_rows_of_their_own():
    context = [1, 2, 3]
    pairs = [(context, [7, 8]), ([9], [4]), (context, [5]), (list(range(20)), [6])]
    tree, lone, cut = segments(pairs, window=8)
    assert tree.tokens == [1, 2, 3, 7, 3]  # the last context token feeds each answer
    assert tree.positions == [0, 1, 2, 3, 2]
    assert tree.branches == [0, 0, 1, 1, 2]
    assert tree.targets[2:] == [7, 8, 5]
    assert tree.scored == [(0, 2, 2), (2, 4, 1)]
    assert (lone.tokens, lone.targets, lone.scored) == ([9], [4], [(1, 0, 1)])
    # longer than the window: cut from the left, as the harness's own backend does
    assert cut.tokens == list(range(12, 20)) and cut.targets[-1] == 6
    assert cut.scored == [(3, 7, 1)]


def test_a_tree_wider_than_the_window_is_scored_one_request_a_row():
    pairs = [([1] * 6, [2] * 3), ([1] * 6, [3] * 3)]
    parts = segments(pairs, window=10)
    assert [len(p.scored) for p in parts] == [1, 1]


def test_rows_hold_every_segment_once_within_their_width():
    rng = np.random.default_rng(0)
    pairs = [
        (rng.integers(0, 9, rng.integers(1, 90)).tolist(), rng.integers(0, 9, 5).tolist())
        for _ in range(200)
    ]
    parts = segments(pairs, window=128)
    rows = pack(parts, 128)
    assert sorted(id(p) for row in rows for p in row) == sorted(id(p) for p in parts)
    assert all(sum(len(p.tokens) for p in row) <= 128 for row in rows)
    filled = sum(len(p.tokens) for p in parts) / (len(rows) * 128)
    assert filled > 0.9, filled
    given = arrays(rows[:3], 4, 128)
    assert given["segments"][3].tolist() == [-1] * 128  # a padding row
    first = rows[0][0]
    assert given["tokens"][0, : len(first.tokens)].tolist() == first.tokens


def test_calls_are_even_and_the_width_pays_for_itself():
    assert batches(33, 32, 2) == (2, 18)  # not 32 rows and then 1
    assert batches(32, 32, 2) == (1, 32)
    # 64 segments of 70 tokens: one a row at 128 (64 rows), two at 192 (32), three at 256 (22)
    parts = segments([([i] * 40, [1] * 31) for i in range(64)], window=512)
    assert row_width(parts, lambda width: 32, 1, attention_scale=1e9) == 256  # fewest slots
    # when attending to half the row costs as much as the rest, 192 pays best
    assert row_width(parts, lambda width: 32, 1, attention_scale=64) == 192
