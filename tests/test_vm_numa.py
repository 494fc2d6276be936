"""The NUMA slow tier on a machine with a CPU-less memory node: a QEMU guest (tools/numa_vm.py) where
node 1 has 1 GiB and no CPUs, as a CXL or PMEM tier. One guest boot runs tests/vm_numa_guest.py, which
measures; the tests here assert on its report.

What is checked: node 1 exists without CPUs; a pool with slow="numa:1" has every page of its slow tier
on node 1 once its rows are written (Pool.slow_nodes, and /proc/PID/numa_maps: the slow tier's mapping is
bound to node 1 and holds exactly the slow tier's bytes / 4096 pages there); lookups through the native
lookup path return the exact rows, from the fast tier and from node 1; Pool.move_slow_rows moves the
pages of a row range to node 0 (every page: -EBUSY pages are asked again) and back, and the other pages
stay where they were; the C example app passes on a numa:1 pool; page mode (tests/page_mode_scenario.py)
moves an app's hot pages to node 0 and demotes them back to node 1 when the hot set changes, and a
daemon restarted in page mode adopts exactly the pages it finds on node 0 (without moving them) and
demotes them when the hot set changes again.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import vm_numa_guest as g
from vm_support import REPO, last_json, numa_vm, prepared

pytestmark = pytest.mark.vm

GUEST_TIMEOUT = 300.0  # boot, imports (numpy alone takes about 8 s in the guest) and the checks: ~25 s


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    p = prepared()
    r = numa_vm.run_command([sys.executable, str(REPO / "tests" / "vm_numa_guest.py")], prepared=p,
                            timeout=GUEST_TIMEOUT, label="test_vm_numa")
    assert r.returncode == 0, f"the guest script failed (exit {r.returncode}): {r.output[-3000:]}"
    return last_json(r.output)


def slow_pages() -> int:
    return sum(g.table_pages(t) for t in range(len(g.TABLES)))


def bound_mappings(rep: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """The pool's mappings whose memory policy binds them to the slow node: its slow tier."""
    return [m for m in rep["stages"][stage]["numa_maps"] if m["policy"] == f"bind:{g.SLOW_NODE}"]


def expected_nodes(table: int, moved: range | None) -> list[int]:
    """The node of each row's page when the pages in ``moved`` (of table MOVE[0]) are on the fast node."""
    rows, _ = g.TABLES[table]
    rb = g.row_bytes(table)
    out = []
    for r in range(rows):
        on_fast = moved is not None and table == g.MOVE[0] and r * rb // g.PAGE in moved
        out.append(g.FAST_NODE if on_fast else g.SLOW_NODE)
    return out


def test_node1_has_memory_and_no_cpus(report: dict[str, Any]) -> None:
    nodes = report["nodes"]
    assert sorted(nodes) == ["0", "1"], nodes
    assert nodes["0"]["cpulist"] == "0-1"
    assert nodes["1"]["cpulist"] == "", f"node 1 should have no CPUs: {nodes['1']}"
    assert 900_000 < nodes["1"]["mem_kb"] <= 1 << 20, nodes["1"]
    assert nodes["0"]["distance"] == ["10", str(numa_vm.NODE_DISTANCE)]


def test_slow_tier_pages_on_node1(report: dict[str, Any]) -> None:
    assert report["table_bytes"] == [rows * dim * 4 for rows, dim in g.TABLES]
    created = report["stages"]["created"]["rows"]
    for t in range(len(g.TABLES)):
        # create takes the pool's memory: every slow-tier page is on node 1 from the start, and stays
        assert created[str(t)] == expected_nodes(t, None), sorted(set(created[str(t)]))
        assert report["stages"]["written"]["rows"][str(t)] == expected_nodes(t, None)


def test_numa_maps_agrees(report: dict[str, Any]) -> None:
    # 3000 rows of 96 bytes (70.3 pages: rows straddle pages) and 500 of 256: 71 + 32 pages
    assert slow_pages() == 103
    # Each handle that maps the pool (the app's; a daemon handle while it is open) has its mapping split
    # where the slow tier starts (the madvise for huge pages stops there), so one mapping of the slow
    # tier each, and shared memory's policy is the file's: every one shows the binding.
    created = bound_mappings(report, "created")  # (create took every page, on node 1)
    assert {str(g.SLOW_NODE): slow_pages()} in [m["pages"] for m in created], created
    assert all(set(m["pages"]) <= {str(g.SLOW_NODE)} for m in created), created
    written = bound_mappings(report, "written")
    assert written, report["stages"]["written"]["numa_maps"]
    # the app's handle wrote every row: all its slow-tier pages mapped, on node 1; nothing on another node
    assert {str(g.SLOW_NODE): slow_pages()} in [m["pages"] for m in written], written
    assert all(set(m["pages"]) <= {str(g.SLOW_NODE)} for m in written), written


def test_lookups_return_the_rows(report: dict[str, Any]) -> None:
    for stage in ("written", "moved_to_fast", "moved_back"):
        for t, res in report["stages"][stage]["lookups"].items():
            assert res["rc"] == 0, (stage, t, res)
            assert res["wrong"] == 0, (stage, t, res)
            # both paths were taken: rows from the fast tier and rows from the slow tier
            assert res["hits"] > 0 and res["on_demand"] > 0, (stage, t, res)


