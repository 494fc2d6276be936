"""The trust boundary of a pool's files: one daemon per pool, and a slow-tier file is used only if it is
a regular file (no symbolic link) owned by the pool's owner, who may read it; a root daemon serving a
pool made by an unprivileged user never reads a file that user could not read."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from nobody import as_nobody
from pool_layout import HEADER, SLOW_PATH

from recmgd.errors import PoolError
from recmgd.keys import make_keys
from recmgd.pool import Pool

SHM = Path("/dev/shm")
ROWS, DIM = 256, 16
SECRET = b"TOPSECRET-0600!!" * 4096  # 64 KiB, the size of the pool's table file


def _name() -> str:
    return f"tr_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _put_path(name: str, path: str) -> None:
    off, size = SLOW_PATH
    raw = path.encode()
    with open(SHM / name, "r+b") as f:
        f.seek(off)
        f.write(raw + b"\0" * (size - len(raw)))


@pytest.fixture
def ssd_pool(tmp_path: Path) -> Iterator[tuple[Pool, Path]]:
    f = tmp_path / "t.bin"
    p = Pool.create(_name(), tables=[(ROWS, DIM)], slots=64, slow=f"ssd:{f}")
    p.write_rows(0, np.arange(ROWS), np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM))
    try:
        yield p, f
    finally:
        p.destroy()


def test_one_daemon_per_pool(ssd_pool: tuple[Pool, Path]) -> None:
    p, _ = ssd_pool
    d1 = Pool.attach(p.name, role="daemon")
    with pytest.raises(PoolError) as e:
        Pool.attach(p.name, role="daemon")
    msg = str(e.value)
    assert "\n" not in msg and p.name in msg and f"already has a daemon (pid {os.getpid()})" in msg, msg
    Pool.attach(p.name).close()  # apps are not affected
    d1.close()
    Pool.attach(p.name, role="daemon").close()
    # a daemon that dies holds nothing: the kernel drops its lock
    code = f"from recmgd.pool import Pool; d = Pool.attach({p.name!r}, role='daemon')"
    argv = [sys.executable, "-c", code + "; print('up', flush=True); input()"]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        with pytest.raises(PoolError, match=f"pid {child.pid}"):
            Pool.attach(p.name, role="daemon")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    Pool.attach(p.name, role="daemon").close()


def test_symlink_is_refused(ssd_pool: tuple[Pool, Path], tmp_path: Path) -> None:
    p, f = ssd_pool
    other = tmp_path / "other.bin"
    shutil.copy(f, other)
    f.unlink()
    f.symlink_to(other)
    for role in ("app", "daemon"):
        with pytest.raises(PoolError, match="symbolic link") as e:
            Pool.attach(p.name, role=role)
        assert str(f) in str(e.value)


def test_not_a_regular_file_is_refused(ssd_pool: tuple[Pool, Path], tmp_path: Path) -> None:
    p, _ = ssd_pool
    _put_path(p.name, str(tmp_path))
    with pytest.raises(PoolError, match="not a regular file|Is a directory"):
        Pool.attach(p.name, role="daemon")


def test_owner_mode_bits(ssd_pool: tuple[Pool, Path]) -> None:
    p, f = ssd_pool
    os.chmod(f, 0o200)
    if os.geteuid() == 0:  # root opens it anyway; the mode bits decide
        with pytest.raises(PoolError, match="owner may not read it"):
            Pool.attach(p.name, role="daemon")
    os.chmod(f, 0o400)
    app = Pool.attach(p.name)
    try:
        ids = np.arange(ROWS)
        np.testing.assert_array_equal(app.embedding_bag(0, ids, ids)[:, 0], ids * DIM)
        with pytest.raises(PoolError, match="not writable") as e:
            app.write_rows(0, [1], np.zeros((1, DIM), dtype=np.float32))
        assert e.value.written == 0
    finally:
        app.close()
        os.chmod(f, 0o600)


def test_file_of_another_owner_is_refused(ssd_pool: tuple[Pool, Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    p, f = ssd_pool
    nobody = pwd.getpwnam("nobody")
    os.chown(f, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(PoolError, match=f"owned by uid {nobody.pw_uid}, the pool by uid 0"):
        Pool.attach(p.name, role="daemon")


def test_unprivileged_pool_naming_a_root_only_file(tmp_path: Path) -> None:
    """Issue #12, point 1: a user's pool whose header names a root-only 0600 file."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the daemon's privilege) and the nobody user")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    shared = Path(tempfile.mkdtemp(prefix="recmg_trust_"))
    os.chmod(shared, 0o777)
    name = _name()
    own = shared / "own.bin"

    def make_pool() -> None:
        p = Pool.create(name, tables=[(ROWS, DIM)], slots=64, slow=f"ssd:{own}", mode=0o666)
        p.write_rows(0, np.arange(ROWS), np.ones((ROWS, DIM), dtype=np.float32))
        p.close()

    try:
        as_nobody(make_pool)
        assert (SHM / name).stat().st_uid == pwd.getpwnam("nobody").pw_uid
        # a daemon attached before the rewrite keeps the file it checked and opened
        daemon = Pool.attach(name, role="daemon")
        app = Pool.attach(name)
        as_nobody(lambda: _put_path(name, str(secret)))
        daemon.fill_keys(make_keys(0, np.arange(64)))
        try:
            got = app.embedding_bag(0, np.arange(ROWS), np.arange(ROWS))
            np.testing.assert_array_equal(got, np.ones((ROWS, DIM), dtype=np.float32))
            assert SECRET[:16] not in app.read_rows(0, np.arange(ROWS)).tobytes()
        finally:
            app.close()
            daemon.close()
        # a daemon attaching now refuses the file, with or without the size rewritten too
        with pytest.raises(PoolError) as e:
            Pool.attach(name, role="daemon")
        assert f"owned by uid 0, the pool by uid {pwd.getpwnam('nobody').pw_uid}" in str(e.value)
        off, fmt = HEADER["slow_bytes"]

        def zero_size() -> None:
            with open(SHM / name, "r+b") as fh:
                fh.seek(off)
                fh.write(b"\0" * 8)

        as_nobody(zero_size)
        with pytest.raises(PoolError, match="slow_bytes"):
            Pool.attach(name, role="daemon")
    finally:
        (SHM / name).unlink(missing_ok=True)
        shutil.rmtree(shared)


