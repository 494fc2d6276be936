"""Retraining a pool's learned policy online, from its own live stream.

Per pool (``retrain_every``, ``retrain_window``, ``retrain_threads`` in its policy section): a
:class:`RollingWindow` on the pool's tap (:class:`recmgd.daemon.record.PoolStream`) keeps the last
``retrain_window`` lookups, in whole app batches. Every ``retrain_every`` (once the window is full), or
at ``recmgctl retrain POOL``, a :class:`Retrainer` copies the window, and a thread of its own writes it
as a recording (``STATE_DIR/retrain/POOL/window.rtrace``) and runs ``recmg candidate`` on it as a
separate process at a low priority (nice 10, ``retrain_threads`` torch and BLAS threads): that process
trains a candidate on the window but its most recent quarter, and scores the candidate and the current
model (LRU while the pool has none yet) with the simulator on that quarter (the daemon never imports the
simulator; the scores come back in a JSON file). The loop only polls: when the candidate made fewer
on-demand fetches, its checkpoint becomes ``STATE_DIR/retrain/POOL/current`` (a symlink replaced
atomically; the model before it is kept too) and the pool switches to it; a restarted daemon loads
``current``. A trainer that fails, is killed or writes no result is logged and counted, and nothing
changes.

The trainer dies with the daemon (the kernel's parent-death signal, :data:`_GUARD`), and its files are
named after the daemon (:func:`owner_tag`): a trainer of a daemon killed with SIGKILL cannot go on
writing into a restarted daemon's candidate. What a dead daemon left behind (its candidates, results
and their temporaries) is removed at the next retrain of the pool (:func:`sweep_stale`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from recmgd.daemon.apps import process_alive, process_start
from recmgd.daemon.config import PolicyConfig
from recmgd.daemon.control import CommandError
from recmgd.daemon.record import BatchSplitter
from recmgd.daemon.step import create_policy
from recmgd.errors import RecmgError
from recmgd.fileout import partial_owner, whole_file, write_reason
from recmgd.policy import Policy
from recmgd.trace.binary import BinaryWriter

log = logging.getLogger(__name__)

#: the fewest app batches a retrain needs (the candidate is trained on 3/4 and scored on 1/4)
MIN_BATCHES = 16
#: the nice value added to the trainer process
TRAINER_NICE = 10
#: models kept under STATE_DIR/retrain/POOL/models (the current one and the one before it)
KEEP_MODELS = 2

#: The trainer's first step, in its own process before it execs the trainer: ask the kernel for SIGKILL
#: when the daemon's thread that started it ends (PR_SET_PDEATHSIG = 1; the job's thread, which waits
#: for the trainer, so in effect when the daemon dies, whatever kills it; the setting survives exec),
#: then check the daemon is still its parent (one that died before prctl sent no signal). A separate
#: step rather than Popen's preexec_fn: that runs Python between fork and exec, which may deadlock in
#: a process with threads (the daemon has several). argv: DAEMON_PID TRAINER_ARGV...
_GUARD = ("import ctypes, os, sys\n"
          "if ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) != 0:\n"
          "    sys.exit('recmg candidate: prctl(PR_SET_PDEATHSIG): ' + os.strerror(ctypes.get_errno()))\n"
          "if os.getppid() != int(sys.argv[1]):\n"
          "    sys.exit('recmg candidate: the daemon that started it is gone')\n"
          "os.execv(sys.argv[2], sys.argv[2:])\n")

#: the numbers of this daemon's candidate and result names: one count for all its pools and attaches,
#: so that no two jobs of one daemon share a name (a pool attached again starts its retrains at 1)
_NAME_SEQ = itertools.count(1)

#: a job's files in a pool's retraining directory: candidate-TAG-N/ and result-TAG-N.json (TAG: see
#: owner_tag), those of daemons before the tag (candidate-N, result-N.json), and the temporaries of
#: results and windows (.partial-PID-RANDOM.NAME, recmgd.fileout's)
_TAGGED = re.compile(r"(?:candidate|result)-(\d+)-(\d+)-([0-9a-f]+)-\d+(?:\.json)?")
_UNTAGGED = re.compile(r"(?:candidate|result)-\d+(?:\.json)?")
_TEMPORARY_OF = re.compile(r"result-.*\.json|window\.rtrace")  # (the outputs whose temporaries are swept)


def private_dir(path: Path) -> None:
    """Make the directory (and its parents) if missing, and make it the daemon's alone (0700, whatever
    the umask or an older daemon left): a retraining window is a pool's lookup stream."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != 0o700:
        os.chmod(path, 0o700)


