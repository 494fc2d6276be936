"""The learned policies' whole step in C (``native/policy/learned.c``), one call a step.

:class:`NativeStep` holds the C state of one run of a :class:`~recmgd.models.policies.LearnedPolicy`
(reset starts a new one): the key -> id map, every row's history, the cache's and the guard's shadow
caches' residency, the prefetcher's stream, and copies of the models' inference weights. ``step`` takes a
step's keys and hit flags and returns the Decision, with no per-row Python. The numpy/Python step in
policies.py is the reference it is tested against (tests/test_models_native_step.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from recmgd import simcore
from recmgd.errors import ModelError
from recmgd.keys import ROW_BITS
from recmgd.models.features import N_TABLE_SLOTS
from recmgd.models.hazard import AGE_BUCKETS
from recmgd.models.numpy_nets import NumpyPrefetchNet
from recmgd.policy import Decision

if TYPE_CHECKING:
    from recmgd.models.policies import LearnedPolicy

log = logging.getLogger(__name__)

#: the C prefetcher's fixed buffers: representation width, hidden units, queries x width (learned.h)
MAX_DIM, MAX_HIDDEN, MAX_QUERY_FLOATS = (simcore.lib.LP_MAX_DIM, simcore.lib.LP_MAX_HIDDEN,
                                         simcore.lib.LP_MAX_QUERY_FLOATS)

#: stream positions the C prefetcher keeps for candidates: at least this many, and this many per slot
STREAM_MIN, STREAM_PER_SLOT = 1 << 20, 16


def stream_ring(capacity: int, window_steps: int, step_len: float | None) -> int:
    """Ring positions (a power of two) for a tier of ``capacity`` rows: STREAM_PER_SLOT a slot, but no
    more than the recency window's positions (``window_steps`` x ``step_len``, the mean rows a step, when
    both are known): a row unused for the window loses its history and its last position with it, so
    older positions serve only the few resident rows that old; always more than STREAM_MIN."""
    want = STREAM_PER_SLOT * capacity
    if window_steps > 0 and step_len:
        want = min(want, int(np.ceil(window_steps * step_len)))
    return 1 << max(STREAM_MIN, want - 1).bit_length()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def unsupported(pol: LearnedPolicy) -> str | None:
    """Why ``pol``'s configuration cannot run in C (None: it can)."""
    order = pol.res_order()
    if order not in ("hazard", "level"):
        return f"order {order!r}"
    if pol.rescore:
        return "rescore"
    if pol.prefetcher not in (None, "recmg"):
        return f"prefetcher {pol.prefetcher!r}"
    if pol.use_cache_model and pol._fast_cache is None:
        return "no C caching model"
    pf = pol._np_pref
    if pf is not None and (pf.dim > MAX_DIM or pf.f1w.shape[1] > MAX_HIDDEN or pf.c1w.shape[1] > MAX_HIDDEN
                           or pf.p1w.shape[1] > MAX_HIDDEN or pf.queries * pf.dim > MAX_QUERY_FLOATS):
        return "a prefetching model larger than the C buffers"
    return None


