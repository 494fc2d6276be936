"""The tiered embedding pool: Python and PyTorch API over librecmg (recmgd._native).

A pool is one named shared-memory object that a DLRM inference process (the app) and the recmg
daemon both map: all rows on a slow tier (``dram``, ``numa:N`` or ``ssd:PATH``), a fast tier of row
slots that only the daemon fills, and one access ring per app process. See docs/ARCHITECTURE.md
("Pool API") for the contract and native/include/recmg.h for the C API this mirrors.

App side::

    pool = Pool.create("dlrm", tables=[(1_000_000, 64)] * 26, slots=100_000, slow="ssd:/data/emb.bin")
    out = pool.embedding_bag(0, ids, offsets)        # torch.Tensor, float32
    pool.end_batch()

torch is imported only where a tensor is built (the lookups' results) or where the default thread count
is taken from it; the daemon, which never looks up, never imports it. ``TieredEmbeddingBag`` (an
nn.Module) lives in recmgd.pool_torch and is reached here by name (module ``__getattr__``).

Daemon side::

    pool = Pool.attach("dlrm", role="daemon")
    pool.fill_keys(keys); pool.evict_keys(keys)
    records = pool.drain_ring(0, 65536)
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import operator
import os
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recmgd.errors import PoolBusyError, PoolError, PoolLockedError, PoolVersionError, PoolWriteError
from recmgd.keys import PAGE_BYTES, ROW_BITS

try:
    from recmgd._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "recmgd._native is not built; run `make native` (or `python recmgd/_build_native.py`)"
    ) from exc

if TYPE_CHECKING:  # pragma: no cover - annotations only; torch is imported lazily (see _torch)
    import torch

    from recmgd.pool_torch import TieredEmbeddingBag

log = logging.getLogger(__name__)

__all__ = ["Pool", "TableInfo", "RingInfo", "PageMove", "TieredEmbeddingBag", "RowIndexError", "parse_slow",
           "PAGE_BYTES"]

_MODES = {"sum": 0, "mean": 1, "max": 2}
_DTYPES = {"float32": 0, "float16": 1}
_DTYPE_NAMES = {0: "float32", 1: "float16"}
_NP_DTYPES = {0: np.float32, 1: np.float16}
_SLOW_NAMES = {0: "dram", 1: "numa", 2: "ssd"}
_ROLES = {"app": 0, "daemon": 1}
_COUNTER_FIELDS = ("lookups", "unique", "hits", "on_demand", "ring_drops", "slow_bytes")


class RowIndexError(PoolError, IndexError):
    """A row id (or table, ring) out of range; both a PoolError and an IndexError."""


def _raise(code: int, message: str) -> None:
    msg = message or ffi.string(lib.recmg_strerror(code)).decode()
    if code in (lib.RECMG_EVERSION, lib.RECMG_ENOTPOOL):
        raise PoolVersionError(msg)
    if code == lib.RECMG_ERANGE:
        raise RowIndexError(msg)
    if code == lib.RECMG_ELOCKED:
        raise PoolLockedError(msg)
    if code == lib.RECMG_EBUSY:
        raise PoolBusyError(msg)
    raise PoolError(msg)


@dataclass(frozen=True)
class TableInfo:
    """One table of a pool."""

    index: int
    rows: int
    dim: int
    dtype: str
    row_bytes: int


@dataclass(frozen=True)
class PageMove:
    """What one :meth:`Pool.move_slow_pages` call did: per page its final status (the node it is on, or
    a negative errno), pages on the target node afterwards (those already there included), system
    calls made, pages asked for, pages asked for again after -EBUSY, and whether MPOL_MF_MOVE_ALL was
    in effect."""

    status: np.ndarray
    moved: int
    calls: int
    requested: int
    busy_retries: int
    move_all: bool


@dataclass(frozen=True)
class RingInfo:
    """One access ring: its owner process (0 if free), records waiting to be drained, drops."""

    index: int
    pid: int
    waiting: int
    drops: int
    capacity: int


def parse_slow(slow: str) -> tuple[int, int, str]:
    """("dram" | "numa:N" | "ssd:PATH") -> (kind code, numa node, absolute path)."""
    if slow == "dram":
        return 0, -1, ""
    if slow.startswith("numa:"):
        try:
            node = int(slow[5:])
        except ValueError:
            raise PoolError(f"bad slow tier {slow!r}: numa needs a node number, as in 'numa:1'") from None
        return 1, node, ""
    if slow.startswith("ssd:") and len(slow) > 4:
        return 2, -1, os.path.abspath(slow[4:])
    raise PoolError(f"bad slow tier {slow!r}: use 'dram', 'numa:N' or 'ssd:/path/to/file'")


def _torch() -> ModuleType:
    """The torch module, imported on first use (free when the caller already imported it)."""
    mod = sys.modules.get("torch")
    if mod is None:
        import torch as mod  # noqa: PLC0415 - lazy on purpose: the daemon never needs torch

        log.debug("torch imported by recmgd.pool")
    return mod


def _is_tensor(x: Any) -> bool:
    """Whether x is a torch.Tensor; never imports torch (no tensor can exist before torch is imported)."""
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(x, mod.Tensor)


_U32, _U64 = 2**32 - 1, 2**64 - 1


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    """An integer argument (an int, a numpy integer, or a float of a whole number such as 2e6; not a bool,
    nor a fraction, which a cast would truncate) within lo..hi, the range of the C field it goes to;
    anything else is a one-line PoolError naming it. (The library checks its own, tighter limits, and
    names them.)"""
    if isinstance(value, bool | np.bool_):
        raise PoolError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    try:
        v = operator.index(value)
    except TypeError:
        raise PoolError(f"{what} must be an integer, got {value!r}") from None
    if v < lo:
        raise PoolError(f"{what} must be at least {lo}, got {v}")
    if v > hi:
        raise PoolError(f"{what} is too large: {v}")
    return v


def _name(name: Any) -> bytes:
    if not isinstance(name, str):
        raise PoolError(f"a pool name must be a string, got {name!r}")
    return name.encode()


def name_problem(name: str) -> str | None:
    """Why the library would refuse ``name`` as a pool's name (one line), or None: its rule, asked of
    it (recmg_check_name), so a configuration is checked by the rule the pools are made by."""
    if "\0" in name:
        return f"bad pool name {name!r} (a NUL in it)"
    err = ffi.new("char[512]")
    if lib.recmg_check_name(name.encode(errors="surrogateescape"), err, 512):
        return ffi.string(err).decode(errors="replace")
    return None


def _i64(x: Any, what: str = "ids") -> np.ndarray:
    """A contiguous 1-D int64 numpy array over x (no copy when it already is one). Integers only: float
    ids (which a cast would truncate: 3.7 -> row 3) and booleans are a one-line PoolError."""
    if _is_tensor(x):
        torch = _torch()
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise PoolError(f"{what} must be integers, got a tensor of {x.dtype} (not truncated to rows)")
        if x.dtype != torch.int64 or not x.is_contiguous() or x.device.type != "cpu":
            x = x.to(device="cpu", dtype=torch.int64).contiguous()
        a = x.numpy()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "iu" and a.size:
            if a.dtype == object:  # (Python ints past 64 bits make an object array)
                big = next((v for v in a.reshape(-1) if isinstance(v, int) and not -(2**63) <= v < 2**63),
                           None)
                if big is not None:
                    raise PoolError(f"{what} must fit 64-bit integers, got {big}")
            raise PoolError(f"{what} must be integers, got {a.dtype} values (not truncated to rows)")
        a = np.ascontiguousarray(a, dtype=np.int64)
    if a.ndim != 1:
        a = a.reshape(-1)
    return a


def _int_array(x: Any, what: str) -> np.ndarray:
    """An int64 numpy array of x's shape; float and boolean values are a one-line PoolError (a cast
    would truncate them: table 1.9 -> table 1)."""
    a = np.asarray(x.detach().cpu() if _is_tensor(x) else x)
    if a.dtype.kind not in "iu" and a.size:
        raise PoolError(f"{what} must be integers, got {a.dtype} values (not truncated)")
    return a.astype(np.int64, copy=False)


def _flat_i64_kind(xs: Sequence[Any]) -> str | None:
    """"numpy" when every x is a 1-D C-contiguous int64 numpy array, "torch" when every x is a 1-D
    contiguous int64 CPU tensor, else None."""
    if all(
        isinstance(x, np.ndarray) and x.dtype == np.int64 and x.ndim == 1 and x.flags.c_contiguous for x in xs
    ):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and all(
        isinstance(x, torch.Tensor) and x.dtype is torch.int64 and x.dim() == 1 and x.is_contiguous()
        and x.device.type == "cpu" for x in xs
    ):
        return "torch"
    return None


def _f32(x: Any) -> np.ndarray:
    if _is_tensor(x):
        torch = _torch()
        x = x.detach()
        if x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu":
            x = x.to(device="cpu", dtype=torch.float32).contiguous()
        return x.numpy().reshape(-1)
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1)


def _bag_args_dtype() -> np.dtype:
    """recmg_bag_args as a numpy record (offsets and size from the cffi build of recmg.h, the layout's one
    home), so a table-batched call fills every table's arguments with a few vector operations."""
    fields = {"table": np.uint32, "mode": np.int32, "ids": np.uintp, "n_ids": np.uint64, "offsets": np.uintp,
              "n_bags": np.uint64, "weights": np.uintp, "out": np.uintp, "out_stride": np.uint64}
    return np.dtype({"names": list(fields), "formats": list(fields.values()),
                     "offsets": [ffi.offsetof("recmg_bag_args", f) for f in fields],
                     "itemsize": ffi.sizeof("recmg_bag_args")})


