"""The daemon's allocator setting (recmgd.simcore.map_large_allocations): large requests stay mappings of
their own after a large free, so the policies' growing arrays leave no holes in the heap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recmgd.errors import PolicyError
from recmgd.simcore import LARGE_ALLOCATION, map_large_allocations

# In a fresh interpreter: free an 8 MB array (glibc then raises its mmap threshold past it), allocate a
# 4 MB one, and say whether it landed in the heap or in a mapping of its own.
_WHERE = """
import sys
import numpy as np
from recmgd.simcore import map_large_allocations
if sys.argv[1] == "set":
    map_large_allocations()
np.ones(1 << 20).sum()
a = np.ones(1 << 19)
addr = a.ctypes.data
for line in open("/proc/self/maps"):
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    if lo <= addr < hi:
        print("heap" if line.rstrip().endswith("[heap]") else "own")
        break
"""


def _where(mode: str) -> str:
    r = subprocess.run([sys.executable, "-c", _WHERE, mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_large_requests_keep_their_own_mappings_after_a_large_free() -> None:
    # glibc's default, which left ~30 MB of holes in the daemon's heap: the threshold rose past 4 MB
    assert _where("default") == "heap"
    assert _where("set") == "own"


def test_a_threshold_out_of_range_is_refused() -> None:
    for bad in (0, 4095, (32 << 20) + 1):
        with pytest.raises(PolicyError, match=f"allocator threshold {bad}: a bad argument"):
            map_large_allocations(bad)
    assert 4096 <= LARGE_ALLOCATION <= 32 << 20


def test_an_allocator_that_refuses_mallopt_is_left_alone(tmp_path: Path) -> None:
    """A preloaded allocator (jemalloc, tcmalloc, a sanitizer) refuses mallopt: the call says so and
    changes nothing, and the daemon goes on (recmgd's main logs it)."""
    cc = os.environ.get("CC", "cc")
    shim = tmp_path / "refuse_mallopt.so"
    r = subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), "-x", "c", "-"],
                       input="int mallopt(int param, int value) { (void)param; (void)value; return 0; }\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code = "from recmgd.simcore import map_large_allocations; print(map_large_allocations())"
    for preload, said in (("", "True"), (str(shim), "False")):
        env = {**os.environ, "LD_PRELOAD": preload}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == said
