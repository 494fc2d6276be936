"""Soak test: a real pool, a real recmgd (learned policy, online retraining) and app processes, for long.

    .venv/bin/python tools/soak.py [--minutes 10] [--tables 8] [--rows 100000] [--dim 16] [--fraction 0.01]
        [--apps 2] [--batch 128] [--pause-ms 10] [--write-every 20] [--restart-every 60] [--drift-every 120]
        [--sample-every 5] [--poll-every 15] [--retrain-every 60] [--retrain-window 50000]
        [--slow dram] [--fd-threshold 4] [--out FILE.json] [--logs DIR] [--workdir DIR]

What runs, each a process of its own (started in a new session, so a Ctrl-C reaches only this script,
which then stops and removes everything):
- the pool: one shared-memory object (``/dev/shm/recmg-soak-PID-...``), ``--tables`` tables of ``--rows``
  rows of ``--dim`` float32, a fast tier of ``--fraction`` of the rows, slow tier ``dram`` (the memory slow
  tier) or ``ssd`` (a file in the work dir), every row written with its expected value first;
- ``recmgd`` (``python -m recmgd.cli.recmgd_main --foreground``, READY=1 over a notify socket as the demo
  does) with policy ``recmg`` and no checkpoint (LRU until its first retrain, as tests/test_retrain.py),
  ``retrain_every`` = ``--retrain-every`` s on a window of ``--retrain-window`` lookups (``epochs = 1``),
  a control socket and a Prometheus listener;
- ``--apps`` app processes (this script with a hidden ``--app-child``), each attached to the pool as an
  app, looking up batches of ``--batch`` one-row bags a table (zipf 1.1 rows hashed over the table, the
  hot set moving every ``--drift-every`` s) through ``Pool.embedding_bags`` (modes sum, mean, max in
  turn) and every 5th batch ``Pool.embedding_bags_packed``, then ``end_batch``; every row read is compared
  bit for bit with its expected value. Every ``--write-every`` batches an app rewrites 32 rows of its own
  (rows whose index modulo ``--apps`` is its slot) with ``write_rows``, flipping their sign (version 1)
  or back (version 0), and reads them back at once (lookup and ``read_rows``): those must be the version
  it wrote; any other row read may be either version, whole (a row mixing the two is wrong).
  Row value (t, r, c): the bits of a splitmix64 hash of (t, r, c) with the exponent kept in a normal
  range (no NaN, infinity, zero or subnormal), so a one-row bag of any mode returns it unchanged.

While it runs: every ``--restart-every`` s one app (the last slot; with ``--apps 2`` app0 lives the
whole run) is killed with SIGKILL and a new one started on its slot, and the script notes when the
daemon drops the dead pid from its apps (`recmgctl pools`); every ``--poll-every`` s it runs the real
``recmgctl stats``, ``recmgctl stats --json`` and ``recmgctl pools`` and scrapes ``/metrics``; every
``--sample-every`` s it samples, for recmgd and each app, RSS, RssAnon, open fds, threads (psutil and
/proc/PID/status), recmgd's children and zombies, the files and bytes in /dev/shm (this run's and all),
the daemon's state directory, and the daemon's own counters (control request ``stats``).

At the end it prints one table: start, end and max of each, and for RSS, RssAnon and fds the
least-squares slope per minute over the second half of the run (after warm-up); then the wrong rows,
the daemon's log (WARNING/ERROR lines, tracebacks), whether it still answers, and a verdict. Exit
status 1 on any wrong row, an app exiting on its own, a dead or silent daemon, a daemon that does not
stop cleanly, a dead app's ring the daemon still lists at the end, ERROR lines or tracebacks in the
daemon's log, or open fds of recmgd or of an app that lived the whole run growing by more than
``--fd-threshold`` over the second half (the least of the first three samples of the second half
against the least of the last three, so one sample taken while a control connection was open does not
count). No timing is asserted. ``--out`` writes every sample and the summary as JSON; ``--logs`` keeps
the daemon's and the apps' stderr (otherwise they live in the work dir, removed at the end, and the
daemon log's tail is printed on failure).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recmgd.shm import SHM_DIR  # noqa: E402

POOL_PREFIX = "recmg-soak-"
SIGN = np.uint32(0x80000000)
MODES = ("sum", "mean", "max")
WRITE_ROWS = 32  # rows an app rewrites at a time
PR_SET_PDEATHSIG = 1


# ------------------------------------------------------------------ expected rows


def expected_bits(table: int, rows: np.ndarray, dim: int) -> np.ndarray:
    """The float32 bits (uint32, shape (len(rows), dim)) of version 0 of the rows: a splitmix64 hash of
    (table, row, column), exponent in 97..160 (normal, finite, nonzero); version 1 is its sign flipped."""
    r = np.asarray(rows, dtype=np.uint64)
    k = ((np.uint64(table) << np.uint64(40)) | r)[:, None] * np.uint64(64) + np.arange(dim, dtype=np.uint64)
    z = k + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    x = (z & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    exp = ((x >> np.uint32(23)) & np.uint32(0x3F)) + np.uint32(97)
    return (x & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))


def wrong_rows(out_bits: np.ndarray, want: np.ndarray, version: int | None = None) -> np.ndarray:
    """Indices of the rows of ``out_bits`` that are neither version whole (or not ``version`` when given)."""
    v0 = (out_bits == want).all(axis=1)
    v1 = (out_bits == (want ^ SIGN)).all(axis=1)
    ok = v0 | v1 if version is None else (v1 if version else v0)
    return np.flatnonzero(~ok)


def batch_ids(rng: np.random.Generator, rows: int, n: int, table: int, salt: int) -> np.ndarray:
    """n row ids of one table: zipf(1.1) ranks hashed over the table (hot rows scattered), the hash salted
    by the drift phase (the hot set moves when it changes)."""
    z = np.minimum(rng.zipf(1.1, n) - 1, rows - 1).astype(np.int64)
    return (z * 2654435761 + table * 40503 + salt * 7919) % rows


# ------------------------------------------------------------------ the app process


@dataclass
class AppCounts:
    """What one app process did (written to its status file as JSON)."""

    pid: int = 0
    slot: int = 0
    batches: int = 0
    lookups: int = 0
    rows_checked: int = 0
    wrong: int = 0
    writes: int = 0
    ryw_checked: int = 0
    ryw_wrong: int = 0
    slow_checked: int = 0
    slow_wrong: int = 0
    first_wrong: list[str] = field(default_factory=list)
    done: bool = False
    error: str = ""


def write_status(path: Path, c: AppCounts) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(c.__dict__))
    os.replace(tmp, path)


def note_wrong(c: AppCounts, what: str, table: int, rows: np.ndarray, bad: np.ndarray, got: np.ndarray,
               want: np.ndarray) -> None:
    """Keep the first few wrong rows (also on stderr at once): where, and the first word got and wanted."""
    for i in bad[: max(0, 5 - len(c.first_wrong))]:
        line = (f"{what}: table {table} row {int(rows[i])}: first column 0x{int(got[i, 0]):08x}, expected "
                f"0x{int(want[i, 0]):08x} (or its sign flipped)")
        c.first_wrong.append(line)
        print(f"soak app {c.pid}: WRONG {line}", file=sys.stderr, flush=True)


def app_child(args: argparse.Namespace) -> int:
    """One app: lookups until SIGTERM (or the parent goes), every row checked; status to a JSON file."""
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)  # first: a SIGTERM while torch loads is a clean stop too
    signal.signal(signal.SIGINT, on_term)
    import torch

    from recmgd.pool import Pool

    torch.set_num_threads(1)
    slot, status = args.app_slot, Path(args.app_status)
    parent = os.getppid()
    c = AppCounts(pid=os.getpid(), slot=slot)
    rng = np.random.default_rng([args.seed, slot, os.getpid()])
    pool = Pool.attach(args.app_pool, threads=1)
    try:
        tables = list(range(len(pool.tables)))
        rows = [t.rows for t in pool.tables]
        dim = pool.tables[0].dim
        b = args.batch
        offsets = [np.arange(b, dtype=np.int64)] * len(tables)
        last_status, last_wrong = time.monotonic(), 0
        while not stop and os.getppid() == parent:
            salt = int(time.time() // args.drift_every) if args.drift_every > 0 else 0
            ids = [batch_ids(rng, rows[t], b, t, salt) for t in tables]
            mode = MODES[c.batches % len(MODES)]
            if c.batches % 5 == 4:
                out = pool.embedding_bags_packed(tables, np.concatenate(ids),
                                                 np.arange(len(tables) * b + 1, dtype=np.int64), b, mode)
                outs = [out[:, k * dim:(k + 1) * dim] for k in range(len(tables))]
            else:
                outs = pool.embedding_bags(tables, ids, offsets, mode)
            pool.end_batch()
            for t, o in zip(tables, outs, strict=True):
                bits = np.ascontiguousarray(o.numpy()).view(np.uint32)
                want = expected_bits(t, ids[t], dim)
                bad = wrong_rows(bits, want)
                if len(bad):
                    c.wrong += len(bad)
                    note_wrong(c, f"lookup ({mode})", t, ids[t], bad, bits, want)
                c.rows_checked += len(ids[t])
            c.batches += 1
            c.lookups += b * len(tables)
            if args.write_every and c.batches % args.write_every == 0:
                write_and_check(pool, c, rng, rows, dim, args.apps)
            now = time.monotonic()
            bad_now = c.wrong + c.ryw_wrong + c.slow_wrong
            if now - last_status >= 1.0 or bad_now != last_wrong:  # a wrong row: written at once
                write_status(status, c)
                last_status, last_wrong = now, bad_now
            if args.pause_ms:
                time.sleep(args.pause_ms / 1e3)
        c.done = True
    except Exception as exc:  # a lookup that raises is a finding: say what, exit 3
        c.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        write_status(status, c)
        return 3
    finally:
        pool.close()
    write_status(status, c)
    return 0


def write_and_check(pool: Any, c: AppCounts, rng: np.random.Generator, rows: list[int], dim: int,
                    slots: int) -> None:
    """Rewrite WRITE_ROWS rows of this app's own (row % slots == slot) in one table with a random version,
    then read them back (a one-row-bag lookup and read_rows): they must be that version."""
    t = int(rng.integers(0, len(rows)))
    mine = (rows[t] - c.slot + slots - 1) // slots  # rows of this slot in table t
    r = np.unique(rng.integers(0, mine, WRITE_ROWS)) * slots + c.slot
    version = int(rng.integers(0, 2))
    want = expected_bits(t, r, dim)
    pool.write_rows(t, r, (want ^ SIGN if version else want).view(np.float32))
    c.writes += 1
    out = np.ascontiguousarray(pool.embedding_bag(t, r, np.arange(len(r), dtype=np.int64), "sum").numpy())
    bits = out.view(np.uint32)
    bad = wrong_rows(bits, want, version)
    c.ryw_checked += len(r)
    if len(bad):
        c.ryw_wrong += len(bad)
        note_wrong(c, f"read-your-write lookup (version {version})", t, r, bad, bits, want)
    slow = pool.read_rows(t, r).view(np.uint32)
    bad = wrong_rows(slow, want, version)
    c.slow_checked += len(r)
    if len(bad):
        c.slow_wrong += len(bad)
        note_wrong(c, f"read-your-write read_rows (version {version})", t, r, bad, slow, want)


# ------------------------------------------------------------------ the orchestrator's pieces


def status_kib(pid: int) -> dict[str, int]:
    """RssAnon, RssShmem and VmRSS of a process in KiB (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def proc_sample(pid: int, children: bool = False) -> dict[str, Any] | None:
    """One process's RSS, RssAnon, RssShmem (MB), fds, threads, CPU seconds; None when it is gone."""
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            s: dict[str, Any] = {"pid": pid, "rss_mb": p.memory_info().rss / 1e6, "fds": p.num_fds(),
                                 "threads": p.num_threads(), "cpu_s": sum(p.cpu_times()[:2])}
            if children:
                kids = p.children(recursive=True)
                s["children"] = len(kids)
                zombies = 0
                for k in kids:
                    with contextlib.suppress(psutil.Error):
                        zombies += k.status() == psutil.STATUS_ZOMBIE
                s["zombies"] = zombies
    except psutil.Error:
        return None
    st = status_kib(pid)
    s["anon_mb"] = st.get("RssAnon", 0) / 1e3
    s["shmem_mb"] = st.get("RssShmem", 0) / 1e3
    return s


def shm_sample(prefix: str) -> dict[str, float]:
    """Files and MB in /dev/shm: all of them, and this run's (names starting with ``prefix``)."""
    files = mine = 0
    size = mine_size = 0
    with contextlib.suppress(OSError), os.scandir(SHM_DIR) as it:
        for e in it:
            try:
                n = e.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
            files += 1
            size += n
            if e.name.startswith(prefix):
                mine += 1
                mine_size += n
    return {"files": files, "mb": size / 1e6, "ours": mine, "ours_mb": mine_size / 1e6}


def dir_sample(path: Path) -> dict[str, float]:
    """Files and MB under a directory (the daemon's state: retraining windows and checkpoints)."""
    files = size = 0
    for root, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, n)).st_size
                files += 1
    return {"files": files, "mb": size / 1e6}