class RollingWindow:
    """The last ``limit`` lookups of a pool's stream, in whole app batches (a sink of its tap). It holds
    whole drain chunks (``n_lookups``, ``n_batches``: up to a chunk more than ``limit``); a retrain
    takes the last ``limit`` of them from a batch start (``used_lookups``, ``used_batches``)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.splitter = BatchSplitter()
        # (keys, batch lengths, their running sums), a drain's whole batches each
        self.chunks: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
        self.n_lookups = 0
        self.n_batches = 0
        self._cut = (0, 0)  # (batches, lookups) at the first chunk's start that a snapshot leaves out

    def __call__(self, recs: np.ndarray, ring: int) -> None:
        if not len(recs):
            self.splitter.forget(ring)
            return
        keys, lengths = self.splitter.feed(ring, recs)
        if not len(lengths):
            return
        self.chunks.append((keys, lengths, np.cumsum(lengths)))
        self.n_lookups += len(keys)
        self.n_batches += len(lengths)
        while self.chunks and self.n_lookups - len(self.chunks[0][0]) >= self.limit:
            k, n, _ = self.chunks.popleft()
            self.n_lookups -= len(k)
            self.n_batches -= len(n)
        # what is over the limit now lies in the first chunk (the loop above keeps no chunk more): the
        # batches a snapshot drops are its first ones up to the one that ends at or past the excess
        over = self.n_lookups - self.limit
        if over > 0:
            ends = self.chunks[0][2]
            i = int(np.searchsorted(ends, over, side="left"))
            self._cut = (i + 1, int(ends[i]))
        else:
            self._cut = (0, 0)

    @property
    def full(self) -> bool:
        """The window has reached ``limit`` (what it trains on may be a batch's part fewer)."""
        return self.n_lookups >= self.limit

    @property
    def used_lookups(self) -> int:
        """The lookups a retrain started now trains on (the snapshot's; at most ``limit``)."""
        return self.n_lookups - self._cut[1]

    @property
    def used_batches(self) -> int:
        return self.n_batches - self._cut[0]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, batch lengths) of the window: the last ``limit`` lookups, from a batch start."""
        if not self.chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        keys = np.concatenate([k for k, _, _ in self.chunks])
        lengths = np.concatenate([n for _, n, _ in self.chunks])
        return keys[self._cut[1]:], lengths[self._cut[0]:]


@functools.cache
def owner_tag(pid: int) -> str:
    """The daemon's part of its candidate and result names: PID-START-RANDOM (``owner_tag(os.getpid())``;
    START in centiseconds, psutil's create time). Pid and start time tell whether the daemon is alive
    (:func:`sweep_stale`, through apps.process_alive; a pid alone may be reused); the random part tells
    a daemon from an earlier boot's with the same pid and start time (a state directory outlives a boot)."""
    start = process_start(pid)
    return f"{pid}-{round(start * 100) if start is not None else 0}-{secrets.token_hex(4)}"


#: how much later than a temporary's last write its pid's process may have started and still be taken
#: for its maker (s): a wall clock stepped back meanwhile must not make a live maker's temporary stale
MAKER_START_SLACK_S = 60.0


def _maker_may_live(path: Path, pid: int) -> bool:
    """Whether the process that made the temporary ``path`` (``pid``, from its name: these names carry no
    start time) may still run: ``pid`` is alive and started before the file was last written (a process
    that started after it holds a reused pid, and the maker is gone)."""
    if not process_alive(pid):
        return False
    start = process_start(pid)
    try:
        written = path.lstat().st_mtime
    except OSError:
        return True  # gone meanwhile (or not to be looked at): nothing to remove
    return start is None or start <= written + MAKER_START_SLACK_S


