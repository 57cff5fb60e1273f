"""CI runs the README's own test command, and that command needs nothing placed by hand: every
dependency comes from a package index, none from a file on one machine's disk."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_test_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    rest = text[text.index("Set up and run the tests:") :]
    block = re.search(r"```bash\n(.*?)```", rest, re.S)
    assert block is not None
    return [line.strip() for line in block.group(1).strip().splitlines()]


SHELL_SET_UP = {"set -euo pipefail", 'cd "$(dirname "$0")/.."', "unset PYTHONDONTWRITEBYTECODE"}


def test_ci_runs_the_readme_commands_after_starting_the_test_cluster():
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    *install, test = _readme_test_commands()
    assert test == "uv sync --group all --group cpu --group dev --group hf && uv run pytest"
    # uv, and the chromium the dashboard's browser tests drive
    assert len(install) == 2 and "chromium" in install[1]
    steps = [line for line in lines if line not in SHELL_SET_UP]
    assert steps == [*install, "scripts/testcluster/up.sh", test]


def test_every_dependency_comes_from_a_package_index():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    uv = project.get("tool", {}).get("uv", {})
    assert "find-links" not in uv
    for name, source in uv.get("sources", {}).items():
        assert "path" not in source, f"{name} comes from a local path"
    lock = (ROOT / "uv.lock").read_text()
    sources = set(re.findall(r"source = \{ (\w+) = \"([^\"]+)\"", lock))
    assert sources == {("editable", "."), ("registry", "https://pypi.org/simple")}, sources
