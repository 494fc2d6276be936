"""A DLRM-like app process for the daemon tests (run as ``python -m test_daemon_app MODE ...``). No tests.

Every row of table t holds ``value(t, row)``; every lookup result is checked against it, so an app
that ever got a torn or wrong row says so in its summary.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import numpy as np

DIM = 4


def values(table: int, rows: np.ndarray) -> np.ndarray:
    base = (table * 100_000 + rows.astype(np.float64))[:, None] + 0.25 * np.arange(DIM)[None, :]
    return base.astype(np.float32)


def trace_batches(path: str, batch: int, limit: int) -> tuple[list[list[tuple[int, np.ndarray]]], list[int]]:
    """The trace's batches of ``batch`` samples, each as [(table, rows in trace order)], and table sizes."""
    from recmgd.trace.io import open_trace

    tr = open_trace(path)
    keys = np.asarray(tr.keys, dtype=np.int64)
    offs = np.asarray(tr.sample_offsets, dtype=np.int64)
    if limit:
        n_samples = int(np.searchsorted(offs, limit, side="right")) - 1
        offs = offs[: n_samples + 1]
        keys = keys[: offs[-1]]
    tables = keys >> 40
    rows = keys & ((1 << 40) - 1)
    n_tables = int(tables.max()) + 1
    sizes = [int(rows[tables == t].max()) + 1 if (tables == t).any() else 1 for t in range(n_tables)]
    out = []
    for s in range(0, len(offs) - 1, batch):
        lo, hi = offs[s], offs[min(s + batch, len(offs) - 1)]
        bt, br = tables[lo:hi], rows[lo:hi]
        out.append([(t, br[bt == t]) for t in range(n_tables) if (bt == t).any()])
    return out, sizes


def check(pool, table: int, rows: np.ndarray) -> int:
    """Look rows up one per bag; return how many came back wrong."""
    res = pool.embedding_bag(table, rows, np.arange(len(rows), dtype=np.int64)).numpy()
    return int((res != values(table, rows)).any(axis=1).sum())


def create_pool(name: str, sizes: list[int], slots: int, ring_records: int):
    from recmgd.pool import Pool

    pool = Pool.create(name, tables=[(n, DIM) for n in sizes], slots=slots, ring_records=ring_records)
    for t, n in enumerate(sizes):
        pool.write_rows(t, np.arange(n), values(t, np.arange(n)))
    return pool


def wait_steps(sock: str, pool: str, steps: int, timeout: float = 30.0) -> None:
    from recmgd.daemon.control import request

    deadline = time.monotonic() + timeout
    while True:
        st = request(sock, "stats")["pools"].get(pool)
        if st is not None and st["steps"] >= steps:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"daemon did not reach step {steps} (at {st and st['steps']})")
        time.sleep(0.0005)


def replay(a: argparse.Namespace) -> dict:
    """Replay a trace batch by batch (one embedding_bag per table, then end_batch); with --socket, wait
    after each batch until the daemon has applied its step (deterministic step mode)."""
    from recmgd.pool import Pool

    batches, sizes = trace_batches(a.trace, a.batch, a.limit)
    pool = create_pool(a.pool, sizes, a.slots, a.ring_records) if a.create else Pool.attach(a.pool)
    print(json.dumps({"ready": True, "sizes": sizes, "batches": len(batches)}), flush=True)
    if a.socket:
        wait_steps(a.socket, a.pool, 0)  # the daemon has attached
    wrong = 0
    for b, batch in enumerate(batches):
        for t, rows in batch:
            wrong += check(pool, t, rows)
        pool.end_batch()
        if a.socket:
            wait_steps(a.socket, a.pool, b + 1)
    c = pool.counters()
    mine = [p for p in c["processes"] if p["ring"] == pool.ring_index][0]
    out = {"wrong": wrong, "batches": len(batches), "process": mine, "resident": len(pool.resident_keys())}
    if not a.keep:
        pool.close()
    return out


def loop(a: argparse.Namespace) -> dict:
    """Look up random rows (zipf-ish) until SIGTERM; report progress to --progress every 0.05 s."""
    from recmgd.pool import Pool

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    pool = Pool.attach(a.pool)
    sizes = [t.rows for t in pool.tables]
    rng = np.random.default_rng(a.seed)
    check(pool, 0, np.zeros(1, dtype=np.int64))  # the first lookup loads torch: not part of the timing
    wrong = lookups = batches = 0
    t_last = 0.0
    max_call = 0.0
    while not stop:
        for t, n in enumerate(sizes):
            rows = np.minimum(rng.zipf(1.3, a.batch_rows) - 1, n - 1).astype(np.int64)
            t0 = time.perf_counter()
            wrong += check(pool, t, rows)
            max_call = max(max_call, time.perf_counter() - t0)
            lookups += len(rows)
        if a.hint:
            pool.hint(0, np.arange(min(8, sizes[0])))
        pool.end_batch()
        batches += 1
        now = time.monotonic()
        if a.progress and now - t_last > 0.05:
            with open(a.progress + ".tmp", "w") as fh:
                json.dump({"lookups": lookups, "wrong": wrong, "batches": batches}, fh)
            import os

            os.replace(a.progress + ".tmp", a.progress)
            t_last = now
        if a.sleep:
            time.sleep(a.sleep)
    pool.close()
    return {"wrong": wrong, "lookups": lookups, "batches": batches, "max_call_s": max_call}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("replay")
    r.add_argument("--pool", required=True)
    r.add_argument("--trace", required=True)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--limit", type=int, default=0)
    r.add_argument("--create", action="store_true")
    r.add_argument("--keep", action="store_true")
    r.add_argument("--slots", type=int, default=0)
    r.add_argument("--ring-records", type=int, default=65536)
    r.add_argument("--socket", default="")
    lp = sub.add_parser("loop")
    lp.add_argument("--pool", required=True)
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--batch-rows", type=int, default=64)
    lp.add_argument("--progress", default="")
    lp.add_argument("--sleep", type=float, default=0.0)
    lp.add_argument("--hint", action="store_true")
    a = p.parse_args()
    out = replay(a) if a.mode == "replay" else loop(a)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
