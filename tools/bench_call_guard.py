#!/usr/bin/env python3
"""What the in-flight guard of the pool's methods costs a lookup call (recmgd/pool.py, ``_native``: the
count of calls in flight that close() waits for), in one run: ``Pool.embedding_bag`` against the same
method unguarded (``Pool.embedding_bag.__wrapped__``), on one table with every row in the fast tier, at
a small bag count (where a call's fixed cost shows) and a serving one. Medians of interleaved runs.

    .venv/bin/python tools/bench_call_guard.py [--rows 100000] [--dim 64] [--pooling 20]
                                               [--bags 1,64,2048] [--calls 2000] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recmgd.keys import make_keys  # noqa: E402
from recmgd.pool import Pool  # noqa: E402


def per_call_us(fn: object, args: tuple, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*args)  # type: ignore[operator]
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--bags", default="1,64,2048")
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed run at 1 bag (fewer at more)")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    name = f"recmg-guard-{uuid.uuid4().hex[:8]}"
    pool = Pool.create(name, tables=[(a.rows, a.dim)], slots=a.rows, threads=1)
    try:
        Pool.unlink(name)
        pool.write_rows(0, np.arange(a.rows), np.ones((a.rows, a.dim), np.float32))
        pool.fill_keys(make_keys(0, np.arange(a.rows)))
        guarded = pool.embedding_bag
        bare = Pool.embedding_bag.__wrapped__  # type: ignore[attr-defined]
        rng = np.random.default_rng(0)
        print(f"1 table of {a.rows:,} rows, dim {a.dim}, pooling {a.pooling}, all hits, 1 thread")
        print(f"{'bags':>6} {'guarded us':>11} {'unguarded us':>13} {'added us':>9} {'ratio':>6}")
        for bags in (int(x) for x in a.bags.split(",")):
            ids = rng.integers(0, a.rows, bags * a.pooling).astype(np.int64)
            offs = np.arange(0, bags * a.pooling, a.pooling, dtype=np.int64)
            calls = max(20, a.calls // max(1, bags // 16))
            guarded(0, ids, offs)  # (the first call imports torch and sizes the scratch)
            g, b = [], []
            for _ in range(a.reps):
                g.append(per_call_us(guarded, (0, ids, offs), calls))
                b.append(per_call_us(bare, (pool, 0, ids, offs), calls))
            mg, mb = statistics.median(g), statistics.median(b)
            print(f"{bags:>6} {mg:>11.2f} {mb:>13.2f} {mg - mb:>9.2f} {mb / mg:>6.3f}")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
