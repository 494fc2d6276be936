"""Apps that come and go: the rings of dead app processes are released; pools are found and attached.

An app takes an access ring when it attaches to a pool and writes its pid into it. The daemon checks
those pids with psutil every ``app_check_interval``: a process that is gone (exited, SIGKILLed, or a
zombie not yet reaped, or a new process that reused the pid) has its ring drained one last time and
released, so the slot can serve a new app. Other apps' rings are not touched. The last drain is under
the pool's drain budget (an app may leave thousands of full rings): the check drains at most what is
left of it (shared with the next tick) and releases the rings it emptied (the common case: an app that
exits with a few records left); a ring it could not empty keeps its owner, the ticks drain it in turn
like any ring, and a later check, finding it empty, releases it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from recmgd.daemon.loop import PoolDriver, _ring_field
from recmgd.errors import RecmgError
from recmgd.shm import SHM_DIR

log = logging.getLogger(__name__)



def process_alive(pid: int, create_time: float | None = None) -> bool:
    """True when ``pid`` is a live (non-zombie) process, started at ``create_time`` if given."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(proc.create_time() - create_time) > 0.5:
            return False  # the pid was reused by another process
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we may not look at it


def process_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class AppTracker:
    """Notices app processes attaching to and leaving one pool."""

    def __init__(self, driver: PoolDriver) -> None:
        self.driver = driver
        self.known: dict[int, tuple[int, float | None]] = {}  # ring index -> (pid, start time)
        self.started = 0
        self.release_failures: dict[int, int] = {}
        self.exited = 0
        self.draining: set[int] = set()  # rings of dead apps still holding records (released when empty)

    def check(self) -> list[int]:
        """Check every ring's owner; release the rings of dead ones. Returns the released indices."""
        released = []
        seen = set()
        deferred = 0
        # one look at each process a check: an app may hold thousands of rings (psutil: ~20 us a look)
        alive: dict[tuple[int, float | None], bool] = {}
        for info in self.driver.pool.rings():
            idx = _ring_field(info, "index", -1)
            pid = _ring_field(info, "pid")
            if idx < 0:
                continue
            if pid == 0:
                self.draining.discard(idx)
                if idx in self.known:  # the app detached itself cleanly (the loop drains what it left)
                    gone, _ = self.known.pop(idx)
                    self.exited += 1
                    log.info("pool %s: app pid %d detached (ring %d)", self.driver.name, gone, idx)
                continue
            seen.add(idx)
            prev = self.known.get(idx)
            if prev is None or prev[0] != pid:
                start = process_start(pid)
                self.known[idx] = (pid, start)
                self.draining.discard(idx)  # a new app took over a dead app's ring
                self.started += 1
                log.info("pool %s: app pid %d attached (ring %d)", self.driver.name, pid, idx)
                if start is None and not process_alive(pid):
                    pass  # died already: handled below
                else:
                    continue
            pid0, start0 = self.known[idx]
            live = alive.get((pid0, start0))
            if live is None:
                live = alive[(pid0, start0)] = process_alive(pid0, start0)
            if live:
                continue
            flushed = self.driver.flush_ring(idx, info)
            if flushed is None:  # another app took the ring over (or it was let go) since the look above
                continue
            if not flushed:
                # records left over the drain budget: the ticks take them in turn; released once empty
                if idx not in self.draining:
                    self.draining.add(idx)
                    deferred += 1
                continue
            try:
                self.driver.pool.release_ring(idx)
            except RecmgError as exc:
                # e.g. a zombie not yet reaped by its parent still owns the ring: retry at the next check
                n = self.release_failures.get(idx, 0) + 1
                self.release_failures[idx] = n
                level = logging.WARNING if n == 20 else logging.DEBUG
                log.log(level, "pool %s: cannot release ring %d of dead pid %d yet: %s",
                        self.driver.name, idx, pid0, exc)
                continue
            self.release_failures.pop(idx, None)
            self.draining.discard(idx)
            self.known.pop(idx, None)
            self.driver.pc["rings_released"] += 1
            self.exited += 1
            released.append(idx)
            log.info("pool %s: app pid %d is gone; ring %d released", self.driver.name, pid0, idx)
        for idx in set(self.known) - seen:
            self.known.pop(idx, None)
            self.draining.discard(idx)
        if deferred:
            log.info("pool %s: %d rings of dead apps hold more records than the drain budget left; the "
                     "ticks drain them in turn and they are released once empty (%d rings so far)",
                     self.driver.name, deferred, len(self.draining))
        return released


def discover_pools(candidates: Iterable[str] | None = None) -> list[str]:
    """Names of the pools in /dev/shm (every object whose header says pool), or the candidates that exist."""
    names: list[str] = []
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except OSError:
        return names
    if candidates is not None:
        wanted = set(candidates)
        return [n for n in entries if n in wanted]
    looks = _pool_prober()
    for n in entries:
        if looks(n):
            names.append(n)
    return names


POOL_MAGIC = b"RCMGPOOL"  # the first 8 bytes of every pool object (native/src/internal.h, RECMG_MAGIC)


def _pool_prober() -> Callable[[str], bool]:
    """A cheap test of whether a /dev/shm object is a pool: ``recmgd.pool.is_pool`` if the pool module
    has one, else the magic in the object's first bytes."""
    try:
        from recmgd import pool as pool_mod

        fn = getattr(pool_mod, "is_pool", None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    except ImportError:  # the native binding is not built: the magic still tells
        pass

    def probe(name: str) -> bool:
        # never blocks: a FIFO or device someone put in /dev/shm is not opened for reading, a symlink
        # is not followed
        try:
            fd = os.open(os.path.join(SHM_DIR, name),
                         os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, len(POOL_MAGIC), 0) == POOL_MAGIC
        except OSError:
            return False
        finally:
            os.close(fd)

    return probe


def _name_of(lookup: Callable[[int], Any], ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def owner_problem(name: str, uids: frozenset[int], gids: frozenset[int]) -> tuple[int | None, str | None]:
    """Check who owns ``/dev/shm/NAME`` before the daemon attaches it: (inode, None) when its owner is
    one of ``uids`` or its group one of ``gids``, else (inode or None, the reason it is skipped)."""
    import grp
    import pwd

    try:
        st = os.lstat(os.path.join(SHM_DIR, name))
    except OSError as exc:
        return None, f"cannot stat it: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return st.st_ino, "not a regular file"
    if st.st_uid in uids or st.st_gid in gids:
        return st.st_ino, None
    user, group = _name_of(pwd.getpwuid, st.st_uid), _name_of(grp.getgrgid, st.st_gid)
    return st.st_ino, (f"owned by {user}:{group}, not a served owner "
                       "(serve_users / serve_groups in the configuration)")
