"""Which bag kernel a pool handle should pick on this CPU (the rule recmg_lookup_kernel states in
native/include/recmg.h), from the CPU's flags in /proc/cpuinfo, for tests that check the pick."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def cpu_flags() -> frozenset[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def expected_kernel(dim: int, dtype: str = "float32", no_avx512: bool = False) -> str:
    """The kernel of a table's sum and mean lookups: avx512f at dim 64 and 128 (unless RECMG_NO_AVX512),
    avx2 at dim 16, 32, 64 and 128 (float16 rows also need F16C), generic otherwise."""
    f = cpu_flags()
    if dim not in (16, 32, 64, 128) or not {"avx2", "fma"} <= f or (dtype == "float16" and "f16c" not in f):
        return "generic"
    if dim in (64, 128) and "avx512f" in f and not no_avx512:
        return "avx512f"
    return "avx2"
