"""The hit path on 4 KiB pages against 2 MiB pages, and both against torch's in-DRAM kernel, in one run.

A pool lives in the tmpfs at /dev/shm and asks for huge pages with madvise(MADV_HUGEPAGE); the tmpfs
grants them only when mounted with huge=advise (the usual default is huge=never). This tool needs root:
it runs itself in a private mount namespace (unshare -m), where it mounts a fresh tmpfs with huge=never
on /dev/shm and creates pool A, then mounts one with huge=advise over it and creates pool B (the host's
/dev/shm is not touched; the namespace's mounts go when the tool exits). Both pools hold every row of
the same tables in the fast tier (all hits, a dram slow tier, ring logging on); the tool checks from
/proc/self/smaps that B's mapping is on huge pages and A's is not, then times torch's embedding_bag
(a call a table; on its weights and on a copy made after the pools, the faster counting), each pool's
multi-table call (embedding_bags) and its per-table calls, interleaved. It does all that twice, the
pools made in the other order the second time, and prints the geometric means of the two rounds (on
one VM the pool made second was 9-15% faster than the same build's pool made first: see
tools/bench_ab_lookup.py), with each round's huge/4K ratio beside them. With
``--miss F`` it then evicts the same fraction F of every table's rows from both pools and times the
mixed workload as well (those lookups read the pools' dram slow tiers; #14's target for it: the pool's
time at most 1.2x torch's, ratio >= 0.83). ``--zipf A`` draws the ids Zipf-distributed with exponent A
(lookup_bench_common.IdDraw, as tools/bench_pool.py does), and the mixed workload then keeps each
table's hottest rows that take 1 - F of the lookups.

    .venv/bin/python tools/bench_hugepages.py [--rows 100000] [--tables 26] [--threads 1,2] [--reps 10] \
        [--miss 0.1] [--zipf 1.0]
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python tools/bench_hugepages.py    # torch's weights on huge pages too
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_pool import _name  # noqa: E402
from lookup_bench_common import (  # noqa: E402
    IdDraw,
    miss_fraction,
    steady_medians,
    zipf_exponent,
)

from recmgd.keys import make_keys  # noqa: E402
from recmgd.models.train_memory import mem_available_bytes  # noqa: E402
from recmgd.pool import Pool  # noqa: E402
from recmgd.shm import SHM_DIR, huge_mode, mapped_kib  # noqa: E402

IN_NS = "RECMG_BENCH_HUGEPAGES_NS"


def mount_tmpfs(huge: str, size_bytes: int) -> None:
    """A fresh tmpfs on /dev/shm (in this process's private mount namespace)."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=1777,huge={huge}",
                    "recmg-bench", SHM_DIR], check=True)


def make_pool(tables: int, rows: int, dim: int, weights: list[torch.Tensor], ring: int) -> Pool:
    pool = Pool.create(_name(), tables=[(rows, dim)] * tables, slots=tables * rows, ring_records=ring)
    for t in range(tables):
        pool.write_rows(t, np.arange(rows), weights[t])
    pool.fill_keys(np.concatenate([make_keys(t, np.arange(rows)) for t in range(tables)]))
    return pool


