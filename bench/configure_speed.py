"""Wall time of `theseus configure` for every registered job, cold and warm schema cache.

    uv run python bench/configure_speed.py [--repeats N]

Each command runs as a fresh process, as a user types it. Cold: an empty cache folder, so the
job is imported (a trainer imports JAX and Flax) and its schema written to the cache. Warm: the
same command again, served from the cache. `theseus jobs` is timed too. Every time is the median
of --repeats runs, printed in seconds and as a ratio to `python -c pass` timed in the same run,
which other processes sharing the cores disturb less than the seconds. Goal: warm <= 0.5 s.

Python's bytecode cache matters here: with PYTHONDONTWRITEBYTECODE=1 every module is compiled
from source on every run, which alone costs omegaconf's import about 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def median_of(repeats: int, command: list[str], env: dict[str, str]) -> float:
    return statistics.median(seconds(command, env) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per time (median)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from theseus.registry import JOBS

    theseus = [sys.executable, "-m", "theseus.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        nothing = median_of(args.repeats, [sys.executable, "-c", "pass"], env)
        print(
            f"python -c pass: {nothing:.3f} s (PYTHONDONTWRITEBYTECODE={env.get('PYTHONDONTWRITEBYTECODE', '')})"
        )
        listing = median_of(args.repeats, [*theseus, "jobs"], env)
        print(f"theseus jobs: {listing:.3f} s = {listing / nothing:.0f}x pass\n")
        print(f"{'job':34} {'cold s':>7} {'warm s':>7} {'cold/pass':>10} {'warm/pass':>10}")
        for k, job in enumerate(JOBS.names()):
            command = [*theseus, "configure", job, str(Path(tmp) / "out.yaml"), "--force"]
            colds = []
            for repeat in range(args.repeats):
                cold_env = {**env, "XDG_CACHE_HOME": str(Path(tmp) / f"cold-{k}-{repeat}")}
                colds.append(seconds(command, cold_env))
            cold = statistics.median(colds)
            seconds(command, env)  # fills the shared cache
            warm = median_of(args.repeats, command, env)
            print(f"{job:34} {cold:7.3f} {warm:7.3f} {cold / nothing:9.0f}x {warm / nothing:9.0f}x")


if __name__ == "__main__":
    main()
