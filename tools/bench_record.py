"""What a recording costs the daemon's loop: time inside PoolDriver.tick() with and without a recording.

    .venv/bin/python tools/bench_record.py [--rounds 40] [--ticks 10] [--batches-per-tick 8]

One process holds an app handle and a daemon handle of one pool (8 tables x 200,000 rows, dim 16,
100,000 slots, LRU); the app logs batches of 4,096 zipf(1.1) lookups (128 samples x 4 lookups x 8
tables) and the driver's tick() (the code recmgd runs) drains and processes them, timed. Rounds
alternate between no recording and a recording (recmgd.daemon.record.Recorder on the pool's tap,
writing a trace to a temporary file through its writer thread), so both see the same load. Prints the
lookups per second inside tick() of each, their ratio, and checks that the trace holds every lookup
logged while it recorded. The apps never wait on the daemon, so this is the only place a recording can
cost anything; its writer thread competes for a core with the loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recmgd import policy as policy_mod  # noqa: E402
from recmgd.daemon.loop import PoolDriver  # noqa: E402
from recmgd.daemon.mover import FillBudget  # noqa: E402
from recmgd.daemon.record import PoolStream  # noqa: E402
from recmgd.pool import Pool  # noqa: E402
from recmgd.trace import open_trace  # noqa: E402

TABLES, ROWS, SAMPLES, POOLING = 8, 200_000, 128, 4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40, help="rounds, alternating (default 40)")
    p.add_argument("--ticks", type=int, default=10, help="ticks a round (default 10)")
    p.add_argument("--batches-per-tick", type=int, default=8)
    args = p.parse_args()
    name = f"bench-record-{uuid.uuid4().hex[:6]}"
    app = Pool.create(name, tables=[(ROWS, 16)] * TABLES, slots=100_000, ring_records=1 << 22, rings=2)
    daemon = Pool.attach(name, role="daemon")
    rng = np.random.default_rng(0)
    busy = {False: 0.0, True: 0.0}
    lookups = {False: 0, True: 0}
    fed = 0  # lookups logged while the recording was on the tap
    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        path = os.path.join(tmp, "rec.rtrace")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", budget=FillBudget(), max_drain=1 << 22)
        stream = PoolStream(drv)
        stream.command({"action": "start", "path": path}, lambda: fd)
        rec = stream.recorder
        assert rec is not None
        stream.remove_sink("record")
        try:
            for r in range(args.rounds + 2):
                recording = r % 2 == 1
                if recording:
                    stream.add_sink("record", rec)
                else:
                    stream.remove_sink("record")
                for _ in range(args.ticks):
                    for _ in range(args.batches_per_tick):
                        for t in range(TABLES):
                            ids = np.minimum(rng.zipf(1.1, SAMPLES * POOLING) - 1, ROWS - 1)
                            ids = ids * 2654435761 % ROWS  # hot rows scattered over the table
                            app.embedding_bag(t, ids, np.arange(0, len(ids), POOLING, dtype=np.int64))
                        app.end_batch()
                    before = drv.pc["records"]
                    t0 = time.perf_counter()
                    drv.tick()
                    dt = time.perf_counter() - t0
                    n = drv.pc["records"] - before - args.batches_per_tick  # lookups (less batch ends)
                    if recording:
                        fed += n
                    if r >= 2:  # the first two rounds warm up
                        busy[recording] += dt
                        lookups[recording] += n
            rec.stop()
            rec.wait(120)
            recorded = open_trace(path).n_lookups if rec.state == "done" else -1
        finally:
            drv.close()
            daemon.close()
            app.destroy()
    off, on = lookups[False] / busy[False], lookups[True] / busy[True]
    expected = fed
    print(f"inside tick(), no recording: {off:,.0f} lookups/s ({lookups[False]:,} lookups)")
    print(f"inside tick(), recording:    {on:,.0f} lookups/s ({lookups[True]:,} lookups)")
    print(f"ratio recording / not: {on / off:.3f}")
    print(f"the trace holds {recorded:,} lookups of the {expected:,} logged while recording "
          f"({'all' if recorded == expected else 'MISMATCH'}); state {rec.state}")
    return 0 if recorded == expected else 1


if __name__ == "__main__":
    sys.exit(main())
