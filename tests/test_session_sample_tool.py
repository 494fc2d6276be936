"""tools/session_sample.py, run short: a real pool, a real recmgd and two app processes; the transcript it
prints (BENCHMARKS.md, "A session (real output)") holds each command with its real answer, and the run
leaves no pool behind."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CTL = "$ recmgctl --socket /run/recmgd/control.sock"


def test_the_session_transcript() -> None:
    pool = f"recmg-test-session-{uuid.uuid4().hex[:8]}"
    try:
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "session_sample.py"), "--seconds", "1",
                            "--pool", pool], capture_output=True, text=True, timeout=120, cwd=ROOT)
        out = r.stdout
        assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
        for cmd in ("pools", "stats", f"pause {pool}", f"policy {pool} s3fifo"):
            assert f"{CTL} {cmd}\n" in out, cmd
        pools = rf"^{re.escape(pool)}: policy lru, 2 tables, \d+/600 slots .*apps: \d+, \d+$"
        assert re.search(pools, out, re.M)
        assert re.search(r"^table +lookups +unique +fast hits", out, re.M)
        for table in ("0", "1", "all"):
            assert re.search(rf"^ +{table}( +\d+(\.\d+)?){{12}}$", out, re.M), table
        assert f"\npool {pool} paused\n" in out
        assert f"\npool {pool}: policy s3fifo\n" in out
        after = out.split(f"{CTL} stats ", 1)[1]  # the last stats, after SIGTERM
        assert "recmgctl: recmgd is not running (no control socket at /run/recmgd/control.sock)\n" \
               "(exit status 3)\n" in after
        assert f"pool {pool}: policy switched to s3fifo" in after  # the daemon's log
        assert "INFO recmgd.daemon.service: stopping" in after
        assert re.search(rf"pool {re.escape(pool)}: app pid \d+ detached \(ring 1\)", after)  # (had no pid)
        assert "recmgd ready: 1 pool attached" in after  # ("1 pools")
        # the pool's own slow-tier count holds the daemon's fills too: said so ("apps' own ... slow tier")
        assert re.search(r"^apps' own count: .*; slow tier read [\d.]+ MB \(their lookups and the daemon's "
                         r"fills\)$", out, re.M)
        assert "/tmp/" not in out  # every path shown under /run/recmgd
    finally:
        leftover = list(Path("/dev/shm").glob(f"{pool}*"))
        for f in leftover:
            f.unlink()
    assert not leftover
