"""The hint reserve of the daemon's loop (recmgd.daemon.mover.ResidencyMover.fetch_hints and the pins)
against a real pool and the real PoolDriver, in one process: this process is the app (it created the
pool and owns ring 0) and the daemon (a role="daemon" handle).

The mirror must stay exact whatever the hints do: a row hinted, taken over by the policy, evicted and
hinted again, a pinned row the policy evicts (moved to the reserve), a reserve held by pins. A row
evicted twice from the reserve once made the mirror count a free slot the pool did not have (the next
fill raised PoolError and the service detached the pool)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from test_daemon_loop import Scripted, k, lookup

import recmgd.pool as pool_mod
from recmgd import policy as policy_mod
from recmgd.daemon.loop import PoolDriver
from recmgd.daemon.mover import HINT, PIN, RES
from recmgd.policy import Decision, Policy, StepView

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


def test_a_pin_lasts_its_batches_after_the_latest_hint_whatever_reads_it(pools) -> None:
    """Announced two batches ahead (pins of 3 steps): a row that the next batch also reads keeps its
    pin for the batch it was announced for; a new hint extends the pin; then it ends."""
    app, daemon = pools
    row5 = int(k(0, [5])[0])
    pol = Scripted([Decision(admit=k(0, [5])), Decision(evict=k(0, [5])), Decision(admit=k(0, [5])),
                    Decision(evict=k(0, [5])), Decision()])
    drv = PoolDriver(daemon, pol, "scripted", hint_slots=2, step_mode=True, hint_pin_batches=3)
    lookup(app, 0, [5])
    app.end_batch()
    drv.tick()  # step 1: row 5 admitted
    app.hint(0, [5])  # announced for the batch after next
    drv.tick()
    lookup(app, 0, [5])  # the next batch reads it too
    app.end_batch()
    drv.tick()  # step 2: the policy evicts it: refused, the pin outlives the read
    assert drv.stats()["pin_refused"] == 1 and row5 in daemon.resident_keys().tolist()
    app.hint(0, [5])  # announced again: the pin now ends 3 steps from here
    drv.tick()
    before = app.counters()["processes"][0]["hits"]
    lookup(app, 0, [5])
    app.end_batch()
    drv.tick()  # step 3: read from the fast tier; the policy, which thought it gone, takes it over
    assert app.counters()["processes"][0]["hits"] == before + 1
    app.end_batch()
    drv.tick()  # step 4: evicted by the policy again: still pinned (the second hint)
    assert drv.stats()["pin_refused"] == 2 and row5 in daemon.resident_keys().tolist()
    assert drv.mover.pinned_count() == 1
    app.end_batch()
    drv.tick()  # step 5: the pin has ended
    assert drv.mover.pinned_count() == 0
    assert drv.n_hinted == 1  # the refused eviction left it in the reserve: now it may make room
    app.hint(0, [7, 8])
    drv.tick()
    assert sorted(daemon.resident_keys().tolist()) == k(0, [7, 8]).tolist()
    check_mirror(drv, daemon)
    drv.close()


def test_hints_take_the_fill_budget_before_the_policy(pools) -> None:
    """A step that carries hints: the announced rows are filled before the policy's admissions, so a
    budget of two rows a step goes to them."""
    from recmgd.daemon.mover import FillBudget

    app, daemon = pools
    pol = Scripted([Decision(admit=k(0, [10, 11]))])
    budget = FillBudget(rows_per_s=200, step_mode=True, step_seconds=0.01)  # 2 rows a step
    drv = PoolDriver(daemon, pol, "scripted", hint_slots=4, step_mode=True, budget=budget)
    app.hint(0, [1, 2])
    lookup(app, 0, [10])
    app.end_batch()
    drv.tick()  # one step, its hints with it
    assert sorted(daemon.resident_keys().tolist()) == k(0, [1, 2]).tolist()
    assert pol.refused == k(0, [10, 11]).tolist() and drv.stats()["admit_rejected"] == 2
    check_mirror(drv, daemon)
    drv.close()


class Watching(Scripted):
    """A Scripted policy that looks at the pool while it steps: which of ``watch`` are in the fast tier."""

    def __init__(self, daemon, watch: np.ndarray) -> None:
        super().__init__([])
        self.daemon = daemon
        self.watch = watch
        self.seen: list[list[int]] = []

    def observe(self, view: StepView) -> Decision:
        if view.step >= 0:
            self.seen.append(sorted(set(self.daemon.resident_keys().tolist()) & set(self.watch.tolist())))
        return super().observe(view)


def test_a_steps_hints_are_fetched_before_the_policy_steps(pools) -> None:
    """Hints drained with a complete batch (the daemon was busy while the batch ran) are announced
    rows of a later batch: they are in the fast tier before the policy's step runs, not after it (a
    slow policy's step would otherwise make every announced row wait for it; with the server L
    batches ahead, that made the rows late). Without the filler thread they are filled first."""
    app, daemon = pools
    pol = Watching(daemon, k(0, [1, 2]))
    drv = PoolDriver(daemon, pol, "scripted", hint_slots=4, step_mode=True)
    drv.overlap_fills = False
    app.hint(0, [1, 2])  # announced for a later batch, drained with this one
    lookup(app, 0, [10])
    app.end_batch()
    drv.tick()
    assert pol.seen == [k(0, [1, 2]).tolist()]
    assert pol.views[0].hints.tolist() == k(0, [1, 2]).tolist()  # the policy still sees them
    assert drv.stats()["hint_fetched"] == 2
    check_mirror(drv, daemon)
    drv.close()


class Waiting(Watching):
    """Waits inside its step (up to 10 s) until the watched rows are in the fast tier."""

    def observe(self, view: StepView) -> Decision:
        deadline = time.monotonic() + 10.0
        want = set(self.watch.tolist())
        while not want <= set(self.daemon.resident_keys().tolist()) and time.monotonic() < deadline:
            time.sleep(0.001)
        return super().observe(view)


def test_a_steps_hinted_rows_are_read_from_the_slow_tier_while_the_policy_steps(pools) -> None:
    """With the filler thread (the default) the hinted rows' slow-tier reads run beside the policy's
    step: a policy that waits inside its step for them sees them arrive (filled sequentially after the
    step, it would wait its 10 s and see none); then the bookkeeping is the sequential one's."""
    app, daemon = pools
    pol = Waiting(daemon, k(0, [1, 2]))
    drv = PoolDriver(daemon, pol, "scripted", hint_slots=4, step_mode=True)
    assert drv.overlap_fills
    app.hint(0, [1, 2])
    lookup(app, 0, [10])
    app.end_batch()
    drv.tick()
    assert pol.seen == [k(0, [1, 2]).tolist()]
    assert drv.stats()["hint_fetched"] == drv.stats()["fills"] == 2
    check_mirror(drv, daemon)
    drv.close()


