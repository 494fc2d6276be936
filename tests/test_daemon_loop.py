"""The daemon's per-pool loop (recmgd.daemon.loop.PoolDriver) in one process, against a real pool: this
process is the app (it created the pool and owns ring 0) and the daemon (a role="daemon" handle)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import recmgd.pool as pool_mod
from recmgd import policy as policy_mod
from recmgd.daemon.loop import FillBudget, PoolDriver
from recmgd.keys import make_keys
from recmgd.policy import Decision, Policy, StepView


@pytest.fixture
def pools() -> Iterator[tuple[object, object]]:
    name = f"recmgd-loop-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(1000, 4), (500, 8)], slots=40, ring_records=4096)
    for t, n in ((0, 1000), (1, 500)):
        app.write_rows(t, np.arange(n), np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 4 * (t + 1))))
    daemon = pool_mod.Pool.attach(name, role="daemon")
    try:
        yield app, daemon
    finally:
        daemon.close()
        app.destroy()


def lookup(app, table: int, rows) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    app.embedding_bag(table, rows, np.arange(len(rows), dtype=np.int64))


class Scripted(Policy):
    """Returns the decisions it is given, step by step; remembers what it was shown and refused."""

    name = "scripted"

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = decisions
        self.views: list[StepView] = []
        self.refused: list[int] = []

    def reset(self, capacity: int) -> None:
        self.capacity = capacity

    def observe(self, view: StepView) -> Decision:
        if view.step < 0:
            return Decision(admit=view.keys)
        self.views.append(view)
        return self.decisions.pop(0) if self.decisions else Decision()

    def rejected(self, keys: np.ndarray) -> None:
        self.refused += keys.tolist()


def k(table: int, rows) -> np.ndarray:
    return make_keys(table, np.asarray(rows, dtype=np.int64))


def test_every_batch_is_one_step_with_hits_as_resident_before(pools) -> None:
    app, daemon = pools
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", step_mode=True)
    for _ in range(3):  # three batches drained in one tick: three steps, each applied before the next
        lookup(app, 0, [1, 2, 3, 2])
        lookup(app, 1, [7])
        app.end_batch()
    lookup(app, 0, [9])  # an unfinished batch waits for its boundary
    assert drv.tick() == 3 * 6 + 1
    st = drv.stats()
    assert st["steps"] == 3 and st["lookups"] == 15 and st["unique"] == 12
    assert st["on_demand"] == 4 and st["hits"] == 8
    assert st["fills"] == 4 and st["resident"] == 4 == len(daemon.resident_keys()) == pol.resident
    assert [t["lookups"] for t in st["tables"]] == [12, 3]
    app.end_batch()
    drv.tick()
    assert drv.stats()["steps"] == 4 and drv.stats()["resident"] == 5


def test_fill_budget_rows_and_rejected(pools) -> None:
    app, daemon = pools
    pol = policy_mod.create("lru")
    budget = FillBudget(rows_per_s=1000, step_mode=True, step_seconds=0.01)  # 10 rows a step
    drv = PoolDriver(daemon, pol, "lru", budget=budget, step_mode=True)
    lookup(app, 0, range(25))
    app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["fills"] == 10 and st["admit_rejected"] == 15
    # the policy forgot what the budget refused: its residency equals the pool's
    assert pol.resident == 10 == len(daemon.resident_keys())
    lookup(app, 0, range(25))
    app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["hits"] == 10 and st["fills"] == 20 and pol.resident == 20 == len(daemon.resident_keys())


def test_fill_budget_bytes() -> None:
    b = FillBudget(mb_per_s=0.001, step_mode=True, step_seconds=0.1)  # 100 bytes a step
    b.refill()
    assert b.take(np.full(10, 16)) == 6
    assert b.take(np.full(10, 16)) == 0
    b.refill()
    assert b.take(np.array([64, 64])) == 1
    assert FillBudget().take(np.full(1000, 1 << 20)) == 1000
    wall = FillBudget(rows_per_s=100, step_mode=False, step_seconds=0.01, burst=0.05)
    assert wall.take(np.full(100, 8)) == 5  # at most the burst (0.05 s of budget)


def test_prefetch_useful_late_and_wasted(pools) -> None:
    app, daemon = pools
    pol = Scripted([
        Decision(prefetch=k(0, [100, 101, 102])),  # after step 0
        Decision(evict=k(0, [101])),  # after step 1: 101 never read
        Decision(prefetch=k(0, [200, 201])),  # after step 2: the budget takes only one
        Decision(),
    ])
    budget = FillBudget(rows_per_s=1, step_mode=True, step_seconds=1.0)
    budget.rows_rate = 0  # no cap for the first steps
    drv = PoolDriver(daemon, pol, "scripted", budget=budget, step_mode=True)
    lookup(app, 0, [5])
    app.end_batch()
    drv.tick()
    lookup(app, 0, [100, 6])  # 100 prefetched and read: useful
    app.end_batch()
    drv.tick()
    budget.configure(1, 0, step_mode=True, step_seconds=1.0)  # one row per step from now on
    lookup(app, 0, [7])
    app.end_batch()
    drv.tick()
    lookup(app, 0, [201, 200])  # 200 was filled (useful); 201 dropped by the budget: late
    app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["prefetch_issued"] == 5
    assert st["prefetch_useful"] == 2
    assert st["prefetch_late"] == 1
    assert st["prefetch_evicted_unread"] == 1
    assert st["prefetch_rejected"] == 1 and pol.refused == k(0, [201]).tolist()
    assert pol.views[1].hit.tolist() == [True, False]
    assert sorted(daemon.resident_keys().tolist()) == sorted(k(0, [100, 102, 200]).tolist())


def test_hints_fetched_first_counted_apart_and_taken_over(pools) -> None:
    app, daemon = pools
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", hint_slots=8, step_mode=True)
    assert drv.capacity == 32
    app.hint(0, [300, 301, 302])
    drv.tick()  # the hints arrive before the batch's lookups: fetched now
    assert sorted(daemon.resident_keys().tolist()) == k(0, [300, 301, 302]).tolist()
    lookup(app, 0, [300, 301, 5])
    app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["hint_fetched"] == 3 and st["hint_useful"] == 2 and st["hint_received"] == 3
    assert st["hits"] == 2 and st["on_demand"] == 1
    # LRU admitted the hinted rows it saw as misses: no second copy, they are the policy's now
    assert drv.n_hinted == 1 and drv.n_resident == 3 and pol.resident == 3
    assert st["fills"] == 4
    c = app.counters()["processes"][0]
    assert c["hits"] == 2 and c["on_demand"] == 1
    # a hint that arrives together with its lookups is late
    app.hint(0, [400])
    lookup(app, 0, [400])
    app.end_batch()
    drv.tick()
    assert drv.stats()["hint_late"] == 1 and drv.stats()["hint_received"] == 4
    # more hints than the reserve holds: the oldest hinted rows make room
    app.hint(1, range(10))
    drv.tick()
    assert drv.n_hinted == 8 and drv.stats()["hint_rejected"] == 2


def test_policy_overflow_is_refused(pools) -> None:
    app, daemon = pools
    pol = Scripted([Decision(admit=k(0, range(60)))])
    drv = PoolDriver(daemon, pol, "scripted", step_mode=True)
    lookup(app, 0, [1])
    app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["resident"] == 40 == len(daemon.resident_keys())
    assert st["policy_overflow"] == 20 and pol.refused == k(0, range(40, 60)).tolist()


def test_adopt_the_fast_tier(pools) -> None:
    app, daemon = pools
    daemon.fill_keys(k(0, range(30)))
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", hint_slots=20, step_mode=True)  # capacity 20 < 30 resident
    st = drv.stats()
    assert st["adopted"] == 20 and st["adopt_evicted"] == 10
    assert len(daemon.resident_keys()) == 20 == pol.resident
    # a policy switch keeps what the new policy keeps
    drv.switch_policy(policy_mod.create("lfu"), "lfu", hint_slots=0)
    assert drv.capacity == 40 and drv.stats()["adopted"] == 20 and len(daemon.resident_keys()) == 20


def test_bad_records_are_counted_not_fatal(pools) -> None:
    app, daemon = pools
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", step_mode=True)
    from recmgd.daemon.loop import _RingState

    recs = np.array([int(k(0, [5])[0]), int(k(7, [1])[0]), int(k(1, [999])[0]), 1 << 62, 2 << 62 | 3],
                    dtype=np.uint64)
    drv._consume(_RingState(pending=[], pid=1), recs)
    s = drv.stats()
    assert s["bad_records"] == 2 and s["steps"] == 1 and s["unique"] == 1
    assert len(daemon.resident_keys()) == 1


def test_paused_pool_counts_but_does_not_move_rows(pools) -> None:
    app, daemon = pools
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", step_mode=True)
    drv.paused = True
    lookup(app, 0, range(5))
    app.end_batch()
    drv.tick()
    assert drv.stats()["lookups"] == 5 and drv.stats()["fills"] == 0 and len(daemon.resident_keys()) == 0
    drv.paused = False
    lookup(app, 0, range(5))
    app.end_batch()
    drv.tick()
    assert drv.stats()["fills"] == 5


def test_coalesce_merges_batches_drained_together(pools) -> None:
    app, daemon = pools
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", coalesce=10)
    for b in range(7):  # 7 batches of 4 lookups drained at once: steps of >= 10 records
        lookup(app, 0, [b, b + 1, b + 2, 500])
        app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["batches"] == 7 and st["lookups"] == 28
    assert st["steps"] == 3  # 3 + 3 batches (>= 10 records each), then the last one
    assert st["unique"] == 6 + 6 + 4 and len(daemon.resident_keys()) == 10
    drv.step_mode = True  # step mode ignores coalescing
    for b in range(3):
        lookup(app, 1, [b])
        app.end_batch()
    drv.tick()
    assert drv.stats()["steps"] == 6


def _step_mode_against_simulator(trace: str, policy: str, opts: dict) -> tuple[dict, object, Policy]:
    """The daemon's loop (step mode, a real pool, batches of 8 samples, 20% capacity) and the simulator
    driving the same policy over ``trace``: (the loop's stats, the simulator's result, its policy)."""
    from test_daemon_app import trace_batches

    from recmgd.sim import capacity_for, drive
    from recmgd.trace.steps import build_steps

    batches, sizes = trace_batches(trace, 8, 0)
    keys, offsets = [], [0]
    for batch in batches:
        for t, rows in batch:
            keys.append(k(t, rows))
        offsets.append(offsets[-1] + sum(len(r) for _, r in batch))
    steps = build_steps(np.concatenate(keys), np.array(offsets, dtype=np.int64), 1)
    capacity = capacity_for(0.2, len(np.unique(steps.keys)))
    sim_policy = policy_mod.create(policy, **opts)
    expected = drive(sim_policy, steps, capacity, 0)

    name = f"recmgd-loop-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(n, 4) for n in sizes], slots=capacity, ring_records=4096)
    daemon = pool_mod.Pool.attach(name, role="daemon")
    try:
        drv = PoolDriver(daemon, policy_mod.create(policy, **opts), policy, step_mode=True)
        for batch in batches:
            for t, rows in batch:
                lookup(app, t, rows)
            app.end_batch()
            drv.tick()
        st = drv.stats()
    finally:
        daemon.close()
        app.destroy()
    assert st["steps"] == len(batches) == expected.steps
    return st, expected, sim_policy


@pytest.mark.parametrize("policy", ["lru", "s3fifo", "stms", "bingo"])
def test_driver_equals_simulator_in_step_mode(shared_traces, policy: str) -> None:
    """The daemon's loop over a real pool gives the simulator's counts, prefetchers included."""
    st, expected, _ = _step_mode_against_simulator(
        str(shared_traces / "obd_random.trace"), policy, {"prefetch_budget": 4, "seed": 0}
    )
    assert not any(k.startswith("guard_") for k in st)  # no guard: nothing of it in the stats
    assert st["on_demand"] == expected.on_demand
    assert st["app"]["on_demand"] == expected.on_demand
    assert st["prefetch_issued"] == expected.prefetch_issued
    assert st["prefetch_useful"] == expected.prefetch_useful


@pytest.fixture(scope="module")
def obd_model(shared_traces, tmp_path_factory) -> str:
    """RecMG's models trained on obd_random (batch 8, 20% capacity, one epoch) with `recmg train`."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("model-obd")
    trace = str(shared_traces / "obd_random.trace")
    cmd = [sys.executable, "-m", "recmgd.cli.recmg", "train", trace, "--out", str(out), "-b", "8",
           "--fraction", "0.2", "--epochs", "1", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.mark.parametrize("policy", ["recmg", "recmg-prefetch"])
def test_learned_policy_equals_simulator_in_step_mode(shared_traces, obd_model: str, policy: str) -> None:
    """RecMG, loaded from a checkpoint (model_dir), does in the daemon what it does in the simulator."""
    opts = {"prefetch_budget": 4, "seed": 0, "model_dir": obd_model}
    st, expected, sim_policy = _step_mode_against_simulator(str(shared_traces / "obd_random.trace"), policy,
                                                            opts)
    if policy == "recmg-prefetch":  # the prefetch path must be exercised (recmg itself may issue none)
        assert expected.prefetch_issued > 0
    assert st["on_demand"] == expected.on_demand == st["app"]["on_demand"]
    assert st["prefetch_issued"] == expected.prefetch_issued
    assert st["prefetch_useful"] == expected.prefetch_useful
    # the guard reports in the daemon's stats what it counted in the simulator (recmg-prefetch has none)
    guard = {k: v for k, v in st.items() if k.startswith("guard_")}
    assert guard == sim_policy.counters()
    if policy == "recmg":
        assert guard["guard_lru_misses"] > 0 and guard["guard_model_misses"] > 0
        assert guard["guard_lru_order"] in (0, 1) and 0 <= guard["guard_lru_steps"] <= st["steps"]
        from recmgd.cli.recmgctl import format_stats

        text = format_stats({"daemon": {}, "pools": {"p": st}})
        assert (f"{guard['guard_lru_steps']} of {st['steps']} steps in LRU order, shadow misses LRU "
                f"{guard['guard_lru_misses']} / model {guard['guard_model_misses']}") in text
    else:
        assert guard == {}


class SlowScripted(Scripted):
    """A policy that asks for early admission (so the live driver runs its steps in a worker thread):
    names its victims, records the notices, can hold its first step until ``gate`` is set, can fail."""

    early_admission = True

    def __init__(self, decisions: list[Decision], victims: list[int], gate=None, fail: bool = False,
                 gate_step: int = 0) -> None:
        super().__init__(decisions)
        self.victims = victims
        self.gone: list[int] = []
        self.gate = gate
        self.gate_step = gate_step
        self.fail = fail
        self.threads: set[str] = set()

    def early_victims(self, n: int, reading: np.ndarray) -> np.ndarray:
        return np.asarray(self.victims, dtype=np.int64)

    def evicted(self, keys: np.ndarray) -> None:
        self.gone += keys.tolist()

    def observe(self, view: StepView) -> Decision:
        import threading

        if view.step >= 0:
            self.threads.add(threading.current_thread().name)
            if self.fail:
                raise RuntimeError("the model broke")
            if self.gate is not None and len(self.views) == self.gate_step:
                assert self.gate.wait(30)
        return super().observe(view)


def test_early_admission_fills_misses_before_the_policy_step(pools) -> None:
    app, daemon = pools
    pol = SlowScripted([], victims=k(0, [0, 1, 2, 3, 4, 5, 6]).tolist())
    drv = PoolDriver(daemon, pol, "slow")
    lookup(app, 0, range(40))  # 40 misses, 40 free slots: filled at once
    app.end_batch()
    drv.tick()
    assert len(daemon.resident_keys()) == 40  # by the loop's thread, whether or not the step has run
    drv.sync()
    assert pol.views[0].hit.all() and pol.gone == []
    assert pol.threads == {"recmgd-step-" + drv.name}  # the policy's steps ran in the worker thread
    lookup(app, 0, [0, 40, 41, 42, 43, 44])  # 5 misses, a full tier: 5 victims, row 0 (read now) spared
    app.end_batch()
    drv.tick()
    drv.sync()
    assert pol.gone == k(0, [1, 2, 3, 4, 5]).tolist()  # told before the step that follows them
    assert pol.views[1].hit.all()  # shown as resident: the policy owns them when its step runs
    resident = set(daemon.resident_keys().tolist())
    assert set(k(0, [0, 40, 41, 42, 43, 44]).tolist()) <= resident
    assert not set(k(0, [1, 2, 3, 4, 5]).tolist()) & resident
    st = drv.stats()
    assert st["early_admits"] == 45 and st["on_demand"] == 45 and st["evictions"] == 5
    assert st["policy_overflow"] == 0 and st["resident"] == 40
    # the list the policy gave after its last step (0..6 again): only 0 and 6 are still resident, so two
    # of six misses are filled at once and four are left to the policy's decision
    lookup(app, 0, [100, 101, 102, 103, 104, 105])
    app.end_batch()
    drv.tick()
    drv.sync()
    assert pol.views[2].hit.tolist() == [True, True] + [False] * 4 and drv.stats()["early_admits"] == 47
    assert pol.gone[5:] == k(0, [0, 6]).tolist()
    out = app.embedding_bag(0, np.array([40, 2], dtype=np.int64), np.array([0, 1], dtype=np.int64))
    assert np.array_equal(out[:, 0], [40.0, 2.0])  # a filled row and an evicted one, both correct
    drv.close()
    assert drv._worker is None


def test_a_decision_spares_rows_read_after_its_step(pools) -> None:
    import threading

    app, daemon = pools
    gate = threading.Event()
    pol = SlowScripted([Decision(evict=k(0, [1, 2]))], victims=[], gate=gate)
    drv = PoolDriver(daemon, pol, "slow")
    lookup(app, 0, [1, 2])
    app.end_batch()
    drv.tick()  # step 0 filled early; its policy step waits at the gate
    lookup(app, 0, [1])
    app.end_batch()
    drv.tick()  # step 1 reads row 1 before step 0's decision (evict 1 and 2) comes back
    gate.set()
    drv.sync()
    resident = set(daemon.resident_keys().tolist())
    assert k(0, [1]).tolist()[0] in resident and k(0, [2]).tolist()[0] not in resident
    assert drv.stats()["decision_skipped"] == 1 and drv.stats()["evictions"] == 1
    drv.close()


def test_a_decision_leaves_rows_a_later_step_missed_to_that_step(pools) -> None:
    import threading

    app, daemon = pools
    gate = threading.Event()
    pol = SlowScripted([Decision(), Decision(evict=k(0, [0]), admit=k(0, [50]))], victims=[], gate=gate,
                       gate_step=1)
    drv = PoolDriver(daemon, pol, "slow")
    lookup(app, 0, range(40))  # fills the tier (early, free slots)
    app.end_batch()
    drv.tick()
    drv.sync()
    lookup(app, 0, [50])  # a miss, no victim: left to the policy, whose step waits at the gate
    app.end_batch()
    drv.tick()
    lookup(app, 0, [50])  # missed again, before that step's decision (evict 0, admit 50) is back
    app.end_batch()
    drv.tick()
    gate.set()
    drv.sync()
    # the policy decides row 50 again with the later step (here: nothing), so the late decision's
    # admission is left out; its eviction of row 0, which no later step read, is applied
    resident = set(daemon.resident_keys().tolist())
    assert k(0, [50]).tolist()[0] not in resident and k(0, [0]).tolist()[0] not in resident
    assert drv.stats()["decision_skipped"] == 1 and len(resident) == 39
    assert [v.hit.tolist() for v in pol.views[1:]] == [[False], [False]]
    drv.close()


def test_a_decision_does_not_bring_back_a_row_the_policy_will_hear_was_evicted(pools) -> None:
    """A decision computed before the policy hears of an early eviction is applied after it: the row it
    re-admits stays out (the notice, which the policy handles after that decision, says it is gone)."""
    import threading

    app, daemon = pools
    gate = threading.Event()
    # step 1 (held at the gate): evict row 2, bring back row 1; the victims it named after step 0: row 1
    pol = SlowScripted([Decision(), Decision(evict=k(0, [2]), prefetch=k(0, [1]))],
                       victims=k(0, [1]).tolist(), gate=gate, gate_step=1)
    drv = PoolDriver(daemon, pol, "slow")
    lookup(app, 0, range(40))  # fills the tier
    app.end_batch()
    drv.tick()
    drv.sync()
    lookup(app, 0, [0])  # a hit; the policy's step 1 waits at the gate
    app.end_batch()
    drv.tick()
    lookup(app, 0, [50])  # a miss in a full tier: row 1 is evicted early, the policy told with step 2
    app.end_batch()
    drv.tick()
    assert k(0, [1]).tolist()[0] not in set(daemon.resident_keys().tolist())
    gate.set()
    drv.sync()
    assert pol.gone == k(0, [1]).tolist()  # heard after step 1's decision: row 1 is gone for the policy
    resident = set(daemon.resident_keys().tolist())
    assert k(0, [1]).tolist()[0] not in resident and k(0, [2]).tolist()[0] not in resident
    assert k(0, [50]).tolist()[0] in resident
    assert drv.stats()["decision_skipped"] == 1
    drv.close()


def test_worker_error_reaches_the_loop_and_step_mode_has_no_worker(pools) -> None:
    app, daemon = pools
    pol = SlowScripted([], victims=[], fail=True)
    drv = PoolDriver(daemon, pol, "slow")
    lookup(app, 0, [1])
    app.end_batch()
    drv.tick()
    assert drv._worker is not None and drv._worker.wait(30)
    with pytest.raises(RuntimeError, match="the model broke"):
        drv.tick()
    drv.close()  # does not raise: the error was the loop's to report
    assert drv._worker is None
    for kwargs in ({"step_mode": True}, {"early_admit": False}):  # one step at a time, in this thread
        pol = SlowScripted([], victims=k(0, [1]).tolist())
        drv = PoolDriver(daemon, pol, "slow", **kwargs)
        lookup(app, 0, [300])
        app.end_batch()
        drv.tick()
        assert drv._worker is None and pol.views[-1].hit.tolist() == [False]
        assert drv.stats()["early_admits"] == 0


def test_learned_policy_early_victims_follow_its_eviction_order(obd_model: str) -> None:
    pol = policy_mod.create("recmg-cache", seed=0, model_dir=obd_model, native_step=False)  # the Python step
    pol.reset(6)
    for step, rows in enumerate([[1, 2, 3], [4], [5, 1], [6]]):
        keys = k(0, rows)
        hit = np.isin(keys, pol.hist.index.keys_of(np.flatnonzero(pol.res.resident)))
        pol.observe(StepView(step, keys, hit))
    rid = np.flatnonzero(pol.res.resident)
    assert len(rid) == 6
    score = dict(zip(pol.hist.index.keys_of(rid).tolist(), pol.res.keep_score(rid, float(pol.t)).tolist(),
                     strict=True))
    reading = k(0, [6])
    got = pol.early_victims(2, reading).tolist()
    others = sorted((s, key) for key, s in score.items() if key not in reading.tolist())
    assert len(got) == 2 and [score[g] for g in got] == [s for s, _ in others[:2]]  # lowest first
    assert sorted(pol.early_victims(9, reading).tolist()) == sorted(key for _, key in others)
    pol.evicted(np.asarray(got, dtype=np.int64))
    assert pol.res.n == 4 and not pol.res.resident[pol.hist.index.lookup(np.asarray(got))].any()
    # the next step as the daemon shows it: row 7 was filled early (hit), so it is the policy's
    # resident row now and nothing is left to admit
    dec = pol.observe(StepView(4, k(0, [7]), np.ones(1, dtype=bool)))
    assert len(dec.admit) == 0 and len(dec.evict) == 0 and pol.res.n == 5


def test_learned_policy_live_in_its_thread_keeps_outputs_exact_and_views_equal(
        shared_traces, obd_model: str) -> None:
    """RecMG from a checkpoint, driven live (its steps in the worker thread, early admission) over
    obd_random: every output is exact, and once the worker has caught up the policy's resident rows
    are exactly the pool's."""
    from test_daemon_app import trace_batches

    batches, sizes = trace_batches(str(shared_traces / "obd_random.trace"), 8, 0)
    name = f"recmgd-loop-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(n, 4) for n in sizes], slots=20, ring_records=4096)
    for t, n in enumerate(sizes):
        app.write_rows(t, np.arange(n), np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 4)))
    daemon = pool_mod.Pool.attach(name, role="daemon")
    try:
        pol = policy_mod.create("recmg", prefetch_budget=4, seed=0, model_dir=obd_model, native_step=False)
        drv = PoolDriver(daemon, pol, "recmg")
        for i, batch in enumerate(batches[:300]):
            for t, rows in batch:
                rows = np.asarray(rows, dtype=np.int64)
                out = app.embedding_bag(t, rows, np.arange(len(rows), dtype=np.int64))
                assert np.array_equal(out[:, 0], rows.astype(np.float32))
            app.end_batch()
            drv.tick()
            if i % 50 == 49:
                drv.sync()
                mine = pol.hist.index.keys_of(np.flatnonzero(pol.res.resident))
                assert sorted(mine.tolist()) == sorted(daemon.resident_keys().tolist())
        st = drv.stats()
        drv.close()
    finally:
        daemon.close()
        app.destroy()
    # (a decision that comes back after early fills took its room counts as decision_no_room)
    assert st["early_admits"] > 0 and st["steps"] == 300 and st["policy_overflow"] == 0


