"""Driving one policy through steps under the simulator's protocol, by either of two paths:

- ``python``: per step, the driver (C counters and residency over its own id map) computes the hits,
  calls ``policy.observe()`` and applies the returned Decision; works for every policy (the learned
  ones included) and is exactly what the daemon does;
- ``native``: for a :class:`~recmgd.policies.native.NativePolicy`, the whole loop runs in C
  (``sc_driver_run``), calling the very same C step function. Both give identical counters (tested).

``delay`` 1: decisions made after step b apply before step b+1. ``delay`` 0: the textbook cache, every
lookup of a step is processed on its own (a missed row is admitted before the next lookup).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recmgd.errors import PolicyError
from recmgd.policies.native import IdMap, NativePolicy, check, i32_ptr, i64_ptr, u8_ptr
from recmgd.policy import Decision, Policy, StepView
from recmgd.simcore import ffi, lib
from recmgd.trace.model import Trace
from recmgd.trace.steps import Steps

log = logging.getLogger(__name__)

PATHS = ("auto", "native", "python")


@dataclass
class Counters:
    """What one scored run counted (docs/ARCHITECTURE.md, "The simulator's protocol")."""

    steps: int = 0
    lookups: int = 0
    hits: int = 0
    on_demand: int = 0
    prefetch_issued: int = 0
    prefetch_useful: int = 0
    floor: int = 0
    bound: int = 0
    seconds: float = 0.0


class Driver:
    """The truth about residency and the counters, in C, over an id map."""

    def __init__(self, idmap: IdMap, capacity: int) -> None:
        ptr = lib.sc_driver_new(idmap.ptr, capacity)
        if ptr == ffi.NULL:
            raise MemoryError("sc_driver_new")
        self.idmap = idmap
        self.capacity = capacity
        self.ptr = ffi.gc(ptr, lib.sc_driver_free)

    def observe(self, ids: np.ndarray, scored: bool) -> np.ndarray:
        """Hits of one step's ids (uint8), counted when ``scored``."""
        hit = np.empty(ids.shape[0], dtype=np.uint8)
        check(lib.sc_driver_observe(self.ptr, i32_ptr(ids), ids.shape[0], u8_ptr(hit), int(scored)), "driver")
        return hit

    def apply(self, dec: Decision, scored: bool, who: str) -> None:
        """Evictions, then admissions, then prefetches; PolicyError when over capacity."""
        ev = self.idmap.map(dec.evict)
        ad = self.idmap.map(dec.admit)
        pf = self.idmap.map(dec.prefetch)
        cdec = ffi.new("sc_decision *", {"evict": i32_ptr(ev), "admit": i32_ptr(ad), "prefetch": i32_ptr(pf),
                                         "n_evict": ev.shape[0], "n_admit": ad.shape[0],
                                         "n_prefetch": pf.shape[0]})
        rc = lib.sc_driver_apply(self.ptr, cdec, int(scored))
        if rc == lib.SC_EOVERFLOW:
            raise PolicyError(f"{who}: decision leaves {self.resident} resident rows, "
                              f"capacity {self.capacity}")
        check(rc, who)

    def run(self, handle: Any, ids: np.ndarray, offsets: np.ndarray, scored: bool) -> None:
        """The whole-trace loop in C over ``len(offsets) - 1`` steps."""
        n_steps = offsets.shape[0] - 1
        rc = lib.sc_driver_run(self.ptr, handle, i32_ptr(ids), i64_ptr(offsets), n_steps, int(scored),
                               ffi.NULL)
        if rc == lib.SC_EOVERFLOW:
            raise PolicyError(f"decision leaves {self.resident} resident rows, capacity {self.capacity}")
        check(rc, "driver")

    @property
    def resident(self) -> int:
        return int(lib.sc_driver_resident(self.ptr))

    def counters(self) -> Counters:
        c = lib.sc_driver_counters(self.ptr)
        return Counters(steps=int(c.steps), lookups=int(c.lookups), hits=int(c.hits),
                        on_demand=int(c.on_demand), prefetch_issued=int(c.prefetch_issued),
                        prefetch_useful=int(c.prefetch_useful), floor=int(c.floor),
                        bound=int(c.bound))


def prepare(policy: Policy, steps: Steps, capacity: int, warm_steps: int) -> None:
    """Train (learned), reset, and give the future (OPT): what every run does before driving."""
    if policy.learned:
        t0 = time.perf_counter()
        policy.fit(steps.slice(0, warm_steps).as_list(), capacity)
        log.info("%s: fit on %d steps in %.1f s", policy.name, warm_steps, time.perf_counter() - t0)
    policy.reset(capacity)