def one_round(a: argparse.Namespace, weights: list[torch.Tensor], batches: list[list[torch.Tensor]],
              draw: IdDraw, huge_first: bool) -> dict[tuple[str, int], dict[str, float]] | None:
    """Pools A (4 KiB pages) and B (2 MiB), made in the order given, timed against torch: median ms of
    every call, per (workload, threads); None if B got no huge pages."""
    tables, rows, dim, pooling = a.tables, a.rows, 64, 20
    n = len(batches[0][0])
    size = 4 * tables * rows * dim * 4 + (2 << 30)  # a limit, not a reservation: slots, slow tier, rings
    made: dict[str, Pool] = {}
    modes: dict[str, str | None] = {}
    for tag in ("huge", "4k") if huge_first else ("4k", "huge"):
        mount_tmpfs("advise" if tag == "huge" else "never", size)
        modes[tag] = huge_mode()
        made[tag] = make_pool(tables, rows, dim, weights, 2 * tables * n)
    pools = {"4k": made["4k"], "huge": made["huge"]}
    late = [w.clone() for w in weights]  # torch's weights again, allocated after the pools
    try:
        order = "B (2 MiB) then A (4 KiB)" if huge_first else "A (4 KiB) then B (2 MiB)"
        print(f"pools made {order}; {SHM_DIR} for pool A: huge={modes['4k']}; "
              f"for pool B: huge={modes['huge']}")
        for label, pl in (("A (4 KiB)", pools["4k"]), ("B (2 MiB)", pools["huge"])):
            rss, pmd = mapped_kib(pl.name)
            print(f"  pool {label}: {rss / 1024:.0f} MiB resident in this process, "
                  f"{pmd / 1024:.0f} MiB of it on huge pages")
        if mapped_kib(pools["huge"].name)[1] == 0:
            print("pool B got no huge pages (the kernel's tmpfs lacks huge= support?): nothing to compare")
            return None
        offsets = torch.arange(0, n, pooling)

        def multi(pl: Pool) -> Callable[[int], object]:
            def f(k: int) -> object:
                out = pl.embedding_bags(range(tables), batches[k], [offsets] * tables)
                pl.end_batch()
                return out
            return f

        def per_table(pl: Pool) -> Callable[[int], object]:
            def f(k: int) -> object:
                out = [pl.embedding_bag(t, batches[k][t], offsets) for t in range(tables)]
                pl.end_batch()
                return out
            return f

        def kernel(w: list[torch.Tensor]) -> Callable[[int], object]:
            def f(k: int) -> object:
                return [F.embedding_bag(batches[k][t], w[t], offsets, mode="sum") for t in range(tables)]
            return f

        def check(k: int) -> None:
            for pl in pools.values():
                for ref, got in zip(kernel(weights)(k), multi(pl)(k), strict=True):
                    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
                pl.drain_ring(pl.ring_index)

        check(0)
        fns: dict[str, Callable[[int], object]] = {"torch": kernel(weights), "torch_late": kernel(late)}
        for tag, pl in pools.items():
            fns[f"multi_{tag}"] = multi(pl)
            fns[f"table_{tag}"] = per_table(pl)

        def after(key: str) -> None:
            for pl in pools.values():
                pl.drain_ring(pl.ring_index)

        out: dict[tuple[str, int], dict[str, float]] = {}
        workloads = [("all hits", 0.0)] + ([(f"{1 - a.miss:.0%} hits", a.miss)] if a.miss > 0 else [])
        for workload, frac in workloads:
            if frac > 0:  # the same rows of every table leave both fast tiers (the rows bench_pool evicts)
                keys = draw.evicted_keys(tables, frac)
                for pl in pools.values():
                    pl.evict_keys(keys)
                check(1)
            for threads in a.threads:
                torch.set_num_threads(threads)
                for pl in pools.values():
                    pl.set_threads(threads)
                med = {k: v * 1e3 for k, v in steady_medians(fns, len(batches), a.reps, after).items()}
                out[(workload, threads)] = med
        return out
    finally:
        for pl in pools.values():
            pl.destroy()  # the objects go; the namespace's tmpfs mounts go when this process exits