_BAG_ARGS = _bag_args_dtype()


def _ring_state_dtype() -> np.dtype:
    """recmg_ring_state as a numpy record (offsets and size from the cffi build of recmg.h)."""
    fields = {"pid": np.int32, "claims": np.uint32, "waiting": np.uint64, "drops": np.uint64,
              "capacity": np.uint64, "before_claim": np.uint64}
    return np.dtype({"names": list(fields), "formats": list(fields.values()),
                     "offsets": [ffi.offsetof("recmg_ring_state", f) for f in fields],
                     "itemsize": ffi.sizeof("recmg_ring_state")})


_RING_STATE = _ring_state_dtype()


def _from_nested(ids: Any, weights: Any) -> tuple[Any, Any, Any]:
    """A jagged nested input as torch's embedding_bag takes it: (ids, offsets, weights) of its values,
    its offsets read with include_last_offset (offsets given with it are ignored, as torch does);
    weights, if any, must be nested too."""
    if ids.dim() != 2:
        raise ValueError(f"input has to be a 2D nested tensor, but got one of dimension {ids.dim()}")
    if weights is not None:
        if not (_is_tensor(weights) and weights.is_nested):
            raise ValueError("If input is nested, then per_sample_weights must be nested if specified")
        wo, io = weights.offsets(), ids.offsets()
        if wo.shape != io.shape or not bool((wo == io).all()):  # (torch: the same jagged shape)
            raise ValueError("per_sample_weights (nested) must have the input's bags, one weight an id")
        weights = weights.values().reshape(-1)
    return ids.values().reshape(-1), ids.offsets(), weights


_F = TypeVar("_F", bound=Callable[..., Any])


def _native(method: _F) -> _F:
    """A method that calls into the library with the handle: it counts as a call in flight, which
    close() waits for (the library frees the handle; another thread's call would read freed memory),
    and it raises PoolError once close() has begun."""

    @functools.wraps(method)
    def call(self: Pool, *args: Any, **kwargs: Any) -> Any:
        calls = self._calls
        calls.append(None)  # (a deque's append and pop are atomic: no lock on the lookup path)
        try:
            if self._closing:  # checked after counting itself: close() either sees it or it sees close()
                raise PoolError(f"pool {self._name!r} is closed")
            return method(self, *args, **kwargs)
        finally:
            calls.pop()

    return call  # type: ignore[return-value]


