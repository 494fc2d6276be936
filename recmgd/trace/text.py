"""The plain text format: one lookup a line, ``table row [sample]``, whitespace separated.

Blank lines and ``#`` comments are skipped. Without a sample column every lookup is its own sample.
A new sample starts wherever the sample value changes. Malformed lines raise TraceError naming the
file and the line.
"""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recmgd.errors import TraceError
from recmgd.keys import MAX_ROWS, MAX_TABLES, key_row, key_table, make_keys
from recmgd.trace.model import Trace, offsets_from_samples
from recmgd.trace.validate import check_file, first_undecodable_line

log = logging.getLogger(__name__)

BLOCK_LINES = 1 << 20
_INT = re.compile(r"[+-]?[0-9]+")
#: the largest sample value (int64)
MAX_SAMPLE = (1 << 63) - 1
_FIELDS = (("table", MAX_TABLES - 1), ("row", MAX_ROWS - 1), ("sample", MAX_SAMPLE))
#: a field of more digits than this (leading zeros aside; int64 has 19) is named by its length, not its
#: value (int() of thousands of digits passes Python's limit on them)
_MAX_DIGITS = 100


def is_text_line(line: str) -> bool:
    """Whether ``line`` is a line of the text format: ``table row [sample]`` (integers, any whitespace
    between them), a comment or blank (its values are not checked here)."""
    body = line.split("#", 1)[0].split()
    return not body or (len(body) in (2, 3) and all(_INT.fullmatch(v) for v in body))


def _check_line(path: str, lineno: int, line: str, ncols: int | None) -> int | None:
    """Validate one line; return its column count (None for blank/comment). Raises TraceError."""
    body = line.split("#", 1)[0].split()
    if not body:
        return None
    if len(body) not in (2, 3):
        raise TraceError(f"{path}:{lineno}: expected 'table row [sample]', got {len(body)} fields")
    if ncols is not None and len(body) != ncols:
        raise TraceError(f"{path}:{lineno}: {len(body)} fields where earlier lines have {ncols}")
    if not all(_INT.fullmatch(v) for v in body):
        raise TraceError(f"{path}:{lineno}: not an integer in {line.strip()[:80]!r}")
    for (name, hi), v in zip(_FIELDS, body, strict=False):
        digits = len(v.lstrip("+-").lstrip("0"))
        if digits > _MAX_DIGITS:
            shown = v[:12] + "..."
            raise TraceError(f"{path}:{lineno}: {name} {shown} ({digits:,} digits) is out of range 0..{hi}")
    vals = [int(v) for v in body]
    if vals[0] < 0 or vals[0] >= MAX_TABLES:
        raise TraceError(f"{path}:{lineno}: table {vals[0]} outside 0..{MAX_TABLES - 1}")
    if vals[1] < 0 or vals[1] >= MAX_ROWS:
        raise TraceError(f"{path}:{lineno}: row {vals[1]} outside 0..{MAX_ROWS - 1}")
    if len(vals) == 3 and vals[2] < 0:
        raise TraceError(f"{path}:{lineno}: negative sample {vals[2]}")
    if len(vals) == 3 and vals[2] > MAX_SAMPLE:
        raise TraceError(f"{path}:{lineno}: sample {vals[2]} outside 0..{MAX_SAMPLE}")
    return len(body)


def _find_bad(path: str, lines: list[str], first_lineno: int, ncols: int | None) -> TraceError:
    for i, line in enumerate(lines):
        c = _check_line(path, first_lineno + i, line, ncols)
        if c is not None:
            ncols = c
    return TraceError(f"{path}: malformed block at lines {first_lineno}..{first_lineno + len(lines) - 1}")


