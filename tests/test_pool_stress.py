"""Concurrency: reader processes look up while a writer process fills and evicts at full speed; values
encode (table, row, column), so any torn or wrong row is caught. Writers are also killed with
SIGKILL, including in the middle of writing a slot (fault injection), and readers stay correct."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from cpu_kernels import expected_kernel
from pool_layout import HEADER

from recmgd.keys import make_keys
from recmgd.pool import Pool

ROWS, DIM, TABLES, SLOTS = 4096, 16, 2, 2048
READERS = 3
TOTAL_READS = 10_000_000
BATCH = 32768


def _name() -> str:
    return f"rt_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def _value(t: int, rows: np.ndarray, dim: int = DIM, dtype: str = "float32") -> np.ndarray:
    """Row values, exact in the dtype and different for any two rows. float32: t * 2^19 + row * 128 +
    column (dim <= 128); float16 (integers to 2048 only): row % 2048, row // 2048 + 4 t, then
    (7 row + column) % 2048."""
    if dtype == "float16":
        r = rows[:, None].astype(np.int64)
        v = (7 * r + np.arange(dim)[None, :]) % 2048
        v[:, 0] = r[:, 0] % 2048
        v[:, 1] = r[:, 0] // 2048 + 4 * t
        return v.astype(np.float32)
    return (t * (1 << 19) + rows[:, None] * 128 + np.arange(dim)[None, :]).astype(np.float32)


def _make_pool(slow: str = "dram", dim: int = DIM, dtype: str = "float32") -> Pool:
    p = Pool.create(_name(), tables=[(ROWS, dim)] * TABLES, slots=SLOTS, slow=slow, rings=8, dtype=dtype)
    for t in range(TABLES):
        p.write_rows(t, np.arange(ROWS), _value(t, np.arange(ROWS), dim, dtype))
    return p


def _writer(name: str, seed: int, counter, stop) -> None:
    """Fill and evict random keys as fast as possible, keeping the fast tier nearly full."""
    pool = Pool.attach(name, role="daemon")
    rng = np.random.default_rng(seed)
    all_keys = np.concatenate([make_keys(t, np.arange(ROWS)) for t in range(TABLES)])
    resident = np.zeros(len(all_keys), dtype=bool)
    resident[np.searchsorted(all_keys, np.sort(pool.resident_keys()))] = True
    while not stop.value:
        res = np.flatnonzero(resident)
        if len(res) > SLOTS // 2:
            out = rng.choice(res, size=256, replace=False)
            pool.evict_keys(all_keys[out])
            resident[out] = False
        free = pool.free_slots()
        cand = np.flatnonzero(~resident)
        new = rng.choice(cand, size=min(free, 512), replace=False)
        pool.fill_keys(all_keys[new])
        resident[new] = True
        counter.value += 1  # no lock: a writer killed while holding it would block the next one
    pool.close()


def _reader(name: str, seed: int, reads: int, dim: int, dtype: str, conn) -> None:
    pool = Pool.attach(name)
    rng = np.random.default_rng(seed)
    offsets = np.arange(BATCH, dtype=np.int64)
    done = wrong = 0
    while done < reads:
        t = int(rng.integers(0, TABLES))
        ids = rng.integers(0, ROWS, size=BATCH).astype(np.int64)
        out = pool.embedding_bag(t, ids, offsets).numpy()
        wrong += int((out != _value(t, ids, dim, dtype)).any(axis=1).sum())
        done += BATCH
        pool.drain_ring(pool.ring_index)  # keep the ring from only dropping
    conn.send((done, wrong, pool.stats()["process"]["hits"], pool.lookup_kernel(0)))
    conn.close()
    pool.close()


def _odd_groups(name: str) -> int:
    """Groups of 64 index entries left with an odd seqlock version (native/src/internal.h, layout 5)."""
    raw = Path(f"/dev/shm/{name}").read_bytes()
    (entries,) = struct.unpack_from(HEADER["index_entries"][1], raw, HEADER["index_entries"][0])
    (vers_off,) = struct.unpack_from(HEADER["vers_off"][1], raw, HEADER["vers_off"][0])
    versions = np.frombuffer(raw, dtype=np.uint32, count=(int(entries) + 63) // 64, offset=int(vers_off))
    return int((versions & 1).sum())


@pytest.mark.slow
# dim 16: the AVX2 bag kernels; 64: the AVX-512F ones where the CPU has them (recmg_lookup_kernel),
# for float32 and float16 rows; 24: the generic fused and safe loops; ssd: the misses read in one I/O
# batch between the two passes, and a hit that lost its race read alone from the file (float32 rows
# through the AVX2 kernel, float16 through the AVX-512F one where the CPU has it)
@pytest.mark.parametrize(
    "dim,slow,dtype",
    [(DIM, "dram", "float32"), (64, "dram", "float32"), (64, "dram", "float16"), (24, "dram", "float32"),
     (DIM, "ssd", "float32"), (64, "ssd", "float16")],
    ids=["16", "64", "64-f16", "24", "16-ssd", "64-f16-ssd"],
)
def test_readers_and_writer_with_sigkill(dim: int, slow: str, dtype: str, tmp_path, monkeypatch) -> None:
    # an SSD tier read through the page cache in every process (rows under 128 bytes are anyway): with
    # O_DIRECT the writers' fills and the readers' misses would wait for the disk, and the test time it
    monkeypatch.setenv("RECMG_NO_DIRECT", "1")
    ctx = mp.get_context("fork")
    pool = _make_pool(f"ssd:{tmp_path / 'e.bin'}" if slow == "ssd" else "dram", dim=dim, dtype=dtype)
    readers: list = []
    writers: list = []
    try:
        counter = ctx.Value("q", 0, lock=False)  # one writer at a time increments it
        # a lock-free flag: an Event takes a lock in is_set(), which a writer killed inside it would hold
        stop = ctx.Value("b", 0, lock=False)
        pipes = []
        for i in range(READERS):
            a, b = ctx.Pipe()
            quota = TOTAL_READS // READERS + BATCH
            pr = ctx.Process(target=_reader, args=(pool.name, 100 + i, quota, dim, dtype, b))
            pr.start()
            pipes.append(a)
            readers.append(pr)
        # two writers are killed with SIGKILL at full speed; the third runs until the readers finish
        for k in range(3):
            w = ctx.Process(target=_writer, args=(pool.name, k, counter, stop))
            w.start()
            writers.append(w)
            if k < 2:
                before = counter.value
                deadline = time.monotonic() + 30
                while counter.value < before + 20 and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.05)
                os.kill(w.pid, signal.SIGKILL)
                w.join(30)
        results = []
        for p in pipes:  # every reader is done
            assert p.poll(300), "a reader did not finish"
            results.append(p.recv())
        stop.value = 1
        for pr in readers:
            pr.join(60)
        writers[-1].join(60)
        reads = sum(r[0] for r in results)
        wrong = sum(r[1] for r in results)
        hits = sum(r[2] for r in results)
        assert reads >= TOTAL_READS
        assert {r[3] for r in results} == {expected_kernel(dim, dtype)}
        assert wrong == 0
        # the hit path ran. The share is timing-dependent (how far the writer gets while a batch is read):
        # on the development VM 22-23% of the reads find their row resident over a dram tier, also beside
        # busy loops; over an SSD tier 13-17% at dim 16 and 9-11% at dim 64 (each read and fill moves more
        # bytes, so the writer evicts more rows while a batch is read), and one CI run read 9.99% at dim
        # 16. The bound is a floor well under those, which a hit path that stopped hitting still fails.
        least = reads // (10 if slow == "dram" else 25)
        assert hits > least, f"only {hits} of {reads} reads were fast-tier hits"
        assert counter.value > 50
        # the pool is consistent after all that: no slot left mid-write, every resident row correct
        assert _odd_groups(pool.name) == 0
        d = Pool.attach(pool.name, role="daemon")
        keys = d.resident_keys()
        assert d.free_slots() == SLOTS - len(keys)
        for t in range(TABLES):
            rows = keys[(keys >> 40) == t] & ((1 << 40) - 1)
            before = pool.stats()["process"]["hits"]
            out = pool.embedding_bag(t, rows, np.arange(len(rows))).numpy()
            assert (out == _value(t, rows, dim, dtype)).all()
            assert pool.stats()["process"]["hits"] - before == len(rows)
        d.close()
    finally:
        stop.value = 1
        for proc in readers + writers:
            if proc.is_alive():
                proc.kill()
        pool.destroy()


def _fill_and_die(name: str, keys: np.ndarray, fault: str) -> None:
    os.environ[fault] = "3"
    pool = Pool.attach(name, role="daemon")
    pool.fill_keys(keys)  # dies with SIGKILL at the 4th slot, holding the writer lock
    os._exit(3)


def _die_in_fill(pool: Pool, keys: np.ndarray, fault: str) -> None:
    w = mp.get_context("fork").Process(target=_fill_and_die, args=(pool.name, keys, fault))
    w.start()
    w.join(60)
    assert w.exitcode == -signal.SIGKILL


# Where a fill dies (the 4th of 10 keys of table 1, rows 0-63 of which share one version), and what it
# leaves: the versions left odd, the hits of the 10 rows before a writer recovers, the rows kept.
#   RECMG_FAULT_KILL_IN_FILL: the 4th slot half written, no entry naming it, no version odd (a slot is
#     written outside any entry's window); the 3 rows before it are published and read as hits.
#   RECMG_FAULT_KILL_IN_PUBLISH: the 4th entry stored (its row whole), its group's version odd, so all
#     of the group's rows are read from the slow tier until a writer recovers; recovery keeps 4 rows.
DEATHS = [("RECMG_FAULT_KILL_IN_FILL", 0, 3, 3), ("RECMG_FAULT_KILL_IN_PUBLISH", 1, 0, 4)]


@pytest.mark.parametrize("fault,odd,hits_before,kept", DEATHS, ids=["mid-slot-write", "in-publish-window"])
@pytest.mark.parametrize("slow", ["dram", "ssd"])
def test_writer_killed_mid_fill(
    slow: str, fault: str, odd: int, hits_before: int, kept: int, tmp_path
) -> None:
    pool = _make_pool(f"ssd:{tmp_path / 'e.bin'}" if slow == "ssd" else "dram")
    try:
        keys = make_keys(1, np.arange(10))
        _die_in_fill(pool, keys, fault)
        assert _odd_groups(pool.name) == odd
        # readers are correct meanwhile: a row no whole entry names comes from the slow tier
        rows = np.arange(10)
        out = pool.embedding_bag(1, rows, np.arange(10)).numpy()
        assert (out == _value(1, rows)).all()
        assert pool.stats()["process"]["hits"] == hits_before
        # a new daemon takes the dead writer's lock over: odd versions closed, the torn slot free
        d = Pool.attach(pool.name, role="daemon")
        assert d.free_slots() == SLOTS - kept
        assert _odd_groups(pool.name) == 0
        assert sorted(d.resident_keys().tolist()) == keys[:kept].tolist()
        assert d.fill_keys(keys) == 10 - kept
        out = pool.embedding_bag(1, rows, np.arange(10)).numpy()
        assert (out == _value(1, rows)).all()
        assert pool.stats()["process"]["hits"] == hits_before + 10
        d.close()
    finally:
        pool.destroy()


def _churn_odd_rows(name: str, stop) -> None:
    """Evict and fill table 0's odd rows back to back: every window of every group, all the time."""
    pool = Pool.attach(name, role="daemon")
    odd = make_keys(0, np.arange(1, ROWS, 2))
    while not stop.value:
        pool.evict_keys(odd)
        pool.fill_keys(odd)
    pool.close()


