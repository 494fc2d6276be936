"""The caching model's inference in C (``native/policy/cachemodel.c`` in ``recmgd._simcore``).

At one step (~18 distinct rows) numpy's per-call overhead, not arithmetic, bounds the reference path
(features.RowHistory's numpy methods + nets.NumpyCacheNet: about 25 small array operations a step). Here
one C call featurises a step's rows and runs the MLP (and, with ``update=True``, records their use), on
the very records the numpy path indexes (RowHistory.rows, one 24-byte record a row; a RowHistory built
with ``native=True`` hands C a pointer to them), so both paths read and write one state and agree to
float rounding (the features and the state bit for bit where numpy's float32 log1p is libm's). The numpy
path stays the training path and the reference (tests/test_models_fastinfer.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recmgd.errors import ModelError
from recmgd.models.features import (
    COUNT_MAX,
    FEATURE_VERSION,
    GAP_MAX,
    HALF_LIVES,
    N_FEATURES,
    N_GAPS,
    N_TABLE_SLOTS,
    NEVER,
    ROW_DTYPE,
    RowHistory,
    check_step,
)
from recmgd.models.numpy_nets import NumpyCacheNet
from recmgd.simcore import ffi, lib

_LAYOUT = (FEATURE_VERSION, N_FEATURES, N_GAPS, len(HALF_LIVES), ROW_DTYPE.itemsize, NEVER, GAP_MAX,
           COUNT_MAX)
if (lib.CM_FEATURE_VERSION, lib.CM_N_FEATURES, lib.CM_N_GAPS, lib.CM_N_HALF_LIVES, ffi.sizeof("cm_row"),
        lib.CM_NEVER, lib.CM_GAP_MAX, lib.CM_COUNT_MAX) != _LAYOUT:  # pragma: no cover - a stale build
    raise ImportError("recmgd._simcore's caching model has another feature layout than "
                      "recmgd.models.features; rebuild it (`make native`)")


def _check(rc: int, what: str) -> None:
    if rc == 0:
        return
    if rc == lib.SC_ENOMEM:
        raise MemoryError(what)
    if rc == lib.SC_EBADID:
        raise IndexError(f"{what}: a row id outside the history")
    raise ValueError(f"{what}: bad argument (code {rc})")


def _ids_buf(ids: np.ndarray) -> tuple[np.ndarray, Any]:
    if ids.dtype != np.int64 or not ids.flags.c_contiguous:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
    return ids, ffi.from_buffer("int64_t[]", ids)


class NativeRows:
    """The ``cm_rows`` view of a RowHistory's records; rebound by the history whenever it grows."""

    def __init__(self, hist: RowHistory) -> None:
        self._hist = hist
        self.c = ffi.new("cm_rows *")
        self.c.n_table_slots = N_TABLE_SLOTS
        self.c.base = 0  # the history's steps are its records' (RowHistory.MAX_STEP)
        rates = np.log(2.0) / np.asarray(HALF_LIVES, np.float32)  # as RowHistory._decay_rate
        for k, r in enumerate(rates.tolist()):
            self.c.rate[k] = r
        lut = lib.cm_lut_new()
        if lut == ffi.NULL:
            raise MemoryError("cm_lut_new")
        self._lut = ffi.gc(lut, lib.cm_lut_free)
        self.c.lut = self._lut
        self._keep = np.zeros(0, ROW_DTYPE)
        self.bind()

    def bind(self) -> None:
        """Point at the history's current records (kept alive here as long as they are pointed at)."""
        h = self._hist
        rows = h.rows
        if rows.dtype != ROW_DTYPE or not rows.flags.c_contiguous:
            raise ModelError("RowHistory records are not in the layout the C inference expects")
        self.c.row = ffi.from_buffer("cm_row[]", rows)
        self.c.cap = len(rows)
        self._keep = rows

    def _current(self) -> Any:
        if self._hist.rows is not self._keep:  # records swapped behind the history's back
            self.bind()
        return self.c

    def features(self, ids: np.ndarray, now: int) -> np.ndarray:
        ids, ib = _ids_buf(ids)
        f = np.empty((len(ids), N_FEATURES), np.float32)
        _check(lib.cm_features(self._current(), ib, len(ids), now, ffi.from_buffer("float[]", f)),
               "cm_features")
        return f

    def update(self, ids: np.ndarray, now: int) -> None:
        ids, ib = _ids_buf(ids)
        _check(lib.cm_update(self._current(), ib, len(ids), now), "cm_update")


