"""A streaming synthetic trace generator calibrated to Meta's 2021 DLRM locality statistics.

Rows are generated in blocks of ``block_rows`` fresh rows. Each row's reuse count is drawn from the
Meta 2021 distribution (rows per bin of the reuse-count histogram; the bins the published histogram
rounds to 0.000 are filled in from its lookup ratios, so the mean is ~7 uses per row as published),
uniformly within its bin. A row's uses are laid out around a random point of its block with
log-normal gaps (median ``gap`` lookups, spread ``sigma``; at most ``MAX_GAP``), which gives short and
long reuse, and the block's uses are spread over ``spread`` block lengths (so blocks overlap and the
cache sees many blocks' rows at once) and emitted in time order. Every row's uses are all emitted, so
every count is exact whatever the length: the histogram matches for any number of tables and lookups.
A row's table is uniform over ``tables``; row ids are a bijective scramble of a per-table counter
(like hashed production ids). Memory is constant in the length (``spread`` blocks at a time).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmgd.fileout import whole_file
from recmgd.keys import MAX_ROWS, MAX_TABLES, ROW_BITS
from recmgd.trace.binary import BinaryWriter
from recmgd.trace.stats import EDGES, N_BINS

log = logging.getLogger(__name__)

# Meta 2021 (fbgemm_t856_bs65536.pt): 887,017,990 lookups, 128,435,723 unique rows
META_2021_LOOKUPS = 887_017_990
META_2021_UNIQUE = 128_435_723
META_2021_ROW_HIST = [0.473, 0.152, 0.139, 0.112, 0.072, 0.032, 0.011, 0.005, 0.002, 0.001,
                      0.000, 0.000, 0.000, 0.000, 0.000, 0.000, 0.000]
META_2021_LOOKUP_RATIO = [0.069, 0.044, 0.068, 0.101, 0.121, 0.104, 0.073, 0.058, 0.052, 0.050,
                          0.049, 0.048, 0.048, 0.043, 0.031, 0.023, 0.019]
TOP_BIN_MAX = 65536  # counts of the open last bin are drawn in (32768, 65536]
_ROW_MULT = 0x9E3779B97F4A7C15 & (MAX_ROWS - 1) | 1  # odd: a bijection modulo 2**40
#: the most rows a block (memory: about 7 uses a row, some 50 bytes a use, at once)
MAX_BLOCK_ROWS = 1 << 22
#: the most lookups a trace (int64 offsets), and lookups a table a sample (tables x pooling fits int64)
MAX_LOOKUPS = (1 << 62) - 1
MAX_POOLING = 1 << 40
#: a longer gap between a row's uses is drawn as this one (more lookups than a trace holds: never again)
MAX_GAP = float(1 << 62)


def bin_bounds() -> list[tuple[int, int]]:
    """(lowest, highest) reuse count of every bin."""
    return [(EDGES[i] + 1, EDGES[i + 1]) for i in range(len(EDGES) - 1)] + [(EDGES[-1] + 1, TOP_BIN_MAX)]


def row_bin_probabilities() -> np.ndarray:
    """Probability that a row falls in each bin: the published row histogram where it is nonzero,
    the lookup ratios divided by the bin's mean count elsewhere (the tail the rounding hides)."""
    mean_uses = META_2021_LOOKUPS / META_2021_UNIQUE
    p = np.zeros(N_BINS)
    for i, (lo, hi) in enumerate(bin_bounds()):
        p[i] = META_2021_ROW_HIST[i] if META_2021_ROW_HIST[i] > 0 else \
            META_2021_LOOKUP_RATIO[i] * mean_uses / ((lo + hi) / 2)
    return p / p.sum()