def test_resident_rows_stay_hits_while_their_group_changes() -> None:
    """A hit whose group's version changed after pass 1 because a writer changed another row's entry is
    resolved again, not sent to the slow tier. Table 0's even rows stay resident while a writer evicts
    and fills the odd rows (the same groups of 64 entries) at full speed. Without the re-resolution
    about half of the reads were hits on the development VM (tools/bench_ab_lookup.py --churn measures
    the share for two builds)."""
    pool = Pool.create(_name(), tables=[(ROWS, DIM)], slots=ROWS, slow="dram", rings=4)
    ctx = mp.get_context("fork")
    stop = ctx.Value("b", 0, lock=False)
    w = None
    try:
        pool.write_rows(0, np.arange(ROWS), _value(0, np.arange(ROWS)))
        pool.fill_keys(make_keys(0, np.arange(ROWS)))
        pool.set_threads(1)
        w = ctx.Process(target=_churn_odd_rows, args=(pool.name, stop))
        w.start()
        rng = np.random.default_rng(7)
        before = pool.stats()["process"]
        n, wrong = 4096, 0
        for _ in range(200):
            ids = rng.integers(0, ROWS // 2, size=n).astype(np.int64) * 2
            out = pool.embedding_bag(0, ids, np.arange(n)).numpy()
            wrong += int((out != _value(0, ids)).any(axis=1).sum())
            pool.drain_ring(pool.ring_index)
        after = pool.stats()["process"]
        assert w.is_alive()  # the writer churned throughout
        hits = after["hits"] - before["hits"]
        reads = after["lookups"] - before["lookups"]
        assert wrong == 0
        assert reads == 200 * n
        assert hits >= 0.95 * reads, f"only {hits} of {reads} reads of resident rows were hits"
    finally:
        stop.value = 1
        if w is not None:
            w.join(30)
        pool.destroy()


def _rewrite_all(name: str, dim: int, tables: int, stop) -> None:
    """write_rows of every row of each table, all 1.0 then all 2.0, back to back until stop is set."""
    p = Pool.attach(name)
    rows = np.arange(ROWS)
    ones, twos = np.ones((ROWS, dim), np.float32), np.full((ROWS, dim), 2.0, np.float32)
    k = 0
    while not stop.is_set():
        for t in range(tables):
            p.write_rows(t, rows, ones if k % 2 == 0 else twos)
        k += 1
    p.close()


def _torn(rows: np.ndarray) -> int:
    return int(np.count_nonzero(rows.min(axis=1) != rows.max(axis=1)))


@pytest.mark.parametrize(
    "slow,resident,tables,threads",
    [("dram", ROWS, 1, 1), ("dram", 0, 1, 1), ("dram", ROWS // 2, 2, 2), ("ssd", ROWS // 2, 1, 1)],
    ids=["dram-resident", "dram-missing", "dram-half-2-threads", "ssd-half"],
)
def test_rows_being_rewritten_are_read_whole(
    slow: str, resident: int, tables: int, threads: int, tmp_path: Path
) -> None:
    """A writer rewrites every row of a table again and again, back to back (write_rows), while a
    reader looks them all up and reads them (read_rows): each row read is all old or all new values,
    never a mix, whether it is read from its copy or from the slow tier, and resident rows stay hits.
    (The slow tier had no version: rows read from it while being written were torn, three of these
    four cases failed. Unpublishing the copies before writing the slow tier sent resident rows there
    too, and most hits were lost.)"""
    dim = 256  # (a row of 1 KiB: a copy that tears shows it)
    tier = "dram" if slow == "dram" else f"ssd:{tmp_path / 'slow.bin'}"
    p = Pool.create(_name(), tables=[(ROWS, dim)] * tables, slots=ROWS, slow=tier, threads=threads)
    try:
        for t in range(tables):
            p.write_rows(t, np.arange(ROWS), np.ones((ROWS, dim), np.float32))
        daemon = Pool.attach(p.name, role="daemon")
        daemon.fill_keys(make_keys(0, np.arange(resident)))
        stop = mp.get_context("spawn").Event()
        w = mp.get_context("spawn").Process(target=_rewrite_all, args=(p.name, dim, tables, stop))
        w.start()
        try:
            ids = np.arange(ROWS)
            before = p.counters()["tables"][0]
            torn = reads = 0
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                if tables == 1:
                    outs = [p.embedding_bag(0, ids, ids).numpy()]
                else:
                    bags = p.embedding_bags(list(range(tables)), [ids] * tables, [ids] * tables)
                    outs = [o.numpy() for o in bags]
                outs.append(p.read_rows(0, ids[::7]))
                torn += sum(_torn(o) for o in outs)
                reads += sum(len(o) for o in outs)
            after = p.counters()["tables"][0]
        finally:
            stop.set()
            w.join(60)
            daemon.close()
        assert w.exitcode == 0
        assert reads > 0 and torn == 0
        if resident == ROWS:
            unique = after["unique"] - before["unique"]
            # (the share a reader finds published depends on how the two processes are scheduled: 0.95 to
            # 0.99 on a quiet 2-core VM, 0.85 to 0.9 at times, one CI run at 0.897 < 0.9; the bug this
            # guards against lost most hits)
            assert unique > 0 and (after["hits"] - before["hits"]) / unique > 0.75
    finally:
        p.destroy()


@pytest.mark.parametrize("resident", [0, ROWS // 2], ids=["missing", "half-resident"])
def test_rows_of_a_writer_stopped_at_random_are_read_whole(resident: int) -> None:
    """The writer of the test above is stopped (SIGSTOP) and continued at random moments, for 1 to 20 ms
    at a time, so that it stops inside rows' windows: readers do not wait for a stopped writer, and read
    the row it stopped in whole (from where write_rows staged it), never half written; after its
    continue they read on, whole. (Readers read the half-written row of a stopped writer.)"""
    dim = 256
    p = Pool.create(_name(), tables=[(ROWS, dim)], slots=ROWS, threads=1)
    try:
        p.write_rows(0, np.arange(ROWS), np.ones((ROWS, dim), np.float32))
        daemon = Pool.attach(p.name, role="daemon")
        daemon.fill_keys(make_keys(0, np.arange(resident)))
        stop = mp.get_context("spawn").Event()
        w = mp.get_context("spawn").Process(target=_rewrite_all, args=(p.name, dim, 1, stop))
        w.start()
        done = threading.Event()
        stops = [0]

        def stopper() -> None:
            rng = np.random.default_rng(7)
            while not done.wait(float(rng.uniform(0.001, 0.01))):
                os.kill(w.pid, signal.SIGSTOP)
                stops[0] += 1
                time.sleep(float(rng.uniform(0.001, 0.02)))
                os.kill(w.pid, signal.SIGCONT)

        try:
            ids = np.arange(ROWS)
            while daemon.writer_holder() == 0:  # (the writer at work)
                time.sleep(0.01)
            t = threading.Thread(target=stopper)
            t.start()
            torn = reads = 0
            deadline = time.monotonic() + 3.0
            try:
                while time.monotonic() < deadline:
                    outs = [p.embedding_bag(0, ids, ids).numpy(), p.read_rows(0, ids[::7])]
                    torn += sum(_torn(o) for o in outs)
                    reads += sum(len(o) for o in outs)
            finally:
                done.set()
                t.join(30)
                os.kill(w.pid, signal.SIGCONT)
        finally:
            stop.set()
            w.join(60)
            daemon.close()
        assert w.exitcode == 0
        assert stops[0] > 20 and reads > 0 and torn == 0, (stops[0], reads, torn)
    finally:
        p.destroy()


def _rewrite_rows(name: str, dim: int, rows: list[int], stop) -> None:
    """write_rows of the given rows of table 0, all 1.0 then all 2.0, back to back until stop is set."""
    p = Pool.attach(name)
    ones, twos = np.ones((len(rows), dim), np.float32), np.full((len(rows), dim), 2.0, np.float32)
    k = 0
    while not stop.is_set():
        p.write_rows(0, np.asarray(rows), ones if k % 2 == 0 else twos)
        k += 1
    p.close()


@pytest.mark.parametrize("slow", ["dram", "ssd"])
def test_readers_of_a_group_rewritten_back_to_back_go_on(slow: str, tmp_path: Path) -> None:
    """A writer rewrites rows 0-31 of a table back to back, so their entry group (rows 0-63) is nearly
    always inside a row's window, while a reader reads row 40 of that group (never written) and row 5
    (written): every read returns, row 40 exact and row 5 whole. (A reader of an SSD tier retried
    without end: its read is longer than the gaps between the windows; now after 8 tries it reads the
    row holding the writer lock.)"""
    dim = 256
    tier = "dram" if slow == "dram" else f"ssd:{tmp_path / 'slow.bin'}"
    p = Pool.create(_name(), tables=[(ROWS, dim)], slots=64, slow=tier)
    try:
        base = np.arange(ROWS * dim, dtype=np.float32).reshape(ROWS, dim)
        p.write_rows(0, np.arange(ROWS), base)
        stop = mp.get_context("spawn").Event()
        w = mp.get_context("spawn").Process(target=_rewrite_rows, args=(p.name, dim, list(range(32)), stop))
        w.start()
        try:
            started = time.monotonic() + 60.0
            while p.read_rows(0, [5]).max() > 2.0:  # (the writer running: row 5 no longer its first value)
                assert time.monotonic() < started, "the writer did not start"
                time.sleep(0.01)
            deadline = time.monotonic() + 20.0  # (liveness, not speed: 50 rounds take under a second)
            for _ in range(50):
                np.testing.assert_array_equal(p.read_rows(0, [40]), base[[40]])
                np.testing.assert_array_equal(p.embedding_bag(0, [41], [0]).numpy(), base[[41]])
                five = np.concatenate([p.read_rows(0, [5]), p.embedding_bag(0, [5], [0]).numpy()])
                assert _torn(five) == 0 and set(np.unique(five)) <= {1.0, 2.0}
                assert time.monotonic() < deadline, "readers of the group did not go on"
            assert w.is_alive()
        finally:
            stop.set()
            w.join(60)
        assert w.exitcode == 0
    finally:
        p.destroy()
