"""On-demand fetches with lookahead L (the next L steps' rows known ahead, as in a serving queue).

    .venv/bin/python tools/bench_lookahead.py TRACE [TRACE ...] [--policies lru,recmg,belady]
        [--lookahead 0,1,2,4] [--prefetch-budget 4] [--fraction 0.1] [--batch 16]
        [--model-dir DIR]  # one checkpoint per trace: DIR/<trace name> (trained and saved when empty)
        [--prefetch-threshold T]  # the recmg prefetcher's logit threshold (the policy's default: 0)
        [--past-only]  # also recmg without the announced rows as its prefetcher's input ("recmg past")

Prints one markdown row per (trace, L): the on-demand fetches of each policy (lower is better), the
trace's floor and bound, how many of the first uses each policy had fetched ahead, and recmg+L against
lru+L (what the learned models add on top of FBGEMM's scheme). With ``--past-only``, a column
"recmg past": recmg whose prefetcher sees only the past (``prefetch_announced`` off), as before the
announced rows were its input, and the prefetches of each that were used (``prefetch_useful``).
Every number comes from ``recmgd.sim.simulate`` (``recmg sim --lookahead``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recmgd.sim import simulate  # noqa: E402
from recmgd.trace import open_trace  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--policies", default="lru,recmg,belady")
    ap.add_argument("--lookahead", default="0,1,2,4")
    ap.add_argument("--prefetch-budget", type=int, default=4, help="rows a step the slow tier delivers")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model-dir", default=None, help="checkpoints for the learned policies, one per trace")
    ap.add_argument("--prefetch-threshold", type=float, default=None,
                    help="logit a recmg prefetch candidate needs (default: the policy's)")
    ap.add_argument("--past-only", action="store_true",
                    help="also recmg with prefetch_announced off (its prefetcher sees only the past)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = [n for n in args.policies.split(",") if n]
    try:
        ls = [int(x) for x in args.lookahead.split(",") if x]
    except ValueError:
        print(f"bench_lookahead: --lookahead: not a list of integers: {args.lookahead!r}", file=sys.stderr)
        return 2
    past = args.past_only and "recmg" in names
    head = ["trace", "L", *names, *(["recmg past"] if past else []), "floor", "bound",
            *(f"{n} first uses ahead" for n in names)]
    if "lru" in names and "recmg" in names:
        head.append("recmg / lru")
    if past and "lru" in names:
        head.append("recmg past / lru")
    if past:
        head.append("recmg / recmg past useful prefetches")
    thr = "" if args.prefetch_threshold is None else f", prefetch threshold {args.prefetch_threshold:g}"
    print(f"fraction {args.fraction}, batch {args.batch}, budget {args.prefetch_budget} rows a step{thr}")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for path in args.traces:
        trace = open_trace(path)
        tname = os.path.basename(path).removesuffix(".trace")
        options: dict[str, object] = {"prefetch_budget": args.prefetch_budget}
        if args.prefetch_threshold is not None:
            options["prefetch_threshold"] = args.prefetch_threshold
        if args.model_dir:
            options["model_dir"] = os.path.join(args.model_dir, tname)
        res = simulate(trace, names, [args.fraction], batch=args.batch, options=options, lookahead=ls,
                       budget=args.prefetch_budget)
        by = {(r.policy, r.lookahead): r for r in res}
        if past:
            res = simulate(trace, ["recmg"], [args.fraction], batch=args.batch,
                           options={**options, "prefetch_announced": False}, lookahead=ls,
                           budget=args.prefetch_budget)
            by.update({("past", r.lookahead): r for r in res})
        for L in ls:
            rs = [by[(f"{n}+L{L}" if L else n, L)] for n in names]
            pr = [by[("past", L)]] if past else []
            row = [tname, str(L), *(f"{r.on_demand:,}" for r in rs + pr), f"{rs[0].floor:,}",
                   f"{rs[0].bound:,}", *(f"{r.first_use_ahead:,}" for r in rs)]
            if "lru" in names and "recmg" in names:
                lru, rec = rs[names.index("lru")], rs[names.index("recmg")]
                row.append(f"{rec.on_demand / lru.on_demand:.2f}x" if lru.on_demand else "-")
                if past:
                    row.append(f"{pr[0].on_demand / lru.on_demand:.2f}x" if lru.on_demand else "-")
            if past:
                row.append(f"{rs[names.index('recmg')].prefetch_useful:,} / {pr[0].prefetch_useful:,}")
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
