"""The metrics endpoint under abuse: many half-open connections cost no threads and do not stop a
real scrape; silent connections are closed after the idle timeout; bad requests get HTTP errors."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from ports import free_port

from recmgd.daemon import metrics as metrics_mod
from recmgd.daemon.metrics import MetricsServer

SNAPSHOT = {"daemon": {"ticks": 7}, "pools": {"p0": {"steps": 3, "tables": [{"table": 0, "lookups": 11}],
                                                     "guard_lru_order": 1, "guard_lru_steps": 2},
                                              "p1": {"steps": 4, "tables": []}}}  # p1: a policy with no guard


@pytest.fixture
def server():
    port = free_port()
    srv = MetricsServer(("127.0.0.1", port), lambda: SNAPSHOT)
    srv.start()
    try:
        yield srv, port
    finally:
        srv.stop()


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def test_scrape(server) -> None:
    _, port = server
    text = scrape(port)
    assert 'recmgd_steps_total{pool="p0"} 3.0' in text
    assert 'recmgd_lookups_total{pool="p0",table="0"} 11.0' in text
    assert "recmgd_ticks_total 7.0" in text
    assert 'recmgd_guard_lru_order{pool="p0"} 1.0' in text  # a learned policy's guard
    assert 'recmgd_guard_lru_order_steps_total{pool="p0"} 2.0' in text
    assert 'recmgd_steps_total{pool="p1"} 4.0' in text and 'recmgd_guard_lru_order{pool="p1"}' not in text


def test_half_open_connections_cost_no_threads(server) -> None:
    srv, port = server
    threads_before = threading.active_count()
    held = []
    try:
        for i in range(400):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:
                s.sendall(b"GET /metr")  # half a request line, then silence
            held.append(s)
        time.sleep(0.3)
        t0 = time.monotonic()
        text = scrape(port)
        print(f"scrape with {len(held)} half-open connections held: {time.monotonic() - t0:.3f} s")
        assert "recmgd_ticks_total 7.0" in text
        assert threading.active_count() == threads_before  # one serving thread, started before
        with open("/proc/self/status") as fh:
            threads = int(next(line for line in fh if line.startswith("Threads:")).split()[1])
        assert threads < 20, threads
        assert srv.dropped >= len(held) - metrics_mod.MAX_CONNECTIONS
    finally:
        for s in held:
            s.close()


def test_idle_connections_are_closed(server, monkeypatch) -> None:
    _, port = server
    monkeypatch.setattr(metrics_mod, "IDLE_TIMEOUT", 0.3)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends its head
    assert s.recv(100) == b""  # closed by the server after the idle timeout
    s.close()


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
    (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
    (b"garbage\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000, b"431"),
])
def test_bad_requests(server, request_bytes: bytes, status: bytes) -> None:
    _, port = server
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(request_bytes)
    except ConnectionResetError:
        pass
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 " + status)


def test_head_is_answered_with_gets_head(server) -> None:
    """HEAD /metrics (a health probe's request): GET's status and headers, no body (it was 405)."""
    _, port = server
    replies = []
    for method in (b"HEAD", b"GET"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(method + b" /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        replies.append(data)
    head, _, body = replies[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    length = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
    length = int(length.split(b":")[1])
    assert length > 0 and replies[1].startswith(b"HTTP/1.1 200 OK")


def test_stop_is_prompt_and_restartable(server) -> None:
    srv, port = server
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5.0
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    srv.start()
    assert "recmgd_ticks_total" in scrape(port)
    held.close()
