"""End to end: a TorchRec DLRM inference server on recmg against all-DRAM (recmgd.app.e2e says how).

On the same trace and load: all-DRAM TorchRec EBC, recmg with no fast tier, LRU, RecMG, LRU+lookahead,
RecMG+lookahead; the fast tier 10% of the trace's unique rows, the slow tier a file in the work dir
(O_DIRECT, io_uring); offered loads 50% and 90% of the all-DRAM server's most; on amazon_video and on a
synthetic 26-table trace (Meta 2021 reuse statistics, generated here). Prints the latency table and the
targets, writes the PNG (latency CDF per system, p99 against offered load) and, with --json, one object
per (trace, system, load).

Usage:  python tools/bench_e2e.py [--quick] [--json OUT] [--png OUT] [--traces amazon_video,synthetic-26]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recmgd.app.e2e import (  # noqa: E402
    SYNTH_26,
    SYSTEMS,
    E2EConfig,
    compare,
    plot,
    synthetic_26,
    table,
    targets,
)

TRACES = REPO.parent / "shared" / "traces"  # beside the checkout, as the tests find them


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: short loads, small warm-up")
    p.add_argument("--traces", default=f"amazon_video,{SYNTH_26}",
                   help=f"comma-separated: trace files, names in ../shared/traces, or {SYNTH_26}")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--loads", default="0.5,0.9", help="offered loads, shares of the all-DRAM most")
    p.add_argument("--seconds", type=float, default=None, help="counted seconds a load (default 4; quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up samples (default 20000; quick 4000)")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--lookahead-batches", type=int, default=2, metavar="L",
                   help="+lookahead systems: the server announces a batch's rows L batches ahead (0: at "
                        "arrival); the daemon pins hints L+1 batches (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write one object per (trace, system, load) to this file")
    p.add_argument("--png", default="build/bench_e2e.png", help="the plot (default %(default)s)")
    p.add_argument("--workdir", help="pools' slow-tier files, traces, models (default: a temp dir in build/)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    try:
        loads = [float(x) for x in args.loads.split(",") if x]
    except ValueError:
        p.error(f"--loads: numbers, got {args.loads!r}")
    if not loads or any(not 0 < x <= 2 for x in loads):
        p.error("--loads: shares in (0, 2]")
    if args.lookahead_batches < 0:
        p.error("--lookahead-batches must be >= 0")
    systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        p.error(f"--systems: unknown {bad}; use {', '.join(SYSTEMS)}")
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 4.0)
    warmup = args.warmup if args.warmup is not None else (4000 if args.quick else 20000)
    # on this disk: the slow tier's file must take O_DIRECT (tmpfs, often /tmp, does not)
    (REPO / "build").mkdir(exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-e2e-", dir=REPO / "build"))
    work.mkdir(parents=True, exist_ok=True)
    traces = []
    for name in [t for t in args.traces.split(",") if t]:
        if name == SYNTH_26:
            path = work / f"{SYNTH_26}.src.trace"
            samples = warmup + max(warmup, int(seconds * 12000))  # 12000/s: above the all-DRAM most here
            print(f"generating {SYNTH_26} ({samples * 26:,} lookups)", flush=True)
            synthetic_26(path, samples, args.seed)
            traces.append((SYNTH_26, path))
        else:
            path = Path(name) if Path(name).exists() else TRACES / f"{name}.trace"
            if not path.exists():
                p.error(f"--traces: no trace {name} (not a file, nor {path})")
            traces.append((path.name.split(".")[0], path))
    cfg = E2EConfig(traces=traces, work=work, systems=systems, loads=loads, seconds=seconds, warmup=warmup,
                    fraction=args.fraction, dim=args.dim, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms, epochs=1 if args.quick else 2, seed=args.seed,
                    lookahead_batches=args.lookahead_batches,
                    progress=lambda s: print(s, flush=True))
    t0 = time.monotonic()
    try:
        run = compare(cfg)
        print()
        print(table(run["results"]))
        print()
        for line in targets(run["results"], load=min(loads)):
            print(line)
        plot(run, Path(args.png))
        print(f"\nplot: {args.png}; {time.monotonic() - t0:.0f} s in all")
        if args.json:
            host = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
            doc = [{**r, "host": host} for r in run["results"]]
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
