"""Page mode (docs/ARCHITECTURE.md, "Page mode"): the daemon's policies moving whole pages of a NUMA slow
tier.

On this kind of host node 0 is the only NUMA node, so a move to node 0 changes no placement; what is
tested for real here: the move_pages calls and their per-page status, the bounded -EBUSY retries and
the errno accounting (through an LD_PRELOAD shim that overrides statuses and logs every call,
native/tests/fake_move_pages.c: recmg_move_slow_pages from C, recmg_move_slow_rows from Python), the
fallback without CAP_SYS_NICE (setpriv), the DRAM budget, the MB/s cap in step mode, the demotion of
cold pages, every registered policy on pages, the row records turned into page records, the config
errors, and the stats in recmgctl and the Prometheus text, with real pools, a real daemon process and
real apps. Moves to a second node: tests/page_mode_scenario.py, run by the VM test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ports import free_port as _free_port
from test_daemon_plugin import TESTS, daemon_env, stop_daemon, wait_socket

import recmgd.pool as pool_mod
from recmgd import policy as policy_mod
from recmgd.daemon import config
from recmgd.daemon.config import PagesConfig
from recmgd.daemon.control import request
from recmgd.daemon.loop import FillBudget
from recmgd.daemon.pages import PageDriver, PagePool
from recmgd.daemon.service import Daemon
from recmgd.daemon.tracker import page_records
from recmgd.errors import ConfigError, PoolError
from recmgd.keys import REC_BATCH_END, REC_HINT, REC_LOOKUP, REC_OWNER, REC_TYPE_SHIFT

REPO = TESTS.parent
NATIVE = REPO / "native"
PAGE = 4096
ROWS_PER_PAGE = 16  # (rows, 64) float32 tables: 256-byte rows


def new_name() -> str:
    return f"recmg-pg-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app_pool() -> Iterator[pool_mod.Pool]:
    """An app's pool: table 0 (4096 rows x 64 floats: 256 pages), table 1 (1000 x 100: 400-byte rows,
    98 pages, some rows across a page boundary), on a NUMA slow tier (node 0); row r holds r."""
    pool = pool_mod.Pool.create(new_name(), tables=[(4096, 64), (1000, 100)], slots=32, slow="numa:0",
                                ring_records=1 << 14, threads=1)
    for t, (rows, dim) in enumerate([(4096, 64), (1000, 100)]):
        ids = np.arange(rows)
        pool.write_rows(t, ids, np.repeat(ids.astype(np.float32)[:, None], dim, axis=1))
    yield pool
    pool.destroy()


def page_driver(name: str, budget_pages: int, mb_per_s: float = 0.0, policy: str = "lru",
                **opts: object) -> tuple[PageDriver, PagePool]:
    daemon = pool_mod.Pool.attach(name, role="daemon")
    cfg = PagesConfig(fast_node=0, budget_mb=budget_pages * PAGE / 1e6, mb_per_s=mb_per_s)
    budget = FillBudget(0, mb_per_s, step_mode=True, step_seconds=0.01)
    pages = PagePool(daemon, cfg, budget, node_query_interval=0.0)
    pol = opts.pop("instance", None) or policy_mod.create(policy, **opts)
    return PageDriver(pages, pol, policy, budget=budget, step_mode=True), pages


def read_pages(app: pool_mod.Pool, pages: np.ndarray, table: int = 0) -> None:
    """One app batch reading the first row of each page of table 0; checks the values read."""
    rows = np.asarray(pages, dtype=np.int64) * ROWS_PER_PAGE
    out = app.embedding_bag(table, rows, np.arange(len(rows)))
    assert (out.numpy()[:, 0] == rows).all()
    app.end_batch()


# -- the native calls ---------------------------------------------------------------------------------


def test_page_counts_queries_and_moves(app_pool: pool_mod.Pool, tmp_path: Path) -> None:
    assert app_pool.slow_pages(0) == 256 and app_pool.slow_pages(1) == 98
    assert (app_pool.slow_page_nodes(1, np.arange(98)) == 0).all()
    res = app_pool.move_slow_pages(0, np.arange(0, 200, 3), 0)
    assert res.requested == 67 and res.moved == 67 and res.calls == 1 and res.busy_retries == 0
    assert res.move_all and (res.status == 0).all()
    with pytest.raises(pool_mod.RowIndexError, match="page 256 out of range for table 0"):
        app_pool.move_slow_pages(0, [0, 256], 0)
    with pytest.raises(pool_mod.RowIndexError, match="page -1 out of range"):
        app_pool.slow_page_nodes(0, [-1])
    with pytest.raises(PoolError, match="NUMA node 999 does not exist"):
        app_pool.move_slow_pages(0, [0], 999)
    ssd = pool_mod.Pool.create(new_name(), tables=[(10, 4)], slots=1, slow=f"ssd:{tmp_path / 'e.bin'}")
    try:
        with pytest.raises(PoolError, match="ssd slow tier"):
            ssd.slow_pages(0)
        with pytest.raises(PoolError, match="ssd slow tier"):
            ssd.move_slow_pages(0, [0], 0)
    finally:
        ssd.destroy()


def _no_sys_nice() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run without CAP_SYS_NICE")
    return ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--"]


def test_without_cap_sys_nice_move_all_falls_back_or_fails_strictly() -> None:
    code = (
        "import uuid, numpy as np\n"
        "from recmgd.pool import Pool\n"
        "p = Pool.create('recmg-pg-' + uuid.uuid4().hex[:8], tables=[(4096, 64)], slots=1, slow='numa:0')\n"
        "try:\n"
        "    r = p.move_slow_pages(0, np.arange(8), 0)\n"
        "    print(r.move_all, r.calls, r.moved)\n"
        "    try:\n"
        "        p.move_slow_pages(0, np.arange(8), 0, strict=True)\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
        "finally:\n"
        "    p.destroy()\n"
    )
    r = subprocess.run([*_no_sys_nice(), sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=daemon_env())
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == "False 2 8"  # EPERM with MPOL_MF_MOVE_ALL, then MPOL_MF_MOVE
    assert second.startswith("PoolError move_pages of 8 pages of table 0 to node 0 (MPOL_MF_MOVE_ALL needs "
                             "CAP_SYS_NICE): Operation not permitted")


@pytest.fixture(scope="module")
def native_bins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """native/tests/page_moves.c (linked with librecmg.a) and the fake_move_pages.c shim, built."""
    r = subprocess.run(["make", "-s", "-C", str(NATIVE)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp_path_factory.mktemp("pages-native")
    cc = os.environ.get("CC", "cc")
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O1"]
    prog, shim = out / "page_moves", out / "fake_move_pages.so"
    for cmd in ([cc, *flags, f"-I{NATIVE / 'include'}", "-pthread", "-o", str(prog),
                 str(NATIVE / "tests" / "page_moves.c"), str(NATIVE / "build" / "librecmg.a"),
                 "-luring", "-lm", "-pthread"],
                [cc, *flags, "-shared", "-fPIC", "-o", str(shim), str(NATIVE / "tests" / "fake_move_pages.c"),
                 "-ldl"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    return prog, shim


@pytest.mark.parametrize("retries,fake,expect", [
    # 64 pages asked for; the shim's statuses: see native/tests/fake_move_pages.c
    (3, {}, "calls=1 requested=64 moved=64 busy_retries=0 move_all=1 busy=0 other=0"),
    # odd positions -EBUSY (and the call returns 0) in calls of more than 32 pages: the retry of the
    # 32 busy pages succeeds
    (3, {"RECMG_FAKE_BUSY_ABOVE": "32"}, "calls=2 requested=64 moved=64 busy_retries=32 move_all=1 busy=0 "
                                         "other=0"),
    # always busy at odd positions: 32, 16, 8 asked again, 4 left -EBUSY after the 3 retries
    (3, {"RECMG_FAKE_BUSY_ABOVE": "0"}, "calls=4 requested=64 moved=60 busy_retries=56 move_all=1 busy=4 "
                                        "other=0"),
    (0, {"RECMG_FAKE_BUSY_ABOVE": "0"}, "calls=1 requested=64 moved=32 busy_retries=0 move_all=1 busy=32 "
                                        "other=0"),
    # -ENOMEM (target node full) on every third page: not retried
    (3, {"RECMG_FAKE_ERRNO": "12:3"}, "calls=1 requested=64 moved=43 busy_retries=0 move_all=1 busy=0 "
                                      "other=21"),
])
def test_c_api_status_and_busy_retries(native_bins: tuple[Path, Path], tmp_path: Path, retries: int,
                                       fake: dict[str, str], expect: str) -> None:
    prog, shim = native_bins
    env = dict(os.environ, **fake)
    if fake:
        env["LD_PRELOAD"] = str(shim)
    r = subprocess.run([str(prog), new_name(), str(retries), str(tmp_path / "ssd.bin")], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [expect, "ok"]


# Pool.move_slow_rows (recmg_move_slow_rows) in a process of its own, so that the shim is preloaded:
# one table of 16384 rows x 64 floats (256-byte rows: 1024 pages, all written, so all present); argv[1]
# is a JSON list of (first, count) row ranges; prints the pages each move reports on node 0
_MOVE_ROWS = (
    "import json, sys, uuid\n"
    "import numpy as np\n"
    "from recmgd.pool import Pool\n"
    "p = Pool.create('recmg-pg-' + uuid.uuid4().hex[:8], tables=[(16384, 64)], slots=1, slow='numa:0')\n"
    "try:\n"
    "    p.write_rows(0, np.arange(16384), np.ones((16384, 64), dtype=np.float32))\n"
    "    print(json.dumps([p.move_slow_rows(0, f, c, 0) for f, c in json.loads(sys.argv[1])]))\n"
    "finally:\n"
    "    p.destroy()\n"
)


@pytest.mark.parametrize("fake,ranges,moved,calls", [
    # no shim: one call per range, every page moved
    ({}, [(0, 16384), (5, 100)], [1024, 7], [[1024, 0], [7, 0]]),
    # odd positions -EBUSY in calls of more than 32 pages, each call returning 0: the busy half is asked
    # again (512, 256, ... 32 pages) until a call of 32 moves them all
    ({"RECMG_FAKE_BUSY_ABOVE": "32"}, [(0, 16384)], [1024],
     [[1024, 0], [512, 0], [256, 0], [128, 0], [64, 0], [32, 0]]),
    # always busy at odd positions: 8 retries (MOVE_BUSY_RETRIES) halve the busy pages down to 2, which
    # are reported not moved; rows 5..104 (pages 0..6): 7, 3, 1 pages asked, the last call moves all
    ({"RECMG_FAKE_BUSY_ABOVE": "0"}, [(0, 16384), (5, 100)], [1022, 7],
     [[1024 >> k, 0] for k in range(9)] + [[7, 0], [3, 0], [1, 0]]),
    # -ENOMEM (target node full) on every third page, the call returning 341: never retried
    ({"RECMG_FAKE_ERRNO": "12:3"}, [(0, 16384)], [683], [[1024, 341]]),
])
def test_move_slow_rows_retries_busy_pages(native_bins: tuple[Path, Path], tmp_path: Path,
                                           fake: dict[str, str], ranges: list[tuple[int, int]],
                                           moved: list[int], calls: list[list[int]]) -> None:
    _, shim = native_bins
    log = tmp_path / "calls.txt"
    env = daemon_env({**fake, "LD_PRELOAD": str(shim), "RECMG_FAKE_CALLS": str(log)})
    r = subprocess.run([sys.executable, "-c", _MOVE_ROWS, json.dumps(ranges)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == moved
    # every move_pages call the shim saw: pages asked for, and what the call returned
    assert [[int(x) for x in line.split()] for line in log.read_text().splitlines()] == calls


# -- the adapter: keys, records, budget, cap, demotion ------------------------------------------------------


def test_row_records_become_page_records(app_pool: pool_mod.Pool) -> None:
    drv, pages = page_driver(app_pool.name, budget_pages=8)
    try:
        app_pool.embedding_bag(0, np.array([0, 15, 16, 4095]), np.array([0]))
        # 400-byte rows: row 10 is bytes 4000..4399 (pages 0 and 1), row 40 16000..16399 (pages 3 and 4)
        app_pool.embedding_bag(1, np.array([10, 40, 999]), np.array([0]))
        app_pool.hint(1, np.array([0]))
        app_pool.end_batch()
        recs = pages.drain_ring(app_pool.ring_index, 1 << 14)
        types = (recs >> REC_TYPE_SHIFT).astype(int).tolist()
        keys = (recs & np.uint64((1 << 62) - 1)).astype(np.int64)
        t1 = 1 << 40
        assert keys.tolist() == [0, 0, 1, 255, t1 + 0, t1 + 1, t1 + 3, t1 + 4, t1 + 97, t1 + 0, 0]
        assert types == [0] * 9 + [REC_HINT, REC_BATCH_END]
        # rows outside the tables become keys outside them (the driver counts them as bad records)
        k1, k2 = pages.page_keys(np.array([4096, (2 << 40) | 1, t1 + 999], dtype=np.int64))
        assert k1.tolist() == [2 << 40, 2 << 40, t1 + 97] and k2.tolist() == k1.tolist()
    finally:
        drv.close()
        pages.close()


def _touched_pages(row: int, row_bytes: int) -> list[int]:
    """Brute force: the page of every byte of a row (each table's region starts on a page boundary)."""
    return np.unique(np.arange(row * row_bytes, (row + 1) * row_bytes, dtype=np.int64) // PAGE).tolist()


def _reference_page_records(recs: np.ndarray, row_bytes: list[int]) -> list[int]:
    """Brute force of page_records over tables of these row sizes: a record per page each row touches,
    in order; batch ends and changes of owner (a pid, no row) unchanged."""
    out = []
    for rec in recs.tolist():
        typ, key = rec >> REC_TYPE_SHIFT, rec & ((1 << REC_TYPE_SHIFT) - 1)
        if typ in (REC_BATCH_END, REC_OWNER):
            out.append(rec)
            continue
        t, r = key >> 40, key & ((1 << 40) - 1)
        out += [(typ << REC_TYPE_SHIFT) | (t << 40) | pg for pg in _touched_pages(r, row_bytes[t])]
    return out


# row sizes: within a page (and across one), 2 pages aligned, 3 aligned, 3 or 4, 17 or 18, 64 aligned
SPAN_ROW_BYTES = [400, 8192, 12288, 12000, 66000, 65536 * 4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_page_records_give_every_page_a_row_touches(seed: int) -> None:
    """tracker.page_records against the brute force, rows spanning 1, 2, 3 and many pages, aligned or
    not, lookups and hints among batch ends and changes of owner (the old rewrite gave a row's first and
    last page only; a change of owner's pid is no row)."""
    rbs = np.array(SPAN_ROW_BYTES, dtype=np.int64)

    def first_last(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, r = keys >> 40, keys & ((1 << 40) - 1)
        return (t << 40) | (r * rbs[t]) // PAGE, (t << 40) | ((r + 1) * rbs[t] - 1) // PAGE

    rng = np.random.default_rng(seed)
    n = 500
    t = rng.integers(0, len(rbs), n)
    keys = (t << 40) | rng.integers(0, 50, n)
    types = rng.choice([REC_LOOKUP, REC_HINT, REC_BATCH_END, REC_OWNER], n, p=[0.65, 0.2, 0.1, 0.05])
    keys[types == REC_BATCH_END] = 0
    keys[types == REC_OWNER] = rng.integers(1, 1 << 22, int((types == REC_OWNER).sum()))  # pids
    recs = (types.astype(np.uint64) << np.uint64(REC_TYPE_SHIFT)) | keys.astype(np.uint64)
    got = page_records(recs, first_last)
    assert got.dtype == np.uint64
    assert got.tolist() == _reference_page_records(recs, SPAN_ROW_BYTES)
    # rows within one or two pages only (the common case's path), and none at all
    small = recs[np.isin(t, [0, 1]) | (types == REC_BATCH_END) | (types == REC_OWNER)]
    assert page_records(small, first_last).tolist() == _reference_page_records(small, SPAN_ROW_BYTES)
    assert len(page_records(np.zeros(0, dtype=np.uint64), first_last)) == 0


def test_rows_of_many_pages_become_every_page_they_touch() -> None:
    """PagePool.page_keys and drain_ring on a real pool whose rows span 1 to 64 pages: every page of a
    row is a record (a brute force over the row's bytes says which), and a policy promotes them all."""
    dims = [b // 4 for b in SPAN_ROW_BYTES]  # float32
    rows = [50, 6, 6, 6, 6, 4]
    app = pool_mod.Pool.create(new_name(), tables=list(zip(rows, dims, strict=True)), slots=1,
                               slow="numa:0", ring_records=1 << 14, threads=1)
    drv = pages = None
    try:
        drv, pages = page_driver(app.name, budget_pages=512)
        for t, rb in enumerate(SPAN_ROW_BYTES):
            assert app.slow_pages(t) == -(-rows[t] * rb // PAGE)
            r = np.arange(rows[t], dtype=np.int64)
            k1, k2 = pages.page_keys((t << 40) | r)
            assert (k1 >> 40).tolist() == (k2 >> 40).tolist() == [t] * rows[t]
            ref = [_touched_pages(int(x), rb) for x in r]
            assert ((k1 & 0xFFFFFFFFFF).tolist(), (k2 & 0xFFFFFFFFFF).tolist()) == \
                ([p[0] for p in ref], [p[-1] for p in ref])
        lookups = [(0, [0, 10, 49]), (1, [0, 5]), (2, [1]), (3, [0, 1, 5]), (4, [1, 2]), (5, [0, 3])]
        for t, ids in lookups:
            app.embedding_bag(t, np.array(ids), np.array([0]))
        app.hint(3, np.array([2]))
        app.end_batch()
        raw = []
        for t, ids in lookups:
            raw += [(REC_LOOKUP << REC_TYPE_SHIFT) | (t << 40) | i for i in ids]
        raw += [(REC_HINT << REC_TYPE_SHIFT) | (3 << 40) | 2, REC_BATCH_END << REC_TYPE_SHIFT]
        recs = pages.drain_ring(app.ring_index, 1 << 14)
        want = _reference_page_records(np.array(raw, dtype=np.uint64), SPAN_ROW_BYTES)
        assert recs.tolist() == want
        # pages per row: 1, 2, 1 | 2, 2 | 3 | 3, 4, 4 | 17, 17 | 64, 64 | the hint (12000-byte row 2) 4
        assert len(want) == 4 + 4 + 3 + 11 + 34 + 128 + 4 + 1
        # the auditor's case: a 12 KiB row read alone has its middle page promoted too
        app.embedding_bag(2, np.array([0]), np.array([0]))
        app.end_batch()
        drv.tick()
        assert sorted(pages.resident_keys().tolist()) == [(2 << 40) | 0, (2 << 40) | 1, (2 << 40) | 2]
    finally:
        if drv is not None and pages is not None:
            drv.close()
            pages.close()
        app.destroy()


def test_a_recording_in_page_mode_holds_rows_from_the_next_batch(app_pool: pool_mod.Pool,
                                                                 tmp_path: Path) -> None:
    """A recording of a pool in page mode (its tap before the rows become pages) started while the app's
    batch is under way: the trace holds the app's rows, from its next batch on."""
    from recmgd.daemon.record import PoolStream
    from recmgd.trace import open_trace

    drv, pages = page_driver(app_pool.name, budget_pages=16)
    try:
        app_pool.embedding_bag(0, np.array([0, 16]), np.array([0]))  # a batch under way, drained
        drv.tick()
        assert drv.mid_batch_rings() == {app_pool.ring_index: 2}  # (its rows' two pages)
        stream = PoolStream(drv)
        out = tmp_path / "pages.rtrace"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
        stream.command({"action": "start", "path": str(out)}, lambda: fd)
        app_pool.embedding_bag(0, np.array([32]), np.array([0]))
        app_pool.end_batch()
        app_pool.embedding_bag(1, np.array([5, 999]), np.array([0]))
        app_pool.end_batch()
        drv.tick()
        stream.command({"action": "stop"}, lambda: None)
        assert stream.recorder is not None and stream.recorder.wait()
        assert stream.recorder.state == "done"
        stream.close("test")
    finally:
        drv.close()
        pages.close()
    tr = open_trace(out)
    assert np.asarray(tr.keys).tolist() == [(1 << 40) | 5, (1 << 40) | 999]
    assert np.asarray(tr.sample_offsets).tolist() == [0, 2]


def test_budget_is_never_exceeded_and_row_slots_stay_empty(app_pool: pool_mod.Pool) -> None:
    drv, pages = page_driver(app_pool.name, budget_pages=16)
    rng = np.random.default_rng(1)
    try:
        for _ in range(30):
            read_pages(app_pool, rng.choice(256, 24, replace=False))
            drv.tick()
            assert pages.n_promoted <= 16 and drv.resident_count() <= 16
            mirror = drv.keys_of(np.flatnonzero(drv.flags))
            assert sorted(pages.resident_keys().tolist()) == sorted(mirror.tolist())
        st = drv.stats()
        pg = st["pages"]
        assert st["mode"] == "pages" and st["steps"] == 30 and st["n_slots"] == 16
        assert pg["promoted_bytes"] <= pg["budget_bytes"] == 16 * PAGE
        assert pg["promotions"] > 16 and pg["demotions"] == pg["promotions"] - pg["promoted_pages"]
        assert pg["pages_failed"] == 0 and pg["failed"] == {}
        assert pg["node_bytes"] == {"0": pg["total_pages"] * PAGE} and pg["node_bytes_exact"]
        # the app's row slots: never filled in page mode
        assert len(app_pool.resident_keys()) == 0
        with pytest.raises(PoolError, match="exceed the DRAM budget of 16 pages"):
            pages.fill_keys(np.arange(100, 117, dtype=np.int64))
    finally:
        drv.close()
        pages.close()


def test_mb_per_s_cap_is_a_fixed_grant_per_step_both_ways(app_pool: pool_mod.Pool) -> None:
    # 0.8192 MB/s over steps of 0.01 s: 8192 bytes, 2 pages a step, promotions and demotions together
    drv, pages = page_driver(app_pool.name, budget_pages=6, mb_per_s=0.8192)
    grant = 2 * PAGE
    moved, balance = [], []
    try:
        hot_a, hot_b = np.arange(6), np.arange(100, 106)
        for step in range(16):
            read_pages(app_pool, hot_a if step < 6 else hot_b)
            drv.tick()
            pg = pages.counters
            moved.append((pg["promotions"], pg["demotions"]))
            balance.append(drv.budget.bytes)
        cum = np.array(moved)
        per_step = np.diff(np.vstack([[0, 0], cum]), axis=0)
        assert per_step[:3, 0].tolist() == [2, 2, 2]  # A comes in at the cap
        assert (per_step[:, 0] <= 2).all()  # promotions: never more than a step's grant
        steps = np.arange(1, 17)
        assert (cum[:, 0] * PAGE <= steps * grant).all()
        # both ways: what moved is what the grants paid for, less the balance (a debt when the policy's
        # evictions of one step demoted more than a grant: never refused, paid from the next grants)
        assert (cum.sum(axis=1) * PAGE <= steps * grant - np.array(balance)).all()
        assert per_step[6].tolist() == [0, 6] and min(balance) == grant - 6 * PAGE
        assert per_step[7:9].sum() == 0  # the debt is paid before B comes in
        assert set(pages.resident_keys().tolist()) == set(hot_b.tolist())  # B in, A out, in the end
        assert moved[-1] == (12, 6)
        assert drv.stats()["admit_rejected"] > 0  # what the cap dropped was rejected, not lost silently
    finally:
        drv.close()
        pages.close()


def test_cold_pages_are_demoted(app_pool: pool_mod.Pool) -> None:
    drv, pages = page_driver(app_pool.name, budget_pages=8)
    try:
        a, b = np.arange(0, 16, 2), np.arange(64, 80, 2)
        for _ in range(3):
            read_pages(app_pool, a)
            drv.tick()
        assert sorted(pages.resident_keys().tolist()) == a.tolist()
        for _ in range(3):
            read_pages(app_pool, b)
            drv.tick()
        assert sorted(pages.resident_keys().tolist()) == b.tolist()
        c = pages.counters
        assert c["promotions"] == 16 and c["demotions"] == 8 and c["pages_requested"] == 24
        assert c["move_calls"] == 3  # one call per step that moved (batches of 1024)
        assert (app_pool.slow_page_nodes(0, np.arange(256)) == 0).all()
        assert pages.demote_all() == 8 and pages.n_promoted == 0 and pages.counters["demotions"] == 16
    finally:
        drv.close()
        pages.close()


def test_row_slots_left_by_row_mode_are_evicted(app_pool: pool_mod.Pool) -> None:
    daemon = pool_mod.Pool.attach(app_pool.name, role="daemon")
    daemon.fill(0, np.arange(10))
    assert len(app_pool.resident_keys()) == 10
    daemon.close()
    drv, pages = page_driver(app_pool.name, budget_pages=4)
    try:
        assert len(app_pool.resident_keys()) == 0 and app_pool.free_slots() == 32
        read_pages(app_pool, np.arange(3))  # still the right rows, from the slow tier
    finally:
        drv.close()
        pages.close()


class _TwoNodes:
    """A daemon's handle of a pool whose slow tier is on node 1 of a two-node machine, simulated: where
    each page is lives in ``nodes`` (shared by the handles of one test, as the kernel's placement is);
    everything else is the real pool."""

    slow = "numa:1"

    def __init__(self, pool: pool_mod.Pool, nodes: list[np.ndarray]) -> None:
        self.pool = pool
        self.nodes = nodes
        self.moves: list[tuple[int, list[int], int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)

    def slow_page_nodes(self, table: int, pages: np.ndarray) -> np.ndarray:
        return self.nodes[table][np.asarray(pages, dtype=np.int64)].astype(np.int32)

    def move_slow_pages(self, table: int, pages: np.ndarray, node: int, *, move_all: bool = True,
                        busy_retries: int = 3) -> pool_mod.PageMove:
        pages = np.asarray(pages, dtype=np.int64)
        self.moves.append((table, pages.tolist(), node))
        self.nodes[table][pages] = node
        return pool_mod.PageMove(status=np.full(len(pages), node, dtype=np.int32), moved=len(pages), calls=1,
                                 requested=len(pages), busy_retries=0, move_all=move_all)


def test_a_restarted_daemon_adopts_the_pages_on_the_fast_node(app_pool: pool_mod.Pool) -> None:
    # the real placement of a second node: tests/page_mode_scenario.py in the VM (tests/test_vm_numa.py)
    nodes = [np.ones(256, dtype=np.int64), np.ones(98, dtype=np.int64)]
    cfg = PagesConfig(fast_node=0, budget_mb=8 * PAGE / 1e6, mb_per_s=0.0)

    def start(budget: PagesConfig = cfg) -> tuple[PageDriver, PagePool, _TwoNodes]:
        handle = _TwoNodes(pool_mod.Pool.attach(app_pool.name, role="daemon"), nodes)
        pages = PagePool(handle, budget, FillBudget(0, 0.0, step_mode=True), node_query_interval=0.0)
        return PageDriver(pages, policy_mod.create("lru"), "lru", step_mode=True), pages, handle

    a, b = np.arange(0, 16, 2), np.arange(64, 80, 2)
    drv, pages, handle = start()
    assert pages.n_promoted == 0 and drv.pc["adopted"] == 0
    for _ in range(2):
        read_pages(app_pool, a)
        drv.tick()
    assert sorted(np.flatnonzero(nodes[0] == 0).tolist()) == a.tolist()
    drv.close()
    pages.close()  # a daemon's exit: no page moves
    # the new daemon: exactly A promoted and resident, without a move
    drv, pages, handle = start()
    assert sorted(pages.resident_keys().tolist()) == a.tolist() and pages.n_promoted == len(a)
    assert sorted(drv.keys_of(np.flatnonzero(drv.flags)).tolist()) == a.tolist()
    assert drv.pc["adopted"] == len(a) and drv.pc["adopt_evicted"] == 0
    for _ in range(2):
        read_pages(app_pool, a)  # A stays hot: all hits, nothing moves
        drv.tick()
    assert handle.moves == [] and pages.counters["pages_moved"] == 0 and drv.stats()["hits"] == 2 * len(a)
    for _ in range(2):
        read_pages(app_pool, b)  # the hot set changes: A demoted, B promoted
        drv.tick()
    assert sorted(np.flatnonzero(nodes[0] == 0).tolist()) == b.tolist()
    assert pages.counters["demotions"] == len(a) and pages.counters["promotions"] == len(b)
    drv.close()
    pages.close()
    # a smaller budget on the next start: the policy keeps what the budget holds, the rest is demoted
    drv, pages, handle = start(PagesConfig(fast_node=0, budget_mb=5 * PAGE / 1e6, mb_per_s=0.0))
    try:
        assert pages.n_promoted == 5 and drv.pc["adopted"] == 5 and drv.pc["adopt_evicted"] == 3
        assert int((nodes[0] == 0).sum()) == 5 and pages.counters["demotions"] == 3
        assert set(np.flatnonzero(nodes[0] == 0).tolist()) <= set(b.tolist())
    finally:
        drv.close()
        pages.close()


def _page_steps(n: int, seed: int) -> list[np.ndarray]:
    """Synthetic page steps: a skewed hot set over 256 pages of table 0."""
    rng = np.random.default_rng(seed)
    return [np.unique(rng.zipf(1.3, 24) % 256).astype(np.int64) for _ in range(n)]


def _drive(app: pool_mod.Pool, drv: PageDriver, pages: PagePool, steps: list[np.ndarray]) -> None:
    budget = pages.n_slots
    for s in steps:
        read_pages(app, s)
        drv.tick()
        assert pages.n_promoted <= budget
    c = pages.counters
    assert c["promotions"] > 0 and c["promotions"] - c["demotions"] == pages.n_promoted
    assert sorted(pages.resident_keys().tolist()) == sorted(drv.keys_of(np.flatnonzero(drv.flags)).tolist())
    assert drv.stats()["hits"] > 0


@pytest.mark.parametrize("policy", ["lru", "lfu", "s3fifo", "stms", "domino", "bingo"])
def test_every_classical_policy_runs_on_pages(app_pool: pool_mod.Pool, policy: str) -> None:
    drv, pages = page_driver(app_pool.name, budget_pages=20, policy=policy, prefetch_budget=2)
    try:
        _drive(app_pool, drv, pages, _page_steps(40, 2))
    finally:
        drv.close()
        pages.close()


def test_a_learned_policy_trained_on_page_keys_runs_on_pages(app_pool: pool_mod.Pool) -> None:
    pol = policy_mod.create("recmg", prefetch_budget=2, seed=0, epochs=1)
    pol.fit(_page_steps(120, 3), 20)
    drv, pages = page_driver(app_pool.name, budget_pages=20, policy="recmg", instance=pol)
    try:
        _drive(app_pool, drv, pages, _page_steps(40, 4))
    finally:
        drv.close()
        pages.close()


def test_fill_budget_debt_is_paid_from_later_grants() -> None:
    b = FillBudget(0, 0.8192, step_mode=True, step_seconds=0.01)  # 8192 bytes a step
    row = np.array([PAGE], dtype=np.int64)
    b.refill()
    b.charge(3 * PAGE)  # demotions of 3 pages against a grant of 2
    assert b.take(row) == 0
    b.refill()  # -4096 + 8192
    assert b.take(np.repeat(row, 2)) == 1
    b.refill()
    assert b.take(np.repeat(row, 3)) == 2  # a leftover never grows the grant
    rows = FillBudget(5, 0.0, step_mode=True, step_seconds=1.0)  # row mode: unchanged, 5 a step
    for _ in range(3):
        rows.refill()
        assert rows.take(np.ones(9, dtype=np.int64)) == 5


# -- configuration --------------------------------------------------------------------------------------


def test_config_pages_keys_and_errors() -> None:
    cfg = config.parse('[policy]\nmode = "pages"\n[pages]\nfast_node = 0\nbudget_mb = 8.0\nmb_per_s = 50\n'
                       'batch = 512\nbusy_retries = 1\nnode_sample_pages = 0\n'
                       '[pool.a.pages]\nbudget_mb = 1.0\n[pool.b]\nmode = "rows"\n', "t.toml")
    assert cfg.policy.mode == "pages" and cfg.policy.pages.budget_pages == 8_000_000 // PAGE
    a, b = cfg.policy_for("a"), cfg.policy_for("b")
    assert a.mode == "pages" and a.pages.budget_mb == 1.0 and a.pages.mb_per_s == 50 and a.pages.batch == 512
    assert b.mode == "rows" and b.pages == cfg.pages
    assert config.parse("").policy.mode == "rows" and config.parse("").pages == PagesConfig()
    known = "batch, budget_mb, busy_retries, fast_node, mb_per_s, node_sample_pages"
    bad = {
        '[pages]\nfast_nod = 1\n': f"pages.fast_nod: unknown key (known: {known})",
        '[pages]\nfast_node = 999\n': "pages.fast_node: impossible value 999 (no NUMA node 999 on this "
                                      "machine)",
        '[pages]\nfast_node = -1\n': "pages.fast_node: impossible value -1 (must be between 0 and 1023)",
        '[pages]\nbudget_mb = 0.001\n': "pages.budget_mb: impossible value 0.001 (less than one page of 4096 "
                                        "bytes)",
        '[pages]\nmb_per_s = -1\n': "pages.mb_per_s: impossible value -1.0 (must be >= 0.0 and <= "
                                    "1000000000.0)",
        '[pages]\nbatch = 0\n': "pages.batch: impossible value 0 (must be between 1 and 1048576)",
        '[policy]\nmode = "page"\n': "policy.mode: impossible value 'page' (one of rows, pages)",
        '[policy.pages]\nbudget_mb = 1.0\n': "policy.pages: unknown key (known: hint_pin_batches, "
                                             "hint_slots, mode, model_dir, name, options, "
                                             "retrain_every, retrain_threads, retrain_window)",
        '[pool.x.pages]\nspeed = 1\n': f"pool.x.pages.speed: unknown key (known: {known})",
    }
    for text, msg in bad.items():
        with pytest.raises(ConfigError) as ei:
            config.parse(text, "t.toml")
        assert str(ei.value) == "t.toml: " + msg


def test_every_pages_key_is_documented_in_the_example() -> None:
    example = (REPO / "systemd" / "recmgd.toml.example").read_text()
    cfg = config.parse(example, "example")
    assert cfg.pages == PagesConfig() and cfg.policy.mode == "rows"
    assert "[pages]" in example and 'mode = "rows"' in example
    for key in ("fast_node", "budget_mb", "mb_per_s", "batch", "busy_retries", "node_sample_pages"):
        assert f"\n{key} = " in example


# -- the daemon -------------------------------------------------------------------------------------------


def _service(tmp_path: Path, body: str) -> tuple[Daemon, Path]:
    cfg_path = tmp_path / "d.toml"
    cfg_path.write_text(body)
    d = Daemon(config.load(str(cfg_path)), str(cfg_path))
    d.setup()
    return d, cfg_path


def test_page_mode_needs_a_numa_slow_tier(tmp_path: Path) -> None:
    ssd = pool_mod.Pool.create(new_name(), tables=[(100, 4)], slots=4, slow=f"ssd:{tmp_path / 'e.bin'}")
    dram = pool_mod.Pool.create(new_name(), tables=[(100, 4)], slots=4, slow="dram")
    sock = tmp_path / "c.sock"
    d, _ = _service(tmp_path, f'pools = ["{ssd.name}", "{dram.name}"]\nstep_mode = true\n'
                              f'[control]\nsocket = "{sock}"\n[policy]\nmode = "pages"\n')
    try:
        assert d.pools == {}
        waiting = {p["name"]: p["error"] for p in d.handle("pools", {})}
        assert waiting[ssd.name] == (f"pool {ssd.name}: page mode needs a NUMA slow tier (numa:N); this "
                                     "pool's slow tier is ssd")
        assert waiting[dram.name].endswith("this pool's slow tier is dram")
    finally:
        d.shutdown()
        ssd.destroy()
        dram.destroy()


def test_reload_switches_modes(tmp_path: Path, app_pool: pool_mod.Pool) -> None:
    dram = pool_mod.Pool.create(new_name(), tables=[(100, 4)], slots=4, slow="dram")
    sock = tmp_path / "c.sock"
    base = f'pools = ["{app_pool.name}", "{dram.name}"]\nstep_mode = true\n[control]\nsocket = "{sock}"\n'
    d, cfg = _service(tmp_path, base)
    try:
        assert d.pools[app_pool.name].driver.mode == "rows"
        cfg.write_text(base + f'[pool.{dram.name}]\nmode = "pages"\n')
        err = d.reload()
        assert err is not None and f"pool.{dram.name}.mode: pool {dram.name}: page mode needs a NUMA" in err
        cfg.write_text(base + f'[pool.{app_pool.name}]\nmode = "pages"\n[pool.{app_pool.name}.pages]\n'
                              'budget_mb = 0.016384\nmb_per_s = 0\n')
        assert d.reload() is None
        drv = d.pools[app_pool.name].driver
        assert isinstance(drv, PageDriver) and drv.n_slots == 4
        assert d.pools[dram.name].driver.mode == "rows"
        read_pages(app_pool, np.arange(4))
        d.tick()
        assert drv.pages.n_promoted == 4
        cfg.write_text(base)  # back to rows: the promoted pages are demoted
        assert d.reload() is None
        assert d.pools[app_pool.name].driver.mode == "rows"
        assert drv.pages.n_promoted == 0 and drv.pages.counters["demotions"] == 4
    finally:
        d.shutdown()
        dram.destroy()


def test_learned_policies_need_a_checkpoint_of_the_pools_granularity(tmp_path: Path,
                                                                       app_pool: pool_mod.Pool) -> None:
    from test_models import small_cfg, zipf_steps

    from recmgd.models import checkpoint
    from recmgd.models.granularity import Granularity
    from recmgd.models.train import train_models

    trained = train_models(zipf_steps(n_steps=60).as_list(), 20, small_cfg())
    rows = checkpoint.save(trained, tmp_path / "rows")
    pages = checkpoint.save(trained, tmp_path / "pages", granularity=Granularity.pages(4096, 256))
    name = app_pool.name
    sock = tmp_path / "c.sock"
    base = f'pools = ["{name}"]\nstep_mode = true\n[control]\nsocket = "{sock}"\n'

    def conf(mode: str, model: Path) -> str:
        return base + f'[policy]\nname = "recmg"\nmodel_dir = "{model}"\n[pool.{name}]\nmode = "{mode}"\n'

    in_pages = (f"pool {name} (page mode): {rows}: checkpoint trained on rows, but policy 'recmg' runs on "
                "pages of 4096 bytes; train one with `recmg train TRACE --out DIR --page-bytes 4096`")
    in_rows = (f"pool {name} (row mode): {pages}: checkpoint trained on pages of 4096 bytes with rows of "
               "256 bytes, but policy 'recmg' runs on rows; train one with `recmg train TRACE --out DIR`")
    # at attach: page mode with a row checkpoint is refused (the pool waits, saying why)
    d, cfg = _service(tmp_path, conf("pages", rows))
    try:
        assert d.pools == {}
        (waiting,) = d.handle("pools", {})
        assert waiting["error"] == in_pages
        cfg.write_text(conf("pages", pages))  # a page checkpoint: attached at the reload
        assert d.reload() is None
        drv = d.pools[name].driver
        assert isinstance(drv, PageDriver) and drv.policy_name == "recmg"
        # at reload: row mode with the page checkpoint (the pool attached again), and page mode with a row
        # checkpoint (the policy replaced) are refused, and the running configuration is kept
        cfg.write_text(conf("rows", pages))
        assert d.reload() == in_rows
        cfg.write_text(conf("pages", rows))
        assert d.reload() == in_pages
        assert d.pools[name].driver is drv and d.last_reload_error == in_pages
        # recmgctl policy: the running mode's granularity too
        switched = d.handle("policy", {"pool": name, "name": "recmg-cache"})
        assert switched == {"pool": name, "policy": "recmg-cache"}
        cfg.write_text(conf("rows", rows))
        assert d.reload() is None and d.pools[name].driver.mode == "rows"
    finally:
        d.shutdown()
    # at attach: row mode with a page checkpoint
    d, _ = _service(tmp_path, conf("rows", pages))
    try:
        assert d.pools == {} and d.handle("pools", {})[0]["error"] == in_rows
    finally:
        d.shutdown()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics text")


def _run_daemon(tmp_path: Path, app: pool_mod.Pool, prefix: list[str], env_extra: dict[str, str],
                batches: list[np.ndarray], budget_pages: int = 8) -> tuple[dict, str, str]:
    """A recmgd process in page mode over ``app`` (step mode); the app reads ``batches``; returns the
    pool's stats (JSON), `recmgctl stats` text, and the metrics text."""
    sock = tmp_path / "ctl.sock"
    port = _free_port()
    cfg = tmp_path / "recmgd.toml"
    cfg.write_text(f'pools = ["{app.name}"]\nstep_mode = true\ninterval = 0.005\nstatus_interval = 0.05\n'
                   f'[control]\nsocket = "{sock}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
                   f'[policy]\nmode = "pages"\n[pages]\nbudget_mb = {budget_pages * PAGE / 1e6}\n'
                   'mb_per_s = 0\nbusy_retries = 1\n')
    env = daemon_env(env_extra)
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg),
                             "--foreground"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_socket(sock, proc)
        deadline = time.monotonic() + 60
        while not request(str(sock), "stats")["pools"]:
            assert time.monotonic() < deadline, "the daemon did not attach the pool"
            time.sleep(0.02)
        for b in batches:
            read_pages(app, b)
        while request(str(sock), "stats")["pools"][app.name]["steps"] < len(batches):
            assert time.monotonic() < deadline, "the daemon did not see every batch"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/metrics"
        while True:  # the metrics snapshot is published every 0.5 s or so: wait for the last step's
            metrics = urllib.request.urlopen(url, timeout=10).read().decode()
            if f'recmgd_steps_total{{pool="{app.name}"}} {float(len(batches))}' in metrics:
                break
            assert time.monotonic() < deadline, "the metrics never showed every step"
            time.sleep(0.05)
        stats = json.loads(subprocess.run(
            [sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), "stats", "--json"],
            capture_output=True, text=True, check=True, env=daemon_env()).stdout)
        text = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), "stats"],
                              capture_output=True, text=True, check=True, env=daemon_env()).stdout
    finally:
        rc, err = stop_daemon(proc)
    assert rc == 0, err
    return stats["pools"][app.name], text, metrics


def test_daemon_process_reports_page_mode(tmp_path: Path, app_pool: pool_mod.Pool) -> None:
    batches = [np.arange(0, 16, 2)] * 3 + [np.arange(64, 80, 2)] * 3
    p, text, metrics = _run_daemon(tmp_path, app_pool, [], {}, batches)
    pg = p["pages"]
    assert p["mode"] == "pages" and p["n_slots"] == 8 and p["resident"] == 8
    assert pg["promotions"] == 16 and pg["demotions"] == 8 and pg["promoted_pages"] == 8
    assert pg["pages_requested"] == 24 and pg["pages_moved"] == 24 and pg["failed"] == {}
    assert pg["move_all"] is True and pg["move_all_fallbacks"] == 0
    assert pg["node_bytes"] == {"0": (256 + 98) * PAGE}
    name = app_pool.name
    assert f"pool {name}: policy lru, page mode, 8/8 pages promoted" in text
    assert "page mode: fast node 0, slow node 0; promoted 8/8 pages" in text
    assert "move_pages: 3 calls, 24 pages requested, 24 moved, 0 failed, 0 busy retries; 16 promotions, " \
           "8 demotions" in text
    assert "bytes per node (exact): node0 1.4 MB" in text
    assert _metric(metrics, f'recmgd_page_promotions_total{{pool="{name}"}}') == 16
    assert _metric(metrics, f'recmgd_page_demotions_total{{pool="{name}"}}') == 8
    assert _metric(metrics, f'recmgd_promoted_pages{{pool="{name}"}}') == 8
    assert _metric(metrics, f'recmgd_node_bytes{{node="0",pool="{name}"}}') == (256 + 98) * PAGE
    assert len(app_pool.resident_keys()) == 0


def test_daemon_process_counts_failures_by_errno(tmp_path: Path, app_pool: pool_mod.Pool,
                                                 native_bins: tuple[Path, Path]) -> None:
    # through the shim: -ENOMEM on every third page of a call, -EBUSY at odd positions of calls of more
    # than 2 pages (busy_retries = 1: one more call for them)
    _, shim = native_bins
    batches = [np.arange(0, 12)]
    p, text, metrics = _run_daemon(tmp_path, app_pool, [], {"LD_PRELOAD": str(shim),
                                                            "RECMG_FAKE_ERRNO": "12:3",
                                                            "RECMG_FAKE_BUSY_ABOVE": "2"}, batches)
    pg = p["pages"]
    # call 1 (8 pages, the budget): positions 1, 3, 5, 7 busy, 2 ENOMEM (5 is busy first), 0, 4, 6 moved;
    # call 2 (the 4 busy ones): 1 and 3 busy again (left so), 2 ENOMEM, 0 moved
    assert pg["move_calls"] == 2 and pg["busy_retries"] == 4 and pg["pages_requested"] == 8
    assert pg["failed"] == {"EBUSY": 2, "ENOMEM": 2} and pg["pages_failed"] == 4 == pg["promote_failed"]
    assert pg["promotions"] == 4 and pg["promoted_pages"] == 8  # failed pages keep their budget share
    assert "8 pages requested, 4 moved, 4 failed (EBUSY 2, ENOMEM 2)" in text
    name = app_pool.name
    assert _metric(metrics, f'recmgd_page_move_failures_total{{errno="ENOMEM",pool="{name}"}}') == 2
    assert _metric(metrics, f'recmgd_page_moves_failed_total{{pool="{name}"}}') == 4


def test_daemon_process_without_cap_sys_nice(tmp_path: Path, app_pool: pool_mod.Pool) -> None:
    prefix = _no_sys_nice()
    p, text, _ = _run_daemon(tmp_path, app_pool, prefix, {}, [np.arange(4), np.arange(4, 8)])
    pg = p["pages"]
    # the first move: EPERM with MPOL_MF_MOVE_ALL, then MPOL_MF_MOVE; the second: MPOL_MF_MOVE at once
    assert pg["move_all"] is False and pg["move_all_fallbacks"] == 1 and pg["move_calls"] == 3
    assert pg["promotions"] == 8  # already on node 0: MPOL_MF_MOVE reports them there
    assert "no CAP_SYS_NICE (MPOL_MF_MOVE)" in text


# -- the scenario the VM test runs ------------------------------------------------------------------------


def test_scenario_script_on_one_node() -> None:
    r = subprocess.run([sys.executable, str(TESTS / "page_mode_scenario.py"), "--slow-node", "0",
                        "--fast-node", "0", "--steps", "4", "--hot-pages", "16", "--budget-pages", "16"],
                       capture_output=True, text=True, timeout=180, env=daemon_env())
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    one, two, three, four = out["phases"]
    assert out["budget_pages"] == 16 and out["total_pages"] == 512 and out["move_all"] is True
    assert (one["promoted_a"], one["promoted_b"]) == (16, 0)
    assert (two["promoted_a"], two["promoted_b"]) == (0, 16)
    assert two["counters"]["promotions"] == 32 and two["counters"]["demotions"] == 16
    assert one["wrong_rows"] == two["wrong_rows"] == 0 and two["failed"] == {}
    assert one["pool"] == two["pool"] == {"0": 512} and two["hot_a"] == {"0": 16}
    # the restarted daemon: with the fast node the slow node, nothing is taken as promoted; it promotes
    # B again (phase 3: 2 batches), then C, demoting B (phase 4)
    rs = out["restart"]
    assert rs["promoted"] == rs["resident"] == [] and rs["driver"]["adopted"] == 0
    assert three["promoted"] == three["resident"] == out["hot"]["b"] and three["app_steps"] == 2
    assert four["promoted"] == four["resident"] == out["hot"]["c"]
    assert (four["counters"]["promotions"], four["counters"]["demotions"]) == (32, 16)
    assert three["wrong_rows"] == four["wrong_rows"] == 0