class NativeStep:
    """One run of a learned policy's step in C, for a fast tier of ``capacity`` rows; ``share_key_map``:
    its key map is shared (:meth:`key_map`) with the daemon's mirror."""

    def __init__(self, pol: LearnedPolicy, capacity: int, share_key_map: bool = False) -> None:
        ffi, lib = simcore.ffi, simcore.lib
        self._ffi, self._lib = ffi, lib
        from recmgd.models.policies import GUARD_MIN_ROWS, PREFETCH_IDLE_STEPS, guard_sample

        stats = pol.trained.stats if pol.trained is not None else {}
        ring = stream_ring(capacity, pol.history_window_steps(), stats.get("mean_step_len"))
        prm = ffi.new("lp_params *", {
            "capacity": capacity, "use_cache_model": int(pol.use_cache_model and pol._fast_cache is not None),
            "order": lib.LP_ORDER_HAZARD if pol.res_order() == "hazard" else lib.LP_ORDER_LEVEL,
            "levels": pol.levels, "guard": int(pol.guard), "guard_sample": guard_sample(capacity),
            "guard_min_rows": GUARD_MIN_ROWS, "prefetch_budget": pol.prefetch_budget,
            "prefetch_probe": pol.prefetch_probe, "prefetch_idle": PREFETCH_IDLE_STEPS,
            "depth": pol.cfg.depth, "past_steps": max(1, pol.cfg.past_steps), "window": pol.cfg.window,
            "step_len_known": int("mean_step_len" in stats), "row_bits": ROW_BITS,
            "horizon": pol.horizon, "step_len": float(stats.get("mean_step_len", 16.0)),
            "bypass": pol.bypass, "prefetch_threshold": pol.prefetch_threshold, "stream_ring": ring,
            "prefetch_min_accuracy": pol.prefetch_min_accuracy,
            "prefetch_throttled_probe": pol.prefetch_throttled_probe,
            "history_window": pol.history_window_steps()})
        ptr = lib.lp_new(prm)
        if ptr == ffi.NULL:
            raise ValueError(f"{pol.name}: the C step refused its parameters (capacity {capacity})")
        self._p = ffi.gc(ptr, lib.lp_free)
        if share_key_map:  # before the first step: the daemon's mirror keeps its rows in this map too
            simcore.check(lib.lp_share_key_map(self._p), "lp_share_key_map")
        self._keep: list[Any] = []  # what C points at
        if pol.use_cache_model and pol._fast_cache is not None:
            self._keep.append(pol._fast_cache)
            rc = lib.lp_set_cache_net(self._p, pol._fast_cache._net, N_TABLE_SLOTS)
            simcore.check(rc, "lp_set_cache_net")
        table = pol._table()
        if table is not None and pol.use_cache_model:
            q = np.ascontiguousarray(np.round(np.asarray(table, np.float64) * 1e4).ravel())
            pe, ne = (np.ascontiguousarray(e, np.float64) for e in pol._edges)
            simcore.check(lib.lp_set_hazard(self._p, ffi.from_buffer("double[]", q), len(q) // AGE_BUCKETS,
                                            ffi.from_buffer("double[]", pe), len(pe),
                                            ffi.from_buffer("double[]", ne), len(ne)), "lp_set_hazard")
        # no budget to prefetch (the daemon's default): the C step never asks the model, so it gets no copy
        if pol.prefetcher == "recmg" and pol._np_pref is not None and pol.prefetch_budget > 0:
            self._set_prefetch(pol)
        self._dec = lib.lp_decision_of(self._p)
        self._stats = ffi.new("lp_stats *")

    def _set_prefetch(self, pol: LearnedPolicy) -> None:
        ffi, lib = self._ffi, self._lib
        n = pol._np_pref
        assert n is not None
        keys = pol._model_keys
        if not isinstance(keys, np.ndarray) or keys.ndim != 1 or keys.dtype != np.int64:
            raise ModelError("the prefetching model's keys are not a 1-D int64 array")
        keys = np.ascontiguousarray(keys)
        # C copies each array at the sizes dim, queries and hidden say and reads emb at mid x dim: every
        # array must be of its shape (a second line behind checkpoint.load_inference's checks)
        arrs = {name: _f32(getattr(n, name)) for name in NumpyPrefetchNet.ARRAYS}
        f1w = arrs["f1w"]
        hidden = int(f1w.shape[1]) if f1w.ndim == 2 else 0
        want = NumpyPrefetchNet.shapes(len(keys), int(n.dim), int(n.queries), hidden)
        bad = [f"{k} {arrs[k].shape} (expected {want[k]})" for k in want if arrs[k].shape != want[k]]
        if int(n.unknown) != len(keys):
            bad.append(f"unknown row {n.unknown} (expected {len(keys)}, the keys)")
        if bad:
            raise ModelError(f"prefetching model of an unexpected shape for the C step: {', '.join(bad[:3])}")
        w = ffi.new("lp_pfnet *", {
            "dim": n.dim, "hidden": arrs["f1w"].shape[1], "queries": n.queries,
            "n_table_slots": arrs["tab"].shape[0], "n_model": len(keys), "p2b": n.p2b, "temp": n.temp})
        w.model_keys = ffi.from_buffer("int64_t[]", keys)
        for name, a in arrs.items():
            setattr(w, name, ffi.from_buffer("float[]", a))
        simcore.check(lib.lp_set_prefetch_net(self._p, w), "lp_set_prefetch_net")
        self._keep.append(arrs["emb"])  # C borrows the embeddings (the model's one large array)

    def key_map(self) -> simcore.IdMap:
        """The step's key map (a view; this step frees it), for the mirror when shared."""
        return simcore.IdMap.of(self._lib.lp_key_map(self._p), self)

    def step(self, keys: np.ndarray, hit: np.ndarray, announced: np.ndarray | None = None) -> Decision:
        """One step: ``keys`` (int64, deduplicated) and whether each was resident -> the Decision;
        ``announced``: the keys of the next steps (lookahead), more triggers for the prefetcher."""
        ffi, lib = self._ffi, self._lib
        if announced is not None and len(announced):
            ann = np.ascontiguousarray(announced, np.int64)
            rc = lib.lp_announce(self._p, ffi.from_buffer("int64_t[]", ann), len(ann))
            if rc:
                simcore.check(rc, "lp_announce")
        keys = np.ascontiguousarray(keys, np.int64)
        hit = np.ascontiguousarray(hit, np.uint8)
        rc = lib.lp_step(self._p, ffi.from_buffer("int64_t[]", keys), ffi.from_buffer("uint8_t[]", hit),
                         len(keys))
        if rc:
            simcore.check(rc, "lp_step")
        d = self._dec
        return Decision(evict=self._copy(d.evict, d.n_evict), admit=self._copy(d.admit, d.n_admit),
                        prefetch=self._copy(d.prefetch, d.n_prefetch))

    def _copy(self, ptr: Any, n: int) -> np.ndarray:
        if not n:
            return np.zeros(0, np.int64)
        return np.frombuffer(self._ffi.buffer(ptr, 8 * n), np.int64).copy()

    def rejected(self, keys: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, np.int64)
        self._lib.lp_rejected(self._p, self._ffi.from_buffer("int64_t[]", keys), len(keys))

    def early_victims(self, n: int, reading: np.ndarray) -> np.ndarray:
        if n <= 0:
            return np.zeros(0, np.int64)
        reading = np.ascontiguousarray(reading, np.int64)
        out = np.empty(n, np.int64)
        fb = self._ffi.from_buffer
        got = self._lib.lp_early_victims(self._p, n, fb("int64_t[]", reading), len(reading),
                                         fb("int64_t[]", out))
        if got < 0:
            simcore.check(int(got), "lp_early_victims")
        return out[:got]

    def resident(self, keys: np.ndarray) -> np.ndarray:
        """Whether each key is resident in the policy's view."""
        keys = np.ascontiguousarray(keys, np.int64)
        out = np.zeros(len(keys), np.uint8)
        if len(keys):
            self._lib.lp_resident_of(self._p, self._ffi.from_buffer("int64_t[]", keys), len(keys),
                                     self._ffi.from_buffer("uint8_t[]", out))
        return out.astype(bool)

    def set_simd(self, on: bool) -> bool:
        """The eviction plan's AVX2 filter on (the default where the CPU has it) or off (portable C; the
        same decisions); whether AVX2 is used now."""
        return bool(self._lib.lp_set_simd(self._p, int(on)))

    def set_rs_span(self, steps: int) -> None:
        """How many steps a once-used row's stored step may lie behind the moving base before the base
        moves (``lp_set_rs_span``; default and most ``LP_RS_SPAN``, 2^29). Decisions do not depend on it:
        tests make it small to move the base often."""
        simcore.check(self._lib.lp_set_rs_span(self._p, int(steps)), "lp_set_rs_span")

    def set_horizon(self, horizon: float) -> None:
        self._lib.lp_set_horizon(self._p, float(horizon))

    def stats(self) -> dict[str, int]:
        """The guard's counters (and the uses not scored while it held the LRU order), rows with a
        history now (those of them used more than once, which keep a full record, and those used once
        that wait in the once table with no id; rows moved there so far, and those read again since),
        histories the recency window dropped, resident rows, the state's bytes (and its parts: key map,
        per-row arrays, records, stream ring, once table), the prefetcher's outcomes (read, evicted
        unread) and throttled steps, and the plan's candidate buffer (allocated, apart from the state's
        bytes)."""
        self._lib.lp_get_stats(self._p, self._stats)
        s = self._stats
        names = ("lru_misses", "model_misses", "lru_steps", "lru_order", "stamp_only", "rows", "records",
                 "once_rows", "moved", "back", "forgotten", "resident", "bytes", "map_bytes", "row_bytes",
                 "record_bytes", "ring_bytes", "once_bytes", "pf_useful", "pf_useless", "pf_throttled",
                 "pf_asked", "plan_bytes")
        return {k: int(getattr(s, k)) for k in names}

    def census(self) -> dict[str, int]:
        """What the rows that hold an id are (``lp_get_census``, one pass over every id: for tools and
        tests): ``ids``; ``resident`` and ``resident_records`` (those with a history record);
        ``shadow_only`` (in a guard shadow, not resident) and ``shadow_records``; the others:
        ``other_records`` (used more than once within the window), ``other_once`` (used once, waiting
        for the window's sweep), ``other_never``."""
        c = self._ffi.new("lp_census *")
        self._lib.lp_get_census(self._p, c)
        names = ("ids", "resident", "resident_records", "shadow_only", "shadow_records", "other_records",
                 "other_once", "other_never")
        return {k: int(getattr(c, k)) for k in names}