def test_a_fifo_slow_tier_is_never_opened(tmp_path: Path) -> None:
    """A pool's owner replaces its slow-tier file with a FIFO the owner may only read: attach (a daemon
    running as the pool's group, an app) refuses it at once, in one line. (It opened the FIFO for
    reading, which waits for a writer: the daemon's loop and every app attaching the pool hung.) As
    root a FIFO opens for writing without a wait, so the attach runs as nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the attach as the nobody user")
    shared = Path(tempfile.mkdtemp(prefix="recmg_fifo_"))
    os.chmod(shared, 0o777)
    name = _name()
    slow = shared / "t.bin"

    def make_pool() -> None:
        Pool.create(name, tables=[(ROWS, DIM)], slots=64, slow=f"ssd:{slow}", mode=0o666).close()
        slow.unlink()
        os.mkfifo(slow, 0o444)

    try:
        as_nobody(make_pool)
        for role in ("app", "daemon"):
            answer = as_nobody(lambda role=role: _attach_error(name, role), timeout=30)
            assert answer == f"slow-tier file {slow} refused: it is not a regular file (not opened)", answer
    finally:
        (SHM / name).unlink(missing_ok=True)
        shutil.rmtree(shared)


def _attach_error(name: str, role: str) -> str:
    try:
        Pool.attach(name, role=role).close()
    except PoolError as e:
        return str(e)
    return "attached"


def test_daemon_survives_a_shrunk_object(ssd_pool: tuple[Pool, Path]) -> None:
    """The pool's owner truncating the object under a daemon's mapping: one-line errors, no SIGBUS."""
    p, _ = ssd_pool
    daemon = Pool.attach(p.name, role="daemon")
    try:
        daemon.fill_keys(make_keys(0, np.arange(10)))
        size = (SHM / p.name).stat().st_size
        os.truncate(SHM / p.name, 4096)
        calls = [lambda: daemon.fill_keys(make_keys(0, np.arange(10, 20))),
                 lambda: daemon.evict_keys(make_keys(0, [1])), lambda: daemon.drain_ring(0), daemon.rings,
                 daemon.resident_keys, daemon.free_slots, daemon.counters, daemon.reset_counters]
        try:
            for call in calls:
                with pytest.raises(PoolError, match="shrank to 4096 bytes"):
                    call()
        finally:
            os.truncate(SHM / p.name, size)  # the creator's handle (this process) maps it too
    finally:
        daemon.close()


_SHRINK_CHILD = """
import os, sys
import numpy as np
from recmgd.errors import PoolError
from recmgd.keys import make_keys
from recmgd.pool import Pool
d = Pool.attach(sys.argv[1], role="daemon")
print("attached", flush=True)
os.environ["RECMG_FAULT_STOP_IN_FILL"] = "1"
for call in (lambda: d.fill_keys(make_keys(0, np.arange(ROWS))), d.free_slots, d.resident_keys,
             lambda: d.drain_ring(0), d.counters):
    try:
        call()
        print("no error", flush=True)
    except PoolError as e:
        print("error:", e, flush=True)
    os.environ.pop("RECMG_FAULT_STOP_IN_FILL", None)
