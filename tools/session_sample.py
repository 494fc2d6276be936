"""A recmgctl session, run for real and printed as a transcript (BENCHMARKS.md, "A session (real output)").

    .venv/bin/python tools/session_sample.py [--seconds 3] [--pool dlrm0] [--zipf 1.2] [--seed 0]

What runs, each a process of its own (in a new session, so a Ctrl-C reaches only this script, which then
stops and removes everything; each child also gets SIGTERM if this script dies):
- an app process (this script, hidden ``--child create``) creates the pool ``--pool``: 2 tables of 5,000
  and 3,000 rows of 16 float32, 600 fast slots, slow tier ``dram``, seeded weights
  (recmgd.app.weights); it stays attached (ring 0) until the end and removes the pool when it goes;
- ``recmgd`` (``python -m recmgd.cli.recmgd_main --foreground``, READY=1 over a notify socket as the
  demo does), policy ``lru``, ``log_level = "info"``, its configuration and control socket in a temporary
  directory;
- a second app process (``--child lookup``) looking rows up: batches of 64 bags of 2 ids a table, ids
  Zipf(``--zipf``) over a fixed permutation of each table's rows (tools/lookup_bench_common.IdDraw),
  ``end_batch`` after each, a millisecond's pause between batches; it keeps going while the commands run.

After ``--seconds`` of lookups it runs, and prints with their real output: ``recmgctl pools``,
``recmgctl stats``, ``recmgctl pause POOL``, ``recmgctl policy POOL s3fifo``; stops the second app (and
waits for the daemon to drop it), sends recmgd SIGTERM, runs ``recmgctl stats`` again (which fails: the
daemon is not running, exit status 3), stops the first app; then prints the daemon's log (stderr at
log level info) of the run. recmgctl runs as ``python -m recmgd.cli.recmgctl`` from this checkout and is
shown as ``recmgctl``; the temporary directory is shown as /run/recmgd (the packaged daemon's socket
directory), in the commands, their output and the log; the log's timestamps are cut. Pids are real.

Exit status 0 when every step went as described, 1 otherwise (the reason on stderr), 130 on Ctrl-C or
SIGTERM; the pool, the processes and the temporary directory are removed either way (a pool of that name
that exists already is refused and left alone). Killed with SIGKILL, the script leaves its temporary
directory (/tmp/recmg-session-*); its children stop on their own and the creator removes the pool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lookup_bench_common import IdDraw  # noqa: E402  (tools/ is sys.path[0] when run as a script)
from soak import die_with_parent, end_process  # noqa: E402

from recmgd.shm import shm_path  # noqa: E402

log = logging.getLogger("session_sample")

SHOWN_DIR = "/run/recmgd"  # what the temporary directory is shown as
TABLES = (5000, 3000)
DIM = 16
SLOTS = 600
BAGS = 64  # bags a table a batch
POOLING = 2  # ids a bag
PACE_S = 0.001  # pause between batches
CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM",
                  "RECMGD_SOCKET")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class SessionError(Exception):
    """A step did not go as the session expects (its reason)."""


class Interrupted(Exception):
    """SIGTERM or SIGHUP to this script: stop and remove everything."""


# ------------------------------------------------------------------ the app processes


def _stop_event() -> threading.Event:
    """Set when stdin reaches its end (the parent closed it, or died) or on SIGTERM."""
    stop = threading.Event()

    def watch() -> None:  # (the raw descriptor: a thread blocked in a buffered read stalls the exit)
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def child_create(pool_name: str, seed: int) -> int:
    """Create the pool, write its weights, say "created" and "ready", stay attached until told to stop;
    then remove the pool."""
    from recmgd.app.weights import write_weights
    from recmgd.errors import PoolError
    from recmgd.pool import Pool

    stop = _stop_event()
    try:
        pool = Pool.create(pool_name, [(rows, DIM) for rows in TABLES], SLOTS, slow="dram")
    except PoolError as exc:  # (one of that name exists: it is left alone)
        sys.stderr.write(f"{exc}\n")
        return 1
    try:
        _say("created")
        write_weights(pool, TABLES, DIM, seed)
        _say("ready")
        while not stop.wait(0.2):
            pass
    finally:
        pool.destroy()
    return 0


def child_lookup(pool_name: str, zipf: float, seed: int) -> int:
    """Look rows up batch after batch until told to stop (says "started" after the first batch); prints
    the batches and lookups it made as JSON at the end."""
    import numpy as np

    from recmgd.pool import Pool

    stop = _stop_event()
    draws = [IdDraw(1, rows, zipf, seed=seed + t) for t, rows in enumerate(TABLES)]
    offsets = np.arange(0, BAGS * POOLING, POOLING, dtype=np.int64)
    pool = Pool.attach(pool_name)
    batches = lookups = 0
    try:
        while not stop.is_set():
            for t, draw in enumerate(draws):
                pool.embedding_bag(t, draw.ids(0, BAGS * POOLING), offsets)
            pool.end_batch()
            batches += 1
            lookups += len(TABLES) * BAGS * POOLING
            if batches == 1:
                _say("started")
            time.sleep(PACE_S)
    finally:
        pool.close()
    _say(json.dumps({"batches": batches, "lookups": lookups}))
    return 0


# ------------------------------------------------------------------ the session


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout's recmgd first, no systemd variables of ours."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


class Session:
    """Everything one run starts; ``close`` stops and removes it all, whatever state it is in."""

    def __init__(self, pool: str, seconds: float, zipf: float, seed: int, out: Callable[[str], None]) -> None:
        self.pool, self.seconds, self.zipf, self.seed = pool, seconds, zipf, seed
        self.out = out
        self.work = Path(tempfile.mkdtemp(prefix="recmg-session-"))
        self.sock = self.work / "control.sock"
        self.conf = self.work / "recmgd.toml"
        self.daemon_log = self.work / "recmgd.log"
        self.creator: subprocess.Popen[bytes] | None = None
        self.app: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None  # recmgd's notify socket (READY=1, STATUS=)
        self.created = False  # the creator made the pool (so it is ours to remove)
        self.env = child_env()

    # -------------------------------------------------------------- showing
    def shown(self, text: str) -> str:
        return text.replace(str(self.work), SHOWN_DIR)

    def ctl(self, *args: str, note: str = "") -> int:
        """Run recmgctl, print the command as typed and its real output; its exit status."""
        cmd = ["--socket", str(self.sock), *args]
        r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", *cmd], capture_output=True,
                           text=True, env=self.env, timeout=60, stdin=subprocess.DEVNULL)
        line = self.shown("$ recmgctl " + " ".join(cmd))
        self.out(f"{line:<64}# {note}" if note else line)
        for text in (r.stdout, r.stderr):
            if text:
                self.out(self.shown(text.rstrip("\n")))
        if r.returncode:
            self.out(f"(exit status {r.returncode})")
        return r.returncode

    # -------------------------------------------------------------- processes
    def _child(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        err = open(self.work / f"{name}.err", "wb")  # noqa: SIM115 (the child holds it; closed below)
        try:
            return subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--pool", self.pool, "--seed", str(self.seed),
                 *args], env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, start_new_session=True, preexec_fn=die_with_parent, cwd=str(self.work))
        finally:
            err.close()

    def _expect(self, proc: subprocess.Popen[bytes], name: str, word: str, timeout: float) -> str:
        """The next line of a child's stdout, which must be ``word``; SessionError on anything else."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    line = proc.stdout.readline().decode(errors="replace").strip()
                    if line == word:
                        return line
                    if not line:
                        rc = proc.wait(timeout=30)
                        raise SessionError(f"the {name} process exited with status {rc}: {self._err(name)}")
                    raise SessionError(f"the {name} process said {line!r}, not {word!r}: {self._err(name)}")
        raise SessionError(f"the {name} process did not say {word!r} within {timeout:g} s: {self._err(name)}")

    def _err(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.work / f"{name}.err").read_text(errors="replace").strip()[-2000:] or "(no stderr)"
        return "(no stderr)"

    def start_creator(self) -> None:
        self.creator = self._child("--child", "create", name="creator")
        # (a creator that fails to create, as for an existing pool of that name, made nothing of ours)
        self._expect(self.creator, "creator", "created", 60)
        self.created = True
        self._expect(self.creator, "creator", "ready", 60)
        log.info("pool %s created by pid %d", self.pool, self.creator.pid)

    def start_daemon(self) -> None:
        """recmgd as a child; returns once it sent READY=1 (its pool attached). Its notify socket stays
        open until it exits (it sends STATUS= lines every few seconds)."""
        from recmgd.app.e2e import wait_ready

        self.conf.write_text(f'pools = ["{self.pool}"]\nlog_level = "info"\napp_check_interval = 0.2\n'
                             f'[control]\nsocket = "{self.sock}"\n[policy]\nname = "lru"\n')
        notify = self.work / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify))
        with open(self.daemon_log, "wb") as err:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(self.conf), "--foreground"],
                env=dict(self.env, NOTIFY_SOCKET=str(notify)), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, preexec_fn=die_with_parent,
                cwd=str(self.work))
        try:
            wait_ready(self.notify, self.daemon, timeout=120)
        except RuntimeError as exc:
            raise SessionError(f"{exc}; its log: {self._log_tail()}") from None
        self.notify.setblocking(False)
        log.info("recmgd pid %d ready", self.daemon.pid)

    def drain_notify(self) -> None:
        """Read what the daemon sent on its notify socket (so that its queue never fills)."""
        while self.notify is not None:
            try:
                self.notify.recv(4096)
            except (BlockingIOError, InterruptedError):
                return

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.daemon_log.read_text(errors="replace").strip()[-2000:]
        return ""

    def start_app(self) -> None:
        self.app = self._child("--child", "lookup", "--zipf", str(self.zipf), name="app")
        self._expect(self.app, "app", "started", 60)

    def app_pids(self) -> set[int]:
        """The pids the daemon lists as the pool's apps."""
        from recmgd.daemon.control import request

        for p in request(str(self.sock), "pools", timeout=10):
            if p.get("name") == self.pool:
                return {int(a["pid"]) for a in p.get("apps", [])}
        return set()

    def wait_apps(self, want: Callable[[set[int]], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not want(pids := self.app_pids()):
            if time.monotonic() > deadline:
                raise SessionError(f"the daemon did not {what} within {timeout:g} s (its apps: "
                                   f"{sorted(pids)})")
            time.sleep(0.05)

    def stop_child(self, proc: subprocess.Popen[bytes] | None, name: str, timeout: float = 30.0) -> str:
        """Close its stdin (its cue to stop) and wait; its stdout's rest. SessionError if it fails."""
        if proc is None:
            return ""
        try:
            rest = proc.communicate(timeout=timeout)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SessionError(f"the {name} process did not stop within {timeout:g} s") from None
        if proc.returncode:
            raise SessionError(f"the {name} process exited with {proc.returncode}: {self._err(name)}")
        return rest

    def stop_daemon(self, timeout: float = 30.0) -> int:
        d = self.daemon
        assert d is not None
        self.drain_notify()
        if d.poll() is None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
                raise SessionError(f"recmgd did not stop within {timeout:g} s of SIGTERM") from None
        return d.returncode

    # -------------------------------------------------------------- the run
    def run(self) -> None:
        self.start_creator()
        self.start_daemon()
        assert self.creator is not None and self.daemon is not None
        self.wait_apps(lambda pids: self.creator is not None and self.creator.pid in pids, "list the creator")
        self.start_app()
        assert self.app is not None
        self.wait_apps(lambda pids: self.app is not None and self.app.pid in pids, "list the second app")
        time.sleep(self.seconds)
        sizes = " and ".join(f"{n:,}" for n in TABLES)
        self.out(f"# pool {self.pool}: {len(TABLES)} tables of {sizes} rows of {DIM} float32, {SLOTS} slots, "
                 f"slow tier dram, created by pid {self.creator.pid}")
        self.out(f"# recmgd pid {self.daemon.pid}, policy lru; app pid {self.app.pid} looking rows up "
                 f"(Zipf {self.zipf:g} ids) for {self.seconds:g} s so far")
        self.out(f"# (the temporary directory shown as {SHOWN_DIR}; the log's timestamps cut)")
        steps = [self.ctl("pools"), self.ctl("stats"), self.ctl("pause", self.pool),
                 self.ctl("policy", self.pool, "s3fifo")]
        if any(steps):
            raise SessionError("a recmgctl command failed (above)")
        app_pid = self.app.pid
        done = self.stop_child(self.app, "app")
        log.info("app %d stopped: %s", app_pid, done.strip())
        self.wait_apps(lambda pids: app_pid not in pids, "drop the stopped app")
        status = self.stop_daemon()
        rc = self.ctl("stats", note=f"after SIGTERM to recmgd (it exited with status {status})")
        self.stop_child(self.creator, "creator")
        if status != 0 or rc != 3:
            raise SessionError(f"recmgd exited with {status} (0 expected), recmgctl stats then with {rc} "
                               "(3 expected)")
        self.out("")
        self.out("# the daemon's log (stderr):")
        for line in self.daemon_log.read_text(errors="replace").splitlines():
            self.out(self.shown(_STAMP.sub("", line)))

    def close(self) -> list[str]:
        """Stop every process, remove the pool and the temporary directory; what had to be forced."""
        forced: list[str] = []
        for name, proc in (("app", self.app), ("recmgd", self.daemon), ("creator", self.creator)):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            if end_process(proc, 20):
                forced.append(f"{name} pid {proc.pid} killed")
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        for proc in (self.app, self.creator):
            for f in (proc.stdin, proc.stdout) if proc is not None else ():
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        if self.created and os.path.exists(shm_path(self.pool)):
            from recmgd.errors import PoolError
            from recmgd.pool import Pool

            with contextlib.suppress(PoolError):
                Pool.unlink(self.pool)
            forced.append(f"pool {self.pool} removed")
        shutil.rmtree(self.work, ignore_errors=True)
        return forced


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/session_sample.py", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of lookups before the commands")
    p.add_argument("--pool", default="dlrm0", help="the pool's name (default %(default)s; one that exists "
                   "is refused and left alone)")
    p.add_argument("--zipf", type=float, default=1.2, help="the ids' Zipf exponent (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=("create", "lookup"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 <= args.seconds <= 3600:
        p.error("--seconds: 0 to 3600")
    if not 0 <= args.zipf <= 4:
        p.error("--zipf: 0 (uniform) to 4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.child == "create":
        return child_create(args.pool, args.seed)
    if args.child == "lookup":
        return child_lookup(args.pool, args.zipf, args.seed)

    def on_signal(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)
    session = Session(args.pool, args.seconds, args.zipf, args.seed, lambda s: print(s, flush=True))
    status = 0
    try:
        session.run()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"session_sample: interrupted ({str(exc) or 'SIGINT'}); everything removed", file=sys.stderr)
        status = 130
    except SessionError as exc:
        print(f"session_sample: {exc}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup runs to its end: a second ^C would leak
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for what in session.close():
            print(f"session_sample: cleanup: {what}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
