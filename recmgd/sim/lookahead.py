"""Lookahead: the simulator's driver when the next L steps' rows are known ahead (docs/ARCHITECTURE.md,
"Lookahead").

In a server, requests wait in a queue: when step b runs, steps b+1..b+L are already formed. At each step
b the driver (the same for every policy):

1. observes step b: a row is a *hit* when it is in the fast tier (owned by the policy, or held by the
   driver for lookahead), otherwise an on-demand fetch; the policy's view shows ``hit`` only for the
   rows it owns (a row the driver fetched ahead is a miss to the policy, which admits it or not: an
   admission takes the row over without a fetch), and ``announced`` = the deduplicated rows of steps
   b+1..b+L;
2. applies the policy's decision: its evictions (never of an *announced* row: the driver keeps such a
   row, held for its step, and counts ``pin_refused``), its admissions, then releases the rows it held
   for steps that have run and the policy did not admit, then fills the announced rows that are not
   resident, step b+1's first, up to ``budget`` rows (what the slow tier delivers in one step's
   time), then the policy's prefetches within what is left of the budget (the rest is
   ``policy.rejected``). Every insertion that finds the tier full first evicts one of the policy's
   rows, never an announced one nor one step b read, in the policy's own order: its
   ``early_victims(n, reading)`` when it names any, else least recently used first (last read or
   fill); the policy is told (``policy.evicted``). When no row may go, the insertion is refused.

Announced rows are pinned until their step has run. A row announced but not resident when its step
runs is an on-demand fetch; with L >= 1 the count can go below ``bound`` (first uses fetched ahead are
``first_use_ahead``).

A native policy runs this loop in C (``sc_driver_run_lookahead``, native/policy/driver.c), the same
rules (tested equal); the others run :class:`LookaheadDriver`.

The reference for this setting is :class:`BeladyWindow` (``belady``): Belady's eviction order (farthest
next use first) driven the same way; at L = 0 it is OPT on demand accesses.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recmgd.errors import PolicyError
from recmgd.policies.native import NativePolicy, check, i32_ptr, i64_ptr
from recmgd.policy import EMPTY_KEYS, Decision, Policy, StepView, as_keys
from recmgd.sim.driver import PATHS, Counters, Driver, ffi, lib, no_native_step, prepare
from recmgd.trace.steps import Steps

#: the name the simulator gives the reference (Belady with the same window and budget)
REFERENCE = "belady"

NEVER = (1 << 31) - 1  # a step after every step
FREE, OWNED, HELD = 0, 1, 2  # a row: not resident, the policy's, held by the driver for lookahead


@dataclass
class LookaheadCounters(Counters):
    """:class:`~recmgd.sim.driver.Counters` and what lookahead adds (scored steps only)."""

    lookahead: int = 0
    lookahead_fills: int = 0  # announced rows fetched ahead
    lookahead_useful: int = 0  # of those, read when their step ran
    first_use_ahead: int = 0  # reads of rows never seen before that were hits: fetched ahead
    pin_refused: int = 0  # evictions of announced rows the driver refused


def _uses_own_victims(policy: Policy) -> bool:
    return type(policy).early_victims is not Policy.early_victims


class LookaheadDriver:
    """Drives one policy through steps with lookahead ``L`` and a per-step fill ``budget`` (module doc)."""

    def __init__(self, steps: Steps, capacity: int, lookahead: int, budget: int) -> None:
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.steps = steps
        self.capacity = capacity
        self.L = lookahead
        self.budget = budget
        flat = steps.keys[steps.offsets[0]:steps.offsets[-1]]
        self.uniq, inv = np.unique(flat, return_inverse=True)
        self.ids = inv.astype(np.int64)
        self.offs = np.asarray(steps.offsets - steps.offsets[0], dtype=np.int64)
        n = len(self.uniq)
        self.owner = np.zeros(n, dtype=np.int8)
        self.pf = np.zeros(n, dtype=np.int8)  # policy prefetch not read yet: 1 warming, 2 scored
        self.la = np.zeros(n, dtype=np.int8)  # fetched ahead, not read yet: 1 warming, 2 scored
        self.seen = np.zeros(n, dtype=bool)
        self.pins = np.zeros(n, dtype=np.int32)  # steps of the window announcing the row
        self.touch = np.zeros(n, dtype=np.int64)  # order of last read or fill (LRU order)
        self.clock = 0
        self.n_res = 0
        self.extra: dict[int, int] = {}  # keys the trace never reads (prefetched guesses) -> id
        self.extra_keys: list[int] = []
        self.c = LookaheadCounters(lookahead=lookahead)

    # -- helpers ------------------------------------------------------------------------------------

    def step_ids(self, b: int) -> np.ndarray:
        return self.ids[self.offs[b]:self.offs[b + 1]]

    def _stamp(self, ids: np.ndarray) -> None:
        n = len(ids)
        self.touch[ids] = np.arange(self.clock, self.clock + n)
        self.clock += n

    def _window(self, b: int) -> np.ndarray:
        """Ids announced at step b: those of steps b+1..b+L, deduplicated, nearest step first."""
        hi = min(b + self.L, len(self.offs) - 2)
        if hi <= b:
            return np.zeros(0, dtype=np.int64)
        ids = self.ids[self.offs[b + 1]:self.offs[hi + 1]]
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    # -- the run ---------------------------------------------------------------------------------------

    def run(self, policy: Policy, split: int) -> LookaheadCounters:
        """Drive every step; steps from ``split`` on are scored."""
        who = policy.name or type(policy).__name__
        seconds = 0.0
        n_steps = len(self.offs) - 1
        own_victims = _uses_own_victims(policy)
        for b in range(n_steps):
            scored = b >= split
            ids = self.step_ids(b)
            hit = self._observe(ids, scored)
            # the window moves: step b has run, step b+L is announced
            if self.L:
                if b >= 1:
                    self.pins[ids] -= 1
                for s in (range(1, min(self.L, n_steps - 1) + 1) if b == 0 else
                          ([b + self.L] if b + self.L < n_steps else [])):
                    self.pins[self.step_ids(s)] += 1
            ann = self._window(b) if self.L else np.zeros(0, dtype=np.int64)
            view = StepView(step=b, keys=self.uniq[ids], hit=(self.owner[ids] == OWNED),
                            announced=self.uniq[ann] if len(ann) else EMPTY_KEYS)
            del hit
            t0 = time.perf_counter()
            dec = policy.observe(view)
            if scored:
                seconds += time.perf_counter() - t0
            self._apply(policy, dec, ids, ann, scored, own_victims, who)
        self.c.seconds = seconds
        return self.c

    def _observe(self, ids: np.ndarray, scored: bool) -> np.ndarray:
        res = self.owner[ids] != FREE
        if scored:
            c = self.c
            n = len(ids)
            unseen = ~self.seen[ids]
            c.steps += 1
            c.lookups += n
            c.hits += int(res.sum())
            c.on_demand += n - int(res.sum())
            c.floor += int(unseen.sum())
            c.bound += max(int(unseen.sum()), n - self.capacity)
            c.first_use_ahead += int((unseen & res).sum())
            c.prefetch_useful += int((res & (self.pf[ids] == 2)).sum())
            c.lookahead_useful += int((res & (self.la[ids] == 2)).sum())
        self.seen[ids] = True
        self.pf[ids[res]] = 0
        self.la[ids[res]] = 0
        self._stamp(ids)
        return res

    def _apply(self, policy: Policy, dec: Decision, step: np.ndarray, ann: np.ndarray, scored: bool,
               own_victims: bool, who: str) -> None:
        victims = _Victims(self, policy, step, own_victims)
        # the policy's evictions; an announced row stays, held for its step
        ev = self._find(as_keys(dec.evict))
        if len(ev):
            ev = ev[self.owner[ev] == OWNED]
            pinned = self.pins[ev] > 0
            if pinned.any():
                self.owner[ev[pinned]] = HELD
                if scored:
                    self.c.pin_refused += int(pinned.sum())
            gone = ev[~pinned]
            self.owner[gone] = FREE
            self.pf[gone] = 0
            self.la[gone] = 0
            self.n_res -= len(gone)
        # admissions: take over held rows, fetch the others (the step's on-demand fetches)
        rejected: list[int] = []
        for i in self._find(as_keys(dec.admit)).tolist():
            o = self.owner[i]
            if o == OWNED:
                continue
            if o == HELD:
                self.owner[i] = OWNED
                continue
            if not self._room(victims):
                rejected.append(i)
                continue
            self.owner[i] = OWNED
            self.n_res += 1
            self._stamp(np.array([i]))
        # rows held for steps that have run, and not taken over: released
        if self.L:
            held = np.flatnonzero((self.owner == HELD) & (self.pins == 0))
            if len(held):
                self.owner[held] = FREE
                self.la[held] = 0
                self.pf[held] = 0
                self.n_res -= len(held)
        # the announced rows, nearest step first, within the budget
        left = self.budget if self.L else None
        if self.L:
            for i in ann[self.owner[ann] == FREE].tolist():
                if left == 0 or not self._room(victims):
                    break
                self.owner[i] = HELD
                self.la[i] = 2 if scored else 1
                self.n_res += 1
                self._stamp(np.array([i]))
                left -= 1
                if scored:
                    self.c.lookahead_fills += 1
        # the policy's prefetches, within what is left of the budget
        for i in self._find(as_keys(dec.prefetch)).tolist():
            o = self.owner[i]
            if o == OWNED:
                continue
            if o == HELD:
                self.owner[i] = OWNED
                continue
            if left == 0 or not self._room(victims):
                rejected.append(i)
                continue
            self.owner[i] = OWNED
            self.pf[i] = 2 if scored else 1
            self.n_res += 1
            self._stamp(np.array([i]))
            if left is not None:
                left -= 1
            if scored:
                self.c.prefetch_issued += 1
        if victims.taken:
            policy.evicted(self.key_of(np.array(victims.taken, dtype=np.int64)))
        if rejected:
            policy.rejected(self.key_of(np.array(rejected, dtype=np.int64)))
        if self.n_res > self.capacity:  # cannot happen: every insertion made room first
            raise PolicyError(f"{who}: {self.n_res} resident rows, capacity {self.capacity}")

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Ids of keys in order, duplicates dropped; a key the trace never reads (a prefetcher's guess)
        gets a new id."""
        if not len(keys):
            return np.zeros(0, dtype=np.int64)
        n = len(self.uniq)
        pos = np.searchsorted(self.uniq, keys)
        pos[pos >= n] = 0
        ok = self.uniq[pos] == keys
        if not ok.all():
            for j in np.flatnonzero(~ok).tolist():
                pos[j] = self._extra_id(int(keys[j]))
        _, first = np.unique(pos, return_index=True)
        return pos[np.sort(first)].astype(np.int64)

    def _extra_id(self, key: int) -> int:
        i = self.extra.get(key)
        if i is None:
            i = len(self.uniq) + len(self.extra)
            self.extra[key] = i
            self.extra_keys.append(key)
            if i >= len(self.owner):
                grow = max(64, len(self.owner) // 4)
                for name in ("owner", "pf", "la", "seen", "pins", "touch"):
                    a = getattr(self, name)
                    setattr(self, name, np.concatenate([a, np.zeros(grow, dtype=a.dtype)]))
        return i

    def key_of(self, ids: np.ndarray) -> np.ndarray:
        """Keys of ids (the trace's, then the guessed ones)."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self.uniq)
        if not len(ids) or int(ids.max()) < n:
            return self.uniq[ids]
        allk = np.concatenate([self.uniq, np.array(self.extra_keys, dtype=np.int64)])
        return allk[ids]

    def _room(self, victims: _Victims) -> bool:
        """Make room for one insertion (evicting a victim when the tier is full); False when none may go."""
        if self.n_res < self.capacity:
            return True
        v = victims.next()
        if v < 0:
            return False
        self.owner[v] = FREE
        self.pf[v] = 0
        self.la[v] = 0
        self.n_res -= 1
        return True


class _Victims:
    """The policy's rows that may go now, in the policy's order, fetched lazily in batches."""

    def __init__(self, drv: LookaheadDriver, policy: Policy, step: np.ndarray, own: bool) -> None:
        self.drv = drv
        self.policy = policy
        self.step = step
        self.own = own
        self.order: list[int] = []
        self.pos = 0
        self.taken: list[int] = []
        self.asked = 0
        self.done = False

    def _refill(self) -> None:
        d = self.drv
        want = max(16, 2 * self.asked)
        self.asked = want
        if self.own:
            reading = np.concatenate([self.step, np.flatnonzero(d.pins > 0)])
            keys = as_keys(self.policy.early_victims(want + len(self.taken), d.key_of(reading)))
            cand = d._find(keys)
        else:
            ok = d.owner == OWNED
            ok[self.step] = False
            ok &= d.pins == 0
            cand = np.flatnonzero(ok)
            if len(cand) > want + len(self.taken):
                part = np.argpartition(d.touch[cand], want + len(self.taken) - 1)[:want + len(self.taken)]
                cand = cand[part]
            cand = cand[np.argsort(d.touch[cand], kind="stable")]
        self.order = cand.tolist()
        self.pos = 0
        if len(cand) < want:
            self.done = True

    def next(self) -> int:
        d = self.drv
        fresh = False
        while True:
            while self.pos < len(self.order):
                v = self.order[self.pos]
                self.pos += 1
                if d.owner[v] == OWNED and d.pins[v] == 0 and v not in self.taken and not (
                        self.step == v).any():
                    self.taken.append(v)
                    return v
            if fresh:
                return -1
            # the list is used up: ask again (rows inserted since are the policy's too)
            self._refill()
            fresh = self.done


def drive_lookahead(policy: Policy, steps: Steps, capacity: int, warm_steps: int, *, lookahead: int,
                    budget: int, path: str = "auto") -> LookaheadCounters:
    """Run ``policy`` over ``steps`` with lookahead (module doc): the first ``warm_steps`` warm the fast
    tier, the rest are scored. The policy is (fit,) reset and given the future here.

    ``path``: a native policy (which names no victims of its own) runs the whole loop in C
    (``sc_driver_run_lookahead``, the same rules; tested equal) unless ``python``; every other policy
    runs :class:`LookaheadDriver`."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if lookahead < 0 or budget < 0:
        raise ValueError(f"lookahead and budget must be >= 0, got {lookahead} and {budget}")
    warm_steps = max(0, min(warm_steps, len(steps)))
    # L past the last step announces what L = the number of steps does (every step ahead); clamped, the
    # step arithmetic (b + L, in int64 in C) cannot overflow, whatever L was asked for
    window = min(lookahead, max(len(steps), 1))
    native = isinstance(policy, NativePolicy) and not _uses_own_victims(policy) and path != "python"
    if path == "native" and not native:  # (before a learned policy's fit)
        raise no_native_step(policy)
    prepare(policy, steps, capacity, warm_steps)
    if policy.needs_future:
        policy.set_future(steps)
    if native:
        c = _drive_lookahead_native(policy, steps, capacity, warm_steps, window, budget)  # type: ignore[arg-type]
    else:
        c = LookaheadDriver(steps, capacity, window, budget).run(policy, warm_steps)
    c.lookahead = lookahead  # the L asked for (results name runs by it)
    return c


def _drive_lookahead_native(policy: NativePolicy, steps: Steps, capacity: int, split: int, lookahead: int,
                            budget: int) -> LookaheadCounters:
    idmap, handle = policy.native_state()
    ids = idmap.map(steps.keys[steps.offsets[0]:steps.offsets[-1]])
    offsets = np.ascontiguousarray(steps.offsets - steps.offsets[0], dtype=np.int64)
    drv = Driver(idmap, capacity)
    la = ffi.new("sc_la_counters *")
    t0 = time.perf_counter()
    rc = lib.sc_driver_run_lookahead(drv.ptr, handle, i32_ptr(ids), i64_ptr(offsets), len(steps), split,
                                     lookahead, budget, la)
    seconds = time.perf_counter() - t0
    if rc == lib.SC_EOVERFLOW:
        raise PolicyError(f"{policy.name}: {drv.resident} resident rows, capacity {capacity}")
    check(rc, "lookahead driver")
    c = drv.counters()
    return LookaheadCounters(steps=c.steps, lookups=c.lookups, hits=c.hits, on_demand=c.on_demand,
                             prefetch_issued=c.prefetch_issued, prefetch_useful=c.prefetch_useful,
                             floor=c.floor, bound=c.bound, seconds=seconds, lookahead=lookahead,
                             lookahead_fills=int(la.lookahead_fills),
                             lookahead_useful=int(la.lookahead_useful),
                             first_use_ahead=int(la.first_use_ahead), pin_refused=int(la.pin_refused))


class BeladyWindow(Policy):
    """Belady's order (farthest next use first) on demand accesses; the reference for lookahead.

    Admits every missed row and evicts the resident rows used farthest in the future; names its
    victims the same way (:meth:`early_victims`), so the lookahead driver fills announced rows by
    evicting the rows needed last. At L = 0 it is OPT."""

    name = REFERENCE
    needs_future = True

    def __init__(self) -> None:
        self.capacity = 0
        self._next: dict[int, list[int]] = {}
        self._pos: dict[int, int] = {}
        self.resident: set[int] = set()
        self.step = -1
        self._heap: list[tuple[int, int]] = []  # (-next use, key), stale entries skipped

    def reset(self, capacity: int) -> None:
        self.capacity = capacity
        self.resident = set()
        self._heap = []
        self.step = -1
        self._pos = {}

    def set_future(self, steps: Sequence[np.ndarray] | Steps) -> None:
        uses: dict[int, list[int]] = {}
        lst = steps.as_list() if isinstance(steps, Steps) else steps
        for b, keys in enumerate(lst):
            for k in np.asarray(keys, dtype=np.int64).tolist():
                uses.setdefault(k, []).append(b)
        self._next = uses
        self._pos = {}

    def next_use(self, key: int) -> int:
        """Eviction priority of ``key`` (higher goes first): its next use after the current step, ties
        broken as OPT breaks them (the sooner use after that goes first)."""
        u = self._next.get(key)
        if not u:
            return NEVER << 31 | NEVER
        p = self._pos.get(key, 0)
        while p < len(u) and u[p] <= self.step:
            p += 1
        self._pos[key] = p
        nxt = u[p] if p < len(u) else NEVER
        after = u[p + 1] if p + 1 < len(u) else NEVER
        return nxt << 31 | (NEVER - after)

    def observe(self, view: StepView) -> Decision:
        self.step = view.step
        keys = view.keys.tolist()
        missed = []
        for k, h in zip(keys, view.hit.tolist(), strict=True):
            if h or k in self.resident:
                heapq.heappush(self._heap, (-self.next_use(k), k))
            else:
                missed.append(k)
        admit: dict[int, None] = {}
        evict = []
        # each missed row comes in, evicting the farthest next use among the others (which may be a
        # row admitted earlier in this step: then neither is fetched), as OPT does
        for k in missed:
            if len(self.resident) >= self.capacity:
                v = self._pop()
                if v is not None:
                    self.resident.discard(v)
                    if v in admit:
                        del admit[v]
                    else:
                        evict.append(v)
            self.resident.add(k)
            admit[k] = None
            heapq.heappush(self._heap, (-self.next_use(k), k))
        return Decision(evict=as_keys(evict), admit=as_keys(list(admit)))

    def _pop(self) -> int | None:
        """The resident row used farthest in the future, off the heap."""
        while self._heap:
            nu, k = heapq.heappop(self._heap)
            if k in self.resident and -nu == self.next_use(k):
                return k
        return None

    def rejected(self, keys: np.ndarray) -> None:
        for k in np.asarray(keys).tolist():
            self.resident.discard(k)

    def early_victims(self, n: int, reading: np.ndarray) -> np.ndarray:
        """The ``n`` resident rows used farthest in the future, none of them in ``reading``."""
        skip = set(np.asarray(reading).tolist())
        out: list[int] = []
        keep: list[tuple[int, int]] = []
        while len(out) < n and self._heap:
            nu, k = heapq.heappop(self._heap)
            if k not in self.resident or -nu != self.next_use(k):
                continue  # stale
            keep.append((nu, k))
            if k not in skip:
                out.append(k)
        for e in keep:
            heapq.heappush(self._heap, e)
        return as_keys(out)
