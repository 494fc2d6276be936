"""The daemon's inner loop for one pool: drain the access rings, build steps, drive the policy, apply.

One :class:`PoolDriver` per attached pool, made of three parts (docs/ARCHITECTURE.md, "The daemon's
loop"):

- the ring tracker (:mod:`recmgd.daemon.tracker`): drains the rings, in turn under the pool's drain
  budget (``max_drain`` records a tick for all of them together), decodes the records, splits them at
  the batch boundaries (coalescing runs of batches when behind), offers hints ahead of their batch, and
  feeds the taps (consumers of the raw stream, :meth:`PoolDriver.add_tap`);
- the residency mover (:mod:`recmgd.daemon.mover`): the mirror of the fast tier, fills and evictions
  through the pool, the counters, the fill budget;
- the policy step (here, with :mod:`recmgd.daemon.step`): each app batch becomes one
  :class:`~recmgd.policy.StepView` (keys deduplicated in first-appearance order, ``hit`` = resident in
  the fast tier before the step); the policy's :class:`~recmgd.policy.Decision` is applied through the
  mover before the next step: first the app's hints (announced rows, fetched before the policy's own
  moves, counted apart), then the evictions, the admissions and the prefetches, all under the fill
  budget; what the budget drops is passed to ``policy.rejected``.

The mirror is exact because the daemon is the only writer of the fast tier (rebuilt from
``pool.resident_keys()`` on attach). In the deterministic step mode (tests) the budget is a fixed
number of rows per step, so a run is reproducible and equals the simulator's.

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
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from recmgd.daemon.mover import (
    PIN,
    RES,
    RESIDENT,
    SPECIAL,
    FillBudget,
    PoolLike,
    ResidencyMover,
)
from recmgd.daemon.step import EARLY_VICTIMS, StepWorker, create_policy
from recmgd.daemon.tracker import RingState, RingTracker, ring_field
from recmgd.errors import PolicyError, RecmgError
from recmgd.policy import EMPTY_KEYS, Policy, StepView, as_keys

log = logging.getLogger(__name__)

# what other modules import from here (kept for them; the homes are the modules above)
_RingState = RingState
_ring_field = ring_field
__all__ = ["EARLY_VICTIMS", "POOL_COUNTERS", "FillBudget", "PoolDriver", "PoolLike", "StepWorker",
           "create_policy"]

# per-pool counters
POOL_COUNTERS = ("steps", "batches", "records", "bad_records", "prefetch_rejected", "admit_rejected",
                 "hint_received", "hint_rejected", "hint_late", "prefetch_evicted_unread",
                 "policy_overflow", "rings_released", "adopted", "adopt_evicted", "early_admits",
                 "decision_skipped", "decision_no_room", "pin_refused", "hint_early")


def _forward(part: str, name: str, doc: str = "") -> property:
    """An attribute of the driver that lives in one of its parts (read and write)."""

    def get(self: Any) -> Any:
        return getattr(getattr(self, part), name)

    def put(self: Any, value: Any) -> None:
        setattr(getattr(self, part), name, value)

    return property(get, put, doc=doc or f"``{part}.{name}``")


class PoolDriver:
    """Drives one policy from one pool's access rings and applies its decisions to the pool.

    ``tracker`` (:class:`~recmgd.daemon.tracker.RingTracker`) and ``mover``
    (:class:`~recmgd.daemon.mover.ResidencyMover`) are its parts; the attributes below forward to them.
    Memory: the mover's mirror, sized by the rows it tracks (the fast tier's), not by the tables.
    """

    #: what the driver's keys are: rows of the fast tier's slots (recmgd.daemon.pages drives pages)
    mode = "rows"

    # the ring tracker's
    rings = _forward("tracker", "rings")
    ring_drops = _forward("tracker", "ring_drops")
    dropped_total = _forward("tracker", "dropped_total")
    backlog = _forward("tracker", "backlog")
    cut_batches = _forward("tracker", "cut_batches")
    max_drain = _forward("tracker", "max_drain", "the drain budget: records a tick from all the rings")
    coalesce = _forward("tracker", "coalesce")
    # the residency mover's
    budget = _forward("mover", "budget")
    flags = _forward("mover", "flags")
    n_resident = _forward("mover", "n_resident")
    n_hinted = _forward("mover", "n_hinted")
    n_slots = _forward("mover", "n_slots")
    n_tables = _forward("mover", "n_tables")
    offsets = _forward("mover", "offsets")
    table_rows = _forward("mover", "table_rows")
    table_row_bytes = _forward("mover", "table_row_bytes")
    capacity = _forward("mover", "capacity")
    hint_slots = _forward("mover", "hint_slots")
    tc = _forward("mover", "tc")

    def __init__(self, pool: PoolLike, policy: Policy, policy_name: str, *, hint_slots: int = 0,
                 budget: FillBudget | None = None, step_mode: bool = False, max_drain: int = 262144,
                 coalesce: int = 0, early_admit: bool = True, hint_pin_batches: int = 2) -> None:
        self.pool = pool
        self.name = str(pool.name)
        self.early_admit = early_admit
        self.paused = False
        self.pc: dict[str, int] = dict.fromkeys(POOL_COUNTERS, 0)
        self._worker: StepWorker | None = None
        self._notices: list[tuple[str, np.ndarray]] = []  # for the worker, with the next step
        # (step, keys, hit) of the steps handed to the worker whose decisions are not applied yet
        self._in_flight: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
        # (step, keys) of the notices handed to the worker with that step (after the steps before it)
        self._unheard: deque[tuple[int, np.ndarray]] = deque()
        self._victims = EMPTY_KEYS  # the worker's last list of early victims, and how far it is used
        self._victim_pos = 0
        self.mover = ResidencyMover(pool, hint_slots, budget or FillBudget(), self.pc, self._tell,
                                    lambda: self._worker is not None, pin_steps=hint_pin_batches)
        self.tracker = RingTracker(pool, self._batch, self._take_hints, max_drain=max_drain,
                                   coalesce=coalesce, step_mode=step_mode, early_hints=self._early_hints)
        self._step_mode = step_mode
        #: the slow-tier reads of a step's hinted rows run in a thread beside the policy's step
        self.overlap_fills = True
        self._filler: ThreadPoolExecutor | None = None
        self.policy_time = 0.0
        self.policy_name = policy_name
        self.policy = policy
        self._install_policy(policy, rebuild=True)

    @property
    def step_mode(self) -> bool:
        """Deterministic steps (tests): a fixed fill grant per step, no coalescing, no worker thread."""
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: bool) -> None:
        self._step_mode = bool(value)
        self.tracker.step_mode = bool(value)

    # -- the parts' interfaces, for the driver's users -----------------------------------------------

    def add_tap(self, tap: Callable[..., None], *, with_ring: bool = False) -> None:
        """Have ``tap(records)`` called with every chunk of raw records drained from a ring (uint64 ring
        records, batch boundaries and hints included, in page mode page records), before the loop
        processes them: the hook for a consumer of the access stream (a recorder). ``with_ring``: call
        ``tap(records, ring_index)``. See :mod:`recmgd.daemon.tracker`."""
        self.tracker.add_tap(tap, with_ring=with_ring)

    def remove_tap(self, tap: Callable[..., None]) -> None:
        """Stop calling a tap added by :meth:`add_tap`."""
        self.tracker.remove_tap(tap)

    def add_ring_reset(self, listener: Callable[[int], None]) -> None:
        """Have ``listener(ring_index)`` called when a ring's app is gone or replaced, and its unfinished
        batch with it (:meth:`RingTracker.add_reset`)."""
        self.tracker.add_reset(listener)

    def remove_ring_reset(self, listener: Callable[[int], None]) -> None:
        """Stop calling a listener added by :meth:`add_ring_reset`."""
        self.tracker.remove_reset(listener)

    def mid_batch_rings(self) -> dict[int, int]:
        """The rings whose batch is under way, with its records drained (:meth:`RingTracker.mid_batch`)."""
        return self.tracker.mid_batch()

    def flat(self, keys: np.ndarray) -> np.ndarray:
        """Mirror index of each key, -1 for a row the mirror does not track (keys must be valid)."""
        return self.mover.flat(keys)

    def keys_of(self, flat: np.ndarray) -> np.ndarray:
        return self.mover.keys_of(flat)

    def valid(self, keys: np.ndarray) -> np.ndarray:
        return self.mover.valid(keys)

    def resident_count(self) -> int:
        return self.mover.resident_count()

    def is_resident(self, keys: np.ndarray) -> np.ndarray:
        """Whether each (valid) key is in the fast tier, by the mirror."""
        return self.mover.is_resident(keys)

    # -- the policy ------------------------------------------------------------------------------

    def _install_policy(self, policy: Policy, *, rebuild: bool) -> None:
        """Give a fresh policy the fast tier's current contents (attach, restart, policy switch).

        The pool's resident keys are shown to the policy as one step of misses; what it admits it then
        owns, and whatever it does not keep (or the capacity cannot hold) is evicted, so the policy's
        view of residency is exact from the first real step on.
        """
        mv = self.mover
        if rebuild:
            keys = np.asarray(self.pool.resident_keys(), dtype=np.int64)
            ok = mv.valid(keys)
            if not ok.all():
                log.warning("pool %s: %d resident keys outside the tables; evicting", self.name,
                            int((~ok).sum()))
                self.pool.evict_keys(keys[~ok])
                keys = keys[ok]
        else:
            keys = mv.owned_keys()
        mv.reset(np.zeros(0, dtype=np.int64))
        self.policy = policy
        policy.step_by_step()  # only ever observe/rejected/evicted here: it may forget rows it let go
        policy.reset(mv.capacity)
        keep = np.zeros(0, dtype=np.int64)
        if len(keys):
            view = StepView(step=-1, keys=keys, hit=np.zeros(len(keys), dtype=bool))
            dec = policy.observe(view)
            admitted = as_keys(dec.admit)
            admitted = admitted[np.isin(admitted, keys)]
            keep = admitted[: mv.capacity]
            if len(admitted) > len(keep):
                policy.rejected(admitted[len(keep):])
        drop = np.setdiff1d(keys, keep)
        if len(drop):
            self.pool.evict_keys(drop)
        # one key map for the mirror and the policy (both on this thread): not with a policy
        # that steps in a worker thread, whose map the loop would touch concurrently
        mv.reset(keep, None if policy.early_admission else policy.shared_key_map())
        self.pc["adopted"] = len(keep)
        self.pc["adopt_evicted"] = len(drop)
        log.info("pool %s: policy %s, capacity %d rows (+%d hint slots), %d rows kept resident, %d evicted",
                 self.name, self.policy_name, mv.capacity, mv.hint_slots, len(keep), len(drop))

    def switch_policy(self, policy: Policy, name: str, hint_slots: int | None = None) -> None:
        """Replace the policy; the fast tier's contents carry over (see :meth:`_install_policy`)."""
        if hint_slots is not None and min(hint_slots, self.n_slots) != self.hint_slots:
            self.mover.set_hint_slots(hint_slots)
        self._stop_worker()
        self.policy_name = name
        self._install_policy(policy, rebuild=False)

    # -- the tick --------------------------------------------------------------------------------

    def tick(self) -> int:
        """Drain the rings (at most ``max_drain`` records from all of them, taken in turn: the tracker's
        drain budget), process each complete batch as one step; returns records drained."""
        drained = self.tracker.drain()
        self.apply_ready()
        self.pc["records"] += drained
        return drained

    def _consume(self, st: RingState, recs: np.ndarray) -> None:
        """One ring's records (as drained) through the tracker (tests)."""
        self.tracker.consume(st, recs)

    def flush_ring(self, index: int, info: Any = None) -> bool | None:
        """A dead app's ring (``info``: its description, if known): drain what is left under what is
        left of the drain budget, process complete batches; True when the ring is empty (its partial
        batch forgotten; the caller releases it), False when the ticks are to drain the rest in turn,
        None when another app owns the ring by now, or none (not touched; :meth:`RingTracker.flush_ring`)."""
        drained, empty = self.tracker.flush_ring(index, info)
        self.pc["records"] += drained
        return empty

    def _take_hints(self, hints: np.ndarray) -> bool:
        """Hints of a batch that has not ended: fetched now, ahead of it (not while paused)."""
        if not self.hint_slots or self.paused:
            return False
        self.pc["hint_received"] += len(hints)
        self.mover.settle()
        self._pin(hints)
        self.mover.fetch_hints(hints)
        return True

    def _early_hints(self, hints: np.ndarray) -> None:
        """Hints of complete batches drained at once (the daemon is behind): fetched and pinned before
        any of those batches' steps; each step sees (and counts) its own again."""
        if not self.hint_slots or self.paused:
            return
        self.pc["hint_early"] += len(hints)
        self.mover.settle()
        self._pin(hints)
        rejected = self.pc["hint_rejected"]
        self.mover.fetch_hints(hints)
        # what the reserve or the budget could not take now is tried again (and counted) by its step
        self.pc["hint_rejected"] = rejected

    def _pin(self, hints: np.ndarray) -> None:
        """Hinted rows are announced for a batch that has not run: pinned for ``hint_pin_batches``
        steps from now (recmgd.daemon.mover)."""
        mv = self.mover
        ok = mv.valid(hints)
        mv.pin(hints[ok] if not ok.all() else hints, self.pc["steps"])

    # -- one step --------------------------------------------------------------------------------

    def _batch(self, lookups: np.ndarray, hints: np.ndarray, n_batches: int = 1) -> None:
        self.pc["batches"] += n_batches
        self._step(lookups, hints)

    def _step(self, lookups: np.ndarray, hints: np.ndarray) -> None:
        mv = self.mover
        mv.settle()  # rows left with no flag give their indices back (none is held between steps)
        lookups, fl_all = mv.checked(lookups, index=False)  # dedupe finds the kept rows' indices
        announced = EMPTY_KEYS
        if len(hints):
            hints, hfl = mv.checked(hints, index=False)
            self.pc["hint_received"] += len(hints)
            announced, _ = mv.dedupe(hints, hfl)  # the policy's view of the lookahead, as in the simulator
        keys, fl = mv.dedupe(lookups, fl_all)
        f = mv.flags[fl]
        owned = (f & RES) != 0
        hit = (f & RESIDENT) != 0
        mv.count_step(lookups, keys, hit)
        special = f & SPECIAL
        if special.any():
            mv.bookkeep(keys, fl, special, hit)
        if len(hints) and self.hint_slots:
            # hints that reached the daemon with the lookups they announced: too late to fetch
            self.pc["hint_late"] += int(np.isin(hints, keys[~hit]).sum())
        mv.clear_dropped()
        self.pc["steps"] += 1
        # lookahead: the pins whose batches have passed end
        mv.expire_pins(self.pc["steps"])
        if self.paused:
            return
        if len(hints) and self.hint_slots:
            self._pin(hints)
        if self._threaded():
            self._step_early(keys, fl, hints, announced)
            return
        if self._worker is not None:
            self._stop_worker()
        view = StepView(step=self.pc["steps"] - 1, keys=keys, hit=owned, hints=hints, announced=announced)
        self.budget.refill()
        filling = None
        if len(hints):
            # announced rows are fetched before the policy's step, not after it: a batch L ahead must
            # not wait for the policy to think (the view was taken before), and they take the fill
            # budget before the policy's guesses. Their slow-tier reads run in the filler thread while
            # the policy steps (neither holds the GIL in C, and the step does not touch the pool); the
            # step's decision is applied after them, as if they had come first.
            todo, dropped = mv.hints_to_fill(hints)
            if len(todo) and self.overlap_fills:
                filling = self._filler_pool().submit(mv.pool.fill_keys, todo)
            else:
                mv.fill_hinted(todo, dropped)
        t0 = time.perf_counter()
        try:
            dec = self.policy.observe(view)
        finally:
            self.policy_time += time.perf_counter() - t0
            if filling is not None:
                filling.result()
                mv.hints_filled(todo, dropped)
        mv.apply(as_keys(dec.evict), as_keys(dec.admit), as_keys(dec.prefetch))

    def _filler_pool(self) -> ThreadPoolExecutor:
        if self._filler is None:
            self._filler = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"recmgd-fill-{self.name}")
        return self._filler

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

    def _step_early(self, keys: np.ndarray, fl: np.ndarray, hints: np.ndarray,
                    announced: np.ndarray) -> None:
        """Apply the decisions that are back, fetch the step's hints (announced rows first), fill its
        missed rows now, hand the step to the worker thread."""
        w = self._worker or self._start_worker()
        seq = self.pc["steps"] - 1
        self.apply_ready()
        if len(hints) and self.hint_slots:
            self.mover.fetch_hints(hints)
        owned = (self.mover.flags[fl] & RES) != 0
        if not owned.all():
            owned = self._early(keys, fl, owned)
        view = StepView(step=seq, keys=keys, hit=owned, hints=hints, announced=announced)
        self._in_flight.append((seq, keys, owned))
        notices, self._notices = self._notices, []
        self._hand_over(seq, notices)
        w.submit(seq, view, notices)

    def _early(self, keys: np.ndarray, fl: np.ndarray, owned: np.ndarray) -> np.ndarray:
        """Fill missed rows, evicting early victims for room; returns the rows owned after it."""
        assert self._worker is not None
        if self._worker.victims is not self._victims:
            self._victims, self._victim_pos = self._worker.victims, 0
        missed = keys[~owned]
        need = len(missed) - self.mover.room()
        if need > 0 and self._victim_pos < len(self._victims):
            cand = self._victims[self._victim_pos:]
            cand, cfl = self.mover.checked(cand)
            cf = self.mover.flags[cfl]
            ok = ((cf & RES) != 0) & ((cf & PIN) == 0)  # never a row announced for a later batch
            # never a row this step reads, nor one a step the policy has not seen yet read
            reading = np.concatenate([keys] + [k for _, k, _ in self._in_flight])
            ok[ok] = ~np.isin(cand[ok], reading)
            take = np.flatnonzero(ok)[:need]
            if len(take):
                self._victim_pos += int(take[-1]) + 1
                v, vfl = self.mover.dedupe(cand[take], cfl[take])
                self.mover.evict_flat(vfl, v)
                self._tell("evicted", v)
            else:
                self._victim_pos = len(self._victims)
        room = self.mover.room()
        before = self.n_resident
        self.mover.insert(missed[:room], "admit")  # what does not fit waits for the policy's decision
        self.pc["early_admits"] += self.n_resident - before
        return (self.mover.flags[self.mover.flat(keys)] & RES) != 0  # filled rows have new indices

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
            admit, prefetch = self._spare_told(seq, admit, prefetch)
            self.budget.refill()
            self.mover.apply(evict, admit, prefetch)
            n += 1
        return n

    def _hand_over(self, seq: int, notices: list[tuple[str, np.ndarray]]) -> None:
        if notices:
            self._unheard.append((seq, np.concatenate([keys for _, keys in notices])))

    def _spare_told(self, seq: int, admit: np.ndarray, prefetch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leave out of step ``seq``'s decision the rows the policy had not yet been told were evicted
        or not inserted when it decided: it hears that after this decision, and then believes them gone,
        so the decision must not bring them back (an early victim the decision re-admits, say)."""
        while self._unheard and self._unheard[0][0] <= seq:
            self._unheard.popleft()
        told = [keys for _, keys in self._unheard] + [keys for _, keys in self._notices]
        if not told or not (len(admit) or len(prefetch)):
            return admit, prefetch
        gone = np.concatenate(told)
        out = []
        for arr in (admit, prefetch):
            if len(arr):
                heard_later = np.isin(arr, gone)
                self.pc["decision_skipped"] += int(heard_later.sum())
                arr = arr[~heard_later]
            out.append(arr)
        return out[0], out[1]

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
                self._hand_over(self.pc["steps"], notices)  # heard after every step handed over
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
            self._unheard.clear()
            self._victims, self._victim_pos = EMPTY_KEYS, 0

    def close(self) -> None:
        """Stop the policy's worker thread, if any (its pending decisions are applied first), and the
        filler thread."""
        if self._filler is not None:
            self._filler.shutdown(wait=True)
            self._filler = None
        try:
            self._stop_worker()
        except Exception as exc:  # noqa: BLE001 - closing must not fail on a policy's error
            log.warning("pool %s: policy %s failed while stopping: %s", self.name, self.policy_name, exc)
            self._worker = None

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
            "cut_batches": self.cut_batches,
            # records of the rings' unfinished batches, now and at most (bounded by the pool cap)
            "pending_records": self.tracker.n_pending,
            "pending_records_peak": self.tracker.peak_pending,
            "policy_time_s": round(self.policy_time + (self._worker.seconds if self._worker else 0.0), 6),
            "hit_rate": (totals["hits"] / uniq) if uniq else 0.0,
            "state_bytes": self.mover.nbytes() + self.policy.state_bytes(),
            **totals,
            **self.pc,
            **self.policy.counters(),
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
