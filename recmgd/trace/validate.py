"""Checks every trace reader applies to what it read before handing out a :class:`Trace`.

A file is outside recmg's trust boundary: each check raises :class:`TraceError` with a one-line
message naming the file and the record (lookup, sample or line) and the problem. Keys must be
``table << 40 | row`` with ``0 <= table < MAX_TABLES`` (so no key is negative); sample offsets must start
at 0, never decrease and end at the number of lookups. Large (memory-mapped) arrays are checked in
chunks, so a check adds one pass over the data and no copy of it.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from recmgd.errors import TraceError
from recmgd.keys import MAX_TABLES, ROW_BITS, ROW_MASK

CHUNK = 1 << 22


def check_file(path: str) -> os.stat_result:
    """A regular, non-empty file; its stat. Raises TraceError for a missing path, a directory, a
    device or pipe, or an empty file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TraceError(f"{path}: cannot open ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise TraceError(f"{path}: is a directory, not a trace file")
    if not stat.S_ISREG(st.st_mode):
        raise TraceError(f"{path}: not a regular file")
    if st.st_size == 0 and not _has_bytes(path):  # procfs and sysfs files say 0 bytes and hold some
        raise TraceError(f"{path}: empty file")
    return st


def _has_bytes(path: str) -> bool:
    """Whether a file that stat says is empty gives a byte when read."""
    try:
        with open(path, "rb") as fh:
            return bool(fh.read(1))
    except OSError:
        return False


def _bad_key_message(key: int) -> str:
    if key < 0:
        return f"key {key} is negative"
    return f"key {key} has table {key >> ROW_BITS} (row {key & ROW_MASK}), tables are 0..{MAX_TABLES - 1}"


def check_keys(path: str, keys: np.ndarray) -> None:
    """Every key non-negative with a table below MAX_TABLES (rows are the low 40 bits, always in range)."""
    limit = MAX_TABLES << ROW_BITS
    n = int(keys.shape[0])
    for lo in range(0, n, CHUNK):
        k = np.asarray(keys[lo:lo + CHUNK])
        if int(k.min()) < 0 or int(k.max()) >= limit:
            i = int(np.flatnonzero((k < 0) | (k >= limit))[0])
            raise TraceError(f"{path}: lookup {lo + i}: {_bad_key_message(int(k[i]))}")


def check_offsets(path: str, offsets: np.ndarray, n_lookups: int) -> None:
    """``n_samples + 1`` sample boundaries: 0 first, never decreasing, ``n_lookups`` last."""
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise TraceError(f"{path}: sample offsets must be a 1-D array of n_samples + 1 values")
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise TraceError(f"{path}: sample 0 starts at offset {first}, not 0")
    if last != n_lookups:
        raise TraceError(f"{path}: sample offsets end at {last}, the trace has {n_lookups} lookups")
    n = int(offsets.shape[0])
    for lo in range(0, n - 1, CHUNK):
        o = np.asarray(offsets[lo:lo + CHUNK + 1])
        back = o[1:] < o[:-1]  # compared, not subtracted: a difference of int64s can wrap around
        if back.any():
            i = int(np.flatnonzero(back)[0])
            raise TraceError(f"{path}: sample {lo + i} ends before it starts "
                             f"(offsets {int(o[i])} then {int(o[i + 1])})")
    # nondecreasing from 0 to n_lookups: every offset is inside the keys


def first_undecodable_line(path: str, encoding: str) -> int:
    """The 1-based number of the first line that does not decode (0 when all do)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return lineno
    return 0
