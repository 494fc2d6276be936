"""Memory of the daemon's state at 10^8 table rows (issue #13 part 2): private RSS of a real PoolDriver.

    .venv/bin/python tools/bench_daemon_memory.py [--rows 100000000] [--tables 8] [--fraction 0.01]
        [--steps 1500] [--window 512] [--policies lru,recmg] [--model DIR] [--workdir DIR]

Each policy runs in a child process of its own: the child imports everything, notes its private RSS
(RssAnon in /proc/self/status) and resets its peak, then creates a pool (``recmgd.pool.Pool``, slow tier
``dram``: shared memory, so neither tier counts as private RSS) whose tables total ``--rows`` rows of
``--dim`` floats and whose fast tier holds ``--fraction`` of them, attaches a daemon handle and a real
:class:`~recmgd.daemon.loop.PoolDriver` with the policy, and drives it through the app's ring with a
generated zipf-ish stream (per batch, ``--samples`` samples of ``--pooling`` rows per table, hashed over
each table's rows so hot rows are not neighbours) for ``--steps`` batches, one step each. It samples
RssAnon every 16 steps; the state is the peak RssAnon minus the baseline. The app is a process of its own
(forked after the baseline, attached to the pool as an app, one batch per step in lockstep with the
daemon's ticks), so its private memory (its lookup scratch: two bitmaps of each table's rows, 25 MB at
10^8 rows) is not counted as the daemon's, as it was before 2026-12-05 evening. ``--window``: the learned
policy's recency window (``history_window``, steps; 0: the model's default); choose ``--steps`` past it,
so the window is full. The rows in the window are the C step's rows with a history
(``LearnedPolicy.native_stats``, at the peak). The target is 64 bytes a fast-tier slot plus 16 a row in
the window. The policy's C count is what its structures say they hold allocated: a learned policy's C step
(``native_stats``), a classical C policy's per-id arrays and tables (``sc_policy_bytes``), and the
policy's key map (``sc_idmap_bytes``, also printed alone). The child sets its allocator as recmgd's
main does (``recmgd.simcore.map_large_allocations``); ``--heap-holes`` leaves glibc's default, under which
the growing arrays' old copies stayed in the heap (~30 MB at a 1% tier of 10^8 rows).

The learned policy needs a checkpoint: ``--model``, or one trained here by ``recmg train`` on a small
trace of the same shape (``--train-steps`` batches of the same generator, another seed), kept in
``--workdir`` when given. Prints a table; ``--json`` writes the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_policy_memory import _reset_peak, _status_kib  # noqa: E402 - tools/ is this script's path

TARGET_PER_SLOT = 64
#: the learned C step's parts in its stats (bytes, then the rows that keep a full record)
C_STEP_PARTS = ("map_bytes", "row_bytes", "record_bytes", "ring_bytes", "once_bytes", "records", "once_rows",
                "plan_bytes")
TARGET_PER_WINDOW_ROW = 16




def table_rows(total: int, tables: int) -> list[int]:
    """``total`` rows over ``tables`` tables (the first ones one row larger when it does not divide)."""
    base, extra = divmod(total, tables)
    return [base + (t < extra) for t in range(tables)]


def batch_rows(rng: object, sizes: list[int], samples: int, pooling: int, alpha: float) -> list:
    """One batch: per table, samples * pooling row ids, zipf-skewed and hashed over the table."""
    import numpy as np

    assert isinstance(rng, np.random.Generator)
    out = []
    for t, rows in enumerate(sizes):
        z = np.minimum(rng.zipf(alpha, samples * pooling) - 1, rows - 1).astype(np.int64)
        out.append((z * 2654435761 + t * 40503) % rows)
    return out


def write_train_trace(path: Path, args: argparse.Namespace) -> None:
    """A small trace of the stream's shape (another seed) for `recmg train`."""
    import numpy as np

    from recmgd.keys import ROW_BITS
    from recmgd.trace.binary import write_binary
    from recmgd.trace.model import Trace

    rng = np.random.default_rng(1)
    sizes = table_rows(args.rows, args.tables)
    keys, offsets = [], [0]
    for _ in range(args.train_steps):
        b = batch_rows(rng, sizes, args.samples, args.pooling, args.alpha)
        # sample-major order: sample s's rows of table 0, 1, ... (as an app looks them up)
        per = np.stack([(np.int64(t) << ROW_BITS) | r.reshape(args.samples, args.pooling)
                        for t, r in enumerate(b)], axis=1)  # samples x tables x pooling
        keys.append(per.reshape(-1))
        n = args.tables * args.pooling
        offsets.extend(offsets[-1] + n * np.arange(1, args.samples + 1))
    write_binary(Trace(np.concatenate(keys), np.asarray(offsets, dtype=np.int64)), path)


