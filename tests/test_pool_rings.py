"""Access rings: records in order, boundaries and hints encoded as docs/ARCHITECTURE.md says, a full
ring drops and counts without blocking, one ring per app process, dead apps' rings."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from recmgd.errors import PoolError
from recmgd.keys import REC_BATCH_END, REC_LOOKUP, REC_OWNER, make_keys, record_keys, record_types
from recmgd.pool import Pool

LOOKUP, BATCH_END, HINT = 0, 1, 2


def _name() -> str:
    return f"rt_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def _decode(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = words.astype(np.uint64)
    return (w >> np.uint64(62)).astype(np.int64), (w & np.uint64((1 << 62) - 1)).astype(np.int64)


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool.create(_name(), tables=[(1000, 4), (1000, 4), (10, 2)], slots=100, ring_records=1024, rings=4)
    try:
        yield p
    finally:
        p.destroy()


def test_records_in_order(pool: Pool) -> None:
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        r = pool.ring_index
        assert r >= 0
        assert daemon.rings()[r].pid == os.getpid()
        a = np.array([5, 7, 5, 999], dtype=np.int64)
        b = np.array([1, 2], dtype=np.int64)
        pool.embedding_bag(1, a, [0, 2])
        pool.end_batch()
        pool.hint(0, [3, 4])
        pool.embedding_bag(0, b, [0])
        pool.end_batch()
        assert daemon.rings()[r].waiting == 10
        types, keys = _decode(daemon.drain_ring(r))
        assert types.tolist() == [LOOKUP] * 4 + [BATCH_END] + [HINT] * 2 + [LOOKUP] * 2 + [BATCH_END]
        assert keys[:4].tolist() == make_keys(1, a).tolist()
        assert keys[5:7].tolist() == make_keys(0, np.array([3, 4])).tolist()
        assert keys[7:9].tolist() == make_keys(0, b).tolist()
        assert daemon.rings()[r].waiting == 0
        assert len(daemon.drain_ring(r)) == 0
        # drain in pieces, across the wrap-around
        for round_ in range(5):
            ids = np.arange(round_ * 300, round_ * 300 + 300) % 1000
            pool.embedding_bag(0, ids, [0])
            got = np.concatenate([daemon.drain_ring(r, 128) for _ in range(3)])
            assert _decode(got)[1].tolist() == make_keys(0, ids).tolist()
    finally:
        daemon.close()


def test_full_ring_drops_and_counts(pool: Pool) -> None:
    r = pool.ring_index
    ids = np.arange(1000, dtype=np.int64)
    t0 = time.perf_counter()
    for _ in range(3):
        pool.embedding_bag(0, ids, [0])  # 3000 records into a 1024-record ring
    pool.end_batch()
    assert time.perf_counter() - t0 < 5
    info = pool.rings()[r]
    assert info.waiting == 1024 and info.drops == 3000 + 1 - 1024 and info.capacity == 1024
    c = pool.counters()
    proc = [x for x in c["processes"] if x["ring"] == r][0]
    assert proc["ring_drops"] == info.drops and proc["lookups"] == 3000
    assert c["tables"][0]["ring_drops"] == 3000 - 1024
    # the oldest records are kept; after a drain the ring takes records again
    _, keys = _decode(pool.drain_ring(r))
    assert keys.tolist() == make_keys(0, ids).tolist() + make_keys(0, ids[:24]).tolist()
    pool.end_batch()
    types, _ = _decode(pool.drain_ring(r))
    assert types.tolist() == [BATCH_END]


def test_counters(pool: Pool) -> None:
    d = Pool.attach(pool.name, role="daemon")
    try:
        d.fill(2, [0, 1, 2])
        pool.reset_counters()
        pool.embedding_bag(2, [0, 1, 5, 5, 6, 0], [0, 3])
        t = pool.counters()["tables"][2]
        assert (t["lookups"], t["unique"], t["hits"], t["on_demand"]) == (6, 4, 3, 2)
        assert t["slow_bytes"] == 2 * 2 * 4
        own = pool.stats()["process"]
        assert (own["lookups"], own["unique"], own["hits"], own["on_demand"]) == (6, 4, 3, 2)
        pool.reset_counters()
        assert pool.counters()["tables"][2]["lookups"] == 0
    finally:
        d.close()


def _child_lookup(name: str, conn) -> None:
    p = Pool.attach(name)
    p.embedding_bag(0, [1, 2, 3], [0])
    conn.send(p.ring_index)
    conn.recv()  # wait until the parent has seen this process alive
    os._exit(0)  # dies without closing: its ring stays owned by a dead pid


def test_ring_per_process_and_dead_apps(pool: Pool) -> None:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_lookup, args=(pool.name, child))
    proc.start()
    assert parent.poll(60)
    idx = parent.recv()
    with pytest.raises(PoolError, match="live process"):
        pool.release_ring(idx)
    parent.send("exit")
    proc.join(60)
    assert idx != pool.ring_index
    # the parent's ring survived the child's exit (a forked child never releases its parent's ring)
    assert pool.rings()[pool.ring_index].pid == os.getpid()
    info = pool.rings()[idx]
    assert info.pid == proc.pid and info.waiting == 3
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        daemon.release_ring(idx)
        assert daemon.rings()[idx].pid == 0
        _, keys = _decode(daemon.drain_ring(idx))
        assert keys.tolist() == make_keys(0, np.array([1, 2, 3])).tolist()
        with pytest.raises(IndexError):
            daemon.drain_ring(99)
    finally:
        daemon.close()


def test_rings_run_out_and_dead_owner_reclaimed() -> None:
    p = Pool.create(_name(), tables=[(10, 2)], slots=2, rings=2)
    try:
        q = Pool.attach(p.name)
        with pytest.raises(PoolError, match="no free access ring"):
            Pool.attach(p.name)
        q.close()
        r = Pool.attach(p.name)  # the closed handle's ring is free again
        r.close()
        d = Pool.attach(p.name, role="daemon")  # a daemon needs no ring
        d.close()
    finally:
        p.destroy()


def _child_uses_parent_handle(pool: Pool, conn) -> None:
    try:
        pool.embedding_bag(0, [1], [0])
        conn.send("no error")
    except PoolError as e:
        conn.send(str(e))
    os._exit(0)


def test_handle_inherited_across_fork_is_refused(pool: Pool) -> None:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_uses_parent_handle, args=(pool, child))
    proc.start()
    assert parent.poll(60)
    assert "inherited across fork" in parent.recv()
    proc.join(60)
    pool.embedding_bag(0, [1], [0])  # the parent's handle is untouched
    assert pool.rings()[pool.ring_index].pid == os.getpid()


def _threaded_pool(ring_records: int) -> Pool:
    """Tables large enough that a multi-table call splits their bags over the lookup threads (threads
    run only over a memory slow tier, as here)."""
    p = Pool.create(_name(), tables=[(5000, 4), (5000, 4), (64, 4)], slots=1000, ring_records=ring_records,
                    rings=2)
    p.set_threads(4)
    return p


def _call(p: Pool, tables: list[int], ids: list[np.ndarray], per_bag: int = 3) -> None:
    p.embedding_bags(tables, ids, [np.arange(0, len(x), per_bag, dtype=np.int64) for x in ids])


def test_multi_table_call_records_in_argument_order_across_threads() -> None:
    """The work items of a multi-table call write their ids' records at their places in one run, on
    whichever thread runs them, and the caller publishes the run: the ring holds every id in argument
    order, bag order within each (a table twice in one call, a split table with join items, a small one)."""
    p = _threaded_pool(1 << 16)
    try:
        rng = np.random.default_rng(3)
        tables = [0, 1, 0, 2]
        ids = [rng.integers(0, 5000, 3000), rng.integers(0, 5000, 2400), rng.integers(0, 5000, 1500),
               rng.integers(0, 64, 300)]
        _call(p, tables, ids)
        _call(p, [1], [ids[1][::-1].copy()])
        p.end_batch()
        types, keys = _decode(p.drain_ring(p.ring_index))
        want = [make_keys(t, x) for t, x in zip(tables, ids, strict=True)] + [make_keys(1, ids[1][::-1])]
        n = sum(len(x) for x in want)
        assert types.tolist() == [LOOKUP] * n + [BATCH_END]
        assert keys[:n].tolist() == np.concatenate(want).tolist()
        assert p.rings()[p.ring_index].drops == 0
    finally:
        p.destroy()


def test_multi_table_call_cut_by_a_full_ring() -> None:
    """A call larger than the ring's room: the records that fit are the first ones in argument order,
    the rest are dropped and counted against their tables, and the ring takes records again after a
    drain."""
    p = _threaded_pool(1024)
    try:
        rng = np.random.default_rng(4)
        ids = [rng.integers(0, 5000, 600) for _ in range(3)]
        _call(p, [0, 1, 0], ids)
        types, keys = _decode(p.drain_ring(p.ring_index))
        assert types.tolist() == [LOOKUP] * 1024
        assert keys.tolist() == make_keys(0, ids[0]).tolist() + make_keys(1, ids[1][:424]).tolist()
        c = p.counters()
        assert c["tables"][0]["ring_drops"] == 600 and c["tables"][1]["ring_drops"] == 176
        assert p.rings()[p.ring_index].drops == 776
        _call(p, [1], [ids[2]])
        _, keys = _decode(p.drain_ring(p.ring_index))
        assert keys.tolist() == make_keys(1, ids[2]).tolist()
    finally:
        p.destroy()


def test_multi_table_call_that_fails_logs_the_arguments_before_the_failure() -> None:
    """An argument with an out-of-range id fails the call: the arguments before it are logged (their
    records published, as they are counted) and the failing one and those after it are not, though
    threads wrote the later arguments' records into the run."""
    p = _threaded_pool(1 << 16)
    try:
        rng = np.random.default_rng(5)
        ids = [rng.integers(0, 5000, 900), rng.integers(0, 5000, 900), rng.integers(0, 5000, 900)]
        bad = ids[1].copy()
        bad[450] = 5000
        with pytest.raises(PoolError, match="out of range"):
            _call(p, [0, 1, 0], [ids[0], bad, ids[2]])
        _, keys = _decode(p.drain_ring(p.ring_index))
        assert keys.tolist() == make_keys(0, ids[0]).tolist()
        c = p.counters()
        assert c["tables"][0]["lookups"] == 900 and c["tables"][1]["lookups"] == 0
        _call(p, [1], [ids[1]])  # the next call's records follow the logged ones, nothing in between
        p.end_batch()
        types, keys = _decode(p.drain_ring(p.ring_index))
        assert types.tolist() == [LOOKUP] * 900 + [BATCH_END]
        assert keys[:900].tolist() == make_keys(1, ids[1]).tolist()
    finally:
        p.destroy()


