"""Retraining on a drifting workload: does the daemon's retrain bring the on-demand fetches back?

    .venv/bin/python tools/bench_retrain.py [--drift permute|synth|from-synth|trace|batch] [--seed 1]
        [--trace ../shared/traces/amazon_video.trace] [--lookups 200000] [--window 50000] [--batch 16]
        [--fraction 0.1] [--policy recmg] [--epochs 4] [--then TRACE] [--batch-b 128]
        [--synth-tables 2] [--synth-gap 4096] [--synth-sigma 2] [--synth-block-rows 4096]

The drifting stream is part A, then part B: the distribution changes half way. Part A is the trace's
first ``--lookups`` lookups (part B with from-synth); as in a recording, one sample is one app batch
of ``--batch`` samples of the trace. Part B (``--drift``):
- *permute*: the same lookups with each table's row ids permuted;
- *synth*: as many lookups of a synthetic trace (`recmg trace synth`'s generator, with the
  ``--synth-*`` tables, gap and spread), in batches as long as A's;
- *from-synth*: the other way round: part A is that synthetic trace, part B the trace's lookups;
- *trace*: another trace's (``--then``) first ``--lookups`` lookups, e.g. obd_random then amazon_video;
- *batch*: A's lookups in app batches of ``--batch-b`` samples (the steps change, not the rows).
The capacity is ``--fraction`` of part B's unique rows (the part scored).

The models are made by the daemon's own retraining job, `recmg candidate` (what recmgd runs in its
trainer process), on windows of ``--window`` lookups, and the daemon's rule decides each switch (the
candidate must fetch less than the current model on the window's recent quarter):
- *before the change*: a retrain on A's last window (the current model then is LRU): model A;
- *with retraining*: a retrain on B's first window (the current model is model A): the candidate if
  the rule switches to it, else model A;
- *without retraining*: model A throughout;
- *reference*: a model trained on the new part, `recmg candidate` on B's whole first half.
Each is then run by the simulator over B, warming on B's first half and counting the on-demand fetches
of its second half (after the change and after the retrain), beside LRU. Prints one table and the
ratios to the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recmgd import policy as policy_mod  # noqa: E402
from recmgd.keys import ROW_BITS, ROW_MASK  # noqa: E402
from recmgd.sim import capacity_for, drive  # noqa: E402
from recmgd.sim.runner import unique_rows  # noqa: E402
from recmgd.trace import open_trace  # noqa: E402
from recmgd.trace.binary import BinaryWriter  # noqa: E402
from recmgd.trace.steps import Steps, build_steps  # noqa: E402
from recmgd.trace.synth import SynthConfig, synth_keys  # noqa: E402

DRIFTS = ("permute", "synth", "from-synth", "trace", "batch")


def whole_batches(path: str, lookups: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, lookups a batch): the trace's first lookups, about ``lookups`` of them (all if it has
    fewer), in whole app batches of ``batch`` samples."""
    tr = open_trace(path)
    offs = np.asarray(tr.sample_offsets, dtype=np.int64)
    n_samples = int(np.searchsorted(offs, lookups, side="right")) - 1
    n_samples -= n_samples % batch
    if n_samples < batch:
        raise SystemExit(f"{path}: fewer than {batch} samples")
    offs = offs[: n_samples + 1]
    keys = np.asarray(tr.keys[: offs[-1]], dtype=np.int64)
    return keys, np.diff(offs[::batch])


def permuted(keys: np.ndarray, seed: int) -> np.ndarray:
    """``keys`` with each table's row ids permuted (a bijection over the table's rows in ``keys``)."""
    rng = np.random.default_rng(seed)
    tables, rows = keys >> ROW_BITS, keys & ROW_MASK
    perm = keys.copy()
    for t in np.unique(tables):
        m = tables == t
        uniq = np.unique(rows[m])
        perm[m] = (t << ROW_BITS) | rng.permutation(uniq)[np.searchsorted(uniq, rows[m])]
    return perm


def drifting(args: argparse.Namespace) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((keys, lookups a batch) of part A, the same of part B) for ``args.drift``: one part is
    ``args.trace``'s first ``args.lookups`` lookups in app batches of ``args.batch`` samples (part B
    with from-synth, part A otherwise)."""
    a = whole_batches(args.trace, args.lookups, args.batch)
    if args.drift == "permute":
        return a, (permuted(a[0], args.seed), a[1])
    if args.drift == "batch":  # the same lookups, in app batches ``args.batch_b`` samples long
        return a, whole_batches(args.trace, args.lookups, args.batch_b)
    if args.drift == "trace":  # another trace, from its start
        return a, whole_batches(args.then, args.lookups, args.batch)
    cfg = SynthConfig(lookups=int(a[0].shape[0]), tables=args.synth_tables, pooling=1,
                      block_rows=args.synth_block_rows, gap=args.synth_gap, sigma=args.synth_sigma,
                      seed=args.seed)
    synth = (np.concatenate(list(synth_keys(cfg)))[: a[0].shape[0]], a[1])  # batches as long as the trace's
    return (synth, a) if args.drift == "from-synth" else (a, synth)


def write(path: Path, keys: np.ndarray, lengths: np.ndarray) -> None:
    with BinaryWriter(path) as w:
        w.add(keys, lengths)


def window(keys: np.ndarray, lengths: np.ndarray, lookups: int, last: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first (or last) whole batches holding about ``lookups`` lookups."""
    ends = np.cumsum(lengths)
    if last:
        start = int(np.searchsorted(ends, ends[-1] - lookups, side="left")) + 1
        lo = int(ends[start - 1]) if start else 0
        return keys[lo:], lengths[start:]
    n = int(np.searchsorted(ends, lookups, side="left")) + 1
    return keys[: ends[n - 1]], lengths[:n]


