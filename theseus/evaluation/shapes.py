"""The few static shapes evaluation batches run at, and keeping what they compile: a model
compiles once per padded length (a rung of a short ladder), not once per request."""

from __future__ import annotations

from theseus.parallel.distributed import use_compilation_cache


def keep_compiled(folder: str = "~/.cache/theseus/xla", min_seconds: float = 0.2) -> None:
    """Keep the programs this process compiles in JAX's persistent cache (the folder training
    keeps its in), quick ones too: the next evaluation of the same model and shapes loads them
    instead of compiling. A cache configured already (JAX_COMPILATION_CACHE_DIR) is kept."""
    use_compilation_cache(folder, min_seconds)


def ladder(cap: int) -> list[int]:
    """Padded lengths up to `cap`: 16, 24, 32, 48, 64, 96, 128, 192, ... (each at most 1.5x the
    one below, so a row pads by under half), and `cap` itself."""
    rungs, n = [], 16
    while n < cap:
        rungs.append(n)
        n = n * 3 // 2 if (n & (n - 1)) == 0 else (n * 4) // 3
    return [*rungs, cap]


def rung(length: int, cap: int) -> int:
    """The padded length a row of `length` tokens runs at."""
    if length > cap:
        raise ValueError(f"a row of {length} tokens is longer than the window of {cap}")
    return next(r for r in ladder(cap) if r >= length)


def widths(needed: list[int], compiled: set[int], few: int = 2) -> list[int]:
    """The padded length each batch runs at, given the rung each needs: a rung that at most
    `few` batches would use runs at the nearest wider one already compiled (padding a batch or
    two costs less than compiling a program); `compiled` gains the rungs that get compiled."""
    counts = {r: needed.count(r) for r in set(needed)}
    chosen = []
    for r in needed:
        wider = [w for w in compiled if w > r]
        if r not in compiled and counts[r] <= few and wider:
            r = min(wider)
        compiled.add(r)
        chosen.append(r)
    return chosen
