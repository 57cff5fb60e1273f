"""Shared set-up for the dispatch tests: the real test cluster (SLURM + sshd + JuiceFS on this
machine, started by scripts/testcluster/up.sh) and helpers to drive `theseus` as a user would."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from theseus.cli import main
from theseus.dispatch import records
from theseus.dispatch.control import ACTIVE

REPO = Path(__file__).resolve().parents[2]
COUNTJOB = "tests/dispatch/countjob.py"
# Variables the job environment needs to reach package indexes from the test host (proxies,
# certificate bundles); copied into the hosts' `env`, as a user would.
PASS_THROUGH = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
)


@pytest.fixture(scope="session")
def lab() -> dict[str, str]:
    """Bring the test cluster up (idempotent, about a second when it is up) and read its env."""
    subprocess.run(
        [str(REPO / "scripts/testcluster/up.sh")], check=True, capture_output=True, timeout=600
    )
    folder = os.environ.get("LAB", "/tmp/theseus-testcluster")
    env = {}
    for line in Path(folder, "env.sh").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    env["META_PASSWORD"] = Path(folder, "redis", "password").read_text().strip()
    return env


@pytest.fixture(scope="session")
def nodes() -> dict[str, str]:
    """The two-node SLURM cluster (scripts/testcluster/nodes-up.sh, which up.sh starts too; a
    fraction of a second when it is up): each node its own network namespace, address and
    hostname. Returns its env.sh (SLURM_CONF, THESEUS_TESTCLUSTER_NODES)."""
    started = subprocess.run(
        [str(REPO / "scripts/testcluster/nodes-up.sh")], capture_output=True, text=True, timeout=600
    )
    assert started.returncode == 0, f"nodes-up.sh failed: {started.stderr[-3000:]}"
    folder = os.environ.get("NODES_LAB", "/tmp/theseus-testcluster-nodes")
    env = {}
    for line in Path(folder, "env.sh").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


# Every dispatch test works under folders whose names try to break out of shell quoting.
HOSTILE = "we ird $(touch PWNED) 'q' \"dq\" `touch PWNED2` ;&|"


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folder with a hostile name; its work/ keeps the job environments between tests."""
    return tmp_path_factory.mktemp("dispatch") / HOSTILE


@pytest.fixture(scope="session")
def count_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config of the test-only count job (see countjob.py)."""
    path = tmp_path_factory.mktemp("cfg") / "count.yaml"
    result = theseus("configure", "test/dispatch/count", str(path), "--load", COUNTJOB)
    assert result.returncode == 0, result.stderr
    return path


class ArgvWatch:
    """Reads every process's command line (/proc/*/cmdline) in the background, looking for `needle`."""

    def __init__(self, needle: bytes) -> None:
        self.needle, self.hits, self.scans = needle, set(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        if self.needle in (entry / "cmdline").read_bytes():
                            self.hits.add(entry.name)
                    except OSError:
                        continue
            self.scans += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def home(tmp_path: Path, lab: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private THESEUS_HOME (run records) and the test cluster's ssh and SLURM settings; runs a
    failed test left going are cancelled at the end."""
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("THESEUS_SSH_CONFIG", lab["THESEUS_TESTCLUSTER_SSH_CONFIG"])
    monkeypatch.setenv("SLURM_CONF", lab["SLURM_CONF"])
    monkeypatch.chdir(REPO)
    yield tmp_path / "home"
    for record in records.all_records():
        if state_of(record.name) in ACTIVE:
            cli("cancel", record.name)


def host_env() -> dict[str, str]:
    return {k: os.environ[k] for k in PASS_THROUGH if os.environ.get(k)}


def write_dispatch(
    path: Path, root: Path, work: Path, *, hosts: list[str], cluster_extra: dict | None = None
) -> Path:
    """A dispatch file with one cluster `lab` and the chosen hosts of the test cluster."""
    available = {
        "box": {
            "type": "ssh",
            "ssh": "testcluster",
            "cluster": "lab",
            "chips": {"cpu": 2},
            "env": host_env(),
        },
        "lab-slurm": {
            "type": "slurm",
            "ssh": "testcluster",
            "cluster": "lab",
            "chips": {"cpu": 2},
            "time": "00:20:00",
            "env": host_env(),
        },
    }
    data = {
        "clusters": {
            "lab": {"root": str(root), "work": str(work), **(cluster_extra or {})},
            "local": {"root": str(root), "work": str(work / "local"), **(cluster_extra or {})},
        },
        "hosts": {name: available[name] for name in hosts},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def theseus(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `theseus` entry point as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "theseus.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`theseus ARGS` in this process (cheaper than a subprocess), with its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def state_of(name: str) -> str:
    result = cli("status", "--json", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def wait_until(condition: Callable[[], bool], timeout: float = 240, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(every)


def wait_state(name: str, states: tuple[str, ...], timeout: float = 240) -> str:
    seen: list[str] = []

    def reached() -> bool:
        seen.append(state_of(name))
        return seen[-1] in states

    try:
        wait_until(reached, timeout)
    except TimeoutError:
        raise AssertionError(f"{name} never reached {states}; last state {seen[-1:]}") from None
    return seen[-1]
