"""Trace statistics: lookups, tables, unique rows per table, and the reuse-count histogram in the bins
of Meta's published DLRM locality statistics (``meta_2021_locality_stats.txt``).

Reuse count of a row = how many lookups read it in the whole trace (not deduplicated). The histogram
gives, per bin of counts ``(0, 1], (1, 2], (2, 4], ..., (16384, 32768], 32768+``, the fraction of unique
rows in the bin ("col sizes") and the fraction of all lookups they take ("index distribution").
Counting streams the trace in chunks; memory is linear in unique rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recmgd.keys import key_table
from recmgd.trace.model import Trace

EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
BIN_LABELS = [f"({EDGES[i]}, {EDGES[i + 1]}]" for i in range(len(EDGES) - 1)] + [f"({EDGES[-1]}+"]
N_BINS = len(BIN_LABELS)


def bin_of(counts: np.ndarray) -> np.ndarray:
    """Bin index of every reuse count (>= 1): ceil(log2(count)), at most N_BINS - 1."""
    c = np.asarray(counts, dtype=np.int64)
    idx = np.zeros(c.shape[0], dtype=np.int64)
    big = c > 1
    idx[big] = np.floor(np.log2(c[big] - 1)).astype(np.int64) + 1
    return np.minimum(idx, N_BINS - 1)


def reuse_counts(trace: Trace, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(unique keys, lookups of each), streaming the trace in chunks."""
    uk = np.zeros(0, dtype=np.int64)
    uc = np.zeros(0, dtype=np.int64)
    for keys in trace.iter_chunks(chunk):
        k, c = np.unique(keys, return_counts=True)
        allk = np.concatenate([uk, k])
        allc = np.concatenate([uc, c])
        uk, inv = np.unique(allk, return_inverse=True)
        uc = np.bincount(inv, weights=allc, minlength=uk.shape[0]).astype(np.int64)
    return uk, uc


@dataclass
class TraceStats:
    """What ``recmg trace stats`` reports."""

    path: str
    lookups: int
    samples: int
    unique_rows: int
    tables: int
    unique_per_table: dict[int, int] = field(default_factory=dict)
    row_hist: list[float] = field(default_factory=list)
    lookup_hist: list[float] = field(default_factory=list)

    @property
    def mean_uses(self) -> float:
        return self.lookups / self.unique_rows if self.unique_rows else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "lookups": self.lookups, "samples": self.samples,
                "unique_rows": self.unique_rows, "tables": self.tables, "mean_uses": self.mean_uses,
                "unique_per_table": {str(k): v for k, v in self.unique_per_table.items()},
                "bins": BIN_LABELS, "row_hist": self.row_hist, "lookup_hist": self.lookup_hist}

    def format(self) -> str:
        """Text in the layout of Meta's locality statistics (totals of the whole trace where Meta's script
        averages over its runs), plus per-table unique rows."""
        lines = [self.path, f"lookups: {self.lookups:,}  samples: {self.samples:,}  tables: {self.tables}",
                 f"# of indices: {self.lookups}", f"# of unique cols: {self.unique_rows}",
                 f"Avg col size: {self.mean_uses:.1f}", "Histogram of col sizes:"]
        lines += [f"{b}: {v:.3f}" for b, v in zip(BIN_LABELS, self.row_hist, strict=True)]
        lines.append("Ratio of index distribution at different column sizes:")
        lines += [f"{b}: {v:.3f}" for b, v in zip(BIN_LABELS, self.lookup_hist, strict=True)]
        lines.append("Unique rows per table:")
        lines += [f"  table {t}: {n:,}" for t, n in sorted(self.unique_per_table.items())]
        return "\n".join(lines)


def trace_stats(trace: Trace) -> TraceStats:
    """Compute the statistics of a trace."""
    uk, uc = reuse_counts(trace)
    n = int(uc.sum())
    u = int(uk.shape[0])
    bins = bin_of(uc)
    row_hist = np.bincount(bins, minlength=N_BINS) / max(u, 1)
    lookup_hist = np.bincount(bins, weights=uc, minlength=N_BINS) / max(n, 1)
    tables = key_table(uk)
    per = np.bincount(tables) if u else np.zeros(0, dtype=np.int64)
    upt = {int(t): int(c) for t, c in enumerate(per) if c}
    return TraceStats(path=trace.path, lookups=n, samples=trace.n_samples, unique_rows=u, tables=len(upt),
                      unique_per_table=upt, row_hist=[float(x) for x in row_hist],
                      lookup_hist=[float(x) for x in lookup_hist])


def parse_locality_stats(text: str) -> tuple[list[float], list[float]]:
    """The first (row histogram, lookup ratio) pair of a Meta locality-statistics file."""
    rows: list[float] = []
    look: list[float] = []
    target = None
    for line in text.splitlines():
        if line.startswith("Histogram of col sizes"):
            target = rows
            continue
        if line.startswith("Ratio of index distribution"):
            target = look
            continue
        if target is not None and line.startswith("(") and ":" in line:
            target.append(float(line.rsplit(":", 1)[1]))
            if len(target) == N_BINS:
                if target is look:
                    break
                target = None
    return rows, look
