"""Benchmark of the daemon's loop (recmgd.daemon): lookups per second it sustains, and its CPU share.

Two measurements:

1. ``capacity``: the loop's throughput on one core. An app handle in this process fills its access ring
   with batches (not timed); the daemon's PoolDriver drains and processes them (timed: ring drain,
   dedupe, policy step, fills and evictions through the pool). lookups/s = lookups / time in tick()
   and sync() (a learned policy's steps run in the loop's worker thread; sync waits for them). Also
   the loop thread's CPU time (``lookups_per_cpu_s``), steadier than wall time on a loaded machine;
   it leaves out a step run in the worker thread (early admission). With several policies, each one's
   rates are printed as a multiple of the first one's, measured in the same run: side by side, each with
   its own pool, taking turns of ``--slice`` seconds (0: one after the other), so that a machine whose
   speed drifts slows them alike.
2. ``load``: a real ``recmgd`` process drives a pool while an app process offers a fixed load (lookups
   per second, paced); the daemon's CPU share (psutil, user+system) and its lag are sampled. With
   --trace the app replays the trace once and its hit rate over the second half (``measured_*``) is set
   against ``recmg sim``'s for the same trace, capacity, batch, prefetch budget and model
   (``sim_hit_rate``, ``live_minus_sim_points``): live equals simulated (issue #13).

Usage:  python tools/bench_daemon.py [--policies lru,recmg] [--seconds 10] [--offered 200000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recmgd import policy as policy_mod  # noqa: E402
from recmgd.daemon.loop import FillBudget, PoolDriver  # noqa: E402
from recmgd.keys import capacity_for, key_row, key_table  # noqa: E402
from recmgd.pool import Pool  # noqa: E402
from recmgd.simcore import map_large_allocations  # noqa: E402


def workload(rng: np.random.Generator, tables: int, rows: int, samples: int, pooling: int,
             alpha: float) -> list[np.ndarray]:
    """One batch: per table, samples * pooling row ids, zipf-skewed and scattered over the table."""
    out = []
    for _ in range(tables):
        z = np.minimum(rng.zipf(alpha, samples * pooling) - 1, rows - 1)
        out.append(((z * 2654435761) % rows).astype(np.int64))  # hashed: hot rows are not neighbours
    return out


def trace_batches(path: str, batch: int) -> tuple[list[list[np.ndarray]], list[int]]:
    """A trace's batches of ``batch`` samples, each as one row-id array per table, and the table sizes."""
    from recmgd.trace import open_trace

    tr = open_trace(path)
    keys = np.asarray(tr.keys, dtype=np.int64)
    offs = np.asarray(tr.sample_offsets, dtype=np.int64)
    tables, rows = key_table(keys), key_row(keys)
    n_tables = int(tables.max()) + 1
    sizes = [int(rows[tables == t].max()) + 1 for t in range(n_tables)]
    out = []
    for s in range(0, len(offs) - 1, batch):
        lo, hi = offs[s], offs[min(s + batch, len(offs) - 1)]
        bt, br = tables[lo:hi], rows[lo:hi]
        out.append([br[bt == t] for t in range(n_tables)])
    return out, sizes


def pool_shape(args: argparse.Namespace) -> tuple[list, int, list[tuple[int, int]]]:
    """The benchmark's batches (empty for synthetic load), fast-tier slots and table shapes: from
    --trace (slots = --fraction of its unique rows), or --tables x --rows with --slots."""
    if not args.trace:
        return [], args.slots, [(args.rows, args.dim)] * args.tables
    trace, sizes = trace_batches(args.trace, args.samples)
    uniq = sum(len(np.unique(np.concatenate([b[t] for b in trace]))) for t in range(len(sizes)))
    return trace, capacity_for(args.fraction, uniq), [(n, args.dim) for n in sizes]


