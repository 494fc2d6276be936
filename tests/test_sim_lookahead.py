"""The simulator with lookahead (recmgd.sim.lookahead): L = 0 is today's simulator, L >= 1 matches a
brute-force reading of the rules on small random traces, the Belady reference is not beaten by LRU with
the same window, and first uses fetched ahead take on-demand fetches below the floor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recmgd import policy as registry
from recmgd.keys import capacity_for, make_keys
from recmgd.policy import Policy, StepView
from recmgd.sim import drive, simulate
from recmgd.sim.lookahead import BeladyWindow, drive_lookahead
from recmgd.trace import Steps, Trace, open_trace

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"  # ../shared beside the checkout
ROOT = Path(__file__).resolve().parent.parent


def random_steps(seed: int, n_steps: int, rows: int, per_step: int) -> Steps:
    """Steps of up to ``per_step`` distinct keys drawn from ``rows`` keys (a skewed draw: some reuse)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        r = np.unique(rng.zipf(1.4, size=per_step) % rows)
        rng.shuffle(r)
        out.append(make_keys(0, r))
    offs = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum([len(s) for s in out], out=offs[1:])
    return Steps(np.concatenate(out), offs)


def make(name: str, budget: int) -> Policy:
    return BeladyWindow() if name == "belady" else registry.create(name, prefetch_budget=budget)


def brute(policy: Policy, steps: Steps, cap: int, L: int, B: int, split: int) -> dict[str, int]:
    """The lookahead rules of recmgd.sim.lookahead, read literally, with dicts and lists."""
    lst = [s.tolist() for s in steps.as_list()]
    owner: dict[int, str] = {}  # key -> "own" | "held"
    pf: dict[int, int] = {}
    la: dict[int, int] = {}
    seen: set[int] = set()
    touch: dict[int, int] = {}
    clock = 0
    c = dict.fromkeys(("lookups", "hits", "on_demand", "floor", "bound", "prefetch_issued", "prefetch_useful",
                       "lookahead_fills", "lookahead_useful", "first_use_ahead", "pin_refused"), 0)
    own_order = type(policy).early_victims is not Policy.early_victims
    for b, keys in enumerate(lst):
        scored = b >= split
        unseen = 0
        for k in keys:
            res = k in owner
            if scored:
                c["lookups"] += 1
                c["hits" if res else "on_demand"] += 1
                if k not in seen:
                    c["floor"] += 1
                    unseen += 1
                    c["first_use_ahead"] += int(res)
                c["prefetch_useful"] += int(res and pf.get(k) == 2)
                c["lookahead_useful"] += int(res and la.get(k) == 2)
            seen.add(k)
            if res:
                pf.pop(k, None)
                la.pop(k, None)
            touch[k] = clock
            clock += 1
        if scored:
            c["bound"] += max(unseen, len(keys) - cap)
        announced: list[int] = []
        for s in lst[b + 1:b + 1 + L]:
            announced += [k for k in s if k not in announced]
        pinned = set(announced)
        view = StepView(step=b, keys=np.array(keys, dtype=np.int64),
                        hit=np.array([owner.get(k) == "own" for k in keys], dtype=bool),
                        announced=np.array(announced, dtype=np.int64))
        dec = policy.observe(view)
        taken: list[int] = []
        rejected: list[int] = []
        keep = pinned | set(keys)

        def room(taken: list[int] = taken, keep: set[int] = keep,
                 reading: list[int] = keys + announced) -> bool:
            return _room(policy, own_order, cap, owner, touch, (pf, la), taken, keep, reading)


        for k in _dedup(dec.evict):
            if owner.get(k) == "own":
                if k in pinned:
                    owner[k] = "held"
                    c["pin_refused"] += int(scored)
                else:
                    del owner[k]
                    pf.pop(k, None)
                    la.pop(k, None)
        for k in _dedup(dec.admit):
            o = owner.get(k)
            if o == "own":
                continue
            if o == "held":
                owner[k] = "own"
                continue
            if not room():
                rejected.append(k)
                continue
            owner[k] = "own"
            touch[k] = clock
            clock += 1
        left = B if L else None
        if L:
            for k in [k for k, o in owner.items() if o == "held" and k not in pinned]:
                del owner[k]
                la.pop(k, None)
                pf.pop(k, None)
            for k in [k for k in announced if k not in owner]:
                if left == 0 or not room():
                    break
                owner[k] = "held"
                la[k] = 2 if scored else 1
                touch[k] = clock
                clock += 1
                left -= 1
                c["lookahead_fills"] += int(scored)
        for k in _dedup(dec.prefetch):
            o = owner.get(k)
            if o == "own":
                continue
            if o == "held":
                owner[k] = "own"
                continue
            if left == 0 or not room():
                rejected.append(k)
                continue
            owner[k] = "own"
            pf[k] = 2 if scored else 1
            touch[k] = clock
            clock += 1
            if left is not None:
                left -= 1
            c["prefetch_issued"] += int(scored)
        assert len(owner) <= cap
        if taken:
            policy.evicted(np.array(taken, dtype=np.int64))
        if rejected:
            policy.rejected(np.array(rejected, dtype=np.int64))
    return c