@dataclass
class SynthConfig:
    """Generator settings; defaults fit a 2-core, 24 GiB machine (10M lookups, 64 tables)."""

    lookups: int = 10_000_000
    tables: int = 64
    pooling: int = 4  # lookups per table per sample: a sample has tables * pooling lookups
    block_rows: int = 1 << 16
    gap: float = 4096.0  # median gap between a row's uses, lookups
    sigma: float = 2.0  # log-normal spread of the gaps: short and long reuse
    spread: float = 8.0  # a block's uses are spread over this many block lengths
    seed: int = 0

    def check(self) -> None:
        """ValueError naming the setting that is out of its range."""
        if not 0 <= self.lookups <= MAX_LOOKUPS:
            raise ValueError(f"lookups must be in 0..{MAX_LOOKUPS}, got {self.lookups}")
        if not 1 <= self.tables <= MAX_TABLES:
            raise ValueError(f"tables must be in 1..{MAX_TABLES}, got {self.tables}")
        if not 1 <= self.pooling <= MAX_POOLING:
            raise ValueError(f"pooling must be in 1..{MAX_POOLING}, got {self.pooling}")
        if not 1 <= self.block_rows <= MAX_BLOCK_ROWS:
            raise ValueError(f"block_rows must be in 1..{MAX_BLOCK_ROWS}, got {self.block_rows}")
        if not (math.isfinite(self.gap) and self.gap > 0):
            raise ValueError(f"gap must be a finite number > 0, got {self.gap}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma}")
        if not (math.isfinite(self.spread) and self.spread >= 1):
            raise ValueError(f"spread must be a finite number >= 1, got {self.spread}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def lookups_per_sample(self) -> int:
        return self.tables * self.pooling


def synth_keys(cfg: SynthConfig) -> Iterator[np.ndarray]:
    """Yield the trace's keys, one block at a time (int64)."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    probs = row_bin_probabilities()
    bounds = np.array(bin_bounds(), dtype=np.int64)
    counters = np.zeros(cfg.tables, dtype=np.int64)
    salt = rng.integers(0, MAX_ROWS, size=cfg.tables, dtype=np.int64)
    pend_pos = np.zeros(0)
    pend_key = np.zeros(0, dtype=np.int64)
    t = 0.0
    generated = 0
    while generated < cfg.lookups or pend_key.shape[0]:
        if generated < cfg.lookups:
            keys, pos, length = _block(cfg, rng, probs, bounds, counters, salt, cfg.lookups - generated, t)
            generated += length
            pend_pos = np.concatenate([pend_pos, pos])
            pend_key = np.concatenate([pend_key, keys])
            t += length
        order = np.argsort(pend_pos, kind="stable")
        cut = pend_key.shape[0] if generated >= cfg.lookups else int(np.searchsorted(pend_pos[order], t))
        yield pend_key[order[:cut]]
        pend_pos = pend_pos[order[cut:]]
        pend_key = pend_key[order[cut:]]


def _block(cfg: SynthConfig, rng: np.random.Generator, probs: np.ndarray, bounds: np.ndarray,
           counters: np.ndarray, salt: np.ndarray, left: int, t: float) -> tuple[np.ndarray, np.ndarray, int]:
    """One block of fresh rows: (key of every use, its time, number of uses)."""
    bins = rng.choice(N_BINS, size=cfg.block_rows, p=probs)
    counts = rng.integers(bounds[bins, 0], bounds[bins, 1] + 1)
    csum = np.cumsum(counts)
    if csum[-1] >= left:  # the last block: keep whole rows, trim the final one to fit
        k = int(np.searchsorted(csum, left))
        counts = counts[:k + 1].copy()
        counts[-1] -= int(csum[k] - left)
    n_rows = counts.shape[0]
    length = int(counts.sum())
    tables = rng.integers(0, cfg.tables, size=n_rows)
    # per-table counters: the i-th new row of table t gets counters[t] + i
    sort_t = np.argsort(tables, kind="stable")
    tcounts = np.bincount(tables, minlength=cfg.tables)
    starts = np.concatenate(([0], np.cumsum(tcounts)[:-1]))
    order_in_table = np.zeros(n_rows, dtype=np.int64)
    order_in_table[sort_t] = np.arange(n_rows) - np.repeat(starts, tcounts)
    serial = counters[tables] + order_in_table
    counters += tcounts
    rows = ((serial * _ROW_MULT) + salt[tables]) & (MAX_ROWS - 1)
    keys = (tables.astype(np.int64) << ROW_BITS) | rows
    owner = np.repeat(np.arange(n_rows), counts)
    window = cfg.spread * max(length, 1)  # a block's uses spread over `spread` block lengths
    centre = rng.random(n_rows) * window
    first = np.repeat(np.cumsum(counts) - counts, counts)
    gaps = rng.lognormal(np.log(cfg.gap), cfg.sigma, size=length)
    np.minimum(gaps, MAX_GAP, out=gaps)  # a huge sigma or gap draws inf: no inf - inf (NaN) below
    gaps[first] = 0.0
    seg = np.cumsum(gaps)
    seg -= seg[first]  # each row's uses start at its centre
    pos = t + np.mod(centre[owner] + seg, window)
    return keys[owner], pos, length


def write_synth(cfg: SynthConfig, path: str | Path) -> int:
    """Write a synthetic binary trace; returns the number of lookups."""
    n = 0
    with whole_file(path) as tmp, BinaryWriter(tmp) as w:
        for keys in synth_keys(cfg):
            w.add(keys)
            n += keys.shape[0]
        lps = cfg.lookups_per_sample
        lengths = np.full(n // lps, lps, dtype=np.int64)
        if n % lps:
            lengths = np.append(lengths, n % lps)
        w.add_samples(lengths)
    log.info("wrote %s: %d lookups, %d tables", path, n, cfg.tables)
    return n
