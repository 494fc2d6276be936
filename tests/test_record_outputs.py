"""Where `recmgctl record` puts its trace (recmgd/fileout.py's rules for outputs), with a real daemon, real
pool and real sockets:

- a device node is written in place (a null device takes the trace, a full one is one line), as is a
  FIFO (a reader gets the whole trace), and a symbolic link is written at its target, the link kept;
- a directory is refused up front, in one line, before the daemon is asked, with nothing left behind;
- the daemon stopping (SIGTERM) during a recording completes the file: recmgctl keeps it, one line;
- a second recording to the same file while the first runs is refused without harm to the first;
- a replaced file keeps its mode (and, for root, its owner); a new file gets 0666 less the umask.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_daemon_live import config
from test_daemon_plugin import daemon_env, shut_down, start_daemon, wait_socket

from recmgd.daemon.control import CommandError, request
from recmgd.trace import open_trace

BATCH = 32


def recmgctl(sock: Path, *args: str, umask: int = -1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), *args],
                            env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            umask=umask)


def create_pool(name: str) -> object:
    from test_daemon_app import create_pool as create

    return create(name, [1000], 100, 65536)


def wait_attached(sock: Path, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in request(str(sock), "stats")["pools"]:
        assert time.monotonic() < deadline, "the daemon did not attach the pool"
        time.sleep(0.02)


def status(sock: Path, name: str) -> dict | None:
    try:
        return request(str(sock), "record", {"pool": name, "action": "status"})
    except CommandError:
        return None


def wait_recording(sock: Path, name: str, lookups: int = 0, timeout: float = 30.0) -> None:
    """Until the pool is being recorded (and the recording holds at least `lookups`)."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(sock, name)
        if st is not None and st["state"] == "recording" and st["lookups"] >= lookups:
            return
        assert time.monotonic() < deadline, f"no recording of {lookups} lookups: {st}"
        time.sleep(0.02)


def send(pool: object, n: int, seed: int) -> list[np.ndarray]:
    """n batches of BATCH lookups of table 0; their keys."""
    rng = np.random.default_rng(seed)
    sent = [rng.integers(0, 1000, BATCH) for _ in range(n)]
    for ids in sent:
        pool.embedding_bag(0, ids, np.arange(BATCH))  # type: ignore[attr-defined]
        pool.end_batch()  # type: ignore[attr-defined]
    return sent


def recorded(path: Path) -> list[np.ndarray]:
    tr = open_trace(path)
    keys, offs = np.asarray(tr.keys), np.asarray(tr.sample_offsets)
    return [keys[offs[i]:offs[i + 1]] for i in range(tr.n_samples)]


def record(sock: Path, name: str, pool: object, out: Path, n: int = 5, seed: int = 0,
           umask: int = -1) -> tuple[int, str, str, list[np.ndarray]]:
    """recmgctl record of n batches sent by this process: (exit status, stdout, stderr, batches sent)."""
    r = recmgctl(sock, "record", name, str(out), "--lookups", str(n * BATCH), umask=umask)
    try:
        wait_recording(sock, name)
    except AssertionError:
        r.kill()
        o, e = r.communicate()
        raise AssertionError(f"recmgctl: {r.returncode} {o} {e}") from None
    sent = send(pool, n, seed)
    o, e = r.communicate(timeout=60)
    return r.returncode, o, e, sent


def leftovers(d: Path) -> list[str]:
    return sorted(p for p in os.listdir(d) if ".partial" in p)


@dataclass
class Running:
    """A daemon serving one pool: its socket, the pool's name and app handle, the daemon's process;
    after the block, the daemon's exit status and stderr."""

    sock: Path
    name: str
    daemon: subprocess.Popen
    pool: object = None
    rc: int | None = None
    err: str = ""


@contextlib.contextmanager
def daemon_and_pool(tmp: Path) -> Iterator[Running]:
    """A daemon started on a new pool (attached when the block starts), shut down after the block."""
    name = f"recmgd-recout-{uuid.uuid4().hex[:8]}"
    sock = tmp / "ctl.sock"
    run = Running(sock, name, start_daemon(config(tmp / "d.toml", sock, [name])))
    try:
        wait_socket(sock, run.daemon, timeout=60)
        run.pool = create_pool(name)
        wait_attached(sock, name)
        yield run
    finally:
        run.rc, run.err = shut_down(run.daemon, name, run.pool)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, object]]:
    """One daemon and one pool for the module: (socket, pool name, pool)."""
    with daemon_and_pool(tmp_path_factory.mktemp("recout")) as run:
        yield run.sock, run.name, run.pool
    assert run.rc == 0, run.err


