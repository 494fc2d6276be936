"""The server's lookahead distance (recmgd.app.serve, ``--lookahead-batches L``): a batch's rows are
announced when it is L batches from running, not every queued request's at arrival.

The order of announcements and batches is checked with a collection and a model that record their
calls; then TorchRec's DLRM over recmg's collection on a real pool, with the daemon's real loop
(PoolDriver, a role="daemon" handle) stepping between the server's batches: every announced row is in
the fast tier when its batch runs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: E402

import recmgd.pool as pool_mod
from recmgd import policy as policy_mod  # noqa: E402
from recmgd.app import serve as serve_mod  # noqa: E402
from recmgd.app.e2e import pin_batches  # noqa: E402
from recmgd.app.replay import table_sizes  # noqa: E402
from recmgd.app.trec_model import Requests, pool_dlrm  # noqa: E402
from recmgd.daemon.loop import PoolDriver  # noqa: E402
from recmgd.trace import open_trace  # noqa: E402


class FakeRequests:
    """Requests whose "KJT" is the (lo, hi) range it stands for."""

    def __init__(self, n: int) -> None:
        self.n = n

    def kjt(self, lo: int, hi: int) -> tuple[int, int]:
        return lo, hi


class Recorder:
    """The model and the collection in one: records every batch run and every announcement, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def __call__(self, dense: torch.Tensor, kjt: tuple[int, int]) -> torch.Tensor:
        self.events.append(("run", *kjt))
        return torch.zeros(kjt[1] - kjt[0], 1)

    def prefetch(self, kjt: tuple[int, int]) -> int:
        self.events.append(("announce", *kjt))
        return kjt[1] - kjt[0]


def _run(n: int, max_batch: int, lookahead_batches: int, rate: float = 0.0) -> Recorder:
    rec = Recorder()
    res, _ = serve_mod.serve(rec, FakeRequests(n), 0, n, rate, max_batch, 0.002, 0, collection=rec,
                             lookahead=True, lookahead_batches=lookahead_batches)
    assert res.requests == n and res.hinted_rows == n  # every request announced, once
    return rec


def test_announce_end() -> None:
    assert serve_mod.announce_end(100, 10, 2, 8) == 26  # two full batches after request 10
    assert serve_mod.announce_end(20, 10, 2, 8) == 20  # no more than have arrived
    assert serve_mod.announce_end(100, 10, 0, 8) == 100  # 0: everything that arrived


def test_a_batch_is_announced_when_it_is_l_batches_from_running() -> None:
    """Every request queued at once, batches of 4, L = 2: when batch i starts, batches up to i+2 have
    been announced, never further; each request announced once, before its batch runs."""
    rec = _run(20, 4, 2)
    assert rec.events == [
        ("announce", 0, 8), ("announce", 8, 12), ("run", 0, 4),
        ("announce", 12, 16), ("run", 4, 8),
        ("announce", 16, 20), ("run", 8, 12),
        ("run", 12, 16),
        ("run", 16, 20),
    ]
    # the old mode: every queued request at once
    rec = _run(20, 4, 0)
    assert rec.events[0] == ("announce", 0, 20) and [e[0] for e in rec.events[1:]] == ["run"] * 5


@pytest.mark.parametrize("lookahead_batches", [1, 3])
def test_with_poisson_arrivals_announcements_run_ahead_of_their_batches(lookahead_batches: int) -> None:
    """Whatever the arrival times: announcements are contiguous, each request's before its batch
    runs, and never more than L full batches past the batch that starts."""
    mb = 8
    rec = _run(300, mb, lookahead_batches, rate=20000.0)
    announced = 0
    for kind, lo, hi in rec.events:
        if kind == "announce":
            assert lo == announced and hi > lo
            announced = hi
        else:
            assert announced >= hi  # its rows went first
            assert announced <= hi + lookahead_batches * mb  # not beyond L batches after it
    assert announced == 300