def _child_logs_and_dies(name: str, rows: list[int], end: bool, conn) -> None:
    p = Pool.attach(name)
    p.embedding_bag(0, rows, [0])
    if end:
        p.end_batch()
    conn.send((p.ring_index, os.getpid()))
    os._exit(0)  # dies without closing: its ring stays owned by a dead pid, its records waiting


def test_ring_taken_over_says_what_the_previous_owner_left() -> None:
    """Every ring taken, an app dies with records undrained, and the next app takes its ring over: the
    ring counts the claim and says how many of its waiting records came before it (the dead app's, the
    first ones a drain takes), so a daemon ends that app's batches there instead of joining them to the
    new owner's first batch; once that app has left too, the count still says the owner changed."""
    p = Pool.create(_name(), tables=[(1000, 4)], slots=100, ring_records=1024, rings=2)  # p holds one
    daemon = Pool.attach(p.name, role="daemon")
    try:
        free = 1 - p.ring_index
        t = daemon.ring_table()
        assert t["claims"][p.ring_index] == 1 and t["before_claim"][p.ring_index] == 0  # claimed fresh
        assert t["claims"][free] == 0 and t["pid"][free] == 0
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_logs_and_dies, args=(p.name, [1, 2, 3], False, child))
        proc.start()
        assert parent.poll(60)
        idx, dead_pid = parent.recv()
        proc.join(60)
        t = daemon.ring_table()[idx]
        assert idx == free and t["waiting"] == 3 and t["claims"] == 1 and t["before_claim"] == 0
        daemon.drain_ring(idx, 1)  # the daemon took one of them before the app died
        q = Pool.attach(p.name)  # no free ring: the dead app's is taken over
        try:
            assert q.ring_index == idx
            q.embedding_bag(0, [7, 8], [0])
            q.end_batch()
            t = daemon.ring_table()[idx]
            assert t["pid"] == os.getpid() and t["claims"] == 2
            # the dead app's 2 left, then q's change of owner and its 3
            assert t["waiting"] == 2 + 1 + 3 and t["before_claim"] == 2
            _, keys = _decode(daemon.drain_ring(idx, 1))
            assert keys.tolist() == make_keys(0, np.array([2])).tolist()
            assert daemon.ring_table()[idx]["before_claim"] == 1  # drained from the front
        finally:
            q.close()  # q leaves too: the ring is free, its count says it changed hands
        t = daemon.ring_table()[idx]
        assert t["pid"] == 0 and t["claims"] == 2 and t["before_claim"] == 1 and t["waiting"] == 5
        daemon.drain_ring(idx, 1)
        assert daemon.ring_table()[idx]["before_claim"] == 0  # only q's own left
        words = daemon.drain_ring(idx)
        assert record_types(words).tolist() == [REC_OWNER, REC_LOOKUP, REC_LOOKUP, REC_BATCH_END]
        assert record_keys(words)[0] == os.getpid()  # the change of owner names q's process
    finally:
        daemon.close()
        p.destroy()


