#!/usr/bin/env python3
"""What a daemon tick costs when the apps are idle, by how many access rings the pool has: the ring
tracker's look at every ring (recmgd/daemon/tracker.py) through one native call for all of them
(``Pool.ring_table``) against a ring description object a ring (``Pool.rings()``, what it did before;
the tracker still takes that path for a pool without ``ring_table``). One run, the two interleaved;
medians. One app process holds a ring (this one, with a batch logged and drained); the others are free.

    .venv/bin/python tools/bench_tick.py [--rings 16,256,4096] [--ticks 2000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recmgd.daemon.loop import PoolDriver, create_policy  # noqa: E402
from recmgd.pool import Pool  # noqa: E402


class RingsOnly:
    """The daemon's pool handle without ring_table: the tracker asks rings() (one object a ring)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        if name == "ring_table":
            raise AttributeError(name)
        return getattr(self._pool, name)


def tick_us(driver: PoolDriver, ticks: int) -> float:
    t0 = time.perf_counter()
    for _ in range(ticks):
        driver.tick()
    return (time.perf_counter() - t0) / ticks * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rings", default="16,256,4096")
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print("an idle daemon tick (LRU, one app ring in use), us; ratio = rings() path / ring_table path")
    print(f"{'rings':>6} {'ring_table':>11} {'rings()':>9} {'ratio':>7}")
    for n_rings in (int(x) for x in args.rings.split(",")):
        name = f"bench-tick-{uuid.uuid4().hex[:8]}"
        app = Pool.create(name, tables=[(1000, 8)], slots=100, rings=n_rings)
        daemon = Pool.attach(name, role="daemon")
        try:
            drivers = {"table": PoolDriver(daemon, create_policy("lru", {}), "lru"),
                       "rings": PoolDriver(RingsOnly(daemon), create_policy("lru", {}), "lru")}  # type: ignore[arg-type]
            app.embedding_bag(0, np.arange(4), np.arange(4))
            app.end_batch()
            for d in drivers.values():
                d.tick()
                tick_us(d, args.ticks // 10)  # warm
            got: dict[str, list[float]] = {k: [] for k in drivers}
            for rep in range(args.reps):
                for k in (list(drivers) if rep % 2 == 0 else list(drivers)[::-1]):
                    got[k].append(tick_us(drivers[k], args.ticks))
            table, rings = statistics.median(got["table"]), statistics.median(got["rings"])
            print(f"{n_rings:>6} {table:>11.1f} {rings:>9.1f} {rings / table:>6.1f}x")
        finally:
            daemon.close()
            app.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