def test_move_rows_to_node0_and_back(report: dict[str, Any]) -> None:
    table, first, count = g.MOVE
    moved = g.row_pages(table, first, count)
    assert len(moved) == 13  # rows 1000..1499 of 96 bytes: pages 23..35
    assert report["moved_to_fast"] == len(moved)
    stage = report["stages"]["moved_to_fast"]
    for t in range(len(g.TABLES)):
        assert stage["rows"][str(t)] == expected_nodes(t, moved), f"table {t}"
    # bytes per node: the moved pages on node 0, the rest of the slow tier still on node 1
    (m,) = bound_mappings(report, "moved_to_fast")
    assert m["pages"] == {str(g.FAST_NODE): len(moved), str(g.SLOW_NODE): slow_pages() - len(moved)}
    assert report["moved_back"] == len(moved)
    back = report["stages"]["moved_back"]
    for t in range(len(g.TABLES)):
        assert back["rows"][str(t)] == expected_nodes(t, None), f"table {t}"
    (m,) = bound_mappings(report, "moved_back")
    assert m["pages"] == {str(g.SLOW_NODE): slow_pages()}


def test_c_example_app_on_node1(report: dict[str, Any]) -> None:
    ex = report["c_example"]
    assert ex["rc"] == 0, ex
    assert "slow=numa:1" in ex["out"] and "wrong=0" in ex["out"] and "ring_ok=1" in ex["out"], ex


def _page_mode(report: dict[str, Any]) -> dict[str, Any]:
    pm = report["page_mode"]
    assert pm["rc"] == 0 and pm["json"] is not None, pm["err"]
    return pm["json"]


def test_page_mode_moves_hot_pages_between_nodes(report: dict[str, Any]) -> None:
    # tests/page_mode_scenario.py with its defaults: hot sets A then B of 32 pages each, a budget of 32
    out = _page_mode(report)
    hot, total = out["hot_pages"], out["total_pages"]
    assert out["budget_pages"] == hot and out["move_all"] is True, out
    one, two, three, four = out["phases"]
    assert [p["set"] for p in out["phases"]] == ["a", "b", "b", "c"]
    fast, slow = str(g.FAST_NODE), str(g.SLOW_NODE)
    # phase 1: A promoted to node 0, B and C untouched on node 1; phase 2: B promoted, A demoted back
    assert (one["hot_a"], one["hot_b"], one["hot_c"]) == ({fast: hot}, {slow: hot}, {slow: hot}), one
    assert (two["hot_a"], two["hot_b"], two["hot_c"]) == ({slow: hot}, {fast: hot}, {slow: hot}), two
    assert one["promoted"] == out["hot"]["a"] and two["promoted"] == out["hot"]["b"]
    for ph in out["phases"]:
        assert ph["pool"] == {fast: hot, slow: total - hot}, ph["pool"]  # never more than the budget
        assert ph["wrong_rows"] == 0 and ph["failed"] == {}, ph
        assert ph["resident"] == ph["promoted"], ph  # the driver's mirror is what page mode holds
    assert two["counters"]["demotions"] == hot and two["counters"]["promotions"] == 2 * hot, two["counters"]
    assert three["wrong_rows"] == four["wrong_rows"] == 0


def test_page_mode_restarted_daemon_adopts_the_promoted_pages(report: dict[str, Any]) -> None:
    # after phase 2 (B on node 0) the daemon stops (driver and pool handle closed) and a new one starts
    out = _page_mode(report)
    hot, total = out["hot_pages"], out["total_pages"]
    fast, slow = str(g.FAST_NODE), str(g.SLOW_NODE)
    rs = out["restart"]
    _, _, three, four = out["phases"]
    # it adopts exactly B: B's pages counted as promoted and resident in the driver, none other, none moved
    assert rs["promoted"] == rs["resident"] == out["hot"]["b"], rs
    assert rs["promoted_pages"] == hot
    assert (rs["promoted_a"], rs["promoted_b"], rs["promoted_c"]) == (0, hot, 0)
    assert rs["driver"] == {"steps": 0, "adopted": hot, "adopt_evicted": 0}, rs["driver"]
    assert (rs["hot_a"], rs["hot_b"], rs["hot_c"]) == ({slow: hot}, {fast: hot}, {slow: hot}), rs
    assert rs["pool"] == {fast: hot, slow: total - hot}, rs["pool"]
    assert rs["counters"]["move_calls"] == rs["counters"]["pages_moved"] == 0, rs["counters"]
    # phase 3: the app reads B again: all of it already there, the new daemon moves nothing
    assert three["set"] == "b" and three["driver"]["steps"] == three["app_steps"], three["driver"]
    assert three["promoted"] == three["resident"] == out["hot"]["b"]
    assert (three["hot_b"], three["pool"]) == ({fast: hot}, {fast: hot, slow: total - hot}), three
    assert three["counters"]["move_calls"] == three["counters"]["pages_moved"] == 0, three["counters"]
    # phase 4: the hot set changes to C: the adopted B is demoted to node 1 and C promoted, as usual
    assert four["promoted"] == four["resident"] == out["hot"]["c"]
    assert (four["hot_a"], four["hot_b"], four["hot_c"]) == ({slow: hot}, {slow: hot}, {fast: hot}), four
    c = four["counters"]
    assert (c["promotions"], c["demotions"], c["pages_moved"]) == (hot, hot, 2 * hot), c
    assert c["pages_failed"] == 0 and four["failed"] == {}, c
