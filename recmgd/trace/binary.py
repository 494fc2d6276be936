"""recmg's own binary trace format: versioned, compact, memory-mapped.

Layout (little endian)::

    0   magic    8 bytes  b"RECMGTR\\0"
    8   version  u32      1
    12  flags    u32      0
    16  n_lookups u64
    24  n_samples u64
    32  keys_offset u64     (64)
    40  samples_offset u64  (keys_offset + 8 * n_lookups)
    48  reserved (16 bytes, zero)
    keys:     int64[n_lookups]      table << 40 | row
    samples:  int64[n_samples + 1]  sample boundaries into keys

A reader accepts a file only when the header's sizes match the file's exactly, flags are 0, every key
is non-negative with a table below 2**22, and the sample offsets start at 0, never decrease and end
at ``n_lookups``.

8 bytes a lookup plus 8 a sample; reading maps both arrays without copying.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from recmgd.errors import TraceError
from recmgd.trace.model import Trace
from recmgd.trace.validate import check_file, check_keys, check_offsets

MAGIC = b"RECMGTR\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQQ16x")
assert HEADER.size == 64


class BinaryWriter:
    """Stream lookups into a binary trace: ``add(keys, sample_lengths)`` then ``close()``.

    ``fileobj``: write into this open, seekable binary file (positioned at its start) instead of
    opening ``path`` (which then only names it); ``close(sync=True)`` fsyncs before closing."""

    def __init__(self, path: str | Path, fileobj: BinaryIO | None = None) -> None:
        self.path = str(path)
        self._fh = fileobj if fileobj is not None else open(self.path, "wb")
        self._fh.write(b"\0" * HEADER.size)
        self._n = 0
        self._lengths: list[np.ndarray] = []

    def add(self, keys: np.ndarray, sample_lengths: np.ndarray | None = None) -> None:
        """Append lookups and (optionally) lengths of samples; by close() all sample lengths must
        add up to the number of lookups."""
        keys = np.ascontiguousarray(keys, dtype="<i8")
        self._fh.write(keys.tobytes())
        self._n += keys.shape[0]
        if sample_lengths is not None:
            self.add_samples(sample_lengths)

    def add_samples(self, sample_lengths: np.ndarray) -> None:
        """Append the lengths of further samples."""
        self._lengths.append(np.asarray(sample_lengths, dtype=np.int64))

    def close(self, sync: bool = False) -> None:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        if int(lengths.sum()) != self._n:
            self._fh.close()
            raise ValueError(f"sample lengths add up to {int(lengths.sum())}, {self._n} lookups written")
        offsets = np.zeros(lengths.shape[0] + 1, dtype="<i8")
        np.cumsum(lengths, out=offsets[1:])
        self._fh.write(offsets.tobytes())
        self._fh.seek(0)
        self._fh.write(HEADER.pack(MAGIC, VERSION, 0, self._n, lengths.shape[0], HEADER.size,
                                   HEADER.size + 8 * self._n))
        if sync:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        """Close the file without finishing it (no header: no reader takes it for a trace); the caller
        removes it (recmgd.fileout removes its temporary)."""
        try:
            self._fh.close()
        except OSError:
            pass  # a close that flushes onto a full disk: the error in flight is the one to report

    def __enter__(self) -> BinaryWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:  # never an error of its own over the one in flight (a full disk, Ctrl-C)
            self.abort()
        else:
            self.close()


def write_binary(trace: Trace, path: str | Path) -> None:
    """Write a whole trace in the binary format."""
    with BinaryWriter(path) as w:
        w.add(np.asarray(trace.keys), np.diff(np.asarray(trace.sample_offsets)))


def read_binary(path: str | Path) -> Trace:
    """Map a binary trace (read-only, no copy). Everything is checked before it is handed out (see
    :mod:`recmgd.trace.validate`): header, sizes against the file, keys and sample offsets. Any problem
    is a one-line TraceError naming the file."""
    path = str(path)
    size = check_file(path).st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER.size)
    except OSError as exc:
        raise TraceError(f"{path}: cannot open ({exc.strerror})") from None
    if len(head) < HEADER.size:
        raise TraceError(f"{path}: truncated header ({len(head)} of {HEADER.size} bytes)")
    magic, version, flags, n, ns, koff, soff = HEADER.unpack(head)
    if magic != MAGIC:
        raise TraceError(f"{path}: not a recmg binary trace (bad magic)")
    if version != VERSION:
        raise TraceError(f"{path}: binary trace version {version}, this recmg reads version {VERSION}")
    if flags != 0:
        raise TraceError(f"{path}: unknown header flags {flags:#x} (version {VERSION} has none)")
    if koff != HEADER.size or soff != koff + 8 * n or size != soff + 8 * (ns + 1):
        raise TraceError(f"{path}: sizes in the header ({n} lookups, {ns} samples) do not match the "
                         f"file ({size} bytes)")
    try:
        keys = (np.memmap(path, dtype="<i8", mode="r", offset=koff, shape=(n,)) if n
                else np.zeros(0, np.int64))
        offsets = np.memmap(path, dtype="<i8", mode="r", offset=soff, shape=(ns + 1,))
    except (OSError, ValueError) as exc:
        raise TraceError(f"{path}: cannot map ({exc})") from None
    check_offsets(path, offsets, n)
    check_keys(path, keys)
    return Trace(keys, offsets, path)
