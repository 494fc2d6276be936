"""The SSD tier's file: never truncated (create refuses an existing file, or reuses it with its rows,
the reboot case), its space reserved at create (a pool that does not fit is refused and leaves
nothing behind), a write_rows batch that fails part way says exactly which rows were written, and a
row evicted while a lookup waits for its batch of reads joins a batch, not one read per use."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from recmgd.errors import PoolError, PoolWriteError
from recmgd.keys import make_keys
from recmgd.pool import Pool

SHM = Path("/dev/shm")
ROWS, DIM = 1000, 16  # 64-byte rows, 16 per 4 KiB block


def _name() -> str:
    return f"sf_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _truth(scale: float = 1.0) -> np.ndarray:
    return np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) * scale


def _exact(p: Pool, truth: np.ndarray) -> None:
    ids = np.arange(ROWS)
    np.testing.assert_array_equal(p.embedding_bag(0, ids, ids), truth)


def test_existing_file_is_refused_and_kept(tmp_path: Path) -> None:
    f = tmp_path / "t.bin"
    f.write_bytes(b"precious" * 100)
    name = _name()
    with pytest.raises(PoolError) as e:
        Pool.create(name, tables=[(ROWS, DIM)], slots=10, slow=f"ssd:{f}")
    assert "already exists" in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)
    assert f.read_bytes() == b"precious" * 100
    assert not (SHM / name).exists()


def test_reuse_after_the_shared_memory_is_gone(tmp_path: Path) -> None:
    f = tmp_path / "t.bin"
    name = _name()
    p = Pool.create(name, tables=[(ROWS, DIM)], slots=100, slow=f"ssd:{f}")
    p.write_rows(0, np.arange(ROWS), _truth())
    p.destroy()  # like a reboot emptying /dev/shm: the file stays
    assert f.stat().st_size == -(-ROWS * DIM * 4 // 4096) * 4096  # whole pages
    # the wrong tables: refused, the file untouched, nothing left in /dev/shm
    before = f.read_bytes()
    with pytest.raises(PoolError, match="not reused"):
        Pool.create(name, tables=[(ROWS + 1000, DIM)], slots=10, slow=f"ssd:{f}", existing="reuse")
    assert f.read_bytes() == before and not (SHM / name).exists()
    with pytest.raises(PoolError, match="existing"):
        Pool.create(name, tables=[(ROWS, DIM)], slots=10, slow=f"ssd:{f}", existing="overwrite")
    p = Pool.create(name, tables=[(ROWS, DIM)], slots=100, slow=f"ssd:{f}", existing="reuse")
    try:
        _exact(p, _truth())
        np.testing.assert_array_equal(p.read_rows(0, [5, 999]), _truth()[[5, 999]])
    finally:
        p.destroy()
    # reuse of a path that does not exist yet creates it
    g = tmp_path / "new.bin"
    p = Pool.create(_name(), tables=[(ROWS, DIM)], slots=10, slow=f"ssd:{g}", existing="reuse")
    try:
        _exact(p, np.zeros((ROWS, DIM), dtype=np.float32))
    finally:
        p.destroy()


def test_pool_larger_than_its_file_system(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    row_bytes = 65536 * 4
    rows = st.f_blocks * st.f_frsize // row_bytes + 10  # more than the whole file system
    f = tmp_path / "huge.bin"
    name = _name()
    with pytest.raises(PoolError) as e:
        Pool.create(name, tables=[(rows, 65536)], slots=0, slow=f"ssd:{f}")
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "free" in msg, msg
    assert not f.exists() and not (SHM / name).exists()


def test_failed_write_reports_the_rows_written(tmp_path: Path) -> None:
    f = tmp_path / "t.bin"
    p = Pool.create(_name(), tables=[(ROWS, DIM)], slots=100, slow=f"ssd:{f}")
    try:
        p.write_rows(0, np.arange(ROWS), _truth())
        daemon = Pool.attach(p.name, role="daemon")
        daemon.fill_keys(make_keys(0, np.arange(0, ROWS, 10)))
        full = f.stat().st_size
        limit = 512 * 64  # rows below 512 stay inside the file, rows from 512 on extend it
        tail = f.read_bytes()[limit:]
        os.truncate(f, limit)
        batch = np.array([10, 11, 20, 700, 30, 40])
        new = _truth(-1.0)[batch]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a writer whose file-size limit makes the fourth row's write fail (EFBIG)
            os.close(r)
            code = 1
            try:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
                p.write_rows(0, batch, new)
            except PoolWriteError as exc:
                os.write(w, f"{exc.written}|{exc}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        report = os.read(r, 4096).decode()
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, report
        written, msg = report.split("|", 1)
        assert int(written) == 3 and "rows [0, 3) of the batch of 6 were written" in msg, msg
        with open(f, "r+b") as fh:  # the rows the truncation cut off, back
            fh.seek(limit)
            fh.write(tail)
        assert f.stat().st_size == full
        truth = _truth()
        truth[[10, 11, 20]] = new[:3]
        np.testing.assert_array_equal(p.read_rows(0, np.arange(ROWS)), truth)
        _exact(p, truth)  # 10 and 20 are resident: their copies were updated, 30 and 40 untouched
        daemon.close()
    finally:
        p.destroy()


# an app whose lookup stops itself at a fault point (RECMG_FAULT_STOP_AFTER_SLOW_READ: after its batch
# of SSD reads; RECMG_FAULT_STOP_BEFORE_PASS2: between its passes)
LOOKER = """
import json, sys
import numpy as np
from recmgd.pool import Pool
p = Pool.attach(sys.argv[1])
ids, offsets = json.loads(sys.stdin.read())
out = p.embedding_bag(0, np.array(ids), np.array(offsets)).numpy()
print(json.dumps({"out": out.tolist(), "stats": p.stats()["process"]}), flush=True)
"""


def _lookup_while(pool: Pool, ids: list[int], meanwhile: Callable[[], None],
                  point: str = "RECMG_FAULT_STOP_AFTER_SLOW_READ", offsets: list[int] | None = None
                  ) -> tuple[np.ndarray, dict]:
    """Another process looks up ids (bags at offsets, default a bag each) in table 0; meanwhile() runs
    while that lookup is stopped at the fault point (by default between its batch of SSD reads and its
    check of the hits). The bags and the process's counters."""
    env = dict(os.environ, **{point: "1"})
    child = subprocess.Popen([sys.executable, "-c", LOOKER, pool.name], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        child.stdin.write(json.dumps([ids, list(range(len(ids))) if offsets is None else offsets]))
        child.stdin.close()
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        meanwhile()
        os.kill(child.pid, signal.SIGCONT)
        out = child.stdout.read()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out
    got = json.loads(out)
    return np.array(got["out"], dtype=np.float32), got["stats"]


@contextmanager
def _ssd_pool(tmp_path: Path, rows: int = ROWS, resident: int = 10
              ) -> Iterator[tuple[Pool, Pool, np.ndarray]]:
    """A pool over an SSD file, rows' values written (_truth's rule), rows 0 .. resident - 1 in the fast
    tier; the pool, a daemon handle on it, and the values."""
    truth = np.arange(rows * DIM, dtype=np.float32).reshape(rows, DIM)
    p = Pool.create(_name(), tables=[(rows, DIM)], slots=2 * resident + 80, slow=f"ssd:{tmp_path / 't.bin'}")
    daemon = None
    try:
        p.write_rows(0, np.arange(rows), truth)
        daemon = Pool.attach(p.name, role="daemon")
        daemon.fill_keys(make_keys(0, np.arange(resident)))
        yield p, daemon, truth
    finally:
        if daemon is not None:
            daemon.close()
        p.destroy()


def test_rows_evicted_during_the_reads_are_read_in_a_batch(tmp_path: Path) -> None:
    """Pass 1 finds rows 5 and 7 resident and row 500 not; while the lookup waits for row 500's read,
    the daemon evicts 5 and moves 7 to another slot. Row 5, used three times, is read once more in one
    batch (without the check after the reads: once per use, alone, 4 on-demand reads in all); row 7
    is still a hit, from its new slot; every output is the row's value."""
    with _ssd_pool(tmp_path) as (p, daemon, truth):

        def move() -> None:
            daemon.evict_keys(make_keys(0, [7]))
            daemon.evict_keys(make_keys(0, [5]))
            daemon.fill_keys(make_keys(0, [7]))  # into the slot row 5 had (the last one freed)
            resident = make_keys(0, [0, 1, 2, 3, 4, 6, 7, 8, 9])
            assert sorted(daemon.resident_keys().tolist()) == sorted(resident.tolist())

        ids = [5, 500, 5, 7, 5]
        out, st = _lookup_while(p, ids, move)
        np.testing.assert_array_equal(out, truth[ids])
        assert (st["lookups"], st["hits"], st["on_demand"]) == (5, 1, 2), st


def test_the_second_batch_keeps_the_first_batchs_rows(tmp_path: Path) -> None:
    """1,000 misses (64,000 bytes of rows, in the handle's first 64 KiB buffer) and 150 hits, all
    evicted during the reads: the second batch grows the buffer past 64 KiB, and the first batch's rows
    move with it (a wrong copy shows in the bags)."""
    with _ssd_pool(tmp_path, rows=2200, resident=150) as (p, daemon, truth):
        ids = [*range(1000, 2000), *range(150)]
        out, st = _lookup_while(p, ids, lambda: daemon.evict_keys(make_keys(0, np.arange(150))))
        np.testing.assert_array_equal(out, truth[ids])
        assert (st["lookups"], st["hits"], st["on_demand"]) == (1150, 0, 1150), st


def test_rows_evicted_before_pass_2_are_read_in_a_batch(tmp_path: Path) -> None:
    """Every id a hit in pass 1, no SSD read; between the passes the daemon evicts row 3. Pass 2's
    bags of row 3 lose their race: they wait, row 3 is read once in a batch, and they are done again
    (without the wait: one read alone per use, 3 on-demand reads). Row 4 stays a hit."""
    with _ssd_pool(tmp_path) as (p, daemon, truth):
        ids = [3, 3, 4, 3]
        out, st = _lookup_while(p, ids, lambda: daemon.evict_keys(make_keys(0, [3])),
                                "RECMG_FAULT_STOP_BEFORE_PASS2")
        np.testing.assert_array_equal(out, truth[ids])
        assert (st["lookups"], st["hits"], st["on_demand"]) == (4, 1, 1), st


def test_a_bag_that_waits_is_resolved_again_whole(tmp_path: Path) -> None:
    """Rows 3 and 4 evicted between the passes, bag [3, 4, 3] and bag [5]: the first bag waits, and
    every id of it is resolved again then, so rows 3 and 4 are read in one batch (resolving only the id
    that lost its race: row 4 and the second 3 read alone, 3 on-demand reads)."""
    with _ssd_pool(tmp_path) as (p, daemon, truth):
        ids = [3, 4, 3, 5]
        out, st = _lookup_while(p, ids, lambda: daemon.evict_keys(make_keys(0, [3, 4])),
                                "RECMG_FAULT_STOP_BEFORE_PASS2", offsets=[0, 3])
        np.testing.assert_array_equal(out, np.stack([truth[[3, 4, 3]].sum(0), truth[5]]))
        assert (st["lookups"], st["hits"], st["on_demand"]) == (4, 1, 2), st


def test_fills_count_the_bytes_read_as_lookups_do(tmp_path: Path) -> None:
    """A row read directly (O_DIRECT) costs the aligned span that covers it: a lookup's miss counts that
    in the table's slow_bytes, and so does a daemon's fill of the same kind of row (it counted the row's
    own bytes, a quarter of what it read here). The rows are a quarter of the alignment, the smallest
    read the SSD tier makes directly."""
    probe = Pool.create(_name(), tables=[(16, 16)], slots=4, slow=f"ssd:{tmp_path / 'probe.bin'}")
    st = probe.stats()
    probe.destroy()
    if not st["direct_io"]:
        pytest.skip(f"{tmp_path} takes no O_DIRECT reads")
    dim = st["io_align"] // 4 // 4  # float32 rows of io_align / 4 bytes
    p = Pool.create(_name(), tables=[(4000, dim)], slots=2000, slow=f"ssd:{tmp_path / 't.bin'}")
    daemon = Pool.attach(p.name, role="daemon")
    try:
        def slow_bytes() -> int:
            return int(p.counters()["tables"][0]["slow_bytes"])

        b0 = slow_bytes()
        p.embedding_bag(0, np.arange(1000), np.arange(1000))
        per_lookup = (slow_bytes() - b0) / 1000
        b1 = slow_bytes()
        assert daemon.fill_keys(make_keys(0, np.arange(2000, 3000))) == 1000
        per_fill = (slow_bytes() - b1) / 1000
        assert per_lookup == per_fill == st["io_align"], (per_lookup, per_fill, st["io_align"])
    finally:
        daemon.close()
        p.destroy()