DAEMON_KEYS = ("steps", "lookups", "apps", "rings_released", "ring_drops", "backlog_records", "state_bytes",
               "resident", "pending_records_peak", "bad_records", "cut_batches")
RETRAIN_KEYS = ("retrains", "switches", "kept", "failures", "window_lookups")


def daemon_counters(stats: dict[str, Any], pool: str) -> dict[str, Any]:
    """The daemon's counters of interest from its ``stats`` answer."""
    d = stats.get("daemon", {})
    p = stats.get("pools", {}).get(pool) or {}
    out: dict[str, Any] = {"uptime_s": d.get("uptime_s"), "loop_lag_s": d.get("loop_lag_s"),
                           "ticks": d.get("ticks"), "policy": p.get("policy")}
    out.update({k: p.get(k) for k in DAEMON_KEYS})
    rt = p.get("retrain") or {}
    out.update({f"retrain_{k}": rt.get(k) for k in RETRAIN_KEYS})
    last = rt.get("last") or {}
    out["retrain_last"] = {k: last.get(k) for k in ("candidate_on_demand", "current_on_demand", "switched")}
    out["retrain_last_error"] = rt.get("last_error") or ""
    out["hit_rate"] = p.get("hit_rate")
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: SIGTERM to the child when this script dies (even by SIGKILL). Called in the child."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def end_process(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds; reaped either way. True
    when it had to be killed."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def slope_per_min(ts: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over ts (seconds), per minute; None with fewer than 3 points."""
    if len(ts) < 3 or max(ts) - min(ts) <= 0:
        return None
    return float(np.polyfit(np.asarray(ts) / 60.0, np.asarray(ys, dtype=float), 1)[0])