class FastCacheNet:
    """The caching model (same weights as a :class:`~recmgd.models.nets.NumpyCacheNet`) scored in C."""

    def __init__(self, net: NumpyCacheNet) -> None:
        # C copies each array at the sizes hidden implies: every one must be of its shape (a second line
        # behind checkpoint.load_inference's checks), float32 and C-contiguous (the copies below)
        w1 = net.w1
        hidden = int(w1.shape[1]) if isinstance(w1, np.ndarray) and w1.ndim == 2 else 0
        want = NumpyCacheNet.shapes(hidden)
        if (not 1 <= hidden <= lib.CM_MAX_HIDDEN or lib.CM_N_OUT != want["b3"][0]
                or any(not isinstance(getattr(net, n), np.ndarray) or getattr(net, n).shape != want[n]
                       for n in NumpyCacheNet.ARRAYS)):
            got = ", ".join(f"{n} {np.shape(getattr(net, n))}" for n in NumpyCacheNet.ARRAYS)
            raise ModelError(f"caching model of shapes {got} is not one the C inference runs (features "
                             f"{N_FEATURES}, table slots {N_TABLE_SLOTS}, hidden <= {lib.CM_MAX_HIDDEN})")
        ws = [np.ascontiguousarray(getattr(net, n), np.float32) for n in NumpyCacheNet.ARRAYS]
        bufs = [ffi.from_buffer("float[]", a) for a in ws]
        p = lib.cm_net_new(hidden, N_TABLE_SLOTS, *bufs)
        if p == ffi.NULL:
            raise MemoryError("cm_net_new")
        self._net = ffi.gc(p, lib.cm_net_free)
        self.hidden = hidden
        self._grow(256)

    def _grow(self, n: int) -> None:
        self._out = np.empty((max(n, 256), 2), np.float32)  # the scores land here, then are copied out
        self._outp = ffi.from_buffer("float[]", self._out)

    @property
    def simd(self) -> bool:
        """Whether the AVX2/FMA forward pass is in use (the CPU has it); set False for the portable one."""
        return bool(lib.cm_net_simd(self._net, -1))

    @simd.setter
    def simd(self, on: bool) -> None:
        lib.cm_net_simd(self._net, int(bool(on)))

    def __call__(self, hist: RowHistory, ids: np.ndarray, now: int, update: bool = False,
                 feats: np.ndarray | None = None) -> np.ndarray:
        """(len(ids), 2) float32: keep logit and predicted log1p(steps to next use) of rows ``ids`` of
        ``hist`` (a RowHistory built with ``native=True``) as of step ``now``; with ``update`` their use
        at ``now`` is then recorded (RowHistory.update); ``feats`` (len(ids) x N_FEATURES, float32)
        receives the features when given."""
        # the per-step path: a handful of Python operations around one C call
        rows = hist.native_rows
        if rows is None:
            raise ModelError("FastCacheNet needs a RowHistory built with native=True")
        if hist.rows is not rows._keep:  # records swapped behind the history's back
            rows.bind()
        n = len(ids)
        if n > len(self._out):
            self._grow(2 * n)
        if ids.dtype is _I64:
            try:
                ib = _from_buffer("int64_t[]", ids)
            except ValueError:  # not contiguous
                ids, ib = _ids_buf(ids)
        else:
            ids, ib = _ids_buf(ids)
        if update:
            check_step(now)
        tables = hist.table[ids]
        fb = ffi.NULL
        if feats is not None:
            if (feats.shape != (n, N_FEATURES) or feats.dtype != np.float32
                    or not feats.flags.c_contiguous):
                raise ValueError("feats must be a C-contiguous float32 array of shape (len(ids), N_FEATURES)")
            fb = _from_buffer("float[]", feats)
        rc = _score(self._net, rows.c, ib, _from_buffer("int64_t[]", tables), n, now, update, self._outp, fb)
        if rc:
            _check(rc, "cm_score")
        return self._out[:n].copy()


_I64 = np.dtype(np.int64)
_from_buffer = ffi.from_buffer
_score = lib.cm_score
