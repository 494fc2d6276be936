"""Spatial hash sampling of rows (SHARDS, FAST'15): a fixed hash-chosen subset of the rows, with the
cache capacity scaled alike, behaves like the whole; the learned policy's guard and `recmg train
--sample` use it."""

from __future__ import annotations

import numpy as np

#: Fibonacci hashing: 2^64 / the golden ratio, odd
GOLDEN = 0x9E3779B97F4A7C15
#: hash bits compared against the rate
_BITS = 24


def sampled(keys: np.ndarray, rate: float) -> np.ndarray:
    """Mask of the keys in the sample of ``rate`` (0 < rate <= 1): the same keys at every call."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sample rate must be in (0, 1], got {rate}")
    if rate >= 1.0:
        return np.ones(len(keys), bool)
    h = (np.asarray(keys, np.int64).astype(np.uint64) * np.uint64(GOLDEN)) >> np.uint64(64 - _BITS)
    return h < np.uint64(int(rate * (1 << _BITS)))
