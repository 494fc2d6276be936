"""The writer lock is timed: a writer stopped (SIGSTOP) while it holds the lock makes the daemon's
writes fail fast with PoolLockedError naming the holder, lookups stay exact meanwhile, and the pool
works again after SIGCONT, or after SIGKILL of the holder (the next writer recovers)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pool_layout import HEADER, STAGED_KEY, STAGED_VER

from recmgd.errors import PoolError, PoolLockedError
from recmgd.keys import make_keys
from recmgd.pool import Pool

SHM = Path("/dev/shm")
ROWS, DIM = 200, 8
TRUTH = np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM)

# a writer that stops itself inside write_rows, holding the lock (RECMG_FAULT_STOP_IN_WRITE)
HOLDER = """
import sys
import numpy as np
from recmgd.pool import Pool
p = Pool.attach(sys.argv[1])
rows = np.arange(10, 20)
p.write_rows(0, rows, np.asarray(sys.argv[2:], dtype=np.float32).reshape(1, -1).repeat(10, 0))
print("written", flush=True)
"""


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool.create(f"lk_{os.getpid()}_{uuid.uuid4().hex[:8]}", tables=[(ROWS, DIM)], slots=100)
    p.write_rows(0, np.arange(ROWS), TRUTH)
    try:
        yield p
    finally:
        p.destroy()


def _stopped_holder(pool: Pool, value: float, fault: str = "RECMG_FAULT_STOP_IN_WRITE") -> subprocess.Popen:
    """HOLDER writing rows 10-19 as value, stopped (SIGSTOP) where fault puts it, holding the lock."""
    env = dict(os.environ, **{fault: "1"})
    argv = [sys.executable, "-c", HOLDER, pool.name, *[str(value)] * DIM]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    _, status = os.waitpid(child.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status
    return child


def _written(child: subprocess.Popen, value: float) -> np.ndarray:
    """The continued holder's end: it wrote rows 10-19 as value; the rows now."""
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and "written" in out
    truth = TRUTH.copy()
    truth[10:20] = value
    return truth


def _exact(p: Pool, truth: np.ndarray) -> None:
    ids = np.arange(ROWS)
    np.testing.assert_array_equal(p.embedding_bag(0, ids, ids), truth)


def test_stopped_holder_then_sigcont(pool: Pool) -> None:
    daemon = Pool.attach(pool.name, role="daemon")
    app = Pool.attach(pool.name)
    try:
        daemon.fill_keys(make_keys(0, np.arange(50)))
        child = _stopped_holder(pool, 5.0)
        try:
            with pytest.raises(PoolLockedError) as e:
                daemon.fill_keys(make_keys(0, np.arange(50, 60)))
            msg = str(e.value)
            assert "\n" not in msg and f"process {child.pid}" in msg and pool.name in msg, msg
            with pytest.raises(PoolLockedError):
                daemon.evict_keys(make_keys(0, [1]))
            # nothing changed, and lookups of other apps stay exact
            assert set(daemon.resident_keys().tolist()) == set(make_keys(0, np.arange(50)).tolist())
            _exact(app, TRUTH)
            # a shorter timeout is settable per handle
            daemon.set_lock_timeout(5)
            with pytest.raises(PoolLockedError, match="5 ms"):
                daemon.free_slots()
            with pytest.raises(PoolError, match="lock timeout"):
                daemon.set_lock_timeout(0)
        finally:
            os.kill(child.pid, signal.SIGCONT)
        truth = _written(child, 5.0)
        assert daemon.fill_keys(make_keys(0, np.arange(50, 60))) == 10
        _exact(app, truth)
    finally:
        app.close()
        daemon.close()


def test_writer_holder_and_a_no_wait_attach(pool: Pool) -> None:
    """writer_holder() names the live process holding the writer lock (0 when it is free or its holder
    is dead) without waiting; a daemon's no-wait attach leaves a held lock alone (it does not wait for
    it, so the dead writer's repair is not run), and the wait=True attach waited for it."""
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        assert daemon.writer_holder() == 0
        child = _stopped_holder(pool, 7.0)
        try:
            assert daemon.writer_holder() == child.pid
            daemon.close()
            daemon = Pool.attach(pool.name, role="daemon", wait=False)
            assert daemon.writer_holder() == child.pid
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        assert daemon.writer_holder() == 0  # dead: the next write takes the lock over
        assert daemon.fill_keys(make_keys(0, np.arange(5))) == 5
        assert daemon.writer_holder() == 0
    finally:
        daemon.close()


def test_killed_holder_is_recovered(pool: Pool) -> None:
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        daemon.fill_keys(make_keys(0, np.arange(30)))
        child = _stopped_holder(pool, 9.0)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        assert daemon.fill_keys(make_keys(0, np.arange(30, 40))) == 10
        assert daemon.free_slots() == 60
        # the killed writer never got past the lock: the rows are the old ones
        _exact(pool, TRUTH)
    finally:
        daemon.close()


