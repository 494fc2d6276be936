"""Stress: rings taken over between the daemon's drains, by real app processes that die at random moments.

A real pool with few rings (the test process holds one, so apps take dead apps' rings over), real forked
app processes that attach, log batches (lookups, sometimes hints, each batch's lookups in one or two
calls) of keys that name their app, batch and position, sometimes leave a batch unfinished, and leave by
closing, by ``os._exit`` holding their ring, or by SIGKILL at a random moment (the test reaps them at
random moments too: a zombie still holds its ring). Against them a daemon-role handle with a real
:class:`~recmgd.daemon.tracker.RingTracker` (step mode, a drain budget drawn per seed, hints sometimes
taken ahead), a recording's :class:`~recmgd.daemon.record.BatchSplitter` fed by a tap (``forget`` its
reset listener) from the start and a second one started at a random moment (``mid_batch``), and the
app check (:class:`~recmgd.daemon.apps.AppTracker`: ``flush_ring``, then ``release_ring``), the drains
and checks at random moments.

It asserts:

- every batch the tracker hands on is exactly one app's whole batch: its lookups all of that batch's,
  in the app's order, its hints that batch's (less those the tracker offered ahead, which were taken),
  one batch (``n_batches`` 1), and a batch the app ended (or was ending when it was killed);
- no batch is handed on twice (no join, no split: a split or joined batch is not one app's whole batch);
- every batch an app ended (its ``end_batch`` returned) is handed on, exactly once, once the apps are
  gone and the rings drained (the batch it was ending when killed: at most once);
- the recording's splitter returns the tracker's batches (their lookups), the same ones in the same
  order; the one started later returns whole batches only, the tracker's after its start in order,
  short of at most one batch for each ring whose batch was under way when it started;
- nothing explains a loss: no ring dropped a record (the rings hold far more than all the apps of a
  run log), nothing was cut at a cap, and at the end nothing is pending in the tracker or the splitters.

``RECMG_STRESS_ITERATIONS`` (default 30) sets how many seeds run (one test each, ``seed<N>``), from
``RECMG_STRESS_SEED`` (default 0): a soak is ``RECMG_STRESS_ITERATIONS=500 pytest ...``. A failure names
its seed, with the run's last events (drained records: L lookup, H hint, E batch end, O change of owner;
looks, flushes, resets); the apps' plans and the test's actions follow from it (the timing does not).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from recmgd.daemon.apps import AppTracker
from recmgd.daemon.record import BatchSplitter
from recmgd.daemon.tracker import RingTracker
from recmgd.errors import PoolError
from recmgd.pool import Pool

#: the most batches an app logs, the most lookups (and hints) a batch has: a row names (app, batch, j)
MAX_BATCHES, MAX_LOOKUPS, MAX_HINTS = 5, 6, 2
SLOT = 16  # rows per (app, batch): lookups at j < 8, hints at 8 + j
HINT_BASE = 8
APPS = 48  # app processes a seed starts (at most)
STEPS = 160  # the test's actions a seed
ROWS = APPS * MAX_BATCHES * SLOT
RING_RECORDS = 8192  # more than all the apps of a seed log: no ring ever drops
ROW_MASK = (1 << 40) - 1

ITERATIONS = int(os.environ.get("RECMG_STRESS_ITERATIONS", "30"))
FIRST_SEED = int(os.environ.get("RECMG_STRESS_SEED", "0"))

# the shared array: per app, its ring (-1 not yet, -2 none free), the batches it ended (end_batch returned)
# and the batches it began to end (the count before end_batch is called: one more while it is under way)
RING, ENDED, ENDING = 0, 1, 2
NO_RING = -2


def row(app: int, batch: int, j: int) -> int:
    return (app * MAX_BATCHES + batch) * SLOT + j


def whose(r: int) -> tuple[int, int, int]:
    """(app, batch, j) of a row."""
    slot, j = divmod(r, SLOT)
    return slot // MAX_BATCHES, slot % MAX_BATCHES, j


@dataclass(frozen=True)
class AppPlan:
    """What one app process does, drawn from the seed."""

    calls: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...]  # per batch: ("lookup" | "hint", rows)
    n_ended: int  # the batches it ends (the rest, at most one, is left unfinished)
    leave: str  # "close" | "exit" (dies holding its ring) | "hang" (until killed)
    pause: float  # the longest pause between its calls (s)
    seed: int

    def lookups(self, b: int) -> list[int]:
        return [r for kind, rows in self.calls[b] if kind == "lookup" for r in rows]

    def hints(self, b: int) -> list[int]:
        return [r for kind, rows in self.calls[b] if kind == "hint" for r in rows]

    def records(self) -> int:
        """The ring records it logs at most (a change of owner too)."""
        return 1 + self.n_ended + sum(len(rows) for b in self.calls for _, rows in b)


def make_plan(rng: random.Random, app: int, hang_ok: bool) -> AppPlan:
    n = rng.randint(0, MAX_BATCHES)
    batches = []
    for b in range(n):
        look = [row(app, b, j) for j in range(rng.randint(1, MAX_LOOKUPS))]
        calls: list[tuple[str, tuple[int, ...]]] = []
        if rng.random() < 0.3:
            n_hints = rng.randint(1, MAX_HINTS)
            calls.append(("hint", tuple(row(app, b, HINT_BASE + j) for j in range(n_hints))))
        cut = rng.randint(1, len(look)) if rng.random() < 0.5 else len(look)
        calls.append(("lookup", tuple(look[:cut])))
        if cut < len(look):
            calls.append(("lookup", tuple(look[cut:])))
        batches.append(tuple(calls))
    n_ended = n - 1 if n and rng.random() < 0.4 else n
    leave = rng.choices(["close", "exit", "hang"], weights=[3, 4, 2 if hang_ok else 0])[0]
    return AppPlan(tuple(batches), n_ended, leave, rng.choice([0.0, 0.0005, 0.003]), rng.randrange(1 << 30))


def _app(name: str, a: int, plan: AppPlan, shared: ctypes.Array[ctypes.c_int64]) -> None:
    """The app process: never returns (os._exit; 3 when it failed)."""
    code = 3
    try:
        rng = random.Random(plan.seed)

        def pause() -> None:
            if plan.pause and rng.random() < 0.5:
                time.sleep(rng.random() * plan.pause)

        try:
            p = Pool.attach(name)
        except PoolError:  # every ring owned by a live process (or a zombie)
            shared[3 * a + RING] = NO_RING
            os._exit(0)
        shared[3 * a + RING] = p.ring_index
        for b, calls in enumerate(plan.calls):
            for kind, rows in calls:
                if kind == "hint":
                    p.hint(0, np.array(rows, dtype=np.int64))
                else:
                    p.embedding_bag(0, np.array(rows, dtype=np.int64), np.array([0], dtype=np.int64))
                pause()
            if b < plan.n_ended:
                shared[3 * a + ENDING] = b + 1
                p.end_batch()
                shared[3 * a + ENDED] = b + 1
                pause()
        if plan.leave == "close":
            p.close()
        elif plan.leave == "hang":
            time.sleep(60)
        code = 0
    finally:
        os._exit(code)


class Driver:
    """What AppTracker needs of a PoolDriver, over a RingTracker (PoolDriver.flush_ring's contract)."""

    name = "stress"

    def __init__(self, pool: Pool, tracker: RingTracker, log: list[str]) -> None:  # (log: the run's)
        self.pool, self.tracker, self.log = pool, tracker, log
        self.pc = {"rings_released": 0, "records": 0}

    def flush_ring(self, index: int, info: object = None) -> bool:
        self.log.append(f"flush ring {index} ({info})")
        drained, empty = self.tracker.flush_ring(index, info)
        self.log.append(f"flushed ring {index}: {drained} records, empty {empty}")
        self.pc["records"] += drained
        return empty


@dataclass
class Run:
    """One seed's run: the pool, the daemon's parts, the apps and what came out."""

    seed: int
    rng: random.Random
    plans: dict[int, AppPlan] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=dict)  # pid -> app, not reaped yet
    batches: list[tuple[list[int], list[int]]] = field(default_factory=list)  # the tracker's (lookups, hints)
    taken: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # hints taken ahead, per batch
    recorded: list[list[int]] = field(default_factory=list)
    late: list[list[int]] = field(default_factory=list)
    late_from: int = -1  # the tracker's batch count when the late splitter started
    late_mid: dict[int, int] = field(default_factory=dict)  # its mid_batch
    log: list[str] = field(default_factory=list)


