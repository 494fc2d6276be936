"""The drain budget (recmgd.daemon.tracker, "The drain budget"): one tick drains at most ``max_drain``
records from all of a pool's rings together, not from each, so an app that keeps many rings full cannot
make a tick handle rings x max_drain records.

- one drain takes at most the budget from many rings that each hold more than it; what is left stays
  in the rings (``backlog``);
- the rings take turns: the first ring without a turn starts the next drain, so the turns go round the
  rings in order and every ring is drained within a bounded number of ticks;
- no record is lost or reordered within a ring, and the batch boundaries are kept, whatever the budget
  cuts a ring's drain at;
- below the budget (the common case) every ring is drained in ring order each tick, as before;
- full rings drop records while they wait, and the drops are counted;
- the same through a PoolDriver over a real pool of several app rings, and the pool's
  ``pending_records`` and ``pending_records_peak`` stats as Prometheus gauges;
- dead apps' rings (the app check, recmgd.daemon.apps) are drained under the same budget: a check and
  the next tick together take at most the budget, the ticks drain the rest in turn, every complete batch
  arrives in order, and each ring is released by the first check that finds it empty (an app that exits
  with a few records left: at once), also through a PoolDriver over a real pool.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from test_daemon_batch_cap import END, Batches, ManyRings, hints, lookups, ring_keys
from test_daemon_loop import lookup

import recmgd.pool as pool_mod
from recmgd import policy as policy_mod
from recmgd.daemon import apps as apps_mod
from recmgd.daemon.apps import AppTracker
from recmgd.daemon.loop import PoolDriver
from recmgd.daemon.metrics import MetricsServer
from recmgd.daemon.tracker import RingTracker

BUDGET = 1000


class FifoRings(ManyRings):
    """ManyRings that behave as real rings: a drain takes at most ``max_records``, oldest first, and the
    rest waits; a ring holds at most ``capacity`` records (what an app logs beyond it is dropped and
    counted in the ring's ``drops``). ``turns`` logs every drain as (ring, records taken)."""

    def __init__(self, n: int, capacity: int = 1 << 40) -> None:
        super().__init__(n)
        self.capacity = capacity
        self.drops = dict.fromkeys(range(n), 0)
        self.turns: list[tuple[int, int]] = []

    def waiting(self, ring: int | None = None) -> int:
        rings = self.chunks if ring is None else [ring]
        return sum(len(c) for r in rings for c in self.chunks[r])

    def log(self, ring: int, recs: np.ndarray) -> None:
        room = max(0, self.capacity - self.waiting(ring))
        self.drops[ring] += max(0, len(recs) - room)
        if room and len(recs):
            self.chunks[ring].append(recs[:room])

    def rings(self) -> list[dict]:
        return [{**r, "drops": self.drops[r["index"]]} for r in super().rings()]

    def drain_ring(self, index: int, max_records: int) -> np.ndarray:
        ch = self.chunks[index]
        recs = np.concatenate(ch) if ch else np.zeros(0, dtype=np.uint64)
        self.chunks[index] = [recs[max_records:]] if len(recs) > max_records else []
        self.turns.append((index, min(len(recs), max_records)))
        return recs[:max_records]


def tracker(src: FifoRings, sink: Batches | None = None) -> RingTracker:
    return RingTracker(src, sink or Batches(), lambda h: False, max_drain=BUDGET, step_mode=True)


def tick(tr: RingTracker, src: FifoRings) -> list[tuple[int, int]]:
    """One drain, checked against the budget; returns its turns (ring, records taken)."""
    before = len(src.turns)
    drained = tr.drain()
    turns = src.turns[before:]
    assert drained == sum(n for _, n in turns) <= BUDGET
    assert tr.backlog == src.waiting()  # what is not drained stays in the rings, and is counted
    return turns


def batch(ring: int, start: int, n: int, n_hints: int = 0) -> tuple[np.ndarray, list[int], list[int]]:
    """One ended batch of a ring: (records, its lookups' keys, its hints' keys)."""
    keys = ring_keys(ring, start, n)
    hint_keys = ring_keys(ring, start + 10**6, n_hints)
    recs = np.concatenate([hints(hint_keys[: n_hints // 2]), lookups(keys), hints(hint_keys[n_hints // 2:]),
                           END])
    return recs, keys.tolist(), hint_keys.tolist()


def test_one_drain_takes_at_most_the_budget_from_all_the_rings() -> None:
    n_rings = 64
    src = FifoRings(n_rings)
    for ring in range(n_rings):  # 2550 records a ring: 50 batches of 50 lookups and their ends
        for b in range(50):
            src.log(ring, batch(ring, 50 * b, 50)[0])
    sink = Batches()
    tr = tracker(src, sink)
    total = src.waiting()
    turns = tick(tr, src)
    # one ring holds more than the budget: it takes all of it, the others wait for their turns
    assert turns == [(0, BUDGET)] and tr.backlog == total - BUDGET and tr.next_turn == 1
    assert len(sink.got) == BUDGET // 51 and all(len(k) == 50 for k, _, _ in sink.got)
    assert tr.rings[0].n_pending == BUDGET % 51  # the batch the budget cut waits in the ring's state
    drained = BUDGET
    while src.waiting():
        drained += sum(n for _, n in tick(tr, src))
    assert drained == total and len(sink.got) == n_rings * 50 and tr.n_pending == 0


@pytest.mark.parametrize("per_ring", [3 * BUDGET, BUDGET, BUDGET + 1, BUDGET - 1, 300, 7])
def test_the_rings_take_turns_and_none_starves(per_ring: int) -> None:
    """An app keeps every ring topped up to per_ring records (more than the budget altogether): each
    drain takes the whole budget, the turns go round the rings in order (the first ring without a turn
    starts the next drain), and each ring's turns are at most one round of the rings apart."""
    n_rings = 40 if per_ring > 100 else 400
    src = FifoRings(n_rings)
    tr = tracker(src)
    nxt = dict.fromkeys(range(n_rings), 0)
    order: list[int] = []
    last_turn = dict.fromkeys(range(n_rings), -1)
    most_apart = 0
    n_ticks = 3 * math.ceil(n_rings * per_ring / BUDGET) + 3
    for t in range(n_ticks):
        for ring in range(n_rings):
            n = per_ring - src.waiting(ring)
            src.log(ring, lookups(ring_keys(ring, nxt[ring], n)))
            nxt[ring] += n
        turns = tick(tr, src)
        assert sum(n for _, n in turns) == BUDGET  # the rings hold more: the whole budget, no more
        if order:
            assert turns[0][0] == (order[-1] + 1) % n_rings  # the first ring without a turn starts
        for ring, _ in turns:
            most_apart = max(most_apart, t - last_turn[ring])
            last_turn[ring] = t
        order += [ring for ring, _ in turns]
    # round and round the rings, in ring order
    assert order == [i % n_rings for i in range(len(order))]
    assert min(last_turn.values()) >= 0  # every ring had turns
    assert most_apart <= math.ceil(n_rings * per_ring / BUDGET) + 1  # one round of the rings at most


def test_no_record_is_lost_or_reordered_and_batches_are_kept() -> None:
    n_rings = 24
    rng = np.random.default_rng(11)
    src = FifoRings(n_rings)
    sink = Batches()
    tr = tracker(src, sink)
    tapped: dict[int, list[np.ndarray]] = {i: [] for i in range(n_rings)}
    tr.add_tap(lambda recs, ring: tapped[ring].append(recs.copy()), with_ring=True)
    sent: dict[int, list[tuple[list[int], list[int]]]] = {i: [] for i in range(n_rings)}
    logged: dict[int, list[np.ndarray]] = {i: [] for i in range(n_rings)}
    nxt = dict.fromkeys(range(n_rings), 0)
    t = full = 0
    while t < 40 or src.waiting():
        if t < 40:  # apps log batches of 1..700 lookups (and hints) on some rings, more than the budget
            for ring in rng.choice(n_rings, int(rng.integers(1, 8)), replace=False).tolist():
                for _ in range(int(rng.integers(1, 4))):
                    recs, keys, hint_keys = batch(ring, nxt[ring], int(rng.integers(1, 700)),
                                                  int(rng.integers(0, 5)))
                    nxt[ring] += len(keys)
                    src.log(ring, recs)
                    logged[ring].append(recs)
                    sent[ring].append((keys, hint_keys))
        full += sum(n for _, n in tick(tr, src)) == BUDGET
        t += 1
        assert t < 1000
    assert tr.n_pending == 0 and full > 40  # the budget cut drains short (mid-batch) many times
    got: dict[int, list[tuple[list[int], list[int]]]] = {i: [] for i in range(n_rings)}
    for keys, hint_keys, nb in sink.got:
        assert nb == 1 and len(set((keys >> 32).tolist())) == 1  # one batch of one ring
        got[int(keys[0] >> 32)].append((keys.tolist(), hint_keys.tolist()))
    for ring in range(n_rings):
        assert got[ring] == sent[ring]  # each batch whole, in order, its lookups and hints in order
        mine = np.concatenate(tapped[ring]) if tapped[ring] else np.zeros(0, dtype=np.uint64)
        want = np.concatenate(logged[ring]) if logged[ring] else np.zeros(0, dtype=np.uint64)
        assert np.array_equal(mine, want)  # the taps see each ring's records as logged
    assert sum(n for _, n in src.turns) == sum(len(r) for rs in logged.values() for r in rs)


def test_below_the_budget_every_ring_is_drained_in_ring_order() -> None:
    src = FifoRings(6)
    sink = Batches()
    tr = tracker(src, sink)
    for t in range(5):
        for ring in (1, 2, 4):  # a few rings with little in them: the common case
            src.log(ring, batch(ring, 10 * t, 3 + ring)[0])
        assert tick(tr, src) == [(1, 5), (2, 6), (4, 8)]  # lookups and an end
        assert tr.next_turn == 0 and tr.backlog == 0
    assert len(sink.got) == 15


def test_full_rings_drop_while_they_wait_and_the_drops_are_counted() -> None:
    n_rings, capacity = 16, 2000
    src = FifoRings(n_rings, capacity)
    tr = tracker(src)
    nxt = dict.fromkeys(range(n_rings), 0)
    for _ in range(50):  # 1500 records a ring a tick, 16 x 1500 against a budget of 1000
        for ring in range(n_rings):
            src.log(ring, lookups(ring_keys(ring, nxt[ring], 1500)))
            nxt[ring] += 1500
        tick(tr, src)
        assert tr.dropped_total == sum(src.drops.values())
        assert {ring: d for ring, (_, d) in tr.ring_drops.items()} == src.drops
    assert tr.dropped_total > 0 and all(src.drops.values())


@pytest.fixture
def many_rings() -> Iterator[tuple[object, object, list]]:
    name = f"recmgd-drainbudget-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(1000, 4)], slots=40, ring_records=1024, rings=8)
    daemon = apps = None
    try:
        daemon = pool_mod.Pool.attach(name, role="daemon")
        apps = [app] + [pool_mod.Pool.attach(name) for _ in range(5)]  # 6 apps, a ring each
        yield app, daemon, apps
    finally:
        for other in (apps or [])[1:]:
            other.close()
        if daemon is not None:
            daemon.close()
        app.destroy()


def test_a_pool_driver_over_real_rings_and_the_pending_gauges(many_rings) -> None:
    app, daemon, apps = many_rings
    budget = 700
    drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", step_mode=True, max_drain=budget)
    assert drv.max_drain == budget
    order: list[int] = []
    drv.add_tap(lambda recs, ring: order.append(ring), with_ring=True)
    rings = [a.ring_index for a in apps]
    assert len(set(rings)) == 6
    for a in apps:  # 3 batches of 200 lookups a ring, and 50 lookups of a batch not ended
        for b in range(3):
            lookup(a, 0, np.arange(200) + b)
            a.end_batch()
        lookup(a, 0, np.arange(50))
    total = 6 * (3 * 201 + 50)
    drained = []
    while sum(drained) < total:
        drained.append(drv.tick())
        assert drained[-1] <= budget
        assert len(drained) <= math.ceil(total / budget)  # each tick takes the whole budget while behind
    st = drv.stats()
    assert st["steps"] == st["batches"] == 18 and st["lookups"] == 18 * 200
    assert st["ring_drops"] == 0 and st["backlog_records"] == 0
    assert st["pending_records"] == 6 * 50 and st["pending_records_peak"] >= 6 * 50
    assert list(dict.fromkeys(order)) == sorted(rings)  # the first turns in ring order
    assert len(order) > len(rings)  # rings the budget cut short were drained again at their next turns

    # an app that logs more than its ring holds before the next tick drops records: counted
    for _ in range(3):
        lookup(apps[2], 0, np.arange(600))  # 1800 lookups into a ring of 1024
    lookup(apps[4], 0, np.arange(900))
    drops = sum(r.drops for r in daemon.rings())
    assert drops > 0
    while drv.tick():
        pass
    st = drv.stats()
    assert st["ring_drops"] == drops and st["backlog_records"] == 0

    # the pending records as Prometheus gauges, beside the other per-pool gauges
    text = MetricsServer(("127.0.0.1", 0), lambda: {"pools": {app.name: st}}).text().decode()
    assert f'recmgd_pending_records{{pool="{app.name}"}} {float(st["pending_records"])}' in text
    assert f'recmgd_pending_records_peak{{pool="{app.name}"}} {float(st["pending_records_peak"])}' in text
    assert st["pending_records"] > 0 and st["pending_records_peak"] >= st["pending_records"]
    drv.close()


def test_the_pending_gauges_of_each_pool() -> None:
    snapshot = {"pools": {"p0": {"pending_records": 7, "pending_records_peak": 9, "tables": []},
                          "p1": {"tables": []}}}  # p1: a snapshot without them reads 0
    text = MetricsServer(("127.0.0.1", 0), lambda: snapshot).text().decode()
    assert "# TYPE recmgd_pending_records gauge" in text
    assert "# TYPE recmgd_pending_records_peak gauge" in text
    assert 'recmgd_pending_records{pool="p0"} 7.0' in text
    assert 'recmgd_pending_records_peak{pool="p0"} 9.0' in text
    assert 'recmgd_pending_records{pool="p1"} 0.0' in text
    assert 'recmgd_pending_records_peak{pool="p1"} 0.0' in text


# -- dead apps' rings ------------------------------------------------------------------------------------


class DeadApps(FifoRings):
    """FifoRings whose apps (pid 100 + ring) die when the test says (``dead``); ``release_ring`` frees a
    ring (owner 0) and logs it in ``released``."""

    def __init__(self, n: int, capacity: int = 1 << 40) -> None:
        super().__init__(n, capacity)
        self.dead: set[int] = set()
        self.released: list[int] = []

    def release_ring(self, index: int) -> None:
        assert self.pids[index] != 0
        self.pids[index] = 0
        self.released.append(index)


class Driver:
    """What AppTracker needs of a PoolDriver, over a RingTracker (PoolDriver.flush_ring's contract)."""

    name = "many"

    def __init__(self, src: DeadApps, tr: RingTracker) -> None:
        self.pool, self.tracker = src, tr
        self.pc = {"rings_released": 0, "records": 0}

    def flush_ring(self, index: int, info: object = None) -> bool | None:
        drained, empty = self.tracker.flush_ring(index, info)
        self.pc["records"] += drained
        return empty


@pytest.fixture
def dead_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DeadApps, Batches, RingTracker, AppTracker]]:
    src = DeadApps(64)
    monkeypatch.setattr(apps_mod, "process_start", lambda pid: 1.0)
    monkeypatch.setattr(apps_mod, "process_alive", lambda pid, start=None: pid - 100 not in src.dead)
    sink = Batches()
    tr = tracker(src, sink)
    yield src, sink, tr, AppTracker(Driver(src, tr))  # type: ignore[arg-type]


def test_a_ring_taken_over_before_its_flush_is_left_to_the_next_check(dead_apps, caplog) -> None:
    """The flush's own look finds another owner on a dead app's ring (RingTracker.flush_ring gives None):
    the check neither releases it nor counts it among the rings left to the ticks (it logged that the
    ring held more records than the drain budget, which it did not)."""
    src, _, _, apps = dead_apps
    apps.check()
    src.dead = {5}
    flushed: list[int] = []
    apps.driver.flush_ring = lambda index, info=None: flushed.append(index)  # (None: taken over)
    with caplog.at_level(logging.INFO, logger="recmgd.daemon.apps"):
        assert apps.check() == []
    assert flushed == [5] and apps.draining == set() and src.released == []
    assert "drain budget" not in caplog.text


def fill(src: DeadApps, ring: int, n_batches: int, n: int, partial: int) -> list[list[int]]:
    """n_batches ended batches of n lookups on a ring, then a batch of ``partial`` never ended; returns
    the ended batches' keys."""
    sent = []
    for b in range(n_batches):
        recs, keys, _ = batch(ring, n * b, n)
        src.log(ring, recs)
        sent.append(keys)
    src.log(ring, lookups(ring_keys(ring, 10**6, partial)))
    return sent


def by_ring(sink: Batches) -> dict[int, list[list[int]]]:
    got: dict[int, list[list[int]]] = {}
    for keys, _, nb in sink.got:
        assert nb == 1 and len(set((keys >> 32).tolist())) == 1  # one batch of one ring
        got.setdefault(int(keys[0] >> 32), []).append(keys.tolist())
    return got


def test_dead_apps_full_rings_are_drained_under_the_budget_and_released_once_empty(dead_apps) -> None:
    src, sink, tr, apps = dead_apps
    drv = apps.driver
    apps.check()  # the apps are known
    assert src.turns == [] and apps.started == 64
    sent = {ring: fill(src, ring, 20, 50, 30) for ring in range(64)}  # 1050 records a ring
    total = src.waiting()
    src.dead = set(range(64))  # every app dies, its ring full
    released = apps.check()
    # one check and the next tick take at most the budget together; no ring it could not empty is freed
    assert released == [] and src.released == [] and drv.pc["rings_released"] == 0
    assert src.turns == [(0, BUDGET)] and tr.spent == BUDGET
    assert tick(tr, src) == [] and tr.next_turn == 0 and tr.spent == 0
    assert apps.draining == set(range(64)) and all(src.pids[r] == 100 + r for r in range(64))
    drained = BUDGET
    ticks = 0
    while src.waiting():
        for _ in range(4):  # four ticks, then a check (app_check_interval)
            drained += sum(n for _, n in tick(tr, src))
            ticks += 1
        before, n_released = len(src.turns), len(src.released)
        empty = {ring for ring in range(64) if src.pids[ring] and not src.waiting(ring)}
        released = apps.check()
        # released by the first check that finds them empty (or empties them), not before
        assert released == src.released[n_released:] and empty <= set(released)
        assert all((src.pids[r] == 0) == (src.waiting(r) == 0) for r in range(64))
        drained_now = sum(n for _, n in src.turns[before:])
        drained += drained_now + sum(n for _, n in tick(tr, src))
        assert drained_now <= BUDGET and tr.spent == 0
        ticks += 1
        assert ticks < 200
    assert drained == total == 64 * 1050
    apps.check()
    # every ring released once, its state and partial batch gone; every ended batch arrived, in order
    assert sorted(src.released) == list(range(64)) and drv.pc["rings_released"] == 64
    assert apps.exited == 64 and apps.draining == set() and apps.known == {}
    assert tr.rings == {} and tr.n_pending == 0
    assert by_ring(sink) == sent


def test_an_app_that_exits_with_a_few_records_is_released_at_the_first_check(dead_apps) -> None:
    src, sink, tr, apps = dead_apps
    drv = apps.driver
    apps.check()
    for ring in range(64):  # live apps with a little waiting, as usual
        fill(src, ring, 1, 5, 0)
    sent = {ring: fill(src, ring, 3, 7, 4) for ring in (3, 9, 40)}
    src.dead = {3, 9, 40, 41}  # 41 exits with its ring empty
    src.chunks[41] = []
    assert sorted(apps.check()) == [3, 9, 40, 41]
    assert sorted(src.released) == [3, 9, 40, 41] and drv.pc["rings_released"] == 4
    assert apps.draining == set() and not any(src.waiting(r) for r in (3, 9, 40, 41))
    assert tr.spent == 3 * (6 + 3 * 8 + 4) and drv.pc["records"] == tr.spent
    assert by_ring(sink) == {ring: [ring_keys(ring, 0, 5).tolist()] + sent[ring] for ring in (3, 9, 40)}
    assert tr.n_pending == 0 and all(r not in tr.rings for r in (3, 9, 40, 41))
    turns = tick(tr, src)  # the tick: the rest of the budget, for the live apps
    assert [r for r, _ in turns] == [r for r in range(64) if r not in (3, 9, 40, 41)]
    assert tr.spent == 0


def test_dead_apps_rings_through_a_pool_driver(many_rings) -> None:
    """Through a PoolDriver over a real pool: an app process with several rings dies with them full."""
    app, daemon, _ = many_rings
    budget = 500
    drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", step_mode=True, max_drain=budget)
    apps = AppTracker(drv)
    pid = os.fork()
    if pid == 0:  # the app: two rings, each 4 batches of 200 lookups and a batch never ended
        try:
            handles = [pool_mod.Pool.attach(app.name) for _ in range(2)]
            for h in handles:
                for b in range(4):
                    lookup(h, 0, np.arange(200) + b)
                    h.end_batch()
                lookup(h, 0, np.arange(30))
        finally:
            os._exit(0)  # dies without detaching
    os.waitpid(pid, 0)
    dead = [r.index for r in daemon.rings() if r.pid == pid]
    assert len(dead) == 2
    total = 2 * (4 * 201 + 30)
    released = apps.check()
    first = drv.pc["records"]
    assert released == [] and first == budget and apps.draining == set(dead)
    assert drv.tick() == 0  # the check spent this tick's budget
    while len(released) < 2:
        assert drv.tick() <= budget
        before = drv.pc["records"]
        released += apps.check()
        assert drv.pc["records"] - before <= budget
        left = {r.index: r.waiting for r in daemon.rings()}
        assert all(left[r] == 0 for r in released) and all(left[r] for r in set(dead) - set(released))
    assert sorted(released) == sorted(dead) and drv.stats()["rings_released"] == 2
    assert all(r.pid == 0 and r.waiting == 0 for r in daemon.rings() if r.index in dead)
    st = drv.stats()
    assert st["steps"] == st["batches"] == 8 and st["lookups"] == 8 * 200 and st["records"] == total
    assert st["pending_records"] == 0 and not set(dead) & set(drv.rings)
    drv.close()
