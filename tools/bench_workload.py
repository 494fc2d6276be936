"""The mixed workload of the pool benchmarks, in one place: which rows leave the fast tier.

bench_pool, bench_hugepages and bench_ab_lookup evict the same rows (one fixed seed), so their mixed
numbers are over the same rows and comparable. No torch here: bench_ab_lookup loads two native builds
and stays free of it.
"""

from __future__ import annotations

import argparse

import numpy as np

from recmgd.keys import make_keys

EVICT_SEED = 2


def miss_fraction(text: str) -> float:
    """argparse type of --miss: the fraction of each table's rows evicted for the mixed workload."""
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= f < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return f


def evicted_rows(rows: int, fraction: float) -> np.ndarray:
    """The rows of a table that the mixed workload evicts: a random FRACTION of them, the same in every
    table and every tool."""
    return np.random.default_rng(EVICT_SEED).choice(rows, size=int(rows * fraction), replace=False)


def evicted_keys(tables: int, rows: int, fraction: float) -> np.ndarray:
    """evicted_rows of every table, as pool keys."""
    gone = evicted_rows(rows, fraction)
    return np.concatenate([make_keys(t, gone) for t in range(tables)])