class Capacity:
    """One policy's capacity run: its own pool, app handle and PoolDriver in this process. The app fills
    the ring with ``--batches-per-tick`` batches (not timed), the driver's tick() and sync() drain and
    process them (timed); :meth:`run` does that for a while, after ``--warm-batches`` batches of warm-up
    (:meth:`warm`)."""

    def __init__(self, policy: str, args: argparse.Namespace, shape: tuple[list, int, list]) -> None:
        self.policy, self.args = policy, args
        self.name = f"bench-daemon-{uuid.uuid4().hex[:6]}"
        self.trace, self.slots, tables = shape
        self.app = Pool.create(self.name, tables=tables, slots=self.slots, ring_records=1 << 22, rings=2)
        self.daemon: Pool | None = None
        self.drv: PoolDriver | None = None
        try:
            self.daemon = Pool.attach(self.name, role="daemon")
            opts: dict = {"prefetch_budget": args.prefetch_budget}
            if args.model_dir:
                opts["model_dir"] = args.model_dir
            self.pol = policy_mod.create(policy, **opts)
            self.drv = PoolDriver(self.daemon, self.pol, policy, budget=FillBudget(), max_drain=1 << 22,
                                  coalesce=args.coalesce)
        except BaseException:
            self.close()
            raise
        self.rng = np.random.default_rng(0)
        self.i = 0
        self.busy = self.cpu = 0.0
        self.base: dict = {}

    def _tick(self) -> tuple[float, float]:
        """Fill the ring with the next batches, then one timed tick: (wall, thread CPU) seconds."""
        args, app = self.args, self.app
        for _ in range(args.batches_per_tick):
            if self.trace:
                for t, ids in enumerate(self.trace[self.i % len(self.trace)]):
                    if len(ids):
                        app.embedding_bag(t, ids, np.arange(len(ids), dtype=np.int64))
            else:
                batch = workload(self.rng, args.tables, args.rows, args.samples, args.pooling, args.alpha)
                for t, ids in enumerate(batch):
                    app.embedding_bag(t, ids, np.arange(0, len(ids), args.pooling, dtype=np.int64))
            app.end_batch()
            self.i += 1
        assert self.drv is not None
        t0, c0 = time.perf_counter(), time.thread_time()
        self.drv.tick()
        self.drv.sync()  # a learned policy's steps run in a worker thread: count them in
        return time.perf_counter() - t0, time.thread_time() - c0

    def warm(self) -> None:
        """Warm the fast tier up (not counted)."""
        while self.i < self.args.warm_batches:
            self._tick()
        assert self.drv is not None
        self.base = self.drv.stats()

    def run(self, seconds: float) -> None:
        """Timed ticks for ``seconds`` of wall time (at least one)."""
        t_end = time.monotonic() + seconds
        while True:
            dt, dc = self._tick()
            self.busy += dt
            self.cpu += dc
            if time.monotonic() > t_end:
                break

    def result(self) -> dict:
        assert self.drv is not None
        args, st, base = self.args, self.drv.stats(), self.base
        trace = self.trace
        per_batch = (sum(len(r) for b in trace for r in b) / len(trace) if trace
                     else args.tables * args.samples * args.pooling)
        real_lookups = st["lookups"] - base["lookups"]
        return {
            "policy": self.policy, "lookups": real_lookups, "busy_s": round(self.busy, 3),
            "lookups_per_s": round(real_lookups / self.busy),
            # the loop thread's CPU time: steady on a loaded machine, but it leaves out a policy step
            # run in a worker thread (early admission: the Python learned step)
            "loop_cpu_s": round(self.cpu, 3), "lookups_per_cpu_s": round(real_lookups / max(self.cpu, 1e-9)),
            "early_admission": bool(self.pol.early_admission), "batches": st["batches"] - base["batches"],
            "slots": self.slots, "lookups_per_batch": round(per_batch, 1),
            "trace": os.path.basename(args.trace) or "synthetic",
            "policy_s": round(st["policy_time_s"] - base["policy_time_s"], 3),
            "hit_rate": round((st["hits"] - base["hits"]) / max(1, st["unique"] - base["unique"]), 4),
            "fills": st["fills"] - base["fills"], "evictions": st["evictions"] - base["evictions"],
        }

    def close(self) -> None:
        if self.drv is not None:
            self.drv.close()
        if self.daemon is not None:
            self.daemon.close()
        self.app.destroy()


def capacity(policies: list[str], args: argparse.Namespace) -> list[dict]:
    """The policies' capacity runs. With ``--slice S`` (the default) they run side by side, each its own
    pool, taking turns of S seconds until each has had ``--seconds``: a machine whose speed drifts (a
    shared VM) then slows them alike, and their ratio holds. ``--slice 0``: one after the other."""
    shape = pool_shape(args)  # the trace read once, for every policy
    if args.slice <= 0:
        out = []
        for pol in policies:
            run = Capacity(pol, args, shape)
            try:
                run.warm()
                run.run(args.seconds)
                out.append(run.result())
            finally:
                run.close()
        return out
    runs: list[Capacity] = []
    try:
        for pol in policies:
            runs.append(Capacity(pol, args, shape))
        for run in runs:
            run.warm()
        turns = max(1, round(args.seconds / args.slice))
        for _ in range(turns):
            for run in runs:
                run.run(args.seconds / turns)
        return [run.result() for run in runs]
    finally:
        for run in runs:
            run.close()