def _room(policy: Policy, own_order: bool, cap: int, owner: dict[int, str], touch: dict[int, int],
          flags: tuple[dict[int, int], ...], taken: list[int], keep: set[int], reading: list[int]) -> bool:
    """Room for one insertion: a victim in the policy's order (never a kept row), or False."""
    if len(owner) < cap:
        return True
    if own_order:
        order = policy.early_victims(len(owner) + len(taken) + 1, np.array(reading, dtype=np.int64)).tolist()
    else:
        order = sorted(owner, key=lambda k: touch[k])
    for v in order:
        if owner.get(v) == "own" and v not in keep and v not in taken:
            del owner[v]
            for f in flags:
                f.pop(v, None)
            taken.append(v)
            return True
    return False


def _dedup(a: np.ndarray) -> list[int]:
    out: list[int] = []
    for k in np.asarray(a).tolist():
        if k not in out:
            out.append(k)
    return out


def counted(c: object) -> dict[str, int]:
    return {k: int(getattr(c, k)) for k in ("lookups", "hits", "on_demand", "floor", "bound",
                                            "prefetch_issued", "prefetch_useful")}


@pytest.mark.parametrize("name", ["lru", "lfu", "s3fifo", "opt", "stms", "bingo"])
def test_lookahead_zero_is_todays_simulator(name: str) -> None:
    steps = random_steps(3, 400, 300, 12)
    cap = capacity_for(0.1, len(np.unique(steps.keys)))
    warm = len(steps) // 2
    today = drive(registry.create(name, prefetch_budget=4), steps, cap, warm)
    la = drive_lookahead(registry.create(name, prefetch_budget=4), steps, cap, warm, lookahead=0, budget=4)
    assert counted(la) == counted(today)
    assert la.lookahead_fills == la.first_use_ahead == la.pin_refused == 0


def test_lookahead_zero_on_a_real_trace_and_belady_is_opt() -> None:
    steps = open_trace(str(SHARED / "obd_random.trace")).steps(16)
    cap = capacity_for(0.1, len(np.unique(steps.keys)))
    warm = len(steps) // 2
    for name in ("lru", "s3fifo"):
        today = drive(registry.create(name), steps, cap, warm)
        assert counted(drive_lookahead(registry.create(name), steps, cap, warm, lookahead=0, budget=16)) == \
            counted(today)
    # Belady's order at L = 0 is OPT: equal up to OPT's ties (one fetch in 7,108 on this trace)
    opt = drive(registry.create("opt"), steps, cap, warm).on_demand
    bel = drive_lookahead(BeladyWindow(), steps, cap, warm, lookahead=0, budget=16).on_demand
    assert abs(bel - opt) <= opt // 1000