def test_device_outputs(live: tuple[Path, str, object], tmp_path: Path) -> None:
    sock, name, pool = live
    # device nodes of our own (the null and full devices' numbers): /dev itself is left alone
    null, full = tmp_path / "null", tmp_path / "full"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("making device nodes needs root")
    rc, out, err, _ = record(sock, name, pool, null)
    assert rc == 0, err
    assert "recorded 160 lookups in 5 batches" in out
    assert null.is_char_device() and os.major(null.stat().st_rdev) == 1
    rc, out, err, _ = record(sock, name, pool, full, seed=1)
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err, err
    assert full.is_char_device()
    assert status(sock, name)["state"] == "done"  # the daemon recorded it; the device refused it
    assert leftovers(tmp_path) == []


def test_fifo_and_symlink_outputs(live: tuple[Path, str, object], tmp_path: Path) -> None:
    sock, name, pool = live
    # a symbolic link: written at its target, the link kept
    (tmp_path / "v1").mkdir()
    target = tmp_path / "v1" / "t.rtrace"
    target.write_bytes(b"old")
    link = tmp_path / "current.rtrace"
    link.symlink_to(target)
    rc, out, err, sent = record(sock, name, pool, link, seed=3)
    assert rc == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [k.tolist() for k in recorded(target)] == [s.tolist() for s in sent]
    assert os.listdir(tmp_path / "v1") == ["t.rtrace"]
    # a FIFO: a reader gets the whole trace
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # (opened here: a test that fails cannot hang)
    os.set_blocking(rfd, True)
    keep = os.open(fifo, os.O_WRONLY)  # the reader sees the end once this and recmgctl's are closed
    chunks: list[bytes] = []

    def read() -> None:
        with os.fdopen(rfd, "rb") as src:
            chunks.append(src.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc, out, err, sent = record(sock, name, pool, fifo, seed=2)
    finally:
        os.close(keep)
        reader.join(30)
    got = tmp_path / "from-fifo.rtrace"
    got.write_bytes(b"".join(chunks))
    assert rc == 0, err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [k.tolist() for k in recorded(got)] == [s.tolist() for s in sent]
    assert leftovers(tmp_path) == []


def test_a_directory_is_refused_up_front(live: tuple[Path, str, object], tmp_path: Path) -> None:
    sock, name, _ = live
    before = status(sock, name)
    d = tmp_path / "X"
    d.mkdir()
    r = recmgctl(sock, "record", name, str(d), "--seconds", "0.5")
    out, err = r.communicate(timeout=60)
    assert r.returncode == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Is a directory" in err and "Traceback" not in err, err
    assert status(sock, name) == before  # the daemon was not asked
    assert os.listdir(d) == [] and sorted(os.listdir(tmp_path)) == ["X"]


def test_a_second_recording_to_the_same_file(live: tuple[Path, str, object], tmp_path: Path) -> None:
    sock, name, pool = live
    out = tmp_path / "same.rtrace"
    first = recmgctl(sock, "record", name, str(out), "--lookups", str(10 * BATCH))
    wait_recording(sock, name)
    sent = send(pool, 4, seed=4)
    wait_recording(sock, name, 4 * BATCH)
    second = recmgctl(sock, "record", name, str(out), "--lookups", str(BATCH))
    o2, e2 = second.communicate(timeout=60)
    assert second.returncode == 1 and "already being recorded" in e2 and len(e2.strip().splitlines()) == 1
    sent += send(pool, 6, seed=5)
    o1, e1 = first.communicate(timeout=60)
    assert first.returncode == 0, e1
    assert "recorded 320 lookups in 10 batches" in o1
    assert [k.tolist() for k in recorded(out)] == [s.tolist() for s in sent]
    assert os.listdir(tmp_path) == ["same.rtrace"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_stops_the_recording_and_keeps_it(live: tuple[Path, str, object], tmp_path: Path,
                                                   sig: int) -> None:
    """SIGTERM to recmgctl (timeout(1), a service stopping) does what ^C does: the recording is
    stopped and the trace kept. (It left the daemon recording into an orphaned temporary, and every
    later record of the pool was refused as "already being recorded".) SIGHUP (its terminal or SSH
    session gone) too: it killed recmgctl and left the daemon recording."""
    sock, name, pool = live
    out = tmp_path / "t.rtrace"
    r = recmgctl(sock, "record", name, str(out))
    wait_recording(sock, name)
    sent = send(pool, 4, 3)
    wait_recording(sock, name, 4 * BATCH)
    r.send_signal(sig)
    o, e = r.communicate(timeout=60)
    assert r.returncode == 0, e
    assert [k.tolist() for k in recorded(out)] == [s.tolist() for s in sent]
    assert status(sock, name)["state"] != "recording" and leftovers(tmp_path) == []


def test_bad_numbers_are_usage_errors(live: tuple[Path, str, object], tmp_path: Path) -> None:
    sock, name, _ = live
    for flag, value in (("--max-mb", "nan"), ("--max-mb", "inf"), ("--max-mb", "1e30"), ("--max-mb", "0"),
                        ("--seconds", "-1"), ("--seconds", "nan"), ("--lookups", "-5")):
        r = recmgctl(sock, "record", name, str(tmp_path / "x.rtrace"), flag, value)
        o, e = r.communicate(timeout=60)
        assert r.returncode == 2 and flag in e and "Traceback" not in e, (flag, value, e)
        assert len(e.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_modes_and_owners_are_kept(live: tuple[Path, str, object], tmp_path: Path) -> None:
    sock, name, pool = live
    private = tmp_path / "private.rtrace"
    private.write_bytes(b"old")
    private.chmod(0o600)
    root = os.geteuid() == 0
    if root:
        os.chown(private, 1234, 4321)
    rc, _, err, sent = record(sock, name, pool, private, seed=6)
    assert rc == 0, err
    st = private.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    if root:
        assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert [k.tolist() for k in recorded(private)] == [s.tolist() for s in sent]
    new = tmp_path / "new.rtrace"
    rc, _, err, _ = record(sock, name, pool, new, seed=7, umask=0o002)
    assert rc == 0, err
    assert stat.S_IMODE(new.stat().st_mode) == 0o664  # 0666 less the umask, as open() makes
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_daemon_stopping_completes_the_recording(sig: int, tmp_path: Path) -> None:
    """SIGTERM: the daemon completes the file as it stops, and recmgctl keeps it. SIGKILL: the file is
    not complete, and recmgctl keeps nothing (one line, exit status 3: the daemon is gone)."""
    out = tmp_path / "stopped.rtrace"
    with daemon_and_pool(tmp_path) as run:
        sock, name = run.sock, run.name
        r = recmgctl(sock, "record", name, str(out))
        wait_recording(sock, name)
        sent = send(run.pool, 20, seed=8)
        wait_recording(sock, name, 20 * BATCH)
        run.daemon.send_signal(sig)
        rout, rerr = r.communicate(timeout=60)
    rc, derr = run.rc, run.err
    assert leftovers(tmp_path) == []
    if sig == signal.SIGKILL:
        assert r.returncode == 3 and rout == ""
        assert len(rerr.strip().splitlines()) == 1 and "incomplete, no file was kept" in rerr, rerr
        assert not out.exists()
        return
    assert rc == 0, derr
    assert "done (pool detached: stopping): 640 lookups" in derr
    assert r.returncode == 0, rerr
    assert rerr == "" and len(rout.strip().splitlines()) == 1
    assert "recorded 640 lookups in 20 batches" in rout and "cut short" in rout, rout
    assert [k.tolist() for k in recorded(out)] == [s.tolist() for s in sent]


def test_a_daemon_slow_to_answer_does_not_lose_the_recording(tmp_path: Path) -> None:
    """A status request that times out (the daemon stopped with SIGSTOP for 4 x recmgctl's --timeout)
    is asked again: the trace is kept whole, with one line saying the daemon was busy. (recmgctl took
    the timeout for a daemon gone, and removed the file the daemon went on writing.)"""
    out = tmp_path / "slow.rtrace"
    with daemon_and_pool(tmp_path) as run:
        sock, name = run.sock, run.name
        r = recmgctl(sock, "--timeout", "0.5", "record", name, str(out), "--lookups", str(10 * BATCH))
        wait_recording(sock, name)
        sent = send(run.pool, 4, seed=9)
        run.daemon.send_signal(signal.SIGSTOP)
        try:
            time.sleep(2.0)
            assert r.poll() is None, r.communicate()
        finally:
            run.daemon.send_signal(signal.SIGCONT)
        sent += send(run.pool, 6, seed=10)
        o, e = r.communicate(timeout=60)
    assert r.returncode == 0, e
    assert "recorded 320 lookups in 10 batches" in o
    assert len(e.strip().splitlines()) == 1 and "did not answer within 0.5 s" in e
    assert "still following the recording" in e
    assert [k.tolist() for k in recorded(out)] == [s.tolist() for s in sent]
    assert leftovers(tmp_path) == []


def test_a_recording_whose_file_is_removed_stops(live: tuple[Path, str, object], tmp_path: Path) -> None:
    """A client that passes a file, then removes it (recmgctl giving up after its start request timed
    out): the daemon stops the recording at its next tick, so the pool can be recorded again."""
    sock, name, pool = live
    f = tmp_path / "gone.rtrace"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        request(str(sock), "record", {"pool": name, "action": "start", "path": str(f)}, fds=(fd,))
    finally:
        os.close(fd)
    send(pool, 2, seed=11)
    wait_recording(sock, name, 2 * BATCH)
    f.unlink()
    deadline = time.monotonic() + 30
    while (st := status(sock, name))["state"] == "recording":
        assert time.monotonic() < deadline, st
        time.sleep(0.02)
    assert st["reason"] == "file removed" and st["state"] == "done", st
    rc, _, err, sent = record(sock, name, pool, tmp_path / "again.rtrace", seed=12)
    assert rc == 0, err
    assert [k.tolist() for k in recorded(tmp_path / "again.rtrace")] == [s.tolist() for s in sent]


def test_a_file_removed_before_the_start_is_refused(live: tuple[Path, str, object], tmp_path: Path) -> None:
    """A client whose start request the daemon takes after the client gave up (it timed out waiting, or
    was interrupted, and removed its temporary): the file has no name, so the start is refused and the
    pool is not recorded for nobody. (It recorded into the unlinked file until the 4 GiB cap, and every
    later recording of the pool was refused.)"""
    sock, name, _ = live
    f = tmp_path / "given-up.rtrace"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    f.unlink()
    try:
        with pytest.raises(CommandError, match="has no name"):
            request(str(sock), "record", {"pool": name, "action": "start", "path": str(f)}, fds=(fd,))
    finally:
        os.close(fd)
    assert status(sock, name) is None or status(sock, name)["state"] != "recording"


def test_a_recording_nobody_follows_stops_at_its_lease(live: tuple[Path, str, object],
                                                       tmp_path: Path) -> None:
    """A recording started with a lease whose client stops asking for its status (recmgctl killed with
    SIGKILL, its file keeping its name) stops once the lease is out, its trace complete in the file;
    one whose client keeps asking goes on past it."""
    sock, name, pool = live
    f = tmp_path / "lease.rtrace"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        request(str(sock), "record", {"pool": name, "action": "start", "path": str(f), "lease": 1.0},
                fds=(fd,))
    finally:
        os.close(fd)
    sent = send(pool, 2, seed=21)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # followed: it goes on past its lease
        assert status(sock, name)["state"] == "recording"
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while True:  # no longer followed (an unanswered while: it is not asked)
        time.sleep(0.5)
        with contextlib.suppress(Exception):
            if os.path.getsize(f) and open_trace(f).n_samples == len(sent):
                break
        assert time.monotonic() < deadline, "the recording did not stop at its lease"
    st = status(sock, name)
    assert st["state"] == "done" and st["reason"] == "its client stopped following it", st
    assert [k.tolist() for k in recorded(f)] == [s.tolist() for s in sent]


def test_a_stalled_daemon_does_not_end_a_followed_recordings_lease(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease counts the daemon's own time, a tick's gap at most LEASE_GAP_MAX_S: a daemon stopped or
    stalled for longer than the lease (its client's status requests waiting in the socket) does not end
    the recording at its next tick; ticks without a status request do."""
    from recmgd.daemon import record as record_mod

    now = [1000.0]
    monkeypatch.setattr(record_mod.time, "monotonic", lambda: now[0])
    fd = os.open(tmp_path / "r.rtrace", os.O_RDWR | os.O_CREAT, 0o644)
    rec = record_mod.Recorder("p", fd, lease=2.5)
    try:
        now[0] += 600.0  # the daemon was stopped for 10 minutes
        assert not rec.lease_lapsed()
        rec.followed()  # the status requests that waited
        for _ in range(2):
            now[0] += 1.0
            assert not rec.lease_lapsed()
        now[0] += 1.0
        assert rec.lease_lapsed()  # 3 s of ticks without a request
        assert not record_mod.Recorder("q", os.dup(fd)).lease_lapsed()  # (no lease: never)
    finally:
        rec.stop()
        rec.wait()


def test_record_stop_stops_another_recmgctls_recording(live: tuple[Path, str, object],
                                                       tmp_path: Path) -> None:
    """recmgctl record POOL --stop stops a recording another recmgctl follows (which keeps the file);
    with nothing under way it says so."""
    sock, name, pool = live
    out2 = tmp_path / "stopped.rtrace"
    r = recmgctl(sock, "record", name, str(out2))
    wait_recording(sock, name)
    sent = send(pool, 2, 5)
    wait_recording(sock, name, 2 * BATCH)
    s = recmgctl(sock, "record", name, "--stop")
    so, se = s.communicate(timeout=60)
    assert s.returncode == 0 and f"stopped the recording of {name}: {2 * BATCH} lookups" in so, se
    o, e = r.communicate(timeout=60)
    assert r.returncode == 0, e
    assert [k.tolist() for k in recorded(out2)] == [s.tolist() for s in sent]
    u = recmgctl(sock, "record", name)
    uo, ue = u.communicate(timeout=60)
    assert u.returncode == 2 and "give FILE to record into, or --stop without FILE" in ue
    s = recmgctl(sock, "record", name, "--stop")  # nothing under way: said so (it said "stopped")
    so, se = s.communicate(timeout=60)
    assert s.returncode == 1 and f"pool {name}: no recording under way (the last one is done)" in se, se


def test_a_real_hang_up_keeps_the_trace(live: tuple[Path, str, object], tmp_path: Path) -> None:
    """recmgctl record on a terminal that goes away (an SSH session dropped: the terminal's other side
    closed, then SIGHUP): every write to the terminal fails from then on (EIO), and the trace is kept all
    the same (the progress line's failed write unwound the recording and removed the finished trace)."""
    sock, name, pool = live
    out = tmp_path / "pty.rtrace"
    master, slave = os.openpty()
    r = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), "record", name,
                          str(out)], env=daemon_env(), stdin=slave, stdout=slave, stderr=slave,
                         start_new_session=True)
    os.close(slave)
    try:
        wait_recording(sock, name)
        sent = send(pool, 3, 8)
        wait_recording(sock, name, 3 * BATCH)
        time.sleep(0.5)  # (a progress line or two written to the terminal)
        os.read(master, 65536)
    finally:
        os.close(master)  # the terminal is gone
    r.send_signal(signal.SIGHUP)
    assert r.wait(timeout=60) == 0
    assert [k.tolist() for k in recorded(out)] == [s.tolist() for s in sent]
    assert status(sock, name)["state"] != "recording" and leftovers(tmp_path) == []


def test_a_label_with_a_newline_stays_one_log_line(tmp_path: Path) -> None:
    """The file's name a client sends is logged: a newline in it is escaped, not a forged log line."""
    f = tmp_path / "t.rtrace"
    with daemon_and_pool(tmp_path) as run:
        fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            request(str(run.sock), "record", {"pool": run.name, "action": "start", "lookups": BATCH,
                                              "path": "x\nCRITICAL forged line"}, fds=(fd,))
        finally:
            os.close(fd)
        send(run.pool, 1, seed=13)
        wait_recording_done = time.monotonic() + 30
        while status(run.sock, run.name)["state"] == "recording":
            assert time.monotonic() < wait_recording_done
            time.sleep(0.02)
    assert run.rc == 0, run.err
    assert "x\\nCRITICAL forged line" in run.err
    assert not any(line.startswith("CRITICAL forged") for line in run.err.splitlines())
