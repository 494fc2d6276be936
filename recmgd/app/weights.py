"""The server's embedding weights from a seed (torch-free: the benchmark harness writes them into pools
without importing torch, and the all-DRAM model builds the same rows)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from recmgd.pool import Pool

_CHUNK = 65536  # rows of weights generated at once


def table_weights(sizes: Sequence[int], dim: int, seed: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Every table's rows as (table, first row, rows x dim float32), in chunks; the same for a seed."""
    for t, rows in enumerate(sizes):
        rng = np.random.default_rng([seed, t])
        for lo in range(0, int(rows), _CHUNK):
            n = min(int(rows), lo + _CHUNK) - lo
            yield t, lo, (rng.standard_normal((n, dim), dtype=np.float32) * 0.1)


def write_weights(pool: Pool, sizes: Sequence[int], dim: int, seed: int) -> None:
    """The seeded weights into a pool's slow tier."""
    for t, lo, w in table_weights(sizes, dim, seed):
        pool.write_rows(t, np.arange(lo, lo + len(w), dtype=np.int64), w)