def no_native_step(policy: Policy) -> PolicyError:
    """The error for a policy driven on the native path that has no native step (one line)."""
    return PolicyError(f"policy {policy.name!r} has no native step function (--path native); use --path auto "
                       "or python")


def drive(policy: Policy, steps: Steps, capacity: int, warm_steps: int, *, delay: int = 1,
          path: str = "auto") -> Counters:
    """Run ``policy`` over ``steps``: the first ``warm_steps`` warm the fast tier, the rest are scored.

    The policy is (fit,) reset and given the future here. ``steps`` are the protocol's steps of B
    samples; with ``delay`` 0 every lookup is driven as its own step.
    """
    if delay not in (0, 1):
        raise ValueError(f"delay must be 0 or 1, got {delay}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    warm_steps = max(0, min(warm_steps, len(steps)))
    native = isinstance(policy, NativePolicy) and path != "python"
    if path == "native" and not native:  # (before a learned policy's fit)
        raise no_native_step(policy)
    prepare(policy, steps, capacity, warm_steps)
    driven = steps.singletons() if delay == 0 else steps
    split = int(steps.offsets[warm_steps] - steps.offsets[0]) if delay == 0 else warm_steps
    if policy.needs_future:
        policy.set_future(driven)
    if native:
        counters = _drive_native(policy, driven, capacity, split)  # type: ignore[arg-type]
    else:
        counters = _drive_python(policy, driven, capacity, split)
    if delay == 0:  # count the protocol's steps, not the lookups driven one by one
        counters.steps = len(steps) - warm_steps
    return counters


def drive_stream(policy: NativePolicy, trace: Trace, batch: int, capacity: int, warm_steps: int, *,
                 delay: int = 1, chunk_steps: int = 16384) -> Counters:
    """Like :func:`drive` for a native policy that needs neither training nor the future, streaming
    the trace in chunks of steps: memory is linear in unique rows, not in the trace's length."""
    if policy.needs_future or policy.learned:
        raise ValueError(f"policy {policy.name!r} needs the whole trace; use drive()")
    if delay not in (0, 1):
        raise ValueError(f"delay must be 0 or 1, got {delay}")
    policy.reset(capacity)
    idmap, handle = policy.native_state()
    drv = Driver(idmap, capacity)
    seconds = 0.0
    n_steps = trace.n_steps(batch)
    for first, chunk in trace.iter_steps(batch, chunk_steps):
        ids = idmap.map(chunk.keys)
        offs = np.ascontiguousarray(chunk.offsets - chunk.offsets[0], dtype=np.int64)
        cut = min(max(warm_steps - first, 0), len(chunk))  # local index of the first scored step
        if delay == 0:
            cut = int(offs[cut])
            offs = np.arange(ids.shape[0] + 1, dtype=np.int64)
        if cut > 0:
            drv.run(handle, ids, offs[:cut + 1], scored=False)
        if cut < offs.shape[0] - 1:
            t0 = time.perf_counter()
            drv.run(handle, ids, offs[cut:], scored=True)
            seconds += time.perf_counter() - t0
    out = drv.counters()
    out.seconds = seconds
    if delay == 0:
        out.steps = n_steps - min(warm_steps, n_steps)
    return out


def _drive_native(policy: NativePolicy, steps: Steps, capacity: int, split: int) -> Counters:
    idmap, handle = policy.native_state()
    keys = steps.keys[steps.offsets[0]:steps.offsets[-1]]
    ids = idmap.map(keys)
    offsets = np.ascontiguousarray(steps.offsets - steps.offsets[0], dtype=np.int64)
    drv = Driver(idmap, capacity)
    drv.run(handle, ids, offsets[:split + 1], scored=False)
    t0 = time.perf_counter()
    drv.run(handle, ids, offsets[split:], scored=True)
    seconds = time.perf_counter() - t0
    out = drv.counters()
    out.seconds = seconds
    return out


def _drive_python(policy: Policy, steps: Steps, capacity: int, split: int) -> Counters:
    idmap = IdMap()
    drv = Driver(idmap, capacity)
    keys_all = steps.keys
    offs = steps.offsets
    seconds = 0.0
    for b in range(len(steps)):
        scored = b >= split
        keys = np.ascontiguousarray(keys_all[offs[b]:offs[b + 1]], dtype=np.int64)
        hit = drv.observe(idmap.map(keys), scored)
        view = StepView(step=b, keys=keys, hit=hit.astype(bool))
        t0 = time.perf_counter()
        dec = policy.observe(view)
        if scored:
            seconds += time.perf_counter() - t0
        drv.apply(dec, scored, policy.name or type(policy).__name__)
    out = drv.counters()
    out.seconds = seconds
    return out
