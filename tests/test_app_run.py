"""The demo's DLRM app (``python -m recmgd.app.run``) as its own process against a real pool: outputs
checked against in-DRAM tables, and ``--pace`` idling between batches without counting the idle time."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

import recmgd.pool as pool_mod


def _trace(path: Path, samples: int = 200) -> None:
    rng = np.random.default_rng(3)
    lines = []
    for s in range(samples):
        lines.append(f"0 {rng.integers(0, 50)} {s}")
        for r in rng.integers(0, 30, size=2):
            lines.append(f"1 {r} {s}")
    path.write_text("\n".join(lines) + "\n")


def _app(pool: str, trace: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "recmgd.app.run", "--pool", pool, "--trace", str(trace), "--batch", "16",
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_app_paced_checks_outputs_and_reports_busy_rate(tmp_path: Path) -> None:
    from recmgd.app.replay import table_sizes
    from recmgd.trace import open_trace

    trace = tmp_path / "t.trace"
    _trace(trace)
    sizes = table_sizes(open_trace(trace))
    name = f"recmg-app-{uuid.uuid4().hex[:8]}"
    pool = pool_mod.Pool.create(name, [(n, 8) for n in sizes], 10)
    try:
        rng = np.random.default_rng(0)
        for t, n in enumerate(sizes):
            pool.write_rows(t, np.arange(n), rng.standard_normal((n, 8), dtype=np.float32))
        r = _app(name, trace, "--stop", "6", "--pace", "0.05")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["batches"] == 6 and out["lookups"] == 6 * 16 * 3
        assert out["max_abs_error"] == 0.0
        assert out["idle_seconds"] >= 6 * 0.05 and out["seconds"] >= out["idle_seconds"]
        busy = out["seconds"] - out["idle_seconds"]
        # the rate is over the busy time only (rounding: the two times are reported to the millisecond)
        assert out["lookups_per_s"] >= out["lookups"] / (busy + 0.002) - 1
        assert out["process"]["lookups"] == out["lookups"]
        bad = _app(name, trace, "--stop", "2", "--pace", "-1")
        assert bad.returncode == 2 and "--pace must be >= 0" in bad.stderr
    finally:
        pool.destroy()
