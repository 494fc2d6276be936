"""Meta's DLRM embedding-lookup files (facebookresearch/dlrm_datasets): ``torch.load`` gives
``(indices, offsets, lengths)``, optionally gzip'd. ``lengths`` is (tables, batch); ``indices`` holds
the rows table-major: for table t, sample b, ``lengths[t, b]`` rows. Here every sample's lookups come
in table order, samples in batch order.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from pathlib import Path

import numpy as np

from recmgd.errors import TraceError
from recmgd.keys import MAX_ROWS, MAX_TABLES, make_keys
from recmgd.trace.model import Trace
from recmgd.trace.validate import CHUNK, check_file

#: the most characters of torch's reason shown in a message
_REASON_CHARS = 200
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def torch_reason(exc: BaseException) -> str:
    """One line of why torch.load refused a file: the weights-only unpickler's own reason where it gives
    one, its first line, without control characters (ANSI colours), and never torch's advice to load
    with ``weights_only=False`` (that runs any code a file holds)."""
    text = _ANSI.sub("", str(exc))
    mark = text.find("WeightsUnpickler error:")
    if mark >= 0:
        text = text[mark + len("WeightsUnpickler error:"):]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _CONTROL.sub(" ", line)
    kept = [s for s in re.split(r"(?<=\.)\s+", line)
            if s and not any(w in s for w in ("weights_only", "safe_globals", "trust"))]
    reason = " ".join(kept).strip() or "refused by the weights-only loader"
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS - 5] + "[...]"
    return f"{type(exc).__name__}: {reason}"


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
        except (OSError, EOFError, zlib.error) as exc:
            raise TraceError(f"{path}: corrupt gzip ({_CONTROL.sub(' ', str(exc))})") from None
        except MemoryError:
            raise TraceError(f"{path}: too large to decompress in memory") from None
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except MemoryError:
        raise TraceError(f"{path}: too large to read in memory") from None
    except Exception as exc:  # torch raises many kinds
        raise TraceError(f"{path}: not a torch file ({torch_reason(exc)})") from None


def _array(path: str, name: str, x: object) -> np.ndarray:
    """Tensor ``x`` as an integer array, without a copy; TraceError for anything else (a list too: one of
    tensors would be copied whole), and for a tensor that shows more values than it stores (an expanded,
    stride-0 view: a copy of it could be any size)."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TraceError(f"{path}: {name} must be an integer tensor, got {type(x).__name__}")
    stored = x.untyped_storage().nbytes() // max(x.element_size(), 1)
    if x.numel() > stored:
        raise TraceError(f"{path}: {name} is a view of {x.numel():,} values over {stored:,} stored "
                         "ones (an expanded tensor); save it with .contiguous()")
    try:
        a = x.numpy()
    except (TypeError, RuntimeError) as exc:
        reason = _CONTROL.sub(" ", str(exc))
        raise TraceError(f"{path}: {name} must be an integer tensor ({reason})") from None
    if a.dtype.kind not in "iub":
        raise TraceError(f"{path}: {name} must be an integer tensor, got {x.dtype}")
    return a


def _sum_at_most(values: np.ndarray, limit: int) -> int:
    """The exact sum of non-negative ``values`` each at most ``limit`` (< 2**63), in chunks whose sums
    fit int64, stopping once past ``limit`` (so no int64 sum can wrap around)."""
    chunk = max(1, min(CHUNK, ((1 << 63) - 1) // max(limit, 1)))
    total = 0
    for lo in range(0, values.shape[0], chunk):
        total += int(values[lo:lo + chunk].sum(dtype=np.int64))
        if total > limit:
            break
    return total


def read_dlrm(path: str | Path) -> Trace:
    """Read a Meta DLRM lookup file into a trace. Shapes and values are checked before any copy, so
    memory stays within a few times the file's tensors."""
    path = str(path)
    check_file(path)
    obj = _load(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise TraceError(f"{path}: expected (indices, offsets, lengths), got {type(obj).__name__}")
    try:
        return _read(path, obj)
    except MemoryError:
        raise TraceError(f"{path}: too large to read in memory") from None


def _read(path: str, obj: tuple[object, ...] | list[object]) -> Trace:
    indices, offsets, lengths = (_array(path, n, x) for n, x in zip(("indices", "offsets", "lengths"), obj,
                                                                    strict=True))
    if lengths.ndim != 2:
        raise TraceError(f"{path}: lengths must be 2-D (tables, batch), got shape {lengths.shape}")
    n_tables, batch = lengths.shape
    if n_tables > MAX_TABLES:
        raise TraceError(f"{path}: {n_tables} tables, at most {MAX_TABLES}")
    indices = indices.ravel()
    offsets = offsets.ravel()
    n = int(indices.shape[0])
    flat = lengths.ravel()
    if flat.shape[0]:  # compared in the file's own dtype: nothing wraps before the check
        low, high = flat.min(), flat.max()
        if low < 0:
            raise TraceError(f"{path}: negative lengths ({int(low)})")
        if high > n:
            raise TraceError(f"{path}: a length of {int(high)}, more than the {n} indices")
    flat = flat.astype(np.int64)
    total = _sum_at_most(flat, n)
    if total != n:
        raise TraceError(f"{path}: lengths add up to {total}, indices hold {n}")
    if n and (indices.min() < 0 or indices.max() >= MAX_ROWS):
        raise TraceError(f"{path}: an index outside 0..{MAX_ROWS - 1}")
    indices = indices.astype(np.int64)
    if offsets.shape[0] == n_tables * batch + 1 and not _offsets_agree(offsets, flat):
        raise TraceError(f"{path}: offsets disagree with lengths")
    table_of = np.repeat(np.repeat(np.arange(n_tables, dtype=np.int64), batch), flat)
    sample_of = np.repeat(np.tile(np.arange(batch, dtype=np.int64), n_tables), flat)
    order = np.argsort(sample_of, kind="stable")
    keys = make_keys(table_of[order], indices[order])
    sample_offsets = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(flat.reshape(n_tables, batch).sum(axis=0), out=sample_offsets[1:])
    return Trace(np.ascontiguousarray(keys), sample_offsets, path)


def _offsets_agree(offsets: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether consecutive ``offsets`` differ by ``lengths`` (non-negative), compared so that nothing
    wraps around: nondecreasing first (then a difference that does not fit int64 is negative)."""
    if offsets.dtype.kind == "u" and offsets.shape[0] and offsets.max() > np.iinfo(np.int64).max:
        return False
    o = offsets.astype(np.int64)
    return bool((o[1:] >= o[:-1]).all() and np.array_equal(np.diff(o), lengths))


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
