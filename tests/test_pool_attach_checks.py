"""Attach checks every header field and table descriptor against the object's real size, and after
attach nothing read from shared memory is used as a size, offset or slot number without a bound:
a pool changed behind a handle's back gives one-line errors or exact rows, never a crash."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pool_layout import HDR_BYTES, HEADER, PID_NS_INO, RING, TABLE, TABLE_BYTES

from recmgd.errors import PoolBusyError, PoolError, PoolVersionError
from recmgd.keys import make_keys
from recmgd.pool import Pool

SHM = Path("/dev/shm")
TABLES = [(100, 8), (50, 4)]


def _name() -> str:
    return f"ac_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def _rows(t: int) -> np.ndarray:
    rows, dim = TABLES[t]
    return (np.arange(rows * dim, dtype=np.float32).reshape(rows, dim) + 1000 * t)


@pytest.fixture(params=["dram", "ssd"])
def pool(request, tmp_path) -> Iterator[Pool]:
    slow = "dram" if request.param == "dram" else f"ssd:{tmp_path / 'ac.bin'}"
    p = Pool.create(_name(), tables=TABLES, slots=40, slow=slow)
    for t in range(len(TABLES)):
        p.write_rows(t, np.arange(TABLES[t][0]), _rows(t))
    try:
        yield p
    finally:
        p.destroy()


def _get(name: str, off: int, fmt: str) -> int:
    with open(SHM / name, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _put(name: str, off: int, fmt: str, value: int) -> None:
    with open(SHM / name, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def _table_off(t: int, field: str) -> tuple[int, str]:
    off, fmt = TABLE[field]
    return HDR_BYTES + t * TABLE_BYTES + off, fmt


def _exact(p: Pool, t: int, ids: list[int]) -> None:
    out = p.embedding_bag(t, ids, list(range(len(ids))))
    np.testing.assert_array_equal(out, _rows(t)[ids])


def test_layout_offsets_match_the_library(pool: Pool) -> None:
    assert _get(pool.name, *HEADER["n_tables"]) == 2
    assert _get(pool.name, *HEADER["n_slots"]) == 40
    assert _get(pool.name, *HEADER["tables_off"]) == HDR_BYTES
    assert _get(pool.name, *_table_off(1, "rows")) == 50
    assert _get(pool.name, *_table_off(1, "dim")) == 4
    assert _get(pool.name, *_table_off(1, "index_first")) == 100
    rings_off = _get(pool.name, *HEADER["rings_off"])
    assert _get(pool.name, rings_off + RING["owner"][0], "<i") == os.getpid()
    assert _get(pool.name, rings_off + RING["owner_start"][0], "<Q") == _start_time()


def _start_time() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_a_ring_of_this_pid_is_released_only_when_its_owner_is_gone(pool: Pool) -> None:
    """A daemon handle in the app's own process cannot release the app's ring (its pid is the app's: it
    once could, and two producers then shared the ring); a ring that names this pid with another start
    time is a dead owner's whose pid this process now has, and is released."""
    rings_off = _get(pool.name, *HEADER["rings_off"])
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        with pytest.raises(PoolBusyError, match="held by another handle of process"):
            daemon.release_ring(0)
        assert daemon.rings()[0].pid == os.getpid()
        _put(pool.name, rings_off + RING["owner_start"][0], "<Q", _start_time() + 1)  # (a dead owner's)
        daemon.release_ring(0)
        assert daemon.rings()[0].pid == 0
    finally:
        daemon.close()


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("table", "slow_off", 1 << 44),
        ("table", "slow_off", 4096 * 7),
        ("table", "index_first", 7),
        ("table", "rows", 1 << 41),
        ("table", "dtype", 5),
        ("header", "slot_stride", 8),
        ("header", "slow_bytes", 0),
        ("header", "index_off", 64),
        ("header", "ring_records", 100),
        ("header", "n_tables", 1 << 30),
    ],
)
def test_attach_names_the_bad_field(pool: Pool, where: str, field: str, value: int) -> None:
    off, fmt = _table_off(1, field) if where == "table" else HEADER[field]
    old = _get(pool.name, off, fmt)
    _put(pool.name, off, fmt, value)
    for role in ("app", "daemon"):
        with pytest.raises(PoolVersionError) as e:
            Pool.attach(pool.name, role=role)
        msg = str(e.value)
        assert "\n" not in msg and "corrupt" in msg
        assert field in msg, msg
    # the creator's handle uses its own validated copy: still exact, fills still work
    _exact(pool, 1, [0, 49, 3])
    pool.fill_keys(make_keys(1, np.arange(10)))
    _exact(pool, 1, [0, 9, 49])
    _put(pool.name, off, fmt, old)
    Pool.attach(pool.name).close()


