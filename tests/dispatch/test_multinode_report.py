"""What the start report and `theseus doctor` say about a job's world, without a cluster: a run
resumed on other processes or devices, and accelerators an allocation gives but no process uses.
(The two-node runs that produce these lines are in test_multinode.py.)"""

from __future__ import annotations

import pytest

from tests.dispatch.conftest import theseus
from theseus.dispatch.control import RankLines
from theseus.parallel.doctor import unused_lines
from theseus.training.state import world_change

TWO = {"processes": 2, "devices": 2, "platform": "cpu"}


def test_a_resume_on_another_world_says_what_changed() -> None:
    one = {"processes": 1, "devices": 2, "platform": "cpu"}
    assert world_change(TWO, one) == (
        "note: the world changed since that checkpoint: written by 2 process(es), 2 cpu "
        "device(s), resumed on 1 process(es), 2 cpu device(s); the same batches follow, split "
        "anew (losses equal up to float rounding)"
    )
    assert world_change(TWO, dict(TWO)) == ""
    assert world_change(None, one) == ""  # a checkpoint written before the world was recorded


def test_accelerators_allocated_but_unused_are_warned_about() -> None:
    # node1: one process sees all 8; node4: one process per GPU, 8 in all
    seen = [("node1", 8, 8), ("node2", 8, 1), ("node3", None, 1), *[("node4", 8, 1)] * 8]
    assert unused_lines("gpu", seen) == [
        "warning: node2 was allocated 8 GPUs but its process(es) use 1: the rest stay idle (run "
        "one process per node that sees all of them, or one per accelerator)"
    ]
    assert unused_lines("cpu", [("vm", 4, 1)]) == []


def test_one_ranks_lines_are_picked_across_chunk_boundaries() -> None:
    got: list[bytes] = []
    picked = RankLines(1, got.append)
    for chunk in (b"theseus: starting\n0: a\n1: b", b"c\n1", b"0: not rank 10\n10: x\n1: last"):
        picked(chunk)
    picked.close()
    assert b"".join(got) == b"bc\nlast\n"


@pytest.mark.slow  # it starts JAX in a subprocess
def test_doctor_here_exits_1_with_one_line_per_problem(tmp_path) -> None:
    fine = theseus("doctor", str(tmp_path / "out"), "--all-reduce-mb", "1")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert fine.stdout.startswith("process 0/1 on "), fine.stdout
    assert "coordinator none (one process); all-reduce 1 MiB in " in fine.stdout, fine.stdout
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    bad = theseus("doctor", str(blocked / "out"), "--all-reduce-mb", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    problems = [line for line in bad.stdout.splitlines() if line.startswith("problem: ")]
    assert (
        len(problems) == 1 and f"the output root {blocked / 'out'} is not writable" in problems[0]
    )
