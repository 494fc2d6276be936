"""Page-granular tiering in the simulator (recmgd/sim/pages.py): the comparison row slots are set against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recmgd.keys import make_keys
from recmgd.sim import simulate
from recmgd.sim.pages import drive_pages, floor_bound, page_keys, simulate_pages, to_pages
from recmgd.sim.runner import capacity_for, unique_rows
from recmgd.trace import Steps, Trace

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"


def _trace(seed: int, n_samples: int = 2000, rows: int = 400) -> Trace:
    rng = np.random.default_rng(seed)
    t = np.tile(np.arange(3), n_samples)
    r = rng.zipf(1.2, size=3 * n_samples) % rows
    return Trace(make_keys(t, r), np.arange(0, 3 * n_samples + 1, 3, dtype=np.int64), "zipf")


def test_page_keys() -> None:
    keys = make_keys(np.array([0, 0, 0, 2, 2]), np.array([0, 15, 16, 31, 32]))
    got = page_keys(keys, 256, 4096)  # 16 rows a page, each table's region starts a page
    assert got.tolist() == make_keys(np.array([0, 0, 0, 2, 2]), np.array([0, 0, 1, 1, 2])).tolist()
    assert page_keys(keys, 4096, 4096).tolist() == keys.tolist()
    with pytest.raises(ValueError, match="span several pages"):
        page_keys(keys, 8192, 4096)


@pytest.mark.parametrize(("row_bytes", "page_bytes"), [(1 << 25, 1 << 26), (3 << 24, 1 << 26),
                                                   ((1 << 40) - 1, 1 << 40), (12_345_679, 98_765_432),
                                                   (100, 4096), (1, 1 << 40)])
def test_page_keys_do_not_wrap(row_bytes: int, page_bytes: int) -> None:
    """row * row_bytes passes int64 for rows of more than 8 MiB: pages are computed exactly anyway."""
    rows = np.array([0, 2, (1 << 39) + 2, 1 << 38, (1 << 40) - 1, 123_456_789_012], dtype=np.int64)
    got = page_keys(make_keys(np.full(rows.shape, 5), rows), row_bytes, page_bytes)
    assert got.tolist() == make_keys(np.full(rows.shape, 5),
                                     np.array([int(r) * row_bytes // page_bytes for r in rows])).tolist()


def test_large_rows_on_different_pages_all_miss() -> None:
    """Rows 2 and 2**39 + 2, 32 MiB each, on pages of 64 MiB: two pages, one fits, every scored lookup
    misses (when row * row_bytes wrapped, both rows were on page 1 and every lookup hit)."""
    steps = Steps.from_list([make_keys(0, np.array([r])) for r in [2, (1 << 39) + 2] * 20])
    res = simulate_pages("t", steps, ["lru"], [1.0], 2, row_bytes=1 << 25, page_bytes=1 << 26, batch=1)[0]
    assert (res.lookups, res.on_demand, res.hits) == (20, 20, 0)


def test_to_pages_dedups_in_order_with_row_counts() -> None:
    # step 0 reads rows 17, 3, 18, 5 of table 1 (pages 1, 0, 1, 0) and row 0 of table 0
    s0 = make_keys(np.array([1, 1, 1, 0, 1]), np.array([17, 3, 18, 0, 5]))
    s1 = make_keys(np.array([1]), np.array([40]))
    pages, w = to_pages(Steps.from_list([s0, s1]), 256, 4096)
    assert pages[0].tolist() == make_keys(np.array([1, 1, 0]), np.array([1, 0, 0])).tolist()
    assert pages[1].tolist() == make_keys(np.array([1]), np.array([2])).tolist()
    assert w.tolist() == [2, 2, 1, 1]


def _brute_page_lru(steps: Steps, row_bytes: int, page_bytes: int, cap_pages: int, warm: int) -> int:
    """Page LRU, decisions after a step applying before the next: rows read from slow memory."""
    order: list[int] = []  # least recent first
    misses = 0
    for b in range(len(steps)):
        rows = steps[b]
        pk = page_keys(rows, row_bytes, page_bytes).tolist()
        resident = set(order)
        if b >= warm:
            misses += sum(1 for p in pk if p not in resident)
        for p in dict.fromkeys(pk):
            if p in order:
                order.remove(p)
            order.append(p)
        while len(order) > cap_pages:
            order.pop(0)
    return misses


@pytest.mark.parametrize("seed", [0, 1])
def test_page_lru_matches_brute_force(seed: int) -> None:
    steps = _trace(seed).steps(4)
    warm = len(steps) // 2
    cap_rows = 64
    got = drive_pages("lru", steps, cap_rows, warm, row_bytes=512, page_bytes=4096)
    assert got["capacity_pages"] == 8
    assert got["on_demand"] == _brute_page_lru(steps, 512, 4096, 8, warm)
    assert got["on_demand"] + got["hits"] == got["lookups"] == steps.n_lookups - int(steps.offsets[warm])
    assert got["page_misses"] <= got["on_demand"]


@pytest.mark.parametrize("policy", ["lru", "opt", "s3fifo"])
def test_one_row_a_page_is_the_row_simulation(policy: str) -> None:
    tr = _trace(3)
    rows = simulate(tr, [policy], [0.1, 0.3], batch=4, row_bytes=4096)
    steps = tr.steps(4)
    pages = simulate_pages("zipf", steps, [policy], [0.1, 0.3], unique_rows(steps), row_bytes=4096,
                           page_bytes=4096, batch=4)
    for r, p in zip(rows, pages, strict=True):
        assert p.policy == policy + "@page" and p.capacity == r.capacity
        assert (p.on_demand, p.hits, p.lookups, p.floor, p.bound) == (r.on_demand, r.hits, r.lookups, r.floor,
                                                                      r.bound)
        assert p.slow_bytes == r.slow_bytes


def test_pages_floor_and_bound() -> None:
    rng = np.random.default_rng(5)  # new rows keep arriving: the id range doubles in the second half
    r = np.concatenate([rng.integers(0, 3000, 6000), rng.integers(0, 6000, 6000)])
    tr = Trace(make_keys(np.zeros(12000, np.int64), r), np.arange(0, 12001, 2, dtype=np.int64), "grow")
    steps = tr.steps(4)
    warm = len(steps) // 2
    rows = simulate(tr, ["lru"], [0.1], batch=4, row_bytes=256)[0]
    pages, w = to_pages(steps, 256, 4096)
    cap_pages = capacity_for(0.1, unique_rows(steps)) * 256 // 4096
    floor, bound = floor_bound(pages, w, warm, cap_pages)
    # a row on a page already seen is not a first use any more: the page floor is lower
    assert 0 < floor <= rows.floor
    assert bound >= floor
    lru = drive_pages("lru", steps, capacity_for(0.1, unique_rows(steps)), warm, row_bytes=256)
    opt = drive_pages("opt", steps, capacity_for(0.1, unique_rows(steps)), warm, row_bytes=256)
    assert bound <= opt["on_demand"] <= lru["on_demand"]


def test_budget_under_one_page_reads_everything_slow() -> None:
    steps = _trace(6).steps(4)
    warm = len(steps) // 2
    got = drive_pages("lru", steps, 10, warm, row_bytes=256, page_bytes=4096)  # 2,560 bytes: no page
    assert got["capacity_pages"] == 0 and got["hits"] == 0
    assert got["on_demand"] == got["lookups"] == steps.n_lookups - int(steps.offsets[warm])


def test_cli_pages(capsys: pytest.CaptureFixture[str]) -> None:
    from recmgd.cli.recmg import main

    trace = str(SHARED / "amazon_video.trace")
    assert main(["sim", trace, "--policies", "lru", "--pages", "lru,opt", "--fractions", "0.1",
                 "--json"]) == 0
    rows = {r["policy"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {"lru", "lru@page", "opt@page"}
    # hashed ids: a 4 KiB page holds 16 unrelated rows, so page tiering with the same DRAM loses
    assert rows["opt@page"]["on_demand"] <= rows["lru@page"]["on_demand"]
    assert rows["lru"]["on_demand"] < rows["lru@page"]["on_demand"]
    assert rows["lru@page"]["slow_bytes"] > rows["lru"]["slow_bytes"]
    assert main(["sim", trace, "--pages", "lru", "--delay", "0"]) == 2
    assert "--delay 1 only" in capsys.readouterr().err
    assert main(["sim", trace, "--pages", "lru", "--row-bytes", "8192"]) == 2
    assert "--row-bytes <= --page-bytes" in capsys.readouterr().err
    assert main(["sim", trace, "--pages", "nosuch"]) == 2
    assert "unknown policy nosuch" in capsys.readouterr().err
