"""The hit path on 4 KiB pages against 2 MiB pages, and both against torch's in-DRAM kernel, in one run.

A pool lives in the tmpfs at /dev/shm and asks for huge pages with madvise(MADV_HUGEPAGE); the tmpfs
grants them only when mounted with huge=advise (the usual default is huge=never). This tool needs root:
it runs itself in a private mount namespace (unshare -m), where it mounts a fresh tmpfs with huge=never
on /dev/shm and creates pool A, then mounts one with huge=advise over it and creates pool B (the host's
/dev/shm is not touched; the namespace's mounts go when the tool exits). Both pools hold every row of
the same tables in the fast tier (all hits, a dram slow tier, ring logging on); the tool checks from
/proc/self/smaps that B's mapping is on huge pages and A's is not, then times torch's embedding_bag
(a call a table), each pool's multi-table call (embedding_bags) and its per-table calls, interleaved. With
``--miss F`` it then evicts the same fraction F of every table's rows from both pools and times the
mixed workload as well (those lookups read the pools' dram slow tiers; #14's target for it: the pool's
time at most 1.2x torch's, ratio >= 0.83).

    .venv/bin/python tools/bench_hugepages.py [--rows 100000] [--tables 26] [--threads 1,2] [--reps 10] \
        [--miss 0.1]
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python tools/bench_hugepages.py    # torch's weights on huge pages too
"""

from __future__ import annotations

import argparse
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

from bench_pool import _median_times, _name  # noqa: E402
from bench_workload import evicted_keys, miss_fraction  # noqa: E402

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


def run(a: argparse.Namespace) -> int:
    tables, rows, dim, pooling, batch = a.tables, a.rows, 64, 20, 2048
    n = batch * pooling
    table_bytes = tables * rows * dim * 4
    size = 4 * table_bytes + (2 << 30)  # a limit, not a reservation: slots, dram slow tier, rings, metadata
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn((rows, dim), generator=gen) for _ in range(tables)]
    mount_tmpfs("never", size)
    small = make_pool(tables, rows, dim, weights, 2 * tables * n)
    mount_tmpfs("advise", size)
    huge = make_pool(tables, rows, dim, weights, 2 * tables * n)
    print(f"{SHM_DIR} for pool A: huge=never; for pool B: huge={huge_mode()}")
    for label, p in (("A (4 KiB)", small), ("B (2 MiB)", huge)):
        rss, pmd = mapped_kib(p.name)
        print(f"pool {label}: {rss / 1024:.0f} MiB resident in this process, {pmd / 1024:.0f} MiB of it "
              "on huge pages")
    if mapped_kib(huge.name)[1] == 0:
        print("pool B got no huge pages (the kernel's tmpfs lacks huge= support?): nothing to compare")
        return 1
    nb = 4
    batches = [[torch.randint(0, rows, (n,), generator=gen) for _ in range(tables)] for _ in range(nb)]
    offsets = torch.arange(0, n, pooling)

    def multi(p: Pool) -> Callable[[int], object]:
        def f(k: int) -> object:
            out = p.embedding_bags(range(tables), batches[k], [offsets] * tables)
            p.end_batch()
            return out
        return f

    def per_table(p: Pool) -> Callable[[int], object]:
        def f(k: int) -> object:
            out = [p.embedding_bag(t, batches[k][t], offsets) for t in range(tables)]
            p.end_batch()
            return out
        return f

    def kernel(k: int) -> object:
        return [F.embedding_bag(batches[k][t], weights[t], offsets, mode="sum") for t in range(tables)]

    pools = {"4k": small, "huge": huge}
    for p in pools.values():  # the rows are right on both
        for ref, got in zip(kernel(0), multi(p)(0), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        p.drain_ring(p.ring_index)
    fns: dict[str, Callable[[int], object]] = {"torch": kernel}
    for tag, p in pools.items():
        fns[f"multi_{tag}"] = multi(p)
        fns[f"table_{tag}"] = per_table(p)

    def after(key: str) -> None:
        for p in pools.values():
            p.drain_ring(p.ring_index)

    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "") == "1"
    print(f"{tables} tables x {rows:,} rows, dim 64, pooling 20, batch 2048, ring on; "
          "ratio = torch time / pool time (medians of interleaved calls); torch's weights on "
          + ("transparent huge pages (THP_MEM_ALLOC_ENABLE=1)" if thp
             else "its default allocation (4 KiB pages unless THP is 'always'; THP_MEM_ALLOC_ENABLE=1 "
             "asks for huge pages)"))
    workloads = [("all hits", 0.0)] + ([(f"{1 - a.miss:.0%} hits", a.miss)] if a.miss > 0 else [])
    for workload, frac in workloads:
        if frac > 0:  # the same rows of every table leave both fast tiers (the rows bench_pool evicts)
            keys = evicted_keys(tables, rows, frac)
            for p in pools.values():
                p.evict_keys(keys)
                for ref, got in zip(kernel(1), multi(p)(1), strict=True):
                    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
                p.drain_ring(p.ring_index)
        print(f"{workload}:")
        print(f"{'threads':>7} {'torch ms':>9} {'multi 4K':>16} {'multi huge':>16} {'per-table 4K':>16} "
              f"{'per-table huge':>16} {'huge/4K multi':>13} {'huge/4K table':>13}")
        for threads in a.threads:
            torch.set_num_threads(threads)
            for p in pools.values():
                p.set_threads(threads)
            med = {k: v * 1e3 for k, v in _median_times(fns, nb, a.reps, after).items()}
            t = med["torch"]
            cells = {k: f"{med[k]:7.1f} ({t / med[k]:.2f}x)" for k in fns if k != "torch"}
            print(f"{threads:>7} {t:9.1f} {cells['multi_4k']:>16} {cells['multi_huge']:>16} "
                  f"{cells['table_4k']:>16} {cells['table_huge']:>16} "
                  f"{med['multi_huge'] / med['multi_4k']:13.3f} {med['table_huge'] / med['table_4k']:13.3f}")
    for p in pools.values():
        p.close()  # the namespace's tmpfs mounts, and the objects in them, go when this process exits
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
    a = ap.parse_args()
    a.threads = [int(x) for x in a.threads.split(",")]
    if os.environ.get(IN_NS) == "1":
        return run(a)
    # two pools (each row in a fast-tier slot and in the dram slow tier), torch's weights and the
    # copies made while the pools are written: over 7x the tables at the peak (measured: at 500,000 rows,
    # 11.4 GB anonymous + 12.5 GB shared when the OOM killer stopped it), plus ~1 GiB
    return again_in_private_namespace("bench_hugepages", 8 * a.tables * a.rows * 64 * 4 + (1 << 30),
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
