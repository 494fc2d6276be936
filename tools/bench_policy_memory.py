"""Memory of the policy state: LRU against the learned recmg policy (C step) with and without its recency
window (issue #13 part 2), on a synthetic trace.

    .venv/bin/python tools/bench_policy_memory.py [--lookups 4000000] [--tables 64] [--batch 16]
        [--fraction 0.1] [--windows 0,auto,256] [--train-lookups 500000] [--workdir DIR]

Writes a synthetic trace (`recmg trace synth`) and a smaller one of the same shape to train a checkpoint
on (`recmg train`), then runs each policy in a child process of its own: the child loads the trace's
steps, notes its RSS, drives the policy through every step (hits from a set of resident keys, the same
for every policy), and reports its peak RSS (VmHWM, reset once the steps are loaded). The policy's
state is the peak minus the RSS before the policy was made (the trace's steps and the harness's
resident set are in every run; the distinct rows, for the tier's size, are counted in the parent).
Prints, per run: on-demand fetches, the state's bytes, the rows the policy kept a history for at the
end and at the peak, and the state's bytes per fast-tier slot; then recmg's bytes per row with a history
and per slot (fitted from the runs' difference) and what they give at 10^8 table rows. ``--trace``: a
given trace (trained on itself) instead of the synthetic ones.
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

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Start the peak RSS (VmHWM) afresh, so loading the trace's transient memory is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        sys.exit(f"cannot reset the peak RSS (/proc/self/clear_refs): {e}")


def distinct_rows(trace: str, batch: int) -> int:
    """Distinct rows of the trace's steps (in the parent: its transient memory is not the policy's)."""
    import numpy as np

    from recmgd.trace import open_trace

    return len(np.unique(np.concatenate(open_trace(trace).steps(batch).as_list())))


def child(trace: str, batch: int, distinct: int, fraction: float, policy: str, model: str,
          window: str) -> None:
    """One run in this process; prints one JSON line."""
    import numpy as np

    from recmgd import policy as registry
    from recmgd.keys import capacity_for
    from recmgd.policy import StepView
    from recmgd.trace import open_trace

    steps = open_trace(trace).steps(batch).as_list()
    cap = capacity_for(fraction, distinct)
    opts: dict[str, object] = {"prefetch_budget": 16, "seed": 0}
    if policy == "recmg":
        opts["model_dir"] = model
        if window != "auto":
            opts["history_window"] = int(window)
    p = registry.create(policy, **opts)
    resident: set[int] = set()
    _reset_peak()
    base = _status_kib("VmRSS")
    p.reset(cap)
    fetches = peak_rows = 0
    t0 = time.perf_counter()
    for b, keys in enumerate(steps):
        hit = np.fromiter((k in resident for k in keys.tolist()), bool, len(keys))
        fetches += int((~hit).sum())
        d = p.observe(StepView(b, keys, hit))
        resident.difference_update(d.evict.tolist())
        resident.update(d.admit.tolist() + d.prefetch.tolist())
        st = getattr(p, "native_stats", None)
        if st is not None and b % 16 == 0:
            peak_rows = max(peak_rows, st["rows"])
    secs = time.perf_counter() - t0
    st = getattr(p, "native_stats", None) or {}
    peak_rows = max(peak_rows, st.get("rows", 0))
    peak = _status_kib("VmHWM")
    w = p.history_window_steps() if policy == "recmg" else 0  # type: ignore[attr-defined]
    print(json.dumps({"policy": policy, "window": w, "steps": len(steps), "distinct": distinct,
                      "capacity": cap,
                      "fetches": fetches, "state_bytes": (peak - base) * 1024, "peak_rss": peak * 1024,
                      "rows_end": st.get("rows", 0), "rows_peak": peak_rows,
                      "forgotten": st.get("forgotten", 0), "secs": round(secs, 1)}))


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.strip()}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lookups", type=int, default=4_000_000)
    ap.add_argument("--tables", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--windows", default="0,auto,256", help="recmg history_window values (auto: the model's)")
    ap.add_argument("--train-lookups", type=int, default=500_000)
    ap.add_argument("--trace", default=None, help="a trace to run instead of the synthetic one (trained on)")
    ap.add_argument("--workdir", default=None, help="keep the traces and checkpoint here")
    ap.add_argument("--child", nargs=7,
                    metavar=("TRACE", "BATCH", "DISTINCT", "FRACTION", "POLICY", "MODEL", "WINDOW"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        t, b, d, f, pol, m, w = a.child
        child(t, int(b), int(d), float(f), pol, m, w)
        return
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        trace, small, model = work / "bench.trace", work / "train.trace", work / "model"
        recmg = [py, "-m", "recmgd.cli.recmg"]
        if a.trace:
            trace = small = Path(a.trace)
            model = work / f"model-{trace.stem}-b{a.batch}"
        elif not trace.exists():
            _run(recmg + ["trace", "synth", str(trace), "--lookups", str(a.lookups),
                          "--tables", str(a.tables)])
        if not (model / "inference.npz").exists():
            if not a.trace:
                _run(recmg + ["trace", "synth", str(small), "--lookups", str(a.train_lookups), "--tables",
                              str(a.tables), "--seed", "1"])
            _run(recmg + ["train", str(small), "--out", str(model), "-b", str(a.batch), "--fraction",
                          str(a.fraction), "--epochs", "1", "--quiet"])
        distinct = distinct_rows(str(trace), a.batch)
        runs = [("lru", "0")] + [("recmg", w) for w in a.windows.split(",")]
        rows = []
        for pol, w in runs:
            out = _run([py, __file__, "--child", str(trace), str(a.batch), str(distinct), str(a.fraction),
                        pol, str(model), w])
            rows.append(json.loads(out.strip().splitlines()[-1]))
    first = rows[0]
    src = a.trace or f"synthetic {a.lookups} lookups, {a.tables} tables"
    print(f"trace: {src}, batch {a.batch}: {first['steps']} steps, {first['distinct']} distinct rows; "
          f"fast tier {a.fraction:.0%} = {first['capacity']} slots")
    print("| policy | window (steps) | on-demand fetches | state MB | rows with a history (end / peak) "
          "| state B per slot | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['window'] or '-'} | {r['fetches']} | {r['state_bytes'] / 1e6:.1f} | "
              f"{r['rows_end']} / {r['rows_peak']} | {r['state_bytes'] / r['capacity']:.0f} | {r['secs']} |")
    learned = sorted((r for r in rows if r["policy"] == "recmg"), key=lambda r: r["rows_peak"])
    lo, hi = learned[0], learned[-1]
    if hi["rows_peak"] > lo["rows_peak"]:
        # state = per_slot x slots + per_row x rows kept: the runs differ in rows kept only
        per_row = (hi["state_bytes"] - lo["state_bytes"]) / (hi["rows_peak"] - lo["rows_peak"])
        per_slot = (lo["state_bytes"] - per_row * lo["rows_peak"]) / lo["capacity"]
        print(f"recmg: {per_row:.0f} B per row with a history (from the runs' difference), "
              f"{per_slot:.0f} B per fast-tier slot besides")
        for r in learned if first["distinct"] >= 100_000 else ():  # a small trace says nothing of 10^8
            share = r["rows_peak"] / r["distinct"]
            gb = (per_slot * a.fraction + per_row * share) * 1e8 / 1e9
            print(f"  window {r['window'] or 'off'}: rows kept {share:.2f} of the distinct rows; "
                  f"at 10^8 table "
                  f"rows (tier {a.fraction:.0%}, the same share kept): {gb:.1f} GB")


if __name__ == "__main__":
    main()
