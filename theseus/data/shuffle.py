"""A seeded permutation of 0..n-1 evaluated at any index in O(1): a Feistel network with cycle walking.

Used instead of materialising `np.random.permutation(n)`, so a store of billions of windows
costs no memory and any step's windows are found directly.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def round_keys(seed: int, *path: int) -> np.ndarray:
    """Independent 64-bit round keys for (seed, *path), e.g. (seed, store, epoch)."""
    return np.random.SeedSequence([seed, *path]).generate_state(ROUNDS, dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finalizer (splitmix64): every output bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << shift) | right


def permute(index: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """The images of `index` (values in 0..n-1) under the permutation of 0..n-1 that `keys` picks."""
    index = np.asarray(index, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(index)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)  # domain 4**half: under 4n, so few walks
    with np.errstate(over="ignore"):
        out = _feistel(index.astype(np.uint64), half, keys)
        outside = out >= np.uint64(n)
        while outside.any():
            out[outside] = _feistel(out[outside], half, keys)
            outside = out >= np.uint64(n)
    return out.astype(np.int64)