APP = r"""
import sys, time, json, numpy as np
import torch  # noqa: F401 - the pool's first lookup would import it (seconds), behind the pacing clock
sys.path.insert(0, {repo!r})
from recmgd.pool import Pool
sys.path.insert(0, {tools!r})
from bench_daemon import workload, trace_batches
pool = Pool.attach({name!r})
rng = np.random.default_rng(1)
trace = trace_batches({trace!r}, {samples})[0] if {trace!r} else None
rate = {offered}
t0 = time.monotonic(); done = 0; i = 0; due = t0
half = len(trace) // 2 if trace else -1  # a trace runs once; the sim's warm-up split: its first half
mine = lambda: [p for p in pool.counters()["processes"] if p["ring"] == pool.ring_index][0]
print("ready", flush=True)
while (i < len(trace)) if trace else (time.monotonic() - t0 < {seconds}):
    if i == half:
        h = mine(); th = time.monotonic(); dh = done
    # steady pacing: a batch that starts late (the VM's scheduler) moves the ones after it, rather than
    # a burst of back-to-back batches to catch up (a burst outruns the daemon's fills: lower hit rate)
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    due = max(due, now)
    n0 = done
    if trace:
        for t, ids in enumerate(trace[i % len(trace)]):
            if len(ids):
                pool.embedding_bag(t, ids, np.arange(len(ids), dtype=np.int64))
            done += len(ids)
    else:
        for t, ids in enumerate(workload(rng, {tables}, {rows}, {samples}, {pooling}, {alpha})):
            pool.embedding_bag(t, ids, np.arange(0, len(ids), {pooling}, dtype=np.int64))
            done += len(ids)
    pool.end_batch()
    due += (done - n0) / rate
    i += 1
c = mine()
out = {{"offered": done / (time.monotonic() - t0), **c}}
if trace:  # the second half alone, as the simulator scores it
    out["measured"] = {{k: c[k] - h[k] for k in c}}
    out["measured"]["offered"] = (done - dh) / (time.monotonic() - th)
print(json.dumps(out), flush=True)
"""


def sim_hit_rate(policy: str, args: argparse.Namespace) -> float:
    """The simulator's hit rate for what ``load`` runs live: the same trace, capacity (--fraction of its
    unique rows), batch (--samples), prefetch budget and model; the second half of the steps scored."""
    from recmgd.sim.runner import simulate
    from recmgd.trace import open_trace

    opts: dict = {"prefetch_budget": args.prefetch_budget}
    if args.model_dir:
        opts["model_dir"] = args.model_dir
    res = simulate(open_trace(args.trace), [policy], [args.fraction], batch=args.samples, options=opts)
    return float(res[0].hit_rate)


