"""The classical C policies driven step by step (the daemon) give back the ids of rows they hold no state
for (issue #13): their key map stays bounded by the fast tier, and their decisions do not change."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recmgd import policy as registry
from recmgd.errors import PolicyError
from recmgd.policies import NativePolicy
from recmgd.policy import Decision, StepView
from recmgd.sim.driver import Driver, drive
from recmgd.trace import Steps, open_trace

RELEASING = ["lru", "s3fifo", "stms", "bingo"]
KEEPING = ["lfu", "domino", "opt", "opt-bypass"]
BUDGET = 8  # prefetch budget of the prefetchers here


def _pow2_at_least(x: int, lo: int, hi: int) -> int:
    n = lo
    while n < x and n < hi:
        n *= 2
    return n


def held_bound(name: str, cap: int) -> int:
    """Rows a policy may hold state for while not resident, by design (prefetch.c, cache.c)."""
    if name == "s3fifo":
        return max(cap - max(cap // 10, 1), 1)  # its ghost
    if name == "stms":
        return _pow2_at_least(4 * cap, 4096, 1 << 26)  # its history ring
    return 0


def live_bound(name: str, cap: int, max_step: int) -> int:
    """Ids alive after a step: the resident rows, the rows still held by design, the rows of the step
    (all mapped before it runs, and evicted in it) and the prefetches it made up (Bingo maps them)."""
    return cap + held_bound(name, cap) + max_step + BUDGET


def make(name: str, release: bool) -> NativePolicy:
    p = registry.create(name, prefetch_budget=BUDGET, region=8, seed=0)
    assert isinstance(p, NativePolicy)
    if release:
        p.step_by_step()
    return p


Decided = tuple[list[int], list[int], list[int]]  # one step's evict, admit, prefetch


def run(name: str, steps: list[np.ndarray], cap: int, release: bool,
        partial: bool = False) -> tuple[list[Decided], list[int], NativePolicy]:
    """Drive a policy as the daemon does (observe, apply; with ``partial``, every third step only half of
    the insertions, the rest told through rejected()): (decisions, live ids after each step, the policy)."""
    p = make(name, release)
    if p.needs_future:
        p.set_future(steps)
    p.reset(cap)
    resident: set[int] = set()
    decisions: list[Decided] = []
    live: list[int] = []
    for b, keys in enumerate(steps):
        hit = np.array([k in resident for k in keys.tolist()], dtype=bool)
        d = p.observe(StepView(b, keys, hit))
        decisions.append((d.evict.tolist(), d.admit.tolist(), d.prefetch.tolist()))
        resident -= set(d.evict.tolist())
        inserts = [k for k in d.admit.tolist() + d.prefetch.tolist() if k not in resident]
        take = inserts[: len(inserts) // 2] if partial and b % 3 == 0 else inserts
        resident |= set(take)
        if len(take) < len(inserts):
            p.rejected(np.array(inserts[len(take):], dtype=np.int64))
        assert p.resident == len(resident) <= cap
        live.append(p.live_ids)
    return decisions, live, p


def generated(n_steps: int = 3000, seed: int = 1) -> list[np.ndarray]:
    """Steps over 10^7 rows of 3 tables, zipf-skewed: most rows are seen once or twice."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        rows = (rng.zipf(1.1, 200) * 2654435761) % 10_000_000
        tables = rng.integers(0, 3, rows.shape[0])
        out.append(np.array(list(dict.fromkeys(((tables << 40) | rows).tolist())), dtype=np.int64))
    return out


@pytest.fixture(scope="module")
def amazon(shared_traces: Path) -> list[np.ndarray]:
    s = open_trace(str(shared_traces / "amazon_video.trace")).steps(16)
    return s.slice(0, 4000).as_list()


