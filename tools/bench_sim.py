"""Benchmark of the simulator's policies: lookups per second on one core, printed.

    .venv/bin/python tools/bench_sim.py [--lookups 4e6] [--tables 26] [--fraction 0.1] [--batch 16]

A synthetic trace calibrated to Meta 2021 (recmgd.trace.synth) is cut into steps of ``batch`` samples
(deduplicated); every policy is driven through all of it by the C whole-trace loop (the simulator's
path) and, on the first 20,000 steps, through ``observe()`` one step at a time (the daemon's path).
Rates count deduplicated lookups; the trace and step building are not timed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

from recmgd import policy as registry
from recmgd.sim.driver import drive
from recmgd.sim.runner import capacity_for, unique_rows
from recmgd.trace import open_trace
from recmgd.trace.synth import SynthConfig, write_synth

POLICIES = ["lru", "lfu", "s3fifo", "opt", "opt-bypass", "stms", "domino", "bingo"]
TARGETS = {"lru": 2.0, "opt": 1.0, "stms": 0.5, "domino": 0.5, "bingo": 0.5}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lookups", type=float, default=4e6)
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prefetch-budget", type=int, default=16)
    ap.add_argument("--observe-steps", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.bin")
        write_synth(SynthConfig(lookups=int(args.lookups), tables=args.tables, seed=args.seed), path)
        trace = open_trace(path)
        steps = trace.steps(args.batch)
    uniq = unique_rows(steps)
    cap = capacity_for(args.fraction, uniq)
    print(f"synthetic Meta-2021 trace: {trace.n_lookups:,} lookups, {args.tables} tables, "
          f"{len(steps):,} steps of {args.batch} samples, {steps.n_lookups:,} deduplicated lookups, "
          f"{uniq:,} unique rows; capacity {cap:,} rows ({args.fraction:.0%}); one core")
    obs = steps.slice(0, min(args.observe_steps, len(steps)))
    print(f"{'policy':11s} {'C loop Mlookups/s':>18s} {'observe() Mlookups/s':>21s} "
          f"{'target':>7s}  on_demand")
    ok = True
    for name in POLICIES:
        opts = {"prefetch_budget": args.prefetch_budget}
        c = drive(registry.create(name, **opts), steps, cap, 0, path="native")
        rate = c.lookups / c.seconds / 1e6
        t0 = time.perf_counter()
        o = drive(registry.create(name, **opts), obs, cap, 0, path="python")
        orate = o.lookups / (time.perf_counter() - t0) / 1e6
        target = TARGETS.get(name)
        flag = "" if target is None else ("  ok" if rate >= target else "  BELOW TARGET")
        ok &= target is None or rate >= target
        print(f"{name:11s} {rate:18.2f} {orate:21.3f} {target if target else '':>7}  {c.on_demand:,}{flag}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
