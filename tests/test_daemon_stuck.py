"""A stopped writer cannot freeze the daemon (issue #12): an app process stopped with SIGSTOP in the
middle of ``write_rows`` holds its pool's writer lock; the daemon, serving that pool and another one,
skips the stuck pool (``recmgctl stats`` shows it), keeps filling the other one, answers the control
socket, and stops promptly on SIGTERM.

Needs the timed writer lock of the native library (RECMG_ELOCKED / PoolLockedError): with an untimed
lock the daemon's fill blocks for as long as the writer is stopped, and this test fails.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from pool_layout import HEADER
from test_daemon_live import app, config, pstats, wait_progress, wait_until
from test_daemon_plugin import TESTS, daemon_env, start_daemon, stop_daemon, wait_socket

from recmgd.cli import recmgctl
from recmgd.daemon.control import ControlUnavailable, request

ROWS = 200_000  # table 0 of the stuck pool: one write_rows call rewrites all of it (the lock held long)

WRITER = """
import sys, numpy as np
from test_daemon_app import values
from recmgd.pool import Pool
pool = Pool.attach(sys.argv[1])
rows = np.arange(pool.tables[0].rows)
vals = values(0, rows)
print("writing", flush=True)
while True:
    pool.write_rows(0, rows, vals)  # the same values: readers never see a wrong row
"""


def stuck_in_stats(sock: Path, name: str, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = request(str(sock), "stats", timeout=5)["daemon"]["stuck"].get(name)
        except ControlUnavailable:
            st = None
        if st:
            return st
        time.sleep(0.05)
    return None


def _stopped_holding_lock(pid: int, pool: str) -> bool:
    """Whether process pid, just sent SIGSTOP, has stopped (state T in /proc/PID/stat) with the pool's
    writer lock held (the header's lock word is its pid)."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop on SIGSTOP in 5 s")
        time.sleep(0.001)
    off, fmt = HEADER["writer_lock"]
    with open(f"/dev/shm/{pool}", "rb") as fh:
        (holder,) = struct.unpack_from(fmt, fh.read(off + struct.calcsize(fmt)), off)
    return holder == pid


def _state(sock: Path, procs: dict[str, subprocess.Popen], progress: list[Path]) -> str:
    """For a failure's message: the pools the daemon serves, which processes still run (those that
    exited, with their stderr's end), and the apps' last progress."""
    try:
        lines = [f"daemon serves: {sorted(request(str(sock), 'stats', timeout=5)['pools'])}"]
    except ControlUnavailable as exc:
        lines = [f"daemon's control socket: {exc}"]
    for what, p in procs.items():
        if p.poll() is None:
            lines.append(f"{what}: running")
        else:
            err = p.stderr.read() if p.stderr else ""
            lines.append(f"{what}: exited {p.returncode}: {err[-2000:]}")
    lines += [f"{f.name}: {f.read_text() if f.exists() else '(none)'}" for f in progress]
    return "\n".join(lines)


def test_a_stopped_writer_does_not_freeze_the_daemon(tmp_path: Path, capsys) -> None:
    from test_daemon_app import create_pool

    stuck, other = f"recmgd-stuck-{uuid.uuid4().hex[:8]}", f"recmgd-other-{uuid.uuid4().hex[:8]}"
    owners = [create_pool(stuck, [ROWS, 1000], slots=500, ring_records=65536),
              create_pool(other, [5000, 1000], slots=500, ring_records=65536)]
    sock = tmp_path / "ctl.sock"
    d = start_daemon(config(tmp_path / "d.toml", sock, [stuck, other]))
    procs: list[subprocess.Popen] = []
    writer = None
    try:
        wait_socket(sock, d, timeout=60)
        wait_until(lambda: set(request(str(sock), "stats")["pools"]) == {stuck, other}, timeout=60,
                   what="both pools attached")
        pa, pb = tmp_path / "a.json", tmp_path / "b.json"
        procs.append(app("loop", "--pool", stuck, "--seed", "1", "--progress", str(pa), "--sleep", "0.002"))
        procs.append(app("loop", "--pool", other, "--seed", "2", "--progress", str(pb), "--sleep", "0.002"))
        wait_progress(pa, 0, timeout=60)
        wait_progress(pb, 0, timeout=60)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, stuck], env=daemon_env(), cwd=str(TESTS),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        time.sleep(0.2)
        # stop the writer until it is stopped holding the lock: the pool's header names the holder. A
        # SIGSTOP lands between two write_rows calls, outside the lock, in about 4 of 10 tries on the
        # development VM beside two busy loops; waiting for the daemon's report after each try (4 s, 6
        # tries) failed once in CI, so the try is judged by the lock word, and the daemon given 30 s
        held = False
        for _ in range(200):
            writer.send_signal(signal.SIGSTOP)
            held = _stopped_holding_lock(writer.pid, stuck)
            if held:
                break
            writer.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        assert held, "the writer was never stopped holding the pool's writer lock in 200 tries"
        info = stuck_in_stats(sock, stuck, timeout=30.0)
        running = {"daemon": d, "app on the stuck pool": procs[0], "app on the other pool": procs[1]}
        assert info, ("the daemon never reported the pool stuck (is the native writer lock timed?)\n"
                      + _state(sock, running, [pa, pb]))
        assert "lock" in info["error"] and info["since"] <= time.time()

        # the other pool keeps being filled, its app keeps reading correct rows
        f0 = pstats(sock, other)["fills"]
        before = wait_progress(pb, 0)["lookups"]
        wait_until(lambda: pstats(sock, other)["fills"] > f0, timeout=20, what="fills of the other pool")
        assert wait_progress(pb, before + 1000)["wrong"] == 0
        # recmgctl answers and shows the stuck pool
        t0 = time.monotonic()
        rc = recmgctl.main(["--socket", str(sock), "--timeout", "10", "stats"])
        took = time.monotonic() - t0
        out = capsys.readouterr().out
        assert rc == 0 and f"pool {stuck}: stuck since" in out, out
        print(f"recmgctl stats with a stuck pool: {took:.3f} s")
        assert stuck not in request(str(sock), "stats")["pools"]

        # SIGTERM stops the daemon promptly while the writer is still stopped
        t0 = time.monotonic()
        rc, err = stop_daemon(d, timeout=30)
        took = time.monotonic() - t0
        print(f"daemon stopped {took:.3f} s after SIGTERM")
        assert rc == 0 and "stopping" in err, err
        assert f"pool {stuck}: stuck" in err and err.count(f"pool {stuck}: stuck") == 1  # logged once
    finally:
        if writer is not None:
            writer.send_signal(signal.SIGCONT)
            writer.kill()
            writer.wait()
        for p in procs:
            p.kill()
            p.wait()
        if d.poll() is None:
            d.kill()
            d.wait()
        for o in owners:
            o.destroy()