def check_release(name: str, steps: list[np.ndarray], cap: int, partial: bool = False) -> None:
    dec_off, live_off, p_off = run(name, steps, cap, release=False, partial=partial)
    dec_on, live_on, p_on = run(name, steps, cap, release=True, partial=partial)
    assert not p_off.gives_back and p_on.gives_back
    for b, (a, c) in enumerate(zip(dec_off, dec_on, strict=True)):
        assert a == c, f"{name}: step {b} decides otherwise when giving ids back"
    bound = live_bound(name, cap, max(len(s) for s in steps))
    assert max(live_on) <= bound, f"{name}: {max(live_on)} live ids, bound {bound}"
    distinct = len(np.unique(np.concatenate(steps)))
    assert live_off[-1] >= distinct  # every row ever seen (and Bingo's prefetches)
    # the per-id arrays follow the ids handed out, which the free list keeps to the peak of live ones
    assert len(p_on.idmap or []) <= bound
    assert p_on.nbytes < p_off.nbytes


@pytest.mark.parametrize("name", RELEASING)
def test_generated_stream_same_decisions_bounded_ids(name: str) -> None:
    steps = generated()
    cap = 500
    check_release(name, steps, cap)
    # and the stream is one where keeping every id grows far past that bound
    assert len(np.unique(np.concatenate(steps))) > 20 * live_bound(name, cap, 200)


@pytest.mark.parametrize("name", RELEASING)
def test_generated_stream_with_rejected_rows(name: str) -> None:
    """rejected() looks ids up between steps; they are given back only at the next observe()."""
    check_release(name, generated(1500, seed=2), 300, partial=True)


