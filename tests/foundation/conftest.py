import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TOYJOBS = str(HERE / "toyjobs.py")


def theseus(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real `theseus` entry point as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "theseus.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def toy() -> str:
    """Import the toy jobs in this process (for in-process tests)."""
    from theseus.registry import JOBS, load

    if "toy/echo" not in JOBS:
        load(TOYJOBS)
    return TOYJOBS