def candidate(work: Path, name: str, keys: np.ndarray, lengths: np.ndarray, args: argparse.Namespace,
              capacity: int, current: str = "") -> dict:
    """Run the daemon's trainer (`recmg candidate`) on a window; its result JSON, with ``model``."""
    trace = work / f"{name}.rtrace"
    write(trace, keys, lengths)
    out, res = work / f"model-{name}", work / f"result-{name}.json"
    cmd = [sys.executable, "-m", "recmgd.cli.recmg", "candidate", str(trace), "--policy", args.policy,
           "--capacity", str(capacity), "--out", str(out), "--result", str(res), "--epochs", str(args.epochs),
           "--threads", "1", "--nice", "0", "--options", json.dumps({"seed": args.seed})]
    if current:
        cmd += ["--current", current]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode != 0:
        raise SystemExit(f"recmg candidate failed ({name}): {p.stderr.strip().splitlines()[-1:]}")
    out_json = json.loads(res.read_text())
    out_json["model"] = str(out)
    out_json["wall_s"] = round(time.perf_counter() - t0, 1)
    return out_json


def score(name: str, model: str | None, steps: Steps, capacity: int, warm: int,
          args: argparse.Namespace) -> int:
    opts: dict[str, object] = {} if name == "lru" else {"model_dir": model, "seed": args.seed}
    return int(drive(policy_mod.create(name, **opts), steps, capacity, warm).on_demand)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default="../shared/traces/amazon_video.trace",
                   help="the trace (default: amazon_video beside the checkout; run from the repo root)")
    p.add_argument("--lookups", type=int, default=200_000, help="lookups of each part (default 200000)")
    p.add_argument("--window", type=int, default=50_000, help="retrain_window, lookups (default 50000)")
    p.add_argument("--batch", type=int, default=16, help="trace samples an app batch (default 16)")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="capacity: fraction of part B's unique rows (the part scored)")
    p.add_argument("--policy", default="recmg")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drift", choices=DRIFTS, default="permute",
                   help="what part B is: permute (A with row ids permuted), synth (a synthetic trace, "
                        "--synth-*), from-synth (part A synthetic, B the trace), "
                        "trace (--then's first lookups), batch (A in app batches of --batch-b)")
    p.add_argument("--then", default="../shared/traces/amazon_video.trace",
                   help="part B's trace (--drift trace)")
    p.add_argument("--batch-b", type=int, default=128, help="part B's app batch, samples (--drift batch)")
    p.add_argument("--synth-tables", type=int, default=2, help="part B's tables (--drift synth)")
    p.add_argument("--synth-gap", type=float, default=4096.0,
                   help="median gap between a row's uses, lookups (--drift synth)")
    p.add_argument("--synth-sigma", type=float, default=2.0,
                   help="log-normal spread of the gaps (--drift synth)")
    p.add_argument("--synth-block-rows", type=int, default=1 << 12, help="fresh rows a block (--drift synth)")
    args = p.parse_args()
    (a_keys, a_len), (b_keys, b_len) = drifting(args)
    b_offs = np.concatenate(([0], np.cumsum(b_len)))
    b_steps = build_steps(b_keys, b_offs, 1)
    capacity = capacity_for(args.fraction, unique_rows(b_steps))
    half = len(b_steps) // 2
    part_a = "synthetic" if args.drift == "from-synth" else args.trace
    print(f"drift {args.drift}: part A {part_a}, {len(a_keys)} lookups in {len(a_len)} batches; part B "
          f"{len(b_keys)} lookups, {unique_rows(b_steps)} unique rows, in {len(b_len)} batches; capacity "
          f"{capacity} rows, window {args.window} lookups, policy {args.policy}")
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        work = Path(tmp)
        ra = candidate(work, "before", *window(a_keys, a_len, args.window, last=True), args, capacity)
        model_a = ra["model"] if ra["candidate_on_demand"] < ra["current_on_demand"] else None
        rb = candidate(work, "after", *window(b_keys, b_len, args.window, last=False), args, capacity,
                       current=model_a or "")
        switched = rb["candidate_on_demand"] < rb["current_on_demand"]
        b_half = (b_keys[: b_offs[half]], b_len[:half])
        rr = candidate(work, "reference", *b_half, args, capacity)
        rows = [("lru", "lru", None),
                ("without retraining (model A)", args.policy if model_a else "lru", model_a),
                ("with retraining", args.policy if (switched or model_a) else "lru",
                 rb["model"] if switched else model_a),
                ("the window's candidate, had it been switched to", args.policy, rb["model"]),
                ("reference (trained on B's first half)", args.policy, rr["model"])]
        results = [(label, score(name, model, b_steps, capacity, half, args)) for label, name, model in rows]
    ref = results[-1][1]
    print(f"retrain before the change: candidate {ra['candidate_on_demand']} vs lru "
          f"{ra['current_on_demand']} -> {'model A' if model_a else 'kept lru'} ({ra['wall_s']} s)")
    print(f"retrain after the change: candidate {rb['candidate_on_demand']} vs current "
          f"{rb['current_on_demand']} -> {'switched' if switched else 'kept'} ({rb['wall_s']} s)")
    print(f"\non-demand fetches on B's second half ({len(b_steps) - half} batches):")
    print("| model | on-demand | / reference |")
    print("|---|---:|---:|")
    for label, n in results:
        print(f"| {label} | {n} | {n / ref:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
