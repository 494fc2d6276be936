"""Create / lookup / destroy cycles: the crash report of a segfault in free() inside recmg_close or
Pool.unlink after lookups (about 1 in 300 cycles, before the lookup rewrite). Bounded loops in fresh
processes, with lookup worker threads and a daemon handle filling and evicting between lookups, and the
same cycle in C under AddressSanitizer + UndefinedBehaviorSanitizer (native/tests/cycle_stress.c):
any heap error, double free or use after free on close/destroy, or worker-thread teardown race fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sanitized import sanitized_driver

REPO = Path(__file__).resolve().parent.parent

CYCLE = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from recmgd.pool import Pool

    prefix, seconds, threads, fill = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end or n < 50:
        name = f"{prefix}_{n}"
        p = Pool.create(name, [(1000, 16)], slots=100, ring_records=1024, threads=threads)
        d = Pool.attach(name, role="daemon") if fill else None
        for k, per in enumerate((1, 10, 250)):
            ids = rng.integers(0, 1000, 1000)
            out = p.embedding_bag(0, ids, np.arange(0, 1000, per))
            assert out.shape == (1000 // per, 16)
            if d is not None:
                if d.free_slots() < 30:
                    d.evict_keys(d.resident_keys())
                d.fill_keys(rng.choice(1000, 30, replace=False))
        p.end_batch()
        if d is not None and n % 2:
            d.close()
        p.destroy()
        if d is not None:
            d.close()
        n += 1
    print("cycles", n)
    """
)


@pytest.mark.parametrize(("threads", "fill"), [(1, 0), (2, 0), (2, 1)])
def test_create_lookup_destroy_cycles(threads: int, fill: int) -> None:
    prefix = f"rt_cyc_{uuid.uuid4().hex[:8]}"
    r = subprocess.run(
        [sys.executable, "-c", CYCLE, prefix, "2.0", str(threads), str(fill)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert r.stdout.startswith("cycles ")
    left = [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]
    assert not left, left


@pytest.fixture(scope="module")
def asan_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sanitized_driver(tmp_path_factory.mktemp("asan"), "address,undefined", "cycle_stress_asan")


@pytest.fixture(scope="module")
def tsan_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sanitized_driver(tmp_path_factory.mktemp("tsan"), "thread", "cycle_stress_tsan")


def _run_clean(driver: Path, args: list[str], env: dict[str, str], timeout: int, *reports: str) -> None:
    """Runs a sanitized cycle_stress; it must pass every cycle and print none of the reports."""
    r = subprocess.run([str(driver), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
    assert ": ok" in r.stdout
    for report in reports:
        assert report not in r.stderr, r.stderr[-6000:]


@pytest.mark.parametrize("threads", [4, 8])
def test_lookup_threads_under_thread_sanitizer(tsan_driver: Path, threads: int) -> None:
    """The lookup workers (claims tagged by job, split arguments' chunks and join items over the
    flagged threads' bitmaps and miss lists, the thread count changed between calls) race on nothing
    ThreadSanitizer sees. No concurrent writer (FILL=0): TSan cannot model the seqlock readers' fence,
    so a writer could give false reports; with 100 slots most reads are misses, which the miss lists
    count."""
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:exitcode=23")
    _run_clean(tsan_driver, ["150", str(threads), "0", "dram"], env, 300, "WARNING: ThreadSanitizer")


@pytest.mark.parametrize(("threads", "fill", "slow"), [(1, 0, "dram"), (3, 1, "dram"), (2, 1, "ssd")])
def test_cycles_under_address_sanitizer(
    asan_driver: Path, threads: int, fill: int, slow: str, tmp_path: Path
) -> None:
    arg = f"ssd:{tmp_path / 'emb.bin'}" if slow == "ssd" else "dram"
    cycles = "150" if slow == "ssd" else "400"
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=23"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    _run_clean(asan_driver, [cycles, str(threads), str(fill), arg], env, 120, "ERROR: AddressSanitizer",
               "runtime error")