def iter_text_blocks(path: str | Path, block_lines: int = BLOCK_LINES) -> Iterator[np.ndarray]:
    """Stream a text trace as int64 arrays of shape (n, 2 or 3), validated."""
    path = str(path)
    ncols: int | None = None
    check_file(path)
    try:
        fh = open(path, encoding="ascii", errors="strict")
    except OSError as exc:
        raise TraceError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        lineno = 1
        while True:
            try:
                lines = list(itertools.islice(fh, block_lines))
            except UnicodeDecodeError:
                bad = first_undecodable_line(path, "ascii")
                raise TraceError(f"{path}:{bad}: not ASCII text (a binary file, or not a trace)") from None
            if not lines:
                break
            try:
                with warnings.catch_warnings():  # a block of only comments and blank lines is fine
                    warnings.filterwarnings("ignore", "loadtxt: input contained no data")
                    arr = np.loadtxt(lines, dtype=np.int64, ndmin=2, comments="#")
            except (ValueError, OverflowError):
                raise _find_bad(path, lines, lineno, ncols) from None
            if arr.shape[0]:
                if arr.shape[1] not in (2, 3) or (ncols is not None and arr.shape[1] != ncols):
                    raise _find_bad(path, lines, lineno, ncols)
                bad = (arr[:, 0] < 0) | (arr[:, 0] >= MAX_TABLES) | (arr[:, 1] < 0) | (arr[:, 1] >= MAX_ROWS)
                if arr.shape[1] == 3:
                    bad |= arr[:, 2] < 0
                if bad.any():
                    raise _find_bad(path, lines, lineno, ncols)
                ncols = arr.shape[1]
                yield arr
            lineno += len(lines)


def read_text(path: str | Path) -> Trace:
    """Read a whole text trace."""
    blocks = list(iter_text_blocks(path))
    if not blocks:
        return Trace(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), str(path))
    arr = np.concatenate(blocks)
    keys = make_keys(arr[:, 0], arr[:, 1])
    if arr.shape[1] == 3:
        offsets = offsets_from_samples(arr[:, 2])
    else:
        offsets = np.arange(arr.shape[0] + 1, dtype=np.int64)
    log.debug("read %s: %d lookups, %d samples", path, keys.shape[0], offsets.shape[0] - 1)
    return Trace(np.ascontiguousarray(keys), offsets, str(path))


def empty_samples(trace: Trace, chunk: int = 1 << 22) -> int:
    """How many of the trace's samples hold no lookup (counted in chunks of the offsets)."""
    offs = trace.sample_offsets
    n = trace.n_samples
    return sum(int(np.count_nonzero(np.diff(np.asarray(offs[lo:lo + chunk + 1])) == 0))
               for lo in range(0, n, chunk))


def check_text(trace: Trace, path: str | Path) -> None:
    """TraceError naming ``path`` when the text format cannot hold the trace: a sample there is the run
    of lines with one sample value, so an empty sample would be lost (and every step after it moved)."""
    empty = empty_samples(trace)
    if empty:
        raise TraceError(f"{path}: {empty:,} of the trace's {trace.n_samples:,} samples are empty, which "
                         "the text format cannot hold; write the binary format (--to binary) instead")


def write_text(trace: Trace, path: str | Path, chunk: int = 1 << 20) -> None:
    """Write a trace in the text format (``table row sample``); a trace without lookups (and samples)
    as a comment line, which reads back as one (an empty file is no trace:
    recmgd.trace.validate.check_file). TraceError (check_text) for a trace with empty samples."""
    check_text(trace, path)
    samples = np.repeat(np.arange(trace.n_samples, dtype=np.int64), np.diff(trace.sample_offsets))
    with open(path, "w", encoding="ascii") as fh:
        if trace.n_lookups == 0:
            fh.write("# a recmg text trace without lookups\n")
        for lo in range(0, trace.n_lookups, chunk):
            k = np.asarray(trace.keys[lo:lo + chunk], dtype=np.int64)
            out = np.stack([key_table(k), key_row(k), samples[lo:lo + chunk]], axis=1)
            np.savetxt(fh, out, fmt="%d")
