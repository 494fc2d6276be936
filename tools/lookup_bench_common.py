"""What the pool benchmarks share: which ids they look up, which rows the mixed workload evicts, and
how calls are timed.

bench_pool, bench_hugepages, bench_miss_cost and bench_ab_lookup evict the same rows (one fixed seed),
so their mixed numbers are over the same rows and comparable; the first three time their kernels with
steady_medians. No torch here: bench_ab_lookup loads two native builds and stays free of it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

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


class IdDraw:
    """The ids a benchmark looks up: uniform over a table's rows (zipf 0, the issue's workload), or
    Zipf-distributed with exponent ZIPF over a fixed random permutation of each table's rows (hot rows
    scattered through the table, as hashed production ids are; the same permutation in every tool)."""

    def __init__(self, tables: int, rows: int, zipf: float, seed: int = 0) -> None:
        self.rows, self.zipf = rows, zipf
        self.rng = np.random.default_rng(seed)
        if zipf > 0:
            p = np.arange(1, rows + 1, dtype=np.float64) ** -zipf
            self.cdf = np.cumsum(p) / p.sum()
            perm_rng = np.random.default_rng(EVICT_SEED + 1)
            self.perm = [perm_rng.permutation(rows) for _ in range(tables)]

    def ids(self, table: int, n: int) -> np.ndarray:
        """N ids of TABLE (int64)."""
        if self.zipf <= 0:
            return self.rng.integers(0, self.rows, n).astype(np.int64)
        rank = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), self.rows - 1)
        return self.perm[table][rank].astype(np.int64)

    def hottest(self, table: int, share: float) -> np.ndarray:
        """The fewest rows of TABLE that take SHARE of its lookups (all rows for uniform ids)."""
        if self.zipf <= 0:
            return np.arange(self.rows, dtype=np.int64)
        k = min(int(np.searchsorted(self.cdf, share)) + 1, self.rows)
        return self.perm[table][:k].astype(np.int64)

    def evicted_keys(self, tables: int, fraction: float) -> np.ndarray:
        """The keys the mixed workload evicts: for uniform ids the same FRACTION of every table's rows as
        evicted_keys; for Zipf ids every row but the fewest that take 1 - FRACTION of the lookups."""
        if self.zipf <= 0:
            return evicted_keys(tables, self.rows, fraction)
        every = np.arange(self.rows, dtype=np.int64)
        return np.concatenate(
            [make_keys(t, np.setdiff1d(every, self.hottest(t, 1 - fraction))) for t in range(tables)]
        )


def zipf_exponent(text: str) -> float:
    """argparse type of --zipf: 0 (uniform ids) or a positive exponent."""
    try:
        z = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= z <= 4:
        raise argparse.ArgumentTypeError(f"must be in [0, 4], got {text}")
    return z


def steady_medians(
    fns: dict[str, Callable[[int], object]], nbatches: int, reps: int, after: Callable[[str], None]
) -> dict[str, float]:
    """Median seconds per call of each function over runs of batches 0 .. NBATCHES - 1 back to back,
    each run after one untimed call (of its last batch): the steady state of a server that makes the
    same call every batch, not the first call after another kernel's, which runs markedly slower for
    torch and the pool alike (its pages' walks and lines are cold). The functions' runs are interleaved
    REPS times, so that load from other processes hits all alike; after(key) runs untimed after every
    call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            fn(nbatches - 1)
            after(key)
            for b in range(nbatches):
                t0 = time.perf_counter()
                fn(b)
                times[key].append(time.perf_counter() - t0)
                after(key)
    return {k: statistics.median(v) for k, v in times.items()}
