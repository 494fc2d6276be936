"""Meta's DLRM embedding-lookup files (facebookresearch/dlrm_datasets): ``torch.load`` gives
``(indices, offsets, lengths)``, optionally gzip'd. ``lengths`` is (tables, batch); ``indices`` holds
the rows table-major: for table t, sample b, ``lengths[t, b]`` rows. Here every sample's lookups come
in table order, samples in batch order.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from recmgd.errors import TraceError
from recmgd.keys import MAX_ROWS, MAX_TABLES, make_keys
from recmgd.trace.model import Trace
from recmgd.trace.validate import check_file


def _load(path: str) -> object:
    import torch

    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise TraceError(f"{path}: cannot open ({exc.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise TraceError(f"{path}: corrupt gzip ({exc})") from None
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds
        raise TraceError(f"{path}: not a torch file ({type(exc).__name__}: {exc})") from None


def read_dlrm(path: str | Path) -> Trace:
    """Read a Meta DLRM lookup file into a trace."""
    path = str(path)
    check_file(path)
    obj = _load(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise TraceError(f"{path}: expected (indices, offsets, lengths), got {type(obj).__name__}")
    try:
        indices, offsets, lengths = (np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in obj)
        if lengths.ndim != 2:
            raise TraceError(f"{path}: lengths must be 2-D (tables, batch), got shape {lengths.shape}")
        n_tables, batch = lengths.shape
        lengths = lengths.astype(np.int64, casting="same_kind")
        indices = indices.astype(np.int64, casting="same_kind").ravel()
        offsets = offsets.astype(np.int64, casting="same_kind").ravel()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TraceError(f"{path}: indices, offsets and lengths must be integer tensors ({exc})") from None
    if (lengths < 0).any():
        raise TraceError(f"{path}: negative lengths")
    if int(lengths.sum()) != indices.shape[0]:
        raise TraceError(f"{path}: lengths add up to {int(lengths.sum())}, indices hold {indices.shape[0]}")
    if offsets.shape[0] == n_tables * batch + 1 and not np.array_equal(
            np.diff(offsets), lengths.ravel()):
        raise TraceError(f"{path}: offsets disagree with lengths")
    if n_tables > MAX_TABLES:
        raise TraceError(f"{path}: {n_tables} tables, at most {MAX_TABLES}")
    if indices.shape[0] and (indices.min() < 0 or indices.max() >= MAX_ROWS):
        raise TraceError(f"{path}: an index outside 0..{MAX_ROWS - 1}")
    flat = lengths.ravel()
    table_of = np.repeat(np.repeat(np.arange(n_tables, dtype=np.int64), batch), flat)
    sample_of = np.repeat(np.tile(np.arange(batch, dtype=np.int64), n_tables), flat)
    order = np.argsort(sample_of, kind="stable")
    keys = make_keys(table_of[order], indices[order])
    sample_offsets = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(lengths.sum(axis=0), out=sample_offsets[1:])
    return Trace(np.ascontiguousarray(keys), sample_offsets, path)


#: the format is dense, a length for every (table, sample): a file is refused when it would hold more
#: than DENSE_LOOKUP_CELLS lengths a lookup and more than DENSE_CELLS lengths in all
DENSE_CELLS = 1 << 26
DENSE_LOOKUP_CELLS = 64


def check_dense(trace: Trace, path: str | Path, n_tables: int | None = None) -> int:
    """The tables a DLRM file of ``trace`` holds (table ids 0 up to the highest one used, or
    ``n_tables``); TraceError naming ``path`` and the table count when its dense lengths would be huge
    for the lookups (a trace with a high table id and few lookups)."""
    from recmgd.keys import key_table

    if n_tables is None:
        n_tables = int(key_table(np.asarray(trace.keys).max())) + 1 if trace.n_lookups else 0
    cells = n_tables * trace.n_samples
    if cells > DENSE_CELLS and cells > DENSE_LOOKUP_CELLS * trace.n_lookups:
        raise TraceError(f"{path}: the DLRM format holds a length for every table and sample: {n_tables:,} "
                         f"tables (ids up to the highest one used) x {trace.n_samples:,} samples would be "
                         f"{cells:,} lengths ({16 * cells / 2**30:,.1f} GiB) for {trace.n_lookups:,} "
                         "lookups; write the binary or text format instead")
    return n_tables


def write_dlrm(trace: Trace, path: str | Path, n_tables: int | None = None) -> None:
    """Write a trace as a DLRM lookup file (for tests and interchange; gzip when path ends in .gz);
    TraceError (check_dense) before anything is allocated when its dense layout would be huge."""
    import torch

    from recmgd.keys import key_row, key_table

    n_tables = check_dense(trace, path, n_tables)
    keys = np.asarray(trace.keys, dtype=np.int64)
    t = key_table(keys)
    r = key_row(keys)
    b = np.repeat(np.arange(trace.n_samples), np.diff(trace.sample_offsets))
    lengths = np.zeros((n_tables, trace.n_samples), dtype=np.int64)
    np.add.at(lengths, (t, b), 1)
    order = np.lexsort((b, t))  # table-major, then sample, stable
    indices = torch.from_numpy(r[order].copy())
    offsets = torch.from_numpy(np.concatenate(([0], np.cumsum(lengths.ravel()))).astype(np.int64))
    buf = io.BytesIO()
    torch.save((indices, offsets, torch.from_numpy(lengths)), buf)
    data = buf.getvalue()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as fh:
        fh.write(data)
