"""The demo's DLRM app: attach a pool, run DLRM inference over a trace's batches through
``TieredEmbeddingBag``, check every output against the same model on in-DRAM tables, report as JSON.

Run as its own process (``python -m recmgd.app.run --pool NAME --trace PATH``), as a real app would.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch
from torch import nn

from recmgd.app.dlrm import DLRM
from recmgd.app.replay import iter_batches
from recmgd.pool import Pool, TieredEmbeddingBag
from recmgd.trace import open_trace

log = logging.getLogger("recmgd.app")
DENSE = 13


def run(pool_name: str, trace_path: str, batch: int, start: int, stop: int | None, check: bool,
        hints: bool, seed: int, pace: float = 0.0) -> dict[str, object]:
    """Replay batches ``start``..``stop`` of the trace; returns counts, timing and the largest error.

    ``pace``: seconds idle after each batch, as a server waits for its next requests (0: back to back).
    ``lookups_per_s`` counts the busy time only (``seconds`` minus ``idle_seconds``).
    """
    if pace < 0:
        raise ValueError(f"pace must be >= 0 seconds, got {pace}")
    torch.set_num_threads(1)
    trace = open_trace(trace_path)
    pool = Pool.attach(pool_name)
    try:
        n = len(pool.tables)
        bags = [TieredEmbeddingBag(pool, t, mode="sum") for t in range(n)]
        model = DLRM(DENSE, pool.tables[0].dim, bags, seed=seed)
        ref = None
        if check:
            refs = [nn.EmbeddingBag.from_pretrained(
                torch.from_numpy(pool.read_rows(t, np.arange(info.rows))), mode="sum")
                for t, info in enumerate(pool.tables)]
            ref = DLRM(DENSE, pool.tables[0].dim, refs, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        worst = 0.0
        batches = lookups = 0
        t0 = time.perf_counter()
        pending = None
        idle = 0.0
        it = iter_batches(trace, n, batch, start, stop)
        nxt = next(it, None)
        while nxt is not None:
            cur, nxt = nxt, next(it, None)
            if hints and nxt is not None:
                for t in range(n):
                    if len(nxt.ids[t]):
                        pool.hint(t, nxt.ids[t].numpy())
            dense = torch.randn(cur.samples, DENSE, generator=gen)
            out = model(dense, cur.ids, cur.offsets)
            pool.end_batch()
            if ref is not None:
                worst = max(worst, float((out - ref(dense, cur.ids, cur.offsets)).abs().max()))
            batches += 1
            lookups += sum(len(i) for i in cur.ids)
            pending = out
            if pace:
                t1 = time.perf_counter()
                time.sleep(pace)
                idle += time.perf_counter() - t1
        seconds = time.perf_counter() - t0
        busy = seconds - idle
        del pending
        return {"batches": batches, "lookups": lookups, "seconds": round(seconds, 3),
                "idle_seconds": round(idle, 3),
                "lookups_per_s": round(lookups / busy) if busy > 0 else 0,
                "max_abs_error": worst, "process": pool.stats()["process"]}
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recmgd.app.run", description=__doc__)
    p.add_argument("--pool", required=True)
    p.add_argument("--trace", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--start", type=int, default=0, help="first batch")
    p.add_argument("--stop", type=int, default=None, help="batch to stop before")
    p.add_argument("--no-check", action="store_true", help="skip the in-DRAM reference model")
    p.add_argument("--hints", action="store_true", help="announce each next batch's rows (pool.hint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pace", type=float, default=0.0,
                   help="seconds idle after each batch, as between a server's requests (default 0)")
    args = p.parse_args(argv)
    if args.pace < 0:
        p.error(f"--pace must be >= 0 seconds, got {args.pace}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.pool, args.trace, args.batch, args.start, args.stop, not args.no_check,
                 args.hints, args.seed, args.pace)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
