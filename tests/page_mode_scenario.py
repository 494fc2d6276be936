"""Page mode end to end, as one script: a pool with a NUMA slow tier, an app process reading a hot set,
the daemon's loop in page mode; prints where the pool's pages are, as JSON.

    python tests/page_mode_scenario.py --slow-node 1 --fast-node 0 [--steps 20] [--hot-pages 32]
        [--budget-pages 32] [--mb-per-s 0] [--policy lru]

Two phases of ``--steps`` app batches each: the app reads one row on each page of hot set A (phase 1),
then of hot set B (phase 2, disjoint from A). The daemon's loop (the real PageDriver over the real pool,
in step mode: one app batch = one policy step) runs in this process; the app is a child process (so
the pages are mapped by two processes, as in production, and moving them needs MPOL_MF_MOVE_ALL).
After each phase the script queries the node of every page of the pool (move_pages with nodes=NULL)
and reports, per phase: the nodes of A's pages, of B's pages, of all the pool's pages, the pages
counted as promoted (of A, of B, in all), and the page-mode counters. With a budget of exactly the
hot set (the default) and no MB/s cap: after phase 1 A is on the fast node; after phase 2 B is, and A
is back on the slow node (demoted); the pool never has more than the budget on the fast node beyond
what was there before the run.

Used by the QEMU VM test (a machine with a CPU-less node), and on any machine by
tests/test_daemon_pages.py with --slow-node 0 --fast-node 0 (the moves then change no placement). The
exit status is 0 when the run finished (the JSON says what happened; the caller asserts), 1 on error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

ROWS, DIM = 8192, 64  # one table: 256-byte rows, 16 a page, 512 pages (2 MiB)
ROWS_PER_PAGE = 4096 // (DIM * 4)


def hot_pages(phase: int, n: int) -> np.ndarray:
    """The pages of hot set A (phase 0) or B (phase 1): every other page, A from the front, B after."""
    return np.arange(n, dtype=np.int64) * 2 + (0 if phase == 0 else 2 * n)


def app_main(name: str, steps: int, hot: int) -> int:
    """The app process: for each line 'PHASE' on stdin, ``steps`` batches reading its hot set; replies
    with the count of wrong rows read."""
    from recmgd._native import ffi, lib

    from recmgd.pool import Pool

    pool = Pool.attach(name, threads=1)
    try:
        for line in sys.stdin:
            phase = int(line)
            rows = hot_pages(phase, hot) * ROWS_PER_PAGE
            offsets = np.arange(len(rows) + 1, dtype=np.int64)  # CSR: bag b is id b
            want = np.repeat(rows.astype(np.float32)[:, None], DIM, axis=1)
            out = np.empty((len(rows), DIM), dtype=np.float32)
            wrong = 0
            for _ in range(steps):
                # librecmg's lookup with a numpy output: what Pool.embedding_bag calls, without torch
                # (which takes over a minute to import in an emulated VM)
                rc = lib.recmg_embedding_bag(pool._handle, 0, ffi.from_buffer("int64_t[]", rows), len(rows),
                                             ffi.from_buffer("int64_t[]", offsets), len(rows), 0, ffi.NULL,
                                             ffi.from_buffer("float[]", out))
                if rc != 0:
                    msg = ffi.string(lib.recmg_errmsg(pool._handle)).decode()
                    raise RuntimeError(f"lookup failed: {msg}")
                wrong += int((out != want).any(axis=1).sum())
                pool.end_batch()
            sys.stdout.write(f"{wrong}\n")
            sys.stdout.flush()
    finally:
        pool.close()
    return 0


def nodes_of(pool: Any, pages: np.ndarray) -> dict[str, int]:
    st = pool.slow_page_nodes(0, pages)
    vals, counts = np.unique(st, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, counts, strict=True)}


def run(slow_node: int, fast_node: int, steps: int = 20, hot: int = 32, budget_pages: int = 32,
        mb_per_s: float = 0.0, policy: str = "lru", timeout: float = 60.0) -> dict[str, Any]:
    """The scenario (see the module doc); returns what it prints."""
    import time

    from recmgd import policy as policy_mod
    from recmgd.daemon.config import PagesConfig
    from recmgd.daemon.loop import FillBudget
    from recmgd.daemon.pages import PageDriver, PagePool
    from recmgd.pool import Pool

    if 4 * hot > ROWS // ROWS_PER_PAGE:
        raise ValueError(f"--hot-pages {hot}: at most {ROWS // ROWS_PER_PAGE // 4}")
    name = f"recmg-pages-{uuid.uuid4().hex[:8]}"
    creator = Pool.create(name, tables=[(ROWS, DIM)], slots=16, slow=f"numa:{slow_node}", role="daemon")
    app = None
    try:
        ids = np.arange(ROWS, dtype=np.int64)
        creator.write_rows(0, ids, np.repeat(ids.astype(np.float32)[:, None], DIM, axis=1))
        daemon = Pool.attach(name, role="daemon")
        cfg = PagesConfig(fast_node=fast_node, budget_mb=budget_pages * 4096 / 1e6, mb_per_s=mb_per_s)
        budget = FillBudget(0, mb_per_s, step_mode=True, step_seconds=0.01)
        pages = PagePool(daemon, cfg, budget, node_query_interval=0.0)
        driver = PageDriver(pages, policy_mod.create(policy), policy, budget=budget, step_mode=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        app = subprocess.Popen([sys.executable, __file__, "--app", name, "--steps", str(steps),
                                "--hot-pages", str(hot)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env)
        assert app.stdin is not None and app.stdout is not None
        while not any(r.pid for r in daemon.rings()):  # the app's attach
            if app.poll() is not None:
                raise RuntimeError(f"the app exited with {app.returncode} before it attached")
            driver.tick()
        all_pages = np.arange(pages.total_pages, dtype=np.int64)
        phases = []
        for phase in (0, 1):
            app.stdin.write(f"{phase}\n")
            app.stdin.flush()
            reply = app.stdout.readline()
            if not reply:
                raise RuntimeError(f"the app exited with {app.wait(timeout)} in phase {phase + 1}")
            wrong = int(reply)
            deadline = time.monotonic() + timeout
            while driver.pc["steps"] < (phase + 1) * steps:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon saw {driver.pc['steps']} steps, "
                                       f"not {(phase + 1) * steps}")
                driver.tick()
            phases.append({
                "hot_a": nodes_of(daemon, hot_pages(0, hot)),
                "hot_b": nodes_of(daemon, hot_pages(1, hot)),
                "pool": nodes_of(daemon, all_pages),
                "promoted_pages": pages.n_promoted,
                "promoted_a": int(pages.promoted[hot_pages(0, hot)].sum()),
                "promoted_b": int(pages.promoted[hot_pages(1, hot)].sum()),
                "wrong_rows": wrong,
                "counters": {k: v for k, v in pages.stats().items() if not isinstance(v, dict)},
                "failed": dict(pages.failed),
            })
        app.stdin.close()
        app.wait(timeout=timeout)
        driver.close()
        daemon.close()
        return {"slow_node": slow_node, "fast_node": fast_node, "steps": steps, "hot_pages": hot,
                "budget_pages": pages.n_slots, "total_pages": pages.total_pages, "policy": policy,
                "move_all": pages.move_all, "phases": phases}
    finally:
        if app is not None and app.poll() is None:
            app.kill()
            app.wait()
        creator.destroy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow-node", type=int, default=0)
    p.add_argument("--fast-node", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hot-pages", type=int, default=32)
    p.add_argument("--budget-pages", type=int, default=32)
    p.add_argument("--mb-per-s", type=float, default=0.0)
    p.add_argument("--policy", default="lru")
    p.add_argument("--app", metavar="POOL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.app:
        return app_main(args.app, args.steps, args.hot_pages)
    try:
        out = run(args.slow_node, args.fast_node, args.steps, args.hot_pages, args.budget_pages,
                  args.mb_per_s, args.policy)
    except Exception as exc:  # noqa: BLE001 - one line for the caller
        print(f"page_mode_scenario: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