def test_the_filler_thread_changes_nothing_but_when(pools) -> None:
    """The same batches and hints through two pools, one with the filler thread and one without: the
    same counters, the same rows resident."""
    app, daemon = pools
    name = f"recmgd-hint-{uuid.uuid4().hex[:8]}"
    app2 = pool_mod.Pool.create(name, tables=[(ROWS, 4), (ROWS, 4)], slots=24, ring_records=1 << 14)
    daemon2 = pool_mod.Pool.attach(name, role="daemon")
    try:
        drivers = []
        for a, d, overlap in ((app, daemon, True), (app2, daemon2, False)):
            rng = np.random.default_rng(7)
            drv = PoolDriver(d, policy_mod.create("lru"), "lru", hint_slots=6, step_mode=True,
                             hint_pin_batches=2)
            drv.overlap_fills = overlap
            batches = [rng.choice(40, size=rng.integers(1, 9), replace=False) for _ in range(150)]
            for i, rows in enumerate(batches):
                if i + 2 < len(batches):
                    a.hint(0, batches[i + 2])
                lookup(a, 0, rows)
                a.end_batch()
                drv.tick()
            check_mirror(drv, d)
            drivers.append((drv, d))
        (one, d1), (two, d2) = drivers
        st1, st2 = one.stats(), two.stats()
        for key in ("steps", "fills", "evictions", "hits", "on_demand", "hint_fetched", "hint_rejected"):
            assert st1[key] == st2[key], key
        assert st1["hint_fetched"] > 0
        assert np.array_equal(np.sort(d1.resident_keys()), np.sort(d2.resident_keys()))
        one.close()
        two.close()
    finally:
        daemon2.close()
        app2.destroy()


def test_the_policy_sees_the_announced_rows_as_in_the_simulator(pools) -> None:
    """The daemon hands the policy a step's announced rows (``StepView.announced``: deduplicated, first
    appearance first, valid rows only), as the lookahead simulator does, so the learned prefetcher gets
    them in both; without hints the field is empty."""
    app, daemon = pools
    pol = Scripted([])
    drv = PoolDriver(daemon, pol, "scripted", hint_slots=4, step_mode=True)
    app.hint(0, [3, 1, 3, 2])
    lookup(app, 0, [10])
    app.end_batch()
    drv.tick()
    assert pol.views[0].announced.tolist() == k(0, [3, 1, 2]).tolist()
    lookup(app, 0, [11])
    app.end_batch()
    drv.tick()
    assert pol.views[1].announced.tolist() == []
    drv.close()


