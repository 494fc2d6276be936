"""Row keys: one int64 per (table, row), shared by the pool, the rings, traces and policies.

A key packs a table id into the high bits and a row id into the low 40 bits. Ring records use the
two top bits of the same word for the record type, so tables are limited to 2**22.
"""

from __future__ import annotations

import numpy as np

ROW_BITS = 40
TABLE_BITS = 22
ROW_MASK = (1 << ROW_BITS) - 1
MAX_TABLES = 1 << TABLE_BITS
MAX_ROWS = 1 << ROW_BITS


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