def load(policy: str, args: argparse.Namespace) -> dict:
    from recmgd.daemon.control import request

    name = f"bench-daemon-{uuid.uuid4().hex[:6]}"
    _, slots, tables = pool_shape(args)
    owner = Pool.create(name, tables=tables, slots=slots, ring_records=1 << 20, rings=4, role="daemon")
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    sock = tmp / "ctl.sock"
    cfg = tmp / "recmgd.toml"
    cfg.write_text(f'pools = ["{name}"]\ninterval = {args.interval}\nmax_drain = 1048576\n'
                   f'coalesce = {args.coalesce}\n'
                   f'[control]\nsocket = "{sock}"\n[policy]\nname = "{policy}"\n'
                   + (f'model_dir = "{args.model_dir}"\n' if args.model_dir else "")
                   + f"[policy.options]\nprefetch_budget = {args.prefetch_budget}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    d = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg),
                          "--foreground", "--log-level", "warning"],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if name in request(str(sock), "stats")["pools"]:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline or d.poll() is not None:
                raise SystemExit(f"daemon did not come up: {d.stderr.read() if d.poll() is not None else ''}")
            time.sleep(0.1)
        code = APP.format(repo=str(REPO), tools=str(REPO / "tools"), name=name, tables=args.tables,
                          rows=args.rows, samples=args.samples, pooling=args.pooling, alpha=args.alpha,
                          offered=args.offered, seconds=args.seconds, trace=args.trace)
        a = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        assert a.stdout is not None
        a.stdout.readline()  # ready
        proc = psutil.Process(d.pid)
        c0 = proc.cpu_times()
        w0 = time.monotonic()
        s0 = request(str(sock), "stats")["pools"][name]
        lags = []
        while a.poll() is None:
            time.sleep(0.5)
            lags.append(request(str(sock), "stats")["daemon"]["loop_lag_s"])
        out = json.loads(a.stdout.read().strip().splitlines()[-1])
        time.sleep(0.2)
        c1 = proc.cpu_times()
        w1 = time.monotonic()
        s1 = request(str(sock), "stats")["pools"][name]
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        r = {
            "policy": policy, "trace": os.path.basename(args.trace) or "synthetic",
            "target_lookups_per_s": args.offered, "offered_lookups_per_s": round(out["offered"]),
            "daemon_lookups": s1["lookups"] - s0["lookups"], "app_lookups": out["lookups"],
            "ring_drops": out["ring_drops"], "daemon_cpu_share": round(cpu / (w1 - w0), 3),
            "app_hit_rate": round(1 - out["on_demand"] / max(1, out["unique"]), 4),
            "max_loop_lag_s": round(max(lags) if lags else 0.0, 4), "slots": slots,
            "daemon_hit_rate": round((s1["hits"] - s0["hits"]) / max(1, s1["unique"] - s0["unique"]), 4),
            "daemon_backlog_records": s1["backlog_records"],
            "steps": s1["steps"],
            **{k: v for k, v in s1.items() if k.startswith("guard_")},  # a learned policy's guard, whole run
        }
        if args.trace:  # live against simulated: the trace's second half, as `recmg sim` scores it
            m = out["measured"]
            r["measured_offered_lookups_per_s"] = round(m["offered"])
            r["measured_app_hit_rate"] = round(1 - m["on_demand"] / max(1, m["unique"]), 4)
            r["measured_ring_drops"] = m["ring_drops"]
            r["sim_hit_rate"] = round(sim_hit_rate(policy, args), 4)
            r["live_minus_sim_points"] = round(100 * (r["measured_app_hit_rate"] - r["sim_hit_rate"]), 2)
        return r
    finally:
        d.terminate()
        d.wait(30)
        owner.destroy()


def main() -> int:
    map_large_allocations()  # the capacity runs are this process: set its allocator as recmgd's main does
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", default="lru")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--slots", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=128, help="samples per batch")
    p.add_argument("--pooling", type=int, default=4, help="lookups per sample per table")
    p.add_argument("--alpha", type=float, default=1.1, help="zipf exponent")
    p.add_argument("--batches-per-tick", type=int, default=4)
    p.add_argument("--warm-batches", type=int, default=200)
    p.add_argument("--slice", type=float, default=0.5,
                   help="capacity: the policies take turns of this many seconds (0: one after the other)")
    p.add_argument("--offered", type=float, default=200_000, help="lookups/s the app offers in `load`")
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--coalesce", type=int, default=0, help="the daemon's coalesce setting (records)")
    p.add_argument("--prefetch-budget", type=int, default=0)
    p.add_argument("--model-dir", default="")
    p.add_argument("--trace", default="",
                   help="replay this trace (batches of --samples samples); in `load` the app replays it once "
                   "and its second half is compared with the simulator's hit rate")
    p.add_argument("--fraction", type=float, default=0.1, help="with --trace: slots = fraction * unique rows")
    p.add_argument("--only", choices=("capacity", "load"), default=None)
    p.add_argument("--json", default="")
    args = p.parse_args()
    results: dict = {"host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "python": platform.python_version()}, "args": vars(args),
                     "capacity": [], "load": []}
    policies = args.policies.split(",")
    if args.only in (None, "capacity"):
        for r in capacity(policies, args):
            results["capacity"].append(r)
            print(json.dumps(r), flush=True)
    if args.only in (None, "load"):
        for pol in policies:
            r = load(pol, args)
            results["load"].append(r)
            print(json.dumps(r), flush=True)
    cap = results["capacity"]
    for r in cap[1:]:  # each policy's rates as a multiple of the first one's, measured in this run
        wall = r["lookups_per_s"] / max(cap[0]["lookups_per_s"], 1)
        per_cpu = r["lookups_per_cpu_s"] / max(cap[0]["lookups_per_cpu_s"], 1)
        print(f"{r['policy']} / {cap[0]['policy']}: {wall:.2f}x lookups/s, {per_cpu:.2f}x lookups/cpu-s",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
