"""A single-process CPU run splits the host into one JAX device per core (as many as divide the
batch); parallel.cpu_devices fixes the count. Runs are subprocesses: the split must happen before
JAX starts, which in the pytest process has happened already."""

from __future__ import annotations

import os
import re

from tests.training.conftest import cli_args, spawn


def _devices_used(root, train_yaml, name, *overrides) -> int:
    env = {"XLA_FLAGS": ""}
    proc = spawn(cli_args(name, train_yaml, root, "training.steps=2", *overrides), env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return int(re.search(r"on (\d+) cpu device\(s\)", out).group(1))


def test_one_device_per_core_dividing_the_batch(root, train_yaml):
    cores = len(os.sched_getaffinity(0))
    assert cores >= 2, "this test needs a machine with at least two cores"
    expected = max(n for n in range(1, cores + 1) if 8 % n == 0)  # TINY's batch is 8
    assert _devices_used(root, train_yaml, "cores") == expected
    assert _devices_used(root, train_yaml, "pinned", "parallel.cpu_devices=1") == 1