def test_env_sets_the_timeout(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECMG_LOCK_TIMEOUT_MS", "7")
    daemon = Pool.attach(pool.name, role="daemon")
    child = _stopped_holder(pool, 1.0)
    try:
        with pytest.raises(PoolLockedError, match="7 ms"):
            daemon.fill_keys(make_keys(0, [1]))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        daemon.close()


def test_killed_holder_not_yet_reaped(pool: Pool) -> None:
    """A holder killed but not waited for (a zombie still answers kill(pid, 0)) is dead too."""
    daemon = Pool.attach(pool.name, role="daemon")
    child = _stopped_holder(pool, 3.0)
    try:
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(500):  # until the kernel has made it a zombie (not reaped: no wait here)
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert daemon.fill_keys(make_keys(0, np.arange(5))) == 5
        _exact(pool, TRUTH)
    finally:
        child.wait(timeout=60)
        daemon.close()


def test_lock_word_written_by_the_pool_owner(pool: Pool) -> None:
    """The lock is a pid in the header: a live pid written there makes writes fail fast (ELOCKED), a
    dead one is taken over; never a crash, never a wrong row."""
    off, fmt = HEADER["writer_lock"]
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        with open(SHM / pool.name, "r+b") as f:
            f.seek(off)
            f.write(struct.pack(fmt, 1))  # init: alive
        with pytest.raises(PoolLockedError, match="process 1 "):
            daemon.fill_keys(make_keys(0, [1]))
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(timeout=60)
        with open(SHM / pool.name, "r+b") as f:
            f.seek(off)
            f.write(struct.pack(fmt, dead.pid))
        assert daemon.fill_keys(make_keys(0, [1, 2])) == 2
        _exact(pool, TRUTH)
    finally:
        daemon.close()


KILLED_WRITER = """
import os, sys
import numpy as np
from recmgd.pool import Pool
p = Pool.attach(sys.argv[1])
os.environ["RECMG_FAULT_KILL_IN_WRITE"] = "1"
p.write_rows(0, np.arange(10, 20), np.full((10, int(sys.argv[2])), 3.0, dtype=np.float32))
"""


def test_a_writer_killed_in_write_rows_is_repaired(pool: Pool) -> None:
    """A writer killed inside write_rows in its last row's window, half of that row's slow row written
    and its copy not (RECMG_FAULT_KILL_IN_WRITE): lookups read every row new, the one it died in whole
    (from where write_rows staged it before the window), never half written; the repair of the dead
    writer's lock (Pool.repair, which a daemon calls at each app check, or any next write) finishes that
    row, closes the window and drops every copy of the table the header names as being written, so no
    copy older than the slow tier is read, and counts itself (repairs). (The stale copies stayed for
    good: resident rows disagreed with the slow tier; and the row died in stayed half written.)"""
    daemon = Pool.attach(pool.name, role="daemon")
    app = Pool.attach(pool.name)
    try:
        daemon.fill_keys(make_keys(0, np.arange(100)))  # (every slot)
        before = daemon.repairs()
        assert daemon.repair() is False  # nothing to repair
        child = subprocess.run([sys.executable, "-c", KILLED_WRITER, pool.name, str(DIM)], timeout=60)
        assert child.returncode == -signal.SIGKILL
        truth = TRUTH.copy()
        truth[10:20] = 3.0
        assert daemon.writer_holder() == 0  # (its holder is dead)
        # it died inside the last row's window (its group's version odd): reads of that group do not
        # wait for a dead writer; they read the rows it finished from the slow tier, and row 19 whole
        # from the stage, where the slow tier holds it half written
        _exact(app, truth)
        np.testing.assert_array_equal(app.read_rows(0, np.arange(ROWS)), truth)
        assert daemon.repair() is True
        assert daemon.repairs() > before
        _exact(app, truth)  # no copy older than the slow tier is read, and row 19 is finished
        np.testing.assert_array_equal(app.read_rows(0, np.arange(ROWS)), truth)
        assert daemon.resident_keys().tolist() == []  # the table's copies were dropped
        assert daemon.free_slots() == 100
        assert daemon.fill_keys(make_keys(0, np.arange(100))) == 100
        _exact(app, truth)
    finally:
        app.close()
        daemon.close()


def _put(name: str, off: int, fmt: str, value: int) -> None:
    with open(SHM / name, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    return dead.pid


REPAIRER = """
import os, sys
from recmgd.pool import Pool
os.environ["RECMG_FAULT_KILL_IN_FINISH"] = "1"
Pool.attach(sys.argv[1], role="daemon").repair()
"""


def test_a_repairer_killed_while_it_finishes_the_row_leaves_it_to_the_next(pool: Pool) -> None:
    """A writer dies inside a row (half written), and the repairer dies too, half way through finishing
    that row from the stage (RECMG_FAULT_KILL_IN_FINISH): readers still read the row whole, from the
    stage (the repairer clears the key only after its copy), and the next repair finishes it. (The key
    was cleared before the copy: the row stayed half written for good.)"""
    app = Pool.attach(pool.name)
    daemon = None
    try:
        child = subprocess.run([sys.executable, "-c", KILLED_WRITER, pool.name, str(DIM)], timeout=60)
        assert child.returncode == -signal.SIGKILL
        truth = TRUTH.copy()
        truth[10:20] = 3.0
        _exact(app, truth)
        child = subprocess.run([sys.executable, "-c", REPAIRER, pool.name], timeout=60)
        assert child.returncode == -signal.SIGKILL
        _exact(app, truth)
        np.testing.assert_array_equal(app.read_rows(0, np.arange(ROWS)), truth)
        assert _get_u64(pool.name, STAGED_KEY[0]) != 0  # (left for the next repair)
        daemon = Pool.attach(pool.name, role="daemon")  # (the dead repairer's place: its attach repairs)
        daemon.repair()
        assert _get_u64(pool.name, STAGED_KEY[0]) == 0
        _exact(app, truth)
        np.testing.assert_array_equal(app.read_rows(0, np.arange(ROWS)), truth)
        assert daemon.repair() is False
    finally:
        app.close()
        if daemon is not None:
            daemon.close()


def test_the_repair_finishes_only_a_row_its_writer_died_inside(pool: Pool) -> None:
    """The repair writes the staged bytes only into the row the header names whose window is still odd
    and is the one staged: a dead writer that had closed the row's window (the key not yet cleared)
    leaves the row as written; a key of another window of the row's group (a writer that did not stage,
    an older library, left its key), a key naming a row past its table's end, or a table the pool lacks
    (the header is the owner's to write), is ignored, and nothing outside the rows changes."""
    name = f"lk2_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    two = Pool.create(name, tables=[(ROWS, DIM), (ROWS, DIM)], slots=10)
    try:
        other = TRUTH + 5000.0
        two.write_rows(0, np.arange(ROWS), TRUTH)
        two.write_rows(1, np.arange(ROWS), other)  # (the stage: table 1's last row, other[-1])
        daemon = Pool.attach(two.name, role="daemon")
        try:
            vers_off = struct.unpack(HEADER["vers_off"][1], (SHM / two.name).read_bytes()[
                HEADER["vers_off"][0]:HEADER["vers_off"][0] + 8])[0]
            past_end = 256  # (table 0's row 256 would be table 1's row 0: its slow rows start a page on)
            cases = [((0 + 1) << 40 | 10, 0, False),  # row 10's window closed (version even)
                     ((0 + 1) << 40 | 10, 0, True),  # row 10's group odd, its window not the one staged
                     ((0 + 1) << 40 | past_end, (ROWS + 56) >> 6, True),  # past table 0's end, odd
                     ((7 + 1) << 40 | 3, 0, True)]  # no table 7, group 0 odd
            for key, group, odd in cases:
                _put(two.name, *STAGED_KEY, key)
                if odd:
                    ver = _get_u32(two.name, vers_off + 4 * group)
                    _put(two.name, vers_off + 4 * group, "<I", ver | 1)
                    assert _get_u32(two.name, STAGED_VER[0]) != ver | 1  # (the last window staged: another)
                _put(two.name, *HEADER["writer_lock"], _dead_pid())
                assert daemon.repair() is True
                for t, truth in ((0, TRUTH), (1, other)):
                    ids = np.arange(ROWS)
                    np.testing.assert_array_equal(two.read_rows(t, ids), truth)
                    np.testing.assert_array_equal(two.embedding_bag(t, ids, ids).numpy(), truth)
                assert _get_u32(two.name, vers_off + 4 * group) % 2 == 0
        finally:
            daemon.close()
    finally:
        two.destroy()


def _get_u64(name: str, off: int) -> int:
    with open(SHM / name, "rb") as f:
        f.seek(off)
        return struct.unpack("<Q", f.read(8))[0]


def _get_u32(name: str, off: int) -> int:
    with open(SHM / name, "rb") as f:
        f.seek(off)
        return struct.unpack("<I", f.read(4))[0]


@pytest.mark.parametrize("resident", [False, True], ids=["missing", "resident"])
def test_a_writer_stopped_inside_a_row_holds_up_no_reader(pool: Pool, resident: bool) -> None:
    """A writer stopped (SIGSTOP) inside a row's window of write_rows, half of the row written
    (RECMG_FAULT_STOP_IN_ROW): a slow-tier reader waits for a row's window to close, but not for a
    stopped writer: lookups and read_rows return, every row exact, the row in the window whole and new
    (from where write_rows staged it before the window), whether its copy is resident or not; after
    SIGCONT the writer finishes and every row is read new. (The row was read half written.)"""
    app = Pool.attach(pool.name)
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        if resident:
            assert daemon.fill_keys(make_keys(0, np.arange(5, 25))) == 20
        child = _stopped_holder(pool, 9.0, "RECMG_FAULT_STOP_IN_ROW")
        try:
            with open(SHM / pool.name, "rb") as f:  # (the slow tier holds row 10 half written)
                off, fmt = HEADER["slow_off"]
                f.seek(off)
                (slow_off,) = struct.unpack(fmt, f.read(8))
                f.seek(slow_off + 10 * DIM * 4)
                half = np.frombuffer(f.read(DIM * 4), dtype=np.float32)
            np.testing.assert_array_equal(half[: DIM // 2], 9.0)
            np.testing.assert_array_equal(half[DIM // 2:], TRUTH[10, DIM // 2:])
            ids = np.arange(ROWS)
            now = TRUTH.copy()
            now[10] = 9.0  # (the first row it writes, stopped in)
            for _ in range(3):  # (the first call waits for the window, later ones do not)
                np.testing.assert_array_equal(app.embedding_bag(0, ids, ids).numpy(), now)
                np.testing.assert_array_equal(app.read_rows(0, ids), now)
                np.testing.assert_array_equal(app.embedding_bag(0, [10], [0]).numpy()[0], now[10])
        finally:
            os.kill(child.pid, signal.SIGCONT)
        truth = _written(child, 9.0)
        _exact(app, truth)
    finally:
        daemon.close()
        app.close()


def test_a_writer_slow_inside_a_row_is_waited_for(pool: Pool) -> None:
    """A writer that runs but takes 200 ms inside a row's window, half of the row written
    (RECMG_FAULT_SLEEP_IN_ROW: asleep, as a descheduled writer or one whose disk is slow would be): a
    reader of that row waits for it, however long, and reads it whole, old or new. (Readers gave up
    after 20 ms and read the row half written, as they do for a stopped writer.)"""
    app = Pool.attach(pool.name)
    _exact(app, TRUTH)  # (torch imported before the writer starts: the reads meet its window)
    env = dict(os.environ, RECMG_FAULT_SLEEP_IN_ROW="1")
    argv = [sys.executable, "-c", HOLDER, pool.name, *[str(9.0)] * DIM]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        reads = 0
        while child.poll() is None:
            for got in (app.embedding_bag(0, [10], [0]).numpy()[0], app.read_rows(0, [10])[0]):
                assert np.array_equal(got, TRUTH[10]) or np.array_equal(got, np.full(DIM, 9.0)), got
                reads += 1
        assert reads > 0
        _exact(app, _written(child, 9.0))
    finally:
        app.close()


SLEEPY_FILL = """
import os, sys
import numpy as np
from recmgd.keys import make_keys
from recmgd.pool import Pool
p = Pool.attach(sys.argv[1], role="daemon")
os.environ["RECMG_FAULT_SLEEP_IN_PUBLISH"] = "0"
p.fill_keys(make_keys(0, [5]))
print("filled", flush=True)
"""


def _group0_version(pool: Pool) -> int:
    with open(SHM / pool.name, "rb") as f:
        f.seek(HEADER["vers_off"][0])
        (vers_off,) = struct.unpack(HEADER["vers_off"][1], f.read(8))
        f.seek(vers_off)
        return struct.unpack("<I", f.read(4))[0]


def test_a_lookup_does_not_wait_for_a_fill_window(pool: Pool) -> None:
    """A fill's window changes no slow row: while the daemon sits in the window that publishes row 5,
    running (RECMG_FAULT_SLEEP_IN_PUBLISH: 3 s asleep there, as a descheduled daemon would be), lookups
    of the group's rows read them at once, exact; only a write_rows window of the row's own table is
    waited for (the header names the table being written). (Readers waited for the daemon's window.)"""
    app = Pool.attach(pool.name)
    try:
        _exact(app, TRUTH)  # (torch imported first)
        argv = [sys.executable, "-c", SLEEPY_FILL, pool.name]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while _group0_version(pool) % 2 == 0:
            assert time.monotonic() < deadline and child.poll() is None, "the fill never opened its window"
            time.sleep(0.005)
        for _ in range(5):
            _exact(app, TRUTH)
            np.testing.assert_array_equal(app.read_rows(0, np.arange(64)), TRUTH[:64])
        assert _group0_version(pool) % 2 == 1  # (all read inside the daemon's window)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0 and "filled" in out
        _exact(app, TRUTH)
    finally:
        app.close()