def child(args: argparse.Namespace, policy: str, model: str) -> None:
    """One run in this process; prints one JSON line."""
    import numpy as np
    import torch  # noqa: F401  (the app's lookups; imported before the baseline)

    from recmgd import policy as registry
    from recmgd.daemon.loop import FillBudget, PoolDriver
    from recmgd.pool import Pool
    from recmgd.simcore import lib, map_large_allocations

    torch.set_num_threads(1)
    if not args.heap_holes:
        map_large_allocations()  # as recmgd's main does
    sizes = table_rows(args.rows, args.tables)
    slots = max(1, int(args.rows * args.fraction))
    opts: dict[str, object] = {"prefetch_budget": args.prefetch_budget, "seed": 0}
    if policy != "lru":
        opts["model_dir"] = model
        if args.window:
            opts["history_window"] = args.window
    rng = np.random.default_rng(0)
    offsets = [np.arange(0, args.samples * args.pooling, args.pooling, dtype=np.int64)] * args.tables
    batch_rows(rng, sizes, args.samples, args.pooling, args.alpha)  # the generator's own buffers
    _reset_peak()
    base = _status_kib("RssAnon")
    base_rss = _status_kib("VmRSS")
    name = f"bench-dmem-{uuid.uuid4().hex[:6]}"
    app = Pool.create(name, tables=[(r, args.dim) for r in sizes], slots=slots, ring_records=1 << 20, rings=2)
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    tables = list(range(args.tables))
    pid = os.fork()
    if pid == 0:  # the app: a batch each time the daemon says go (the same stream as in one process)
        code = 1
        try:
            mine = Pool.attach(name, role="app")
            for _ in range(args.steps):
                if os.read(go_r, 1) != b"g":
                    break
                mine.embedding_bags(tables, batch_rows(rng, sizes, args.samples, args.pooling, args.alpha),
                                    offsets)
                mine.end_batch()
                os.write(done_w, b"d")
            mine.close()
            code = 0
        finally:
            os._exit(code)
    daemon = Pool.attach(name, role="daemon")
    try:
        pol = registry.create(policy, **opts)
        drv = PoolDriver(daemon, pol, policy, budget=FillBudget(), max_drain=1 << 22)
        after_create = _status_kib("RssAnon")
        peak = peak_rows = 0
        lookups = 0
        t0 = time.perf_counter()
        for step in range(args.steps):
            os.write(go_w, b"g")
            if os.read(done_r, 1) != b"d":
                sys.exit("the app process died")
            lookups += args.tables * args.samples * args.pooling
            drv.tick()
            if step % 16 == 15 or step == args.steps - 1:
                peak = max(peak, _status_kib("RssAnon"))
                st = getattr(pol, "native_stats", None)
                if st:
                    peak_rows = max(peak_rows, int(st["rows"]))
        secs = time.perf_counter() - t0
        st = getattr(pol, "native_stats", None) or {}
        mv = drv.mover
        tracked = mv.tracked()
        mirror_bytes = mv.nbytes()
        pidmap = getattr(pol, "idmap", None)  # a classical C policy's key map
        policy_map = policy_arrays = 0
        if pidmap is not None and hasattr(lib, "sc_idmap_bytes"):
            policy_map = int(lib.sc_idmap_bytes(pidmap.ptr))
        handle = getattr(pol, "handle", None)  # a classical C policy's per-id arrays and tables
        if handle is not None and hasattr(lib, "sc_policy_bytes"):
            policy_arrays = int(lib.sc_policy_bytes(handle))
        window = pol.history_window_steps() if hasattr(pol, "history_window_steps") else 0
        s = drv.stats()
        out = {"policy": policy, "rows": args.rows, "slots": slots, "steps": args.steps,
               "lookups": lookups, "hit_rate": round(1 - s["on_demand"] / max(s["unique"], 1), 4),
               "resident": int(drv.resident_count()), "mirror_rows": int(tracked),
               "window_steps": int(window), "window_rows": peak_rows,
               "window_rows_end": int(st.get("rows", 0)),
               "c_step_bytes": int(st.get("bytes", 0)), "mirror_bytes": int(mirror_bytes),
               "c_step_parts": {k: int(st[k]) for k in C_STEP_PARTS if k in st},
               "id_census": pol.id_census() if hasattr(pol, "id_census") else None,
               "policy_map_bytes": policy_map, "policy_arrays_bytes": policy_arrays,
               "policy_live_ids": int(getattr(pol, "live_ids", 0)),
               "after_create_bytes": (after_create - base) * 1024,
               "state_bytes": (peak - base) * 1024, "end_bytes": (_status_kib("RssAnon") - base) * 1024,
               "hwm_bytes": (_status_kib("VmHWM") - base_rss) * 1024, "secs": round(secs, 1)}
        print(json.dumps(out), flush=True)
    finally:
        os.close(go_w)  # an app still waiting reads end of file and exits
        os.waitpid(pid, 0)
        daemon.close()
        app.destroy()