@pytest.mark.parametrize("name", RELEASING)
def test_real_trace_same_decisions_bounded_ids(amazon: list[np.ndarray], name: str) -> None:
    distinct = len(np.unique(np.concatenate(amazon)))
    cap = max(distinct // 20, 1)
    check_release(name, amazon, cap)
    if name in ("lru", "bingo"):
        assert live_bound(name, cap, max(len(s) for s in amazon)) * 5 < distinct


@pytest.mark.parametrize("name", KEEPING)
def test_unbounded_kinds_keep_every_id(amazon: list[np.ndarray], name: str) -> None:
    """LFU, OPT and Domino keep every id (documented): step_by_step changes nothing for them."""
    steps = amazon[:800]
    dec_off, live_off, _ = run(name, steps, 200, release=False)
    dec_on, live_on, p = run(name, steps, 200, release=True)
    assert not p.gives_back
    assert dec_on == dec_off and live_on == live_off


def test_whole_trace_drivers_refuse_a_policy_giving_ids_back(amazon: list[np.ndarray]) -> None:
    steps = Steps.from_list(amazon[:100])
    p = make("lru", release=True)
    with pytest.raises(PolicyError, match="step by step"):
        drive(p, steps, 50, 10, path="native")
    # and the C loop itself, handed the shared map and handle anyway
    assert p.idmap is not None
    ids = p.idmap.map(steps.keys)
    with pytest.raises(PolicyError, match="bad argument"):
        Driver(p.idmap, 50).run(p.handle, ids, steps.offsets.astype(np.int64), scored=True)
    # driven through observe() (the simulator's python path) it is the same as the native path
    got = drive(make("lru", release=True), steps, 50, 10, path="python")
    want = drive(make("lru", release=False), steps, 50, 10, path="native")
    assert replace(got, seconds=0.0) == replace(want, seconds=0.0)


import recmgd.pool as pool_mod  # noqa: E402


@pytest.mark.parametrize("name", ["lru", "s3fifo"])
def test_the_daemon_drives_its_policy_step_by_step(amazon: list[np.ndarray], name: str) -> None:
    """A PoolDriver makes its policy give ids back, and the loop still matches the simulator."""
    from recmgd.daemon.loop import PoolDriver
    from recmgd.keys import key_row, key_table

    # each step's keys in the order the app below looks them up: table 0's, then table 1's
    steps = [np.concatenate([s[key_table(s) == 0], s[key_table(s) == 1]]) for s in amazon[:1500]]
    keys_all = np.concatenate(steps)
    sizes = [int(key_row(keys_all[key_table(keys_all) == t]).max()) + 1 for t in (0, 1)]
    cap = max(len(np.unique(keys_all)) // 20, 1)
    expected = drive(registry.create(name), Steps.from_list(steps), cap, 0)
    pool = f"recmgd-release-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(pool, tables=[(n, 4) for n in sizes], slots=cap, ring_records=4096)
    daemon = pool_mod.Pool.attach(pool, role="daemon")
    try:
        pol = registry.create(name)
        assert isinstance(pol, NativePolicy)
        drv = PoolDriver(daemon, pol, name, step_mode=True)
        assert pol.gives_back
        # one key map for the mirror and the policy: the mirror counts none of it as its own
        assert drv.mover.shares_key_map and pol.idmap is not None
        assert drv.mover.nbytes() == drv.mover.flags.nbytes
        assert drv.stats()["state_bytes"] == drv.mover.nbytes() + pol.nbytes
        peak = peak_map = 0
        for i, keys in enumerate(steps):
            for t in (0, 1):
                rows = key_row(keys[key_table(keys) == t])
                if len(rows):
                    app.embedding_bag(t, rows, np.arange(len(rows), dtype=np.int64))
            app.end_batch()
            drv.tick()
            peak = max(peak, pol.live_ids)
            peak_map = max(peak_map, pol.idmap.live)
            if i % 100 == 99:  # the mirror, through the shared map, is the pool's residency
                owned = np.sort(drv.mover.owned_keys())
                assert np.array_equal(owned, np.sort(np.asarray(daemon.resident_keys(), dtype=np.int64)))
                # and it holds the ids of those rows and of the step's evicted ones (freed at the next settle)
                assert len(owned) <= drv.mover.tracked() <= len(owned) + max(len(s) for s in steps)
        st = drv.stats()
    finally:
        daemon.close()
        app.destroy()
    assert st["on_demand"] == expected.on_demand
    assert peak <= live_bound(name, cap, max(len(s) for s in steps))
    # the map holds the policy's rows and the mirror's, which are mostly the same rows
    assert peak_map <= live_bound(name, cap, max(len(s) for s in steps)) + cap
    assert peak * 5 < len(np.unique(keys_all))


def test_a_policy_switch_gives_the_mirror_the_new_policys_map(amazon: list[np.ndarray]) -> None:
    """LRU, then S3-FIFO (both share their key map with the mirror), then LFU (keeps every id: the mirror
    goes back to a map of its own): after each switch the mirror is still the pool's residency."""
    from recmgd.daemon.loop import PoolDriver
    from recmgd.keys import key_row, key_table

    steps = [s[key_table(s) == 0] for s in amazon[:900]]
    rows = int(key_row(np.concatenate(steps)).max()) + 1
    cap = max(len(np.unique(np.concatenate(steps))) // 20, 1)
    pool = f"recmgd-release-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(pool, tables=[(rows, 4)], slots=cap, ring_records=4096)
    daemon = pool_mod.Pool.attach(pool, role="daemon")
    try:
        pol = registry.create("lru")
        drv = PoolDriver(daemon, pol, "lru", step_mode=True)
        for i, keys in enumerate(steps):
            if i in (300, 600):
                name = "s3fifo" if i == 300 else "lfu"
                pol = registry.create(name)
                drv.switch_policy(pol, name)
                assert drv.mover.shares_key_map == (name == "s3fifo")
            if len(keys):
                r = key_row(keys)
                app.embedding_bag(0, r, np.arange(len(r), dtype=np.int64))
            app.end_batch()
            drv.tick()
            if i % 50 == 49:
                owned = np.sort(drv.mover.owned_keys())
                assert np.array_equal(owned, np.sort(np.asarray(daemon.resident_keys(), dtype=np.int64)))
                assert len(owned) == drv.resident_count() <= cap
        assert drv.stats()["on_demand"] > 0
    finally:
        daemon.close()
        app.destroy()


def test_decision_type_unchanged() -> None:
    p = make("lru", release=True)
    p.reset(4)
    d = p.observe(StepView(0, np.array([3, 1], dtype=np.int64), np.zeros(2, dtype=bool)))
    assert isinstance(d, Decision) and d.admit.tolist() == [3, 1]
