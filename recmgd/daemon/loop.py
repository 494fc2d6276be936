"""The daemon's inner loop for one pool: drain the access rings, build steps, drive the policy, apply.

One :class:`PoolDriver` per attached pool. Each tick it drains every ring, splits the records at the
batch boundaries, and turns each app batch into one :class:`~recmgd.policy.StepView` (keys
deduplicated in first-appearance order, ``hit`` = resident in the fast tier before the step). The
policy's :class:`~recmgd.policy.Decision` is applied through the pool before the next step: first the
evictions, then the admissions, then the app's hints (fetched before predictions, counted apart), then
the prefetches, all under the fill budget; what the budget drops is passed to ``policy.rejected``.

The driver keeps its own mirror of the fast tier (a flag per row of every table), so residency checks
are vectorised and never touch the pool; the daemon is the only writer of the fast tier, so the mirror
is exact (rebuilt from ``pool.resident_keys()`` on attach). In the deterministic step mode (tests) the
budget is a fixed number of rows per step, so a run is reproducible and equals the simulator's.

Nothing here ever waits on an app: the rings are single-producer queues the app never blocks on.

Early admission (``early_admit``, default on; never in step mode): a policy with ``early_admission``
(the learned ones, whose step is Python around C, about ten times LRU's) runs in a :class:`StepWorker`
thread. The loop keeps draining the rings; for each step it fills the missed rows at once, evicting
the policy's early victims (its lowest keep scores as of its last step), fetches the step's hints, and
hands the step over with those rows shown as ``hit``. Decisions come back and are applied at the next
tick, leaving out the rows a later step already read (that step's view decides them: a row it
showed resident is not evicted, one it showed missing is not admitted). What the driver did to
residency behind the policy's back (early evictions, rows it could not insert) is told to the policy
before its next step, in order, so its view equals the pool once it has caught up (:meth:`sync`).

Counting. ``hit`` is residency by the mirror when the daemon processes the batch. While the daemon
keeps up (each batch processed before the app's next one, always so in step mode) that is what the
app saw; when it lags, the apps' own counts (``pool.counters()``, reported as ``app``) are the truth.
A prefetch is *useful* when its row is read before it is evicted, *late* when the fill budget dropped
it and its row was read in the next step (it would have been in flight). A hint is *late* when it
reached the daemon together with the lookups it announced. With ``coalesce`` > 0 (not in step mode) a
ring that fell behind has runs of its batches merged into steps of at least that many records.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from recmgd import policy as policy_mod
from recmgd.daemon.config import PAGE_BYTES
from recmgd.errors import ModelError, PolicyError, RecmgError
from recmgd.keys import ROW_BITS, ROW_MASK
from recmgd.models.granularity import Granularity
from recmgd.policy import EMPTY_KEYS, Decision, Policy, StepView, as_keys

log = logging.getLogger(__name__)

REC_TYPE_SHIFT = np.uint64(62)
REC_KEY_MASK = np.uint64((1 << 62) - 1)
REC_LOOKUP, REC_BATCH_END, REC_HINT = 0, 1, 2

# per-table counters the driver keeps (all int64)
TABLE_COUNTERS = ("lookups", "unique", "hits", "on_demand", "fills", "evictions", "slow_bytes",
                  "prefetch_issued", "prefetch_useful", "prefetch_late", "hint_fetched", "hint_useful")
# per-pool counters
POOL_COUNTERS = ("steps", "batches", "records", "bad_records", "prefetch_rejected", "admit_rejected",
                 "hint_received", "hint_rejected", "hint_late", "prefetch_evicted_unread",
                 "policy_overflow", "rings_released", "adopted", "adopt_evicted", "early_admits",
                 "decision_skipped", "decision_no_room")

NO_RECORDS = np.zeros(0, dtype=np.uint64)  # what a tap is given when a ring's app is gone

#: early victims the step worker lists after each step (at most the capacity)
EARLY_VICTIMS = 1024


class PoolLike(Protocol):
    """The daemon side of recmgd.pool.Pool (docs/ARCHITECTURE.md) that the driver uses."""

    name: str
    n_slots: int
    tables: list[Any]

    def fill_keys(self, keys: np.ndarray) -> int: ...
    def evict_keys(self, keys: np.ndarray) -> int: ...
    def resident_keys(self) -> np.ndarray: ...
    def rings(self) -> list[Any]: ...
    def drain_ring(self, index: int, max_records: int) -> np.ndarray: ...
    def release_ring(self, index: int) -> None: ...


class FillBudget:
    """Caps on fills from the slow tier: rows per second and bytes per second (0 = no cap).

    Wall-clock mode: a token bucket refilled at each :meth:`refill`, holding at most ``burst`` seconds
    of budget. Step mode: each :meth:`refill` grants exactly ``rate * step_seconds`` (deterministic).
    :meth:`charge` (page mode's demotions, which are never refused) may leave a debt: later grants pay
    it first, so the caps hold over time.
    Row mode: one, shared by every pool (they share the slow tier); page mode: one per pool ([pages]).
    """

    def __init__(self, rows_per_s: float = 0.0, mb_per_s: float = 0.0, *, step_mode: bool = False,
                 step_seconds: float = 0.01, burst: float = 0.05) -> None:
        self.configure(rows_per_s, mb_per_s, step_mode=step_mode, step_seconds=step_seconds, burst=burst)

    def configure(self, rows_per_s: float, mb_per_s: float, *, step_mode: bool, step_seconds: float,
                  burst: float = 0.05) -> None:
        self.rows_rate = float(rows_per_s)
        self.bytes_rate = float(mb_per_s) * 1e6
        self.step_mode = step_mode
        self.step_seconds = step_seconds
        self.burst = max(burst, 2 * step_seconds)
        self.rows = self.rows_rate * self.burst
        self.bytes = self.bytes_rate * self.burst
        self._last = time.monotonic()

    @property
    def unlimited(self) -> bool:
        return self.rows_rate <= 0 and self.bytes_rate <= 0

    def refill(self, now: float | None = None) -> None:
        if self.unlimited:
            return
        if self.step_mode:
            # a fixed grant per step; a debt (see charge) is paid from the next grants
            grant_rows = self.rows_rate * self.step_seconds
            grant_bytes = self.bytes_rate * self.step_seconds
            self.rows = min(grant_rows, self.rows + grant_rows)
            self.bytes = min(grant_bytes, self.bytes + grant_bytes)
            return
        now = time.monotonic() if now is None else now
        dt = max(0.0, now - self._last)
        self._last = now
        self.rows = min(self.rows_rate * self.burst, self.rows + self.rows_rate * dt)
        self.bytes = min(self.bytes_rate * self.burst, self.bytes + self.bytes_rate * dt)

    def charge(self, nbytes: int, rows: int = 0) -> None:
        """Count traffic that had to happen (page mode's demotions) against the caps: the budget may
        go negative, and later grants pay the debt first."""
        if self.rows_rate > 0:
            self.rows -= rows
        if self.bytes_rate > 0:
            self.bytes -= float(nbytes)

    def take(self, row_bytes: np.ndarray) -> int:
        """How many of these fills (in order, each of ``row_bytes[i]`` bytes) the budget allows now."""
        n = len(row_bytes)
        if self.unlimited or n == 0:
            return n
        allowed = n
        if self.rows_rate > 0:
            allowed = min(allowed, max(0, int(self.rows)))
        if self.bytes_rate > 0 and allowed:
            csum = np.cumsum(row_bytes[:allowed], dtype=np.float64)
            allowed = int(np.searchsorted(csum, self.bytes, side="right"))
        if self.rows_rate > 0:
            self.rows -= allowed
        if self.bytes_rate > 0 and allowed:
            self.bytes -= float(np.sum(row_bytes[:allowed], dtype=np.float64))
        return allowed


@dataclass
class _RingState:
    pending: list[np.ndarray]  # records of the batch not yet ended
    pid: int = 0


def _ring_field(info: Any, name: str, default: int = 0) -> int:
    if isinstance(info, dict):
        return int(info.get(name, default))
    return int(getattr(info, name, default))


# per-row flags of the fast-tier mirror (one byte a row)
RES = np.uint8(1)  # resident, owned by the policy
HINT = np.uint8(2)  # resident, fetched for an app's hint (the hint reserve)
PF_UNREAD = np.uint8(4)  # prefetched, not read yet
HINT_UNREAD = np.uint8(8)  # fetched for a hint, not read yet
PF_DROPPED = np.uint8(16)  # a prefetch the budget dropped in the last step (read now: late)
RESIDENT = RES | HINT
_SPECIAL = PF_UNREAD | HINT_UNREAD | PF_DROPPED


class StepWorker:
    """Runs a slow policy's steps in a thread of its own (early admission, see the module doc).

    ``submit`` hands over (step number, view, notices); the thread tells the policy the notices
    (``("evicted" | "rejected", keys)``, in the order the driver acted), runs ``observe``, and
    publishes the decision in ``done`` and a fresh list of early victims in ``victims``. A view of
    None carries notices only. An exception in the policy stops the worker and is raised to the loop
    by :meth:`raise_error`.
    """

    def __init__(self, policy: Policy, n_victims: int, name: str) -> None:
        self.policy = policy
        self.n_victims = n_victims
        self.victims = as_keys(policy.early_victims(n_victims, EMPTY_KEYS))
        self.done: deque[tuple[int, Decision]] = deque()  # appended by the thread, popped by the loop
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._in: queue.SimpleQueue[tuple[int, StepView | None, list[tuple[str, np.ndarray]]] | None] = \
            queue.SimpleQueue()
        self._submitted = 0
        self._finished = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"recmgd-step-{name}", daemon=True)
        self._thread.start()

    def submit(self, seq: int, view: StepView | None, notices: list[tuple[str, np.ndarray]]) -> None:
        self._submitted += 1
        self._in.put((seq, view, notices))

    def _run(self) -> None:
        while True:
            item = self._in.get()
            if item is None:
                return
            seq, view, notices = item
            if self.error is None:
                try:
                    t0 = time.perf_counter()
                    for kind, keys in notices:
                        (self.policy.evicted if kind == "evicted" else self.policy.rejected)(keys)
                    if view is not None:
                        dec = self.policy.observe(view)
                        self.victims = as_keys(self.policy.early_victims(self.n_victims, EMPTY_KEYS))
                        self.done.append((seq, dec))
                    self.seconds += time.perf_counter() - t0
                except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
                    self.error = exc
            with self._idle:
                self._finished += 1
                self._idle.notify_all()

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait until every step handed over is finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._finished >= self._submitted, timeout)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after the steps handed over (a daemon thread: a hung policy step does not
        keep the process from exiting)."""
        self._in.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("policy step thread %s did not stop in %.0f s", self._thread.name, timeout)


class PoolDriver:
    """Drives one policy from one pool's access rings and applies its decisions to the pool.

    Memory: 5 bytes per row of the pool's tables (a flag byte and a dedupe scratch word).
    """

    #: what the driver's keys are: rows of the fast tier's slots (recmgd.daemon.pages drives pages)
    mode = "rows"

    def __init__(self, pool: PoolLike, policy: Policy, policy_name: str, *, hint_slots: int = 0,
                 budget: FillBudget | None = None, step_mode: bool = False, max_drain: int = 262144,
                 coalesce: int = 0, early_admit: bool = True) -> None:
        self.pool = pool
        self.coalesce = coalesce
        self.early_admit = early_admit
        self._worker: StepWorker | None = None
        self._notices: list[tuple[str, np.ndarray]] = []  # for the worker, with the next step
        # (step, keys, hit) of the steps handed to the worker whose decisions are not applied yet
        self._in_flight: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
        self._victims = EMPTY_KEYS  # the worker's last list of early victims, and how far it is used
        self._victim_pos = 0
        self.name = str(pool.name)
        self.step_mode = step_mode
        self.max_drain = max_drain
        self.budget = budget or FillBudget()
        self.paused = False
        tables = list(pool.tables)
        self.n_tables = len(tables)
        self.table_rows = np.array([int(t.rows) for t in tables], dtype=np.int64)
        self.table_row_bytes = np.array([int(t.row_bytes) for t in tables], dtype=np.int64)
        self.offsets = np.zeros(self.n_tables + 1, dtype=np.int64)
        np.cumsum(self.table_rows, out=self.offsets[1:])
        total = int(self.offsets[-1])
        self.n_slots = int(pool.n_slots)
        self.hint_slots = min(int(hint_slots), self.n_slots)
        self.capacity = self.n_slots - self.hint_slots
        if self.capacity < 1:
            raise PolicyError(f"pool {self.name}: hint_slots {hint_slots} leaves no slot of {self.n_slots} "
                              "to the policy")
        self.flags = np.zeros(total, dtype=np.uint8)  # the fast-tier mirror (RES, HINT, ...)
        self._first = np.zeros(total, dtype=np.int32)  # dedupe scratch: position of a row's first use
        self._pos = np.arange(0, dtype=np.int32)
        self._pf_dropped = np.zeros(0, dtype=np.int64)  # flat indices dropped in the last step
        self.n_resident = 0
        self.hint_fifo: deque[int] = deque()  # flat indices, oldest first (stale ones skipped)
        self.n_hinted = 0
        self.rings: dict[int, _RingState] = {}
        self.tc = {k: np.zeros(self.n_tables, dtype=np.int64) for k in TABLE_COUNTERS}
        self.pc: dict[str, int] = dict.fromkeys(POOL_COUNTERS, 0)
        self.ring_drops: dict[int, int] = {}
        self.dropped_total = 0
        self.policy_time = 0.0
        self.backlog = 0
        self.policy_name = policy_name
        self.policy = policy
        # called with (ring index, records) for every drained array, and (index, empty) when a ring's
        # app is gone (recmgd.daemon.record: recordings and the retraining window)
        self.tap: Callable[[int, np.ndarray], None] | None = None
        self._install_policy(policy, rebuild=True)

    # -- keys, rows, residency -----------------------------------------------------------------------

    def flat(self, keys: np.ndarray) -> np.ndarray:
        """Flat mirror index of each key (keys must be valid)."""
        return self.offsets[keys >> ROW_BITS] + (keys & ROW_MASK)

    def keys_of(self, flat: np.ndarray) -> np.ndarray:
        t = np.searchsorted(self.offsets, flat, side="right") - 1
        return (t.astype(np.int64) << ROW_BITS) | (flat - self.offsets[t])

    def valid(self, keys: np.ndarray) -> np.ndarray:
        t = keys >> ROW_BITS
        ok = (keys >= 0) & (t < self.n_tables)
        if ok.all():
            return (keys & ROW_MASK) < self.table_rows[t]
        ok[ok] = (keys[ok] & ROW_MASK) < self.table_rows[t[ok]]
        return ok

    def _checked(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(valid keys, their flat indices); invalid keys are counted as bad records and dropped."""
        if not len(keys):
            return keys, keys
        t = keys >> ROW_BITS
        r = keys & ROW_MASK
        if int(t.min()) >= 0 and int(t.max()) < self.n_tables and bool((r < self.table_rows[t]).all()):
            return keys, self.offsets[t] + r
        ok = self.valid(keys)
        self.pc["bad_records"] += int((~ok).sum())
        keys = keys[ok]
        return keys, self.flat(keys)

    def _dedupe(self, keys: np.ndarray, fl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep the first appearance of each row, in order (O(n), through the scratch array)."""
        n = len(fl)
        if n < 2:
            return keys, fl
        if len(self._pos) < n:
            self._pos = np.arange(max(n, 2 * len(self._pos)), dtype=np.int32)
        pos = self._pos[:n]
        self._first[fl[::-1]] = pos[::-1]  # the first appearance is written last
        keep = self._first[fl] == pos  # exactly one position per row in any case
        if keep.all():
            return keys, fl
        return keys[keep], fl[keep]

    def resident_count(self) -> int:
        return self.n_resident + self.n_hinted

    def is_resident(self, keys: np.ndarray) -> np.ndarray:
        """Whether each (valid) key is in the fast tier, by the mirror."""
        return (self.flags[self.flat(keys)] & RESIDENT) != 0

    def _install_policy(self, policy: Policy, *, rebuild: bool) -> None:
        """Give a fresh policy the fast tier's current contents (attach, restart, policy switch).

        The pool's resident keys are shown to the policy as one step of misses; what it admits it then
        owns, and whatever it does not keep (or the capacity cannot hold) is evicted, so the policy's
        view of residency is exact from the first real step on.
        """
        if rebuild:
            keys = np.asarray(self.pool.resident_keys(), dtype=np.int64)
            ok = self.valid(keys)
            if not ok.all():
                log.warning("pool %s: %d resident keys outside the tables; evicting", self.name,
                            int((~ok).sum()))
                self.pool.evict_keys(keys[~ok])
                keys = keys[ok]
        else:
            keys = self.keys_of(np.flatnonzero(self.flags & RESIDENT))
        self.flags[:] = 0
        self.hint_fifo.clear()
        self.n_hinted = 0
        self._pf_dropped = np.zeros(0, dtype=np.int64)
        self.policy = policy
        policy.reset(self.capacity)
        keep = np.zeros(0, dtype=np.int64)
        if len(keys):
            view = StepView(step=-1, keys=keys, hit=np.zeros(len(keys), dtype=bool))
            dec = policy.observe(view)
            admitted = as_keys(dec.admit)
            admitted = admitted[np.isin(admitted, keys)]
            keep = admitted[: self.capacity]
            if len(admitted) > len(keep):
                policy.rejected(admitted[len(keep):])
        drop = np.setdiff1d(keys, keep)
        if len(drop):
            self.pool.evict_keys(drop)
        if len(keep):
            self.flags[self.flat(keep)] = RES
        self.n_resident = len(keep)
        self.pc["adopted"] = len(keep)
        self.pc["adopt_evicted"] = len(drop)
        log.info("pool %s: policy %s, capacity %d rows (+%d hint slots), %d rows kept resident, %d evicted",
                 self.name, self.policy_name, self.capacity, self.hint_slots, len(keep), len(drop))

    def switch_policy(self, policy: Policy, name: str, hint_slots: int | None = None) -> None:
        """Replace the policy; the fast tier's contents carry over (see :meth:`_install_policy`)."""
        if hint_slots is not None and min(hint_slots, self.n_slots) != self.hint_slots:
            if self.n_slots - min(int(hint_slots), self.n_slots) < 1:
                raise PolicyError(f"pool {self.name}: hint_slots {hint_slots} leaves no slot to the policy")
            self.hint_slots = min(int(hint_slots), self.n_slots)
            self.capacity = self.n_slots - self.hint_slots
        self._stop_worker()
        self.policy_name = name
        self._install_policy(policy, rebuild=False)

    # -- the tick --------------------------------------------------------------------------------

    def tick(self) -> int:
        """Drain every ring once, process each complete batch as one step; returns records drained."""
        drained = 0
        backlog = 0
        for info in self.pool.rings():
            idx = _ring_field(info, "index", -1)
            pid = _ring_field(info, "pid")
            if idx < 0:
                continue
            # an app that detached (pid 0) may have left records its last batches logged: they are
            # drained like any others; once the ring is empty its state (and a partial batch) goes
            waiting = _ring_field(info, "waiting", 0 if pid == 0 else 1)
            if pid == 0 and waiting == 0:
                if idx in self.rings:
                    del self.rings[idx]
                    self.ring_drops.pop(idx, None)
                    if self.tap is not None:
                        self.tap(idx, NO_RECORDS)
                continue
            drops = _ring_field(info, "drops")
            prev = self.ring_drops.get(idx, 0)
            if drops > prev:
                self.dropped_total += drops - prev
            self.ring_drops[idx] = drops
            st = self.rings.get(idx)
            if st is None or (pid != 0 and st.pid != pid):
                st = self.rings[idx] = _RingState(pending=[], pid=pid)
            if waiting == 0:
                continue
            recs = self.pool.drain_ring(idx, self.max_drain)
            n = len(recs)
            if n == 0:
                continue
            drained += n
            if self.tap is not None:
                self.tap(idx, recs)
            if n >= self.max_drain:
                backlog += max(0, _ring_field(info, "waiting") - n)
            self._consume(st, np.asarray(recs, dtype=np.uint64))
        self.apply_ready()
        self.backlog = backlog
        self.pc["records"] += drained
        return drained

    def _consume(self, st: _RingState, recs: np.ndarray) -> None:
        types = recs >> REC_TYPE_SHIFT
        ends = np.flatnonzero(types == REC_BATCH_END)
        start = 0
        merge = 0 if self.step_mode else self.coalesce
        if merge and len(ends) > 1:
            # behind the apps: several batches of a ring at once; process runs of consecutive batches
            # of at least `coalesce` records as one step each (fewer, larger steps keep up better)
            cut, n_batches = [], []
            gstart, count = 0, 0
            for e in ends.tolist():
                count += 1
                if e - gstart >= merge:
                    cut.append(e)
                    n_batches.append(count)
                    gstart, count = e + 1, 0
            if count:
                cut.append(int(ends[-1]))
                n_batches.append(count)
        else:
            cut = ends.tolist()
            n_batches = [1] * len(cut)
        for e, nb in zip(cut, n_batches, strict=True):
            seg = recs[start:e]
            if st.pending:
                st.pending.append(seg)
                seg = np.concatenate(st.pending)
                st.pending = []
            if nb > 1:
                seg = seg[(seg >> REC_TYPE_SHIFT) != REC_BATCH_END]
            self._batch(seg, nb)
            start = e + 1
        tail = recs[start:]
        if len(tail):
            st.pending.append(tail)
            # hints for the coming lookups: fetch them now, ahead of the batch's end
            ttypes = tail >> REC_TYPE_SHIFT
            if self.hint_slots and (ttypes == REC_HINT).any() and not self.paused:
                hk = (tail[ttypes == REC_HINT] & REC_KEY_MASK).astype(np.int64)
                self.pc["hint_received"] += len(hk)
                self._fetch_hints(hk)
                st.pending[-1] = tail[ttypes != REC_HINT]

    def flush_ring(self, index: int) -> None:
        """A dead app's ring: drain what is left, process complete batches, forget the partial one."""
        st = self.rings.pop(index, None)
        try:
            recs = self.pool.drain_ring(index, self.max_drain)
        except RecmgError:
            recs = np.zeros(0, dtype=np.uint64)
        if len(recs):
            self._consume(st or _RingState(pending=[]), np.asarray(recs, dtype=np.uint64))
        if self.tap is not None:
            if len(recs):
                self.tap(index, recs)
            self.tap(index, NO_RECORDS)
        self.ring_drops.pop(index, None)

    # -- one step --------------------------------------------------------------------------------

    def _batch(self, seg: np.ndarray, n_batches: int = 1) -> None:
        self.pc["batches"] += n_batches
        if not len(seg):
            self._step(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
            return
        types = seg >> REC_TYPE_SHIFT
        keys = (seg & REC_KEY_MASK).astype(np.int64)
        if not types.any():  # all lookups (the common case)
            self._step(keys, np.zeros(0, dtype=np.int64))
        else:
            self._step(keys[types == REC_LOOKUP], keys[types == REC_HINT])

    def _count(self, name: str, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
        if len(keys):
            self.tc[name] += np.bincount(keys >> ROW_BITS, weights=weights,
                                         minlength=self.n_tables).astype(np.int64)

    def _step(self, lookups: np.ndarray, hints: np.ndarray) -> None:
        lookups, fl_all = self._checked(lookups)
        if len(hints):
            hints, _ = self._checked(hints)
            self.pc["hint_received"] += len(hints)
        nt = self.n_tables
        if len(lookups):
            self.tc["lookups"] += np.bincount(lookups >> ROW_BITS, minlength=nt)
        keys, fl = self._dedupe(lookups, fl_all)
        f = self.flags[fl]
        owned = (f & RES) != 0
        hit = (f & RESIDENT) != 0
        if len(keys):
            hb = np.bincount(((keys >> ROW_BITS) << 1) | hit, minlength=2 * nt).reshape(nt, 2)
            self.tc["on_demand"] += hb[:, 0]
            self.tc["hits"] += hb[:, 1]
            self.tc["unique"] += hb[:, 0] + hb[:, 1]
        special = f & _SPECIAL
        if special.any():
            self._bookkeep(keys, fl, special, hit)
        if len(hints) and self.hint_slots:
            # hints that reached the daemon with the lookups they announced: too late to fetch
            self.pc["hint_late"] += int(np.isin(hints, keys[~hit]).sum())
        if len(self._pf_dropped):
            self.flags[self._pf_dropped] &= ~PF_DROPPED
            self._pf_dropped = np.zeros(0, dtype=np.int64)
        self.pc["steps"] += 1
        if self.paused:
            return
        if self._threaded():
            self._step_early(keys, fl, hints)
            return
        if self._worker is not None:
            self._stop_worker()
        view = StepView(step=self.pc["steps"] - 1, keys=keys, hit=owned, hints=hints)
        t0 = time.perf_counter()
        dec = self.policy.observe(view)
        self.policy_time += time.perf_counter() - t0
        self.budget.refill()
        self._apply(as_keys(dec.evict), as_keys(dec.admit), hints, as_keys(dec.prefetch))

    # -- early admission (the policy's steps in a thread) ------------------------------------------------

    def _threaded(self) -> bool:
        return self.early_admit and not self.step_mode and self.policy.early_admission

    def _tell(self, kind: str, keys: np.ndarray) -> None:
        """Tell the policy the driver evicted (``evicted``) or did not insert (``rejected``) keys: at
        once, or with the next step handed to its worker thread."""
        if not len(keys):
            return
        if self._worker is not None:
            self._notices.append((kind, keys))
        else:
            getattr(self.policy, kind)(keys)

    def _start_worker(self) -> StepWorker:
        self._worker = StepWorker(self.policy, min(self.capacity, EARLY_VICTIMS), self.name)
        self._victims, self._victim_pos = self._worker.victims, 0
        log.info("pool %s: policy %s steps in a thread of their own (early admission)", self.name,
                 self.policy_name)
        return self._worker

    def _step_early(self, keys: np.ndarray, fl: np.ndarray, hints: np.ndarray) -> None:
        """Apply the decisions that are back, fill the step's missed rows now, fetch its hints, hand
        the step to the worker thread."""
        w = self._worker or self._start_worker()
        seq = self.pc["steps"] - 1
        self.apply_ready()
        owned = (self.flags[fl] & RES) != 0
        if not owned.all():
            owned = self._early(keys, fl, owned)
        if len(hints) and self.hint_slots:
            self._fetch_hints(hints)
        view = StepView(step=seq, keys=keys, hit=owned, hints=hints)
        self._in_flight.append((seq, keys, owned))
        notices, self._notices = self._notices, []
        w.submit(seq, view, notices)

    def _early(self, keys: np.ndarray, fl: np.ndarray, owned: np.ndarray) -> np.ndarray:
        """Fill missed rows, evicting early victims for room; returns the rows owned after it."""
        assert self._worker is not None
        if self._worker.victims is not self._victims:
            self._victims, self._victim_pos = self._worker.victims, 0
        missed = keys[~owned]
        need = len(missed) - max(self.capacity - self.n_resident, 0)
        if need > 0 and self._victim_pos < len(self._victims):
            cand = self._victims[self._victim_pos:]
            cand, cfl = self._checked(cand)
            ok = (self.flags[cfl] & RES) != 0
            # never a row this step reads, nor one a step the policy has not seen yet read
            reading = np.concatenate([keys] + [k for _, k, _ in self._in_flight])
            ok[ok] = ~np.isin(cand[ok], reading)
            take = np.flatnonzero(ok)[:need]
            if len(take):
                self._victim_pos += int(take[-1]) + 1
                v, vfl = cand[take], cfl[take]
                self._evict_flat(vfl, v)
                self.n_resident -= len(vfl)
                self._tell("evicted", v)
            else:
                self._victim_pos = len(self._victims)
        room = max(self.capacity - self.n_resident, 0)
        before = self.n_resident
        self._insert(missed[:room], "admit")  # what does not fit waits for the policy's decision
        self.pc["early_admits"] += self.n_resident - before
        return (self.flags[fl] & RES) != 0

    def apply_ready(self) -> int:
        """Apply the decisions the worker thread has finished (none without one); returns how many."""
        w = self._worker
        if w is None:
            return 0
        w.raise_error()
        n = 0
        while w.done:
            seq, dec = w.done.popleft()
            while self._in_flight and self._in_flight[0][0] <= seq:
                self._in_flight.popleft()
            evict, admit, prefetch = as_keys(dec.evict), as_keys(dec.admit), as_keys(dec.prefetch)
            if self._in_flight:
                evict, admit, prefetch = self._spare_later(evict, admit, prefetch)
            self.budget.refill()
            self._apply(evict, admit, EMPTY_KEYS, prefetch)
            n += 1
        return n

    def _spare_later(self, evict: np.ndarray, admit: np.ndarray, prefetch: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Leave out of a decision the rows that a step after it (handed over, not yet decided) read:
        that step's view is what the policy will believe of them. A row it showed resident stays (the
        policy will count it resident); a row it showed missing is neither admitted nor prefetched (the
        policy decides it with that step)."""
        keys = np.concatenate([k for _, k, _ in self._in_flight])
        hit = np.concatenate([h for _, _, h in self._in_flight])
        # the latest view of each row decides: the last occurrence
        uk, last = np.unique(keys[::-1], return_index=True)
        last_hit = hit[::-1][last]
        skipped = 0
        if len(evict):
            pos = np.searchsorted(uk, evict)
            pos[pos >= len(uk)] = 0
            spare = (uk[pos] == evict) & last_hit[pos]
            skipped += int(spare.sum())
            evict = evict[~spare]
        out = []
        for arr in (admit, prefetch):
            if len(arr):
                later = np.isin(arr, uk)
                skipped += int(later.sum())
                arr = arr[~later]
            out.append(arr)
        self.pc["decision_skipped"] += skipped
        return evict, out[0], out[1]

    def sync(self, timeout: float = 60.0) -> None:
        """Wait for the worker thread to finish every step handed over, apply the decisions, and tell
        the policy what is left to tell (no-op without a worker)."""
        w = self._worker
        if w is None:
            return
        for _ in range(4):  # decisions can leave notices (rows not inserted): tell them, apply again
            if self._notices:
                notices, self._notices = self._notices, []
                w.submit(-1, None, notices)
            if not w.wait(timeout):
                raise PolicyError(f"pool {self.name}: policy {self.policy_name} did not finish its steps "
                                  f"in {timeout:.0f} s")
            self.apply_ready()
            if not self._notices:
                break

    def _stop_worker(self) -> None:
        w = self._worker
        if w is None:
            return
        try:
            self.sync()
        finally:
            w.stop()
            self.policy_time += w.seconds
            self._worker = None
            self._in_flight.clear()
            self._victims, self._victim_pos = EMPTY_KEYS, 0

    def close(self) -> None:
        """Stop the policy's worker thread, if any (its pending decisions are applied first)."""
        try:
            self._stop_worker()
        except Exception as exc:  # noqa: BLE001 - closing must not fail on a policy's error
            log.warning("pool %s: policy %s failed while stopping: %s", self.name, self.policy_name, exc)
            self._worker = None

    def _bookkeep(self, keys: np.ndarray, fl: np.ndarray, special: np.ndarray, hit: np.ndarray) -> None:
        """Prefetch and hint accounting for the rows of a step that carry a special flag."""
        useful = ((special & PF_UNREAD) != 0) & hit
        if useful.any():
            self._count("prefetch_useful", keys[useful])
        hu = ((special & HINT_UNREAD) != 0) & hit
        if hu.any():
            self._count("hint_useful", keys[hu])
        late = ((special & PF_DROPPED) != 0) & ~hit
        if late.any():
            self._count("prefetch_late", keys[late])
        self.flags[fl[special != 0]] &= ~(PF_UNREAD | HINT_UNREAD)

    # -- applying a decision --------------------------------------------------------------------------

    def _evict_flat(self, fl: np.ndarray, keys: np.ndarray | None = None) -> None:
        """Evict rows (flat indices, resident in the pool): the pool, the mirror, the counters."""
        if not len(fl):
            return
        if keys is None:
            keys = self.keys_of(fl)
        self.pool.evict_keys(keys)
        self._count("evictions", keys)
        f = self.flags[fl]
        unread = (f & PF_UNREAD) != 0
        if unread.any():
            self.pc["prefetch_evicted_unread"] += int(unread.sum())
        self.flags[fl] = f & PF_DROPPED

    def _fill(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fill keys (not resident) under the budget; returns (filled, dropped)."""
        if not len(keys):
            return keys, keys
        rb = self.table_row_bytes[keys >> ROW_BITS]
        n = self.budget.take(rb)
        filled, dropped = keys[:n], keys[n:]
        if n:
            self.pool.fill_keys(filled)
            self._count("fills", filled)
            self._count("slow_bytes", filled, rb[:n].astype(np.float64))
        return filled, dropped

    def _insert(self, keys: np.ndarray, kind: str) -> None:
        """Admissions or prefetches of the policy: skip resident ones, take over hinted ones, fill."""
        if not len(keys):
            return
        keys, fl = self._checked(keys)
        keys, fl = self._dedupe(keys, fl)
        f = self.flags[fl]
        new = (f & RES) == 0
        if not new.all():
            keys, fl, f = keys[new], fl[new], f[new]
        room = max(self.capacity - self.n_resident, 0)
        if len(keys) > room:
            over = len(keys) - room
            # with a worker thread, early fills may have taken the room a late decision counted on:
            # not the policy's fault
            self.pc["decision_no_room" if self._worker is not None else "policy_overflow"] += over
            self.pc["admit_rejected" if kind == "admit" else "prefetch_rejected"] += over
            self._tell("rejected", keys[room:])
            keys, fl, f = keys[:room], fl[:room], f[:room]
            if not len(keys):
                return
        # rows fetched for a hint: the policy takes them over, no copy
        took = (f & HINT) != 0
        if took.any():
            tf = fl[took]
            self.flags[tf] = (self.flags[tf] & ~HINT) | RES
            self.n_hinted -= len(tf)
            self.n_resident += len(tf)
            keys, fl = keys[~took], fl[~took]
        if kind == "prefetch":
            self._count("prefetch_issued", keys)
        filled, dropped = self._fill(keys)
        if len(filled):
            ff = fl[: len(filled)]
            self.flags[ff] |= (RES | PF_UNREAD) if kind == "prefetch" else RES
            self.n_resident += len(filled)
        if len(dropped):
            self.pc["prefetch_rejected" if kind == "prefetch" else "admit_rejected"] += len(dropped)
            if kind == "prefetch":
                df = fl[len(filled):]
                self.flags[df] |= PF_DROPPED
                self._pf_dropped = np.concatenate([self._pf_dropped, df])
            self._tell("rejected", dropped)

    def _fetch_hints(self, hints: np.ndarray) -> None:
        """Fill hinted rows into the hint reserve (oldest hinted rows make room); counted apart."""
        if not len(hints) or not self.hint_slots:
            return
        hints, fl = self._checked(hints)
        hints, fl = self._dedupe(hints, fl)
        new = (self.flags[fl] & RESIDENT) == 0
        hints, fl = hints[new], fl[new]
        if len(hints) > self.hint_slots:
            self.pc["hint_rejected"] += len(hints) - self.hint_slots
            hints, fl = hints[: self.hint_slots], fl[: self.hint_slots]
        need = self.n_hinted + len(hints) - self.hint_slots
        if need > 0:
            old = []
            while need > 0 and self.hint_fifo:
                f = self.hint_fifo.popleft()
                if self.flags[f] & HINT:
                    old.append(f)
                    need -= 1
            if old:
                of = np.array(old, dtype=np.int64)
                self._evict_flat(of)
                self.n_hinted -= len(of)
        filled, dropped = self._fill(hints)
        if len(filled):
            ff = fl[: len(filled)]
            self.flags[ff] |= HINT | HINT_UNREAD
            self.n_hinted += len(filled)
            self.hint_fifo.extend(ff.tolist())
            self._count("hint_fetched", filled)
        if len(dropped):
            self.pc["hint_rejected"] += len(dropped)

    def _apply(self, evict: np.ndarray, admit: np.ndarray, hints: np.ndarray, prefetch: np.ndarray) -> None:
        if len(evict):
            evict, fl = self._checked(evict)
            evict, fl = self._dedupe(evict, fl)
            mine = (self.flags[fl] & RES) != 0
            if not mine.all():
                evict, fl = evict[mine], fl[mine]
            if len(fl):
                self._evict_flat(fl, evict)
                self.n_resident -= len(fl)
        self._insert(admit, "admit")
        if len(hints):
            self._fetch_hints(hints)
        self._insert(prefetch, "prefetch")

    # -- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of this pool: totals, per table, and the policy's state."""
        tables = []
        for t in range(self.n_tables):
            row = {k: int(v[t]) for k, v in self.tc.items()}
            row["table"] = t
            tables.append(row)
        totals = {k: int(v.sum()) for k, v in self.tc.items()}
        uniq = totals["unique"]
        out: dict[str, Any] = {
            "pool": self.name,
            "mode": self.mode,
            "policy": self.policy_name,
            "paused": self.paused,
            "step_mode": self.step_mode,
            "n_slots": self.n_slots,
            "capacity": self.capacity,
            "hint_slots": self.hint_slots,
            "resident": self.resident_count(),
            "apps": len(self.rings),
            "ring_drops": self.dropped_total,
            "backlog_records": self.backlog,
            "policy_time_s": round(self.policy_time + (self._worker.seconds if self._worker else 0.0), 6),
            "hit_rate": (totals["hits"] / uniq) if uniq else 0.0,
            **totals,
            **self.pc,
            "tables": tables,
            "app": self.app_counters(),
        }
        return out

    def app_counters(self) -> dict[str, int]:
        """What the apps themselves counted (the pool's per-table counters, summed): the truth of what
        their lookups found, beside the daemon's own view of the steps."""
        fn = getattr(self.pool, "counters", None)
        if fn is None:
            return {}
        try:
            tables = fn()["tables"]
        except (RecmgError, KeyError, TypeError):
            return {}
        keys = ("lookups", "unique", "hits", "on_demand", "ring_drops", "slow_bytes")
        return {k: int(sum(int(t.get(k, 0)) for t in tables)) for k in keys}


def create_policy(name: str, options: dict[str, object], *, pool: str | None = None,
                  mode: str = "rows") -> Policy:
    """Build a policy through the registry; an unknown name or a failing factory is a RecmgError.

    ``mode`` is what the pool's driver moves ("rows" or "pages"): a learned policy is given that
    granularity, so that a checkpoint trained on the other one is refused (a PolicyError naming
    ``pool``, the model dir and both granularities)."""
    if policy_mod.is_learned(name):
        gran = Granularity.pages(PAGE_BYTES) if mode == "pages" else Granularity.rows()
        options = {**options, "granularity": gran}
    try:
        pol = policy_mod.create(name, **options)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    except ModelError as exc:
        where = f"pool {pool} ({'page' if mode == 'pages' else 'row'} mode): " if pool else ""
        raise PolicyError(f"{where}{exc}") from None
    if pol.needs_future:
        raise PolicyError(f"policy {name!r} needs the future (OPT) and cannot run live")
    if pol.learned and getattr(pol, "trained", None) is None:
        where = options.get("model_dir")
        raise PolicyError(f"policy {name!r} needs trained models: set model_dir to a checkpoint made by "
                          f"`recmg train`" + (f" ({where} holds none)" if where else ""))
    return pol