def sweep_stale(base: Path) -> list[str]:
    """Remove what earlier runs that were killed with SIGKILL left (their processes die with them, but
    not their pool or work dir): /dev/shm/recmg-soak-PID-* and BASE/recmg-soak-PID-* of dead PIDs."""
    import psutil

    gone: list[str] = []
    for where in (Path(SHM_DIR), base):
        with contextlib.suppress(OSError):
            for e in where.iterdir():
                head, _, rest = e.name.partition(POOL_PREFIX)
                pid = rest.split("-", 1)[0]
                if head or not pid.isdigit() or psutil.pid_exists(int(pid)):
                    continue
                if e.is_dir() and not e.is_symlink():
                    shutil.rmtree(e, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        e.unlink()
                gone.append(str(e))
    return gone


class Interrupted(Exception):
    """SIGTERM or SIGHUP to this script: stop, clean up, report what was measured."""


@dataclass
class App:
    """One app process (one life of a slot)."""

    slot: int
    life: int
    proc: subprocess.Popen[bytes]
    status: Path
    log: Path
    started: float
    killed_at: float | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


class Soak:
    """Everything one run starts, and what it measured; ``cleanup`` removes it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"{POOL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.swept = sweep_stale(base)
        self.work = Path(tempfile.mkdtemp(prefix=f"{POOL_PREFIX}{os.getpid()}-", dir=base))
        self.logs = Path(args.logs) if args.logs else self.work
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sock = self.work / "control.sock"
        self.state = self.work / "state"
        self.port = free_port()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None  # READY=1, then STATUS= lines (kept open, drained)
        self.notify_path = self.work / "notify.sock"
        self.notify_msgs = 0
        self.notify_last = ""
        self.daemon_log = self.logs / "recmgd.log"
        self.apps: dict[int, App] = {}
        self.lives: list[App] = []
        self.pool_created = False
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.ctl_calls = self.ctl_failed = 0
        self.ctl_failures: list[str] = []
        self.scrapes = self.scrapes_failed = 0
        self.kills: list[dict[str, Any]] = []  # pid, t, detached_after_s
        self.unexpected_exits: list[str] = []
        self.daemon_death: str = ""
        self.log_found: dict[str, Any] = {}  # the daemon log's findings, read before the work dir goes
        self.recmgctl = [str(Path(sys.executable).with_name("recmgctl"))]
        if not Path(self.recmgctl[0]).exists():
            self.recmgctl = [sys.executable, "-m", "recmgd.cli.recmgctl"]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM"):
            env.pop(k, None)
        extra = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *extra])
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        return env

    # -------------------------------------------------------------- starting
    def create_pool(self) -> int:
        """The pool with every row at version 0; its slots."""
        from recmgd.pool import Pool

        a = self.args
        slots = max(1, int(a.tables * a.rows * a.fraction))
        slow = "dram" if a.slow == "dram" else f"ssd:{self.work / 'slow.bin'}"
        pool = Pool.create(self.name, tables=[(a.rows, a.dim)] * a.tables, slots=slots, slow=slow,
                           role="daemon", rings=a.apps + 2)
        self.pool_created = True
        try:
            chunk = 65536
            for t in range(a.tables):
                for lo in range(0, a.rows, chunk):
                    r = np.arange(lo, min(lo + chunk, a.rows))
                    pool.write_rows(t, r, expected_bits(t, r, a.dim).view(np.float32))
        finally:
            pool.close()
        return slots

    def start_daemon(self) -> None:
        from recmgd.app.e2e import wait_ready

        a = self.args
        conf = self.work / "recmgd.toml"
        conf.write_text(
            f'pools = ["{self.name}"]\ninterval = 0.001\ncoalesce = 1024\nlog_level = "info"\n'
            f'app_check_interval = 0.5\nstate_dir = "{self.state}"\n'
            f'[control]\nsocket = "{self.sock}"\n[metrics]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[policy]\nname = "recmg"\nretrain_every = "{a.retrain_every}s"\n'
            f'retrain_window = {a.retrain_window}\nretrain_threads = 1\n'
            f'[policy.options]\nepochs = 1\nseed = {a.seed}\n')
        nsock = self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.bind(str(self.notify_path))
        env = dict(self.env(), NOTIFY_SOCKET=str(self.notify_path))
        with open(self.daemon_log, "ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(conf), "--foreground"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=die_with_parent, cwd=str(self.work))
        wait_ready(nsock, self.daemon, timeout=180)
        nsock.setblocking(False)

    def drain_notify(self) -> None:
        """Read what the daemon sent on its notify socket since (its STATUS= lines every few seconds)."""
        while self.notify is not None:
            try:
                msg = self.notify.recv(4096).decode(errors="replace")
            except (BlockingIOError, InterruptedError):
                return
            self.notify_msgs += 1
            for ln in msg.split("\n"):
                if ln.startswith("STATUS="):
                    self.notify_last = ln[7:]

    def wait_attached(self, timeout: float = 60.0) -> None:
        from recmgd.daemon.control import request

        deadline = time.monotonic() + timeout
        while self.name not in request(str(self.sock), "stats", timeout=10)["pools"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not attach the pool")
            time.sleep(0.1)

    def start_app(self, slot: int) -> App:
        a = self.args
        life = sum(1 for x in self.lives if x.slot == slot)
        status = self.work / f"app{slot}-{life}.json"
        log = self.logs / f"app{slot}-{life}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--app-child", "--app-pool", self.name,
               "--app-slot", str(slot), "--app-status", str(status), "--apps", str(a.apps),
               "--batch", str(a.batch), "--pause-ms", str(a.pause_ms), "--write-every", str(a.write_every),
               "--drift-every", str(a.drift_every), "--seed", str(a.seed)]
        with open(log, "ab") as f:
            proc = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                    start_new_session=True, preexec_fn=die_with_parent)
        app = App(slot, life, proc, status, log, self.elapsed())
        self.apps[slot] = app
        self.lives.append(app)
        return app

    # -------------------------------------------------------------- while it runs
    def read_counts(self, app: App) -> None:
        with contextlib.suppress(OSError, ValueError):
            app.counts = json.loads(app.status.read_text())

    def restart(self, slot: int) -> None:
        """SIGKILL the app of a slot, reap it (a zombie keeps its ring), start a new one."""
        app = self.apps[slot]
        self.read_counts(app)
        app.killed_at = self.elapsed()
        app.proc.kill()
        app.exit_code = app.proc.wait()
        self.read_counts(app)
        self.kills.append({"pid": app.proc.pid, "t": app.killed_at, "detached_after_s": None})
        self.start_app(slot)

    def check_processes(self) -> None:
        """An app that exits on its own is noted and replaced; a dead daemon ends the run."""
        for slot, app in list(self.apps.items()):
            rc = app.proc.poll()
            if rc is not None:
                app.exit_code = rc
                self.read_counts(app)
                text = app.log.read_text(errors="replace") if app.log.exists() else ""
                tail = text.strip().splitlines()[-3:]
                self.unexpected_exits.append(f"app{slot} pid {app.proc.pid} exited {rc} at "
                                             f"{self.elapsed():.0f} s: {' | '.join(tail)}")
                self.start_app(slot)
        if self.daemon is not None and self.daemon.poll() is not None and not self.daemon_death:
            self.daemon_death = f"recmgd exited {self.daemon.returncode} at {self.elapsed():.0f} s"

    def check_detached(self) -> None:
        """Whether the daemon still lists the apps killed (each noted once it no longer does)."""
        from recmgd.daemon.control import request

        pending = [k for k in self.kills if k["detached_after_s"] is None]
        if not pending:
            return
        with contextlib.suppress(Exception):  # (a failure here is seen by the sampler and the poller)
            pools = request(str(self.sock), "pools", timeout=10)
            listed = {x["pid"] for p in pools if p.get("name") == self.name for x in p.get("apps", [])}
            for k in pending:
                if k["pid"] not in listed:
                    k["detached_after_s"] = round(self.elapsed() - k["t"], 2)

    def sample(self) -> None:
        from recmgd.daemon.control import request

        assert self.daemon is not None
        s: dict[str, Any] = {"t": round(self.elapsed(), 2), "procs": {}}
        s["procs"]["recmgd"] = proc_sample(self.daemon.pid, children=True)
        for slot, app in self.apps.items():
            p = proc_sample(app.proc.pid)
            if p is not None:
                p["life"] = app.life
            s["procs"][f"app{slot}"] = p
            self.read_counts(app)
        s["shm"] = shm_sample(self.name)
        s["state"] = dir_sample(self.state)
        try:
            stats = request(str(self.sock), "stats", timeout=10)
            s["daemon"] = daemon_counters(stats, self.name)
            pools = request(str(self.sock), "pools", timeout=10)
            listed = [x["pid"] for p in pools if p.get("name") == self.name for x in p.get("apps", [])]
            s["daemon_apps"] = listed
        except Exception as exc:  # noted in the sample; the poller's recmgctl calls count the failures
            s["daemon_error"] = f"{type(exc).__name__}: {exc}"
        self.samples.append(s)

    def ctl(self, *cmd: str) -> bool:
        """Run the real recmgctl; whether it exited 0 (failures counted and kept)."""
        self.ctl_calls += 1
        try:
            r = subprocess.run([*self.recmgctl, "--socket", str(self.sock), *cmd], env=self.env(),
                               capture_output=True, text=True, timeout=60)
            ok = r.returncode == 0
            why = f"exit {r.returncode}: {r.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            ok, why = False, "no answer in 60 s"
        if not ok:
            self.ctl_failed += 1
            self.ctl_failures.append(f"{self.elapsed():.0f} s: recmgctl {' '.join(cmd)}: {why}")
        return ok

    def poll(self, n: int) -> None:
        """recmgctl stats / stats --json / pools in turn, and a /metrics scrape."""
        cmds = (("stats",), ("stats", "--json"), ("pools",))
        self.ctl(*cmds[n % len(cmds)])
        self.scrapes += 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
                if b"recmgd_steps_total" not in r.read():
                    raise ValueError("no recmgd_steps_total")
        except Exception as exc:
            self.scrapes_failed += 1
            self.ctl_failures.append(f"{self.elapsed():.0f} s: /metrics: {type(exc).__name__}: {exc}")

    def run(self) -> None:
        a = self.args
        end = a.minutes * 60.0
        restart_slot = a.apps - 1
        next_sample = next_poll = 0.0
        next_restart = a.restart_every if a.restart_every > 0 else float("inf")
        polls = 0
        while True:
            now = self.elapsed()
            self.check_processes()
            if self.daemon_death:
                self.sample()
                return
            if now >= end:
                return
            if now >= next_restart:
                self.restart(restart_slot)
                next_restart += a.restart_every
            if now >= next_sample:
                self.sample()
                next_sample += a.sample_every
            if now >= next_poll:
                self.poll(polls)
                polls += 1
                next_poll += a.poll_every
            self.check_detached()
            self.drain_notify()
            time.sleep(0.2)

    # -------------------------------------------------------------- the end
    def finish(self) -> dict[str, Any]:
        """Final sample with everything running, then: does the daemon answer; stop the apps (their final
        counts); do the daemon's apps go to none; stop the daemon (its exit status)."""
        from recmgd.daemon.control import request

        out: dict[str, Any] = {}
        if self.daemon is not None and self.daemon.poll() is None:
            self.sample()
        out["answering"] = bool(self.daemon is not None and self.daemon.poll() is None and self.ctl("stats"))
        for app in self.apps.values():
            if app.proc.poll() is None:
                app.proc.terminate()
        for app in self.apps.values():
            try:
                app.exit_code = app.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                app.proc.kill()
                app.exit_code = app.proc.wait()
            self.read_counts(app)
        out["sweep"] = self.final_sweep()
        out["apps_not_done"] = [f"app{a.slot} pid {a.proc.pid} exit {a.exit_code}" for a in self.apps.values()
                                if not a.counts.get("done")]
        stale: list[int] = []
        if out["answering"]:
            deadline = time.monotonic() + 15
            while True:
                try:
                    pools = request(str(self.sock), "pools", timeout=10)
                    stale = [x["pid"] for p in pools if p.get("name") == self.name for x in p.get("apps", [])]
                except Exception:
                    stale = []
                    break
                if not stale or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        out["stale_apps"] = stale
        out["daemon_exit"] = self.stop_daemon()
        self.log_found = log_findings(self.daemon_log)
        return out

    def final_sweep(self) -> dict[str, Any]:
        """With the apps stopped and the daemon still running: every row of every table read once by a
        lookup (fast tier or slow) and by read_rows, each a whole version."""
        from recmgd.pool import Pool

        a = self.args
        res: dict[str, Any] = {"rows": 0, "wrong": 0, "error": ""}
        try:
            pool = Pool.attach(self.name, threads=1)
            ring = pool.ring_index
        except Exception as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            return res
        try:
            for t in range(a.tables):
                for lo in range(0, a.rows, 8192):
                    r = np.arange(lo, min(lo + 8192, a.rows))
                    want = expected_bits(t, r, a.dim)
                    out = pool.embedding_bag(t, r, np.arange(len(r), dtype=np.int64), "sum")
                    res["wrong"] += len(wrong_rows(np.ascontiguousarray(out.numpy()).view(np.uint32), want))
                    res["wrong"] += len(wrong_rows(pool.read_rows(t, r).view(np.uint32), want))
                    res["rows"] += len(r)
                    pool.end_batch()
                    deadline = time.monotonic() + 10  # the daemon drains it before the next chunk: no drops
                    while pool.rings()[ring].waiting > 0 and time.monotonic() < deadline:
                        time.sleep(0.005)
        except Exception as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            pool.close()
        return res

    def stop_daemon(self) -> int | None:
        """SIGTERM, 60 s, then SIGKILL to its process group (a trainer it left too); its exit status."""
        d = self.daemon
        if d is None:
            return None
        if d.poll() is None:
            end_process(d, 60)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(d.pid, signal.SIGKILL)  # what it started and left (none when it stops cleanly)
        return d.returncode

    def cleanup(self) -> list[str]:
        """Stop every process, remove the pool, sockets and work dir; what was left to remove (a finding)."""
        left: list[str] = []
        for app in self.apps.values():
            if app.proc.poll() is None:
                app.proc.kill()
                app.proc.wait()
        if self.daemon is not None and self.daemon.poll() is None:
            self.stop_daemon()
        for app in self.lives:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(app.proc.pid, signal.SIGKILL)
        if self.pool_created:
            from recmgd.errors import PoolError
            from recmgd.pool import Pool

            try:
                Pool.unlink(self.name)
            except PoolError:
                left.append(f"the pool {self.name} was already gone")
        with contextlib.suppress(OSError), os.scandir(SHM_DIR) as it:
            for e in it:
                if e.name.startswith(self.name):
                    left.append(f"{SHM_DIR}/{e.name} left; removed")
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if not self.log_found:
            self.log_found = log_findings(self.daemon_log)
        shutil.rmtree(self.work, ignore_errors=True)
        return left


# ------------------------------------------------------------------ the report


def series(samples: list[dict[str, Any]], get: Any) -> tuple[list[float], list[float]]:
    ts, ys = [], []
    for s in samples:
        with contextlib.suppress(KeyError, TypeError):
            v = get(s)
            if v is not None:
                ts.append(float(s["t"]))
                ys.append(float(v))
    return ts, ys


def fd_growth(ts: list[float], ys: list[float], half: float) -> float | None:
    """Least of the last three samples minus least of the first three of the second half."""
    second = [y for t, y in zip(ts, ys, strict=True) if t >= half]
    if len(second) < 6:
        return None
    return min(second[-3:]) - min(second[:3])


def log_findings(path: Path) -> dict[str, Any]:
    """WARNING / ERROR / CRITICAL lines and tracebacks in the daemon's log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    found: dict[str, Any] = {"lines": len(lines)}
    for level in ("WARNING", "ERROR", "CRITICAL"):
        hits = [ln for ln in lines if f" {level} " in ln]
        found[level.lower()] = len(hits)
        found[f"{level.lower()}_first"] = hits[:5]
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback")]
    found["tracebacks"] = len(tb)
    found["traceback_first"] = lines[tb[0]:tb[0] + 30] if tb else []
    found["tail"] = lines[-20:]
    return found


def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def report(soak: Soak, end: dict[str, Any], leftovers: list[str], interrupted: str) -> tuple[str, list[str]]:
    """The table and the findings; (text, reasons to fail)."""
    a, samples = soak.args, soak.samples
    duration = samples[-1]["t"] if samples else 0.0
    half = duration / 2
    lines = []
    app_slots = sorted({int(k[3:]) for s in samples for k in s["procs"] if k.startswith("app")})
    lives = {slot: sum(1 for x in soak.lives if x.slot == slot) for slot in app_slots}
    lines.append(f"soak: {duration / 60:.1f} min, pool {soak.name}: {a.tables} tables x {a.rows:,} rows x "
                 f"dim {a.dim} float32, {int(a.tables * a.rows * a.fraction):,} slots, slow {a.slow}; recmgd "
                 f"policy recmg, retrain every {a.retrain_every:g} s on {a.retrain_window:,} lookups; "
                 f"{a.apps} apps ({', '.join(f'app{s}: {lives[s]} lives' for s in app_slots)}); "
                 f"{len(samples)} samples")
    head = f"{'what':<28}{'start':>12}{'end':>12}{'max':>12}{'slope/min (2nd half)':>22}"
    lines += ["", head, "-" * len(head)]
    fails: list[str] = []
    metrics = [("rss MB", "rss_mb", True, 1), ("RssAnon MB", "anon_mb", True, 1),
               ("RssShmem MB", "shmem_mb", False, 1), ("fds", "fds", True, 0),
               ("threads", "threads", False, 0), ("cpu s", "cpu_s", False, 0)]
    procs = ["recmgd"] + [f"app{s}" for s in app_slots]
    growth: dict[str, float | None] = {}
    for proc in procs:
        restarted = proc != "recmgd" and lives.get(int(proc[3:]), 1) > 1
        for label, key, sloped, d in metrics:
            ts, ys = series(samples, lambda s, p=proc, k=key: s["procs"][p][k])
            if not ys:
                continue
            slope = None
            if sloped and not restarted:
                tt = [t for t in ts if t >= half]
                slope = slope_per_min(tt, ys[len(ts) - len(tt):])
            name = f"{proc}{' (all lives)' if restarted else ''} {label}"
            lines.append(f"{name:<28}{fmt(ys[0], d):>12}{fmt(ys[-1], d):>12}{fmt(max(ys), d):>12}"
                         f"{fmt(slope, 2):>22}")
            if key == "fds" and not restarted:
                growth[proc] = fd_growth(ts, ys, half)
        if proc == "recmgd":
            for label, key in (("children", "children"), ("zombies", "zombies")):
                ts, ys = series(samples, lambda s, k=key: s["procs"]["recmgd"][k])
                if ys:
                    lines.append(f"{'recmgd ' + label:<28}{fmt(ys[0]):>12}{fmt(ys[-1]):>12}{fmt(max(ys)):>12}"
                                 f"{'-':>22}")
    for label, get, d in (("/dev/shm files (all)", lambda s: s["shm"]["files"], 0),
                          ("/dev/shm MB (all)", lambda s: s["shm"]["mb"], 1),
                          ("/dev/shm files (this run)", lambda s: s["shm"]["ours"], 0),
                          ("/dev/shm MB (this run)", lambda s: s["shm"]["ours_mb"], 1),
                          ("state dir files", lambda s: s["state"]["files"], 0),
                          ("state dir MB", lambda s: s["state"]["mb"], 1)):
        ts, ys = series(samples, get)
        if ys:
            lines.append(f"{label:<28}{fmt(ys[0], d):>12}{fmt(ys[-1], d):>12}{fmt(max(ys), d):>12}{'-':>22}")
    for key in ("steps", "lookups", "apps", "rings_released", "ring_drops", "backlog_records", "state_bytes",
                "pending_records_peak", "bad_records", "cut_batches", "retrain_retrains", "retrain_switches",
                "retrain_kept", "retrain_failures", "retrain_window_lookups", "hit_rate", "loop_lag_s"):
        ts, ys = series(samples, lambda s, k=key: s["daemon"][k])
        if ys:
            d = 3 if key in ("loop_lag_s", "hit_rate") else 0
            lines.append(f"{'recmgd ' + key:<28}{fmt(ys[0], d):>12}{fmt(ys[-1], d):>12}{fmt(max(ys), d):>12}"
                         f"{'-':>22}")
    policies = [s["daemon"]["policy"] for s in samples if s.get("daemon")]
    if policies:
        lines.append(f"{'recmgd policy':<28}{policies[0]:>12}{policies[-1]:>12}")
    lines.append("")
    # wrong rows
    tot = {k: sum(int(x.counts.get(k, 0)) for x in soak.lives)
           for k in ("lookups", "rows_checked", "wrong", "writes", "ryw_checked", "ryw_wrong", "slow_checked",
                     "slow_wrong", "batches")}
    lines.append(f"rows checked: {tot['rows_checked']:,} looked up in {tot['batches']:,} batches, wrong "
                 f"{tot['wrong']}; {tot['writes']:,} write_rows calls, read back {tot['ryw_checked']:,} rows "
                 f"by lookup (wrong {tot['ryw_wrong']}) and {tot['slow_checked']:,} by read_rows (wrong "
                 f"{tot['slow_wrong']}) [killed apps: counts to their last status, <= 1 s before the kill]")
    for x in soak.lives:
        for w in x.counts.get("first_wrong", []):
            lines.append(f"  app{x.slot} life {x.life} pid {x.proc.pid}: {w}")
    sw = end.get("sweep") or {}
    if sw:
        err = f"; error {sw['error']}" if sw.get("error") else ""
        lines.append(f"final sweep (apps stopped, daemon running): {sw.get('rows', 0):,} rows, each by "
                     f"lookup and read_rows, wrong {sw.get('wrong')}{err}")
        if sw.get("wrong") or sw.get("error"):
            fails.append("the final sweep found wrong rows or failed")
    for slot in app_slots:
        if lives.get(slot, 1) > 1:
            peaks = []
            for life in range(lives[slot]):
                _, ys = series(samples, lambda s, k=f"app{slot}", n=life: s["procs"][k]["anon_mb"]
                               if s["procs"][k]["life"] == n else None)
                peaks.append(fmt(max(ys) if ys else None, 1))
            lines.append(f"app{slot} RssAnon MB, most of each life: {' '.join(peaks)}")
    wrong = tot["wrong"] + tot["ryw_wrong"] + tot["slow_wrong"]
    if wrong:
        fails.append(f"{wrong} wrong rows")
    # app lives
    det = [k["detached_after_s"] for k in soak.kills if k["detached_after_s"] is not None]
    lines.append(f"apps killed with SIGKILL and restarted: {len(soak.kills)}; the daemon dropped "
                 f"{len(det)} of them from its apps (after {fmt(min(det) if det else None, 1)} to "
                 f"{fmt(max(det) if det else None, 1)} s, to within 0.2 s); apps it still listed "
                 f"after all apps stopped: {end.get('stale_apps') or 'none'}")
    if end.get("stale_apps"):
        fails.append(f"the daemon still lists gone apps {end['stale_apps']}")
    if len(det) < len(soak.kills):
        lines.append("  killed pids the daemon never dropped while sampled: "
                     + ", ".join(str(k["pid"]) for k in soak.kills if k["detached_after_s"] is None))
    lines.append(f"apps that exited on their own: {len(soak.unexpected_exits)}")
    lines += [f"  {u}" for u in soak.unexpected_exits]
    if soak.unexpected_exits:
        fails.append(f"{len(soak.unexpected_exits)} apps exited on their own")
    if end.get("apps_not_done"):
        lines.append(f"apps that did not stop cleanly on SIGTERM at the end: {end['apps_not_done']}")
        fails.append("apps did not stop cleanly")
    # daemon
    lf = soak.log_found or log_findings(soak.daemon_log)
    lines.append(f"recmgd log: {lf['lines']} lines, {lf['error'] + lf['critical']} ERROR/CRITICAL, "
                 f"{lf['warning']} WARNING, {lf['tracebacks']} tracebacks")
    for ln in lf["error_first"] + lf["critical_first"] + lf["warning_first"]:
        lines.append(f"  {ln[:300]}")
    lines += [f"  {ln[:300]}" for ln in lf["traceback_first"]]
    if lf["error"] + lf["critical"] + lf["tracebacks"]:
        fails.append("ERROR lines or tracebacks in the daemon's log")
    lines.append(f"recmgctl calls: {soak.ctl_calls}, failed {soak.ctl_failed}; /metrics scrapes: "
                 f"{soak.scrapes}, failed {soak.scrapes_failed}")
    lines += [f"  {f}" for f in soak.ctl_failures[:10]]
    errs = [s["daemon_error"] for s in samples if s.get("daemon_error")]
    if errs:
        lines.append(f"samples without the daemon's counters: {len(errs)} (first: {errs[0]})")
    lasts = [s["daemon"].get("retrain_last") for s in samples if s.get("daemon")]
    if lasts and lasts[-1] and lasts[-1].get("candidate_on_demand") is not None:
        lines.append(f"recmgd's last retrain: {lasts[-1]}")
    lines.append(f"recmgd notify socket: {soak.notify_msgs} messages after READY=1, last STATUS: "
                 f"{soak.notify_last!r}")
    lines.append(f"recmgd at the end: {'answering' if end.get('answering') else 'NOT answering'} "
                 f"(recmgctl stats){'; ' + soak.daemon_death if soak.daemon_death else ''}; exit status "
                 f"{end.get('daemon_exit')} after SIGTERM")
    if not end.get("answering") or soak.daemon_death:
        fails.append("recmgd is dead or does not answer")
    if end.get("daemon_exit") not in (0, None) and not soak.daemon_death:
        fails.append(f"recmgd exited {end.get('daemon_exit')} on SIGTERM")
    g = ", ".join(f"{p} {'-' if v is None else f'{v:+.0f}'}" for p, v in growth.items())
    lines.append(f"fd growth over the second half (least of the last 3 samples - least of the first 3): {g} "
                 f"(threshold {a.fd_threshold})")
    for p, v in growth.items():
        if v is not None and v > a.fd_threshold:
            fails.append(f"{p}'s open fds grew by {v:.0f}")
    if leftovers:
        lines.append("left behind at cleanup: " + "; ".join(leftovers))
    if interrupted:
        lines.append(f"interrupted: {interrupted}")
    ok = "INTERRUPTED (no failure seen before)" if interrupted else "PASS"
    lines.append(f"verdict: {'FAIL: ' + '; '.join(fails) if fails else ok}")
    if fails and lf["tail"] and not a.logs:
        lines += ["recmgd log, last lines:"] + [f"  {ln[:300]}" for ln in lf["tail"]]
    return "\n".join(lines), fails


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    p.add_argument("--tables", type=int, default=8, help="tables (default 8)")
    p.add_argument("--rows", type=int, default=100_000, help="rows a table (default 100000)")
    p.add_argument("--dim", type=int, default=16, help="floats a row, at most 64 (default 16)")
    p.add_argument("--fraction", type=float, default=0.01, help="fast-tier slots / rows (default 0.01)")
    p.add_argument("--slow", choices=("dram", "ssd"), default="dram",
                   help="slow tier: dram (shared memory) or ssd (a file in the work dir) (default dram)")
    p.add_argument("--apps", type=int, choices=(1, 2), default=2, help="app processes (default 2)")
    p.add_argument("--batch", type=int, default=128, help="one-row bags a table a batch (default 128)")
    p.add_argument("--pause-ms", type=float, default=10.0, help="an app's pause after a batch (default 10)")
    p.add_argument("--write-every", type=int, default=20,
                   help="an app's batches between write_rows calls, 0: none (default 20)")
    p.add_argument("--restart-every", type=float, default=60.0,
                   help="seconds between SIGKILLs of the last app slot (restarted at once), 0: none "
                        "(default 60)")
    p.add_argument("--drift-every", type=float, default=120.0,
                   help="seconds between moves of the apps' hot rows, 0: none (default 120)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--poll-every", type=float, default=15.0,
                   help="seconds between recmgctl calls and /metrics scrapes (default 15)")
    p.add_argument("--retrain-every", type=float, default=60.0, help="recmgd's retrain_every, s (default 60)")
    p.add_argument("--retrain-window", type=int, default=50_000,
                   help="recmgd's retrain_window, lookups (default 50000)")
    p.add_argument("--fd-threshold", type=int, default=4,
                   help="open fds recmgd or a whole-run app may gain over the second half (default 4)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="", help="write the samples and the summary to this JSON file")
    p.add_argument("--logs", default="", help="keep recmgd's and the apps' stderr in this directory")
    p.add_argument("--workdir", default="", help="where the run's temporary directory goes (default $TMPDIR)")
    p.add_argument("--app-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--app-pool", help=argparse.SUPPRESS)
    p.add_argument("--app-slot", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--app-status", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.app_child:
        if not 1 <= args.dim <= 64:
            p.error("--dim must be 1..64")
        if args.minutes <= 0 or args.rows < args.apps or args.tables < 1 or args.batch < 1:
            p.error("--minutes, --rows, --tables and --batch must be positive (--rows at least --apps)")
        if not 0 < args.fraction <= 1:
            p.error("--fraction must be in (0, 1]")
        if args.retrain_every < 1 or args.retrain_window < 1000:
            p.error("--retrain-every is at least 1 s and --retrain-window at least 1000 (recmgd's limits)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.app_child:
        return app_child(args)

    def on_signal(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # (under nohup it stays ignored)
        signal.signal(signal.SIGHUP, on_signal)
    soak = Soak(args)
    interrupted = ""
    end: dict[str, Any] = {}
    leftovers: list[str] = []
    started = False
    try:
        try:
            slots = soak.create_pool()
            if soak.swept:
                print(f"soak: removed what killed runs left: {', '.join(soak.swept)}", flush=True)
            print(f"soak: pool {soak.name} ({slots:,} slots), work dir {soak.work}, logs {soak.logs}",
                  flush=True)
            soak.start_daemon()
            soak.wait_attached()
            for slot in range(args.apps):
                soak.start_app(slot)
            soak.t0 = time.monotonic()
            for a in soak.lives:
                a.started = 0.0
            started = True
            print(f"soak: recmgd pid {soak.daemon.pid if soak.daemon else '?'}, apps "
                  f"{[a.proc.pid for a in soak.lives]}; running {args.minutes:g} min", flush=True)
            soak.run()
        except (KeyboardInterrupt, Interrupted) as exc:
            interrupted = str(exc) or "SIGINT"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the rest runs to its end: a second ^C would leak
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if started:
            end = soak.finish()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leftovers = soak.cleanup()
    if not started:
        print(f"soak: stopped before the run began ({interrupted or 'see above'}); everything removed",
              file=sys.stderr)
        return 1
    text, fails = report(soak, end, leftovers, interrupted)
    print(text, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        lives = [{"slot": x.slot, "life": x.life, "pid": x.proc.pid, "started_s": x.started,
                  "killed_s": x.killed_at, "exit": x.exit_code, "counts": x.counts} for x in soak.lives]
        Path(args.out).write_text(json.dumps({"args": vars(args), "pool": soak.name, "samples": soak.samples,
                                              "lives": lives, "kills": soak.kills, "end": end,
                                              "ctl_failures": soak.ctl_failures,
                                              "unexpected_exits": soak.unexpected_exits,
                                              "fails": fails, "report": text}, indent=1) + "\n")
    return 1 if fails or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
