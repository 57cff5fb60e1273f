"""SSH hosts: free GPUs are found with nvidia-smi and reserved under a lock, so two submits never
book the same GPU. The test host has no GPU, so `nvidia-smi` here is a stand-in script (put on
the host's PATH through its `env`) reporting two idle GPUs; everything else is the real path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, cli, wait_state, wait_until, write_dispatch

# they submit to the test cluster (SLURM, sshd, JuiceFS) that scripts/testcluster/up.sh starts
pytestmark = pytest.mark.cluster

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=index,uuid*) printf '0, GPU-aaaa\\n1, GPU-bbbb\\n' ;;
  *--query-compute-apps*) ;;
  *) exit 1 ;;
esac
"""


def test_two_submits_never_book_the_same_gpu(shared: Path, home: Path, count_yaml: Path) -> None:
    bin_dir = home.parent / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    dispatch = write_dispatch(
        home.parent / "d.yaml", shared / "output", shared / "work", hosts=["box"]
    )
    data = yaml.safe_load(dispatch.read_text())
    data["hosts"]["box"]["chips"] = {"h100": 2}
    data["hosts"]["box"]["env"]["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    dispatch.write_text(yaml.safe_dump(data))
    args = [
        "-d",
        str(dispatch),
        "--chip",
        "h100",
        "-n",
        "1",
        "--load",
        COUNTJOB,
        "count.steps=1000",
        "count.sleep=0.1",
    ]
    for name in ("gpu-a", "gpu-b"):
        result = cli("submit", name, str(count_yaml), *args)
        assert result.returncode == 0, result.stderr
    third = cli("submit", "gpu-c", str(count_yaml), *args)
    assert third.returncode == 2 and "box is busy" in third.stderr, third.stderr
    seen = []
    for name in ("gpu-a", "gpu-b"):
        wait_until(lambda name=name: "gpus: " in cli("logs", name).stdout, timeout=120)
        seen.append(cli("logs", name).stdout.split("gpus: ")[1].split()[0])
        assert cli("cancel", name).returncode == 0
    assert sorted(seen) == ["0", "1"]
    for name in ("gpu-a", "gpu-b"):
        assert wait_state(name, ("cancelled",), timeout=60) == "cancelled"
    # Both reservations ended with their jobs: a new submit finds a free GPU again.
    result = cli("submit", "gpu-c", str(count_yaml), *args[:-2], "count.steps=1")
    assert result.returncode == 0, result.stderr
    assert wait_state("gpu-c", ("completed", "failed")) == "completed"