class Pool:
    """A handle on a pool (see the module docstring). Use ``create`` or ``attach``; close when done.
    Its methods may be called from several threads; close() waits for the calls in flight."""

    def __init__(self, handle: Any, name: str, role: str, threads: int | None = None) -> None:
        self._calls: collections.deque[None] = collections.deque()  # one entry a call in flight
        self._closing = False  # close() has begun: no more calls
        self._h = handle
        self._name = name
        self._role = role
        self._finalizer = weakref.finalize(self, lib.recmg_close, handle)
        try:
            self._setup(handle, threads)
        except BaseException:
            self._closing = True
            self._finalizer()  # (the handle is this object's: nobody else can close it)
            self._h = None
            raise

    def _setup(self, handle: Any, threads: int | None) -> None:
        # threads=None means torch's thread count: taken now if torch is already loaded, else at the
        # first lookup (which builds tensors, so imports torch anyway); a daemon never pays for it.
        self._threads_pending = not threads
        if threads:
            self._check(lib.recmg_set_threads(handle, _int(threads, "threads", -(2**31), 2**31 - 1)))
        elif "torch" in sys.modules:
            self._default_threads()
        info = self._info()
        self._n_slots = int(info.n_slots)
        self._dtype_code = int(info.dtype)
        self._slow_kind = int(info.slow_kind)
        self._numa_node = int(info.numa_node)
        self._slow_path = ffi.string(info.slow_path).decode(errors="surrogateescape")
        self._n_rings = int(info.n_rings)
        self._ring_records = int(info.ring_records)
        ti = ffi.new("recmg_table_info *")
        tables = []
        for t in range(int(info.n_tables)):
            self._check(lib.recmg_get_table_info(handle, t, ti))
            tables.append(
                TableInfo(t, int(ti.rows), int(ti.dim), _DTYPE_NAMES[int(ti.dtype)], int(ti.row_bytes))
            )
        self._tables = tables
        self._dims = [t.dim for t in tables]
        self._rows = [t.rows for t in tables]

    # ------------------------------------------------------------------ lifetime
    @classmethod
    def create(
        cls,
        name: str,
        tables: Sequence[tuple[int, int]],
        slots: int,
        slow: str = "dram",
        dtype: str = "float32",
        mode: int = 0o600,
        ring_records: int = 65536,
        rings: int = 16,
        role: str = "app",
        io_uring: bool = True,
        direct: bool = True,
        threads: int | None = None,
        existing: str = "refuse",
    ) -> Pool:
        """Create a pool; fails if one of that name exists. All rows start as zeros (the slow tier).

        An SSD tier's file is created with its space reserved; an existing file is never truncated:
        existing="refuse" (default) fails, existing="reuse" keeps it and its rows (the tables of a pool
        whose shared memory is gone, after a reboot) if its size is the tables' size.

        threads: how many threads a multi-table ``embedding_bags`` call may use on a memory slow tier
        (default: torch.get_num_threads()). io_uring=False forces the preadv fallback; direct=False
        forbids O_DIRECT on the SSD tier."""
        if dtype not in _DTYPES:
            raise PoolError(f"bad dtype {dtype!r}: use 'float32' or 'float16'")
        if role not in _ROLES:
            raise PoolError(f"bad role {role!r}: use 'app' or 'daemon'")
        if existing not in ("refuse", "reuse"):
            raise PoolError(f"bad existing={existing!r}: use 'refuse' or 'reuse'")
        if not isinstance(slow, str):
            raise PoolError(f"bad slow tier {slow!r}: use 'dram', 'numa:N' or 'ssd:/path/to/file'")
        kind, node, path = parse_slow(slow)
        cname = _name(name)
        listed = hasattr(tables, "__len__") and hasattr(tables, "__iter__")
        if isinstance(tables, str | bytes) or not listed:
            raise PoolError(f"tables must be a list of (rows, dim), got {tables!r}")
        specs = ffi.new("recmg_table_spec[]", max(len(tables), 1))
        for i, spec in enumerate(tables):
            try:
                rows, dim = spec
            except (TypeError, ValueError):
                raise PoolError(f"table {i}: expected (rows, dim), got {spec!r}") from None
            specs[i].rows = _int(rows, f"table {i}: rows", 1, _U64)
            specs[i].dim = _int(dim, f"table {i}: dim", 1, _U32)
        o = ffi.new("recmg_create_opts *")
        o.n_tables = len(tables)
        o.tables = specs
        o.n_slots = _int(slots, "slots", 0, _U64)
        o.dtype = _DTYPES[dtype]
        o.slow_kind = kind
        o.numa_node = node
        cpath = ffi.new("char[]", path.encode())
        o.slow_path = cpath
        o.mode = _int(mode, "mode", 0, 0o777)  # (permission bits: the library keeps only these)
        o.ring_records = _int(ring_records, "ring_records", 0, _U32)
        o.n_rings = _int(rings, "rings", 0, _U32)
        o.role = _ROLES[role]
        o.flags = _flags(io_uring, direct) | (lib.RECMG_F_REUSE_SLOW if existing == "reuse" else 0)
        out = ffi.new("recmg_pool **")
        err = ffi.new("char[512]")
        rc = lib.recmg_create(cname, o, out, err, 512)
        if rc:
            _raise(rc, ffi.string(err).decode(errors="replace"))
        try:
            pool = cls(out[0], name, role, threads)
        except BaseException:  # (a bad thread count): the pool this call made goes, its new file too
            Pool.unlink(name)
            if kind == lib.RECMG_SLOW_SSD and existing == "refuse":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        log.info(
            "created pool %s: %d tables, %d slots, slow=%s, dtype=%s", name, len(tables), slots, slow, dtype
        )
        return pool

    @classmethod
    def attach(
        cls,
        name: str,
        role: str = "app",
        io_uring: bool = True,
        direct: bool = True,
        threads: int | None = None,
        wait: bool = True,
    ) -> Pool:
        """Attach to an existing pool. An app takes an access ring of its own; a daemon takes none.
        An object still being created (size 0, no header yet, or not ready) is waited for up to 2 s (its
        creator's window), unless not WAIT: then it fails at once with PoolBusyError."""
        if role not in _ROLES:
            raise PoolError(f"bad role {role!r}: use 'app' or 'daemon'")
        out = ffi.new("recmg_pool **")
        err = ffi.new("char[512]")
        flags = _flags(io_uring, direct) | (0 if wait else lib.RECMG_F_NO_WAIT)
        rc = lib.recmg_attach(_name(name), _ROLES[role], flags, out, err, 512)
        if rc:
            _raise(rc, ffi.string(err).decode(errors="replace"))
        log.debug("attached pool %s as %s", name, role)
        return cls(out[0], name, role, threads)

    @staticmethod
    def unlink(name: str) -> None:
        """Remove the shared-memory object of a pool by name (handles stay valid until closed)."""
        err = ffi.new("char[512]")
        rc = lib.recmg_destroy(_name(name), err, 512)
        if rc:
            _raise(rc, ffi.string(err).decode(errors="replace"))

    def close(self) -> None:
        """Detach (releases this process's ring). Idempotent. Calls that other threads have in flight
        finish first; calls made from then on raise PoolError."""
        if self._closing:
            return
        self._closing = True
        while self._calls:  # the calls in flight finish (a lookup: milliseconds)
            time.sleep(0.0005)
        self._finalizer()
        self._h = None

    def destroy(self) -> None:
        """Close and unlink the shared-memory object (an SSD slow-tier file is left in place)."""
        self.close()
        try:
            Pool.unlink(self._name)
        except PoolError:
            log.debug("pool %s was already unlinked", self._name)
        log.info("destroyed pool %s", self._name)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._h is None else f"{len(self._tables)} tables, {self._n_slots} slots"
        return f"Pool({self._name!r}, role={self._role!r}, slow={self.slow!r}, {state})"

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self._name

    @property
    def role(self) -> str:
        return self._role

    @property
    def tables(self) -> list[TableInfo]:
        return list(self._tables)

    @property
    def n_slots(self) -> int:
        return self._n_slots

    @_native
    def lookup_kernel(self, table: int) -> str:
        """The bag kernel this handle's sum and mean lookups of ``table`` use: "avx512f", "avx2" or
        "generic" (see recmg_lookup_kernel in native/include/recmg.h)."""
        self._table(table)
        return ffi.string(lib.recmg_lookup_kernel(self._handle, table)).decode()

    @property
    def dtype(self) -> str:
        return _DTYPE_NAMES[self._dtype_code]

    @property
    def slow(self) -> str:
        if self._slow_kind == 1:
            return f"numa:{self._numa_node}"
        if self._slow_kind == 2:
            return f"ssd:{self._slow_path}"
        return "dram"

    @property
    def n_rings(self) -> int:
        return self._n_rings

    @property
    def ring_index(self) -> int:
        """This handle's ring, -1 for a daemon."""
        return int(self._info().ring_index)

    # ------------------------------------------------------------------ helpers
    @property
    def _handle(self) -> Any:
        if self._h is None:
            raise PoolError(f"pool {self._name!r} is closed")
        return self._h

    def _check(self, rc: int) -> int:
        if rc < 0:
            _raise(rc, ffi.string(lib.recmg_errmsg(self._h)).decode(errors="replace"))
        return rc

    @_native
    def _info(self) -> Any:
        info = ffi.new("recmg_pool_info *")
        self._check(lib.recmg_info(self._handle, info))
        return info

    def _table(self, table: int) -> int:
        try:
            t = operator.index(table)
        except TypeError:
            raise PoolError(f"table must be an integer, got {table!r}") from None
        if not 0 <= t < len(self._tables):
            raise RowIndexError(
                f"table {table} out of range (pool {self._name!r} has {len(self._tables)} tables)"
            )
        return t

    @_native
    def set_threads(self, threads: int) -> None:
        """Threads a lookup may use on a memory slow tier (several tables, or one table's bags)."""
        self._check(lib.recmg_set_threads(self._handle, _int(threads, "threads", -(2**31), 2**31 - 1)))
        self._threads_pending = False

    @_native
    def set_lock_timeout(self, ms: int) -> None:
        """How long this handle's writes (fill, evict, write_rows, free_slots) wait for the writer lock
        another process holds before they raise PoolLockedError (default: 100 ms for a daemon, 2000 ms
        for an app, or RECMG_LOCK_TIMEOUT_MS from the environment at attach)."""
        self._check(lib.recmg_set_lock_timeout(self._handle, _int(ms, "lock timeout (ms)", 0, _U32)))

    @_native
    def _default_threads(self) -> None:
        """threads=None: as many lookup threads as torch uses (imports torch if need be)."""
        self._check(lib.recmg_set_threads(self._handle, max(1, _torch().get_num_threads())))
        self._threads_pending = False

    # ------------------------------------------------------------------ slow tier
    @_native
    def write_rows(self, table: int, rows: Any, values: Any) -> None:
        """Write rows to the slow tier (the truth) and refresh any resident copy.

        Row by row: a lookup or read_rows meanwhile reads each row whole, old or new, never a mix; also
        if this process is stopped or killed inside a row (that row is then read new, from where it was
        staged, and a dead writer's is finished by the next writer or ``repair``), except rows over 4096
        bytes of a memory slow tier, which are then read as the slow tier holds them."""
        t = self._table(table)
        r = _i64(rows, "rows")
        dim = self._dims[t]
        v = values.detach().cpu().numpy() if _is_tensor(values) else np.asarray(values)
        if v.ndim == 1 and len(r) == 1:
            v = v.reshape(1, -1)
        if v.shape != (len(r), dim):
            raise PoolError(
                f"write_rows: values have shape {tuple(v.shape)}; table {t} needs ({len(r)}, {dim})"
            )
        v = np.ascontiguousarray(v, dtype=_NP_DTYPES[self._dtype_code])
        written = ffi.new("uint64_t *")
        rc = lib.recmg_write_rows_ex(
            self._handle, t, ffi.from_buffer("int64_t[]", r), len(r), ffi.from_buffer(v), written
        )
        if rc == lib.RECMG_EIO:
            msg = ffi.string(lib.recmg_errmsg(self._handle)).decode(errors="replace")
            raise PoolWriteError(msg, int(written[0]))
        self._check(rc)

    @_native
    def read_rows(self, table: int, rows: Any) -> np.ndarray:
        """Rows from the slow tier, in the storage dtype, shape (len(rows), dim)."""
        t = self._table(table)
        r = _i64(rows, "rows")
        out = np.empty((len(r), self._dims[t]), dtype=_NP_DTYPES[self._dtype_code])
        self._check(
            lib.recmg_read_rows(
                self._handle, t, ffi.from_buffer("int64_t[]", r), len(r), ffi.from_buffer(out)
            )
        )
        return out

    # ------------------------------------------------------------------ lookups (app)
    def _bag_args(
        self,
        slot: Any,
        table: int,
        ids: Any,
        offsets: Any,
        mode: str,
        weights: Any,
        include_last_offset: bool,
        keep: list[Any],
    ) -> torch.Tensor:
        t = self._table(table)
        m = _MODES.get(mode)
        if m is None:
            raise PoolError(f"bad mode {mode!r}: use 'sum', 'mean' or 'max'")
        if _is_tensor(ids) and ids.is_nested:
            ids, offsets, weights = _from_nested(ids, weights)
            include_last_offset = True
        ndim = ids.dim() if _is_tensor(ids) else np.ndim(ids)
        if ndim == 2:
            if offsets is not None:
                raise ValueError("offsets has to be None if input is 2D")
            shape = ids.shape
            n_bags, per = int(shape[0]), int(shape[1])
            idv = _i64(ids)
            off = (
                np.arange(0, n_bags * per + 1, max(per, 1), dtype=np.int64)
                if per
                else np.zeros(n_bags + 1, dtype=np.int64)
            )
        elif ndim == 1:
            if offsets is None:
                raise ValueError("offsets has to be a 1D Tensor but got None")
            if (offsets.dim() if _is_tensor(offsets) else np.ndim(offsets)) != 1:  # (as torch: not flattened)
                raise ValueError("offsets has to be a 1D Tensor")
            idv = _i64(ids)
            o = _i64(offsets, "offsets")
            n_all = len(idv)
            if include_last_offset:
                off = o
                n_bags = len(o) - 1
                if n_bags < 0:
                    raise ValueError("offsets must have at least one entry with include_last_offset")
                if not n_bags:
                    if int(o[0]) != 0:  # (named here: the truncation below would hide the ids' count)
                        raise PoolError(f"offsets must start at 0, got {int(o[0])} (include_last_offset, "
                                        f"no bags, {n_all} ids)")
                    idv = idv[:0]  # no bags: torch reads no id
                elif int(o[-1]) != n_all:  # (torch's modes disagree on the ids after it: refused)
                    raise PoolError(f"with include_last_offset the last offset ({int(o[-1])}) must be the "
                                    f"number of ids ({n_all})")
            else:
                n_bags = len(o)
                last = int(o[-1]) if n_bags else 0
                if last < 0:
                    raise PoolError(f"offsets[{n_bags - 1}] = {last} is negative")
                if last > n_all:
                    raise PoolError(f"offsets[{n_bags - 1}] = {last} is past the end of the {n_all} ids")
                if not n_bags:
                    idv = idv[:0]  # no bags: torch reads no id
                off = np.empty(n_bags + 1, dtype=np.int64)
                off[:n_bags] = o
                off[n_bags] = len(idv)
        else:
            raise ValueError(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {ndim}")
        torch = _torch()
        out = torch.empty((n_bags, self._dims[t]), dtype=torch.float32)
        slot.table = t
        slot.mode = m
        idb = ffi.from_buffer("int64_t[]", idv)
        offb = ffi.from_buffer("int64_t[]", off)
        slot.ids = idb
        slot.n_ids = len(idv)
        slot.offsets = offb
        slot.n_bags = n_bags
        keep.extend((idv, off, idb, offb))
        if weights is not None:
            wshape = tuple(weights.shape) if hasattr(weights, "shape") else np.shape(weights)
            ishape = tuple(ids.shape) if hasattr(ids, "shape") else np.shape(ids)
            if wshape != ishape:  # (as torch: the input's shape, not its size: (n, 1) weights of n ids too)
                raise ValueError(f"per_sample_weights has shape {wshape}; input has {ishape}")
            w = _f32(weights)
            n_all = int(np.prod(ids.shape)) if ndim == 2 else n_all
            if len(w) != n_all:
                raise ValueError(f"per_sample_weights has {len(w)} entries; expected one per id ({n_all})")
            w = w[: len(idv)]
            wb = ffi.from_buffer("float[]", w)
            keep.extend((w, wb))
            slot.weights = wb
        else:
            slot.weights = ffi.NULL
        slot.out = ffi.cast("float *", out.data_ptr())
        return out

    @_native
    def embedding_bag(
        self,
        table: int,
        ids: Any,
        offsets: Any = None,
        mode: str = "sum",
        weights: Any = None,
        include_last_offset: bool = False,
    ) -> torch.Tensor:
        """torch.nn.functional.embedding_bag over one table of the pool; returns float32 (n_bags, dim).

        ids 1-D with offsets (start of each bag), 2-D (bags of equal length) without, or a jagged
        nested 2-D tensor (as torch: its offsets with include_last_offset). Every id goes
        to this process's access ring. Out-of-range ids raise RowIndexError (an IndexError)."""
        handle = self._handle
        if self._threads_pending:
            self._default_threads()
        if weights is None and not include_last_offset:
            out = self._bag_tensors(handle, table, ids, offsets, mode)
            if out is not None:
                return out
        args = ffi.new("recmg_bag_args *")
        keep: list[Any] = []
        out = self._bag_args(args, table, ids, offsets, mode, weights, include_last_offset, keep)
        self._check(lib.recmg_embedding_bags(handle, 1, args))
        return out

    def _bag_tensors(self, handle: Any, table: Any, ids: Any, offsets: Any, mode: str) -> torch.Tensor | None:
        """embedding_bag for the shape a model's forward passes (what TieredEmbeddingBag gets): ids and
        offsets 1-D contiguous int64 CPU tensors, no weights, an int table, a known mode, at least one id
        and one bag. The ids are read in place and only the offsets are copied (one entry longer), so
        the call costs about half the general path's Python time. None for any other shape: the
        general path then checks (and refuses) it."""
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        tensor, i64 = torch.Tensor, torch.int64
        if not (type(ids) is tensor and type(offsets) is tensor and ids.dtype is i64 and offsets.dtype is i64
                and ids.is_cpu and offsets.is_cpu and ids.layout is torch.strided
                and offsets.layout is torch.strided and ids.dim() == 1 and offsets.dim() == 1
                and ids.is_contiguous() and offsets.is_contiguous()):
            return None
        m = _MODES.get(mode)
        dims = self._dims
        n_ids, n_bags = ids.shape[0], offsets.shape[0]
        if m is None or type(table) is not int or not 0 <= table < len(dims) or not n_ids or not n_bags:
            return None
        off = np.empty(n_bags + 1, dtype=np.int64)
        off[:n_bags] = offsets.numpy()
        off[n_bags] = n_ids
        if not 0 <= off[n_bags - 1] <= n_ids:
            return None
        out = torch.empty((n_bags, dims[table]), dtype=torch.float32)
        self._check(lib.recmg_embedding_bag(handle, table, ffi.cast("int64_t *", ids.data_ptr()), n_ids,
                                            ffi.from_buffer("int64_t[]", off), n_bags, m, ffi.NULL,
                                            ffi.cast("float *", out.data_ptr())))
        return out

    @_native
    def embedding_bags(
        self,
        tables: Sequence[int],
        ids: Sequence[Any],
        offsets: Sequence[Any] | None = None,
        mode: str | Sequence[str] = "sum",
        weights: Sequence[Any | None] | None = None,
    ) -> list[torch.Tensor]:
        """Several tables' embedding bags in one native call (less per-call overhead).

        mode: one for every bag, or one per bag; weights: None, or one entry (None or weights) per bag."""
        n = len(tables)
        modes = [mode] * n if isinstance(mode, str) else list(mode)
        if (
            len(ids) != n
            or len(modes) != n
            or (offsets is not None and len(offsets) != n)
            or (weights is not None and len(weights) != n)
        ):
            raise ValueError("tables, ids, offsets, modes and weights must have the same length")
        handle = self._handle
        if self._threads_pending:
            self._default_threads()
        if offsets is not None and (weights is None or all(w is None for w in weights)):
            outs = self._bags_vectorised(tables, ids, offsets, modes)
            if outs is not None:
                return outs
        args = ffi.new("recmg_bag_args[]", max(n, 1))
        keep: list[Any] = []
        outs = [
            self._bag_args(
                args[k],
                tables[k],
                ids[k],
                None if offsets is None else offsets[k],
                modes[k],
                None if weights is None else weights[k],
                False,
                keep,
            )
            for k in range(n)
        ]
        self._check(lib.recmg_embedding_bags(handle, n, args))
        return outs

    def _bags_vectorised(
        self, tables: Sequence[int], ids: Sequence[Any], offsets: Sequence[Any], modes: Sequence[str]
    ) -> list[torch.Tensor] | None:
        """embedding_bags with its arguments built in a few vector operations, for the common shape: every
        ids and offsets a 1-D contiguous int64 array (all CPU tensors or all numpy arrays), the same number
        of bags and the same dim in every table, no weights (the general path builds them table by table,
        ~9 us a table). None when the arguments take another shape (the general path then checks and
        builds them)."""
        n = len(tables)
        if n == 0:
            return None
        codes = np.fromiter((_MODES.get(m, -1) for m in modes), np.int32, n)
        if (codes < 0).any():
            return None
        kind = _flat_i64_kind((*ids, *offsets))
        if kind == "numpy":
            ptrs = [x.__array_interface__["data"][0] for x in ids]
            lens = np.fromiter((x.size for x in ids), np.int64, n)
            sizes = {o.size for o in offsets}
        elif kind == "torch":
            ptrs = [x.data_ptr() for x in ids]
            lens = np.fromiter((x.numel() for x in ids), np.int64, n)
            sizes = {o.numel() for o in offsets}
        else:
            return None
        if len(sizes) != 1:
            return None
        bags = sizes.pop()
        t = np.asarray(tables, dtype=np.int64)
        if t.ndim != 1 or len(t) != n or (t < 0).any() or (t >= len(self._tables)).any():
            return None
        dims = np.asarray(self._dims, dtype=np.int64)[t]
        dim = int(dims[0])
        if (dims != dim).any():
            return None
        off = np.empty((n, bags + 1), dtype=np.int64)  # each table's offsets and its end
        off[:, :bags] = np.stack(offsets) if kind == "numpy" else _torch().stack(tuple(offsets)).numpy()
        off[:, bags] = lens
        out = _torch().empty((n, bags, dim), dtype=_torch().float32)
        self._bags_call(n, table=t, mode=codes, ids=ptrs, n_ids=lens,
                        offsets=off.ctypes.data + 8 * (bags + 1) * np.arange(n), n_bags=bags,
                        out=out.data_ptr() + 4 * bags * dim * np.arange(n))
        return list(out.unbind(0))  # (ids, off and out lived until the call returned)

    def embedding_bags_packed(
        self,
        tables: Sequence[int],
        values: Any,
        offsets: Any,
        batch: int,
        mode: str | Sequence[str] = "sum",
        weights: Any | None = None,
    ) -> torch.Tensor:
        """Table-batched bags in the layout of a KeyedJaggedTensor or FBGEMM's TBE, in one native call.

        ``values``: every table's ids, table after table; ``offsets``: ``len(tables) * batch + 1`` bag
        starts into ``values`` (table k's bag b starts at ``offsets[k * batch + b]``); ``weights``: None or
        one per value (mode 'sum'). Returns one ``[batch, sum of the tables' dims]`` float32 tensor, table
        k's bags in its columns (the output TorchRec's KeyedTensor holds), written in place: no per-table
        arguments, outputs or concatenation in Python."""
        o = _i64(offsets, "offsets")
        n = len(tables)
        if batch < 0 or len(o) != n * batch + 1:
            raise ValueError(f"offsets has {len(o)} entries; expected len(tables) * batch + 1 = "
                             f"{n * batch + 1}")
        if batch and n:
            windows = np.lib.stride_tricks.sliding_window_view(o, batch + 1)[::batch][:n]
        else:  # no bags (or no tables): every table's one offset is the only one
            windows = np.broadcast_to(o[:1], (n, 1)) if n else np.zeros((0, batch + 1), dtype=np.int64)
        return self.embedding_bags_windows(tables, values, windows, mode, weights)

    def embedding_bags_windows(self, tables: Any, values: Any, windows: Any,
                               mode: str | Sequence[str] = "sum", weights: Any | None = None) -> torch.Tensor:
        """Bags of table ``tables[k]`` at ``windows[k]`` (``batch + 1`` absolute offsets into ``values``)
        into one ``[batch, sum of dims]`` tensor (also the TorchRec front's path, whose features may come
        in another order than its tables)."""
        tables = _int_array(tables, "tables").reshape(-1)
        values = _i64(values)
        windows = _int_array(windows, "offsets")
        n = len(tables)
        if windows.ndim != 2 or len(windows) != n or windows.shape[1] < 1:
            raise ValueError(f"windows must be one row of batch + 1 offsets a table, got {windows.shape}")
        if not n:
            return _torch().zeros((windows.shape[1] - 1, 0), dtype=_torch().float32)
        bad = tables[(tables < 0) | (tables >= len(self._tables))]
        if len(bad):
            self._table(int(bad[0]))  # the one-line error
        batch = windows.shape[1] - 1 if n else 0
        lo = windows[:, 0] if n else np.zeros(0, np.int64)
        hi = windows[:, -1] if n else np.zeros(0, np.int64)
        if n and (lo.min() < 0 or hi.max() > len(values) or (hi < lo).any()):
            raise ValueError(f"offsets must lie in [0, {len(values)}] and not decrease")
        rel = windows - lo[:, None]  # each table's offsets from its first id (contiguous, one array)
        modes = [mode] * n if isinstance(mode, str) else list(mode)
        if len(modes) != n:
            raise ValueError("mode: one for every table, or one for all")
        try:
            codes = np.fromiter((_MODES[m] for m in modes), np.int32, n)
        except KeyError as exc:
            raise PoolError(f"bad mode {exc.args[0]!r}: use 'sum', 'mean' or 'max'") from None
        dims = np.asarray(self._dims, dtype=np.int64)[tables]
        width = int(dims.sum())
        torch = _torch()
        out = torch.empty((batch, width), dtype=torch.float32)
        if self._threads_pending:
            self._default_threads()
        w = None
        if weights is not None:
            w = _f32(weights)
            if len(w) != len(values):
                raise ValueError(f"weights has {len(w)} entries; expected one per value ({len(values)})")
        self._bags_call(n, table=tables, mode=codes, ids=values.ctypes.data + 8 * lo, n_ids=hi - lo,
                        offsets=rel.ctypes.data + 8 * (batch + 1) * np.arange(n), n_bags=batch,
                        weights=0 if w is None else w.ctypes.data + 4 * lo,
                        out=out.data_ptr() + 4 * (np.cumsum(dims) - dims), out_stride=width)
        return out  # (values, rel and w lived until the call returned)

    @_native
    def _bags_call(self, n: int, **fields: Any) -> None:
        """One recmg_embedding_bags call over n arguments, each field of recmg_bag_args (by name) given
        for all n at once (a number or n of them); what the addresses point to lives until it returns."""
        args = ffi.new("recmg_bag_args[]", max(n, 1))
        rec = np.frombuffer(ffi.buffer(args), dtype=_BAG_ARGS)[:n]
        for name, value in fields.items():
            rec[name] = value
        self._check(lib.recmg_embedding_bags(self._handle, n, args))

    @_native
    def end_batch(self) -> None:
        """A batch boundary into this process's ring."""
        self._check(lib.recmg_end_batch(self._handle))

    @_native
    def hint(self, table: int, rows: Any) -> None:
        """Hint records (rows the app expects to look up in the next batch) into this process's ring."""
        t = self._table(table)
        r = _i64(rows, "rows")
        self._check(lib.recmg_hint(self._handle, t, ffi.from_buffer("int64_t[]", r), len(r)))

    # ------------------------------------------------------------------ fast tier (daemon)
    @_native
    def fill_keys(self, keys: Any) -> int:
        """Copy rows (keys table << 40 | row) from the slow tier into free slots; returns how many were
        filled (resident keys are skipped). Raises PoolError if there are fewer free slots than keys."""
        k = _i64(keys, "keys")
        return self._check(lib.recmg_fill_keys(self._handle, ffi.from_buffer("int64_t[]", k), len(k)))

    @_native
    def evict_keys(self, keys: Any) -> int:
        """Free the slots of resident keys; returns how many were evicted."""
        k = _i64(keys, "keys")
        return self._check(lib.recmg_evict_keys(self._handle, ffi.from_buffer("int64_t[]", k), len(k)))

    def fill(self, table: int, rows: Any) -> int:
        t = self._table(table)
        return self.fill_keys((np.int64(t) << ROW_BITS) | _i64(rows, "rows"))

    def evict(self, table: int, rows: Any) -> int:
        t = self._table(table)
        return self.evict_keys((np.int64(t) << ROW_BITS) | _i64(rows, "rows"))

    @_native
    def resident_keys(self) -> np.ndarray:
        """Keys held by the fast tier, read from the slot tags (how a restarted daemon rebuilds)."""
        out = np.empty(max(self._n_slots, 1), dtype=np.int64)
        n = self._check(lib.recmg_resident_keys(self._handle, ffi.from_buffer("int64_t[]", out), len(out)))
        return out[: min(n, len(out))].copy()

    @_native
    def free_slots(self) -> int:
        return self._check(lib.recmg_free_slots(self._handle))

    @_native
    def repairs(self) -> int:
        """How many times rows left the fast tier other than by a daemon's evictions (a writer that died
        in the middle of a change, copies a writer dropped); a daemon that sees it change rebuilds its
        record of what is resident. Never waits."""
        return self._check(lib.recmg_repairs(self._handle))

    @_native
    def repair(self) -> bool:
        """If the writer lock's holder is dead, take it over and repair the fast tier now (never waits
        for a live holder); whether it repaired."""
        return bool(self._check(lib.recmg_repair(self._handle)))

    @_native
    def writer_holder(self) -> int:
        """The pid of the live process holding the pool's writer lock, 0 when it is free (or its holder
        is dead: the next write takes it over). Never waits."""
        return self._check(lib.recmg_writer_holder(self._handle))

    # ------------------------------------------------------------------ rings and counters
    @_native
    def ring_table(self, first: int = 0, count: int | None = None) -> np.ndarray:
        """The rings' pid (0 if free), claims, waiting, drops, capacity and before_claim, in ring order:
        a numpy record array (recmg_ring_state's layout; recmg.h says what each means), from one native
        call; every ring, or with ``first`` and ``count`` rings first .. first + count - 1 (as many as
        the pool has)."""
        i = _int(first, "first", 0, _U32)
        want = self._n_rings if count is None else _int(count, "count", 0, _U32)
        out = np.zeros(max(0, min(want, self._n_rings - i)), dtype=_RING_STATE)
        buf = ffi.from_buffer("recmg_ring_state[]", out) if len(out) else ffi.NULL
        n = self._check(lib.recmg_get_rings(self._handle, i, buf, len(out)))  # (first past the end: refused)
        return out[:n]

    def rings(self) -> list[RingInfo]:
        """Every ring's description (ring_table's, one object a ring)."""
        t = self.ring_table()
        return [RingInfo(i, *row) for i, row in enumerate(zip(t["pid"].tolist(), t["waiting"].tolist(),
                                                                t["drops"].tolist(), t["capacity"].tolist(),
                                                                strict=True))]

    @_native
    def drain_ring(self, index: int, max_records: int | None = None) -> np.ndarray:
        """Take up to max_records records (uint64 words) from a ring, oldest first."""
        i = _int(index, "ring", 0, _U32)
        if max_records is None:  # (a ring out of range: the library's one-line error)
            cap = self._ring_records if i < self._n_rings else 0
        else:
            cap = _int(max_records, "max_records", 0, 2**63 - 1)
        out = np.empty(cap, dtype=np.uint64)
        n = self._check(lib.recmg_drain_ring(self._handle, i, ffi.from_buffer("uint64_t[]", out), len(out)))
        return out[:n]

    @_native
    def release_ring(self, index: int) -> None:
        """Free the ring of a dead app (records still waiting stay drainable)."""
        self._check(lib.recmg_release_ring(self._handle, _int(index, "ring", 0, _U32)))

    @_native
    def counters(self) -> dict[str, list[dict[str, int]]]:
        """Per-table and per-process counters: lookups, unique, hits, on_demand, ring_drops, slow_bytes."""
        c = ffi.new("recmg_counters *")
        tables = []
        for t in range(len(self._tables)):
            self._check(lib.recmg_table_counters(self._handle, t, c))
            tables.append({"table": t, **{f: int(getattr(c, f)) for f in _COUNTER_FIELDS}})
        procs = []
        for r in self.rings():
            self._check(lib.recmg_ring_counters(self._handle, r.index, c))
            d = {f: int(getattr(c, f)) for f in _COUNTER_FIELDS}
            if r.pid or any(d.values()):
                procs.append({"ring": r.index, "pid": r.pid, **d})
        return {"tables": tables, "processes": procs}

    @_native
    def reset_counters(self) -> None:
        self._check(lib.recmg_reset_counters(self._handle))

    @_native
    def stats(self) -> dict[str, Any]:
        """A summary: layout, this process's counters, per-table counters."""
        info = self._info()
        c = ffi.new("recmg_counters *")
        own: dict[str, int] = {}
        if info.ring_index >= 0:
            self._check(lib.recmg_ring_counters(self._handle, info.ring_index, c))
            own = {f: int(getattr(c, f)) for f in _COUNTER_FIELDS}
        return {
            "name": self._name,
            "role": self._role,
            "slow": self.slow,
            "dtype": self.dtype,
            "tables": len(self._tables),
            "n_slots": self._n_slots,
            "generation": int(info.generation),
            "io_backend": ffi.string(info.io_backend).decode(),
            "lookup_kernels": [self.lookup_kernel(t) for t in range(len(self._tables))],
            "direct_io": bool(info.direct_io),
            "io_align": int(info.io_align),
            "ring": int(info.ring_index),
            "total_bytes": int(info.total_bytes),
            "meta_bytes": int(info.meta_bytes),
            "table_bytes": int(info.table_bytes),
            "slot_bytes": int(info.slot_bytes),
            "process": own,
            "per_table": self.counters()["tables"],
        }

    # ------------------------------------------------------------------ NUMA page placement
    def slow_nodes(self, table: int, rows: Any) -> np.ndarray:
        """The NUMA node of the page holding each row of the slow tier (negative errno if not placed)."""
        return self._node_query(lib.recmg_slow_nodes, table, _i64(rows, "rows"))

    @_native
    def _node_query(self, fn: Any, table: int, ids: np.ndarray) -> np.ndarray:
        """One node per id (a row or a page of ``table``) from a native query ``fn``."""
        t = self._table(table)
        out = np.empty(len(ids), dtype=np.int32)
        self._check(fn(self._handle, t, ffi.from_buffer("int64_t[]", ids), len(ids),
                       ffi.from_buffer("int32_t[]", out)))
        return out

    @_native
    def move_slow_rows(self, table: int, first: int, count: int, node: int) -> int:
        """Move the slow-tier pages of rows [first, first+count) to a node; returns pages now there.

        Only pages no other process maps move (MPOL_MF_MOVE); :meth:`move_slow_pages` with
        ``move_all`` (CAP_SYS_NICE) moves shared ones too, as page mode does."""
        return self._check(
            lib.recmg_move_slow_rows(self._handle, self._table(table), int(first), int(count), int(node))
        )

    # ------------------------------------------------------------------ page mode (whole pages)
    @_native
    def slow_pages(self, table: int) -> int:
        """Pages (of PAGE_BYTES) of a table's slow tier: page k holds bytes [k * 4096, (k+1) * 4096)
        of its rows (each table's region starts on a page boundary). Memory slow tiers only."""
        return self._check(lib.recmg_slow_pages(self._handle, self._table(table)))

    def slow_page_nodes(self, table: int, pages: Any) -> np.ndarray:
        """The NUMA node of each listed page of a table's slow tier (a negative errno if not placed)."""
        return self._node_query(lib.recmg_slow_page_nodes, table, _i64(pages, "pages"))

    @_native
    def move_slow_pages(
        self,
        table: int,
        pages: Any,
        node: int,
        *,
        move_all: bool = True,
        strict: bool = False,
        busy_retries: int = 3,
    ) -> PageMove:
        """Move the listed pages of a table's slow tier to a node with one move_pages(2) call (plus up
        to ``busy_retries`` more for the pages reported -EBUSY).

        move_all: MPOL_MF_MOVE_ALL, which also moves pages other processes (the apps) map and needs
        CAP_SYS_NICE; without the capability the call falls back to MPOL_MF_MOVE (the result's
        ``move_all`` is then False and shared pages come back -EACCES), or with ``strict`` raises."""
        t = self._table(table)
        p = _i64(pages, "pages")
        status = np.empty(len(p), dtype=np.int32)
        st = ffi.new("recmg_move_stats *")
        flags = (lib.RECMG_MOVE_ALL if move_all else 0) | (lib.RECMG_MOVE_STRICT if strict else 0)
        moved = self._check(
            lib.recmg_move_slow_pages(
                self._handle, t, ffi.from_buffer("int64_t[]", p), len(p), int(node), flags,
                int(busy_retries), ffi.from_buffer("int32_t[]", status), st,
            )
        )
        return PageMove(
            status=status, moved=int(moved), calls=int(st.calls), requested=int(st.requested),
            busy_retries=int(st.busy_retries), move_all=bool(st.move_all),
        )


def _flags(io_uring: bool, direct: bool) -> int:
    f = 0
    if not io_uring:
        f |= lib.RECMG_F_NO_IO_URING
    if not direct:
        f |= lib.RECMG_F_NO_DIRECT
    return f


def __getattr__(name: str) -> Any:
    """Names whose import needs torch, resolved on first use: ``TieredEmbeddingBag``."""
    if name == "TieredEmbeddingBag":
        from recmgd.pool_torch import TieredEmbeddingBag  # noqa: PLC0415 - imports torch

        return TieredEmbeddingBag
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"TieredEmbeddingBag"})
