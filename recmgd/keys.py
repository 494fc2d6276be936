"""The shared facts of recmg's Python side: row keys, the ring record format, the page size, capacity.

A key packs a table id into the high bits and a row id into the low 40 bits (one int64 per (table,
row), shared by the pool, the rings, traces and policies). Ring records use the two top bits of the
same word for the record type, so tables are limited to 2**22. native/include/recmg.h defines the same
format for C (RECMG_ROW_BITS, RECMG_REC_*); every Python user imports it from here.
"""

from __future__ import annotations

import numpy as np

ROW_BITS = 40
TABLE_BITS = 22
ROW_MASK = (1 << ROW_BITS) - 1
MAX_TABLES = 1 << TABLE_BITS
MAX_ROWS = 1 << ROW_BITS

# -- ring records (uint64 words): bits 62..63 the record type, bits 0..61 the key -----------------------
REC_TYPE_BITS = 62
REC_TYPE_SHIFT = np.uint64(REC_TYPE_BITS)
REC_KEY_MASK = np.uint64((1 << REC_TYPE_BITS) - 1)
#: a lookup of a key, a batch boundary (no key), a hint of a key for a batch that runs later, a change of
#: the ring's owner (the key: the new owner's pid; the records before it are the previous owners', an
#: unfinished batch of theirs ends there unfinished; a ring's first owner has none)
REC_LOOKUP, REC_BATCH_END, REC_HINT, REC_OWNER = 0, 1, 2, 3

#: the page size of page mode and of the simulator's pages (move_pages(2) moves base pages)
PAGE_BYTES = 4096


def make_keys(tables: np.ndarray | int, rows: np.ndarray) -> np.ndarray:
    """Pack table ids and row ids into int64 keys."""
    t = np.asarray(tables, dtype=np.int64)
    r = np.asarray(rows, dtype=np.int64)
    return (t << ROW_BITS) | r


def key_table(keys: np.ndarray) -> np.ndarray:
    """The table id of each key."""
    return np.asarray(keys, dtype=np.int64) >> ROW_BITS


def key_row(keys: np.ndarray) -> np.ndarray:
    """The row id of each key."""
    return np.asarray(keys, dtype=np.int64) & ROW_MASK


def make_key(table: int, row: int) -> int:
    """Pack one (table, row) pair."""
    return (int(table) << ROW_BITS) | int(row)


def make_records(rec_type: int, keys: np.ndarray) -> np.ndarray:
    """Ring records (uint64) of one type for int64 keys."""
    k = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    return (np.uint64(rec_type) << REC_TYPE_SHIFT) | (k & REC_KEY_MASK)


def record_types(records: np.ndarray) -> np.ndarray:
    """The record type of each ring record (uint64)."""
    return np.asarray(records, dtype=np.uint64) >> REC_TYPE_SHIFT


def record_keys(records: np.ndarray) -> np.ndarray:
    """The key (int64) of each ring record (0 for a batch boundary, the pid for a change of owner)."""
    return (np.asarray(records, dtype=np.uint64) & REC_KEY_MASK).astype(np.int64)


#: the most rows (or pages) a fast tier may hold for the policies and the simulator (the learned
#: policies' C step watches one row in at most 2**24 in its guard here: recmgd.models.policies.guard_sample)
MAX_CAPACITY = 1 << 40


def capacity_for(fraction: float, unique_rows: int) -> int:
    """Fast-tier rows (or pages) for a fraction of the unique rows (pages) of a trace, at least 1: the
    one rule the simulator, training, benchmarks and the demo size their tiers by."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, int(fraction * unique_rows))
