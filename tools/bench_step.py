"""The policy step alone: RecMG's C step against LRU's on the capacity benchmark's synthetic workload,
milliseconds a step and their ratio, without the daemon's loop around them.

    .venv/bin/python tools/bench_step.py [--model-dir M] [--steps 6000] [--slots 100000] [--prefetch-budget 0]

The steps are tools/bench_daemon.py's synthetic batches (``workload``: 8 tables of 200,000 rows, 128
samples x 4 lookups a table, zipf 1.1, seed 0), each deduplicated into one step; they are built first,
not timed. Each policy (LRU, then RecMG with the checkpoint in ``--model-dir``, or one trained here by
``recmg train`` on 300 batches of the same generator with another seed) is reset to ``--slots`` and
driven through every step by ``observe`` with the hits its own decisions give; only ``observe`` is
timed. Prints ms a step of each, RecMG / LRU, and RecMG's C step counters (rows moved to the once
table, rows read again from it, its rows at the end, histories forgotten). To compare builds, run it
with ``PYTHONPATH`` set to each build's checkout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recmgd import policy as registry
from recmgd.keys import make_keys
from recmgd.policy import StepView

# recmgd first (from PYTHONPATH when set: the build compared), then the capacity benchmark's generator
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import workload  # noqa: E402 - tools/ is this script's path

TABLES, ROWS, SAMPLES, POOLING, ALPHA = 8, 200_000, 128, 4, 1.1


def batches(seed: int, n: int) -> list[list[np.ndarray]]:
    """n batches of the workload: per table, the row ids its samples look up (sample-major)."""
    rng = np.random.default_rng(seed)
    return [workload(rng, TABLES, ROWS, SAMPLES, POOLING, ALPHA) for _ in range(n)]


def train_model(out: Path) -> None:
    """A checkpoint for the workload: `recmg train` on 300 batches of another seed."""
    from recmgd.trace.binary import write_binary
    from recmgd.trace.model import Trace

    keys, offsets = [], [0]
    for b in batches(1, 300):
        per = np.stack([make_keys(t, r.reshape(SAMPLES, POOLING)) for t, r in enumerate(b)], axis=1)
        keys.append(per.reshape(-1))  # sample s's rows of table 0, 1, ... as an app looks them up
        offsets.extend(offsets[-1] + TABLES * POOLING * np.arange(1, SAMPLES + 1))
    trace = out.parent / "train.trace"
    write_binary(Trace(np.concatenate(keys), np.asarray(offsets, dtype=np.int64)), trace)
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", "train", str(trace), "--out", str(out),
                        "-b", str(SAMPLES), "--epochs", "1", "--quiet"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"recmg train failed: {r.stderr.strip()[-2000:]}")


def time_steps(name: str, steps: list[np.ndarray], slots: int, **opts: object) -> tuple[float, dict]:
    """Seconds a step of ``observe`` for policy ``name``, and its C step's counters (if any)."""
    pol = registry.create(name, **opts)
    pol.reset(slots)
    resident: set[int] = set()  # the tier as the policy's decisions make it
    spent = 0.0
    for b, keys in enumerate(steps):
        hit = np.fromiter((k in resident for k in keys.tolist()), bool, len(keys))
        t0 = time.perf_counter()
        d = pol.observe(StepView(b, keys, hit))
        spent += time.perf_counter() - t0
        resident.difference_update(d.evict.tolist())
        resident.update(d.admit.tolist())
        resident.update(d.prefetch.tolist())
    return spent / len(steps), getattr(pol, "native_stats", None) or {}


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model-dir", default="", help="a checkpoint (default: trained here)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--slots", type=int, default=100_000)
    p.add_argument("--prefetch-budget", type=int, default=0)
    args = p.parse_args()
    steps = [np.unique(np.concatenate([make_keys(t, r) for t, r in enumerate(b)]))
             for b in batches(0, args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir
        if not model:
            model = str(Path(tmp) / "model")
            train_model(Path(model))
        lru, _ = time_steps("lru", steps, args.slots)
        rec, st = time_steps("recmg", steps, args.slots, model_dir=model,
                             prefetch_budget=args.prefetch_budget)
    rows = sum(len(k) for k in steps) / len(steps)
    print(f"{args.steps} steps of {rows:,.0f} rows, {args.slots:,} slots, "
          f"prefetch budget {args.prefetch_budget}")
    print(f"lru step {lru * 1e3:.3f} ms, recmg step {rec * 1e3:.3f} ms: "
          f"recmg / lru {rec / lru:.2f}x the time")
    print(f"recmg: moved to the once table {st.get('moved', 0):,}, read again from it {st.get('back', 0):,}, "
          f"there at the end {st.get('once_rows', 0):,}, forgotten {st.get('forgotten', 0):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
