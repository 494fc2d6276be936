"""The daemon process: pools, the loop, the control socket, metrics, signals and sd_notify together.

One thread does everything that touches a pool (the loop); the control socket is served by the same
thread between ticks, so a command never races a tick. Only the metrics HTTP server runs in its own
thread, and it reads a published snapshot. Signals only set flags (and wake the loop).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from recmgd import policy as policy_mod
from recmgd.daemon import config as config_mod
from recmgd.daemon.apps import AppTracker, discover_pools, owner_problem
from recmgd.daemon.config import Config, PolicyConfig, control_character, one_line
from recmgd.daemon.control import CommandError, ControlServer
from recmgd.daemon.loop import FillBudget, PoolDriver, create_policy
from recmgd.daemon.metrics import MetricsServer
from recmgd.daemon.mover import NoSlotsError
from recmgd.daemon.notify import Notifier, set_level
from recmgd.daemon.pages import PageDriver, PagePool, page_mode_problem
from recmgd.daemon.record import PoolStream
from recmgd.daemon.retrain import Retrainer, load_starting_policy
from recmgd.errors import ConfigError, PoolBusyError, PoolError, PoolLockedError, RecmgError
from recmgd.shm import HUGE_OK, SHM_DIR, huge_mode, shm_path

log = logging.getLogger(__name__)

STALL_ENV = "RECMGD_TEST_STALL_FILE"  # test hook: the loop stalls while this file exists
RETRY_AFTER_ERROR = 10.0  # seconds before a pool whose loop failed is attached again
RETRY_STUCK = 2.0  # seconds before a pool whose writer lock stayed held is tried again
#: at most one re-attach a pool in this many seconds for a repair of its fast tier (Pool.repairs moving:
#: its count is in shared memory, which an app can bump at will to make the daemon re-attach)
REPAIR_RESYNC_MIN = 10.0
#: a pool that failed to attach (not ready, not a pool, no policy for it) is tried again after a delay that
#: doubles from app_check_interval up to this many seconds; a success, or a new object of that name, resets it
ATTACH_RETRY_MAX = 30.0
#: why a pool without fast-tier slots (a "no-cache" pool) is skipped: there is nothing to manage
NO_SLOTS = "no fast-tier slots: nothing to manage"


@dataclass
class _Stuck:
    """A pool skipped because another process holds its writer lock (a stopped or stuck writer)."""

    since: float  # wall-clock time (time.time()) of the first PoolLockedError of this episode
    since_mono: float
    error: str
    tries: int = 1


@dataclass
class _Attached:
    driver: PoolDriver
    tracker: AppTracker
    policy_cfg: PolicyConfig
    inode: int | None
    budget: FillBudget | None = None  # page mode: the pool's own MB/s cap (rows share the daemon's)
    stream: PoolStream | None = None  # the drain path's tap: recordings (recmgctl record)
    retrainer: Retrainer | None = None  # retrain_every: the rolling window and the trainer
    drops_base: int = 0  # ring records the rings had dropped before the daemon attached the pool
    repairs: int = 0  # row mode: the pool's repairs count its mirror was built at (Pool.repairs)
    owner_uid: int = -1  # the uid owning the object attached (its owner's control commands act on it)


def _shm_owner(name: str, inode: int | None) -> int:
    """The uid owning /dev/shm/NAME if it is still the object of that inode, else -1 (nobody's)."""
    try:
        st = os.lstat(shm_path(name))
    except OSError:
        return -1
    return st.st_uid if st.st_ino == inode else -1


def _shm_inode(name: str) -> int | None:
    try:
        return os.stat(shm_path(name)).st_ino
    except OSError:
        return None


class Daemon:
    """recmgd: attach the configured pools and drive their policies until told to stop."""

    def __init__(self, cfg: Config, config_path: str | None, *, step_mode: bool = False,
                 notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.force_step_mode = step_mode
        self.cfg = self._effective(cfg)
        self.notifier = notifier or Notifier()
        self.budget = FillBudget()
        self.pools: dict[str, _Attached] = {}
        self._configure_budget()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.stall_file = os.environ.get(STALL_ENV) or None
        self._stop = False
        self._reload = False
        self._attach_errors: dict[str, str] = {}
        self._retry_after: dict[str, float] = {}  # pool -> monotonic time of the next attach after an error
        self._resynced: dict[str, float] = {}  # pool -> monotonic time of its last re-attach for a repair
        self._attach_backoff: dict[str, tuple[float, int | None]] = {}  # pool -> (delay, inode) of failures
        self._bad_checkpoints: dict[str, str] = {}  # pool -> its retrained checkpoint that does not load
        self.stuck: dict[str, _Stuck] = {}  # pools whose writer lock stays held by another process
        self.skipped: dict[str, str] = {}  # pools not served (owner, no slots), and why
        # pools skipped for having no fast-tier slots -> the inode of that object (looked at again only
        # when the object changes, or at a reload)
        self._no_slots: dict[str, int | None] = {}
        self._served = self.cfg.served_ids()
        self.last_reload_error: str | None = None
        self.reloads = 0
        self.shm_huge: str | None = None  # the huge= option of the tmpfs pools live on (setup)
        self.started = time.monotonic()
        self.ticks = 0
        self.lag = 0.0
        self.lag_max = 0.0
        self._rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._snapshot: dict[str, Any] = {}
        self._warned_drops: dict[str, int] = {}
        self._last_warn = 0.0
        self._policy_override: dict[str, str] = {}
        self._model_override: dict[str, str] = {}  # recmgctl policy --model (until the next reload)
        self._retired: list[ControlServer] = []  # replaced control servers, closed after the poll
        self._polling = False

    def _effective(self, cfg: Config) -> Config:
        return cfg.replace(step_mode=True) if self.force_step_mode else cfg

    def _configure_budget(self) -> None:
        c = self.cfg
        self.budget.configure(c.fill_rows_per_s, c.fill_mb_per_s, step_mode=c.step_mode,
                              step_seconds=c.interval, burst=max(0.05, 2 * c.interval))
        for att in self.pools.values():
            if att.budget is not None:
                self._configure_page_budget(att.budget, att.policy_cfg)

    def _configure_page_budget(self, budget: FillBudget, pc: PolicyConfig) -> None:
        c = self.cfg
        budget.configure(0, pc.pages.mb_per_s, step_mode=c.step_mode, step_seconds=c.interval,
                         burst=max(0.05, 2 * c.interval))

    # -- signals -------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def on_stop(signum: int, frame: object) -> None:
            self._stop = True

        def on_hup(signum: int, frame: object) -> None:
            self._reload = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- pools ---------------------------------------------------------------------------------

    def _policy_cfg(self, name: str) -> PolicyConfig:
        pc = self.cfg.policy_for(name)
        override = self._policy_override.get(name)
        if override:
            pc = dataclasses.replace(pc, name=override)
        model = self._model_override.get(name)
        if model:
            pc = dataclasses.replace(pc, model_dir=model)
        return pc

    def _attach(self, name: str) -> bool:
        from recmgd.pool import Pool  # the native binding: imported only when a pool is attached

        pc = self._policy_cfg(name)
        inode, problem = owner_problem(name, *self._served)
        if problem is not None:
            if self.skipped.get(name) != problem:
                log.warning("pool %s: skipped: %s", name, problem)
                self.skipped[name] = problem
            return False
        prev_skip = self.skipped.pop(name, None)
        run_name, run_pc = pc.name, pc
        try:
            # never waits for a creator: an object that is not ready is tried again later (backoff);
            # nor for a writer lock held by a live process. The pool first, the policy after: a pool
            # that cannot be attached (another daemon's, another layout, stuck) costs its retries no
            # model load
            pool = Pool.attach(name, role="daemon", wait=False)
            if name in self.stuck:  # still held? then nothing of it is touched (no lock waited for)
                holder = pool.writer_holder()
                if holder:
                    pool.close()
                    raise PoolLockedError(f"the writer lock of pool '{name}' is still held by process "
                                          f"{holder} (a stopped or stuck writer)")
        except PoolLockedError as exc:
            self._mark_stuck(name, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - RecmgError, or the binding failing in its own way
            msg = str(exc) if isinstance(exc, RecmgError) else f"{type(exc).__name__}: {exc}"
            # (an app creating its pool as the daemon finds it is no trouble: said, not warned of)
            level = logging.INFO if isinstance(exc, PoolBusyError) else logging.WARNING
            self._attach_failed(name, "cannot attach", msg, level, inode)
            return False
        try:
            if pc.retrain_every:  # the last retrained checkpoint, if any (and if it loads)
                run_name, run_pc, pol = load_starting_policy(name, pc, self.cfg.state_dir,
                                                             self._bad_checkpoints)
            else:
                pol = create_policy(run_name, run_pc.create_options(), pool=name, mode=pc.mode)
        except Exception as exc:  # noqa: BLE001 - RecmgError, or a policy that fails in its own way
            pool.close()
            msg = str(exc) if isinstance(exc, RecmgError) else f"{type(exc).__name__}: {exc}"
            self._attach_failed(name, "cannot attach", msg, logging.WARNING, inode)
            return False
        page_budget: FillBudget | None = None
        try:
            common: dict[str, Any] = dict(hint_slots=pc.hint_slots, hint_pin_batches=pc.hint_pin_batches,
                                          step_mode=self.cfg.step_mode,
                                          max_drain=self.cfg.max_drain, coalesce=self.cfg.coalesce,
                                          early_admit=self.cfg.early_admit)
            if pc.mode == "pages":  # PagePool refuses a pool without a NUMA slow tier (one line)
                page_budget = FillBudget()
                self._configure_page_budget(page_budget, pc)
                pages = PagePool(pool, pc.pages, page_budget, node_query_interval=self.cfg.status_interval)
                driver: PoolDriver = PageDriver(pages, pol, pc.name, budget=page_budget, **common)
            else:
                driver = PoolDriver(pool, pol, run_name, budget=self.budget, **common)
        except PoolLockedError as exc:
            pool.close()
            self._mark_stuck(name, exc)
            return False
        except NoSlotsError:  # a "no-cache" pool: not a failure, and not tried again until it changes
            pool.close()
            self._skip_no_slots(name, inode, prev_skip)
            return False
        except Exception as exc:  # noqa: BLE001 - one pool's failure must not stop the others
            pool.close()
            self._attach_failed(name, "cannot drive it", str(exc), logging.ERROR, inode)
            return False
        self._attach_errors.pop(name, None)
        self._attach_backoff.pop(name, None)
        self._retry_after.pop(name, None)
        try:  # what the rings dropped before: the lag warnings count only the drops since now
            drops_base = sum(int(getattr(r, "drops", 0)) for r in pool.rings())
        except Exception:  # noqa: BLE001 - only a warning's baseline
            drops_base = 0
        self._warned_drops.pop(name, None)
        # the inode checked for its owner: if the object was replaced since, _discover detaches it
        att = _Attached(driver=driver, tracker=AppTracker(driver), policy_cfg=pc, inode=inode,
                        budget=page_budget, stream=PoolStream(driver), drops_base=drops_base,
                        repairs=pool.repairs() if pc.mode != "pages" else 0,
                        owner_uid=_shm_owner(name, inode))
        if pc.retrain_every:
            att.retrainer = Retrainer(name, pc, driver.capacity, self.cfg.state_dir,
                                      model_dir=run_pc.model_dir if run_name == pc.name else None)
            assert att.stream is not None
            att.stream.add_sink("window", att.retrainer.window)
        self.pools[name] = att
        stuck = self.stuck.pop(name, None)
        if stuck is not None:
            log.warning("pool %s: its writer lock is free again after %.1f s; served again", name,
                        time.monotonic() - stuck.since_mono)
        try:
            att.tracker.check()
        except PoolLockedError as exc:
            self._lock_held(name, exc)
            return False
        if pc.mode == "pages":
            log.info("pool %s attached in page mode: %d tables, %d pages, budget %d pages on node %d, "
                     "%d promoted", name, driver.n_tables, int(driver.offsets[-1]), driver.n_slots,
                     pc.pages.fast_node, driver.resident_count())
        else:
            log.info("pool %s attached: %d tables, %d slots, %d resident", name, driver.n_tables,
                     driver.n_slots, driver.resident_count())
        return True

    def _skip_no_slots(self, name: str, inode: int | None, prev_skip: str | None) -> None:
        """A pool without fast-tier slots: skipped (``skipped`` says why; logged once, at INFO) and not
        attached again until its object changes (another inode) or the configuration is reloaded."""
        self.skipped[name] = NO_SLOTS
        self._no_slots[name] = inode
        self._attach_errors.pop(name, None)
        self._attach_backoff.pop(name, None)
        self._retry_after.pop(name, None)
        self.stuck.pop(name, None)
        if prev_skip != NO_SLOTS:
            log.info("pool %s has no fast-tier slots: nothing to manage (skipped until its object changes)",
                     name)

    def _attach_failed(self, name: str, what: str, msg: str, level: int, inode: int | None) -> None:
        """A pool failed to attach: tried again after a delay that doubles from app_check_interval up to
        ATTACH_RETRY_MAX (reset by a success, a reload or a new object of the name); logged once a
        message."""
        prev = self._attach_backoff.get(name)
        delay = self.cfg.app_check_interval if prev is None else min(ATTACH_RETRY_MAX, 2 * prev[0])
        self._attach_backoff[name] = (delay, inode)
        self._retry_after[name] = time.monotonic() + delay
        if self._attach_errors.get(name) != msg:
            log.log(level, "pool %s: %s: %s (tried again later, at least every %.0f s)", name, what,
                    one_line(msg), ATTACH_RETRY_MAX)
            self._attach_errors[name] = msg

    def _mark_stuck(self, name: str, exc: PoolLockedError) -> None:
        """Note that the pool's writer lock stayed held (logged once per episode); retried after
        RETRY_STUCK, doubled at each try of the episode up to ATTACH_RETRY_MAX (a retry finds a held lock
        without waiting for it, so many stuck pools cost the loop next to nothing)."""
        now = time.monotonic()
        st = self.stuck.get(name)
        if st is None:
            st = self.stuck[name] = _Stuck(since=time.time(), since_mono=now, error=str(exc))
            log.warning("pool %s: stuck: %s; skipped (the other pools go on), tried again after %.0f s, "
                        "then at doubling intervals up to %.0f s", name, exc, RETRY_STUCK, ATTACH_RETRY_MAX)
        else:
            st.tries += 1
            st.error = str(exc)
        self._retry_after[name] = now + min(ATTACH_RETRY_MAX, RETRY_STUCK * 2.0 ** min(st.tries - 1, 16))

    def _lock_held(self, name: str, exc: PoolLockedError) -> None:
        """A pool call found the writer lock held: the step may be half applied, so the pool is
        detached (its mirror is rebuilt from the fast tier when it is attached again) and skipped."""
        self._detach(name, "its writer lock is held by another process")
        self._mark_stuck(name, exc)

    def _check_repairs(self, att: _Attached) -> None:
        """Row mode: a writer that died holding the writer lock is repaired now (Pool.repair: a
        write_rows cut short leaves its table's copies older than the slow rows until then); when rows
        left the fast tier behind the daemon (that repair, or a writer dropping copies: Pool.repairs()
        moved), its mirror says resident what is not, so the pool is detached and attached again at
        once, which rebuilds the mirror from the fast tier; at most once in REPAIR_RESYNC_MIN a pool
        (the count is in the pool's shared memory: an app could bump it at every check)."""
        if isinstance(att.driver, PageDriver):
            return
        name = att.driver.name
        att.driver.pool.repair()  # type: ignore[attr-defined]  # (a dead writer's lock: repaired now)
        now = time.monotonic()
        if now - self._resynced.get(name, -REPAIR_RESYNC_MIN) < REPAIR_RESYNC_MIN:
            return  # (seen at a later check)
        if att.driver.pool.repairs() != att.repairs:  # type: ignore[attr-defined]
            self._resynced[name] = now
            log.warning("pool %s: rows left its fast tier behind the daemon (a writer died in the middle "
                        "of a change, or dropped copies): attached again to rebuild what it knows", name)
            self._detach(name, "its fast tier was repaired")
            self._retry_after.pop(name, None)

    def _detach(self, name: str, why: str, demote: bool = False) -> None:
        att = self.pools.pop(name, None)
        if att is None:
            return
        if att.retrainer is not None:
            att.retrainer.close()
        if att.stream is not None:
            att.stream.close(f"pool detached: {why}")
        att.driver.close()
        if demote and isinstance(att.driver, PageDriver):
            try:
                att.driver.pages.demote_all()
            except Exception as exc:  # noqa: BLE001 - leaving page mode must not fail the reload
                log.warning("pool %s: demoting its pages failed: %s", name, exc)
        try:
            att.driver.pool.close()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001
            log.warning("pool %s: close failed: %s", name, exc)
        log.info("pool %s detached (%s)", name, why)

    def _discover(self) -> None:
        """Attach pools that appeared; detach pools whose object was removed or replaced."""
        for name in list(self.pools):
            ino = _shm_inode(name)
            if ino is None:
                self._detach(name, "its shared-memory object was removed")
            elif ino != self.pools[name].inode:
                self._detach(name, "its shared-memory object was replaced")
            elif not self.cfg.manages(name):
                self._detach(name, "no longer in the configuration")
            else:
                _, problem = owner_problem(name, *self._served)
                if problem is not None:
                    self._detach(name, f"skipped: {problem}")
        wanted = discover_pools(self.cfg.pools)
        present = set(wanted)
        for table in (self.stuck, self.skipped, self._attach_backoff, self._retry_after, self._no_slots,
                      self._attach_errors):
            for name in [n for n in table if n not in present]:
                del table[name]
        for name, ino in list(self._no_slots.items()):
            if name not in self.pools and _shm_inode(name) != ino:  # a new object: looked at again
                del self._no_slots[name]
        for name, (_, ino) in list(self._attach_backoff.items()):
            if name not in self.pools and _shm_inode(name) != ino:  # a new object: no more waiting
                del self._attach_backoff[name]
                self._retry_after.pop(name, None)
        now = time.monotonic()
        for name in wanted:
            if control_character(name):  # found by pools = "all": no configuration can name it
                if name not in self.skipped:
                    log.warning("pool %r: skipped: its name holds a control character", name)
                    self.skipped[name] = "its name holds a control character"
                continue
            if name in self._no_slots:  # nothing to manage (the same object as when it was skipped)
                continue
            if name not in self.pools and self._retry_after.get(name, 0.0) <= now:
                self._attach(name)

    def waiting_for(self) -> list[str]:
        """The pools the daemon should drive and does not: those the configuration names, and with
        pools = "all" the ones found that failed to attach (each with its reason in attach_errors())."""
        if self.cfg.pools is None:  # (stuck at its first attach: in stuck, not in the attach errors)
            return [n for n in {**self._attach_errors, **self.stuck} if n not in self.pools]
        return [n for n in self.cfg.pools if n not in self.pools]

    def attach_errors(self) -> dict[str, str]:
        """Why each pool the daemon should drive is not driven, one line a pool: stuck, skipped, or the
        last attach error (a configured pool not made yet: its "no such pool")."""
        out = {}
        for name in self.waiting_for():
            stuck = self.stuck.get(name)
            why = (f"stuck: {stuck.error}" if stuck else
                   f"skipped: {self.skipped[name]}" if name in self.skipped else
                   self._attach_errors.get(name))
            if why:
                out[name] = one_line(why)
        return out

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "daemon": {
                "pid": os.getpid(),
                "uptime_s": round(now - self.started, 3),
                "config": self.cfg.path,
                "step_mode": self.cfg.step_mode,
                "ticks": self.ticks,
                "loop_lag_s": round(self.lag_max if self.lag_max else self.lag, 6),
                "lookups_per_s": round(self._rate, 1),
                "reloads": self.reloads,
                "shm_huge": self.shm_huge,
                "last_reload_error": self.last_reload_error,
                "waiting_for": self.waiting_for(),
                "attach_errors": self.attach_errors(),
                "stuck": {name: {"since": round(st.since, 3), "for_s": round(now - st.since_mono, 3),
                                 "tries": st.tries, "error": st.error}
                          for name, st in self.stuck.items()},
                "skipped": dict(self.skipped),
            },
            "pools": {name: self._pool_stats(att) for name, att in self.pools.items()},
        }

    @staticmethod
    def _pool_stats(att: _Attached) -> dict[str, Any]:
        out = att.driver.stats()
        rec = att.stream.stats() if att.stream is not None else None
        if rec is not None:
            out["recording"] = rec
        if att.retrainer is not None:
            out["retrain"] = att.retrainer.stats()
        return out

    def status_line(self) -> str:
        n = len(self.pools)
        hits = uniq = 0
        for att in self.pools.values():
            hits += int(att.driver.tc["hits"].sum())
            uniq += int(att.driver.tc["unique"].sum())
        parts = [f"{n} pool{'s' if n != 1 else ''}", f"{self._rate / 1e6:.2f}M lookups/s"]
        parts.append(f"hit rate {100.0 * hits / uniq:.1f}%" if uniq else "hit rate -")
        parts.append(f"lag {self.lag * 1e3:.0f} ms")
        paused = [name for name, a in self.pools.items() if a.driver.paused]
        if paused:
            parts.append("paused: " + ",".join(paused))
        waiting = [n for n in self.waiting_for() if n not in self.stuck]
        if waiting:
            parts.append("waiting for " + ",".join(waiting))
        if self.stuck:
            parts.append("stuck: " + ",".join(self.stuck))
        if self.last_reload_error:
            parts.append("last reload failed: " + self.last_reload_error)
        return "; ".join(parts)

    def _update_rate(self, now: float) -> None:
        t0, r0 = self._rate_mark
        records = sum(att.driver.pc["records"] for att in self.pools.values())
        if now - t0 >= 0.5:
            self._rate = max(0.0, (records - r0) / (now - t0))
            self._rate_mark = (now, records)

    # -- control -------------------------------------------------------------------------------

    def _pool_arg(self, args: dict[str, Any], act: str = "") -> _Attached:
        """The pool a command names. ``act``: the command changes or reads out the pool (record, pause,
        resume, policy, retrain), which only the pool's owner, root and the daemon's own user may do:
        a member of the socket's group may read the stats of every pool, not record another user's
        lookups nor steer their pool (the client's uid is the kernel's, SO_PEERCRED)."""
        name = args.get("pool")
        if not isinstance(name, str):
            raise CommandError("missing argument \"pool\" (a pool name)")
        att = self.pools.get(name)
        if att is None:
            raise CommandError(f"no such pool {name!r} (attached: {', '.join(self.pools) or 'none'})")
        peer = self.control.peer() if act and self.control is not None else None
        if peer is not None and peer[0] not in (0, os.geteuid(), att.owner_uid):
            raise CommandError(f"pool {name}: only its owner (uid {att.owner_uid}), root or the daemon's "
                               f"user may {act} it (you are uid {peer[0]})")
        return att

    def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "stats":
            return self.stats()
        if cmd == "pools":
            out = []
            for name, att in self.pools.items():
                d = att.driver
                tables = [{"rows": int(r), "row_bytes": int(b)}
                          for r, b in zip(d.table_rows, d.table_row_bytes, strict=True)]
                apps = [{"ring": i, "pid": p} for i, (p, _) in sorted(att.tracker.known.items())]
                out.append({"name": name, "mode": d.mode, "policy": d.policy_name, "paused": d.paused,
                            "n_slots": d.n_slots,
                            "capacity": d.capacity, "hint_slots": d.hint_slots,
                            "resident": d.resident_count(), "tables": tables, "apps": apps})
            errors = self.attach_errors()
            for name in self.waiting_for():
                out.append({"name": name, "waiting": True, "error": errors.get(name)})
            return out
        if cmd == "reload":
            peer = self.control.peer() if self.control is not None else None
            if peer is not None and peer[0] not in (0, os.geteuid()):
                # (it resets every owner's policy switches: the admin's, as SIGHUP is)
                raise CommandError(f"only root or the daemon's user may reload its configuration (you are "
                                   f"uid {peer[0]})")
            err = self.reload()
            if err:
                raise CommandError(f"reload failed, the running configuration is kept: {err}")
            return {"config": self.cfg.path, "reloads": self.reloads}
        if cmd in ("pause", "resume"):
            att = self._pool_arg(args, cmd)
            att.driver.paused = cmd == "pause"
            log.info("pool %s %s", att.driver.name, "paused" if att.driver.paused else "resumed")
            return {"pool": att.driver.name, "paused": att.driver.paused}
        if cmd == "policy":
            att = self._pool_arg(args, "switch the policy of")
            name = args.get("name")
            if not isinstance(name, str) or not name:
                raise CommandError("missing argument \"name\" (a policy name)")
            model = args.get("model_dir")
            if model is not None and (not isinstance(model, str) or not os.path.isabs(model)):
                raise CommandError("argument \"model_dir\": expected an absolute path")
            if model is not None and not policy_mod.unknown([name]) and not policy_mod.is_learned(name):
                raise CommandError(f"argument \"model_dir\": policy {name!r} takes no model (a learned one "
                                   "does: recmg, recmg-cache, ...)")
            peer = self.control.peer() if self.control is not None else None
            if model is not None and peer is not None and peer[0] not in (0, os.geteuid()):
                try:  # the daemon reads it with its own rights: only a folder of the client's own
                    mine = os.stat(model).st_uid == peer[0]
                except OSError:
                    mine = False
                if not mine:
                    raise CommandError(f"argument \"model_dir\": {model} must be a directory of yours "
                                       f"(uid {peer[0]})")
            pc = att.policy_cfg
            new_pc = dataclasses.replace(pc, name=name, model_dir=model or pc.model_dir)
            pol = create_policy(name, new_pc.create_options(), pool=att.driver.name, mode=pc.mode)
            self._policy_override[att.driver.name] = name
            if model:
                self._model_override[att.driver.name] = model
                att.policy_cfg = dataclasses.replace(pc, model_dir=model)
            try:
                att.driver.switch_policy(pol, name)
            except PoolLockedError as exc:
                self._lock_held(att.driver.name, exc)
                raise CommandError(f"pool {att.driver.name}: {exc}; the policy is switched when the pool "
                                   "is attached again") from None
            log.info("pool %s: policy switched to %s", att.driver.name, name)
            return {"pool": att.driver.name, "policy": name}
        if cmd == "record":
            att = self._pool_arg(args, "record")
            assert att.stream is not None and self.control is not None
            return att.stream.command(args, self.control.take_fd)
        if cmd == "retrain":
            att = self._pool_arg(args, "retrain")
            if att.retrainer is None:
                raise CommandError(f"pool {att.driver.name} does not retrain (set retrain_every in its "
                                   "policy section)")
            return att.retrainer.start("recmgctl retrain")
        raise CommandError(f"unknown command {cmd!r}")

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> str | None:
        """Re-read the configuration; on any problem keep the running one. Returns the error, if any."""
        self.notifier.reloading()
        err = None
        try:
            log.info("reloading %s", self.config_path or config_mod.DEFAULT_PATH)
            self._reload_now()
        except Exception as exc:  # noqa: BLE001 - a reload never takes the daemon down
            if isinstance(exc, RecmgError):
                err = one_line(str(exc))
            else:  # a bug: still one line (the traceback at debug level)
                log.debug("reload failed", exc_info=True)
                err = one_line(f"internal error: {type(exc).__name__}: {exc}")
            self.last_reload_error = err
            log.error("reload failed, keeping the running configuration: %s", err)
        else:
            self.last_reload_error = None
            self.reloads += 1
            log.info("reloaded %s", self.cfg.path)
        finally:  # systemd waits for READY=1 after RELOADING=1, whatever happened
            self.notifier.ready(self.status_line())
        return err

    def _reload_now(self) -> None:
        new = self._effective(config_mod.load(self.config_path, missing_ok=self.config_path is None))
        config_mod.validate_policies(new)
        old = self.cfg
        # everything that can fail is prepared before anything changes
        new_policies = {}
        reattach = []  # pools whose mode or page-mode settings change: attached again
        for name, att in self.pools.items():
            pc = new.policy_for(name)
            switched = name in self._policy_override  # by `recmgctl policy` (a reload reverts it)
            retrain = (pc.retrain_every or att.policy_cfg.retrain_every) and pc != att.policy_cfg
            if new.manages(name) and (pc.mode != att.policy_cfg.mode or retrain
                                      or (pc.mode == "pages" and pc.pages != att.policy_cfg.pages)):
                key = f"pool.{name}.mode" if name in new.pool_policies else "policy.mode"
                problem = page_mode_problem(name, str(att.driver.pool.slow)) if pc.mode == "pages" else None
                if problem:
                    raise ConfigError(f"{new.path}: {key}: {problem}")
                # fails now, not at the attach
                if pc.retrain_every:
                    load_starting_policy(name, pc, new.state_dir, dict(self._bad_checkpoints))
                else:
                    create_policy(pc.name, pc.create_options(), pool=name, mode=pc.mode)
                reattach.append(name)
                continue
            if pc.hint_slots >= att.driver.n_slots:
                key = f"pool.{name}.hint_slots" if name in new.pool_policies else "policy.hint_slots"
                raise ConfigError(f"{new.path}: {key}: impossible value {pc.hint_slots} (pool {name} has "
                                  f"{att.driver.n_slots} slots; the policy needs at least one)")
            if new.manages(name) and (pc != att.policy_cfg or switched):
                if pc.retrain_every:  # (its last retrained checkpoint, the configured one, or LRU)
                    run_name, _, pol = load_starting_policy(name, pc, new.state_dir,
                                                            dict(self._bad_checkpoints))
                else:
                    run_name = pc.name
                    pol = create_policy(pc.name, pc.create_options(), pool=name, mode=pc.mode)
                new_policies[name] = (pc, pol, run_name)
        new_control = None
        if new.control.socket != old.control.socket:
            nc = new.control
            new_control = ControlServer(nc.socket, nc.mode, self.handle, nc.max_request, nc.group)
            try:
                new_control.open()
            except RecmgError as exc:
                raise ConfigError(f"{new.path}: control.socket: {exc}") from None
        elif new.control != old.control:
            assert self.control is not None
            try:
                self.control.apply_access(new.control.mode, new.control.group)
            except RecmgError as exc:
                raise ConfigError(f"{new.path}: control.group: {exc}") from None
        new_metrics = None
        metrics_changed = new.metrics.address != old.metrics.address
        if metrics_changed and new.metrics.address is not None:
            new_metrics = MetricsServer(new.metrics.address, lambda: self._snapshot)
            try:
                if self.metrics is not None and old.metrics.address is not None:
                    self.metrics.stop()  # the new address may be the same port on another host
                new_metrics.start()
            except RecmgError as exc:
                if new_control is not None:
                    new_control.close()
                if self.metrics is not None:
                    self.metrics.start()
                raise ConfigError(f"{new.path}: metrics.listen: {exc}") from None
        # commit
        self.cfg = new
        self._served = new.served_ids()
        set_level(new.log_level)
        for name in reattach:
            self._detach(name, "its mode or page-mode settings changed", demote=True)
        self._configure_budget()
        self._policy_override.clear()
        self._model_override.clear()
        for name, (pc, pol, run_name) in new_policies.items():
            att = self.pools[name]
            try:
                att.driver.switch_policy(pol, run_name, hint_slots=pc.hint_slots)
                att.driver.mover.pin_steps = pc.hint_pin_batches
            except PoolLockedError as exc:  # attached again later, with the new configuration
                self._lock_held(name, exc)
                continue
            att.policy_cfg = pc
        for att in self.pools.values():
            att.driver.step_mode = new.step_mode
            att.driver.max_drain = new.max_drain
            att.driver.coalesce = new.coalesce
            att.driver.early_admit = new.early_admit
        assert self.control is not None
        if new_control is not None:
            # the old socket may be serving this very request (recmgctl reload): close it after the poll
            self._retired.append(self.control)
            new_control.add_reader(self._wake_r, self._drain_wakeup)
            self.control = new_control
            if not self._polling:
                self._close_retired()
        elif new.control != old.control:
            self.control.max_request = new.control.max_request
        if metrics_changed:
            if new_metrics is None and self.metrics is not None:
                self.metrics.stop()
            self.metrics = new_metrics
        for name in self._attach_backoff:  # a new configuration: the pools that failed are tried now
            self._retry_after.pop(name, None)
        self._attach_backoff.clear()
        self._no_slots.clear()  # and the pools without slots looked at again (logged again only if changed)
        self._discover()

    def _close_retired(self) -> None:
        while self._retired:
            self._retired.pop().close()

    # -- main loop -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Open the control socket and the metrics listener, attach the pools, say READY. A start that
        fails removes what it made (the control socket, the metrics listener, attached pools) before the
        error goes on: the next start finds things as they were."""
        try:
            self._setup()
        except BaseException:
            self._release()
            raise

    def _setup(self) -> None:
        self._install_signals()
        c = self.cfg.control
        self.control = ControlServer(c.socket, c.mode, self.handle, c.max_request, c.group)
        self.control.open()
        self.control.add_reader(self._wake_r, self._drain_wakeup)
        addr = self.cfg.metrics.address
        if addr is not None:
            self.metrics = MetricsServer(addr, lambda: self._snapshot)
            self.metrics.start()
        self.shm_huge = huge_mode()
        if self.shm_huge not in HUGE_OK:
            log.info("%s is mounted with huge=%s: fast tiers stay on 4 KiB pages (mount it with huge=advise "
                     "for faster hits; README, \"Huge pages\")", SHM_DIR, self.shm_huge)
        self._discover()
        self._snapshot = self.stats()
        waiting = self.waiting_for()
        if waiting:
            log.info("waiting for pools: %s", ", ".join(waiting))
        self.notifier.ready(self.status_line())
        log.info("recmgd ready: %d pool%s attached (pid %d, step mode %s)", len(self.pools),
                 "" if len(self.pools) == 1 else "s", os.getpid(),
                 "on" if self.cfg.step_mode else "off")

    def tick(self) -> None:
        if self.stall_file:
            while os.path.exists(self.stall_file):  # test hook: a stuck loop
                time.sleep(0.02)
        for name, att in list(self.pools.items()):
            try:
                att.driver.tick()
                if att.stream is not None:
                    att.stream.poll()
                if att.retrainer is not None:
                    self._retrain_step(name, att)
            except PoolLockedError as exc:
                self._lock_held(name, exc)
            except Exception as exc:  # noqa: BLE001 - one pool's failure must not stop the others
                if isinstance(exc, PoolError):
                    log.error("pool %s: %s", name, exc)
                else:
                    log.exception("pool %s: the loop failed (policy %s)", name, att.driver.policy_name)
                # its mirror may be off now: detach, and attach again later (rebuilt from the fast tier)
                self._detach(name, f"error: {exc}")
                self._attach_errors[name] = f"{type(exc).__name__}: {exc}"
                self._retry_after[name] = time.monotonic() + RETRY_AFTER_ERROR
        self.ticks += 1

    def _retrain_step(self, name: str, att: _Attached) -> None:
        """Start a retrain that is due; switch to a finished one's model when it won."""
        rt = att.retrainer
        assert rt is not None
        now = time.monotonic()
        if rt.due(now):
            try:
                rt.start(f"every {rt.every:g} s")
            except CommandError as exc:
                log.warning("%s", exc)
                rt.next_due = now + rt.every
        done = rt.poll()
        if done is not None:
            model_dir, pol = done
            att.driver.switch_policy(pol, rt.policy)
            rt.switched(model_dir)

    def _check_drops(self, now: float) -> None:
        if self.lag > max(1.0, 10 * self.cfg.interval) and now - self._last_warn > 10.0:
            log.warning("the loop lags: the last tick ended %.0f ms after it was due", self.lag * 1e3)
            self._last_warn = now
        for name, att in self.pools.items():
            d = att.driver.dropped_total - att.drops_base  # since the daemon attached it
            if d > self._warned_drops.get(name, 0) and now - self._last_warn > 10.0:
                log.warning("pool %s: apps dropped %d ring records since the daemon attached the pool (the "
                            "daemon lags; lag %.1f ms, backlog %d)", name, d, self.lag * 1e3,
                            att.driver.backlog)
                self._warned_drops[name] = d
                self._last_warn = now

    def run(self) -> int:
        self.setup()
        assert self.control is not None
        next_tick = time.monotonic()
        next_status = next_tick + self.cfg.status_interval
        next_apps = next_tick + self.cfg.app_check_interval
        next_snapshot = next_tick
        try:
            while not self._stop:
                now = time.monotonic()
                if now >= next_tick:
                    self.tick()
                    end = time.monotonic()
                    self.lag = max(0.0, end - next_tick)
                    self.lag_max = max(self.lag_max, self.lag)
                    next_tick += self.cfg.interval
                    if next_tick < end:  # behind: do not try to catch up with a burst of ticks
                        next_tick = end
                    now = end
                self.notifier.watchdog(now)  # from the loop itself: a stuck tick misses it
                if now >= next_apps:
                    for att in list(self.pools.values()):
                        try:
                            att.tracker.check()
                            self._check_repairs(att)
                        except PoolLockedError as exc:
                            self._lock_held(att.driver.name, exc)
                        except PoolError as exc:
                            log.error("pool %s: %s", att.driver.name, exc)
                    self._discover()
                    next_apps = now + self.cfg.app_check_interval
                if now >= next_snapshot:
                    self._update_rate(now)
                    if self.metrics is not None:
                        self._snapshot = self.stats()
                    self._check_drops(now)
                    next_snapshot = now + 0.5
                if now >= next_status:
                    self.notifier.status(self.status_line())
                    self.lag_max = 0.0
                    next_status = now + self.cfg.status_interval
                if self._reload:
                    self._reload = False
                    self.reload()
                    next_tick = min(next_tick, time.monotonic())
                if self._stop:
                    break
                now = time.monotonic()
                timeout = max(0.0, next_tick - now)
                wd = self.notifier.next_watchdog_in(now)
                if wd is not None:
                    timeout = min(timeout, wd)
                self._polling = True
                try:
                    self.control.poll(timeout)
                finally:
                    self._polling = False
                self._close_retired()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        self._release()

    def _release(self) -> None:
        """Detach every pool, close the control socket (its file removed) and the metrics listener, and
        stop taking signals on the wakeup socket: at a stop, and after a start that failed."""
        for name in list(self.pools):
            self._detach(name, "stopping")
        self._close_retired()
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
