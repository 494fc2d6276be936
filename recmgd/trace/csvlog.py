"""Raw Criteo and Avazu click logs: each categorical column is a table, each row a sample, and each
non-empty value is hashed (FNV-1a 64) to a row modulo ``table_size``.

Criteo: tab- or comma-separated, 40 columns (label, I1..I13, C1..C26), with or without a header; the
26 C columns are the tables. Avazu (and any CSV with a header): every column except ``id``, ``click``,
``label`` and Criteo's dense ``I<n>`` columns is a table. A row with the wrong number of fields is a
TraceError naming file and line.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import numpy as np

from recmgd.errors import TraceError
from recmgd.keys import MAX_ROWS, MAX_TABLES, ROW_BITS
from recmgd.trace.model import Trace
from recmgd.trace.text import is_text_line
from recmgd.trace.validate import check_file, first_undecodable_line

DEFAULT_TABLE_SIZE = 1 << 20
_NOT_TABLES = {"id", "click", "label"}
_DENSE = re.compile(r"^I\d+$")
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(text: str) -> int:
    """FNV-1a, 64 bits, of the UTF-8 bytes of ``text`` (stable across runs, unlike hash())."""
    h = FNV_OFFSET
    for byte in text.encode():
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def sniff_csv(path: str | Path) -> bool:
    """Does the first line look like a comma/tab separated log (not a whitespace trace)? A line of two
    or three integers (a ``#`` comment after them may hold commas), a comment or a blank line is the
    text format whatever whitespace separates the integers (a tab too); a log's line has more fields
    (Criteo's 40) or a header. A UTF-8 byte order mark is no part of the line."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return False
    if is_text_line(first):
        return False
    return "," in first or "\t" in first


def read_csv_log(path: str | Path, table_size: int = DEFAULT_TABLE_SIZE) -> Trace:
    """Read a Criteo/Avazu log into a trace (one sample per data row; UTF-8, a byte order mark skipped).
    A file that is not UTF-8, not CSV, or has rows of the wrong width is a TraceError naming file and
    line."""
    path = str(path)
    if not 1 <= table_size <= MAX_ROWS:
        raise TraceError(f"{path}: table size {table_size} outside 1..{MAX_ROWS}")
    check_file(path)
    try:
        fh = open(path, encoding="utf-8-sig", newline="")  # a byte order mark is no part of the header
    except OSError as exc:
        raise TraceError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        with fh:
            keys, lengths = _read_rows(path, fh, table_size)
    except UnicodeDecodeError:
        bad = first_undecodable_line(path, "utf-8")
        raise TraceError(f"{path}:{bad}: not UTF-8 text") from None
    except csv.Error as exc:
        raise TraceError(f"{path}: not a CSV log ({exc})") from None
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    return Trace(np.asarray(keys, dtype=np.int64), offsets, path)


def _read_rows(path: str, fh: TextIO, table_size: int) -> tuple[list[int], list[int]]:
    """The keys and the lookups of each sample of an open log."""
    keys: list[int] = []
    lengths: list[int] = []
    cache: dict[tuple[int, str], int] = {}
    first = fh.readline()
    delim = "\t" if "\t" in first else ","
    head = next(csv.reader([first], delimiter=delim), [])
    if not head:
        raise TraceError(f"{path}:1: empty first line (expected a header or a Criteo row)")
    has_header = not re.fullmatch(r"-?\d+(\.\d+)?", head[0].strip())
    if has_header:
        names = [h.strip() for h in head]
        cols = [i for i, n in enumerate(names) if n not in _NOT_TABLES and not _DENSE.match(n)]
        if len(cols) > MAX_TABLES:
            raise TraceError(f"{path}:1: {len(cols)} table columns, at most {MAX_TABLES}")
        start_line = 2
        lines: Iterable[str] = fh
    else:
        names = []
        if len(head) != 40:
            raise TraceError(f"{path}:1: {len(head)} fields; a headerless log must be Criteo's 40")
        cols = list(range(14, 40))
        start_line = 1
        lines = itertools.chain([first], fh)
    width = len(names) if has_header else 40
    reader = csv.reader(lines, delimiter=delim)
    for row in reader:
        if not row:
            continue
        if len(row) != width:
            lineno = reader.line_num + start_line - 1
            raise TraceError(f"{path}:{lineno}: {len(row)} fields, expected {width}")
        n = 0
        for t, c in enumerate(cols):
            v = row[c].strip()
            if not v:
                continue
            r = cache.get((t, v))
            if r is None:
                r = fnv1a64(v) % table_size
                cache[(t, v)] = r
            keys.append((t << ROW_BITS) | r)
            n += 1
        lengths.append(n)
    return keys, lengths
