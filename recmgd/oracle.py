"""Next-use arrays and Belady's OPT under the simulator's protocol (docs/ARCHITECTURE.md).

API (stable; the learned models build their labels on it)::

    from recmgd.oracle import NEVER, next_use, next_occurrence, belady, opt_labels, opt_miss_mask

    steps: recmgd.trace.Steps (flat int64 keys + offsets) or a list of int64 arrays, one per step,
           each deduplicated (first-appearance order). "occurrence" = one flat position in the steps.

    next_use(steps) -> int64[n_occ]         step index of the next use of the same key, NEVER if none
    next_occurrence(steps) -> int64[n_occ]  flat position of the next use of the same key, -1 if none
    belady(steps, capacity, *, bypass=False, delay=1) -> OptResult
        OptResult.miss          bool[n_occ]  OPT's on-demand fetch (row not resident when read)
        OptResult.held_at_next_use bool[n_occ]  would OPT, at this capacity, still hold this row at its
                                next use?  (False when there is no next use)
        OptResult.on_demand, .hits, .capacity, .bypass
    opt_labels(steps, capacity, *, bypass=False) -> bool[n_occ]   == belady(...).held_at_next_use
    opt_miss_mask(steps, capacity, *, bypass=False) -> bool[n_occ] == belady(...).miss

Protocol: the fast tier starts empty; a row read in step b hits when it was resident at the start of
step b; after step b, OPT (demand) first re-keys the rows hit in step b, then admits the missed rows
of step b one by one in order, each evicting the resident row (any other row, including one admitted
earlier in the step: then neither is fetched) whose next use is farthest; ties go to the row whose use
after next is nearest (its forced re-admission is worth most). This is Belady's rule: the exact optimum
for single-lookup steps (the textbook cache), and never worse than LRU, LFU or S3-FIFO when every step
fits in the fast tier (tested; when a step does not fit, those keep a hit read late in the step over a
row missed earlier, an implicit bypass, and may beat demand OPT by a few fetches). With
``bypass`` (the exact optimum, tested) OPT keeps the ``capacity`` rows with the nearest next use among
resident rows and the rows of step b, so a missed row may not be admitted at all.
``delay=0`` is the textbook cache: every lookup is its own step (next uses then count lookups).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recmgd.trace.steps import Steps, as_steps

log = logging.getLogger(__name__)

NEVER: int = int(np.iinfo(np.int64).max)
"""next_use of an occurrence whose key is never used again."""

StepsLike = Steps | Sequence[np.ndarray]


@dataclass(frozen=True)
class OptResult:
    """Belady OPT on a sequence of steps (arrays aligned with the flat occurrences)."""

    miss: np.ndarray
    held_at_next_use: np.ndarray
    capacity: int
    bypass: bool

    @property
    def on_demand(self) -> int:
        return int(self.miss.sum())

    @property
    def hits(self) -> int:
        return int(self.miss.shape[0] - self.miss.sum())


def next_occurrence(steps: StepsLike) -> np.ndarray:
    """Flat position of the next occurrence of the same key (int64), -1 when there is none."""
    s = as_steps(steps)
    keys = s.keys[s.offsets[0]:s.offsets[-1]]
    n = keys.shape[0]
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    nxt = np.full(n, -1, dtype=np.int64)
    if n > 1:
        same = sk[1:] == sk[:-1]
        nxt[order[:-1][same]] = order[1:][same]
    return nxt


def next_use(steps: StepsLike) -> np.ndarray:
    """Step index of the next use of the same key for every occurrence (int64), NEVER when none."""
    s = as_steps(steps)
    nxt = next_occurrence(s)
    step_of = s.step_of()
    out = np.full(nxt.shape[0], NEVER, dtype=np.int64)
    has = nxt >= 0
    out[has] = step_of[nxt[has]]
    return out


def _held(miss: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    held = np.zeros(miss.shape[0], dtype=bool)
    has = nxt >= 0
    held[has] = ~miss[nxt[has]]
    return held


def _belady_python(s: Steps, nu: np.ndarray, nu2: np.ndarray, capacity: int, bypass: bool) -> np.ndarray:
    """Reference implementation (heap with lazy deletion); returns the miss mask."""
    miss = np.zeros(nu.shape[0], dtype=bool)
    cur: dict[int, int] = {}  # resident key -> its next use
    heap: list[tuple[int, int, int]] = []  # (-next use, use after next, key), lazy
    offs = s.offsets
    keys = s.keys
    for b in range(len(s)):
        lo, hi = int(offs[b]), int(offs[b + 1])
        step_keys = [int(k) for k in keys[lo:hi]]
        for j, k in enumerate(step_keys):
            miss[lo + j] = k not in cur
        for j, k in enumerate(step_keys):
            if not miss[lo + j]:
                cur[k] = int(nu[lo + j])
                heapq.heappush(heap, (-int(nu[lo + j]), int(nu2[lo + j]), k))
        for j, k in enumerate(step_keys):
            if miss[lo + j]:
                if not bypass:  # demand: evict the farthest among the others, then admit
                    while len(cur) >= capacity:
                        negnu, _, v = heapq.heappop(heap)
                        if v in cur and cur[v] == -negnu:
                            del cur[v]
                cur[k] = int(nu[lo + j])
                heapq.heappush(heap, (-int(nu[lo + j]), int(nu2[lo + j]), k))
        while len(cur) > capacity:
            negnu, _, k = heapq.heappop(heap)
            if k in cur and cur[k] == -negnu:
                del cur[k]
    return miss


def use_after_next(nu: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """For every occurrence, the step of the use after its next use (NEVER when none)."""
    out = np.full(nu.shape[0], NEVER, dtype=np.int64)
    has = nxt >= 0
    out[has] = nu[nxt[has]]
    return out


def belady(steps: StepsLike, capacity: int, *, bypass: bool = False, delay: int = 1) -> OptResult:
    """Belady's OPT under the simulator protocol; see the module docstring."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if delay not in (0, 1):
        raise ValueError(f"delay must be 0 or 1, got {delay}")
    s = as_steps(steps)
    if delay == 0:
        s = s.singletons()
    nxt = next_occurrence(s)
    nu = next_use(s)
    miss = _belady_native(s, capacity, bypass)
    if miss is None:
        miss = _belady_python(s, nu, use_after_next(nu, nxt), capacity, bypass)
    return OptResult(miss=miss, held_at_next_use=_held(miss, nxt), capacity=capacity, bypass=bypass)