def test_header_changed_after_attach_is_not_used(pool: Pool) -> None:
    app = Pool.attach(pool.name)
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        daemon.fill_keys(make_keys(0, np.arange(20)))
        for field, value in [("n_slots", 1 << 30), ("slot_stride", 1 << 20), ("slots_off", 1 << 50),
                             ("index_entries", 1 << 40), ("ring_records", 1 << 20), ("n_tables", 9)]:
            _put(pool.name, *HEADER[field], value)
        _put(pool.name, *_table_off(0, "slow_off"), 1 << 44)
        _put(pool.name, *_table_off(0, "rows"), 1 << 40)
        _put(pool.name, *_table_off(0, "index_first"), 1 << 35)
        _exact(app, 0, [0, 5, 19, 20, 99])
        with pytest.raises(IndexError):
            app.embedding_bag(0, [100], [0])
        daemon.fill_keys(make_keys(0, np.arange(20, 30)))
        daemon.evict_keys(make_keys(0, np.arange(0, 5)))
        _exact(app, 0, [0, 5, 25, 99])
        assert daemon.free_slots() == 40 - 25
        app.write_rows(0, [25], np.full((1, 8), 7.0, dtype=np.float32))
        np.testing.assert_array_equal(app.embedding_bag(0, [25], [0])[0], np.full(8, 7.0, dtype=np.float32))
    finally:
        app.close()
        daemon.close()


def test_index_slot_out_of_range_is_a_miss(pool: Pool) -> None:
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        daemon.fill_keys(make_keys(0, np.arange(10)))
        index_off = _get(pool.name, *HEADER["index_off"])
        for row, bad in [(3, 40), (4, 0x7FFFFFFF), (50, 1 << 20), (51, -7)]:
            _put(pool.name, index_off + 4 * row, "<i", bad)
        _exact(pool, 0, [3, 4, 50, 51, 5])
        # writers: the entries are cleared, never used as slots
        pool.write_rows(0, [3, 50], _rows(0)[[3, 50]])
        daemon.evict_keys(make_keys(0, [4, 51]))
        daemon.fill_keys(make_keys(0, [3, 4, 50, 51]))
        _exact(pool, 0, [3, 4, 50, 51, 5])
        assert _get(pool.name, index_off + 4 * 3, "<i") in range(40)
    finally:
        daemon.close()


def test_ring_head_tail_corrupted(pool: Pool) -> None:
    rings_off = _get(pool.name, *HEADER["rings_off"])
    ring = rings_off + pool.ring_index * _get(pool.name, *HEADER["ring_stride"])
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        _put(pool.name, ring + RING["tail"][0], "<Q", (1 << 60) + 3)  # tail past head
        _exact(pool, 0, list(range(30)))
        assert len(daemon.drain_ring(pool.ring_index)) == 0
        _put(pool.name, ring + RING["head"][0], "<Q", 1 << 62)  # head far past tail
        assert len(daemon.drain_ring(pool.ring_index)) == 0
        _exact(pool, 0, [1, 2, 3])
    finally:
        daemon.close()


def test_attach_without_waiting_for_a_creator(pool: Pool) -> None:
    """An object still being created (ready 0) is waited for by default: a creator that finishes
    within the window is attached. With wait=False attach fails at once, before the creator has
    finished (the daemon attaches so: a creator that died must not hold up its loop)."""
    off, fmt = HEADER["ready"]
    assert _get(pool.name, off, fmt) == 1

    def finish_later() -> threading.Thread:
        _put(pool.name, off, fmt, 0)
        t = threading.Timer(0.3, _put, (pool.name, off, fmt, 1))
        t.start()
        return t

    t = finish_later()
    with pytest.raises(PoolBusyError, match="still being created"):
        Pool.attach(pool.name, role="daemon", wait=False)
    t.join()
    t = finish_later()
    Pool.attach(pool.name, role="daemon").close()  # waits for the "creator"
    t.join()