def run(a: argparse.Namespace) -> int:
    tables, rows, dim, pooling, batch = a.tables, a.rows, 64, 20, 2048
    n = batch * pooling
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn((rows, dim), generator=gen) for _ in range(tables)]
    draw = IdDraw(tables, rows, a.zipf)
    batches = [[torch.from_numpy(draw.ids(t, n)) for t in range(tables)] for _ in range(4)]
    rounds = []
    for huge_first in (False, True):
        r = one_round(a, weights, batches, draw, huge_first)
        if r is None:
            return 1
        rounds.append(r)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "") == "1"
    print(f"{tables} tables x {rows:,} rows, dim 64, pooling 20, batch 2048, ring on, "
          + (f"Zipf {a.zipf} ids; " if a.zipf else "uniform ids; ")
          + "ratio = torch time / pool time (medians of steady batches; torch on the faster of its weights "
          "made before the pools and a copy made after them); two rounds, the pools made in the other "
          "order in the second, each time the geometric mean of the rounds'; torch's weights on "
          + ("transparent huge pages (THP_MEM_ALLOC_ENABLE=1)" if thp
             else "its default allocation (4 KiB pages unless THP is 'always'; THP_MEM_ALLOC_ENABLE=1 "
             "asks for huge pages)"))
    for workload in dict.fromkeys(w for w, _ in rounds[0]):
        print(f"{workload}:")
        print(f"{'threads':>7} {'torch ms':>9} {'multi 4K':>16} {'multi huge':>16} {'per-table 4K':>16} "
              f"{'per-table huge':>16} {'huge/4K multi':>13} {'huge/4K table':>13}  (rounds: huge/4K multi)")
        for threads in a.threads:
            meds = [r[(workload, threads)] for r in rounds]
            g = {k: math.sqrt(meds[0][k] * meds[1][k]) for k in meds[0]}
            t = min(g["torch"], g["torch_late"])
            cells = {k: f"{g[k]:7.1f} ({t / g[k]:.2f}x)" for k in g if not k.startswith("torch")}
            per_round = ", ".join(f"{m['multi_huge'] / m['multi_4k']:.3f}" for m in meds)
            print(f"{threads:>7} {t:9.1f} {cells['multi_4k']:>16} {cells['multi_huge']:>16} "
                  f"{cells['table_4k']:>16} {cells['table_huge']:>16} "
                  f"{g['multi_huge'] / g['multi_4k']:13.3f} {g['table_huge'] / g['table_4k']:13.3f}"
                  f"  ({per_round})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows a table (dim 64)")
    ap.add_argument("--tables", type=int, default=26,
                    help="tables (fewer let 1M-row tables fit a small machine: two pools and torch's copy)")
    ap.add_argument("--threads", default="1,2", help="lookup threads, comma-separated")
    ap.add_argument("--reps", type=int, default=10, help="interleaved repetitions")
    ap.add_argument("--miss", type=miss_fraction, default=0.0,
                    help="then evict this fraction of every table's rows and time the mixed workload too")
    ap.add_argument("--zipf", type=zipf_exponent, default=0.0,
                    help="ids Zipf-distributed with this exponent over each table's rows (0: uniform)")
    a = ap.parse_args()
    a.threads = [int(x) for x in a.threads.split(",")]
    if os.environ.get(IN_NS) == "1":
        return run(a)
    # two pools (each row in a fast-tier slot and in the dram slow tier), torch's weights, their late
    # copy and the copies made while the pools are written: over 8x the tables at the peak (measured
    # without the late copy: at 500,000 rows, 11.4 GB anonymous + 12.5 GB shared when the OOM killer
    # stopped it), plus ~1 GiB
    return again_in_private_namespace("bench_hugepages", 9 * a.tables * a.rows * 64 * 4 + (1 << 30),
                                      f"--tables {a.tables} --rows {a.rows:,}")


def again_in_private_namespace(tool: str, need: int, what: str) -> int:
    """Run the calling script again, with the same arguments, in a private mount namespace (where it may
    mount tmpfs instances on /dev/shm without touching the host's); its exit status. 2, with a line on
    stderr, without root, without unshare(1), or when NEED bytes (for WHAT) are more than available."""
    if os.geteuid() != 0:
        print(f"{tool}: needs root (it mounts tmpfs instances in a private mount namespace)", file=sys.stderr)
        return 2
    if shutil.which("unshare") is None:
        print(f"{tool}: unshare(1) is missing (util-linux)", file=sys.stderr)
        return 2
    avail = mem_available_bytes()
    if avail is not None and need > avail:
        print(f"{tool}: {what} needs about {need >> 20:,} MiB, {avail >> 20:,} MiB available",
              file=sys.stderr)
        return 2
    env = dict(os.environ, **{IN_NS: "1"})
    return subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           os.path.abspath(sys.argv[0]), *sys.argv[1:]], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
