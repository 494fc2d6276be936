#!/usr/bin/env python3
"""What one ``Pool.embedding_bag`` call costs beside torch's ``embedding_bag``, in one run: a model's
forward passes 1-D int64 tensors (``TieredEmbeddingBag``), which take the call's short path (ids read in
place, only the offsets copied: ``Pool._bag_tensors``); the same call with that path switched off (the
general path, which checks and converts every argument) and torch's ``F.embedding_bag`` over an
in-DRAM copy of the table. One table, every row in the fast tier, 1 lookup thread; medians of
interleaved runs, their order turning each rep. At one bag the fixed cost of a call shows; at 2048 the
rows' reads.

    .venv/bin/python tools/bench_call_cost.py [--rows 100000] [--dim 64] [--pooling 20]
                                              [--bags 1,16,2048] [--calls 2000] [--reps 7]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recmgd.keys import make_keys  # noqa: E402
from recmgd.pool import Pool  # noqa: E402


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def timed(which: str, kernel: Callable[[], object], short: Callable[[], object], pool: Pool,
          calls: int) -> float:
    """Microseconds a call of torch's kernel, the pool's short path or its general path."""
    if which == "torch":
        return per_call_us(kernel, calls)
    if which == "short":
        return per_call_us(short, calls)
    with general_path(pool):
        return per_call_us(short, calls)


@contextlib.contextmanager
def general_path(pool: Pool) -> Iterator[None]:
    """The pool's calls take the general path (the short one switched off: one no-op call more)."""
    pool._bag_tensors = lambda *_: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pool._bag_tensors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--bags", default="1,16,2048")
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed run at 1 bag (fewer at more)")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    name = f"recmg-callcost-{uuid.uuid4().hex[:8]}"
    pool = Pool.create(name, tables=[(a.rows, a.dim)], slots=a.rows, threads=1)
    try:
        Pool.unlink(name)
        rng = np.random.default_rng(0)
        weight = torch.from_numpy(rng.standard_normal((a.rows, a.dim), dtype=np.float32))
        pool.write_rows(0, np.arange(a.rows), weight.numpy())
        pool.fill_keys(make_keys(0, np.arange(a.rows)))
        print(f"1 table of {a.rows:,} rows, dim {a.dim}, pooling {a.pooling}, all hits, 1 thread; "
              "ratio = torch time / pool time")
        print(f"{'bags':>6} {'torch us':>9} {'short path us':>14} {'ratio':>6} {'general us':>11} "
              f"{'ratio':>6} {'saved us':>9}")
        for bags in (int(x) for x in a.bags.split(",")):
            ids = torch.from_numpy(rng.integers(0, a.rows, bags * a.pooling))
            offs = torch.arange(0, bags * a.pooling, a.pooling)
            calls = max(20, a.calls // max(1, bags // 16))

            short = functools.partial(pool.embedding_bag, 0, ids, offs)
            kernel = functools.partial(F.embedding_bag, ids, weight, offs, mode="sum")
            with general_path(pool):
                ref = short()
            assert torch.equal(short(), ref) and torch.equal(kernel(), ref)
            runs: dict[str, list[float]] = {"torch": [], "short": [], "general": []}
            order = ["torch", "short", "general"]
            for rep in range(a.reps):  # the order turns each rep: whichever runs after torch finds the
                for which in order[rep % 3:] + order[:rep % 3]:  # pool's rows out of the caches
                    runs[which].append(timed(which, kernel, short, pool, calls))
            k, s, g = (statistics.median(runs[x]) for x in ("torch", "short", "general"))
            print(f"{bags:>6} {k:>9.2f} {s:>14.2f} {k / s:>6.3f} {g:>11.2f} {k / g:>6.3f} {g - s:>9.2f}")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