def test_a_new_owner_begins_with_a_change_of_owner() -> None:
    """A ring's first owner logs no change of owner; every later one (after a dead app, after one that
    detached) writes one, its pid the key, before its first record and only once. It waits for room: a
    new owner of a full ring drops its records (counted) until the daemon drains, then its next records
    follow the change of owner."""
    p = Pool.create(_name(), tables=[(1000, 4)], slots=100, ring_records=16, rings=2)  # p holds one
    daemon = Pool.attach(p.name, role="daemon")
    try:
        free = 1 - p.ring_index
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_logs_and_dies, args=(p.name, list(range(16)), False, child))
        proc.start()
        assert parent.poll(60)
        idx, _ = parent.recv()
        proc.join(60)
        assert idx == free and daemon.ring_table()[idx]["waiting"] == 16  # full, no change of owner
        q = Pool.attach(p.name)  # takes the dead app's full ring over
        assert q.ring_index == idx
        q.embedding_bag(0, [20, 21], [0])  # no room: dropped, and the change of owner waits
        assert daemon.ring_table()[idx]["drops"] == 2 and daemon.ring_table()[idx]["waiting"] == 16
        types, keys = _decode(daemon.drain_ring(idx))
        assert types.tolist() == [LOOKUP] * 16 and keys.tolist() == make_keys(0, np.arange(16)).tolist()
        q.embedding_bag(0, [22], [0])
        q.end_batch()
        q.embedding_bag(0, [23], [0])  # (its change of owner is written once)
        words = daemon.drain_ring(idx)
        assert record_types(words).tolist() == [REC_OWNER, REC_LOOKUP, REC_BATCH_END, REC_LOOKUP]
        assert record_keys(words).tolist() == [os.getpid()] + make_keys(0, np.array([22, 0, 23])).tolist()
        q.close()  # leaves cleanly: the ring is free, and the next owner's records start with its change
        r = Pool.attach(p.name)
        try:
            assert r.ring_index == idx
            r.end_batch()
            assert record_types(daemon.drain_ring(idx)).tolist() == [REC_OWNER, REC_BATCH_END]
        finally:
            r.close()
    finally:
        daemon.close()
        p.destroy()