@pytest.mark.parametrize("name", ["lru", "belady", "bingo"])
@pytest.mark.parametrize("seed", range(6))
def test_lookahead_matches_the_rules_read_literally(name: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    steps = random_steps(seed, 60, int(rng.integers(20, 60)), int(rng.integers(3, 9)))
    cap = int(rng.integers(3, 15))
    L = int(rng.integers(1, 4))
    B = int(rng.integers(0, 4))
    warm = len(steps) // 3
    fast = drive_lookahead(make(name, 2), steps, cap, warm, lookahead=L, budget=B)
    pol = make(name, 2)
    pol.reset(cap)
    if pol.needs_future:
        pol.set_future(steps)
    ref = brute(pol, steps, cap, L, B, warm)
    got = {k: int(getattr(fast, k)) for k in ref}
    assert got == ref, (name, seed, cap, L, B)


@pytest.mark.parametrize("seed", range(10))
def test_the_c_loop_equals_the_python_driver(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = random_steps(200 + seed, 80, int(rng.integers(20, 80)), int(rng.integers(3, 10)))
    cap, L, B = int(rng.integers(3, 20)), int(rng.integers(0, 5)), int(rng.integers(0, 5))
    fields = ("steps", "lookups", "hits", "on_demand", "floor", "bound", "prefetch_issued", "prefetch_useful",
              "lookahead_fills", "lookahead_useful", "first_use_ahead", "pin_refused")
    for name in ("lru", "lfu", "s3fifo", "stms", "bingo", "opt"):
        py = drive_lookahead(make(name, 3), steps, cap, 20, lookahead=L, budget=B, path="python")
        c = drive_lookahead(make(name, 3), steps, cap, 20, lookahead=L, budget=B, path="native")
        assert {f: getattr(py, f) for f in fields} == {f: getattr(c, f) for f in fields}, (name, cap, L, B)


@pytest.mark.parametrize("seed", range(8))
def test_belady_with_the_window_is_not_beaten_by_lru_with_it(seed: int) -> None:
    # the window fits the tier (the announced rows never fill it), as in a server whose cache holds
    # many batches; obd_random at 10 rows is the other case (BENCHMARKS.md)
    rng = np.random.default_rng(seed)
    per_step = int(rng.integers(3, 8))
    steps = random_steps(50 + seed, 300, int(rng.integers(60, 200)), per_step)
    for L in (0, 1, 2, 4):
        cap = (L + 2) * per_step + int(rng.integers(0, 20))
        B = int(rng.integers(1, 6))
        warm = len(steps) // 2
        lru = drive_lookahead(make("lru", B), steps, cap, warm, lookahead=L, budget=B).on_demand
        bel = drive_lookahead(make("belady", B), steps, cap, warm, lookahead=L, budget=B).on_demand
        assert bel <= lru, (seed, L, cap, B)


def test_first_uses_fetched_ahead_go_below_the_bound() -> None:
    steps = random_steps(7, 200, 5000, 6)  # mostly rows never seen before
    cap = 64
    warm = len(steps) // 2
    base = drive_lookahead(make("lru", 8), steps, cap, warm, lookahead=0, budget=8)
    ahead = drive_lookahead(make("lru", 8), steps, cap, warm, lookahead=1, budget=8)
    assert base.on_demand >= base.bound == ahead.bound
    assert ahead.first_use_ahead > 0 and ahead.on_demand < ahead.bound
    assert ahead.on_demand < base.on_demand and ahead.lookahead_useful <= ahead.lookahead_fills
    # no budget: nothing is fetched ahead
    none = drive_lookahead(make("lru", 0), steps, cap, warm, lookahead=2, budget=0)
    assert none.lookahead_fills == 0 and none.first_use_ahead == 0


def test_an_announced_row_is_never_evicted_before_its_step() -> None:
    # LRU at capacity 2 would evict the row read long ago; the next step reads it, so it stays
    keys = [[1, 2], [3], [1]]
    steps = Steps(np.array([k for s in keys for k in s], dtype=np.int64), np.array([0, 2, 3, 4]))
    plain = drive_lookahead(make("lru", 0), steps, 2, 0, lookahead=0, budget=0)
    ahead = drive_lookahead(make("lru", 0), steps, 2, 0, lookahead=2, budget=0)
    assert plain.on_demand == 4  # 1, 2, 3, and 1 again (evicted for 3)
    # LRU's eviction of 1 is refused (1 is announced for step 2); 2 goes to make room for 3
    assert ahead.on_demand == 3 and ahead.pin_refused == 1


def test_simulate_and_the_cli_name_runs_by_lookahead(tmp_path: Path) -> None:
    steps = random_steps(1, 80, 100, 6)
    tr = Trace(steps.keys, steps.offsets, "t")
    res = simulate(tr, ["lru", "belady"], [0.2], batch=1, lookahead=[0, 2], budget=3)
    assert [r.policy for r in res] == ["lru", "belady", "lru+L2", "belady+L2"]
    assert [r.lookahead for r in res] == [0, 0, 2, 2]
    out = subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", "sim", str(SHARED / "obd_random.trace"),
                          "--policies", "lru", "--fractions", "0.1", "--lookahead", "0,1", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"policy": "lru+L1"' in out.stdout and '"lookahead": 1' in out.stdout
    bad = subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", "sim", str(SHARED / "obd_random.trace"),
                          "--lookahead", "1", "--delay", "0"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--delay 1" in bad.stderr


def test_a_lookahead_past_the_trace_is_all_of_it() -> None:
    """L at or past the number of steps announces every step ahead: the C loop and the Python driver
    agree whatever L (b + L once overflowed int64 in C, and L >= 2**63 did not convert), and results
    keep the L asked for."""
    steps = random_steps(11, 60, 50, 6)
    cap, B, warm = 12, 3, 20
    fields = ("on_demand", "hits", "prefetch_issued", "lookahead_fills", "lookahead_useful",
              "first_use_ahead", "pin_refused")
    want = None
    for L in (len(steps), 10**6, (1 << 63) - 2, (1 << 63) - 1, 1 << 64):
        for path in ("native", "python"):
            c = drive_lookahead(make("lru", B), steps, cap, warm, lookahead=L, budget=B, path=path)
            got = {f: int(getattr(c, f)) for f in fields}
            want = want or got
            assert got == want, (L, path)
            assert c.lookahead == L


def test_cli_lookahead_is_bounded() -> None:
    trace = str(SHARED / "obd_random.trace")
    for L in ("99999999999999999999", str(1 << 63)):
        bad = subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", "sim", trace, "--policies", "lru",
                              "--lookahead", f"0,{L}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith("recmg sim: error: argument --lookahead: must "
                                                              "be an integer in 0..1099511627776"), bad.stderr


def test_a_learned_policy_trains_once_for_every_lookahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """`recmg sim --lookahead 0,1,2` trains a learned policy once per capacity, not once per lookahead
    (each training is the same: the first half, the same seed), and its runs score as when each trains
    its own models."""
    from recmgd.models import train as train_mod

    steps = random_steps(3, 120, 300, 12)
    tr = Trace(steps.keys, steps.offsets, "t")
    opts = {"epochs": 1, "seed": 5, "prefetch_budget": 2}
    calls = []
    real = train_mod.train_models

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_models", counted)
    shared = simulate(tr, ["recmg-cache"], [0.1, 0.2], batch=1, lookahead=[0, 1, 2], budget=2, options=opts)
    assert len(calls) == 2  # one a capacity
    alone = [r for L in (0, 1, 2) for r in simulate(tr, ["recmg-cache"], [0.1, 0.2], batch=1, lookahead=[L],
                                                    budget=2, options=opts)]
    assert len(calls) == 2 + 6
    key = lambda r: (r.fraction, r.lookahead)  # noqa: E731
    assert [(key(r), r.on_demand, r.hits) for r in sorted(shared, key=key)] == \
        [(key(r), r.on_demand, r.hits) for r in sorted(alone, key=key)]