def test_switching_policy_stops_the_worker_after_its_decisions(pools) -> None:
    import threading

    app, daemon = pools
    gate = threading.Event()
    pol = SlowScripted([Decision(evict=k(0, [7]))], victims=[], gate=gate)
    drv = PoolDriver(daemon, pol, "slow")
    lookup(app, 0, [7, 8])
    app.end_batch()
    drv.tick()  # filled early; the policy's step (evict 7) waits at the gate
    worker = drv._worker
    assert worker is not None and worker._thread.is_alive()
    threading.Timer(0.2, gate.set).start()
    drv.switch_policy(policy_mod.create("lru"), "lru")  # waits for the step, applies it, then switches
    assert drv._worker is None and not worker._thread.is_alive()
    assert daemon.resident_keys().tolist() == k(0, [8]).tolist() and drv.stats()["policy"] == "lru"
    lookup(app, 0, [9])
    app.end_batch()
    drv.tick()  # LRU: one step at a time in this thread
    assert drv._worker is None and sorted(daemon.resident_keys().tolist()) == k(0, [8, 9]).tolist()


def test_learned_policy_without_models_is_a_clear_error(tmp_path) -> None:
    from recmgd.daemon.loop import create_policy
    from recmgd.errors import PolicyError

    with pytest.raises(PolicyError, match="needs trained models: set model_dir"):
        create_policy("recmg", {"seed": 0})
    with pytest.raises(PolicyError, match=f"{tmp_path} holds no checkpoint"):
        create_policy("recmg-cache", {"model_dir": str(tmp_path)})
    assert create_policy("lru", {}).name == "lru"