def test_the_hints_for_the_nearest_batches_win(pools) -> None:
    """More hints than the reserve holds: the first (nearest batch) are fetched; a reserve held by
    pinned rows refuses the newer hints, not the pinned (sooner) ones."""
    app, daemon = pools
    drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", hint_slots=3, step_mode=True,
                     hint_pin_batches=2)
    app.hint(0, [1, 2])
    app.hint(0, [3, 4, 5])  # the next batch's rows, then the one after
    drv.tick()
    assert sorted(daemon.resident_keys().tolist()) == k(0, [1, 2, 3]).tolist()
    app.hint(0, [6])
    drv.tick()
    assert sorted(daemon.resident_keys().tolist()) == k(0, [1, 2, 3]).tolist()
    assert drv.stats()["hint_rejected"] == 3
    for _ in range(2):  # the pins end
        app.end_batch()
        drv.tick()
    app.hint(0, [6])
    drv.tick()  # the oldest hinted row makes room
    assert sorted(daemon.resident_keys().tolist()) == k(0, [2, 3, 6]).tolist()
    check_mirror(drv, daemon)
    drv.close()


class EarlyCycler(Cycler):
    """A Cycler whose steps run in the driver's worker thread (early admission); it names its victims
    twice over (a policy's list may repeat rows: each is evicted once)."""

    name = "early-cycler"
    early_admission = True

    def observe(self, view: StepView) -> Decision:
        dec = super().observe(view)
        self.victims = np.concatenate([self.last, self.last])
        return dec

    def early_victims(self, n: int, reading: np.ndarray) -> np.ndarray:
        return getattr(self, "victims", np.zeros(0, dtype=np.int64))

    def evicted(self, keys: np.ndarray) -> None:
        self.last = self.last[~np.isin(self.last, keys)]


def test_hints_with_early_admission_keep_the_mirror_exact(pools) -> None:
    """The same churn with the policy in a worker thread (early fills and victims, decisions applied
    later): after each sync the mirror is the pool."""
    app, daemon = pools
    rng = np.random.default_rng(7)
    drv = PoolDriver(daemon, EarlyCycler(), "early-cycler", hint_slots=5, hint_pin_batches=3)
    batches = [rng.choice(40, size=rng.integers(4, 14), replace=False) for _ in range(120)]
    for i, rows in enumerate(batches):
        if i + 2 < len(batches):
            app.hint(0, batches[i + 2])
        if i % 2:
            drv.tick()
        lookup(app, 0, rows)
        app.end_batch()
        drv.tick()
        drv.sync()
        check_mirror(drv, daemon)
    assert drv.stats()["early_admits"] > 0 and drv.stats()["hint_fetched"] > 0
    drv.close()


def test_hints_of_batches_drained_together_are_fetched_before_their_steps(pools) -> None:
    """Behind the app (one drain holds several complete batches), the rows a later batch announced are
    fetched before the first of those batches' steps, and each step still sees its own hints; in step
    mode (the simulator's protocol) they wait for their batch."""
    app, daemon = pools
    watch = k(1, [7, 8])
    for step_mode, fetched_first in ((False, True), (True, False)):
        pol = Watching(daemon, watch)
        drv = PoolDriver(daemon, pol, "watching", hint_slots=4, step_mode=step_mode)
        drv.overlap_fills = False  # the filler thread's reads would race the policy's look at the pool
        lookup(app, 0, [1, 2])
        app.end_batch()
        lookup(app, 0, [3])
        app.hint(1, [7, 8])  # announced in the second batch, for a later one
        app.end_batch()
        lookup(app, 0, [4])
        app.end_batch()
        drv.tick()
        st = drv.stats()
        assert st["steps"] == 3
        assert pol.seen[0] == (sorted(watch.tolist()) if fetched_first else []), step_mode
        assert pol.seen[1] == sorted(watch.tolist())  # by its own step, in any case
        assert st["hint_early"] == (2 if fetched_first else 0)
        assert st["hint_received"] == 2 and st["hint_fetched"] == 2  # fetched once
        assert pol.views[1].hints.tolist() == watch.tolist()
        assert sorted(daemon.resident_keys().tolist()) == sorted(watch.tolist())
        drv.close()
        daemon.evict_keys(daemon.resident_keys())
