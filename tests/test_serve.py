"""The inference server (python -m recmgd.app.serve) and the end-to-end comparison, with real processes:
a pool on a slow-tier file, a real recmgd child, the server answering every request with the output of
the all-DRAM TorchRec model."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from recmgd.app import e2e  # noqa: E402
from recmgd.app.replay import table_sizes  # noqa: E402
from recmgd.keys import capacity_for  # noqa: E402
from recmgd.pool import Pool  # noqa: E402
from recmgd.trace import open_trace  # noqa: E402


def _trace(path: Path, samples: int = 700) -> Path:
    """Three tables; table 1 has two lookups a sample, table 2 sometimes none."""
    rng = np.random.default_rng(5)
    lines = []
    for s in range(samples):
        lines.append(f"0 {rng.integers(0, 300)} {s}")
        lines.extend(f"1 {r} {s}" for r in rng.integers(0, 80, size=2))
        if s % 3:
            lines.append(f"2 {min(int(rng.zipf(1.3)), 499)} {s}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recmgd.app.serve", *args], capture_output=True, text=True,
                          timeout=600)


def _setup(tmp_path: Path, trace: Path, warmup: int) -> tuple[e2e.E2EConfig, e2e.TraceSetup]:
    cfg = e2e.E2EConfig(traces=[("t", trace)], work=tmp_path, warmup=warmup, dim=16, max_batch=16)
    tr = open_trace(trace)
    unique = int(np.unique(np.asarray(tr.keys)).size)
    return cfg, e2e.TraceSetup("t", trace, tr.n_samples, table_sizes(tr), unique, capacity_for(0.1, unique))


def test_server_answers_every_request_correctly_with_a_daemon(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.trace")
    cfg, setup = _setup(tmp_path, trace, warmup=200)
    with e2e.Stack("serve-test", setup, cfg, "lru", lookahead=True) as stack:
        assert stack.daemon is not None and stack.daemon.poll() is None
        r = _serve("--pool", stack.name, "--trace", str(trace), "--dim", "16", "--warmup", "200",
                   "--requests", "500", "--rate", "3000", "--max-batch", "16", "--max-wait-ms", "2",
                   "--lookahead", "--check", "--latencies", str(tmp_path / "lat.npz"))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert json.loads(lines[0]) == {"phase": "measure", "load": 0}
        out = json.loads(lines[-1])
        counters = stack.pool.counters()["processes"]
    # every request answered, each batch's output equal to TorchRec's all-DRAM DLRM with the same weights
    assert out["requests"] == out["checked"] == 500 and out["max_abs_error"] == 0.0
    assert 500 / 16 <= out["batches"] <= 500 and out["mean_batch"] <= 16
    with np.load(tmp_path / "lat.npz") as z:
        lat = z["arr_0"]
    assert lat.shape == (500,) and (lat > 0).all()
    assert out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    assert out["hinted_rows"] > 0 and out["lookups"] > 0
    # the app's own counters, through the pool: every counted lookup is a hit or read from the slow tier
    assert out["hits"] + out["on_demand"] <= out["lookups"]
    assert any(c["lookups"] >= out["lookups"] for c in counters)


def test_server_all_dram_and_bad_input(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.trace", samples=300)
    r = _serve("--all-dram", "--trace", str(trace), "--dim", "8", "--requests", "256,44", "--rate", "0,2000",
               "--max-batch", "32")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x.get("load") for x in lines[::2]] == [0, 1]
    first, second = lines[1], lines[3]
    assert first["requests"] == 256 and first["batches"] == 8  # all queued at once: full batches
    assert first["on_demand"] == 0
    assert second["requests"] == 44 and second["offered_qps"] == 2000 and second["extra"]["first"] == 256
    bad = _serve("--all-dram", "--lookahead", "--trace", str(trace))
    assert bad.returncode == 2 and "--lookahead needs --pool" in bad.stderr
    bad = _serve("--pool", "recmg-no-such-pool-xyz", "--trace", str(trace))
    assert bad.returncode == 2 and "cannot attach pool recmg-no-such-pool-xyz" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = _serve("--all-dram", "--trace", str(tmp_path / "missing.trace"))
    assert bad.returncode == 2 and "cannot read trace" in bad.stderr
    bad = _serve("--all-dram", "--trace", str(trace), "--warmup", "200", "--requests", "50,60",
                 "--rate", "1,2")
    assert bad.returncode == 2 and "200 + 110 requests > the trace's 300 samples" in bad.stderr
    bad = _serve("--all-dram", "--trace", str(trace), "--requests", "5,6,7", "--rate", "1,2")
    assert bad.returncode == 2 and "one for each of the 2 rates" in bad.stderr


def test_compare_writes_rows_table_and_plot(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "src.trace", samples=900)
    cfg = e2e.E2EConfig(traces=[("small", trace)], work=tmp_path / "work", systems=["all-dram", "no-cache"],
                        loads=[0.5], seconds=0.2, warmup=100, dim=8, max_batch=16, max_requests=300)
    run = e2e.compare(cfg)
    rows = run["results"]
    assert [(r["trace"], r["system"]) for r in rows] == [("small", "all-dram"), ("small", "no-cache")]
    for r in rows:
        assert all(k in r for k in e2e.REQUIRED_KEYS)
        assert r["offered_qps"] == pytest.approx(0.5 * run["max_qps"]["small"], rel=1e-3)
    assert rows[0]["on_demand_per_batch"] == 0 and rows[1]["on_demand_per_batch"] > 0  # no fast tier
    assert "no-cache" in e2e.table(rows)
    png = tmp_path / "e2e.png"
    e2e.plot(run, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_server_flags_at_the_edges(tmp_path: Path) -> None:
    """Numbers no load can have (nan hung the server at 100% CPU, inf and a negative seed raised), a
    warm-up past the trace, outputs that cannot be written (they raised after the results): each a
    one-line error with exit status 2, before any work."""
    trace = _trace(tmp_path / "t.trace", samples=300)
    base = ("--all-dram", "--trace", str(trace), "--dim", "8", "--requests", "10")
    for extra, says in ((("--rate", "nan"), "--rate and --requests must be finite"),
                        (("--rate", "inf"), "--rate and --requests must be finite"),
                        (("--max-wait-ms", "inf"), "--max-wait-ms"),
                        (("--max-wait-ms", "nan"), "--max-wait-ms"),
                        (("--seed", "-1"), "--seed"),
                        (("--json", str(tmp_path / "no" / "x.json")), "--json"),
                        (("--latencies", str(tmp_path)), "--latencies")):
        r = _serve(*base, *extra)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert r.stdout == "", extra  # nothing served
    r = _serve("--all-dram", "--trace", str(trace), "--dim", "8", "--warmup", "301")
    assert r.returncode == 2 and "warm-up 301 > the trace's 300 samples" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_server_checks_the_pool_before_writing_weights(tmp_path: Path) -> None:
    """--write-weights into a pool whose dim is not the model's: one line, and no row written (the rows
    were overwritten, then the mismatch refused)."""
    trace = _trace(tmp_path / "t.trace", samples=300)
    name = f"serve-dim-{uuid.uuid4().hex[:8]}"
    pool = Pool.create(name, tables=[(300, 8), (80, 8), (500, 8)], slots=10)
    try:
        r = _serve("--pool", name, "--trace", str(trace), "--dim", "16", "--write-weights",
                   "--requests", "10")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not pool.read_rows(0, np.arange(300)).any()  # still the zeros it was made with
    finally:
        pool.destroy()