def test_records_an_app_left_when_it_detached_are_drained(pools) -> None:
    """An app that logs its last batches and closes before the next tick: its ring's owner is 0 then,
    and what it logged still counts (the loop used to skip rings without an owner)."""
    from recmgd.daemon.apps import AppTracker

    app, daemon = pools
    name = app.name
    drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", step_mode=True)
    tracker = AppTracker(drv)
    other = pool_mod.Pool.attach(name)
    ring = other.ring_index
    tracker.check()  # the tracker knows the app
    for rows in ([1, 2, 3], [4, 5, 6], [1, 2, 7]):
        lookup(other, 0, rows)
        other.end_batch()
    lookup(other, 0, [8])  # a partial batch, never ended
    other.close()
    assert {r.index: r.pid for r in daemon.rings()}[ring] == 0
    tracker.check()  # a clean detach: the ring's records are the loop's to drain
    assert drv.tick() == 3 * 4 + 1
    st = drv.stats()
    assert st["steps"] == 3 and st["lookups"] == 9 and st["unique"] == 9
    assert st["resident"] == 7  # rows 1..7; the partial batch's row 8 was never a step
    drv.tick()
    assert ring not in drv.rings  # drained and empty: its state is gone


def test_a_tap_sees_every_drained_record_and_a_failing_tap_is_removed(pools) -> None:
    from recmgd.keys import REC_BATCH_END, record_keys, record_types

    app, daemon = pools
    drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", step_mode=True)
    seen: list[np.ndarray] = []
    rings: list[int] = []
    calls = []

    def broken(recs: np.ndarray) -> None:
        calls.append(len(recs))
        raise RuntimeError("recorder full")

    drv.add_tap(lambda recs: seen.append(recs.copy()))
    drv.add_tap(lambda recs, ring: rings.append(ring), with_ring=True)
    drv.add_tap(broken)
    lookup(app, 0, [3, 4, 3])
    app.end_batch()
    lookup(app, 1, [7])  # a batch not ended yet is in the tap's records already
    assert drv.tick() == 5
    lookup(app, 1, [8])
    app.end_batch()
    assert drv.tick() == 2
    recs = np.concatenate(seen)
    assert record_types(recs).tolist() == [0, 0, 0, REC_BATCH_END, 0, 0, REC_BATCH_END]
    assert record_keys(recs)[[0, 1, 2, 4, 5]].tolist() == [*k(0, [3, 4, 3]).tolist(), *k(1, [7, 8]).tolist()]
    assert rings == [app.ring_index] * 2
    assert calls == [5]  # raised once, then removed; the loop went on
    assert drv.stats()["steps"] == 2 and drv.stats()["unique"] == 4
    drv.remove_tap(drv.tracker._taps[0][0])
    lookup(app, 0, [1])
    app.end_batch()
    drv.tick()
    assert len(seen) == 2
    drv.close()


