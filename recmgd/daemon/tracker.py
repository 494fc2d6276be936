"""The ring tracker: drains a pool's access rings and turns the records into batches.

One :class:`RingTracker` per attached pool (inside its :class:`~recmgd.daemon.loop.PoolDriver`). Each
:meth:`RingTracker.drain` (one a tick) looks at every ring once: it follows the apps that come and go (a
ring whose app detached is drained to the end, then forgotten) and counts the records the rings
dropped; then it drains the rings that have records waiting, in turn under the pool's drain budget
(below), decodes the records (format in recmgd.keys: type in bits 62..63, key below), splits them at
the batch boundaries (a batch not ended yet waits in the ring's state) and hands each batch to the
driver as ``on_batch(lookups, hints, n_batches)``. The refinements:

- *The drain budget*: a pool has up to 4096 rings and its apps are not trusted, so one drain takes at
  most ``max_drain`` records from all of the pool's rings together (not from each: 512 rings kept full
  made one tick drain 512 x 65536 records, 1.4 s while other pools, the control socket and the watchdog
  waited). The rings with records waiting take turns in ring order from ``next_turn`` (wrapping), each
  drained up to what is left of the budget; once it is spent, the first ring without a turn is where the
  next drain starts, so every ring is drained within as many drains as rings hold records, and none
  starves. What is not drained stays in its ring for the next tick (``backlog``); an app whose ring
  fills meanwhile drops records, counted in ``dropped_total``. While the rings hold less than the
  budget (the common case) every ring is drained in ring order, as without a budget. (In page mode a
  ring record may become several page records: the budget counts what the pool's ``drain_ring`` gives.)
  A dead app's ring (:meth:`RingTracker.flush_ring`, from the app check) is drained under the same
  budget: the check takes at most what is left of it (``spent``, taken from the next drain's budget),
  and what it cannot take the drains take in turn like any ring's, until a later check finds the ring
  empty and releases it.
- *Hints ahead of their batch*: hint records (type 2) in the part of a batch that has not ended yet
  are offered to ``take_hints(keys)`` at once; when it takes them (True) they leave the batch, so the
  driver can fetch them before the lookups they announce arrive.
- *Hints first when behind*: when one drain of a ring holds several complete batches (the daemon fell
  behind the app), the hint records among them are handed to ``early_hints(keys)`` before the first of
  those batches is processed (never in step mode): a batch announced L batches ahead must not wait for
  the policy's steps of the batches before it. They stay in their batches too (the step's view and its
  counters see them; fetching a row already fetched does nothing).
- *Coalescing*: with ``coalesce`` > 0 (never in step mode) a ring that fell behind has runs of its
  batches merged into one batch of at least that many records (``n_batches`` says how many).
- *The batch cap*: an app is not trusted to end its batches. A batch that has not ended once it holds
  :data:`MAX_BATCH_RECORDS` records (counted as drained, hints included) is cut at the end of the
  drained array that took it there: what is pending is handed on as if a batch end had come there (the
  policy steps on it; the records after it start the next batch) and counted in ``cut_batches`` (the
  pool's stats; logged once per pool). The daemon's memory for a ring's unfinished batch stays below
  the cap (plus the one drained array, ``max_drain`` records, while it is split).
- *The pool cap*: a pool has up to 4096 rings, each an app may fill without batch ends, so the
  unfinished batches of all its rings together (``n_pending``, records as drained) are bounded too, by
  :data:`MAX_POOL_PENDING_RECORDS`: a drain that takes the sum to it cuts the largest unfinished batch
  (ties: the lowest ring index), by the same rule and counted the same way, until the sum is below it
  again (one cut always does: the largest batch holds at least what the drain added). Each cut hands on
  at most ``max_batch`` + ``max_drain`` records, so no tick processes more than the pool cap plus what it
  drained (at most ``max_drain``, the drain budget).

The recording's :class:`recmgd.daemon.record.BatchSplitter` cuts by the same two rules, so in row mode a
recording has its batch boundaries where the daemon cut. A recording that starts while a ring's batch is
under way (:meth:`RingTracker.mid_batch`: part of it drained) begins that ring at its next batch.

Ring resets: a ring's state goes when its app detached and the ring is empty, when a dead app's ring is
flushed empty (:meth:`RingTracker.flush_ring`), and when another app owns the ring or had it since the
last drain (a new app took over a dead one's ring before the app check released it; the ring's claim
count, ``recmg_ring_state.claims``, tells a change of owner even when that app already left); its
unfinished batch goes with it. In the last case the records logged before the last claim
(``before_claim``: the previous owner's, undrained) are drained first, into its state, under the drain
budget (what it cannot take waits, the state kept, for the next drain), so that its complete batches
count and the new app's first batch starts with its own records. A new pid whose claim is not counted
yet (a claim under way) waits one drain; seen again so, it is taken as a change with nothing before it
(an app of a library before the count). Each listener
added with :meth:`RingTracker.add_reset` is called ``listener(ring_index)`` then, before any record of
the ring's next app is drained, so a consumer that splits batches of its own drops that batch too.

Changes of owner in the stream: the claim count tells the last claim only, so every owner of a ring but
its first begins its records with a change of owner (``REC_OWNER``, its pid the key; written by the
library before the handle's first record). :meth:`RingTracker.consume` ends the unfinished batch before
each one there, unfinished (dropped, no listener called: a tap sees the record in place, and a
recording's :class:`~recmgd.daemon.record.BatchSplitter` drops at it too), and goes on with the new
owner's records, so two or more claims between two drains, or records of a takeover drained by the app
check's flush, keep every app's batches apart.

Taps (the hook for consumers of the raw stream, e.g. a recorder): :meth:`RingTracker.add_tap` registers
``tap(records)``, called with each chunk of records drained from one ring (uint64, as the pool's
``drain_ring`` returned them: in page mode already page records), in the order drained (each ring's
records in ring order; the rings in their turns), before any batch split; batch boundaries, hints and
changes of owner are in it. With several apps the chunks of different rings
interleave; ``add_tap(tap, with_ring=True)`` calls ``tap(records, ring_index)`` instead. A tap runs in
the daemon's loop thread and must be quick (copy, do not process); one that raises is logged and
removed, and the loop goes on.

Page mode's record rewrite (rows to pages) is :func:`page_records`, which
:meth:`recmgd.daemon.pages.PagePool.drain_ring` applies to what the pool drains.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from recmgd.errors import RecmgError
from recmgd.keys import REC_BATCH_END, REC_HINT, REC_KEY_MASK, REC_LOOKUP, REC_OWNER, REC_TYPE_SHIFT

log = logging.getLogger(__name__)

#: (lookups, hints, n_batches) of one batch (or run of coalesced batches), keys int64
BatchSink = Callable[[np.ndarray, np.ndarray, int], None]
#: hints of a batch that has not ended yet; True when taken (they then leave the batch)
HintSink = Callable[[np.ndarray], bool]
#: hints of complete batches drained together, fetched before those batches' steps
EarlyHints = Callable[[np.ndarray], None]

EMPTY = np.zeros(0, dtype=np.int64)
EMPTY_RECS = np.zeros(0, dtype=np.uint64)
#: the smallest record word of a change of owner (type 3: both type bits set), so that ``recs.max()``
#: tells whether an array holds one without a pass that makes an array
OWNER_MIN = np.uint64(REC_OWNER) << REC_TYPE_SHIFT


def owner_changes(recs: np.ndarray) -> np.ndarray:
    """The positions of the changes of owner (RECMG_REC_OWNER records) in drained records (none in most
    arrays: a ring's first owner writes none, and a later one writes one before its first record)."""
    if not len(recs) or recs.max() < OWNER_MIN:
        return EMPTY
    return np.flatnonzero(recs >= OWNER_MIN)

#: test hook: a smaller batch cap from the environment, read once when this module is imported (at the
#: daemon's start); it can only lower the cap (a value that is not an integer in [1, default) is ignored)
MAX_BATCH_ENV = "RECMGD_TEST_MAX_BATCH_RECORDS"
#: the same for the pool cap (MAX_POOL_PENDING_RECORDS)
MAX_POOL_ENV = "RECMGD_TEST_MAX_POOL_PENDING_RECORDS"


def _cap_from_env(default: int, name: str = MAX_BATCH_ENV) -> int:
    try:
        cap = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return cap if 0 < cap < default else default


#: The most records (uint64 ring words, as drained) one unfinished batch of one ring may hold; at this
#: many the batch is cut (module doc). A real DLRM batch is far below it: 26 tables x 2048 samples x
#: pooling 100 is 5.3M lookups (2**22.3), so 2**23 (8.4M records, 128 times the default ring size,
#: ring_records of 65536) leaves room for hints and bigger models before it cuts a real batch, while an
#: app that never ends its batches costs the daemon at most 64 MiB per ring (and a policy step of that
#: size) instead of memory and CPU without bound. The one home of the cap: the recordings' and the
#: retraining window's BatchSplitter (recmgd.daemon.record) read it from here.
MAX_BATCH_RECORDS = _cap_from_env(1 << 23)

#: The most records (as drained) the unfinished batches of all of one pool's rings may hold together; at
#: this many the largest is cut (module doc). The batch cap alone bounds a ring, but a pool may have 4096
#: rings, each an app can fill without batch ends (4096 x 64 MiB = 256 GiB). 2**24 (16.8M records,
#: 128 MiB a pool; the same again in each recording's or retraining window's BatchSplitter) is twice the
#: batch cap: one ring's batch is never cut by the pool cap before its own cap unless others are pending
#: too, and three real batches of the largest size above (5.3M) or many of a usual size (26 x 2048 x 20
#: is 1.1M) are in progress at once without a cut. It also bounds a tick's policy work on cut batches
#: (at most this many records pending when a tick starts). The one home of this cap too.
MAX_POOL_PENDING_RECORDS = _cap_from_env(1 << 24, MAX_POOL_ENV)


class RingSource(Protocol):
    """What the tracker needs of a pool (recmgd.pool.Pool, or PagePool in page mode); one that also has
    ``ring_table()`` (every ring's recmg_ring_state in one array) spares it a Python object a ring each
    drain and lets it end a previous owner's records where they end (module doc, ring resets)."""

    def rings(self) -> list[Any]: ...
    def drain_ring(self, index: int, max_records: int) -> np.ndarray: ...


#: the pid of a ring state made for records of an owner the tracker never saw (before a claim): the
#: next drain takes the change of owner up again whatever the ring's pid (a free ring's 0 included)
UNKNOWN_OWNER = -1


@dataclass
class RingState:
    """One ring's batch in progress."""

    pending: list[np.ndarray] = field(default_factory=list)  # records of the batch not yet ended
    pid: int = 0
    n_pending: int = 0  # records of that batch as drained (hints taken out early included)
    claims: int = -1  # the ring's claim count when this state began (-1: not known)
    new_pid: int = 0  # a new pid seen with the claim count not moved yet (a claim under way)


def ring_field(info: Any, name: str, default: int = 0) -> int:
    """A field of a ring's description (a RingInfo or a dict)."""
    if isinstance(info, dict):
        return int(info.get(name, default))
    return int(getattr(info, name, default))


def page_records(recs: np.ndarray, page_keys: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                 ) -> np.ndarray:
    """Ring records with row keys turned into page keys: ``page_keys(rows)`` gives (page key of a row's
    first byte, page key of its last byte), both of the row's table. A row gives one record per page its
    bytes touch, every page from its first to its last in order (a row within one page one record, a
    row across a page boundary two, a row of 64 KiB at least 16), each record of its type; batch
    boundaries and changes of owner pass unchanged."""
    recs = np.asarray(recs, dtype=np.uint64)
    if not len(recs):
        return recs
    types = recs >> REC_TYPE_SHIFT
    # lookups and hints carry a row key; batch ends do not, and a change of owner's key is a pid
    keyed = (types == np.uint64(REC_LOOKUP)) | (types == np.uint64(REC_HINT))
    keys = (recs & REC_KEY_MASK).astype(np.int64)
    k1, k2 = page_keys(keys)
    out1 = np.where(keyed, (types << REC_TYPE_SHIFT) | k1.astype(np.uint64), recs)
    # pages after the first of each row (0 for a record without a row, and for a row outside the tables:
    # k1 == k2)
    more = k2 - k1
    more *= keyed
    if not more.any():  # every row within one page (the common case)
        return out1
    multi = np.flatnonzero(more > 0)
    m = more[multi]
    out = np.repeat(out1, more + 1)
    # where each such row's second page goes: the row's position in out, plus one
    pos = (np.cumsum(more)[multi] - m) + multi + 1
    if len(m) == int(m.sum()):  # every such row spans two pages (the common case): one record each
        out[pos] = out1[multi] + np.uint64(1)
        return out
    # runs of m[i] records (pages first + 1 .. first + m[i]): an offset 0 .. m[i] - 1 within each run
    run_start = np.cumsum(m) - m
    off = np.arange(int(m.sum()), dtype=np.int64) - np.repeat(run_start, m)
    out[np.repeat(pos, m) + off] = np.repeat(out1[multi], m) + (off + 1).astype(np.uint64)
    return out


class RingTracker:
    """Drains one pool's rings and hands complete batches on (see the module doc).

    ``pc`` is the driver's pool counters (``records`` is counted by the driver; ``hint_received`` by
    ``take_hints``). ``max_drain`` is the drain budget: the most records one :meth:`drain` takes from
    all the rings together (module doc); ``next_turn`` the ring index the next drain's turns start at.
    ``dropped_total`` sums the records the rings dropped (full rings); ``backlog`` is what the last
    drain left waiting in rings it could not empty or had no turn for. ``max_batch`` (default
    :data:`MAX_BATCH_RECORDS`) is the batch cap, ``max_pending`` (default
    :data:`MAX_POOL_PENDING_RECORDS`) the pool cap; ``cut_batches`` counts the batches cut at either.
    ``n_pending`` is the records (as drained) of the rings' unfinished batches, ``peak_pending`` the most
    it held after a drain of a ring. ``spent`` is what :meth:`flush_ring` drained since the last drain:
    the next drain's budget is what is left of ``max_drain`` after it.
    """

    def __init__(self, pool: RingSource, on_batch: BatchSink, take_hints: HintSink, *,
                 max_drain: int = 262144, coalesce: int = 0, step_mode: bool = False,
                 early_hints: EarlyHints | None = None, max_batch: int | None = None,
                 max_pending: int | None = None) -> None:
        self.pool = pool
        self.on_batch = on_batch
        self.take_hints = take_hints
        self.early_hints = early_hints
        self.max_drain = max_drain
        self.coalesce = coalesce
        self.step_mode = step_mode
        self.rings: dict[int, RingState] = {}
        self.ring_drops: dict[int, tuple[int, int]] = {}  # ring -> (its claim count, its drops) last seen
        self.dropped_total = 0
        self.backlog = 0
        self.max_batch = max(1, int(MAX_BATCH_RECORDS if max_batch is None else max_batch))
        self.max_pending = max(1, int(MAX_POOL_PENDING_RECORDS if max_pending is None else max_pending))
        self.cut_batches = 0
        self.n_pending = 0  # the sum of the rings' RingState.n_pending
        self.peak_pending = 0
        self.next_turn = 0  # the ring index the next drain's turns start at (module doc, the drain budget)
        self.spent = 0  # records flush_ring drained since the last drain (out of that drain's budget)
        self._taps: list[tuple[Callable[..., None], bool]] = []
        self._resets: list[Callable[[int], None]] = []

    # -- taps ----------------------------------------------------------------------------------------

    def add_tap(self, tap: Callable[..., None], *, with_ring: bool = False) -> None:
        """Call ``tap(records)`` (``tap(records, ring_index)`` with ``with_ring``) with every chunk of
        records drained (see the module doc)."""
        self._taps.append((tap, with_ring))

    def remove_tap(self, tap: Callable[..., None]) -> None:
        """Stop calling ``tap`` (no error when it is not registered)."""
        self._taps = [(t, w) for t, w in self._taps if t is not tap]

    def _tap(self, recs: np.ndarray, ring: int) -> None:
        for tap, with_ring in list(self._taps):
            try:
                if with_ring:
                    tap(recs, ring)
                else:
                    tap(recs)
            except Exception as exc:  # noqa: BLE001 - a consumer's failure must not stop the loop
                log.error("ring tap %r failed (%s: %s); removed", tap, type(exc).__name__, exc)
                self.remove_tap(tap)

    def add_reset(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(ring_index)`` when a ring's state (and its unfinished batch) goes (module doc,
        ring resets)."""
        self._resets.append(listener)

    def remove_reset(self, listener: Callable[[int], None]) -> None:
        """Stop calling ``listener`` (no error when it is not registered)."""
        self._resets = [r for r in self._resets if r is not listener]

    def _reset(self, ring: int) -> None:
        for listener in list(self._resets):
            try:
                listener(ring)
            except Exception as exc:  # noqa: BLE001 - a consumer's failure must not stop the loop
                log.error("ring reset listener %r failed (%s: %s); removed", listener, type(exc).__name__,
                          exc)
                self.remove_reset(listener)

    def mid_batch(self) -> dict[int, int]:
        """The rings whose batch is under way (part of it drained, its end not yet), each with the
        records of it drained so far."""
        return {idx: st.n_pending for idx, st in self.rings.items() if st.n_pending or st.pending}

    # -- draining ------------------------------------------------------------------------------------

    def drain(self) -> int:
        """One tick's drain: every ring's bookkeeping, then the rings with records waiting take turns
        under the drain budget (``max_drain`` records for the whole pool, module doc); hands on each
        complete batch; returns the records drained."""
        backlog = 0
        flushed = self.spent  # (the app check's flushes': the driver counted them)
        turns: list[tuple[int, RingState, int]] = []  # (index, state, records waiting) of the rings to drain
        for idx, pid, claims, waiting, drops, before in self._ring_rows():
            # an app that detached (pid 0) may have left records its last batches logged: they are
            # drained like any others; once the ring is empty its state (and a partial batch) goes
            if pid == 0 and waiting == 0:
                if idx in self.rings:
                    self.n_pending -= self.rings.pop(idx).n_pending
                    self.ring_drops.pop(idx, None)
                    self._reset(idx)
                continue
            # (a claim zeroes the ring's count: a new owner's drops count from 0)
            was_claims, prev = self.ring_drops.get(idx, (claims, 0))
            if was_claims != claims:
                prev = 0
            if drops > prev:
                self.dropped_total += drops - prev
            self.ring_drops[idx] = (claims, drops)
            st = self.rings.get(idx)
            counted = st is not None and claims >= 0 and st.claims >= 0 and claims != st.claims
            if st is None or counted or (pid != 0 and st.pid != pid) or st.pid == UNKNOWN_OWNER:
                # another app owns the ring now, or had it since the last drain (its claim counted), or
                # the tracker meets the ring for the first time: what the owners before the last claim
                # left waiting is theirs, ended before the new owner's first batch
                if st is not None and not counted and claims >= 0 and st.claims >= 0 and st.new_pid != pid:
                    st.new_pid = pid  # a new pid, its claim not counted yet: under way (next drain), or
                    backlog += waiting  # an app of a library before the count (then taken as is)
                    continue
                taken, done = self._previous_owner(idx, st, before)
                waiting = max(0, waiting - taken)
                if not done:  # the rest of it at the next drain, the ring's state kept till then
                    backlog += waiting
                    continue
                st = self.rings.get(idx)  # (the previous owner's, or one made for what it left)
                if st is not None:
                    self.n_pending -= st.n_pending
                    self._reset(idx)
                st = self.rings[idx] = RingState(pending=[], pid=pid, claims=claims)
            elif st.claims < 0:  # (a state made without the count: a flushed ring's) adopts it
                st.claims = claims
            if waiting:
                turns.append((idx, st, waiting))
        n_turns = len(turns)
        start = 0
        if self.next_turn and n_turns:  # the first ring at or after it (rings() lists them in order)
            start = bisect_left(turns, self.next_turn, key=itemgetter(0))
            if start == n_turns:
                start = 0
        left = max(0, self.max_drain - self.spent)  # the app check's flushes took the rest
        drained = self.spent - flushed  # what previous owners left before a claim, drained above
        self.spent = 0
        for k in range(n_turns):
            idx, st, waiting = turns[(start + k) % n_turns]  # from start, wrapping
            if left <= 0:
                # the budget is spent: this ring, the first without a turn, starts the next drain, and
                # what the rings after it hold waits in them
                self.next_turn = idx
                backlog += sum(turns[(start + j) % n_turns][2] for j in range(k, n_turns))
                break
            # no more than the look saw: what came after it may be a new owner's, after a claim the
            # look did not see (its records are taken, with the change, at the next drain)
            recs = self.pool.drain_ring(idx, min(left, waiting))
            n = len(recs)
            if n == 0:
                continue
            drained += n
            if n >= left:
                backlog += max(0, waiting - n)
            left -= n
            recs = np.asarray(recs, dtype=np.uint64)
            if self._taps:
                self._tap(recs, idx)
            self.consume(st, recs)
        self.backlog = backlog
        return drained

    def _ring_rows(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        """(index, pid, claims, waiting, drops, before_claim) of the rings a drain must look at, in ring
        order: with the pool's ``ring_table`` (one native call for all its rings; recmg_ring_state), only
        those with an owner, records waiting or a state here (a free, empty ring the tracker does not
        know has nothing to do: a pool of 4096 rings cost every tick 4096 calls and objects); else every
        ring ``rings()`` describes, its claims not known (-1) and nothing before a claim."""
        table = getattr(self.pool, "ring_table", None)
        if table is not None:
            t = table()
            pid, waiting = t["pid"], t["waiting"]
            look = (pid != 0) | (waiting != 0)
            known = [i for i in self.rings if 0 <= i < len(look)]
            if known:
                look[known] = True
            sel = np.flatnonzero(look)
            yield from zip(sel.tolist(), pid[sel].tolist(), t["claims"][sel].tolist(), waiting[sel].tolist(),
                           t["drops"][sel].tolist(), t["before_claim"][sel].tolist(), strict=True)
            return
        for info in self.pool.rings():
            idx = ring_field(info, "index", -1)
            if idx >= 0:
                pid = ring_field(info, "pid")
                waiting = ring_field(info, "waiting", 0 if pid == 0 else 1)
                yield idx, pid, -1, waiting, ring_field(info, "drops"), 0

    def _previous_owner(self, index: int, st: RingState | None, before: int) -> tuple[int, bool]:
        """A ring whose owner changed: drains the ``before`` records the owners before its last claim
        left waiting in it into the previous owner's state ``st`` (a new one, dropped after, when the
        tracker did not know the ring), under what is left of the drain budget (``spent``). Returns the
        ring records it took and whether that was all of them; when not (the budget spent) the ring is
        not drained further this time, and its state stays the previous owner's (its claim count too, so
        the next drain takes up the change again, with what is left before the claim)."""
        if before <= 0:
            return 0, True
        take = min(before, max(0, self.max_drain - self.spent))
        if take:
            recs = np.asarray(self.pool.drain_ring(index, take), dtype=np.uint64)
            self.spent += len(recs)
            if len(recs):
                if st is None:  # an owner the tracker never saw: its batches end here
                    st = self.rings[index] = RingState(pending=[], pid=UNKNOWN_OWNER)
                if self._taps:
                    self._tap(recs, index)
                self.consume(st, recs)
        if take < before:
            if st is None and index not in self.rings:  # the change of owner is taken up next time
                self.rings[index] = RingState(pending=[], pid=UNKNOWN_OWNER)
            return take, False
        return take, True

    def flush_ring(self, index: int, info: Any = None) -> tuple[int, bool | None]:
        """A dead app's ring (its description ``info`` as ``rings()`` gave it, if known): drain what is
        left, at most what is left of the drain budget (``spent`` counts it against the next drain's),
        and hand on complete batches. Returns (records drained, empty). Empty: the ring's state goes
        and the partial batch with it (what is left pending is dropped); the caller releases the ring.
        Not empty (False): the state stays and the drains take the rest in turn like any ring's; a later
        flush (the next app check) finds it empty. With the pool's ``ring_table`` the flush looks at
        the ring itself first: a ring another app owns by then, or none (its pid not ``info``'s), is not
        touched (0, None: nothing to release; the next check sees the new owner); what it drains and
        calls empty is what that look saw; and a ring whose claim count moved since the last drain (the
        dead app had taken it over) has the records of the owners before that claim ended first, as
        :meth:`drain` ends them, so that a flush the budget stops halfway leaves the dead app's state
        with the count the next drain expects."""
        waiting = -1 if info is None else ring_field(info, "waiting", -1)  # -1: not known
        pid = 0 if info is None else ring_field(info, "pid")
        claims, before = -1, 0
        table = getattr(self.pool, "ring_table", None)
        if table is not None:
            # a look of its own, after the app was found dead: the check's look may be older than the
            # app's last records (a batch it ended, then left), and the ring may have another owner now
            try:
                row = table(index, 1)
            except RecmgError:
                row = None
            if row is not None and len(row):
                if info is not None and int(row["pid"][0]) != pid:
                    return 0, None  # taken over (or let go) since the check's look: not the check's now
                waiting, claims = int(row["waiting"][0]), int(row["claims"][0])
                before = int(row["before_claim"][0])
        spent0 = self.spent
        st = self.rings.get(index)
        if st is not None and claims >= 0 and st.claims >= 0 and claims != st.claims:
            taken, done = self._previous_owner(index, st, before)
            if not done:  # the budget is spent: the drains take up the change
                return self.spent - spent0, False
            waiting = max(0, waiting - taken)
            st = self.rings.pop(index, None)
            if st is not None:
                self.n_pending -= st.n_pending
                self._reset(index)
            st = None
        if st is None:
            st = RingState(pending=[], pid=pid, claims=claims)
        left = max(0, self.max_drain - self.spent)
        recs = EMPTY_RECS
        if waiting != 0 and left:
            try:
                # (no more than the look saw, when it saw: what comes after it is a new owner's, whose
                # claim came after the look)
                recs = np.asarray(self.pool.drain_ring(index, left if waiting < 0 else min(left, waiting)),
                                  dtype=np.uint64)
            except RecmgError:
                waiting = 0  # nothing more can be drained from it: released as it is
        n = len(recs)
        self.spent += n
        # the app is gone, so nothing is added to its ring: emptied when it held no more than the drain
        # could take (in page mode n counts page records, more than the ring records taken)
        empty = 0 <= waiting <= left if waiting >= 0 else n < left
        if n:
            if self._taps:
                self._tap(recs, index)
            # under the caps as any drain (a recording's splitter cuts by the same rules)
            self.rings[index] = st
            self.consume(st, recs)
        if empty:  # the state goes, and what is left pending with it
            if self.rings.pop(index, None) is not None:
                self.n_pending -= st.n_pending
            self.ring_drops.pop(index, None)
            self._reset(index)  # (after its last records: their complete batches count)
        return self.spent - spent0, empty

    def consume(self, st: RingState, recs: np.ndarray) -> None:
        """Split one ring's records at its batch boundaries (coalescing runs when behind), then hold
        the pool's unfinished batches to the pool cap. A change of owner among them ends the unfinished
        batch before it, unfinished (dropped; the pid in the state becomes the new owner's)."""
        before = st.n_pending
        start = 0
        for m in owner_changes(recs).tolist():
            if m > start:
                self._split(st, recs[start:m])
            st.pending = []
            st.n_pending = 0
            st.pid = int(recs[m] & REC_KEY_MASK)
            start = m + 1
        if start:
            recs = recs[start:]
        if len(recs):
            self._split(st, recs)
        self.n_pending += st.n_pending - before
        if self.n_pending >= self.max_pending:
            self._cut_pool(st)
        if self.n_pending > self.peak_pending:
            self.peak_pending = self.n_pending

    def _split(self, st: RingState, recs: np.ndarray) -> None:
        """One ring's records at its batch boundaries, under the batch cap (``n_pending`` not kept)."""
        types = recs >> REC_TYPE_SHIFT
        ends = np.flatnonzero(types == REC_BATCH_END)
        start = 0
        if len(ends) > 1 and self.early_hints is not None and not self.step_mode:
            # behind the app: the announced rows of every batch drained now go before their steps
            is_hint = types[: ends[-1]] == REC_HINT
            if is_hint.any():
                self.early_hints((recs[: ends[-1]][is_hint] & REC_KEY_MASK).astype(np.int64))
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
        if len(ends):
            st.n_pending = 0
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
            st.n_pending += len(tail)
            # hints for the coming lookups: offered now, ahead of the batch's end
            ttypes = tail >> REC_TYPE_SHIFT
            is_hint = ttypes == REC_HINT
            if is_hint.any():
                hk = (tail[is_hint] & REC_KEY_MASK).astype(np.int64)
                if self.take_hints(hk):
                    st.pending[-1] = tail[~is_hint]
            if st.n_pending >= self.max_batch:
                self._cut(st)

    def _cut_pool(self, current: RingState) -> None:
        """The pool's unfinished batches at the pool cap: the largest cut first (module doc)."""
        while self.n_pending >= self.max_pending:
            # the largest, the lowest ring index among equals (BatchSplitter picks the same)
            best = max(self.rings.items(), key=lambda item: (item[1].n_pending, -item[0]),
                       default=(0, current))[1]
            if current.n_pending > best.n_pending:
                best = current  # a ring state the tracker does not keep (the driver's _consume, tests)
            if not best.n_pending:
                return  # nothing pending to cut (cannot happen: the sum counts the kept rings)
            self.n_pending -= best.n_pending
            self._cut(best, f"the pool's unfinished batches reached the pool cap, {self.max_pending} "
                            "records; the largest was cut")

    def _cut(self, st: RingState, why: str = "") -> None:
        """An unfinished batch at the cap: handed on as if its batch end had come (module doc)."""
        n = st.n_pending
        if len(st.pending) == 1:
            seg = st.pending[0]
        else:  # several drained arrays (never none: a pending record came in an array)
            seg = np.concatenate(st.pending) if st.pending else EMPTY_RECS
        st.pending = []
        st.n_pending = 0
        self.cut_batches += 1
        if self.cut_batches == 1:
            log.warning("pool %s: an app (pid %d) logged %d records without a batch end; its batch was cut "
                        "there (%s) and is processed as one; further cuts are counted (cut_batches in "
                        "recmgctl stats), not logged", getattr(self.pool, "name", "?"), st.pid, n,
                        why or f"the cap is {self.max_batch} records a batch")
        self._batch(seg, 1)

    def _batch(self, seg: np.ndarray, n_batches: int) -> None:
        if not len(seg):
            self.on_batch(EMPTY, EMPTY, n_batches)
            return
        types = seg >> REC_TYPE_SHIFT
        keys = (seg & REC_KEY_MASK).astype(np.int64)
        if not types.any():  # all lookups (the common case)
            self.on_batch(keys, EMPTY, n_batches)
        else:
            self.on_batch(keys[types == REC_LOOKUP], keys[types == REC_HINT], n_batches)
