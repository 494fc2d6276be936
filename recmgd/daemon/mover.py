"""The residency mover: the daemon's mirror of the fast tier, and every fill and eviction it makes.

One :class:`ResidencyMover` per attached pool (inside its :class:`~recmgd.daemon.loop.PoolDriver`).
It keeps a flag byte per tracked row (the mirror: resident for the policy, resident for a hint,
prefetched and not read yet, ...), so residency checks are vectorised and never touch the pool; the
daemon is the only writer of the fast tier, so the mirror is exact. The rows tracked are the ones with
a flag set: the fast tier's (the policy's capacity and the hint reserve) and the few others that carry
a pin, a dropped prefetch or a stale entry in the hint reserve's queue. A key map
(:class:`recmgd.simcore.IdMap`) gives each one a dense *index* into the per-index arrays (the flag
byte, a pin's expiry), which grow with the rows tracked; a row whose flags become 0 gives its index back
at the next :meth:`ResidencyMover.settle` (the driver calls it at each step's start, so the indices
a step holds stay its rows' until the step ends). So the mirror's size follows the fast tier, not
the tables: about 27 bytes a tracked row (the map's 8-byte slots filled to at most 3/4, the index's
key, the free list, the flag byte and the pin's expiry). It applies a decision through the
pool (first the app's hints, then the evictions, the admissions and the prefetches), keeps the
per-table counters, and caps fills with the :class:`FillBudget`; what the budget or the capacity drops
it reports through ``tell("rejected", keys)`` (and evictions the policy did not ask for through
``tell("evicted", keys)``, by the driver).

Hints fill a reserve of ``hint_slots`` rows apart from the policy's capacity (oldest hinted rows make
room); an admission or prefetch of a hinted row takes it over without a copy. The reserve's queue
(``hint_fifo``, oldest first) holds at most one entry per row (flag ``QUEUED``): an entry whose row left
the reserve (taken over, evicted) is stale and skipped, and becomes live again if the row comes back,
so a row is never evicted twice (the mirror would then count a slot the pool does not have free).

Pins (lookahead): a hinted row is announced for a batch that has not run yet, so it is *pinned*
(:meth:`ResidencyMover.pin`) for ``pin_steps`` steps after its latest hint (a new hint of a pinned row
extends its pin; a read does not end it: with the server announcing L batches ahead, a row announced
for batch i+L may also be read by batch i+1). A pinned row is never evicted: not by the hint reserve's
own turnover, not as an early victim, and not by the policy's decision: an eviction of a pinned row the
policy owns is refused and the row moves to the hint reserve (``pin_refused``), so the policy, which
believes it gone, sees it as a miss when it is read and takes it over. (FBGEMM's issue #1201 is this
bug in their pipeline: rows prefetched for the next batch evicted before it ran.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol, overload

import numpy as np

from recmgd.errors import PolicyError
from recmgd.keys import ROW_BITS, ROW_MASK
from recmgd.simcore import DAEMON_LOAD, HOLDER_MOVER, IdMap, first_mask

log = logging.getLogger(__name__)


class NoSlotsError(PolicyError):
    """The pool has no fast-tier slots (a "no-cache" pool: every row is read from the slow tier), so
    there is nothing for a policy to manage: not a failure, the daemon skips such a pool."""


# per-table counters the mover keeps (all int64)
TABLE_COUNTERS = ("lookups", "unique", "hits", "on_demand", "fills", "evictions", "slow_bytes",
                  "prefetch_issued", "prefetch_useful", "prefetch_late", "hint_fetched", "hint_useful")

# per-row flags of the fast-tier mirror (one byte a row)
RES = np.uint8(1)  # resident, owned by the policy
HINT = np.uint8(2)  # resident, fetched for an app's hint (the hint reserve)
PF_UNREAD = np.uint8(4)  # prefetched, not read yet
HINT_UNREAD = np.uint8(8)  # fetched for a hint, not read yet
PF_DROPPED = np.uint8(16)  # a prefetch the budget dropped in the last step (read now: late)
PIN = np.uint8(32)  # announced (hinted) for a batch that has not run yet: never evicted
QUEUED = np.uint8(64)  # has an entry (live or stale) in the hint reserve's queue
FIFO_SLACK = 1024  # stale entries the hint reserve's queue may hold beyond twice its live ones
INITIAL_ROWS = 1024  # the per-index arrays' first size (they double as the rows tracked grow)
RESIDENT = RES | HINT
SPECIAL = PF_UNREAD | HINT_UNREAD | PF_DROPPED


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


#: tell(kind, keys): "evicted" | "rejected" keys, told to the policy (at once or with its next step)
Tell = Callable[[str, np.ndarray], None]


class ResidencyMover:
    """The fast-tier mirror of one pool and the moves that change it (see the module doc).

    Memory: sized by the rows tracked (the fast tier's and the few non-resident rows with a flag), not
    by the tables. ``flags`` is indexed by the key map's index (:meth:`flat`); its last element is never
    written and stays 0, so an untracked row's index (-1) reads flags 0. The key
    map is the mover's own, or one shared with the policy (:meth:`reset` with ``key_map``: the
    mover holds its ids as :data:`~recmgd.simcore.HOLDER_MOVER`); then an index may belong to a row only
    the policy tracks, whose flags are 0.
    ``pc`` is the driver's pool counters (shared); ``threaded()`` says whether the policy steps in a
    worker thread (then a decision that finds no room is not the policy's fault: ``decision_no_room``).
    """

    def __init__(self, pool: PoolLike, hint_slots: int, budget: FillBudget, pc: dict[str, int], tell: Tell,
                 threaded: Callable[[], bool], *, pin_steps: int = 2) -> None:
        self.pool = pool
        self.name = str(pool.name)
        self.budget = budget
        self.pc = pc
        self.tell = tell
        self.threaded = threaded
        tables = list(pool.tables)
        self.n_tables = len(tables)
        self.table_rows = np.array([int(t.rows) for t in tables], dtype=np.int64)
        self.table_row_bytes = np.array([int(t.row_bytes) for t in tables], dtype=np.int64)
        self.offsets = np.zeros(self.n_tables + 1, dtype=np.int64)
        np.cumsum(self.table_rows, out=self.offsets[1:])
        self.n_slots = int(pool.n_slots)
        self.hint_slots = 0
        self.capacity = 0
        self.set_hint_slots(hint_slots)
        self.total_rows = int(self.offsets[-1])
        self._index = IdMap(DAEMON_LOAD)  # key -> index of the rows tracked (a flag set)
        self._shared = False  # whether _index is a policy's map (shared_key_map)
        self.flags = np.zeros(INITIAL_ROWS + 1, dtype=np.uint8)  # the fast-tier mirror (RES, HINT, ...)
        self._loose: list[np.ndarray] = []  # indices whose flags may have become 0 (see settle)
        self.pf_dropped = np.zeros(0, dtype=np.int32)  # indices of rows dropped in the last step
        self.n_resident = 0
        self.hint_fifo: deque[int] = deque()  # indices, oldest first, one per row (QUEUED)
        self._fifo_limit = FIFO_SLACK  # compact the queue (drop stale entries) beyond this length
        self.n_hinted = 0
        self.tc = {k: np.zeros(self.n_tables, dtype=np.int64) for k in TABLE_COUNTERS}
        self.pin_steps = int(pin_steps)
        # (expiry, indices), oldest first: a PIN flag keeps a row's index while any entry holds it
        self._pin_queue: deque[tuple[int, np.ndarray]] = deque()

    def set_hint_slots(self, hint_slots: int) -> None:
        """Split the slots into the hint reserve and the policy's capacity (at least one row). A pool
        without slots raises :class:`NoSlotsError` (nothing to manage), whatever ``hint_slots``."""
        if self.n_slots < 1:
            raise NoSlotsError(f"pool {self.name} has no fast-tier slots: nothing to manage")
        hs = min(int(hint_slots), self.n_slots)
        if self.n_slots - hs < 1:
            raise PolicyError(f"pool {self.name}: hint_slots {hint_slots} leaves no slot of {self.n_slots} "
                              "to the policy")
        self.hint_slots = hs
        self.capacity = self.n_slots - hs

    # -- keys, rows, residency -----------------------------------------------------------------------

    def flat(self, keys: np.ndarray) -> np.ndarray:
        """Mirror index of each key, -1 for a row not tracked (``flags[-1]`` is 0). An index stays its
        row's until the next :meth:`settle`."""
        fl = self._index.find(keys)
        if self._shared:
            self._fit()  # a shared map's ids may be ones the policy mapped since
        return fl

    def keys_of(self, flat: np.ndarray) -> np.ndarray:
        """Keys of tracked rows' indices."""
        return self._index.keys(flat)

    def _track(self, keys: np.ndarray) -> np.ndarray:
        """Indices of rows (valid keys) about to get a flag, tracking them first (the arrays grow)."""
        ids = self._index.map(keys, HOLDER_MOVER)
        self._fit()
        return ids

    def _fit(self) -> None:
        """Grow the flags to the key map's ids (by a quarter at least)."""
        need = self._index.size + 1
        if need > len(self.flags):
            size = max(need, len(self.flags) + len(self.flags) // 4) + 1
            new = np.zeros(size, dtype=self.flags.dtype)
            new[: len(self.flags) - 1] = self.flags[:-1]  # the last element stays 0
            self.flags = new

    def _loosen(self, fl: np.ndarray) -> None:
        """Rows (indices) whose flags may have become 0: released at the next :meth:`settle`."""
        if len(fl):
            self._loose.append(fl)

    def settle(self) -> None:
        """Give back the indices of rows whose flags are 0 (their keys are no longer tracked). Called by
        the driver at a step's start: indices held during a step stay their rows' until then."""
        if not self._loose:
            return
        fl = np.concatenate(self._loose) if len(self._loose) > 1 else self._loose[0]
        self._loose = []
        fl = fl[self.flags[fl] == 0]
        if len(fl):
            self._index.release(fl, HOLDER_MOVER)

    @property
    def shares_key_map(self) -> bool:
        """Whether the key map is the policy's (see :meth:`reset`)."""
        return self._shared

    def tracked(self) -> int:
        """Rows the mirror tracks now (a flag set, or given back at the next settle)."""
        return self._index.held(HOLDER_MOVER)

    def nbytes(self) -> int:
        """Bytes of the mirror's per-row state: the key map (when its own: a shared map is counted as the
        policy's) and the flags."""
        return (0 if self._shared else self._index.nbytes) + self.flags.nbytes

    def valid(self, keys: np.ndarray) -> np.ndarray:
        t = keys >> ROW_BITS
        ok = (keys >= 0) & (t < self.n_tables)
        if ok.all():
            return (keys & ROW_MASK) < self.table_rows[t]
        ok[ok] = (keys[ok] & ROW_MASK) < self.table_rows[t[ok]]
        return ok

    @overload
    def checked(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    def checked(self, keys: np.ndarray, index: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    def checked(self, keys: np.ndarray, index: Literal[False]) -> tuple[np.ndarray, None]: ...

    def checked(self, keys: np.ndarray, index: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(valid keys, their indices, -1 for rows not tracked); invalid keys are counted as bad
        records and dropped. ``index=False``: no indices (None), for keys about to be deduplicated
        (:meth:`dedupe` then finds the indices of the rows it keeps only)."""
        if len(keys):
            t = keys >> ROW_BITS
            r = keys & ROW_MASK
            if not (int(t.min()) >= 0 and int(t.max()) < self.n_tables
                    and bool((r < self.table_rows[t]).all())):
                ok = self.valid(keys)
                self.pc["bad_records"] += int((~ok).sum())
                keys = keys[ok]
        return keys, self.flat(keys) if index else None

    def dedupe(self, keys: np.ndarray, fl: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Keep the first appearance of each row (valid keys), in order (O(n): a hash set sized by the
        keys, recmgd.simcore.first_mask); ``fl`` None: the kept rows' indices are found now."""
        if len(keys) >= 2:
            keep = first_mask(keys)
            if not keep.all():
                keys = keys[keep]
                if fl is not None:
                    fl = fl[keep]
        return keys, self.flat(keys) if fl is None else fl

    def resident_count(self) -> int:
        return self.n_resident + self.n_hinted

    def is_resident(self, keys: np.ndarray) -> np.ndarray:
        """Whether each (valid) key is in the fast tier, by the mirror."""
        return (self.flags[self.flat(keys)] & RESIDENT) != 0

    def owned_keys(self) -> np.ndarray:
        """Keys of every row in the fast tier (the policy's and the hint reserve's)."""
        return self.keys_of(np.flatnonzero(self.flags & RESIDENT).astype(np.int32))

    def reset(self, keep: np.ndarray, key_map: IdMap | None = None) -> None:
        """Forget the mirror and own exactly ``keep`` (resident in the pool, distinct valid keys) for
        the policy. ``key_map``: the policy's shared map (:meth:`recmgd.policy.Policy.shared_key_map`),
        used from now on instead of a map of the mover's own."""
        self._shared = key_map is not None
        self._index = key_map if key_map is not None else IdMap(DAEMON_LOAD)
        self.flags = np.zeros(max(INITIAL_ROWS, self._index.size) + 1, dtype=np.uint8)
        self._loose = []
        self._pin_queue.clear()
        self.hint_fifo.clear()
        self._fifo_limit = FIFO_SLACK
        self.n_hinted = 0
        self.pf_dropped = np.zeros(0, dtype=np.int32)
        if len(keep):
            self.flags[self._track(keep)] = RES
        self.n_resident = len(keep)

    def room(self) -> int:
        """Rows the policy may still insert: its capacity less what it owns, and no more than the free
        slots (refused evictions of pinned rows can leave the hint reserve over its size)."""
        return max(min(self.capacity - self.n_resident, self.n_slots - self.resident_count()), 0)

    # -- pins (lookahead) ------------------------------------------------------------------------------

    def pin(self, keys: np.ndarray, now: int) -> None:
        """Pin rows (valid keys) announced at step count ``now`` until ``pin_steps`` steps have
        passed (a row pinned already: its pin now ends that late)."""
        if not len(keys) or self.pin_steps <= 0:
            return
        until = now + self.pin_steps
        fl = self._track(keys)  # a new array: the queue keeps it
        self.flags[fl] |= PIN
        q = self._pin_queue
        if q and q[-1][0] == until:  # the same expiry as the last pins: one entry
            q[-1] = (until, np.concatenate([q[-1][1], fl]))
        else:
            q.append((until, fl))

    def expire_pins(self, now: int) -> None:
        """End the pins whose ``pin_steps`` have passed at step count ``now`` (a row pinned again since
        keeps its later pin: it is in a later entry of the queue, whose expiries ascend; the few entries
        of the last ``pin_steps`` steps)."""
        q = self._pin_queue
        while q and q[0][0] <= now:
            _, fl = q.popleft()
            if q:
                fl = fl[~np.isin(fl, np.concatenate([later for _, later in q]))]
            if len(fl):
                self.flags[fl] &= ~PIN
                self._loosen(fl)

    def pinned_count(self) -> int:
        """Rows pinned now (resident or not)."""
        return int(np.count_nonzero(self.flags & PIN))

    # -- counting ------------------------------------------------------------------------------------

    def count(self, name: str, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
        if len(keys):
            self.tc[name] += np.bincount(keys >> ROW_BITS, weights=weights,
                                         minlength=self.n_tables).astype(np.int64)

    def count_step(self, lookups: np.ndarray, keys: np.ndarray, hit: np.ndarray) -> None:
        """A step's lookups, and its unique rows as hits and on-demand fetches."""
        nt = self.n_tables
        if len(lookups):
            self.tc["lookups"] += np.bincount(lookups >> ROW_BITS, minlength=nt)
        if len(keys):
            hb = np.bincount(((keys >> ROW_BITS) << 1) | hit, minlength=2 * nt).reshape(nt, 2)
            self.tc["on_demand"] += hb[:, 0]
            self.tc["hits"] += hb[:, 1]
            self.tc["unique"] += hb[:, 0] + hb[:, 1]

    def bookkeep(self, keys: np.ndarray, fl: np.ndarray, special: np.ndarray, hit: np.ndarray) -> None:
        """Prefetch and hint accounting for the rows of a step that carry a special flag."""
        useful = ((special & PF_UNREAD) != 0) & hit
        if useful.any():
            self.count("prefetch_useful", keys[useful])
        hu = ((special & HINT_UNREAD) != 0) & hit
        if hu.any():
            self.count("hint_useful", keys[hu])
        late = ((special & PF_DROPPED) != 0) & ~hit
        if late.any():
            self.count("prefetch_late", keys[late])
        sf = fl[special != 0]
        self.flags[sf] &= ~(PF_UNREAD | HINT_UNREAD)
        self._loosen(sf)

    def clear_dropped(self) -> None:
        """A step ran: the prefetches dropped before it can no longer be late."""
        if len(self.pf_dropped):
            self.flags[self.pf_dropped] &= ~PF_DROPPED
            self._loosen(self.pf_dropped)
            self.pf_dropped = np.zeros(0, dtype=np.int32)

    # -- moving --------------------------------------------------------------------------------------

    def evict_flat(self, fl: np.ndarray, keys: np.ndarray | None = None) -> int:
        """Evict rows (indices of tracked rows, with their keys when the caller has them): the pool, the
        mirror, ``n_resident`` / ``n_hinted``, the counters.
        Rows the mirror does not hold and repeats are left out (each row is evicted once); returns how
        many rows were evicted."""
        if not len(fl):
            return 0
        if keys is None:
            keys = self.keys_of(fl)
        keys, fl = self.dedupe(keys, fl)
        f = self.flags[fl]
        held = (f & RESIDENT) != 0
        if not held.all():
            keys, fl, f = keys[held], fl[held], f[held]
            if not len(fl):
                return 0
        n_hint = int(np.count_nonzero(f & HINT))
        self.pool.evict_keys(keys)
        self.n_hinted -= n_hint
        self.n_resident -= len(fl) - n_hint
        self.count("evictions", keys)
        unread = (f & PF_UNREAD) != 0
        if unread.any():
            self.pc["prefetch_evicted_unread"] += int(unread.sum())
        self.flags[fl] = f & (PF_DROPPED | QUEUED)  # a queue entry stays (stale) until it is popped
        self._loosen(fl)
        return len(fl)

    def _queue(self, fl: np.ndarray) -> None:
        """Rows (indices) that entered the hint reserve: to the queue's end, unless their entry is
        still in it (it becomes live again where it is). Stale entries are dropped now and then."""
        fresh = fl[(self.flags[fl] & QUEUED) == 0]
        if len(fresh):
            self.flags[fresh] |= QUEUED
            self.hint_fifo.extend(fresh.tolist())
        if len(self.hint_fifo) > self._fifo_limit:
            q = np.fromiter(self.hint_fifo, dtype=np.int64, count=len(self.hint_fifo))
            live = (self.flags[q] & HINT) != 0
            stale = q[~live].astype(np.int32)
            self.flags[stale] &= ~QUEUED
            self._loosen(stale)
            self.hint_fifo = deque(q[live].tolist())
            self._fifo_limit = 2 * max(len(self.hint_fifo), self.hint_slots) + FIFO_SLACK

    def evict_owned(self, keys: np.ndarray) -> None:
        """Evict the policy's rows among ``keys`` (others are ignored)."""
        if not len(keys):
            return
        keys, fl = self.dedupe(*self.checked(keys, index=False))
        mine = (self.flags[fl] & RES) != 0
        if not mine.all():
            keys, fl = keys[mine], fl[mine]
        pinned = (self.flags[fl] & PIN) != 0
        if pinned.any():
            # announced for a batch that has not run: kept, in the hint reserve (the policy takes it
            # over when it is read)
            pf = fl[pinned]
            self.flags[pf] = (self.flags[pf] & ~RES) | HINT
            self.n_resident -= len(pf)
            self.n_hinted += len(pf)
            self._queue(pf)
            self.pc["pin_refused"] += len(pf)
            keys, fl = keys[~pinned], fl[~pinned]
        self.evict_flat(fl, keys)

    def fill(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fill keys (not resident) under the budget; returns (filled, dropped)."""
        filled, dropped = self.grant(keys)
        if len(filled):
            self.pool.fill_keys(filled)
            self.count_fills(filled)
        return filled, dropped

    def grant(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fill budget's share of keys: (to fill, dropped), in order."""
        if not len(keys):
            return keys, keys
        n = self.budget.take(self.table_row_bytes[keys >> ROW_BITS])
        return keys[:n], keys[n:]

    def count_fills(self, filled: np.ndarray) -> None:
        self.count("fills", filled)
        self.count("slow_bytes", filled, self.table_row_bytes[filled >> ROW_BITS].astype(np.float64))

    def insert(self, keys: np.ndarray, kind: str) -> None:
        """Admissions (``kind`` "admit") or prefetches ("prefetch") of the policy: skip resident ones,
        take over hinted ones, fill the rest within the capacity and the budget."""
        if not len(keys):
            return
        keys, fl = self.dedupe(*self.checked(keys, index=False))
        f = self.flags[fl]
        new = (f & RES) == 0
        if not new.all():
            keys, fl, f = keys[new], fl[new], f[new]
        room = self.room()
        if len(keys) > room:
            over = len(keys) - room
            # with a worker thread, early fills may have taken the room a late decision counted on:
            # not the policy's fault
            self.pc["decision_no_room" if self.threaded() else "policy_overflow"] += over
            self.pc["admit_rejected" if kind == "admit" else "prefetch_rejected"] += over
            self.tell("rejected", keys[room:])
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
            self.count("prefetch_issued", keys)
        filled, dropped = self.fill(keys)
        if len(filled):
            ff = self._track(filled)
            self.flags[ff] |= (RES | PF_UNREAD) if kind == "prefetch" else RES
            self.n_resident += len(filled)
        if len(dropped):
            self.pc["prefetch_rejected" if kind == "prefetch" else "admit_rejected"] += len(dropped)
            if kind == "prefetch":
                df = self._track(dropped)
                self.flags[df] |= PF_DROPPED
                self.pf_dropped = np.concatenate([self.pf_dropped, df])
            self.tell("rejected", dropped)

    def fetch_hints(self, hints: np.ndarray) -> None:
        """Fill hinted rows into the hint reserve; counted apart. ``hints`` come nearest batch first:
        what the reserve or the budget cannot take is the tail (the rows needed last). Room is made by
        evicting the oldest hinted rows that are not pinned."""
        self.fill_hinted(*self.hints_to_fill(hints))

    def fill_hinted(self, todo: np.ndarray, dropped: np.ndarray) -> None:
        """Fill what :meth:`hints_to_fill` granted, now, and book it (:meth:`hints_filled`)."""
        if len(todo):
            self.pool.fill_keys(todo)
        self.hints_filled(todo, dropped)

    def hints_to_fill(self, hints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`fetch_hints` up to the fill itself: room made in the reserve, the budget granted;
        returns (keys to fill, keys the budget dropped). The caller fills the first (``pool.fill_keys``,
        which may run beside other work that does not touch the pool) and then calls
        :meth:`hints_filled`."""
        if not len(hints) or not self.hint_slots:
            none = np.zeros(0, np.int64)
            return none, none
        hints, fl = self.dedupe(*self.checked(hints, index=False))
        new = (self.flags[fl] & RESIDENT) == 0
        hints, fl = hints[new], fl[new]
        if len(hints) > self.hint_slots:
            self.pc["hint_rejected"] += len(hints) - self.hint_slots
            hints, fl = hints[: self.hint_slots], fl[: self.hint_slots]
        need = self.n_hinted + len(hints) - self.hint_slots
        if need > 0:
            need -= self._make_room(need)
            if need > 0:  # the reserve is held by pinned rows: the hints for the latest batches wait
                n = max(len(hints) - need, 0)
                self.pc["hint_rejected"] += len(hints) - n
                hints, fl = hints[:n], fl[:n]
        return self.grant(hints)

    def hints_filled(self, filled: np.ndarray, dropped: np.ndarray) -> None:
        """The bookkeeping of hinted rows filled (into the reserve, pinned as they were) or dropped."""
        if len(filled):
            self.count_fills(filled)
            ff = self._track(filled)
            self.flags[ff] |= HINT | HINT_UNREAD
            self.n_hinted += len(filled)
            self._queue(ff)
            self.count("hint_fetched", filled)
        if len(dropped):
            self.pc["hint_rejected"] += len(dropped)

    def _make_room(self, need: int) -> int:
        """Evict up to ``need`` of the oldest rows in the hint reserve that are not pinned; returns how
        many. Pinned rows keep their place; stale entries (rows no longer in the reserve) leave."""
        flags, fifo = self.flags, self.hint_fifo
        old: list[int] = []
        kept: list[int] = []
        stale: list[int] = []  # entries of rows no longer in the reserve: their flags may now be 0
        while len(old) < need and fifo:
            f = fifo.popleft()
            fv = flags[f]
            if fv & HINT and fv & PIN:
                kept.append(f)  # announced for a batch still to run: stays, queued where it was
                continue
            flags[f] = fv & ~QUEUED
            if fv & HINT:
                old.append(f)
            else:
                stale.append(f)
        fifo.extendleft(reversed(kept))
        if stale:
            self._loosen(np.array(stale, dtype=np.int32))
        if not old:
            return 0
        return self.evict_flat(np.array(old, dtype=np.int32))

    def apply(self, evict: np.ndarray, admit: np.ndarray, prefetch: np.ndarray) -> None:
        """A policy's decision: the evictions, the admissions, then the prefetches. (The step's hints are
        fetched before the policy's step by the driver: announced rows are certain to be read and take the
        fill budget before the policy's guesses.)"""
        self.evict_owned(evict)
        self.insert(admit, "admit")
        self.insert(prefetch, "prefetch")
