"""Helpers for the daemon tests: a tiny LRU registered as "daemon-test-lru" (a config ``plugins`` entry),
the daemon as a child process, a notify socket the test owns, and a control client. No tests here."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from recmgd.policy import Decision, Policy, StepView, register

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@register("daemon-test-lru")
class _TestLRU(Policy):
    """LRU: admit every miss, evict the least recently used (independent of recmgd.policies)."""

    name = "daemon-test-lru"

    def __init__(self) -> None:
        self.capacity = 0
        self.order: OrderedDict[int, None] = OrderedDict()

    def reset(self, capacity: int) -> None:
        self.capacity = capacity
        self.order.clear()

    def observe(self, view: StepView) -> Decision:
        admit = []
        for k, h in zip(view.keys.tolist(), view.hit.tolist(), strict=True):
            if k in self.order:
                self.order.move_to_end(k)
            elif not h:
                self.order[k] = None
                admit.append(k)
        evict = []
        while len(self.order) > self.capacity:
            k, _ = self.order.popitem(last=False)
            evict.append(k)
        if evict:
            ev = set(evict)
            admit = [k for k in admit if k not in ev]
        return Decision(evict=np.array([k for k in evict if k not in set(admit)], dtype=np.int64),
                        admit=np.array(admit, dtype=np.int64))

    def rejected(self, keys: np.ndarray) -> None:
        for k in keys.tolist():
            self.order.pop(k, None)


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def recv(self, timeout: float = 10.0) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        msg = data.decode()
        self.messages.append(msg)
        return msg

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        """Receive until a message with a line starting with ``prefix``; returns that message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None and any(line.startswith(prefix) for line in msg.splitlines()):
                return msg
        raise AssertionError(f"no {prefix!r} message within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def write_config(path: Path, text: str, *, socket_path: Path, extra_top: str = "") -> Path:
    body = (f'plugins = ["test_daemon_plugin"]\n{extra_top}\n'
            f'[control]\nsocket = "{socket_path}"\n\n[policy]\nname = "daemon-test-lru"\n\n{text}')
    path.write_text(body)
    return path


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM"):
        env.pop(k, None)
    paths = [str(TESTS), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if extra:
        env.update(extra)
    return env


def start_daemon(config: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(config),
                             "--foreground", *args],
                            env=env or daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_socket(path: Path, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"daemon exited {proc.returncode}: {err}")
        if path.exists():
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(path))
                s.close()
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"control socket {path} did not appear")


def raw_request(path: Path, payload: bytes, timeout: float = 10.0) -> list[dict]:
    """Send raw bytes; return every JSON answer line until the daemon closes or goes quiet."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    try:
        s.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.shutdown(socket.SHUT_WR) if payload.endswith(b"\n") else None
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if payload.endswith(b"\n") and buf.count(b"\n") >= payload.count(b"\n"):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    s.close()
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def stop_daemon(proc: subprocess.Popen, timeout: float = 20.0, sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def shut_down(proc: subprocess.Popen, name: str, pool: object | None = None) -> tuple[int, str]:
    """A test's teardown: the app's pool handle closed (if any), the daemon stopped, the pool's object
    unlinked (if it is still there); the daemon's exit status and stderr."""
    from recmgd.errors import PoolError
    from recmgd.pool import Pool

    if pool is not None:
        pool.close()  # type: ignore[attr-defined]
    rc, err = stop_daemon(proc)
    try:
        Pool.unlink(name)
    except PoolError:
        pass
    return rc, err
