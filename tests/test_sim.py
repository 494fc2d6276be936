"""The simulator: textbook numbers at batch 1 / delay 0, both drivers agree, conservation, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from brute import brute_opt
from hypothesis import given, settings
from hypothesis import strategies as st

from recmgd import policy as registry
from recmgd.errors import PolicyError
from recmgd.keys import make_keys
from recmgd.policy import Decision, Policy, StepView
from recmgd.sim import drive, format_table, simulate
from recmgd.sim.results import format_pivot
from recmgd.sim.runner import capacity_for
from recmgd.trace import Steps, Trace

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"  # ../shared beside the checkout
CLASSIC = ["lru", "lfu", "s3fifo", "opt", "opt-bypass", "stms", "domino", "bingo"]


def per_table_trace(seed: int, n_samples: int, n_tables: int, rows: int) -> Trace:
    """Every sample reads one row of every table (so batch 1 / delay 0 is the textbook cache)."""
    rng = np.random.default_rng(seed)
    t = np.tile(np.arange(n_tables), n_samples)
    r = (rng.zipf(1.3, size=n_samples * n_tables) % rows)
    keys = make_keys(t, r)
    return Trace(keys, np.arange(0, n_samples * n_tables + 1, n_tables, dtype=np.int64), "per_table")


def brute_lru(seq: list[int], cap: int) -> list[bool]:
    cache: list[int] = []
    miss = []
    for k in seq:
        if k in cache:
            cache.remove(k)
            miss.append(False)
        else:
            miss.append(True)
            if len(cache) >= cap:
                cache.pop(0)
        cache.append(k)
    return miss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_textbook_lru_and_opt_exact(seed: int) -> None:
    tr = per_table_trace(seed, 300, 3, 40)
    seq = tr.keys.tolist()
    n = len(seq)
    results = simulate(tr, ["lru", "opt"], [0.1, 0.3], batch=1, delay=0)
    uniq = len(set(seq))
    for r in results:
        cap = capacity_for(r.fraction, uniq)
        # the scored half: samples (= steps at batch 1) from n_samples // 2 on
        split = (tr.n_samples // 2) * 3
        ref = brute_lru(seq, cap) if r.policy == "lru" else brute_opt(seq, cap)
        assert r.on_demand == sum(ref[split:]), (r.policy, cap)
        assert r.lookups == n - split


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("delay", [0, 1])
def test_native_and_python_drivers_agree(name: str, delay: int) -> None:
    rng = np.random.default_rng(5)
    steps = Steps.from_list([np.array(list(dict.fromkeys((rng.zipf(1.2, 10) % 300).tolist())))
                             for _ in range(200)])
    opts = {"prefetch_budget": 6, "region": 4}
    a = drive(registry.create(name, **opts), steps, 30, 100, delay=delay, path="native")
    b = drive(registry.create(name, **opts), steps, 30, 100, delay=delay, path="python")
    a.seconds = b.seconds = 0.0
    assert a == b


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1000), st.sampled_from(CLASSIC), st.integers(1, 50), st.sampled_from([0, 1]))
def test_conservation(seed: int, name: str, cap: int, delay: int) -> None:
    rng = np.random.default_rng(seed)
    steps = Steps.from_list([np.unique(rng.integers(0, 200, rng.integers(1, 20))) for _ in range(40)])
    c = drive(registry.create(name, prefetch_budget=5), steps, cap, 20, delay=delay)
    assert c.hits + c.on_demand == c.lookups == steps.slice(20, 40).n_lookups
    assert 0 <= c.prefetch_useful <= c.prefetch_issued
    assert c.floor <= c.bound <= c.on_demand


def test_bound_by_hand() -> None:
    # capacity 2, scored steps 2..3: {1, 2, 3} has no unseen row but 3 rows > 2 -> 1; {4, 5, 6, 1} has
    # 3 unseen rows and 4 - 2 = 2 over -> 3; the bound is 4, and OPT with bypass reaches it
    steps = Steps.from_list([np.array([1, 2]), np.array([3]), np.array([1, 2, 3]), np.array([4, 5, 6, 1])])
    c = drive(registry.create("opt-bypass"), steps, 2, 2)
    assert (c.floor, c.bound) == (3, 4)
    assert c.on_demand == c.bound


class Overflowing(Policy):
    name = "overflowing"

    def reset(self, capacity: int) -> None:
        self.capacity = capacity

    def observe(self, view: StepView) -> Decision:
        return Decision(admit=view.keys[~view.hit], prefetch=view.keys + 1000)


def test_overflow_is_a_policy_error() -> None:
    steps = Steps.from_list([np.arange(5), np.arange(5, 10)])
    with pytest.raises(PolicyError, match="capacity"):
        drive(Overflowing(), steps, 6, 0)


class Recorder(Policy):
    """A pure-Python demand LRU, to check the Python path against the C LRU."""

    name = "py-lru"

    def reset(self, capacity: int) -> None:
        self.capacity = capacity
        self.order: dict[int, None] = {}
        self.seen_steps = 0

    def observe(self, view: StepView) -> Decision:
        self.seen_steps += 1
        ev: list[int] = []
        ad: list[int] = []
        for k in view.keys.tolist():
            if k in self.order:
                self.order.pop(k)
            else:
                if len(self.order) >= self.capacity:
                    v = next(iter(self.order))
                    self.order.pop(v)
                    if v in ad:
                        ad.remove(v)
                    else:
                        ev.append(v)
                ad.append(k)
            self.order[k] = None
        return Decision(evict=np.array(ev, dtype=np.int64), admit=np.array(ad, dtype=np.int64))


def test_python_policy_matches_native_lru() -> None:
    rng = np.random.default_rng(9)
    steps = Steps.from_list([np.unique(rng.zipf(1.3, 12) % 500) for _ in range(300)])
    a = drive(Recorder(), steps, 40, 150)
    b = drive(registry.create("lru"), steps, 40, 150)
    assert (a.on_demand, a.hits, a.floor) == (b.on_demand, b.hits, b.floor)


def test_metrics_and_table() -> None:
    tr = per_table_trace(3, 400, 4, 60)
    res = simulate(tr, ["lru", "opt", "stms"], [0.1], batch=4, options={"prefetch_budget": 4})
    by = {r.policy: r for r in res}
    assert by["lru"].gap_closed == 0.0
    assert by["opt"].gap_closed is not None and by["opt"].gap_closed >= 0
    for r in res:
        assert r.hits + r.on_demand == r.lookups
        assert r.slow_bytes == 256 * (r.on_demand + r.prefetch_issued)
        assert r.steps == 50
    assert by["stms"].prefetch_issued > 0
    text = format_table(res)
    assert "on_demand" in text and "opt" in text
    assert format_table(res, markdown=True).startswith("| trace")


def test_unknown_policy_message() -> None:
    tr = per_table_trace(0, 10, 2, 5)
    with pytest.raises(ValueError, match="unknown policy nope .*known: .*lru"):
        simulate(tr, ["lru", "nope"], [0.1])


def test_cli_sim(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from recmgd.cli.recmg import main

    trace = str(SHARED / "obd_random.trace")
    assert main(["sim", trace, "--policies", "lru,opt,stms", "--fractions", "0.1", "--json",
                 "--prefetch-budget", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["policy"] for r in rows] == ["lru", "opt", "stms"]
    for key in ("trace", "fraction", "capacity", "steps", "lookups", "on_demand", "hit_rate",
                "prefetch_issued", "prefetch_useful", "accuracy", "coverage", "slow_bytes", "seconds",
                "floor", "bound", "gap_closed"):
        assert key in rows[0]
    assert rows[1]["on_demand"] <= rows[0]["on_demand"]
    assert main(["sim", trace, "--policies", "lru,nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown policy nosuch" in err and "lru" in err
    assert main(["sim", trace, "--policies", "lru", "--batch", "1", "--delay", "0",
                 "--fractions", "0.2"]) == 0
    assert "lru" in capsys.readouterr().out


@pytest.mark.parametrize("delay", [0, 1])
def test_streaming_matches_whole_trace(delay: int) -> None:
    tr = per_table_trace(4, 3000, 5, 300)
    names = ["lru", "s3fifo", "stms", "bingo", "opt"]
    a = simulate(tr, names, [0.1], batch=4, delay=delay, stream=True)
    b = simulate(tr, names, [0.1], batch=4, delay=delay, stream=False)
    from recmgd.sim.driver import drive_stream

    for x, y in zip(a, b, strict=True):
        x.seconds = y.seconds = 0.0
        assert x == y
    c = drive_stream(registry.create("lru"), tr, 4, 100, 375, delay=delay, chunk_steps=7)
    d = drive(registry.create("lru"), tr.steps(4), 100, 375, delay=delay)
    c.seconds = d.seconds = 0.0
    assert c == d


def test_cli_pivot(capsys: pytest.CaptureFixture[str]) -> None:
    from recmgd.cli.recmg import main

    t = str(SHARED / "criteo_sample.trace")
    assert main(["sim", t, t.replace(".trace", ".txt"), "--policies", "lru,opt", "--fractions", "0.1,0.2",
                 "--pivot", "on_demand", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| trace | frac | capacity | lru | opt |" and len(lines) == 6
    assert main(["sim", t, "--pivot", "nonsense"]) == 2
    capsys.readouterr()
    for field in ("trace", "policy", "counters"):  # fields of a result, but no numbers: refused
        assert main(["sim", t, "--policies", "lru", "--pivot", field]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"--pivot {field}: not a numeric metric" in err, err
    with pytest.raises(ValueError, match="not a metric: 'policy'"):
        format_pivot([], "policy")


def test_native_path_for_a_policy_without_one_is_one_line() -> None:
    """--path native for a policy with no native step is a PolicyError (one line from the CLI, exit 1),
    on both drivers (it was a ValueError: a traceback)."""
    import numpy as np

    from recmgd.errors import PolicyError
    from recmgd.policy import Policy
    from recmgd.sim import drive
    from recmgd.sim.lookahead import drive_lookahead
    from recmgd.trace.steps import build_steps

    class Plain(Policy):
        name = "plain"

        def reset(self, capacity):  # pragma: no cover - never driven
            raise AssertionError

        def observe(self, view):  # pragma: no cover - never driven
            raise AssertionError

    steps = build_steps(np.arange(64, dtype=np.int64), np.arange(0, 65, 4, dtype=np.int64), 1)
    with pytest.raises(PolicyError, match="'plain' has no native step function"):
        drive(Plain(), steps, 8, 0, path="native")
    with pytest.raises(PolicyError, match="'plain' has no native step function"):
        drive_lookahead(Plain(), steps, 8, 0, lookahead=1, budget=0, path="native")
