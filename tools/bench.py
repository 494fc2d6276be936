#!/usr/bin/env python3
"""`make bench`: run every benchmark (tools/bench_*.py) in turn, each in its own process.

Each benchmark measures recmg and the thing it is compared with in the same run and prints ratios.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ORDER = ["bench_pool.py", "bench_sim.py", "bench_models.py", "bench_daemon.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    names = [n for n in ORDER if (here / n).exists()]
    names += sorted(p.name for p in here.glob("bench_*.py") if p.name not in ORDER)
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(here / name), *sys.argv[1:]])
        print(f"--- {name}: exit {rc}, {time.monotonic() - t0:.1f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
