"""Turn a trace into DLRM inference batches: per table, the ids and offsets of B consecutive samples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from recmgd.keys import key_row, key_table
from recmgd.trace import Trace


@dataclass
class Batch:
    """One inference batch: per table, int64 ids and the offset of each sample's bag."""

    index: int
    samples: int
    ids: list[torch.Tensor]
    offsets: list[torch.Tensor]


def table_sizes(trace: Trace) -> list[int]:
    """Rows of each table: the largest row id seen in the trace, plus one."""
    keys = np.asarray(trace.keys)
    tables = key_table(keys)
    n = int(tables.max()) + 1 if keys.size else 0
    rows = np.zeros(n, dtype=np.int64)
    np.maximum.at(rows, tables, key_row(keys) + 1)
    return [max(int(r), 1) for r in rows]


def iter_batches(trace: Trace, n_tables: int, batch: int, start: int = 0,
                 stop: int | None = None) -> Iterator[Batch]:
    """Batches ``start`` .. ``stop`` (exclusive) of ``batch`` samples each."""
    offs = np.asarray(trace.sample_offsets, dtype=np.int64)
    n_batches = trace.n_steps(batch)
    stop = n_batches if stop is None else min(stop, n_batches)
    for b in range(start, stop):
        s0, s1 = b * batch, min((b + 1) * batch, trace.n_samples)
        lo, hi = int(offs[s0]), int(offs[s1])
        keys = np.asarray(trace.keys[lo:hi])
        sample = np.repeat(np.arange(s1 - s0), np.diff(offs[s0:s1 + 1]))
        tables = key_table(keys)
        rows = key_row(keys)
        ids, offsets = [], []
        for t in range(n_tables):
            mask = tables == t
            counts = np.bincount(sample[mask], minlength=s1 - s0)
            ids.append(torch.from_numpy(np.ascontiguousarray(rows[mask])))
            offsets.append(torch.from_numpy(np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)))
        yield Batch(b, s1 - s0, ids, offsets)