def _batches_of(body: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    rows = (np.asarray(body, dtype=np.int64) & ROW_MASK).tolist()
    out, at = [], 0
    for n in lengths.tolist():
        out.append(rows[at:at + n])
        at += n
    return out


def _show(recs: np.ndarray) -> str:
    """Drained records, short: L(app,batch,j) lookups, H hints, E batch ends, O(pid) changes of owner."""
    out = []
    for w in np.asarray(recs, dtype=np.uint64).tolist():
        kind, key = w >> 62, w & ((1 << 62) - 1)
        if kind == 1:
            out.append("E")
        elif kind == 3:
            out.append(f"O{key}")
        else:
            a, b, j = whose(key & ROW_MASK)
            out.append(f"{'LH'[kind >> 1]}{a}.{b}.{j}")
    return " ".join(out)


def _reap(run: Run, block: bool = False) -> None:
    for pid in list(run.live):
        got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if got:
            assert os.WIFSIGNALED(status) or os.waitstatus_to_exitcode(status) == 0, f"app failed: {status}"
            del run.live[pid]


def _spawn(run: Run, name: str, shared: ctypes.Array[ctypes.c_int64], hang_ok: bool = True) -> int:
    a = len(run.plans)
    # (each app's plan from its own generator: the same whatever the timing did to the run's draws)
    plan = run.plans[a] = make_plan(random.Random(run.seed * 1000 + a), a, hang_ok)
    pid = os.fork()
    if pid == 0:
        _app(name, a, plan, shared)
    run.live[pid] = a
    run.log.append(f"spawn app {a} pid {pid} {plan.leave} ended {plan.n_ended}/{len(plan.calls)}")
    return pid


def _wait_out(run: Run, pid: int, deadline_s: float = 10.0) -> None:
    """Waits for one app to exit (SIGKILL after the deadline) and reaps it."""
    end = time.monotonic() + deadline_s
    while True:
        got, _ = os.waitpid(pid, os.WNOHANG)
        if got:
            del run.live[pid]
            return
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            del run.live[pid]
            return
        time.sleep(0.0005)


def _check_batch(run: Run, shared: ctypes.Array[ctypes.c_int64], lookups: list[int],
                 hints: list[int]) -> None:
    assert lookups, f"an empty batch (no app ends one): {hints}"
    a, b, _ = whose(lookups[0])
    assert a in run.plans, f"a batch of no app: {lookups}"
    plan = run.plans[a]
    assert b < len(plan.calls) and lookups == plan.lookups(b), \
        f"not app {a}'s whole batch {b} (joined or split): {[whose(r) for r in lookups]}"
    assert b < shared[3 * a + ENDING], f"app {a}'s batch {b} was never ended"
    want = plan.hints(b)
    got = sorted(hints + run.taken.get((a, b), []))
    assert got == sorted(want), f"app {a} batch {b}: hints {hints} + taken {run.taken.get((a, b))} != {want}"


def _one_seed(seed: int) -> None:
    rng = random.Random(seed)
    name = f"rt_takeover_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    n_rings = rng.choice([2, 3])  # the test process holds one
    budget = rng.choice([3, 8, 40, 262144])
    take_ahead = rng.random() < 0.3
    creator = Pool.create(name, tables=[(ROWS, 1)], slots=16, ring_records=RING_RECORDS, rings=n_rings)
    daemon = Pool.attach(name, role="daemon")
    ctx = mp.get_context("fork")
    shared = ctx.RawArray(ctypes.c_int64, 3 * APPS)
    for a in range(APPS):
        shared[3 * a + RING] = -1
    run = Run(seed, rng)
    sp = BatchSplitter()
    late: BatchSplitter | None = None

    def on_batch(keys: np.ndarray, hints: np.ndarray, n_batches: int) -> None:
        lookups = (keys & ROW_MASK).tolist()
        hint_rows = (hints & ROW_MASK).tolist()
        assert n_batches == 1, (n_batches, lookups)
        _check_batch(run, shared, lookups, hint_rows)
        run.batches.append((lookups, hint_rows))

    def take_hints(keys: np.ndarray) -> bool:
        if not take_ahead:
            return False
        rows = (keys & ROW_MASK).tolist()
        owners = {whose(r)[:2] for r in rows}
        assert len(owners) == 1, f"hints offered ahead of more than one batch: {owners}"
        run.taken.setdefault(owners.pop(), []).extend(rows)
        return True

    tracker = RingTracker(daemon, on_batch, take_hints, step_mode=True, max_drain=budget)

    def record(recs: np.ndarray, ring: int) -> None:
        run.log.append(f"ring {ring}: {_show(recs)}")
        run.recorded.extend(_batches_of(*sp.feed(ring, recs)))
        if late is not None:
            run.late.extend(_batches_of(*late.feed(ring, recs)))

    tracker.add_tap(record, with_ring=True)
    tracker.add_reset(sp.forget)
    tracker.add_reset(lambda ring: run.log.append(f"reset ring {ring}"))
    apps = AppTracker(Driver(daemon, tracker, run.log))  # type: ignore[arg-type]
    try:
        for _ in range(STEPS):
            # the same draws every step whatever the action: the actions follow from the seed alone
            action = rng.choices(["spawn", "burst", "kill", "reap", "drain", "check", "sleep", "late"],
                                 weights=[6, 2, 3, 3, 4, 4, 3, 0.2])[0]
            x, n_burst = rng.random(), rng.randint(2, 3)
            if action in ("spawn", "burst") and len(run.plans) + n_burst > APPS or action == "late" and late:
                action = "sleep"
            run.log.append(action)
            if action == "spawn" and len(run.live) < 5:
                _spawn(run, name, shared)
            elif action == "burst":
                # apps one after the other, each gone before the next starts: claims between two drains
                for _ in range(n_burst):
                    _wait_out(run, _spawn(run, name, shared, hang_ok=False))
            elif action == "kill" and run.live:
                pids = sorted(run.live)
                pid = pids[int(x * len(pids))]
                time.sleep(x * 0.002)
                os.kill(pid, signal.SIGKILL)
                run.log.append(f"killed pid {pid}")
            elif action == "reap":
                _reap(run)
            elif action == "drain":
                run.log.append(f"look {daemon.ring_table().tolist()}")
                tracker.drain()
                assert int(daemon.ring_table()["drops"].sum()) == 0
            elif action == "check":
                apps.check()
            elif action == "sleep":
                time.sleep(x * 0.003)
            elif action == "late":
                run.late_mid = tracker.mid_batch()
                late = BatchSplitter(mid_batch=run.late_mid)
                tracker.add_reset(late.forget)
                run.late_from = len(run.batches)
        # the end: every app gone, every ring drained, dead apps' rings released
        for pid in run.live:
            os.kill(pid, signal.SIGKILL)
        _reap(run, block=True)
        for _ in range(20000):
            tracker.drain()
            apps.check()
            t = daemon.ring_table()
            others = np.arange(len(t)) != creator.ring_index
            if not (t["pid"][others].any() or t["waiting"].any() or apps.draining or tracker.backlog):
                break
        else:
            raise AssertionError(f"the rings did not settle: {daemon.ring_table()}")
        tracker.drain()  # the emptied free rings' states go
        assert sum(p.records() for p in run.plans.values()) < RING_RECORDS  # (no ring could drop)
        assert tracker.dropped_total == 0 and tracker.cut_batches == 0 and sp.cut_batches == 0
        assert tracker.n_pending == 0 and sp.n_held == 0 and tracker.rings.keys() <= {creator.ring_index}

        # every batch ended handed on exactly once (the one being ended when its app was killed: at most)
        seen: dict[tuple[int, int], int] = {}
        for lookups, _ in run.batches:
            key = whose(lookups[0])[:2]
            seen[key] = seen.get(key, 0) + 1
        assert all(n == 1 for n in seen.values()), {k: n for k, n in seen.items() if n > 1}
        for a in run.plans:
            ended, ending = shared[3 * a + ENDED], shared[3 * a + ENDING]
            must = {(a, b) for b in range(ended)}
            lost = must - seen.keys()
            assert not lost, f"app {a} (ring {shared[3 * a + RING]}) ended batches never handed on: {lost}"
            extra = {k for k in seen if k[0] == a} - must - {(a, ending - 1)}
            assert not extra, extra
        # the recording's splitter: the tracker's batches, in order; the late one: whole ones, in order
        assert run.recorded == [lookups for lookups, _ in run.batches]
        if late is not None:
            assert late.n_held == 0 and late.cut_batches == 0
            after = [lookups for lookups, _ in run.batches[run.late_from:]]
            it: Iterator[list[int]] = iter(after)
            assert all(any(b == x for x in it) for b in run.late), "the late recording's: not the tracker's"
            assert len(after) - len(run.late) <= len(run.late_mid)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} (rings {n_rings}, budget {budget}, hints taken {take_ahead}): "
                             f"{exc}\n" + "\n".join(run.log[-120:])) from None
    finally:
        for pid in run.live:
            os.kill(pid, signal.SIGKILL)
        _reap(run, block=True)
        daemon.close()
        creator.destroy()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [f"seed{s}" for s in range(FIRST_SEED, FIRST_SEED + ITERATIONS)])
