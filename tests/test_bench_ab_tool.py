"""tools/bench_ab_lookup.py's guards: it removes only the pools of its own runs that died, and refuses a
run that would not fit in memory before it builds or allocates anything."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_ab_lookup  # noqa: E402


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_pools_of_dead_runs_are_removed_and_nothing_else(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    names = [f"recmg-ab-base-{dead}", f"recmg-ab-new-{dead}", f"recmg-ab-new-{alive}", "recmg-demo-1",
             f"recmg-{dead}"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    removed = bench_ab_lookup.drop_stale_pools(tmp_path)
    assert sorted(removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_a_run_too_large_for_the_machine_stops_with_one_line() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_ab_lookup.py"), "--tables", "26",
                        "--rows", str(10**9)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "26 tables x 1000000000 rows at dim 64 need about" in lines[0]
    assert "GiB available" in lines[0]
