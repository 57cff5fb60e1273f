"""Suite-wide set-up."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import jax
import pytest

# Runs inside the pytest process share one JAX backend, created by whichever test starts it
# first. One CPU device keeps their results independent of test order; runs in subprocesses
# still get the trainer's automatic one-device-per-core split (tests/training/test_cpu_devices.py).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", 1)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the test cluster or starts several JAX processes is slow too, so that
    the fast loop, `pytest -m "not slow"`, leaves it out without a longer expression."""
    for item in items:
        if item.get_closest_marker("cluster") or item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.slow)


SLOW_MARKS = {"slow", "cluster", "multiprocess"}


def _module_marks(path: Path) -> set[str]:
    """The names X of `pytest.mark.X` in a test file's module-level `pytestmark`, read without
    importing the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            for sub in ast.walk(node.value):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Attribute)
                    and sub.value.attr == "mark"
                ):
                    names.add(sub.attr)
    return names


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast loop does not even import a module whose every test is slow: importing torch
    and transformers for tests it deselects would cost it several seconds."""
    if (config.option.markexpr or "").strip() != "not slow":
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if _module_marks(collection_path) & SLOW_MARKS else None
