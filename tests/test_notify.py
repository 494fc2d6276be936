"""sd_notify: the daemon as a child process, NOTIFY_SOCKET pointing at a datagram socket this test owns.

Checks the real protocol messages and their order: READY=1 (+STATUS=), WATCHDOG=1 while the loop runs
(and none while it is stuck), RELOADING=1 + MONOTONIC_USEC= then READY=1 around each reload (a bad
config keeps the old one and says why), STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest
from test_daemon_plugin import NotifySocket, daemon_env, start_daemon, stop_daemon, wait_socket, write_config

from recmgd.daemon import notify
from recmgd.daemon.control import CommandError, request

#: a pool that never appears: the daemon runs with none attached (`pools = []` is refused)
NO_POOLS = "pools = ['recmgd-notify-none']\n"


def kinds(messages: list[str]) -> list[str]:
    """The protocol events in order (WATCHDOG pings and bare STATUS updates left out)."""
    out = []
    for m in messages:
        for line in m.splitlines():
            key = line.split("=", 1)[0]
            if key in ("READY", "RELOADING", "STOPPING"):
                out.append(key)
    return out


def test_notify_protocol(tmp_path: Path) -> None:
    ns = NotifySocket(tmp_path / "notify.sock")
    sock = tmp_path / "ctl.sock"
    stall = tmp_path / "stall"
    cfg = write_config(tmp_path / "recmgd.toml", "", socket_path=sock,
                       extra_top=f"{NO_POOLS}status_interval = 0.2\n")
    env = daemon_env({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "300000",
                      "RECMGD_TEST_STALL_FILE": str(stall)})
    proc = start_daemon(cfg, env)
    try:
        first = ns.wait_for("READY=1", timeout=60)
        assert first.splitlines()[0] == "READY=1"
        assert any(line.startswith("STATUS=0 pools") for line in first.splitlines()), first
        assert kinds(ns.messages) == ["READY"]  # nothing before READY
        wait_socket(sock, proc)

        # the loop pings the watchdog every WATCHDOG_USEC/2
        t0 = time.monotonic()
        pings = 0
        while time.monotonic() - t0 < 1.0:
            m = ns.recv(0.5)
            pings += m is not None and "WATCHDOG=1" in m.splitlines()
        assert pings >= 3, ns.messages

        # a stuck loop misses it
        stall.touch()
        time.sleep(0.4)
        while ns.recv(0.05) is not None:
            pass
        t0 = time.monotonic()
        stuck = []
        while time.monotonic() - t0 < 1.0:
            m = ns.recv(0.2)
            if m is not None:
                stuck.append(m)
        assert not any("WATCHDOG=1" in m for m in stuck), stuck
        stall.unlink()
        ns.wait_for("WATCHDOG=1", timeout=5)

        # SIGHUP with a good new config: RELOADING=1 + MONOTONIC_USEC, then READY=1
        write_config(cfg, "", socket_path=sock,
                     extra_top=f"{NO_POOLS}status_interval = 0.2\nlog_level = 'debug'\n")
        before = notify.monotonic_usec()
        proc.send_signal(signal.SIGHUP)
        msg = ns.wait_for("RELOADING=1")
        fields = dict(line.split("=", 1) for line in msg.splitlines())
        assert fields["RELOADING"] == "1"
        usec = int(fields["MONOTONIC_USEC"])
        assert before <= usec <= notify.monotonic_usec()
        ns.wait_for("READY=1")
        assert request(str(sock), "stats")["daemon"]["reloads"] == 1

        # SIGHUP with a bad config: the old one keeps running and the reason is reported
        cfg.write_text("whatever = 1\n" + cfg.read_text())
        proc.send_signal(signal.SIGHUP)
        ns.wait_for("RELOADING=1")
        ready = ns.wait_for("READY=1")
        assert "last reload failed" in ready and "whatever: unknown key" in ready, ready
        st = request(str(sock), "stats")["daemon"]
        assert st["reloads"] == 1 and f"{cfg}: whatever: unknown key" in st["last_reload_error"]
        assert proc.poll() is None

        # `recmgctl reload` that moves the control socket: answered on the old one, served on the new one
        sock2 = tmp_path / "ctl2.sock"
        write_config(cfg, "", socket_path=sock2, extra_top=f"{NO_POOLS}status_interval = 0.2\n")
        assert request(str(sock), "reload")["reloads"] == 2
        ns.wait_for("READY=1")
        assert request(str(sock2), "stats")["daemon"]["last_reload_error"] is None
        assert not sock.exists()
        sock = sock2

        rc, err = stop_daemon(proc)
        ns.wait_for("STOPPING=1", timeout=5)
        assert rc == 0, err
        assert "reload failed, keeping the running configuration" in err and "whatever: unknown key" in err
        assert kinds(ns.messages) == ["READY"] + ["RELOADING", "READY"] * 3 + ["STOPPING"]
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ns.close()


def test_notifier_off_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = notify.Notifier()
    assert not n.enabled and n.watchdog_interval is None and not n.watchdog()
    n.ready("x")
    n.stopping()


def test_watchdog_for_another_pid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert notify.Notifier().watchdog_interval is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert notify.Notifier().watchdog_interval == 0.5


def test_logging_goes_to_journal_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    from systemd.journal import JournalHandler

    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        notify.setup_logging("warning")
        assert isinstance(root.handlers[0], JournalHandler) and root.level == logging.WARNING
        notify.setup_logging("info", force_stderr=True)
        assert not isinstance(root.handlers[0], JournalHandler)
        monkeypatch.delenv("INVOCATION_ID")
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        notify.setup_logging("debug")
        assert type(root.handlers[0]) is logging.StreamHandler and root.level == logging.DEBUG
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_notifier_sends_one_status_field_and_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A status with a newline cannot add a field (MAINPID=...) to the datagram; one with a NUL (which
    sd_notify cannot send) does not raise: the failure is logged once."""
    ns = NotifySocket(tmp_path / "n.sock")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", ns.path)
        n = notify.Notifier()
        n.ready("1 pool; waiting for x\nMAINPID=1")
        msg = ns.recv(5)
        assert msg is not None and msg.splitlines() == ["READY=1", "STATUS=1 pool; waiting for x\\nMAINPID=1"]
        n.status("a\u2028b\x85c\rd")
        assert ns.recv(5) == "STATUS=a\\u2028b\\x85c\\rd"
        with caplog.at_level(logging.WARNING, logger="recmgd.daemon.notify"):
            n.status("x\x00y")  # escaped: sent
            assert ns.recv(5) == "STATUS=x\\x00y"
            n._notify = lambda message: (_ for _ in ()).throw(ValueError("embedded null character"))
            n.ready("a")
            n.status("b")
            n.stopping()
        failed = [r for r in caplog.records if "sd_notify failed" in r.getMessage()]
        assert len(failed) == 1 and "embedded null character" in failed[0].getMessage()
    finally:
        ns.close()