def _run(cmd: list[str], timeout: float | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.strip()[-4000:]}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000_000, help="table rows in all")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--dim", type=int, default=4, help="floats a row")
    ap.add_argument("--fraction", type=float, default=0.01, help="fast-tier slots / table rows")
    ap.add_argument("--samples", type=int, default=256, help="samples a batch (one step)")
    ap.add_argument("--pooling", type=int, default=2, help="rows a sample looks up per table")
    ap.add_argument("--alpha", type=float, default=1.05, help="zipf exponent")
    ap.add_argument("--steps", type=int, default=1500, help="batches driven")
    ap.add_argument("--window", type=int, default=512,
                    help="the learned policy's history_window, steps (0: the model's)")
    ap.add_argument("--prefetch-budget", type=int, default=0)
    ap.add_argument("--heap-holes", action="store_true",
                    help="leave glibc's moving mmap threshold (the daemon fixes it: map_large_allocations)")
    ap.add_argument("--policies", default="lru,recmg")
    ap.add_argument("--model", default="", help="a checkpoint (default: trained here)")
    ap.add_argument("--train-steps", type=int, default=200, help="batches of the training trace")
    ap.add_argument("--workdir", default="", help="keep the training trace and checkpoint here")
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs=2, metavar=("POLICY", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args, *args.child)
        return
    py = sys.executable
    passed = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k in ("rows", "tables", "dim", "fraction", "samples", "pooling", "alpha", "steps", "window",
                       "prefetch_budget")]
    passed += ["--heap-holes"] if args.heap_holes else []
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model
        if not model and any(p != "lru" for p in args.policies.split(",")):
            model = str(work / f"model-{args.tables}x{args.rows}-b{args.samples}")
            if not (Path(model) / "inference.npz").exists():
                trace = work / "train.trace"
                write_train_trace(trace, args)
                _run([py, "-m", "recmgd.cli.recmg", "train", str(trace), "--out", model,
                      "-b", str(args.samples), "--fraction", str(args.fraction), "--epochs", "1", "--quiet"])
        for pol in args.policies.split(","):
            out = _run([py, __file__, *passed, "--child", pol, model or "-"])
            runs.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.rows:,} table rows in {args.tables} tables of {args.dim} floats; fast tier "
          f"{args.fraction:.1%} = {runs[0]['slots']:,} slots; {args.steps} steps of {args.samples} samples x "
          f"{args.pooling} rows a table (zipf {args.alpha})")
    print("| policy | hit rate | mirror rows | window (steps / rows) | state MB | B per slot | "
          "target MB (64/slot + 16/window row) | mirror MB | policy's C count MB | of which key map MB | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        target = TARGET_PER_SLOT * r["slots"] + TARGET_PER_WINDOW_ROW * r["window_rows"]
        win = f"{r['window_steps']} / {r['window_rows']:,}" if r["window_steps"] or r["window_rows"] else "-"
        key_map = r["policy_map_bytes"] or r.get("c_step_parts", {}).get("map_bytes", 0)
        print(f"| {r['policy']} | {r['hit_rate']:.3f} | {r['mirror_rows']:,} | {win} | "
              f"{r['state_bytes'] / 1e6:.1f} | {r['state_bytes'] / r['slots']:.0f} | {target / 1e6:.1f} | "
              f"{r['mirror_bytes'] / 1e6:.1f} | "
              f"{(r['c_step_bytes'] + r['policy_map_bytes'] + r.get('policy_arrays_bytes', 0)) / 1e6:.1f} | "
              f"{key_map / 1e6:.1f} | {r['secs']} |")
    for r in runs:
        parts = r.get("c_step_parts")
        if parts:
            mb = {k: parts.get(k, 0) / 1e6 for k in C_STEP_PARTS[:5]}
            print(f"{r['policy']}'s C step, allocated: key map {mb['map_bytes']:.1f} MB, per-row arrays "
                  f"{mb['row_bytes']:.1f} MB, history records {mb['record_bytes']:.1f} MB "
                  f"({parts['records']:,} rows used more than once), stream ring {mb['ring_bytes']:.1f} MB, "
                  f"once table {mb['once_bytes']:.1f} MB ({parts.get('once_rows', 0):,} rows used once, "
                  "with no id)")
        c = r.get("id_census")
        if c:
            print(f"{r['policy']}'s rows with an id: {c['ids']:,} (resident {c['resident']:,}, "
                  f"{c['resident_records']:,} of them with a record; in a guard shadow only "
                  f"{c['shadow_only']:,}, {c['shadow_records']:,} with a record; the others: with a record "
                  f"{c['other_records']:,}, used once and waiting for the window's sweep "
                  f"{c['other_once']:,}, never used {c['other_never']:,})")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