def test_an_object_whose_header_is_not_written_yet_is_a_creator_at_work(pool: Pool) -> None:
    """Between its ftruncate and copying its header in, a creator's object is all zeros: attach takes it
    for a pool being created (waits for it by default; wait=False: PoolBusyError, which the daemon logs
    as information and tries again), not for "not a recmg pool (bad magic)" (a daemon that looked then
    reported that, and a test waiting for its real error took it)."""
    off, fmt = HEADER["magic"]
    magic = _get(pool.name, off, fmt)

    def write_header_later() -> threading.Timer:
        _put(pool.name, off, fmt, 0)
        t = threading.Timer(0.3, _put, (pool.name, off, fmt, magic))
        t.start()
        return t

    t = write_header_later()
    with pytest.raises(PoolBusyError, match="no header yet: still being created") as e:
        Pool.attach(pool.name, role="daemon", wait=False)
    assert "\n" not in str(e.value)
    t.join()
    t = write_header_later()
    Pool.attach(pool.name, role="daemon").close()  # waits for the "creator"
    t.join()
    _put(pool.name, off, fmt, magic ^ 1)  # a header of something else: still not a pool, at once
    try:
        with pytest.raises(PoolError, match="not a recmg pool"):
            Pool.attach(pool.name, role="daemon")
    finally:
        _put(pool.name, off, fmt, magic)


def test_a_pool_of_another_pid_namespace_is_refused(pool: Pool) -> None:
    """The header holds its creator's PID namespace: a process of another one is refused at attach,
    with one line naming both, because the writer lock and the rings name processes by pid (a daemon
    would take a live writer of another namespace for dead, take its lock over and release its ring).
    A pool whose field is 0 (made before it, or where /proc could not tell) is not checked."""
    ns = os.stat("/proc/self/ns/pid").st_ino
    assert _get(pool.name, *PID_NS_INO) == ns
    _put(pool.name, *PID_NS_INO, ns + 1)
    for role in ("app", "daemon"):
        with pytest.raises(PoolError) as e:
            Pool.attach(pool.name, role=role)
        msg = str(e.value)
        assert "\n" not in msg and "another PID namespace" in msg and pool.name in msg, msg
        assert f"pid:[{ns + 1}]" in msg and f"pid:[{ns}]" in msg, msg
    _exact(pool, 1, [0, 49, 3])  # (the creator's handle goes on)
    _put(pool.name, *PID_NS_INO, 0)
    Pool.attach(pool.name).close()
    _put(pool.name, *PID_NS_INO, ns)
    Pool.attach(pool.name).close()


ATTACH = """
import sys
from recmgd.errors import PoolError
from recmgd.pool import Pool
try:
    Pool.attach(sys.argv[1], role=sys.argv[2]).close()
except PoolError as e:
    print(e)
    sys.exit(3)
print("attached")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to run a process in a new PID namespace")
def test_an_app_in_a_new_pid_namespace_is_refused(pool: Pool) -> None:
    """A real process in a new PID namespace (unshare --pid --fork) cannot attach the pool, as app or
    daemon; the same command in this namespace can."""
    for role in ("app", "daemon"):
        r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", ATTACH, pool.name, role],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "another PID namespace" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-c", ATTACH, pool.name, "app"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "attached" in r.stdout, (r.stdout, r.stderr)


def test_a_rings_claim_fields_written_by_an_app_are_bounded(pool: Pool) -> None:
    """The claim position and count live in memory the apps write: whatever one puts there, before_claim
    stays within the records waiting, and a daemon's tracker goes on draining the ring."""
    from recmgd.daemon.tracker import RingTracker

    at = _get(pool.name, *HEADER["rings_off"]) + pool.ring_index * _get(pool.name, *HEADER["ring_stride"])
    assert _get(pool.name, at + RING["owner"][0], "<i") == os.getpid()  # (this process's ring)
    pool.embedding_bag(0, [1, 2], [0])
    pool.end_batch()
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        steps: list[int] = []
        t = RingTracker(daemon, lambda keys, hints, n: steps.append(len(keys)), lambda h: False,
                        step_mode=True)
        t.drain()
        for head in (2**64 - 1, 2**63, 1, 3):
            _put(pool.name, at + RING["owner_head"][0], "<Q", head)
            _put(pool.name, at + RING["claims"][0], "<I", (head * 7) & 0xFFFFFFFF)
            pool.embedding_bag(0, [3, 4, 5], [0])
            pool.end_batch()
            row = daemon.ring_table()[pool.ring_index]
            assert 0 <= row["before_claim"] <= row["waiting"] == 4
            t.drain()
            t.drain()
        assert sum(steps) == 2 + 4 * 3 and t.n_pending == 0  # every lookup stepped once
    finally:
        daemon.close()