def test_ring_takeovers_keep_every_batch_whole_and_once(seed: str) -> None:
    """Module doc: one seed's run of apps taking rings over while the daemon drains and checks."""
    pytest.importorskip("torch")  # the apps' embedding_bag returns a tensor: imported before the forks
    _one_seed(int(seed.removeprefix("seed")))


def _logs_and_dies(name: str, calls: list[list[int] | None]) -> None:
    """An app: lookups (a list of rows) or batch ends (None), then dies holding its ring."""
    code = 3
    try:
        p = Pool.attach(name)
        for rows in calls:
            if rows is None:
                p.end_batch()
            else:
                p.embedding_bag(0, np.array(rows, dtype=np.int64), np.array([0], dtype=np.int64))
        code = 0
    finally:
        os._exit(code)


def test_a_flush_under_the_budget_keeps_the_new_owners_batch_whole() -> None:
    """The stress run's seed 1, made small: app A logs a batch and dies, the daemon drains it; app B takes
    A's ring over and logs one batch (two calls), then dies. The app check's flush (its budget 2) takes
    B's change of owner and its first lookup, and cannot empty the ring; the next drains take the rest.
    B's batch is handed on whole, once, and so is the recording's (the flush took B's change of owner
    without the ring's claim count: the next drain took the count that moved as another change of owner,
    reset the ring's state, and handed on [3] alone, B's first lookup dropped)."""
    pytest.importorskip("torch")
    name = f"rt_takeover_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    creator = Pool.create(name, tables=[(100, 1)], slots=16, rings=2)  # holds one ring
    daemon = Pool.attach(name, role="daemon")
    steps: list[list[int]] = []
    recorded: list[list[int]] = []
    tracker = RingTracker(daemon, lambda keys, hints, n: steps.append((keys & ROW_MASK).tolist()),
                          lambda h: False, step_mode=True, max_drain=2)
    sp = BatchSplitter()
    tracker.add_tap(lambda recs, ring: recorded.extend(_batches_of(*sp.feed(ring, recs))), with_ring=True)
    tracker.add_reset(sp.forget)
    ring = 1 - creator.ring_index
    try:
        for calls in ([[1], None], [[2], [3], None]):  # app A, then app B
            pid = os.fork()
            if pid == 0:
                _logs_and_dies(name, calls)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            if not steps:
                assert tracker.drain() == 2 and steps == [[1]]  # A's batch; the ring's state is kept
        t = daemon.ring_table()[ring]
        assert t["pid"] == pid and t["claims"] == 2 and t["waiting"] == 4  # B's change of owner, 2, 3, end
        assert tracker.flush_ring(ring, daemon.rings()[ring]) == (2, False)  # the budget: not empty
        while daemon.ring_table()[ring]["waiting"]:
            tracker.drain()
        assert tracker.flush_ring(ring, daemon.rings()[ring]) == (0, True)
        assert steps == recorded == [[1], [2, 3]]
        assert tracker.n_pending == 0 and sp.n_held == 0
    finally:
        daemon.close()
        creator.destroy()