def test_stuck_pools_are_retried_without_waiting(tmp_path: Path) -> None:
    """Pools whose writer lock a live process holds (the lock word set to a sleeping process's pid): each
    is reported stuck, tried again after 2 s, then at doubling intervals (not every 2 s), and a retry
    asks who holds the lock before anything else ("still held by process N": no lock waited for; 30
    such pools used to stall the loop by seconds, 200 ms of lock waits each every 2 s). Once the
    holder is gone, every pool is served."""
    from test_daemon_app import create_pool

    names = [f"recmgd-stk{i}-{uuid.uuid4().hex[:8]}" for i in range(4)]
    owners = [create_pool(n, [2000], slots=100, ring_records=4096) for n in names]
    holder = subprocess.Popen(["sleep", "600"])
    off, fmt = HEADER["writer_lock"]
    for n in names:
        with open(f"/dev/shm/{n}", "r+b") as fh:
            fh.seek(off)
            fh.write(struct.pack(fmt, holder.pid))
    sock = tmp_path / "ctl.sock"
    d = start_daemon(config(tmp_path / "d.toml", sock, names))
    try:
        wait_socket(sock, d, timeout=60)
        wait_until(lambda: set(request(str(sock), "stats")["pools"]) == set(names), timeout=60,
                   what="every pool attached (the lock is only needed for a write)")
        t0 = time.monotonic()

        def lookups_then_stuck() -> bool:  # the daemon's fills of what the apps read need the lock
            for o in owners:
                o.embedding_bag(0, np.arange(10), np.arange(10))
                o.end_batch()
            return set(request(str(sock), "stats")["daemon"]["stuck"]) == set(names)

        wait_until(lookups_then_stuck, timeout=60, what="every pool reported stuck")
        held = f"still held by process {holder.pid}"

        def all_asked() -> bool:
            stuck = request(str(sock), "stats")["daemon"]["stuck"]
            assert set(stuck) == set(names), stuck  # (a retry that attached would serve a held pool)
            return all(held in s["error"] for s in stuck.values())

        wait_until(all_asked, timeout=60, what="retries that ask who holds the lock")
        time.sleep(max(0.0, t0 + 9.0 - time.monotonic()))
        stuck = request(str(sock), "stats")["daemon"]["stuck"]
        # tries at about 0, 2, 6 and 14 s: at most 3 by 9 s (every 2 s: 5)
        assert set(stuck) == set(names) and all(2 <= s["tries"] <= 3 for s in stuck.values()), stuck
        holder.kill()
        holder.wait()
        wait_until(lambda: set(request(str(sock), "stats")["pools"]) == set(names), timeout=60,
                   what="every pool served once the holder is gone")
        assert request(str(sock), "stats")["daemon"]["stuck"] == {}
        rc, err = stop_daemon(d, timeout=30)
        assert rc == 0, err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if d.poll() is None:
            d.kill()
            d.wait()
        for o in owners:
            o.destroy()