def sweep_stale(folder: Path) -> list[str]:
    """Remove from a pool's retraining directory the candidates and results (and their temporaries)
    that processes now gone left; the names removed. This daemon's own are kept, and so are those of a
    live process: only one daemon serves a pool (the pool's daemon lock), but a state directory shared
    in another way is not this daemon's to clean. Names from before the owner tag (candidate-N,
    result-N.json) carry no owner: an older daemon's, which the lock says does not serve this pool now
    (an orphaned trainer of it may still write them; no daemon reads them any more)."""
    pid = os.getpid()
    mine = owner_tag(pid)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for name in names:
        part = partial_owner(name)
        if m := _TAGGED.fullmatch(name):
            owner = int(m[1])
            if f"{m[1]}-{m[2]}-{m[3]}" == mine:
                continue
            # this daemon's pid in another tag: an earlier process's (another start, or an earlier boot)
            if owner != pid and process_alive(owner, int(m[2]) / 100 if int(m[2]) else None):
                continue
        elif part is not None and _TEMPORARY_OF.fullmatch(part[1]):
            if _maker_may_live(folder / name, part[0]):
                continue
        elif not _UNTAGGED.fullmatch(name):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(name)
    return removed


def current_checkpoint(state_dir: str, pool: str) -> str | None:
    """The last good retrained checkpoint of a pool (what a restarted daemon loads), or None."""
    link = Path(state_dir) / "retrain" / pool / "current"
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return str(target) if (target / "config.json").is_file() else None


