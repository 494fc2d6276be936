"""The control socket and recmgctl against a real daemon process: every command, and requests that
are garbage, oversized or of the wrong version get error answers while the daemon stays up."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from test_daemon_plugin import (
    REPO,
    daemon_env,
    raw_request,
    start_daemon,
    stop_daemon,
    wait_socket,
    write_config,
)

from recmgd.cli import recmgctl
from recmgd.daemon.control import CommandError, ControlUnavailable, request
from recmgd.errors import RecmgError
from recmgd.shm import SHM_DIR, huge_mode


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    d = Path(tempfile.mkdtemp(prefix="recmgd-ctl-"))
    os.chmod(d, 0o755)
    sock = d / "control.sock"
    cfg = write_config(d / "recmgd.toml", "", socket_path=sock, extra_top="pools = ['not-there']\n")
    cfg.write_text(cfg.read_text().replace("[control]\n", "[control]\nmax_request = 1024\n"))
    proc = start_daemon(cfg, daemon_env(), args=("--step-mode",))
    try:
        wait_socket(sock, proc, timeout=60)
        yield proc, sock, cfg
    finally:
        rc, err = stop_daemon(proc, sig=signal.SIGINT)  # SIGINT stops as cleanly as SIGTERM
        shutil.rmtree(d, ignore_errors=True)
        assert rc == 0, err
        assert "stopping" in err and not sock.exists()


def alive(proc: subprocess.Popen, sock: Path) -> None:
    assert proc.poll() is None
    assert "daemon" in request(str(sock), "stats")


def ctl(sock: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = recmgctl.main(["--socket", str(sock), *args])
    return rc, out.getvalue(), err.getvalue()


def test_socket_mode(daemon) -> None:
    _, sock, _ = daemon
    assert (os.stat(sock).st_mode & 0o777) == 0o660


def test_stats_and_pools(daemon) -> None:
    proc, sock, cfg = daemon
    st = request(str(sock), "stats")
    assert st["daemon"]["pid"] == proc.pid and st["daemon"]["config"] == str(cfg)
    assert st["daemon"]["waiting_for"] == ["not-there"] and st["pools"] == {}
    assert st["daemon"]["step_mode"] is True  # --step-mode
    assert st["daemon"]["shm_huge"] == huge_mode()  # the tmpfs pools live on, as the mount table says
    assert request(str(sock), "pools") == [{"name": "not-there", "waiting": True, "error": None}]
    rc, out, _ = ctl(sock, "stats")
    assert rc == 0 and f"recmgd pid {proc.pid}" in out and "waiting for pools: not-there" in out
    assert "step mode" in out and f"{SHM_DIR} huge={huge_mode()}" in out
    rc, out, _ = ctl(sock, "stats", "--json")
    assert rc == 0 and json.loads(out)["daemon"]["pid"] == proc.pid
    rc, out, _ = ctl(sock, "pools")
    assert rc == 0 and out.strip() == "not-there: waiting for the pool"
    rc, out, _ = ctl(sock, "pools", "--json")
    assert rc == 0 and json.loads(out)[0]["name"] == "not-there"


def test_stats_watch(daemon) -> None:
    _, sock, _ = daemon
    r = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), "stats",
                          "--json", "--watch", "0.1"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines = [r.stdout.readline() for _ in range(3)]
    r.terminate()
    r.wait(10)
    ticks = [json.loads(line)["daemon"]["ticks"] for line in lines]
    assert ticks == sorted(ticks) and ticks[0] < ticks[-1]


def test_reload_pause_resume_policy(daemon) -> None:
    proc, sock, cfg = daemon
    n = request(str(sock), "stats")["daemon"]["reloads"]
    rc, out, _ = ctl(sock, "reload")
    assert rc == 0 and out.strip() == f"reloaded {cfg}"
    assert request(str(sock), "stats")["daemon"]["reloads"] == n + 1
    good = cfg.read_text()
    try:
        cfg.write_text(good.replace("[control]\n", "[control]\nmode = 'rw'\n"))
        rc, _, err = ctl(sock, "reload")
        assert rc == 1 and "reload failed, the running configuration is kept" in err
        assert f"{cfg}: control.mode: impossible value 'rw'" in err
    finally:
        cfg.write_text(good)
    st = request(str(sock), "stats")["daemon"]
    assert st["reloads"] == n + 1 and "control.mode" in st["last_reload_error"]
    for args, msg in ((("pause", "p0"), "no such pool 'p0'"), (("resume", "p0"), "no such pool 'p0'"),
                      (("policy", "p0", "daemon-test-lru"), "no such pool 'p0'")):
        rc, _, err = ctl(sock, *args)
        assert rc == 1 and msg in err, err
    with pytest.raises(CommandError, match="missing argument \"pool\""):
        request(str(sock), "pause")
    alive(proc, sock)


@pytest.mark.parametrize("payload,expect", [
    (b"hello\n", "malformed request: not a JSON object"),
    (b"[1, 2]\n", "malformed request: not a JSON object"),
    (b"\x00\xff\xfe garbage\n", "malformed request"),
    (b'{"cmd": "stats"}\n', "unsupported protocol version None"),
    (b'{"version": 2, "cmd": "stats"}\n', "unsupported protocol version 2"),
    (b'{"version": "1", "cmd": "stats"}\n', "unsupported protocol version '1'"),
    (b'{"version": 1}\n', "\"cmd\" must be a string"),
    (b'{"version": 1, "cmd": "format-disk"}\n', "unknown command 'format-disk'"),
    (b'{"version": 1, "cmd": "stats", "args": [1]}\n', "\"args\" must be an object"),
    (b'{"version": 1, "cmd": "stats", "extra": 1}\n', "unknown field 'extra'"),
    (b'{"version": 1, "cmd": "pause", "args": {"pool": 7}}\n', "missing argument \"pool\""),
    (b'{"version": true, "cmd": "stats"}\n', "unsupported protocol version True"),
    (b'{"version": 1.0, "cmd": "stats"}\n', "unsupported protocol version 1.0"),
    (b"[" * 1010 + b"\n", "malformed request: arrays or objects nested too deeply"),
    (b'{"version": ' + b"1" * 900 + b', "cmd": "stats"}\n',
     "unsupported protocol version <an integer of about 900"),
])
def test_bad_requests_get_error_answers(daemon, payload: bytes, expect: str) -> None:
    proc, sock, _ = daemon
    answers = raw_request(sock, payload)
    assert len(answers) == 1
    a = answers[0]
    assert a["version"] == 1 and a["ok"] is False and expect in a["error"], a
    alive(proc, sock)


def test_several_requests_on_one_connection(daemon) -> None:
    proc, sock, _ = daemon
    payload = b'{"version":1,"cmd":"pools"}\nnonsense\n\n{"version":1,"cmd":"stats"}\n'
    answers = raw_request(sock, payload)
    assert [a["ok"] for a in answers] == [True, False, True]


def test_oversized_requests(daemon) -> None:
    proc, sock, _ = daemon
    # one line longer than max_request (1024 here): error answer, connection closed
    big = b'{"version":1,"cmd":"stats","args":{"x":"' + b"a" * 5000 + b'"}}\n'
    answers = raw_request(sock, big)
    assert len(answers) == 1 and not answers[0]["ok"] and "request too large" in answers[0]["error"]
    # a stream with no newline at all, larger than the limit: answered and closed without waiting for more
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock))
    try:
        s.sendall(b"x" * 200_000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert b"request too large" in data
    alive(proc, sock)


def test_idle_and_abandoned_connections(daemon) -> None:
    proc, sock, _ = daemon
    idle = []
    for _ in range(10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        idle.append(s)
    idle[0].sendall(b'{"version":1,"cmd":"sta')  # half a request, then gone
    idle[0].close()
    alive(proc, sock)  # idle clients do not block others
    for s in idle[1:]:
        s.close()
    alive(proc, sock)


def test_permission_denied_message(daemon) -> None:
    _, sock, _ = daemon
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, try the socket (mode 0660 root:root)
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                request(str(sock), "stats")
                msg = "connected"
            except ControlUnavailable as exc:
                msg = str(exc)
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        msg = fh.read().decode()
    os.waitpid(pid, 0)
    assert msg.startswith(f"permission denied on {sock}"), msg


def test_not_running_messages(tmp_path: Path) -> None:
    rc, _, err = ctl(tmp_path / "none.sock", "stats")
    assert rc == 3
    assert err.strip() == f"recmgctl: recmgd is not running (no control socket at {tmp_path}/none.sock)"
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    rc, _, err = ctl(stale, "pools")
    assert rc == 3 and "recmgd is not running (nobody listens on" in err
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(stale), "reload"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 3 and "not running" in r.stderr
    # a --socket that names a regular file or a folder: said so (it said nobody listens there)
    (tmp_path / "plain").write_text("")
    for wrong in (tmp_path / "plain", tmp_path):
        rc, _, err = ctl(wrong, "stats")
        assert rc == 3 and err.strip() == (f"recmgctl: {wrong} is not a socket (is --socket the daemon's "
                                           "control socket?)"), err
    # durations the daemon would refuse are usage errors here
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(stale), "record", "p",
                        str(tmp_path / "t.rtrace"), "--seconds", "1e30"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "--seconds: must be a number in [0, 1e+09)" in r.stderr


def test_second_daemon_on_same_socket_refuses(daemon, tmp_path: Path) -> None:
    proc, sock, cfg = daemon
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg), "--foreground"],
                       capture_output=True, text=True, env=daemon_env(), cwd=REPO, timeout=120)
    assert r.returncode == 1 and "another recmgd is running" in r.stderr, (r.stderr, time.monotonic() - t0)
    alive(proc, sock)


def test_idle_connections_lock_nobody_out(daemon) -> None:
    """500 idle connections held: recmgctl stats still gets its answer (the longest idle give way)."""
    proc, sock, _ = daemon
    held = []
    try:
        for _ in range(500):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(s)
            deadline = time.monotonic() + 10
            while True:
                try:
                    s.connect(str(sock))
                    break
                except BlockingIOError:  # the listen backlog is full until the daemon accepts
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
        time.sleep(0.5)
        t0 = time.monotonic()
        rc, out, err = ctl(sock, "--timeout", "5", "stats")
        took = time.monotonic() - t0
        print(f"recmgctl stats with {len(held)} idle control connections held: {took:.3f} s")
        assert rc == 0 and f"recmgd pid {proc.pid}" in out, err
        assert took < 5.0
    finally:
        for s in held:
            s.close()
    alive(proc, sock)


def test_too_many_busy_connections_is_a_one_line_answer(tmp_path: Path) -> None:
    """Every slot active: a new client is refused with the daemon's reason, not a broken pipe; a silent
    connection is closed after the idle timeout."""
    from recmgd.daemon import control as control_mod

    path = tmp_path / "c.sock"
    srv = control_mod.ControlServer(str(path), 0o600, lambda cmd, args: {"cmd": cmd})
    srv.evict_idle = 60.0  # every connection counts as active for the whole test, however loaded the host
    srv.open()
    clients = []
    try:
        for _ in range(control_mod.MAX_CLIENTS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            clients.append(s)
        srv.poll(0.1)
        assert len(srv.conns) == control_mod.MAX_CLIENTS
        late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        late.settimeout(5)
        late.connect(str(path))
        srv.poll(0.1)  # all were accepted just now: none is idle enough to give way
        answer = json.loads(late.recv(4096).split(b"\n")[0])
        assert answer["ok"] is False and answer["error"].startswith(control_mod.TOO_MANY)
        late.close()
        # request() turns that answer into a one-line ControlUnavailable
        errors: list[str] = []

        def client() -> None:
            try:
                request(str(path), "stats", timeout=5)
            except ControlUnavailable as exc:
                errors.append(str(exc))

        t = threading.Thread(target=client)
        for c in clients:  # keep every slot busy
            c.sendall(b"\n")
        srv.poll(0.05)
        t.start()
        deadline = time.monotonic() + 5
        while t.is_alive() and time.monotonic() < deadline:
            srv.poll(0.01)
        t.join(5)
        assert errors and errors[0].startswith(f"recmgd on {path}: {control_mod.TOO_MANY}"), errors
        assert "\n" not in errors[0] and srv.refused >= 2
        # idle timeout: a silent connection is closed
        srv.idle_timeout = 0.2
        deadline = time.monotonic() + 5
        while srv.conns and time.monotonic() < deadline:
            srv.poll(0.05)
        assert not srv.conns
        clients[0].settimeout(5)
        assert clients[0].recv(100) == b""
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_bad_command_lines_are_one_line_errors(tmp_path: Path) -> None:
    for argv, expect in ((["--timeout", "-1", "stats"], "--timeout: '-1' must be a number of seconds > 0"),
                         (["--timeout", "0", "stats"], "must be a number of seconds > 0"),
                         (["--timeout", "soon", "stats"], "'soon' is not a number of seconds"),
                         (["--timeout", "1e300", "stats"], "<= 86400"),
                         (["stats", "--watch", "nan"], "--watch: 'nan' must be"),
                         (["frob"], "invalid choice: 'frob'"),
                         (["pause"], "required: pool")):
        r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(tmp_path / "s"),
                            *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr


def test_recmgd_bad_command_lines_are_one_line_errors() -> None:
    """recmgd's usage errors are one line too, as recmg's and recmgctl's (argparse printed its usage
    block first)."""
    for argv, expect in ((["--frob"], "unrecognized arguments: --frob"),
                         (["--log-level", "loud"],
                          "argument --log-level: invalid choice: 'loud' (choose from 'debug', 'info', "
                          "'warning', 'error')")):
        r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgd_main", *argv], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr == f"recmgd: error: {expect} (see recmgd --help)\n", (argv, r.stderr)


def test_each_program_says_its_version() -> None:
    """recmgd, recmgctl and recmg --version: the program and the installed package's version (from
    pyproject.toml through the package's metadata; none had --version)."""
    from importlib.metadata import version

    for prog, module in (("recmgd", "recmgd_main"), ("recmgctl", "recmgctl"), ("recmg", "recmg")):
        r = subprocess.run([sys.executable, "-m", f"recmgd.cli.{module}", "--version"], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0 and r.stdout == f"{prog} {version('recmgd')}\n", (prog, r.stdout, r.stderr)


def test_every_command_says_what_it_does_in_its_help() -> None:
    """`recmgctl C --help`, `recmg C --help` and `recmg trace A --help` start with the line their lists
    show, and the top-level help of recmg describes the tool (not the module's notes on its layout)."""
    import argparse

    from recmgd.cli import recmg

    top_parser = recmg.build_parser([])[0]
    trace_parser = recmg.build_parser(["trace"])[0]._subparsers._group_actions[0].choices["trace"]
    for parser, expected in ((recmgctl.build_parser(), {"stats", "record", "retrain"}),
                             (top_parser, set(recmg.SUBCOMMANDS)),
                             (trace_parser, {"convert", "stats", "synth"})):
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        listed = {a.dest: a.help for a in action._choices_actions}
        assert expected <= set(action.choices)
        for name, sub in action.choices.items():
            assert sub.description and sub.description.rstrip(".").lower() == listed[name].lower(), name
    top = top_parser.format_help()
    assert "set_argparser" not in top and "Offline work on traces and models" in top


def test_requests_that_made_the_decoder_raise_are_one_line_answers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Arrays nested 60000 deep, a version of 5000 digits: an answer that says what is wrong, and no
    traceback in the log."""
    from recmgd.daemon import control as control_mod

    path = tmp_path / "c.sock"
    srv = control_mod.ControlServer(str(path), 0o600, lambda cmd, args: {"cmd": cmd})
    srv.open()
    try:
        for payload, expect in ((b"[" * 60000 + b"\n",
                                 "malformed request: arrays or objects nested too deeply"),
                                (b'{"version": ' + b"1" * 5000 + b', "cmd": "stats"}\n',
                                 "malformed request: a number has too many digits"),
                                (b'{"version": 1, "cmd": "' + b"x" * 5000 + b'"}\n', "unknown command 'xxx")):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(payload)
            buf = b""
            deadline = time.monotonic() + 10
            with caplog.at_level(logging.DEBUG, logger="recmgd.daemon.control"):
                while b"\n" not in buf and time.monotonic() < deadline:
                    srv.poll(0.05)
                    s.setblocking(False)
                    try:
                        buf += s.recv(65536)
                    except BlockingIOError:
                        pass
            s.close()
            answer = json.loads(buf.split(b"\n")[0])
            assert answer["ok"] is False and answer["error"].startswith(expect), answer
            assert len(answer["error"]) < 200, answer
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.text
    finally:
        srv.close()


def test_control_requests_are_answered_in_turns(tmp_path: Path) -> None:
    """Every complete line of every connection is not answered within one poll: a poll works for about
    its budget, one request a connection in turn; all are answered, in order on each connection."""
    from recmgd.daemon import control as control_mod

    seen: list[tuple[int, int]] = []

    def handler(cmd: str, args: dict) -> dict:
        time.sleep(0.001)
        seen.append((args["c"], args["i"]))
        return {"c": args["c"], "i": args["i"]}

    path = tmp_path / "c.sock"
    srv = control_mod.ControlServer(str(path), 0o600, handler)
    srv.open()
    clients = []
    try:
        for c in range(8):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            s.sendall(b"".join(b'{"version":1,"cmd":"stats","args":{"c":%d,"i":%d}}\n' % (c, i)
                               for i in range(100)))
            clients.append(s)
        polls = []
        deadline = time.monotonic() + 60
        while len(seen) < 800 and time.monotonic() < deadline:
            before = len(seen)
            t0 = time.monotonic()
            srv.poll(0.05)
            polls.append((len(seen) - before, time.monotonic() - t0))
        assert len(seen) == 800
        # no poll answered everything at once: each stopped after its budget (0.02 s of 1 ms requests)
        assert max(n for n, _ in polls) < 200, polls
        # turns: the first requests of every connection come before the tenth of any
        firsts = [seen.index((c, 0)) for c in range(8)]
        assert max(firsts) < min(seen.index((c, 9)) for c in range(8)), seen[:40]
        for c, s in enumerate(clients):
            s.settimeout(10)
            buf = b""
            while buf.count(b"\n") < 100:
                buf += s.recv(65536)
            assert [json.loads(line)["result"]["i"] for line in buf.splitlines()] == list(range(100))
            assert all(json.loads(line)["result"]["c"] == c for line in buf.splitlines())
    finally:
        for s in clients:
            s.close()
        srv.close()


def _ctl_into(sock: Path, stdout: int, *args: str, buffered: bool) -> subprocess.CompletedProcess:
    """recmgctl with its stdout on the descriptor given; buffered: as a shell runs it (no
    PYTHONUNBUFFERED), where the output is written when the interpreter flushes it."""
    env = daemon_env()
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), *args],
                          stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=60)


@pytest.mark.parametrize("buffered", [False, True])
def test_an_output_that_cannot_be_written_is_one_line(daemon, buffered: bool) -> None:
    """stdout on a full device: one line naming the problem, exit 1 (it was an OSError traceback, and
    buffered, "Exception ignored" and exit 120); stdout's reader gone (`| head -0`): a quiet end."""
    proc, sock, cfg = daemon
    n = request(str(sock), "stats")["daemon"]["reloads"]
    commands = (("stats",), ("stats", "--json"), ("pools",), ("pools", "--json"), ("reload",))
    for args in commands:
        with open("/dev/full", "w") as full:
            r = _ctl_into(sock, full.fileno(), *args, buffered=buffered)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr == "recmgctl: cannot write the output: No space left on device\n", (args, r.stderr)
    for args in commands:
        rfd, wfd = os.pipe()
        os.close(rfd)  # the reader is gone before anything is written
        try:
            r = _ctl_into(sock, wfd, *args, buffered=buffered)
        finally:
            os.close(wfd)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    # the reloads were done all the same: only their line was lost
    assert request(str(sock), "stats")["daemon"]["reloads"] == n + 2
    alive(proc, sock)


def test_a_removed_socket_file_is_made_again_and_anothers_is_left_alone(tmp_path: Path) -> None:
    """The socket file removed under a running daemon (a cleanup of /run, an admin's rm): the server
    binds it again within a sweep, with its mode, and answers through it (the daemon was unreachable for
    good, and a second daemon could start beside it). A path another file took is left to it, and
    close() does not remove it (it removed whatever was at the path)."""
    from recmgd.daemon import control as control_mod

    path = tmp_path / "c.sock"
    srv = control_mod.ControlServer(str(path), 0o640, lambda cmd, args: {"cmd": cmd})
    srv.open()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            srv.poll(0.02)

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert request(str(path), "stats") == {"cmd": "stats"}
        path.unlink()
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline, "the socket file was not made again"
            time.sleep(0.05)
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and os.lstat(path).st_mode & 0o777 == 0o640
        assert request(str(path), "stats") == {"cmd": "stats"}
        other = tmp_path / "other"
        other.write_text("someone else's\n")
        os.replace(other, path)  # the path taken by another file
        time.sleep(1.5)
        assert path.read_text() == "someone else's\n"
        mode = os.stat(path).st_mode & 0o777
        with pytest.raises(RecmgError, match="holds another file now"):  # (a reload's new mode)
            srv.apply_access(0o666, "")
        assert os.stat(path).st_mode & 0o777 == mode
    finally:
        stop.set()
        t.join()
        srv.close()
    assert path.read_text() == "someone else's\n"


def test_the_retrain_line_says_a_full_window() -> None:
    """A window of whole batches may stay a few lookups under its target once full: the line says full."""
    rt = {"every_s": 60, "window_lookups": 19968, "window_target": 20000, "window_full": True, "retrains": 2,
          "switches": 1, "failures": 0, "model_dir": None, "model_age_s": None}
    assert "window 19968/20000 lookups (full), 2 retrains" in recmgctl.format_retrain(rt)
    assert "(full)" not in recmgctl.format_retrain({**rt, "window_full": False})


def test_stats_watch_waits_out_a_daemon_gone(tmp_path: Path) -> None:
    """stats --watch goes on until interrupted: a daemon not there (restarting) is said once, on stderr,
    and its stats come as soon as it answers (it exited at the first failed request)."""
    from recmgd.daemon import control as control_mod

    path = tmp_path / "w.sock"
    r = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(path), "stats",
                          "--json", "--watch", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO)
    srv = None
    stop = threading.Event()
    t = None
    try:
        line = r.stderr.readline()
        want = f"recmgctl: recmgd is not running (no control socket at {path}); still watching\n"
        assert line == want, line
        time.sleep(0.5)
        assert r.poll() is None
        srv = control_mod.ControlServer(str(path), 0o600,
                                        lambda cmd, args: {"daemon": {"ticks": 7}, "pools": {}})
        srv.open()

        def serve() -> None:
            while not stop.is_set():
                srv.poll(0.02)

        t = threading.Thread(target=serve)
        t.start()
        assert json.loads(r.stdout.readline())["daemon"]["ticks"] == 7
    finally:
        r.terminate()
        r.communicate(timeout=10)
        stop.set()
        if t is not None:
            t.join()
        if srv is not None:
            srv.close()
