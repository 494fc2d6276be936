"""What a miss costs over a hit on 2 MiB pages: the row it reads, or the pages two tiers span.

#14's mixed workload (90% hits, the misses read a dram slow tier) costs the pool more than its hits and
its misses would alone. This tool times, on 2 MiB pages (a private mount namespace with a tmpfs mounted
huge=advise on /dev/shm, as tools/bench_hugepages.py; root), one multi-table call over the same ids in
three states of one pool, beside torch's embedding_bag over those ids (on the faster of its weights
and a copy made after the pool, as tools/bench_pool.py):

- all-hit: every row in the fast tier;
- mixed: the rows bench_pool evicts (--miss, default 0.1 of each table) read from the slow tier;
- all-miss: every row evicted, every read from the slow tier;

and a control without a single miss: a pool of twice the rows, every one of them in the fast tier, and
the same ids except that each id of an evicted row r reads row r + ROWS instead. Every lookup hits, with
the branches of the all-hit workload, but one in ten reads a second stretch of fast-tier pages as far
from the first as the mixed workload's slow tier is: the same pages in the same proportions.

Per id: ``expected`` = the hits at the all-hit cost and the misses at the all-miss cost; ``extra`` =
mixed - expected (what mixing costs beyond each kind's own cost); ``pages`` = the control minus
all-hit (what reading the second stretch of pages costs lookups that all hit). Each kernel runs its
batches back to back, the first of each run untimed (the steady state of a server that makes the same
call every batch), the kernels interleaved.

    .venv/bin/python tools/bench_miss_cost.py [--tables 8,26] [--rows 250000] [--reps 8] [--miss 0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_hugepages import IN_NS, again_in_private_namespace, make_pool, mount_tmpfs  # noqa: E402
from lookup_bench_common import evicted_rows, miss_fraction, steady_medians  # noqa: E402

from recmgd.keys import make_keys  # noqa: E402
from recmgd.pool import Pool  # noqa: E402
from recmgd.shm import mapped_kib  # noqa: E402

DIM, POOLING, BATCH, NB = 64, 20, 2048, 4


def one_size(tables: int, rows: int, miss: float, reps: int) -> dict[str, float]:
    """ns per id of torch and of the pool in its states, for TABLES tables of ROWS rows."""
    n = BATCH * POOLING
    offsets = torch.arange(0, n, POOLING)
    gen = torch.Generator().manual_seed(0)
    per_id = 1e9 / (tables * n)
    torch.set_num_threads(1)

    def drained(pool: Pool) -> Callable[[str], None]:
        return lambda key: pool.drain_ring(pool.ring_index)

    def call(pool: Pool, batches: list[list[torch.Tensor]]) -> Callable[[int], object]:
        def f(k: int) -> object:
            out = pool.embedding_bags(range(tables), batches[k], [offsets] * tables)
            pool.end_batch()
            return out
        return f

    def check(pool: Pool, weights: list[torch.Tensor], batches: list[list[torch.Tensor]]) -> None:
        ref = [F.embedding_bag(batches[0][t], weights[t], offsets, mode="sum") for t in range(tables)]
        for r, got in zip(ref, call(pool, batches)(0), strict=True):
            torch.testing.assert_close(got, r, rtol=1e-5, atol=1e-5)
        pool.drain_ring(pool.ring_index)

    def huge_pool(rows: int, weights: list[torch.Tensor]) -> Pool:
        mount_tmpfs("advise", 2 * tables * rows * DIM * 4 + (1 << 30))
        pool = make_pool(tables, rows, DIM, weights, 2 * tables * n)
        pool.set_threads(1)
        if mapped_kib(pool.name)[1] == 0:
            pool.destroy()
            raise SystemExit("bench_miss_cost: the pool got no huge pages (tmpfs without huge= support?)")
        return pool

    res: dict[str, float] = {}
    weights = [torch.randn((rows, DIM), generator=gen) for _ in range(tables)]
    batches = [[torch.randint(0, rows, (n,), generator=gen) for _ in range(tables)] for _ in range(NB)]
    gone = evicted_rows(rows, miss)
    res["missed"] = float(np.isin(torch.cat([ids for b in batches for ids in b]).numpy(), gone).mean())

    def kernel(w: list[torch.Tensor]) -> Callable[[int], object]:
        def f(k: int) -> object:
            return [F.embedding_bag(batches[k][t], w[t], offsets, mode="sum") for t in range(tables)]
        return f

    pool = huge_pool(rows, weights)
    try:
        late = [w.clone() for w in weights]  # torch's weights again, made after the pool: the faster counts
        check(pool, weights, batches)
        states = (("all-hit", gone[:0]), ("mixed", gone), ("all-miss", np.setdiff1d(np.arange(rows), gone)))
        for state, evict in states:
            pool.evict_keys(np.concatenate([make_keys(t, evict) for t in range(tables)]))
            check(pool, weights, batches)
            fns = {"torch": kernel(weights), "torch late": kernel(late), state: call(pool, batches)}
            med = steady_medians(fns, NB, reps, drained(pool))
            res[state] = med[state] * per_id
            res[f"torch {state}"] = min(med["torch"], med["torch late"]) * per_id
        del late
    finally:
        pool.destroy()
    # the control: twice the rows, all in the fast tier; an evicted row's ids read row r + rows instead
    del weights
    weights = [torch.randn((2 * rows, DIM), generator=gen) for _ in range(tables)]
    moved = np.zeros(rows, dtype=np.int64)
    moved[gone] = rows
    far = [[ids + torch.from_numpy(moved[ids.numpy()]) for ids in b] for b in batches]
    pool = huge_pool(2 * rows, weights)
    try:
        check(pool, weights, far)
        res["control"] = steady_medians({"c": call(pool, far)}, NB, reps, drained(pool))["c"] * per_id
    finally:
        pool.destroy()
    return res


def run(a: argparse.Namespace) -> int:
    print(f"tables x {a.rows:,} rows, dim {DIM}, pooling {POOLING}, batch {BATCH}, 1 thread, ring on, "
          "the pool on 2 MiB pages, a dram slow tier; ns per id (medians of steady batches); "
          "ratio = torch / mixed")
    print(f"{'tables':>6} {'missed':>6} {'torch':>6} {'all-hit':>7} {'all-miss':>8} {'mixed':>6} "
          f"{'ratio':>5} {'expected':>8} {'extra':>6} {'control':>7} {'pages':>6}")
    for tables in a.tables:
        r = one_size(tables, a.rows, a.miss, a.reps)
        f = r["missed"]
        expected = (1 - f) * r["all-hit"] + f * r["all-miss"]
        print(f"{tables:>6} {f:6.1%} {r['torch mixed']:6.1f} {r['all-hit']:7.1f} {r['all-miss']:8.1f} "
              f"{r['mixed']:6.1f} {r['torch mixed'] / r['mixed']:5.2f} {expected:8.1f} "
              f"{r['mixed'] - expected:6.1f} {r['control']:7.1f} {r['control'] - r['all-hit']:6.1f}",
              flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", default="8,26", help="table counts, comma-separated")
    ap.add_argument("--rows", type=int, default=250_000, help="rows a table (dim 64)")
    ap.add_argument("--reps", type=int, default=8, help="interleaved repetitions")
    ap.add_argument("--miss", type=miss_fraction, default=0.1, help="fraction of each table's rows evicted")
    a = ap.parse_args()
    a.tables = [int(x) for x in a.tables.split(",")]
    if os.environ.get(IN_NS) == "1":
        return run(a)
    # the control's pool (twice the rows, in slots and in the dram slow tier), its weights and the copies
    # made while it is written
    return again_in_private_namespace("bench_miss_cost", 10 * max(a.tables) * a.rows * DIM * 4 + (1 << 30),
                                      f"--tables {max(a.tables)} --rows {a.rows:,}")


if __name__ == "__main__":
    sys.exit(main())
