"""tools/soak.py, run short: a real pool, a real recmgd with the learned policy retraining online, and app
processes (one killed with SIGKILL and restarted) that check every row they read; the run passes (no wrong
row, no fd growth, the daemon answering and dropping each dead app, a clean stop) and leaves nothing behind.
The 25-minute run's figures are in BENCHMARKS.md ("Soak")."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_passes_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--minutes", "0.5",
                        "--restart-every", "10", "--retrain-every", "12", "--sample-every", "2",
                        "--poll-every", "5", "--out", str(out), "--logs", str(tmp_path / "logs")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "verdict: PASS" in r.stdout and ", wrong 0;" in r.stdout
    got = json.loads(out.read_text())
    assert got["fails"] == [] and got["unexpected_exits"] == []
    assert got["kills"] and all(k["detached_after_s"] is not None for k in got["kills"])
    assert got["end"]["answering"] and got["end"]["daemon_exit"] == 0
    assert not list(Path("/dev/shm").glob(f"{got['pool']}*"))
