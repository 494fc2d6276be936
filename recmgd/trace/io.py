"""Open any supported trace by content: recmg binary, Meta DLRM (torch, optionally gzip'd), Criteo/Avazu
CSV logs, or the plain text format; and write the binary or text format."""

from __future__ import annotations

import codecs
from pathlib import Path

from recmgd.errors import TraceError
from recmgd.fileout import whole_file, write_reason
from recmgd.trace.binary import MAGIC, read_binary, write_binary
from recmgd.trace.csvlog import DEFAULT_TABLE_SIZE, read_csv_log, sniff_csv
from recmgd.trace.dlrm import check_dense, read_dlrm, write_dlrm
from recmgd.trace.model import Trace
from recmgd.trace.text import check_text, read_text, write_text
from recmgd.trace.validate import check_file

FORMATS = ("binary", "dlrm", "csv", "text")


#: a zip file's first bytes (a local file header; an empty archive's end record)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
#: bytes of a file's start that detect_format looks at
SNIFF_BYTES = 4096


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes can start a text trace or a CSV log: UTF-8 (a character cut at the
    end of ``head`` allowed) without NUL bytes."""
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def detect_format(path: str | Path) -> str:
    """One of FORMATS, from the file's content: recmg's magic, gzip, a zip or a pickle (torch); then a
    ``.pt``/``.pt.gz`` name breaks the tie for a file that starts as no text, or with ``PK`` (a damaged
    torch file is named as one); else a comma/tab-separated log, or the text format."""
    path = str(path)
    check_file(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise TraceError(f"{path}: cannot open ({exc.strerror})") from None
    if head[:8] == MAGIC:
        return "binary"
    if head[:2] == b"\x1f\x8b" or head[:4] in _ZIP or head[:1] == b"\x80":  # gzip, zip, pickle (torch)
        return "dlrm"
    if path.endswith((".pt", ".pt.gz")) and (head[:2] == b"PK" or not _is_text(head)):
        return "dlrm"
    if sniff_csv(path):
        return "csv"
    return "text"


def open_trace(path: str | Path, fmt: str | None = None, table_size: int = DEFAULT_TABLE_SIZE) -> Trace:
    """Read (or map) a trace of any supported format (a trace without lookups, such as an idle
    recording, is valid: callers that cannot use one say so)."""
    fmt = fmt or detect_format(path)
    if fmt == "binary":
        tr = read_binary(path)
    elif fmt == "dlrm":
        tr = read_dlrm(path)
    elif fmt == "csv":
        tr = read_csv_log(path, table_size=table_size)
    elif fmt == "text":
        tr = read_text(path)
    else:
        raise TraceError(f"{path}: unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
    return tr


def save_trace(trace: Trace, path: str | Path, fmt: str | None = None) -> str:
    """Write a trace; the format defaults from the name (.trace/.txt: text, .pt/.pt.gz: dlrm, else binary)."""
    path = str(path)
    if fmt is None:
        fmt = ("text" if path.endswith((".trace", ".txt")) else
               "dlrm" if path.endswith((".pt", ".pt.gz")) else "binary")
    writers = {"binary": write_binary, "text": write_text, "dlrm": write_dlrm}
    if fmt not in writers:
        raise ValueError(f"cannot write format {fmt!r} (binary, text, dlrm)")
    if fmt == "dlrm":
        check_dense(trace, path)  # before the temporary: its message names the output
    elif fmt == "text":
        check_text(trace, path)
    try:
        with whole_file(path) as tmp:
            writers[fmt](trace, str(tmp))
    except OSError as exc:
        raise TraceError(f"{path}: cannot write ({write_reason(exc)}); nothing was written") from None
    return fmt
