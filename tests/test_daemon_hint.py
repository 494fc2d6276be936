"""The hint reserve of the daemon's loop (recmgd.daemon.mover.ResidencyMover.fetch_hints and the pins)
against a real pool and the real PoolDriver, in one process: this process is the app (it created the
pool and owns ring 0) and the daemon (a role="daemon" handle).

The mirror must stay exact whatever the hints do: a row hinted, taken over by the policy, evicted and
hinted again, a pinned row the policy evicts (moved to the reserve), a reserve held by pins. A row
evicted twice from the reserve once made the mirror count a free slot the pool did not have (the next
fill raised PoolError and the service detached the pool)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from recmgd import policy as policy_mod
from recmgd.daemon.loop import PoolDriver
from recmgd.daemon.mover import HINT, PIN, RES
from recmgd.keys import make_keys
from recmgd.policy import Decision, Policy, StepView

pool_mod = pytest.importorskip("recmgd.pool", reason="the native pool is not built")

ROWS = 200


@pytest.fixture
def pools() -> Iterator[tuple[object, object]]:
    name = f"recmgd-hint-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(ROWS, 4), (ROWS, 4)], slots=24, ring_records=1 << 14)
    daemon = pool_mod.Pool.attach(name, role="daemon")
    try:
        yield app, daemon
    finally:
        daemon.close()
        app.destroy()


def k(table: int, rows) -> np.ndarray:
    return make_keys(table, np.asarray(rows, dtype=np.int64))


def lookup(app, table: int, rows) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    app.embedding_bag(table, rows, np.arange(len(rows), dtype=np.int64))


def check_mirror(drv: PoolDriver, daemon) -> None:
    """The mirror equals the pool: the same resident rows, and the counts match the flags."""
    mv = drv.mover
    resident = np.sort(daemon.resident_keys())
    assert np.array_equal(np.sort(mv.owned_keys()), resident)
    assert mv.n_resident == int(((mv.flags & RES) != 0).sum())
    assert mv.n_hinted == int(((mv.flags & HINT) != 0).sum())
    assert not ((mv.flags & RES) & ((mv.flags & HINT) >> 1)).any()  # never both
    assert mv.resident_count() == len(resident) <= mv.n_slots
    st = drv.stats()
    assert st["fills"] - st["evictions"] == len(resident)
    assert st["hint_fetched"] <= st["fills"]
    # every resident hinted row has exactly one entry in the reserve's queue
    queued = [f for f in mv.hint_fifo if mv.flags[f] & HINT]
    assert len(queued) == len(set(queued)) == mv.n_hinted


class Cycler(Policy):
    """Admits what it misses, evicts it again one step later: rows go in and out of the policy's hands
    all the time (hinted rows taken over, then evicted, then hinted again)."""

    name = "cycler"

    def reset(self, capacity: int) -> None:
        self.capacity = capacity
        self.last = np.zeros(0, dtype=np.int64)
        self.refused: list[int] = []

    def observe(self, view: StepView) -> Decision:
        missed = view.keys[~view.hit][: self.capacity]
        dec = Decision(evict=self.last, admit=missed)
        self.last = missed
        return dec

    def rejected(self, keys: np.ndarray) -> None:
        self.refused += keys.tolist()


def test_a_row_hinted_taken_over_evicted_and_hinted_again_is_evicted_once(pools) -> None:
    """The exact sequence of the bug: the reserve's queue held a row twice, it was evicted twice."""
    app, daemon = pools
    drv = PoolDriver(daemon, Cycler(), "cycler", hint_slots=3, step_mode=True, hint_pin_batches=0)
    app.hint(0, [1])
    drv.tick()  # row 1 into the reserve
    lookup(app, 0, [1])
    app.end_batch()
    drv.tick()  # read: the policy takes it over (the reserve's queue still names it)
    lookup(app, 0, [2])
    app.end_batch()
    drv.tick()  # the policy evicts row 1
    assert int(k(0, [1])[0]) not in daemon.resident_keys().tolist()
    app.hint(0, [1])
    drv.tick()  # hinted again: in the reserve once more
    check_mirror(drv, daemon)
    app.hint(0, [3, 4])
    drv.tick()  # the reserve (3) is full
    check_mirror(drv, daemon)
    app.hint(0, [5, 6])
    drv.tick()  # two rows make room: the oldest, row 1, goes once, and row 3
    check_mirror(drv, daemon)
    assert drv.n_hinted == 3
    assert sorted(daemon.resident_keys().tolist()) == k(0, [2, 4, 5, 6]).tolist()
    drv.close()


@pytest.mark.parametrize("pin_batches", [0, 1, 3])
def test_overlapping_hints_on_a_small_reserve_keep_the_mirror_exact(pools, pin_batches: int) -> None:
    """Many batches, each hinted ahead with rows that overlap earlier hints and lookups, a reserve far
    smaller than the hints: no error, and after every tick the mirror is the pool."""
    app, daemon = pools
    rng = np.random.default_rng(pin_batches)
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", hint_slots=6, step_mode=True, hint_pin_batches=pin_batches)
    hot = np.arange(30)
    batches = [rng.choice(hot, size=rng.integers(1, 9), replace=False) for _ in range(200)]
    ahead = 2
    for i, rows in enumerate(batches):
        if i + ahead < len(batches):
            app.hint(0, batches[i + ahead])  # announced two batches ahead
            app.hint(1, rng.choice(hot, size=4))  # and rows of another table, duplicates included
        if i % 3 == 0:
            drv.tick()  # the hints drained ahead of their batch
        lookup(app, 0, rows)
        lookup(app, 1, rows[:2])
        app.end_batch()
        if i % 2 == 0:
            drv.tick()
        check_mirror(drv, daemon)
    drv.tick()
    check_mirror(drv, daemon)
    st = drv.stats()
    assert st["steps"] == len(batches)
    assert st["hint_fetched"] > 0 and st["hint_received"] > 0
    assert st["unique"] == st["hits"] + st["on_demand"]
    drv.close()


def test_a_pinned_row_the_policy_evicts_twice_is_queued_once(pools) -> None:
    """A hinted row taken over by the policy, re-hinted (pinned) and evicted by the policy moves back
    to the reserve: its old queue entry must not count twice."""
    app, daemon = pools
    drv = PoolDriver(daemon, Cycler(), "cycler", hint_slots=3, step_mode=True, hint_pin_batches=2)
    app.hint(0, [1])
    drv.tick()
    lookup(app, 0, [1])
    app.end_batch()
    app.hint(0, [1])  # announced again for a later batch: pinned
    drv.tick()  # the policy takes row 1 over
    lookup(app, 0, [2])
    app.end_batch()
    drv.tick()  # the policy evicts it: refused (pinned), back to the reserve
    assert drv.stats()["pin_refused"] == 1 and drv.mover.flags[drv.mover.flat(k(0, [1]))[0]] & PIN
    check_mirror(drv, daemon)
    for rows in ([7, 8], [9, 10], [11, 12], [13, 14]):
        app.hint(0, rows)
        lookup(app, 0, [rows[0] + 100])
        app.end_batch()
        drv.tick()
        check_mirror(drv, daemon)
    drv.close()
