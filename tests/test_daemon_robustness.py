"""The daemon against what stalled it: a flood of valid control requests, and pools that cannot be
attached (an object of 0 bytes, as a creator that died between shm_open and ftruncate leaves). Real
daemon processes, control sockets and a notify socket with the watchdog on: the loop goes on pinging
it, and every request is still answered, in order on each connection."""

from __future__ import annotations

import json
import selectors
import socket
import time
import uuid
from pathlib import Path

from test_daemon_plugin import NotifySocket, daemon_env, start_daemon, stop_daemon, wait_socket

import recmgd.pool as pool_mod
from recmgd.daemon.control import request
from recmgd.shm import SHM_DIR

WATCHDOG_USEC = 200_000  # a ping every 0.1 s


def config(path: Path, sock: Path, pools: list[str], log_level: str = "info") -> Path:
    path.write_text(f"pools = {json.dumps(pools)}\ninterval = 0.005\napp_check_interval = 0.1\n"
                    f"status_interval = 0.5\nlog_level = \"{log_level}\"\n"
                    f"[control]\nsocket = \"{sock}\"\n[policy]\nname = \"lru\"\n")
    return path


def wait_attached(sock: Path, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in request(str(sock), "stats")["pools"]:
        assert time.monotonic() < deadline, "the daemon did not attach the pool"
        time.sleep(0.02)


def pings(ns: NotifySocket, seconds: float) -> list[float]:
    """Arrival times of the WATCHDOG=1 pings over ``seconds``."""
    out = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        m = ns.recv(left)
        if m is not None and "WATCHDOG=1" in m.splitlines():
            out.append(time.monotonic())
    return out


def test_a_flood_of_valid_requests_does_not_stall_the_loop(tmp_path: Path) -> None:
    """63 connections each send 1000 `policy` requests at once: the loop keeps ticking (watchdog pings
    keep coming), a fresh request is answered, and all the others are, in order on each connection."""
    name = f"recmgd-rob-{uuid.uuid4().hex[:8]}"
    pool = pool_mod.Pool.create(name, tables=[(1000, 4)], slots=100, ring_records=1024)
    ns = NotifySocket(tmp_path / "notify.sock")
    sock = tmp_path / "ctl.sock"
    # (log_level warning: a line per switch would fill the stderr pipe this test reads only at the end)
    proc = start_daemon(config(tmp_path / "d.toml", sock, [name], log_level="warning"),
                        daemon_env({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}))
    clients: list[socket.socket] = []
    try:
        ns.wait_for("READY=1", timeout=60)
        wait_socket(sock, proc)
        wait_attached(sock, name)
        n_conn, n_req = 63, 1000  # and the fresh one: MAX_CLIENTS
        payloads = []
        for c in range(n_conn):
            policy = "lru" if c % 2 else "lfu"
            payloads.append(b"".join(json.dumps({"version": 1, "cmd": "policy", "args": {
                "pool": name, "name": policy}}).encode() + b"\n" for _ in range(n_req)))
        for _ in range(n_conn):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock))
            clients.append(s)
        for s, data in zip(clients, payloads, strict=True):
            s.sendall(data)
        sent = time.monotonic()
        fresh = request(str(sock), "stats", timeout=120)  # answered in its turn, not after the flood
        fresh_s = time.monotonic() - sent
        assert fresh["daemon"]["pid"] == proc.pid
        sel = selectors.DefaultSelector()
        sel.register(ns.sock, selectors.EVENT_READ, None)
        bufs = {s.fileno(): b"" for s in clients}
        for s in clients:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, s)
        ping_times = [sent]
        deadline = time.monotonic() + 300
        while any(buf.count(b"\n") < n_req for buf in bufs.values()):
            assert time.monotonic() < deadline, "the requests were not all answered"
            for key, _ in sel.select(1.0):
                if key.data is None:
                    msg = ns.sock.recv(65536).decode()
                    if "WATCHDOG=1" in msg.splitlines():
                        ping_times.append(time.monotonic())
                else:
                    s = key.data
                    try:
                        bufs[s.fileno()] += s.recv(1 << 20)
                    except BlockingIOError:
                        pass
        flood_s = time.monotonic() - sent
        sel.close()
        ping_times.append(time.monotonic())
        gap = max(b - a for a, b in zip(ping_times, ping_times[1:], strict=False))
        print(f"{n_conn * n_req} policy requests answered in {flood_s:.2f} s; a fresh request in "
              f"{fresh_s:.2f} s; longest watchdog gap {gap:.2f} s")
        # the loop pinged the watchdog all along (every 0.1 s when it is not held up): generous bound
        assert gap < 2.0, (gap, flood_s)
        for c, s in enumerate(clients):
            answers = [json.loads(line) for line in bufs[s.fileno()].splitlines()]
            assert len(answers) == n_req
            policy = "lru" if c % 2 else "lfu"
            want = {"pool": name, "policy": policy}
            assert all(a["ok"] and a["result"] == want for a in answers), answers[:3]
        assert proc.poll() is None
    finally:
        for s in clients:
            s.close()
        rc, err = stop_daemon(proc)
        ns.close()
        pool.destroy()
    assert rc == 0, err


def test_a_pool_that_cannot_be_attached_does_not_stall_the_loop(tmp_path: Path) -> None:
    """A 0-byte object named in `pools` (a creator that died before ftruncate): not waited for at each
    app check (the loop goes on pinging the watchdog), logged once, tried again with a growing delay;
    a real pool of that name is attached as soon as it appears."""
    name = f"recmgd-rob-{uuid.uuid4().hex[:8]}"
    path = Path(SHM_DIR) / name
    path.touch()
    ns = NotifySocket(tmp_path / "notify.sock")
    sock = tmp_path / "ctl.sock"
    proc = start_daemon(config(tmp_path / "d.toml", sock, [name]),
                        daemon_env({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}))
    pool = None
    try:
        ns.wait_for("READY=1", timeout=60)
        wait_socket(sock, proc)
        times = pings(ns, 3.0)
        assert len(times) >= 2
        gap = max(b - a for a, b in zip(times, times[1:], strict=False))
        assert gap < 1.0, times  # (the C attach waits 2 s for a creator: the loop would miss pings)
        (waiting,) = request(str(sock), "pools")
        assert waiting["waiting"] and "too small for a header" in waiting["error"], waiting
        # the real pool: a new object of that name, attached at the next app check
        path.unlink()
        pool = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024)
        wait_attached(sock, name, timeout=10)
    finally:
        rc, err = stop_daemon(proc)
        ns.close()
        if pool is not None:
            pool.destroy()
        path.unlink(missing_ok=True)
    assert rc == 0, err
    assert err.count("cannot attach") == 1, err
