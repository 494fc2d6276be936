"""Benchmark: recmg's row slots against page-granular tiering, with the same DRAM bytes.

    .venv/bin/python tools/bench_tiering.py [--traces A,B] [--fractions 0.05,0.1,0.2] [--row-bytes 256]
        [--page-bytes 4096] [--recmg recmg] [--page-policies lru,s3fifo,opt]

Kernel NUMA tiering, DAMON-based tiering and memtierd move whole 4 KiB pages between the slow node and
DRAM; with 256-byte rows a page holds 16 rows whose ids, hashed, are unrelated. In one run per trace
and fraction this measures, on the simulator's protocol (docs/ARCHITECTURE.md: steps of 16 samples, the first
half warms, the second is counted), the on-demand fetches of recmg on row slots (trained on the first
half) and of page-granular tiering with the same DRAM: LRU over pages (what the kernel's LRU lists
approximate), S3-FIFO over pages, and Belady's OPT over pages, which no page-granular tiering without
prefetching can beat. It prints recmg's fetches as a fraction of each, and the bytes each moves from
the slow tier (rows of 256 B against pages of 4 KiB).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from recmgd.sim import simulate
from recmgd.sim.pages import PAGE_SUFFIX, simulate_pages
from recmgd.sim.runner import unique_rows
from recmgd.trace import open_trace

TRACES_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"
DEFAULT_TRACES = "amazon_video.trace,obd_random.trace"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=DEFAULT_TRACES,
                    help="comma-separated trace files (names are looked up in ../shared/traces)")
    ap.add_argument("--fractions", default="0.05,0.1,0.2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--row-bytes", type=int, default=256)
    ap.add_argument("--page-bytes", type=int, default=4096)
    ap.add_argument("--recmg", default="recmg", help="the row-slot policy to compare (default %(default)s)")
    ap.add_argument("--page-policies", default="lru,s3fifo,opt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fractions = [float(f) for f in args.fractions.split(",")]
    page_pols = [p.strip() for p in args.page_policies.split(",") if p.strip()]
    options: dict[str, object] = {"seed": args.seed, "prefetch_budget": 16, "threads": 1}
    print(f"row slots ({args.row_bytes} B rows) against page-granular tiering ({args.page_bytes} B pages), "
          f"same DRAM bytes; batch {args.batch}; on-demand fetches of the scored half (lower is better)")
    head = (f"{'trace':<20} {'frac':>5} {'lru':>8} {args.recmg:>8} "
            + " ".join(f"{p + PAGE_SUFFIX:>12}" for p in page_pols)
            + " " + " ".join(f"{args.recmg + '/' + p + PAGE_SUFFIX:>16}" for p in page_pols)
            + f" {'moved MB row/page':>18}")
    print(head)
    for name in args.traces.split(","):
        path = name if os.path.exists(name) else str(TRACES_DIR / name)
        if not os.path.exists(path):
            print(f"bench_tiering: trace not found: {name}", file=sys.stderr)
            return 2
        trace = open_trace(path)
        steps = trace.steps(args.batch)
        uniq = unique_rows(steps)
        t0 = time.perf_counter()
        rows = simulate(trace, ["lru", args.recmg], fractions, batch=args.batch, row_bytes=args.row_bytes,
                        options=options, steps=steps)
        pages = simulate_pages(os.path.basename(path), steps, page_pols, fractions, uniq,
                               row_bytes=args.row_bytes, page_bytes=args.page_bytes, batch=args.batch,
                               options=options)
        by = {(r.policy, r.fraction): r for r in rows + pages}
        for f in fractions:
            lru, rec = by[("lru", f)], by[(args.recmg, f)]
            pcs = [by[(p + PAGE_SUFFIX, f)] for p in page_pols]
            ratios = [rec.on_demand / pc.on_demand if pc.on_demand else None for pc in pcs]
            best_page = min(pcs, key=lambda r: r.on_demand)
            moved = f"{rec.slow_bytes / 1e6:.1f}/{best_page.slow_bytes / 1e6:.1f}"
            print(f"{os.path.basename(path):<20} {f:>5.2f} {lru.on_demand:>8,} {rec.on_demand:>8,} "
                  + " ".join(f"{pc.on_demand:>12,}" for pc in pcs) + " "
                  + " ".join(f"{_fmt(x):>16}" for x in ratios) + f" {moved:>18}", flush=True)
        print(f"  ({os.path.basename(path)}: {time.perf_counter() - t0:.0f} s; 'moved': recmg's slow-tier "
              f"bytes against the page policy with the fewest fetches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