print("waiting", flush=True)
sys.stdin.readline()
d.close()
print("alive", flush=True)
""".replace("ROWS", str(ROWS))


def test_daemon_survives_a_shrink_during_a_call(ssd_pool: tuple[Pool, Path]) -> None:
    """The owner truncates the object while a daemon's fill runs (stopped inside it, holding the writer
    lock, after the check that a call starts with): the fill faults past the object's new end. The
    daemon's SIGBUS guard maps zero pages there: the call and every later one fail with one line, and
    the daemon lives on (it died of SIGBUS). The writer lock the fill held is handed on through the
    object's descriptor (its unlock went to the zero pages): while the daemon still runs, the pool's
    other writers take it over (it was held by the live daemon for good)."""
    p, _ = ssd_pool
    child = subprocess.Popen([sys.executable, "-c", _SHRINK_CHILD, p.name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    size = (SHM / p.name).stat().st_size
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "attached"
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline and child.poll() is None, "the fill did not stop"
            time.sleep(0.01)
        os.truncate(SHM / p.name, 4096)
        child.send_signal(signal.SIGCONT)
        lines = []
        while not lines or lines[-1] != "waiting":
            line = child.stdout.readline()
            assert line, (child.wait(), child.stderr.read() if child.stderr else "")
            lines.append(line.strip())
        os.truncate(SHM / p.name, size)
        assert child.poll() is None and p.writer_holder() == 0  # (the daemon is alive)
        p.set_lock_timeout(50)
        p.write_rows(0, np.arange(4), np.zeros((4, DIM), np.float32))  # takes the lock over
        out, err = child.communicate("\n", timeout=60)
        out = "\n".join(lines) + "\n" + out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.truncate(SHM / p.name, size)  # the creator's handle (this process) maps it too
    assert child.returncode == 0, (child.returncode, out, err)
    lines = out.strip().splitlines()
    assert lines[-2:] == ["waiting", "alive"] and len(lines) == 7, out
    for line in lines[:5]:
        assert line.startswith(f"error: pool '{p.name}' faulted under this handle (SIGBUS: the object"), out


@pytest.mark.parametrize("before", ["default", "ignored"])
def test_a_fault_outside_the_pools_is_not_swallowed(before: str, tmp_path: Path) -> None:
    """The guard handles faults in a daemon's pool mappings only: a SIGBUS anywhere else in the process
    (here a mapped file truncated under it) still ends the process as it would without the guard, also
    when SIGBUS was ignored before (the kernel kills for a fault all the same; the guard spun on it)."""
    name = _name()
    code = f"""
import mmap, os, signal
from recmgd.pool import Pool
if {before == "ignored"}:
    signal.signal(signal.SIGBUS, signal.SIG_IGN)
creator = Pool.create({name!r}, tables=[(16, 16)], slots=4)
d = Pool.attach({name!r}, role="daemon")
f = os.open({str(tmp_path / "f")!r}, os.O_RDWR | os.O_CREAT)
os.ftruncate(f, 65536)
m = mmap.mmap(f, 65536)
os.ftruncate(f, 0)
Pool.unlink({name!r})
print("reading", flush=True)
m[40000]
print("survived", flush=True)
"""
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    finally:
        (SHM / name).unlink(missing_ok=True)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "reading"


def test_page_calls_and_ring_release_check_the_object(tmp_path: Path) -> None:
    """The daemon's page-mode calls (they read the slow tier's pages in the mapping), read_rows and a
    ring's release check the object like the other daemon calls: a shrunk object is one line each
    (they returned -EFAULT statuses, garbage nodes or success)."""
    p = Pool.create(_name(), tables=[(4096, 16)], slots=64, slow="numa:0")
    daemon = Pool.attach(p.name, role="daemon")
    size = (SHM / p.name).stat().st_size
    try:
        os.truncate(SHM / p.name, size - 65536)
        calls = [lambda: daemon.slow_pages(0), lambda: daemon.slow_page_nodes(0, [0, 1]),
                 lambda: daemon.move_slow_pages(0, [0], 0), lambda: daemon.slow_nodes(0, [0]),
                 lambda: daemon.move_slow_rows(0, 0, 1, 0), lambda: daemon.read_rows(0, [0]),
                 lambda: daemon.release_ring(0)]
        for call in calls:
            with pytest.raises(PoolError, match="shrank to"):
                call()
    finally:
        os.truncate(SHM / p.name, size)
        daemon.close()
        p.destroy()