def _trace(path: Path, samples: int) -> Path:
    rng = np.random.default_rng(11)
    lines = []
    for s in range(samples):
        lines.extend(f"0 {r} {s}" for r in rng.integers(0, 600, size=2))
        lines.append(f"1 {rng.integers(0, 200)} {s}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _serve_on_a_pool(trace_path: Path, lookahead_batches: int) -> tuple[dict, dict]:
    """The DLRM server over a real pool, every request queued at once, batches of 16; the daemon's loop
    steps just before each batch runs (after the server's announcements). Returns the server's result
    and the daemon's stats."""
    trace = open_trace(trace_path)
    sizes = table_sizes(trace)
    requests = Requests(trace, len(sizes))
    name = f"recmg-la-{uuid.uuid4().hex[:8]}"
    pool = pool_mod.Pool.create(name, [(r, 8) for r in sizes], 400, ring_records=1 << 16)
    daemon = pool_mod.Pool.attach(name, role="daemon")
    try:
        drv = PoolDriver(daemon, policy_mod.create("lru"), "lru", hint_slots=240, step_mode=True,
                         hint_pin_batches=pin_batches(lookahead_batches))
        model, collection = pool_dlrm(pool, 8, 0)

        def run_batch(dense: torch.Tensor, kjt: object) -> torch.Tensor:
            drv.tick()  # the daemon catches up: the batches so far and the hints drained ahead
            return model(dense, kjt)

        res, _ = serve_mod.serve(run_batch, requests, 0, requests.n, 0.0, 16, 0.002, 0,
                                 collection=collection, lookahead=True, pool=pool,
                                 lookahead_batches=lookahead_batches)
        drv.tick()
        assert np.array_equal(np.sort(drv.mover.owned_keys()), np.sort(daemon.resident_keys()))
        st = drv.stats()
        drv.close()
        return serve_mod.asdict(res), st
    finally:
        daemon.close()
        pool.destroy()


def test_hinted_rows_are_in_the_fast_tier_when_their_batch_runs(tmp_path: Path) -> None:
    """L = 2: the rows of each batch are filled before it runs (the hint reserve holds three batches'
    rows): no on-demand fetch at all. L = 0 (every queued request's rows at once) floods the reserve:
    most hints are rejected and later batches read the slow tier."""
    trace = _trace(tmp_path / "t.trace", 320)
    out, st = _serve_on_a_pool(trace, 2)
    assert out["batches"] == 20 and out["hinted_rows"] > 0
    assert st["hint_fetched"] > 0 and st["hint_useful"] > 0 and st["hint_rejected"] == 0
    assert out["on_demand"] == 0 and out["hits"] > 0
    flood, fst = _serve_on_a_pool(trace, 0)
    assert fst["hint_rejected"] > 0 and flood["on_demand"] > 0


def test_cli_refuses_a_negative_distance(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.trace", 20)
    r = subprocess.run([sys.executable, "-m", "recmgd.app.serve", "--all-dram", "--trace", str(trace),
                        "--lookahead-batches", "-1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--lookahead-batches must be >= 0" in r.stderr


def test_the_comparison_passes_the_distance_to_server_and_daemon(tmp_path: Path) -> None:
    """recmgd.app.e2e: the server runs with --lookahead-batches L, the recmgd child pins hints L+1
    batches (its configuration file, as the daemon reads it)."""
    from recmgd.app import e2e
    from recmgd.daemon.config import load
    from recmgd.keys import capacity_for

    trace = _trace(tmp_path / "t.trace", 400)
    cfg = e2e.E2EConfig(traces=[("t", trace)], work=tmp_path, warmup=100, dim=8, max_batch=16,
                        lookahead_batches=3)
    tr = open_trace(trace)
    unique = int(np.unique(np.asarray(tr.keys)).size)
    setup = e2e.TraceSetup("t", trace, tr.n_samples, table_sizes(tr), unique, capacity_for(0.2, unique))
    with e2e.Stack("la", setup, cfg, "lru", lookahead=True) as stack:
        assert stack.daemon is not None
        conf = load(str(tmp_path / "recmgd-la.toml")).policy_for(stack.name)
        assert conf.hint_pin_batches == 4 and conf.hint_slots > 0
        out = e2e.run_server(cfg, setup, stack.name, [5000.0], [300], True, stack.daemon.pid,
                             tmp_path / "lat.npz")[0]
    assert out["extra"]["lookahead"] and out["extra"]["lookahead_batches"] == 3
    assert out["requests"] == 300 and out["hinted_rows"] > 0


def test_the_demos_target_lines_name_what_they_compare() -> None:
    """`recmg demo`'s target lines: the best configuration a recmgd drives against all-DRAM (p99), the best
    but plain LRU against LRU (p50), and RecMG+lookahead against LRU+lookahead, each with its verdict."""
    from recmgd.app.e2e import targets

    rows = [dict(trace="t", system=s, load=0.5, p99_ms=p99, p50_ms=p99 / 2, slow_bytes=mb * 1e6)
            for s, p99, mb in [("all-dram", 5, 0), ("lru", 10, 9), ("lru+lookahead", 6, 4),
                               ("recmg+lookahead", 8, 3)]]
    assert targets(rows) == [
        "t: best recmgd-driven configuration (lru+lookahead) p99 6.00 ms = 1.20x all-DRAM's 5.00 ms at 50% "
        "load [target <= 1.25x: met]",
        "t: best recmgd-driven one but plain LRU (lru+lookahead) p50 3.00 ms, 40% below LRU's 5.00 ms "
        "[target >= 43% below: missed]",
        "t: recmg+lookahead p99 8.00 ms, slow tier 3.0 MB; lru+lookahead 6.00 ms, 4.0 MB [target: lower in "
        "both: missed]"]


def test_a_comparison_stopped_midway_leaves_no_server_behind(tmp_path: Path) -> None:
    """^C (or any error) while the comparison reads its server's results: the server process is killed
    and reaped, not left running or a zombie of the demo's process."""
    import psutil

    from recmgd.app import e2e
    from recmgd.keys import capacity_for

    trace = _trace(tmp_path / "t.trace", 400)
    cfg = e2e.E2EConfig(traces=[("t", trace)], work=tmp_path, warmup=100, dim=8, max_batch=16)
    tr = open_trace(trace)
    unique = int(np.unique(np.asarray(tr.keys)).size)
    setup = e2e.TraceSetup("t", trace, tr.n_samples, table_sizes(tr), unique, capacity_for(0.2, unique))
    seen: list[int] = []

    def servers() -> list[psutil.Process]:  # (not the other children of this process: torch's compile
        out = []  # workers, which an earlier test's torch.compile may start at any time)
        for c in psutil.Process().children():
            try:
                if "recmgd.app.serve" in c.cmdline():
                    out.append(c)
            except psutil.Error:
                pass
        return out

    def interrupted() -> dict[str, float]:  # called when the server's timed phase begins
        seen.extend(c.pid for c in servers())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        e2e.run_server(cfg, setup, None, [500.0], [300], False, None, tmp_path / "lat.npz",
                       counters=interrupted)
    assert seen, "the server was not running when the phase began"
    left = [c for c in servers() if c.pid in seen]
    assert left == [], [(c.pid, c.status()) for c in left]