def _belady_native(s: Steps, capacity: int, bypass: bool) -> np.ndarray | None:
    """OPT through the C core (the same step function the OPT policy runs), or None without it."""
    try:
        from recmgd.simcore import ffi, lib
    except ImportError:
        log.debug("recmgd._simcore not built; OPT runs in Python")
        return None
    keys = np.ascontiguousarray(s.keys[s.offsets[0]:s.offsets[-1]], dtype=np.int64)
    offsets = np.ascontiguousarray(s.offsets - s.offsets[0], dtype=np.int64)
    n = keys.shape[0]
    miss = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return miss.astype(bool)
    idmap = ffi.gc(lib.sc_idmap_new(), lib.sc_idmap_free)
    ids = np.empty(n, dtype=np.int32)
    ids_p = ffi.from_buffer("int32_t[]", ids)
    off_p = ffi.from_buffer("int64_t[]", offsets)
    if lib.sc_idmap_map(idmap, ffi.from_buffer("int64_t[]", keys), n, ids_p) != lib.SC_OK:
        raise MemoryError("oracle: id map")
    params = ffi.new("sc_params *")
    pol = ffi.gc(lib.sc_policy_new(b"opt-bypass" if bypass else b"opt", idmap, capacity, params),
                 lib.sc_policy_free)
    drv = ffi.gc(lib.sc_driver_new(idmap, capacity), lib.sc_driver_free)
    if pol == ffi.NULL or drv == ffi.NULL:
        raise MemoryError("oracle: OPT state")
    rc = lib.sc_policy_set_future(pol, ids_p, off_p, len(s))
    if rc == lib.SC_OK:
        rc = lib.sc_driver_run(drv, pol, ids_p, off_p, len(s), 0, ffi.from_buffer("uint8_t[]", miss))
    if rc != lib.SC_OK:
        raise RuntimeError(f"oracle: C OPT failed ({rc})")
    return miss.astype(bool)


def opt_labels(steps: StepsLike, capacity: int, *, bypass: bool = False) -> np.ndarray:
    """Per occurrence: would OPT at this capacity still hold the row at its next use? (bool)"""
    return belady(steps, capacity, bypass=bypass).held_at_next_use


def opt_miss_mask(steps: StepsLike, capacity: int, *, bypass: bool = False) -> np.ndarray:
    """Per occurrence: is it an on-demand fetch under OPT at this capacity? (bool)"""
    return belady(steps, capacity, bypass=bypass).miss