@pytest.mark.parametrize("pin_batches", [2, 0])
def test_a_row_announced_for_the_next_batch_is_not_evicted_before_it(pools, pin_batches: int) -> None:
    """Lookahead: LRU would evict a row the app announced (hinted) for its next batch; the daemon keeps
    it (the app then reads it from the fast tier). Without pins (0) it is evicted and read slow."""
    app, daemon = pools
    pol = policy_mod.create("lru")
    drv = PoolDriver(daemon, pol, "lru", hint_slots=4, step_mode=True, hint_pin_batches=pin_batches)
    assert drv.capacity == 36
    lookup(app, 0, range(36))  # the policy's 36 rows; row 0 is the least recently used
    app.end_batch()
    drv.tick()
    app.hint(0, [0])  # the next batch reads row 0
    drv.tick()  # the hint arrives ahead of the batch's lookups
    lookup(app, 0, range(100, 104))  # four misses: LRU evicts rows 0..3 to admit them
    app.end_batch()
    drv.tick()
    resident = set(daemon.resident_keys().tolist())
    before = app.counters()["processes"][0]["hits"]
    lookup(app, 0, [0])
    app.end_batch()
    drv.tick()
    hit = app.counters()["processes"][0]["hits"] - before
    st = drv.stats()
    if pin_batches:
        assert int(k(0, [0])[0]) in resident and hit == 1
        assert st["pin_refused"] == 1 and not resident & set(k(0, [1, 2, 3]).tolist())
        # the policy believed row 0 gone: it saw a miss and took the row over, without a second copy
        assert st["fills"] == 40 and drv.n_resident == 36 and pol.resident == 36
    else:
        assert int(k(0, [0])[0]) not in resident and hit == 0 and st["pin_refused"] == 0
    assert len(daemon.resident_keys()) <= drv.n_slots
    drv.close()