HUGE_NUMBER = "1" + "0" * 400


def test_reload_of_a_config_that_made_the_decoder_raise(tmp_path: Path) -> None:
    """status_interval beyond a float, arrays nested 5000 deep, a key with a newline: SIGHUP and `recmgctl
    reload` keep the running configuration, say why on one line, and send READY=1 after RELOADING=1;
    the STATUS= text never holds a second field."""
    ns = NotifySocket(tmp_path / "notify.sock")
    sock = tmp_path / "ctl.sock"
    top = f"{NO_POOLS}status_interval = 0.2\n"
    cfg = write_config(tmp_path / "recmgd.toml", "", socket_path=sock, extra_top=top)
    good = cfg.read_text()
    proc = start_daemon(cfg, daemon_env({"NOTIFY_SOCKET": ns.path}))
    try:
        ns.wait_for("READY=1", timeout=60)
        wait_socket(sock, proc)
        cfg.write_text(good.replace("status_interval = 0.2", f"status_interval = {HUGE_NUMBER}"))
        proc.send_signal(signal.SIGHUP)
        ns.wait_for("RELOADING=1")
        ready = ns.wait_for("READY=1")
        assert "last reload failed" in ready and "status_interval: impossible value" in ready, ready
        assert proc.poll() is None
        st = request(str(sock), "stats")["daemon"]
        assert "status_interval: impossible value" in st["last_reload_error"] and st["reloads"] == 0

        cfg.write_text(good + "x = " + "[" * 5000 + "]" * 5000 + "\n")
        with pytest.raises(CommandError) as ei:
            request(str(sock), "reload")
        assert "reload failed, the running configuration is kept" in str(ei.value)
        assert "(syntax): arrays or tables nested too deeply" in str(ei.value)
        ns.wait_for("RELOADING=1")
        ns.wait_for("READY=1")
        assert "nested too deeply" in request(str(sock), "stats")["daemon"]["last_reload_error"]

        cfg.write_text('"zz\\nMAINPID=1" = 1\n' + good)
        proc.send_signal(signal.SIGHUP)
        ns.wait_for("RELOADING=1")
        ready = ns.wait_for("READY=1")
        assert "MAINPID=1" not in ready.splitlines() and len(ready.splitlines()) == 2, ready
        assert "'zz\\nMAINPID=1': unknown key" in ready, ready
        err = request(str(sock), "stats")["daemon"]["last_reload_error"]
        assert "\n" not in err and "'zz\\nMAINPID=1': unknown key" in err

        cfg.write_text(good)
        assert request(str(sock), "reload")["reloads"] == 1
        ns.wait_for("READY=1")
        assert proc.poll() is None
        rc, err = stop_daemon(proc)
        ns.wait_for("STOPPING=1", timeout=5)
        assert rc == 0, err
        assert "Traceback" not in err, err
        assert kinds(ns.messages) == ["READY"] + ["RELOADING", "READY"] * 4 + ["STOPPING"]
        for m in ns.messages:
            assert all(line.split("=", 1)[0] in ("READY", "RELOADING", "MONOTONIC_USEC", "STATUS",
                                                  "STOPPING", "WATCHDOG") for line in m.splitlines()), m
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ns.close()