def test_ring_table_is_every_rings_info_in_one_call(pool: Pool) -> None:
    """Pool.ring_table (recmg_get_rings: one native call for all rings) holds what rings() and each ring's
    own description say: this process's ring with its records waiting, the free ones empty."""
    pool.embedding_bag(0, [1, 2, 3], [0])
    pool.end_batch()
    t = pool.ring_table()
    assert len(t) == pool.n_rings == 4
    mine = pool.ring_index
    assert t["pid"][mine] == os.getpid() and t["waiting"][mine] == 4 and (t["capacity"] == 1024).all()
    assert [(r.pid, r.waiting, r.drops, r.capacity) for r in pool.rings()] == \
        list(zip(t["pid"].tolist(), t["waiting"].tolist(), t["drops"].tolist(), t["capacity"].tolist(),
                 strict=True))
    free = [i for i in range(4) if i != mine]
    assert (t["pid"][free] == 0).all() and (t["waiting"][free] == 0).all()


def test_get_rings_fills_from_first_as_many_as_there_are(pool: Pool) -> None:
    """recmg_get_rings from a ring on: as many as the pool has from there (not past its end); a first ring
    past the end is a range error."""
    from recmgd._native import ffi, lib

    out = ffi.new("recmg_ring_state[8]")
    assert lib.recmg_get_rings(pool._handle, 2, out, 8) == 2  # rings 2 and 3 of 4
    assert lib.recmg_get_rings(pool._handle, 4, out, 8) == 0
    assert lib.recmg_get_rings(pool._handle, 0, out, 1) == 1
    assert out[0].pid == (os.getpid() if pool.ring_index == 0 else 0)
    assert lib.recmg_get_rings(pool._handle, 5, out, 8) == lib.RECMG_ERANGE