class _Job:
    """One retrain: a thread that writes the window and waits for the trainer process."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        # its files' names: the daemon's tag (no other daemon's trainer writes them) and a number of the
        # daemon's (none of its other jobs does); seq, the pool's count, is for the log and the stats
        self.name = f"{owner_tag(os.getpid())}-{next(_NAME_SEQ)}"
        self.reason = reason
        self.started = time.time()
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread: threading.Thread | None = None
        self.result: dict[str, Any] | None = None
        self.error = ""
        self.candidate = ""
        self.killed = False
        self.switch: tuple[str, Policy] | None = None  # (checkpoint, its policy, loaded) when it won
        self.switch_error = ""


class Retrainer:
    """Retraining of one pool (see the module doc). All methods run in the loop's thread; the job's
    own thread only writes the window, runs the trainer and fills in the job."""

    def __init__(self, pool: str, pc: PolicyConfig, capacity: int, state_dir: str, *,
                 model_dir: str | None) -> None:
        self.pool = pool
        self.policy = pc.name
        self.options = {k: v for k, v in pc.create_options().items() if k != "model_dir"}
        self.every = float(pc.retrain_every)
        self.threads = int(pc.retrain_threads)
        self.capacity = int(capacity)
        self.dir = Path(state_dir) / "retrain" / pool
        self.window = RollingWindow(pc.retrain_window)
        self.model_dir = model_dir  # the checkpoint the pool runs (None: LRU until the first switch)
        self.next_due = time.monotonic() + self.every if self.every else float("inf")
        self.counts = {"retrains": 0, "failures": 0, "switches": 0, "kept": 0}
        self.last: dict[str, Any] | None = None
        self.last_error = ""
        self._job: _Job | None = None
        self._seq = 0

    # -- the loop's side -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._job is not None

    def due(self, now: float) -> bool:
        return not self.running and now >= self.next_due and self.window.full

    def start(self, reason: str) -> dict[str, Any]:
        """Start a retrain now (CommandError when one runs or the window is too short)."""
        if self._job is not None:
            raise CommandError(f"pool {self.pool}: a retrain is already running (trainer pid "
                               f"{self._job.proc.pid if self._job.proc else '-'})")
        keys, lengths = self.window.snapshot()  # a copy: the job's thread owns it
        if len(lengths) < MIN_BATCHES:
            raise CommandError(f"pool {self.pool}: the retraining window holds {len(lengths)} app batches "
                               f"({len(keys)} lookups); a retrain needs at least {MIN_BATCHES}")
        self._seq += 1
        self.counts["retrains"] += 1
        if self.every:
            self.next_due = time.monotonic() + self.every
        job = _Job(self._seq, reason)
        job.thread = threading.Thread(target=self._run, args=(job, keys, lengths),
                                      name=f"recmgd-retrain-{self.pool}", daemon=True)
        self._job = job
        job.thread.start()
        log.info("pool %s: retrain %d started (%s): %d lookups in %d batches, policy %s, capacity %d",
                 self.pool, job.seq, reason, len(keys), len(lengths), self.policy, self.capacity)
        return {"pool": self.pool, "retrain": job.seq, "lookups": len(keys), "batches": len(lengths)}

    def poll(self) -> tuple[str, Policy] | None:
        """(Each tick.) A finished retrain: (the new checkpoint, its policy, loaded) to switch to when
        the candidate won, else None (and None while one runs)."""
        job = self._job
        if job is None or (job.thread is not None and job.thread.is_alive()):
            return None
        self._job = None
        if job.result is None:
            self.counts["failures"] += 1
            self.last_error = job.error or "the trainer wrote no result"
            log.error("pool %s: retrain %d failed, the model is unchanged: %s", self.pool, job.seq,
                      self.last_error)
            shutil.rmtree(job.candidate, ignore_errors=True)
            return None
        res = dict(job.result, retrain=job.seq, reason=job.reason, finished=time.time())
        self.last = res
        self.last_error = ""
        cand, cur = res["candidate_on_demand"], res["current_on_demand"]
        res["switched"] = job.switch is not None
        if job.switch_error:
            self.switch_failed(job.switch_error)
        elif job.switch is None:
            self.counts["kept"] += 1
            log.info("pool %s: retrain %d: candidate %d on-demand fetches, current %d: kept the current "
                     "model", self.pool, job.seq, cand, cur)
        shutil.rmtree(job.candidate, ignore_errors=True)
        if job.switch is not None:
            log.info("pool %s: retrain %d: candidate %d on-demand fetches, current %d: switching to %s",
                     self.pool, job.seq, cand, cur, job.switch[0])
        return job.switch

    def switched(self, model_dir: str) -> None:
        """The pool now runs ``model_dir``."""
        self.model_dir = model_dir
        self.counts["switches"] += 1

    def switch_failed(self, message: str) -> None:
        self.counts["failures"] += 1
        self.last_error = message
        if self.last is not None:
            self.last["switched"] = False
        log.error("pool %s: the retrained model could not be loaded, the model is unchanged: %s",
                  self.pool, message)

    def close(self) -> None:
        """Kill a running trainer (the pool is detached or the daemon stops)."""
        job = self._job
        if job is None:
            return
        job.killed = True
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
        if job.thread is not None:
            job.thread.join(10.0)
        shutil.rmtree(job.candidate, ignore_errors=True)
        self._job = None

    def stats(self) -> dict[str, Any]:
        age = None
        if self.model_dir:
            try:
                age = round(time.time() - os.stat(os.path.join(self.model_dir, "config.json")).st_mtime, 1)
            except OSError:
                age = None
        job = self._job
        return {
            "policy": self.policy, "every_s": self.every, "window_lookups": self.window.used_lookups,
            "window_target": self.window.limit, "window_full": self.window.full, "running": job is not None,
            "trainer_pid": job.proc.pid if job is not None and job.proc is not None else None,
            **self.counts, "model_dir": self.model_dir, "model_age_s": age,
            "last": self.last, "last_error": self.last_error,
        }

    # -- the job's thread ------------------------------------------------------------------------

    def _run(self, job: _Job, keys: np.ndarray, lengths: np.ndarray) -> None:
        try:
            try:  # the window is the pool's lookup stream: no other user may read it (nor the models)
                private_dir(self.dir.parent)
                private_dir(self.dir)
            except OSError as exc:
                where = exc.filename or self.dir
                job.error = f"cannot make {where} private (mode 0700): {exc.strerror or exc}"
                return
            stale = sweep_stale(self.dir)  # a dead daemon's candidates may be large
            if stale:
                log.info("pool %s: removed %d files of retrains of daemons now gone: %s", self.pool,
                         len(stale), ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else ""))
            window = self.dir / "window.rtrace"
            (self.dir / "window.rtrace.partial").unlink(missing_ok=True)  # an older daemon's leftover
            try:  # whole or not at all: a full disk leaves neither a cut window nor its temporary
                with whole_file(window) as tmp, BinaryWriter(tmp) as w:
                    w.add(keys, lengths)
            except Exception as exc:  # noqa: BLE001 - reported with the file and the system's reason
                job.error = f"cannot write the retraining window {window}: {write_reason(exc)}"
                return
            job.candidate = str(self.dir / f"candidate-{job.name}")
            shutil.rmtree(job.candidate, ignore_errors=True)
            result = self.dir / f"result-{job.name}.json"
            cmd = [sys.executable, "-c", _GUARD, str(os.getpid()),
                   sys.executable, "-m", "recmgd.cli.recmg", "candidate", str(window),
                   "--policy", self.policy, "--capacity", str(self.capacity), "--out", job.candidate,
                   "--result", str(result), "--threads", str(self.threads), "--nice", str(TRAINER_NICE),
                   "--options", json.dumps(self.options)]
            if self.model_dir:
                cmd += ["--current", self.model_dir]
            env = dict(os.environ)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(self.threads)
            with open(self.dir / "trainer.log", "wb") as logf:
                if job.killed:
                    return
                job.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                            start_new_session=True)
                rc = job.proc.wait()
            if rc != 0:
                job.error = (f"the trainer (pid {job.proc.pid}) " +
                             (f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}") +
                             f"{_last_line(self.dir / 'trainer.log')}")
                return
            job.result = json.loads(result.read_text())
            result.unlink()
            if job.result["candidate_on_demand"] < job.result["current_on_demand"]:
                try:  # loaded here, not in the loop; then made current
                    pol = create_policy(self.policy, {**self.options, "model_dir": job.candidate},
                                        pool=self.pool)
                except RecmgError as exc:
                    job.switch_error = str(exc)
                    return
                job.switch = (self._promote(job), pol)
        except (OSError, ValueError) as exc:
            job.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a retrain bug must not reach the loop
            log.exception("pool %s: retrain %d failed", self.pool, job.seq)
            job.error = f"internal error: {type(exc).__name__}: {exc}"

    def _promote(self, job: _Job) -> str:
        """Move the candidate under models/ and point ``current`` at it (atomically); prune old ones."""
        models = self.dir / "models"
        models.mkdir(exist_ok=True)
        target = models / f"model-{int(job.started)}-{job.seq}"
        os.replace(job.candidate, target)
        link = self.dir / "current"
        tmp = self.dir / "current.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(os.path.relpath(target, self.dir), tmp)
        os.replace(tmp, link)
        keep = {target.name} | ({Path(self.model_dir).name} if self.model_dir else set())
        for old in sorted(models.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_MODELS]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return str(target)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


def starting_policy(pool: str, pc: PolicyConfig, state_dir: str, *,
                    skip: str | None = None) -> tuple[str, PolicyConfig]:
    """What a retraining pool runs when it is attached: (policy name, its configuration). The last
    good retrained checkpoint first (unless it is ``skip``: one that failed to load), then the
    configured ``model_dir``; with neither, LRU (and the first retrain's candidate is compared with
    LRU)."""
    cur = current_checkpoint(state_dir, pool)
    if cur is not None and cur != skip:
        return pc.name, dataclasses.replace(pc, model_dir=cur)
    if pc.model_dir:
        return pc.name, pc
    return "lru", dataclasses.replace(pc, name="lru", options={})


def load_starting_policy(pool: str, pc: PolicyConfig, state_dir: str, bad: dict[str, str] | None = None
                         ) -> tuple[str, PolicyConfig, Policy]:
    """:func:`starting_policy`, loaded: (policy name, its configuration, the policy). A retrained
    checkpoint that fails to load is logged once (one warning naming it; ``bad`` remembers it by pool
    across calls) and passed over for the configured ``model_dir`` (or LRU); a failure of that is
    raised (a RecmgError), as for a pool that does not retrain."""
    bad = {} if bad is None else bad
    run_name, run_pc = starting_policy(pool, pc, state_dir, skip=bad.get(pool))
    cur = current_checkpoint(state_dir, pool)
    if cur is not None and run_pc.model_dir == cur:
        log.info("pool %s: loading the last retrained checkpoint %s", pool, cur)
        try:
            pol = create_policy(run_name, run_pc.create_options(), pool=pool, mode=pc.mode)
        except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint may fail in any way
            why = str(exc) if isinstance(exc, RecmgError) else f"{type(exc).__name__}: {exc}"
            log.warning("pool %s: the last retrained checkpoint %s does not load (%s); using %s instead",
                        pool, cur, " ".join(why.split()),
                        f"the configured model_dir {pc.model_dir}" if pc.model_dir else "LRU until a retrain")
            bad[pool] = cur
            run_name, run_pc = starting_policy(pool, pc, state_dir, skip=cur)
        else:
            bad.pop(pool, None)
            return run_name, run_pc, pol
    pol = create_policy(run_name, run_pc.create_options(), pool=pool, mode=pc.mode)
    if run_name == "lru" and run_name != pc.name:
        log.info("pool %s: no checkpoint for %s yet: LRU until the first retrain", pool, pc.name)
    return run_name, run_pc, pol