def test_a_pin_ends_after_its_read_or_after_its_batches(pools) -> None:
    app, daemon = pools
    pol = Scripted([Decision(admit=k(0, [5])), Decision(evict=k(0, [5]), admit=k(0, [6])),
                    Decision(admit=k(0, [5])), Decision(evict=k(0, [5]))])
    drv = PoolDriver(daemon, pol, "scripted", hint_slots=2, step_mode=True, hint_pin_batches=2)
    lookup(app, 0, [5])
    app.end_batch()
    app.hint(0, [5])
    drv.tick()  # step 1: 5 admitted; then the hint of 5 for the next batch
    lookup(app, 0, [6])
    app.end_batch()
    drv.tick()  # step 2: the policy evicts 5: refused, 5 is announced
    assert int(k(0, [5])[0]) in daemon.resident_keys().tolist() and drv.stats()["pin_refused"] == 1
    lookup(app, 0, [5])
    app.end_batch()
    drv.tick()  # step 3: read from the fast tier; the policy (which saw a miss) takes it over
    assert pol.views[-1].hit.tolist() == [False] and drv.stats()["hits"] == 1
    assert drv.stats()["fills"] == 2
    lookup(app, 0, [7])
    app.end_batch()
    drv.tick()  # step 4: read after the pin was set, the boundary passed: the eviction now happens
    assert int(k(0, [5])[0]) not in daemon.resident_keys().tolist()
    # hints never read hold the reserve for two batches, then make room
    app.hint(1, [1, 2])
    drv.tick()
    app.hint(1, [3])
    drv.tick()
    assert drv.stats()["hint_rejected"] == 1 and drv.n_hinted == 2
    for _ in range(2):
        app.end_batch()
        drv.tick()
    app.hint(1, [3])
    drv.tick()
    assert int(k(1, [3])[0]) in daemon.resident_keys().tolist() and drv.n_hinted == 2
    drv.close()


