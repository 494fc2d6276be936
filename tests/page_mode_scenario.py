"""Page mode end to end, as one script: a pool with a NUMA slow tier, an app process reading a hot set,
the daemon's loop in page mode, stopped and started again; prints where the pool's pages are, as JSON.

    python tests/page_mode_scenario.py --slow-node 1 --fast-node 0 [--steps 20] [--hot-pages 32]
        [--budget-pages 32] [--mb-per-s 0] [--policy lru]

Four phases of app batches: the app reads one row on each page of hot set A (phase 1, ``--steps``
batches), then of hot set B (phase 2, disjoint from A); then the daemon stops as a real daemon exit
does (its driver closed, its pool handle closed: the promoted pages stay where they are) and a new one
starts in page mode, which adopts the pages it finds on the fast node (reported as ``restart``, before
it has seen a batch); the app reads B again (phase 3, ``--steps`` // 2 batches: all hits, nothing
moved), then hot set C (phase 4, disjoint from both). The daemon's loop (the real PageDriver over the
real pool, in step mode: one app batch = one policy step) runs in this process; the app is a child
process (so the pages are mapped by two processes, as in production, and moving them needs
MPOL_MF_MOVE_ALL). After each phase the script queries the node of every page of the pool (move_pages
with nodes=NULL) and reports, per phase: the nodes of A's, B's and C's pages and of all the pool's
pages, the pages counted as promoted (of A, B, C, in all), the driver's resident pages, and the
page-mode counters (of the daemon running then: phases 3 and 4 count from the restart). With a budget
of exactly the hot set (the default) and no MB/s cap: after phase 1 A is on the fast node; after phase
2 B is, and A is back on the slow node (demoted); the restarted daemon holds exactly B, moving nothing;
after phase 4 C is on the fast node and B is demoted; the pool never has more than the budget on the
fast node beyond what was there before the run.

Used by the QEMU VM test (a machine with a CPU-less node), and on any machine by
tests/test_daemon_pages.py with --slow-node 0 --fast-node 0 (the moves then change no placement, and
the restarted daemon adopts nothing: the fast node is the slow node). The exit status is 0 when the run
finished (the JSON says what happened; the caller asserts), 1 on error.
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


#: the hot sets, in the order of their pages in the table
SETS = ("a", "b", "c")


def hot_pages(which: int, n: int) -> np.ndarray:
    """The pages of hot set A (0), B (1) or C (2): every other page, A from the front, B after, C last."""
    return np.arange(n, dtype=np.int64) * 2 + 2 * n * which


def app_main(name: str, hot: int) -> int:
    """The app process: for each line 'SET STEPS' on stdin, STEPS batches reading hot set SET (0, 1, 2);
    replies with the count of wrong rows read."""
    from recmgd._native import ffi, lib

    from recmgd.pool import Pool

    pool = Pool.attach(name, threads=1)
    try:
        for line in sys.stdin:
            which, steps = (int(x) for x in line.split())
            rows = hot_pages(which, hot) * ROWS_PER_PAGE
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

    if 2 * len(SETS) * hot > ROWS // ROWS_PER_PAGE:
        raise ValueError(f"--hot-pages {hot}: at most {ROWS // ROWS_PER_PAGE // (2 * len(SETS))}")
    name = f"recmg-pages-{uuid.uuid4().hex[:8]}"
    creator = Pool.create(name, tables=[(ROWS, DIM)], slots=16, slow=f"numa:{slow_node}", role="daemon")
    app = None
    cfg = PagesConfig(fast_node=fast_node, budget_mb=budget_pages * 4096 / 1e6, mb_per_s=mb_per_s)

    def start_daemon() -> tuple[Any, PagePool, PageDriver]:
        """What recmgd does when it attaches a pool in page mode (service.Daemon._attach)."""
        handle = Pool.attach(name, role="daemon")
        budget = FillBudget(0, mb_per_s, step_mode=True, step_seconds=0.01)
        pages = PagePool(handle, cfg, budget, node_query_interval=0.0)
        driver = PageDriver(pages, policy_mod.create(policy), policy, budget=budget, step_mode=True)
        return handle, pages, driver

    def stop_daemon(pages: PagePool, driver: PageDriver) -> None:
        """What a daemon's exit does (service.Daemon.shutdown): the driver closed, the pool handle
        closed, no page moved."""
        driver.close()
        pages.close()

    try:
        ids = np.arange(ROWS, dtype=np.int64)
        creator.write_rows(0, ids, np.repeat(ids.astype(np.float32)[:, None], DIM, axis=1))
        daemon, pages, driver = start_daemon()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        app = subprocess.Popen([sys.executable, __file__, "--app", name, "--hot-pages", str(hot)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert app.stdin is not None and app.stdout is not None
        while not any(r.pid for r in daemon.rings()):  # the app's attach
            if app.poll() is not None:
                raise RuntimeError(f"the app exited with {app.returncode} before it attached")
            driver.tick()
        all_pages = np.arange(pages.total_pages, dtype=np.int64)

        def where() -> dict[str, Any]:
            """Where the pages are and what the running daemon counts as promoted."""
            out: dict[str, Any] = {f"hot_{s}": nodes_of(daemon, hot_pages(i, hot))
                                   for i, s in enumerate(SETS)}
            out.update({f"promoted_{s}": int(pages.promoted[hot_pages(i, hot)].sum())
                        for i, s in enumerate(SETS)})
            out.update({
                "pool": nodes_of(daemon, all_pages),
                "promoted_pages": pages.n_promoted,
                # table 0 only: a page key is its page index
                "promoted": sorted(pages.resident_keys().tolist()),
                "resident": sorted(driver.keys_of(np.flatnonzero(driver.flags)).tolist()),
                "counters": {k: v for k, v in pages.stats().items() if not isinstance(v, dict)},
                "failed": dict(pages.failed),
                "driver": {k: driver.pc[k] for k in ("steps", "adopted", "adopt_evicted")},
            })
            return out

        phases = []
        done = 0  # app batches the running daemon has seen
        for phase, (which, n) in enumerate([(0, steps), (1, steps), (1, max(1, steps // 2)), (2, steps)]):
            if phase == 2:  # the daemon stops and a new one starts, the app still running
                stop_daemon(pages, driver)
                daemon, pages, driver = start_daemon()
                done = 0
                restart = where()
            app.stdin.write(f"{which} {n}\n")
            app.stdin.flush()
            reply = app.stdout.readline()
            if not reply:
                raise RuntimeError(f"the app exited with {app.wait(timeout)} in phase {phase + 1}")
            wrong = int(reply)
            done += n
            deadline = time.monotonic() + timeout
            while driver.pc["steps"] < done:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"phase {phase + 1}: the daemon saw {driver.pc['steps']} steps, "
                                       f"not {done}")
                driver.tick()
            phases.append({"set": SETS[which], "app_steps": n, "wrong_rows": wrong, **where()})
        app.stdin.close()
        app.wait(timeout=timeout)
        stop_daemon(pages, driver)
        return {"slow_node": slow_node, "fast_node": fast_node, "steps": steps, "hot_pages": hot,
                "budget_pages": pages.n_slots, "total_pages": pages.total_pages, "policy": policy,
                "move_all": pages.move_all, "phases": phases, "restart": restart,
                "hot": {s: hot_pages(i, hot).tolist() for i, s in enumerate(SETS)}}
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
        return app_main(args.app, args.hot_pages)
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
