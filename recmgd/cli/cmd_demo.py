"""`recmg demo`: the main job end to end, with real parts.

For each policy: a pool with an SSD-file slow tier, the daemon (`recmgd`, a child process that reports
READY over the systemd notify protocol) driving it, and a DLRM app (another process) that runs inference
over the trace through ``TieredEmbeddingBag`` and checks every output against the same model on in-DRAM
tables. The app replays the first half of the trace (warm-up; RecMG trains on it), then the second half,
which is what is counted, as in the simulator's protocol. Prints what the app saw, what
``recmgctl stats`` says, and what ``recmg sim`` predicts for the same trace and capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_POLICIES = "lru,recmg"


def set_argparser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", help="trace to replay (default: a synthetic one the demo generates)")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="comma-separated (default: %(default)s)")
    p.add_argument("--fraction", type=float, default=0.1, help="fast tier, share of unique rows")
    p.add_argument("--batch", type=int, default=16, help="samples per inference batch")
    p.add_argument("--dim", type=int, default=32, help="embedding dim")
    p.add_argument("--max-batches", type=int, default=4000, help="batches replayed at most (0 = all)")
    p.add_argument("--epochs", type=int, default=2, help="RecMG training epochs")
    p.add_argument("--workdir", help="where pools' slow-tier files and models go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pace", type=float, default=0.0,
                   help="seconds the app idles after each batch, as between a server's requests "
                        "(default 0: batches back to back)")


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode:
        tail = proc.stderr.strip()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {tail}")
    return proc.stdout


def _synth_trace(path: Path, seed: int, tables: int = 8, pooling: int = 2, lookups: int = 1_000_000) -> None:
    """A synthetic trace with Meta 2021 reuse statistics, its hashed row ids made dense per table
    (a pool allocates every row of a table)."""
    from recmgd.keys import key_row, key_table, make_keys
    from recmgd.trace import Trace, save_trace
    from recmgd.trace.synth import SynthConfig, synth_keys

    cfg = SynthConfig(lookups=lookups, tables=tables, pooling=pooling, gap=2048.0, seed=seed)
    keys = np.concatenate(list(synth_keys(cfg)))
    t, r = key_table(keys), key_row(keys)
    dense = np.empty_like(r)
    for tab in range(tables):
        m = t == tab
        dense[m] = np.unique(r[m], return_inverse=True)[1]
    per = cfg.lookups_per_sample
    n = keys.size - keys.size % per
    offsets = np.arange(0, n + 1, per, dtype=np.int64)
    save_trace(Trace(make_keys(t[:n], dense[:n]), offsets), path)


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"recmgd exited with {proc.returncode} before READY=1")
        try:
            msg = sock.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        if "READY=1" in msg.split("\n"):
            return
    raise RuntimeError("recmgd did not send READY=1 in time")


def _demo_one(policy: str, trace_path: Path, work: Path, sizes: list[int], slots: int,
              args: argparse.Namespace, half: int, stop: int, model_dir: Path | None) -> dict[str, object]:
    from recmgd.pool import Pool

    name = f"recmg-demo-{os.getpid()}-{policy}"
    slow_file = work / f"slow-{policy}.bin"
    ctl = work / f"control-{policy}.sock"
    cfg = work / f"recmgd-{policy}.toml"
    pool = Pool.create(name, [(r, args.dim) for r in sizes], slots, slow=f"ssd:{slow_file}")
    daemon = None
    try:
        rng = np.random.default_rng(args.seed)
        for t, rows in enumerate(sizes):
            for lo in range(0, rows, 65536):
                hi = min(rows, lo + 65536)
                values = rng.standard_normal((hi - lo, args.dim), dtype=np.float32)
                pool.write_rows(t, np.arange(lo, hi), values)
        cfg.write_text(
            # coalesce: when the daemon falls behind the app, it merges the batches it drains at once
            # into steps of at least 1,024 lookups (fewer policy calls, so it catches up)
            f'pools = ["{name}"]\ninterval = 0.001\nlog_level = "warning"\ncoalesce = 1024\n'
            f'[control]\nsocket = "{ctl}"\n'
            f'[policy]\nname = "{policy}"\nmodel_dir = "{model_dir or ""}"\n'
            f'[policy.options]\nprefetch_budget = {max(8, slots // 64)}\nseed = {args.seed}\n'
        )
        notify_path = work / f"notify-{policy}.sock"
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        daemon = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg),
                                   "--foreground"], env=env, stderr=subprocess.PIPE)
        _wait_ready(nsock, daemon, timeout=120)
        nsock.close()
        app = [sys.executable, "-m", "recmgd.app.run", "--pool", name, "--trace", str(trace_path),
               "--batch", str(args.batch), "--seed", str(args.seed), "--pace", str(args.pace)]
        _run(app + ["--stop", str(half), "--no-check"])  # warm-up: the first half, not counted
        scored = json.loads(_run(app + ["--start", str(half), "--stop", str(stop)]))
        stats = _run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(ctl), "stats"])
        return {"policy": policy, "app": scored, "recmgctl": stats}
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        pool.destroy()
        slow_file.unlink(missing_ok=True)


def main(args: argparse.Namespace) -> int:
    from recmgd.app.replay import table_sizes
    from recmgd.keys import capacity_for
    from recmgd.sim import simulate
    from recmgd.trace import open_trace

    if args.pace < 0:
        print(f"recmg demo: --pace must be >= 0 seconds, got {args.pace}", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="recmg-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.trace:
            trace_path = Path(args.trace)
        else:
            trace_path = work / "demo.trace"
            print(f"generating a synthetic trace (Meta 2021 reuse statistics) in {trace_path}", flush=True)
            _synth_trace(trace_path, args.seed)
        trace = open_trace(trace_path)
        n_batches = trace.n_steps(args.batch)
        stop = n_batches if not args.max_batches else min(n_batches, args.max_batches)
        if stop != n_batches:
            short = work / "demo-cut.trace"
            from recmgd.trace import Trace, save_trace

            offs = np.asarray(trace.sample_offsets[: stop * args.batch + 1], dtype=np.int64)
            save_trace(Trace(np.asarray(trace.keys[: offs[-1]]), offs), short)
            trace_path, trace = short, open_trace(short)
        half = stop // 2
        sizes = table_sizes(trace)
        unique = int(np.unique(np.asarray(trace.keys)).size)
        slots = capacity_for(args.fraction, unique)
        policies = [p for p in args.policies.split(",") if p]
        print(f"trace {trace_path.name}: {trace.n_lookups} lookups, {len(sizes)} tables, "
              f"{unique} unique rows; "
              f"{stop} batches of {args.batch}; fast tier {slots} slots ({args.fraction:.0%}); "
              f"first {half} batches warm up, the rest are counted", flush=True)
        model_dir = None
        if any(p.startswith("recmg") for p in policies):
            model_dir = work / "model"
            print(f"training RecMG on the first half -> {model_dir}", flush=True)
            _run([sys.executable, "-m", "recmgd.cli.recmg", "train", str(trace_path), "--out", str(model_dir),
                  "--fraction", str(args.fraction), "--batch", str(args.batch), "--epochs", str(args.epochs),
                  "--seed", str(args.seed), "--quiet"])
        options = {"model_dir": str(model_dir) if model_dir else None, "seed": args.seed,
                   "prefetch_budget": max(8, slots // 64)}
        results = simulate(trace, policies, [args.fraction], batch=args.batch, options=options)
        sim = {r.policy: r for r in results}
        rows = []
        for policy in policies:
            print(f"\n--- {policy}: pool (ssd slow tier) + recmgd + DLRM app", flush=True)
            r = _demo_one(policy, trace_path, work, sizes, slots, args, half, stop, model_dir)
            print(r["recmgctl"], flush=True)
            rows.append(r)
        print("\nwhat the DLRM app saw in the counted half (every output checked against in-DRAM tables):")
        print(f"{'policy':<10} {'lookups':>9} {'fast hits':>10} {'on-demand':>10} {'hit rate':>9} "
              f"{'sim on-demand':>14} {'lookups/s':>10} {'max |err|':>10}")
        for r in rows:
            app = r["app"]
            proc = app["process"]
            look = proc.get("lookups", app["lookups"])
            hit_rate = proc.get("hits", 0) / look if look else 0.0
            s = sim.get(r["policy"])
            print(f"{r['policy']:<10} {look:>9} {proc.get('hits', 0):>10} {proc.get('on_demand', 0):>10} "
                  f"{hit_rate:>9.3f} {s.on_demand if s else '-':>14} {app['lookups_per_s']:>10} "
                  f"{app['max_abs_error']:>10.2g}")
        bad = [r["policy"] for r in rows if r["app"]["max_abs_error"] > 1e-4]
        if bad:
            print(f"wrong results under: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