def test_early_admission_never_takes_an_announced_row_as_victim(pools) -> None:
    app, daemon = pools
    pol = SlowScripted([], victims=k(0, [1, 2, 3, 4, 5]).tolist())
    drv = PoolDriver(daemon, pol, "slow", hint_slots=2)  # capacity 38
    lookup(app, 0, range(38))
    app.end_batch()
    drv.tick()
    drv.sync()
    app.hint(0, [1])  # row 1 (the policy's first victim) is announced for the next batch
    drv.tick()
    lookup(app, 0, [40, 41])  # two misses, a full tier: two early victims, not row 1
    app.end_batch()
    drv.tick()
    drv.sync()
    assert pol.gone == k(0, [2, 3]).tolist()
    assert int(k(0, [1])[0]) in daemon.resident_keys().tolist()
    before = app.counters()["processes"][0]["hits"]
    lookup(app, 0, [1])
    app.end_batch()
    drv.tick()
    drv.sync()
    assert app.counters()["processes"][0]["hits"] == before + 1
    drv.close()


def test_an_early_hint_the_reserve_refuses_is_counted_once(pools) -> None:
    """A hint fetched early and refused (the reserve is full) is tried again by its batch's step and
    counted rejected once."""
    app, daemon = pools
    drv = PoolDriver(daemon, Scripted([]), "scripted", hint_slots=2)
    lookup(app, 0, [1])
    app.hint(1, [7, 8, 9])  # three announced rows, a reserve of two
    app.end_batch()
    lookup(app, 0, [2])
    app.end_batch()
    drv.tick()
    st = drv.stats()
    assert st["hint_early"] == 3 and st["hint_received"] == 3
    assert st["hint_fetched"] == 2 and st["hint_rejected"] == 1
