"""The control socket: a Unix stream socket, one JSON request and one JSON answer per line.

Request:  ``{"version": 1, "cmd": "stats", "args": {...}}``
Answer:   ``{"version": 1, "ok": true, "result": ...}`` or ``{"version": 1, "ok": false, "error": "..."}``

The server is non-blocking and runs inside the daemon's single loop thread (it is polled between
ticks); a malformed, oversized or wrong-version request gets an error answer, and an oversized one
also closes its connection. Nothing a client sends can raise out of :meth:`ControlServer.poll`.
One poll answers requests for at most :data:`POLL_BUDGET` seconds, one a connection in turn (in order
on each); the rest wait for the next poll, and a connection is not read while its requests wait: a
flood of valid requests slows its own answers, not the daemon's ticks.

Connections are bounded (:data:`MAX_CLIENTS`) and cannot lock anyone out: one silent for
:data:`IDLE_TIMEOUT` seconds is closed, and when all slots are taken a new client takes the slot of
the longest-idle one (which is told why it is closed); only when every connection was active in the
last :data:`EVICT_IDLE` seconds (or has requests waiting) is the new client refused, with a one-line
"too many control connections" answer that :func:`request` reports as such.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from recmgd.daemon.config import ControlConfig
from recmgd.errors import RecmgError
from recmgd.fileout import make_dirs, remove_dirs

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
COMMANDS = ("stats", "pools", "reload", "pause", "resume", "policy", "record", "retrain")
#: file descriptors a request may carry (SCM_RIGHTS; `record` passes the file to write): more are closed
MAX_FDS = 1
MAX_CLIENTS = 64
MAX_PENDING_OUT = 1 << 22
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent (no request, nothing to send) before it is closed
EVICT_IDLE = 0.1  # a connection idle this long gives its slot to a new client when all are taken
LISTEN_BACKLOG = 64
#: the lease recmgctl record asks for: a recording whose client has not asked for its status this long
#: (seconds of the daemon's own time) is stopped (recmgd.daemon.record's module doc)
RECORD_LEASE_S = 60.0
#: the most seconds a request's duration argument (a recording's `seconds`, its `lease`) may say
MAX_REQUEST_SECONDS = 1e9
#: seconds of requests one poll answers at most (at least one request): the rest wait for the next poll,
#: so that a flood of requests cannot hold up the daemon's loop (its ticks, its watchdog pings)
POLL_BUDGET = 0.02
TOO_MANY = "too many control connections"

Handler = Callable[[str, dict[str, Any]], Any]


class CommandError(RecmgError):
    """A control request that cannot be carried out; its message is the error answer."""


class ControlUnavailable(RecmgError):
    """The client cannot reach the daemon (not running, or no permission on the socket)."""


class ControlBusy(ControlUnavailable):
    """The daemon is there but busy: it did not answer (or accept) within the timeout, or all its
    control connections were taken. Asking again later may succeed."""


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_json_default).encode() + b"\n"


def _json_default(obj: object) -> object:
    # numpy scalars and arrays, without importing numpy here
    if hasattr(obj, "tolist"):
        return obj.tolist()  # type: ignore[no-any-return]
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def error_answer(message: str) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "ok": False, "error": message}


def _show(value: object, limit: int = 60) -> str:
    """A value a client sent, as an error answer shows it: short (a huge integer by its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "[...]"


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Check one request line; raises CommandError with the message to answer."""
    try:
        req = json.loads(line)
    except UnicodeDecodeError as exc:
        raise CommandError(f"malformed request: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"malformed request: not a JSON object ({exc.msg} at character "
                           f"{exc.pos})") from None
    except ValueError:  # a number of more digits than int() takes (sys.get_int_max_str_digits)
        raise CommandError("malformed request: a number has too many digits") from None
    except RecursionError:
        raise CommandError("malformed request: arrays or objects nested too deeply") from None
    if not isinstance(req, dict):
        raise CommandError("malformed request: not a JSON object")
    version = req.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true is no version (nor is 1.0)
        raise CommandError(f"unsupported protocol version {_show(version)} "
                           f"(this daemon speaks {PROTOCOL_VERSION}, an integer)")
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        raise CommandError("malformed request: \"cmd\" must be a string")
    if cmd not in COMMANDS:
        raise CommandError(f"unknown command {_show(cmd)} (known: {', '.join(COMMANDS)})")
    args = req.get("args", {})
    if not isinstance(args, dict):
        raise CommandError("malformed request: \"args\" must be an object")
    unknown = set(req) - {"version", "cmd", "args"}
    if unknown:
        raise CommandError(f"malformed request: unknown field {_show(sorted(unknown)[0])}")
    return cmd, args


def peer_ids(sock: socket.socket) -> tuple[int, int] | None:
    """The (uid, gid) of the process at the other end of a Unix socket, as the kernel recorded them when
    it connected (SO_PEERCRED); None where the kernel cannot say."""
    try:
        _pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except OSError:
        return None
    return uid, gid


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "closing", "eof", "queued", "last", "fds", "peer")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.peer = peer_ids(sock)  # the client's (uid, gid), for the handler (ControlServer.peer)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False
        self.eof = False  # the peer closed its side: what is left in inbuf is answered, then it is closed
        self.queued = False  # in the server's queue of connections with a request to answer
        self.last = now  # monotonic time of its last request bytes or answer bytes sent
        self.fds: list[int] = []  # descriptors the client passed, for its next request


class ControlServer:
    """The daemon's side of the control socket."""

    def __init__(self, path: str, mode: int, handler: Handler,
                 max_request: int = ControlConfig.max_request, group: str = "") -> None:
        self.path = path
        self.mode = mode
        self.group = group
        self.handler = handler
        self.max_request = max_request
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        # connections with a complete request (or an end) not yet answered, one request a turn
        self._queue: collections.deque[int] = collections.deque()
        self.budget_s = POLL_BUDGET
        self.listener: socket.socket | None = None
        self._made_dirs: list[str] = []  # the directories open() made for the socket (the deepest first)
        self.requests = 0
        self.errors = 0
        self._fds: list[int] = []  # the descriptors passed with the request being handled
        self._peer: tuple[int, int] | None = None  # the (uid, gid) of the client being answered
        self.refused = 0  # clients refused because every slot was busy
        self.evicted = 0  # idle connections closed to make room or after IDLE_TIMEOUT
        self.idle_timeout = IDLE_TIMEOUT
        self.evict_idle = EVICT_IDLE
        self._next_sweep = 0.0
        self._ino: int | None = None  # the socket file this server bound (its inode)
        self._path_warned = False  # the path was taken by something else (said once)

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind and listen; a stale socket file is replaced, a live daemon's is an error."""
        d = os.path.dirname(self.path)
        if d and not os.path.isdir(d):
            try:  # (the directories made here, the deepest first: close() removes them)
                self._made_dirs = [str(p) for p in make_dirs(d, 0o755)]
            except OSError as exc:
                raise RecmgError(f"control socket {self.path}: cannot create {d}: {exc.strerror}") from None
        if os.path.lexists(self.path):
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):
                raise RecmgError(f"control socket {self.path}: exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(0.5)
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: nobody listens
            else:
                raise RecmgError(f"control socket {self.path}: another recmgd is running")
            finally:
                probe.close()
        try:
            sock = self._bind()
        except BaseException:
            remove_dirs(self._made_dirs)
            raise
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, None)
        log.info("control socket at %s (mode %o)", self.path, self.mode)

    def _bind(self) -> socket.socket:
        """A listening socket bound at the path, with the mode and group (no file left on a failure)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~self.mode)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise RecmgError(f"control socket {self.path}: cannot bind: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        try:
            self._ino = os.stat(self.path).st_ino
            self.apply_access(self.mode, self.group)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:  # (a group it cannot set): no socket file left behind
            sock.close()
            self._unlink()
            raise
        return sock

    def check_path(self) -> None:
        """(Every second or so.) The socket file removed (a cleanup of /run, an admin's rm) leaves the
        daemon unreachable and lets a second daemon start beside it: bind it again. A path that another
        file or socket took is left to it (said once)."""
        if self.listener is None:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return
        if st is not None:
            if st.st_ino != self._ino and not self._path_warned:
                log.warning("control socket %s: the path now holds another file; this daemon cannot be "
                            "reached through it (restart it)", self.path)
                self._path_warned = True
            return
        try:
            sock = self._bind()
        except (RecmgError, OSError) as exc:
            if not self._path_warned:
                log.warning("control socket %s was removed and cannot be made again: %s", self.path, exc)
                self._path_warned = True
            return
        self.sel.unregister(self.listener)
        self.listener.close()  # (clients connected through it keep their connections)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, None)
        self._path_warned = False
        log.warning("control socket %s was removed; made again", self.path)

    def _unlink(self) -> None:
        """Remove the socket file, if it is still the one this server bound (never another's)."""
        try:
            if self._ino is not None and os.lstat(self.path).st_ino != self._ino:
                return
            os.unlink(self.path)
        except OSError:
            pass

    def apply_access(self, mode: int, group: str) -> None:
        """Set the socket file's mode and group (a reload's change): on this server's own file only; one
        removed meanwhile is bound again with them."""
        if self.listener is not None and self._ino is not None:  # (a running server, not open()'s bind)
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                self.mode, self.group = mode, group
                self.check_path()
                return
            except OSError as exc:
                raise RecmgError(f"control socket {self.path}: {exc.strerror or exc}") from None
            if st.st_ino != self._ino:
                raise RecmgError(f"control socket {self.path}: the path holds another file now (its mode and "
                                 "group are not this daemon's to change)")
        if group:
            import grp

            try:
                os.chown(self.path, -1, grp.getgrnam(group).gr_gid)
            except (KeyError, OSError) as exc:
                raise RecmgError(f"control socket {self.path}: cannot set group {group!r}: {exc}") from None
        os.chmod(self.path, mode)
        self.mode, self.group = mode, group

    def close(self) -> None:
        for fd in list(self.conns):
            self._drop(fd)
        if self.listener is not None:
            self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
            self._unlink()
            remove_dirs(self._made_dirs)
            self._made_dirs = []
        self.sel.close()

    def add_reader(self, fileobj: socket.socket, callback: Callable[[], None]) -> None:
        """Also wake :meth:`poll` when ``fileobj`` is readable (the daemon's signal wakeup socket)."""
        self.sel.register(fileobj, selectors.EVENT_READ, callback)

    # -- serving ----------------------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Serve whatever is ready, waiting at most ``timeout`` seconds for something to happen (not at
        all while requests wait). Requests are answered one a connection in turn, in order on each, for
        at most :attr:`budget_s` seconds a call: what is left waits for the next call."""
        if self._queue:
            timeout = 0.0
        try:
            events = self.sel.select(timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return
        for key, mask in events:
            try:
                if key.data is None:
                    self._accept()
                elif callable(key.data):
                    key.data()
                else:
                    self._serve(key.fileobj.fileno(), mask)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - a client must never take the daemon down
                log.exception("control connection failed")
                fd = key.fileobj.fileno() if key.data is not None else -1  # type: ignore[union-attr]
                if fd in self.conns:
                    self._drop(fd)
        self._work(time.monotonic() + self.budget_s)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
            self.check_path()
            self._next_sweep = now + min(1.0, self.idle_timeout / 4)

    def _sweep(self, now: float) -> None:
        """Close the connections silent for longer than the idle timeout."""
        for fd, conn in list(self.conns.items()):
            if now - conn.last > self.idle_timeout and not conn.queued:
                self.evicted += 1
                self._drop(fd)

    def _make_room(self, now: float) -> bool:
        """At the limit: close the longest-idle connection if it is idle enough; False if none is."""
        idle = [kv for kv in self.conns.items() if not kv[1].queued]  # one with requests waiting is busy
        if not idle:
            return False
        fd, conn = min(idle, key=lambda kv: kv[1].last)
        if now - conn.last < self.evict_idle:
            return False
        try:
            conn.sock.send(encode(error_answer(f"{TOO_MANY}: closed as the longest idle of {MAX_CLIENTS}")))
        except OSError:
            pass
        self.evicted += 1
        self._drop(fd)
        return True

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("control socket: cannot accept: %s", exc.strerror)
                    return
                raise
            now = time.monotonic()
            if len(self.conns) >= MAX_CLIENTS and not self._make_room(now):
                self.refused += 1
                try:
                    sock.setblocking(False)
                    sock.send(encode(error_answer(f"{TOO_MANY} ({MAX_CLIENTS} busy); try again")))
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, now)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _serve(self, fd: int, mask: int) -> None:
        conn = self.conns.get(fd)
        if conn is None or (conn.queued and not (mask & selectors.EVENT_WRITE and conn.outbuf)):
            return  # requests wait: it is sent to and read again once they are answered (_work)
        # a connection with requests waiting is not read until they are answered: what a client sends
        # meanwhile waits in the socket (it cannot make the daemon hold more than one read of it)
        if mask & selectors.EVENT_READ and not (conn.closing or conn.eof or conn.queued):
            try:
                data, fds, _flags, _addr = socket.recv_fds(conn.sock, 65536, MAX_FDS)
                conn.fds.extend(fds)
                while len(conn.fds) > MAX_FDS:
                    os.close(conn.fds.pop())
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(fd)
                return
            if data == b"":
                conn.eof = True  # peer closed its side: answer what is left (its last line), then close
                self._process_one(conn)  # (nothing waits: a connection is not read while requests do)
            elif data:
                conn.last = time.monotonic()
                conn.inbuf += data
                if b"\n" in data:
                    self._enqueue(fd, conn)
                elif len(conn.inbuf) > self.max_request:
                    self._oversized(conn)  # answered and closed without waiting for more
        self._settle(fd, conn)

    def _settle(self, fd: int, conn: _Conn) -> None:
        """Send what is pending, close a finished connection, else wait for what it needs next."""
        if conn.outbuf:
            self._flush(conn)
        if conn.closing and not conn.outbuf:
            self._drop(fd)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if conn.closing:
            want = selectors.EVENT_WRITE
        self.sel.modify(conn.sock, want, conn)

    def _enqueue(self, fd: int, conn: _Conn) -> None:
        if not conn.queued:
            conn.queued = True
            self._queue.append(fd)

    def _work(self, deadline: float) -> None:
        """Answer the waiting requests, one a connection in turn, until none waits or the deadline passed
        (at least one is answered)."""
        touched: dict[int, _Conn] = {}
        while self._queue:
            fd = self._queue.popleft()
            conn = self.conns.get(fd)
            if conn is None or not conn.queued:
                continue  # closed meanwhile (its descriptor number may be another connection's now)
            conn.queued = False
            try:
                if self._process_one(conn):
                    self._enqueue(fd, conn)
                touched[fd] = conn
            except Exception:  # noqa: BLE001 - a client must never take the daemon down
                log.exception("control connection failed")
                touched.pop(fd, None)
                self._drop(fd)
            if time.monotonic() >= deadline:
                break
        for fd, conn in touched.items():  # their answers sent once a call, not once a request
            if self.conns.get(fd) is conn:
                try:
                    self._settle(fd, conn)
                except Exception:  # noqa: BLE001
                    log.exception("control connection failed")
                    self._drop(fd)

    def _process_one(self, conn: _Conn) -> bool:
        """Answer the connection's next request (at its end, what is left); True while more wait."""
        if conn.closing:
            return False
        nl = conn.inbuf.find(b"\n")
        if nl < 0:
            if len(conn.inbuf) > self.max_request:
                self._oversized(conn)
            elif conn.eof:
                if conn.inbuf.strip():
                    self._answer(conn, bytes(conn.inbuf))
                conn.inbuf.clear()
                conn.closing = True
            return False
        if nl > self.max_request:
            self._oversized(conn)
            return False
        line = bytes(conn.inbuf[:nl])
        del conn.inbuf[: nl + 1]
        if line.strip():
            self._answer(conn, line)
        conn.last = time.monotonic()
        return not conn.closing and (conn.eof or b"\n" in conn.inbuf)

    def _oversized(self, conn: _Conn) -> None:
        self.errors += 1
        conn.outbuf += encode(error_answer(f"request too large (limit {self.max_request} bytes a line)"))
        conn.inbuf.clear()
        conn.closing = True

    def _answer(self, conn: _Conn, line: bytes) -> None:
        self.requests += 1
        self._fds, conn.fds = conn.fds, []
        self._peer = conn.peer
        try:
            cmd, args = decode_request(line)
            result = self.handler(cmd, args)
            answer = {"version": PROTOCOL_VERSION, "ok": True, "result": result}
        except RecmgError as exc:
            self.errors += 1
            answer = error_answer(str(exc))
        except Exception as exc:  # noqa: BLE001 - a handler bug is an error answer, not a crash
            self.errors += 1
            log.exception("control command failed")
            answer = error_answer(f"internal error: {type(exc).__name__}: {exc}")
        while self._fds:  # passed but not taken by the handler
            os.close(self._fds.pop())
        try:
            data = encode(answer)
        except (TypeError, ValueError) as exc:
            data = encode(error_answer(f"internal error: answer not serialisable: {exc}"))
        if len(conn.outbuf) + len(data) > MAX_PENDING_OUT:  # a client that never reads
            conn.closing = True
            conn.outbuf.clear()
            return
        conn.outbuf += data

    def _flush(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            conn.outbuf.clear()
            conn.closing = True
            return
        if n:
            conn.last = time.monotonic()
        del conn.outbuf[:n]

    def peer(self) -> tuple[int, int] | None:
        """(For a handler.) The (uid, gid) of the client whose request is being handled (SO_PEERCRED),
        None where the kernel could not say."""
        return self._peer

    def take_fd(self) -> int | None:
        """(For a handler.) The file descriptor passed with the request being handled, now the
        handler's to close; None when it carried none."""
        return self._fds.pop() if self._fds else None

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is None:
            return
        for passed in conn.fds:
            os.close(passed)
        conn.fds.clear()
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


# -- client -----------------------------------------------------------------------------------------


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return True  # (gone meanwhile: say what the connection said)


def request(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0,
            fds: tuple[int, ...] = ()) -> Any:
    """Send one command to the daemon and return its result; errors raise. ``fds``: file descriptors
    passed with the request (SCM_RIGHTS; at most MAX_FDS).

    :class:`ControlUnavailable` when the daemon cannot be reached, :class:`CommandError` when it
    answered with an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlUnavailable(f"recmgd is not running (no control socket at {path})") from None
        except ConnectionRefusedError:
            if not _is_socket(path):  # (connecting to a file that is not a socket is refused as well)
                raise ControlUnavailable(f"{path} is not a socket (is --socket the daemon's control "
                                         "socket?)") from None
            raise ControlUnavailable(f"recmgd is not running (nobody listens on {path})") from None
        except PermissionError:
            raise ControlUnavailable(
                f"permission denied on {path} (run as root or as a member of the socket's group)") from None
        except TimeoutError:  # its backlog full: it is alive and not accepting
            raise ControlBusy(f"recmgd did not accept a connection within {timeout:g} s on {path}") from None
        except OSError as exc:
            raise ControlUnavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        buf = bytearray()
        try:
            try:
                data = encode({"version": PROTOCOL_VERSION, "cmd": cmd, "args": args or {}})
                if fds:
                    sent = socket.send_fds(sock, [data], list(fds))
                    data = data[sent:]
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon closed at once (too many connections): its reason may be waiting below
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise ControlBusy(f"recmgd did not answer within {timeout:g} s on {path}") from None
        except ConnectionResetError:
            if b"\n" not in buf:  # (a daemon stopping closes its connections)
                raise ControlUnavailable(f"recmgd closed the connection on {path} without an answer (it "
                                         "stopped?)") from None
        except OSError as exc:
            if b"\n" not in buf:
                raise ControlUnavailable(f"connection to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    line, _, _ = bytes(buf).partition(b"\n")
    if not line:
        raise ControlUnavailable(f"recmgd closed the connection on {path} without an answer")
    try:
        answer = json.loads(line)
    except ValueError:
        raise CommandError("the daemon's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise CommandError("the daemon's answer is not a JSON object")
    if not answer.get("ok"):
        message = str(answer.get("error", "unknown error"))
        if message.startswith(TOO_MANY):
            raise ControlBusy(f"recmgd on {path}: {message}")
        raise CommandError(message)
    return answer.get("result")
