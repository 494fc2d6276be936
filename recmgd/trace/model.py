"""The in-memory (or memory-mapped) trace: int64 keys in order and the sample boundaries."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recmgd.trace.steps import Steps, build_steps


@dataclass
class Trace:
    """A trace: ``keys`` (int64, one per lookup, in order) and ``sample_offsets`` (int64,
    ``n_samples + 1`` boundaries into ``keys``). Either may be a read-only memory map."""

    keys: np.ndarray
    sample_offsets: np.ndarray
    path: str = ""

    @property
    def n_lookups(self) -> int:
        return int(self.keys.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.sample_offsets.shape[0]) - 1

    def n_steps(self, batch: int) -> int:
        """Steps of ``batch`` samples (the last one may be short)."""
        return -(-self.n_samples // batch)

    def steps(self, batch: int) -> Steps:
        """All steps of ``batch`` consecutive samples, deduplicated (first-appearance order)."""
        return build_steps(self.keys, self.sample_offsets, batch)

    def iter_steps(self, batch: int, chunk_steps: int = 65536) -> Iterator[tuple[int, Steps]]:
        """Stream the steps in chunks: yields (index of the chunk's first step, Steps)."""
        n = self.n_steps(batch)
        for first in range(0, n, chunk_steps):
            last = min(first + chunk_steps, n)
            s0, s1 = first * batch, min(last * batch, self.n_samples)
            offs = np.asarray(self.sample_offsets[s0:s1 + 1], dtype=np.int64)
            yield first, build_steps(self.keys, offs, batch)

    def iter_chunks(self, chunk_lookups: int = 1 << 22) -> Iterator[np.ndarray]:
        """Stream the keys in chunks of at most ``chunk_lookups``."""
        for lo in range(0, self.n_lookups, chunk_lookups):
            yield np.asarray(self.keys[lo:lo + chunk_lookups])


def offsets_from_samples(samples: np.ndarray) -> np.ndarray:
    """Sample boundaries from a per-lookup sample column: a new sample wherever the value changes."""
    samples = np.asarray(samples)
    n = samples.shape[0]
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero(samples[1:] != samples[:-1]) + 1
    return np.concatenate(([0], starts, [n])).astype(np.int64)
