"""The C API at the edges of its size arithmetic, and a handle used across fork, under AddressSanitizer +
UndefinedBehaviorSanitizer (native/tests/api_bounds.c): a layout whose tables add up past 2^64 bytes
(once it sized the object to 12 MB and crashed in create, and a crafted header crashed attach), lookups
whose offsets claim 2^62 ids (the scratch buffers were sized to a wrapped product: a heap overflow, or a
double free at close), the slow tier's hash for 3 * 2^61 ids (an endless loop holding the handle's
lock), page and node queries of 2^62 entries (heap overflows), a child forked with an SSD-tier handle
(it submitted to the parent's io_uring, and the parent's reads then returned success and no rows), an
app releasing its own ring (it went to the next app while this one kept logging into it), another handle
of the process or a forked child releasing it (they could: the ring's pid was their own), calls given
NULL pointers (refused with another call's message left in place), draining into no buffer (memcpy of
NULL), and two threads' refused calls on one handle, also under ThreadSanitizer (they wrote the handle's
message at once)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from sanitized import sanitized_driver

PROBES = [
    "layout-size",
    "layout-create",
    "ids-2^62-fresh",
    "ids-2^62-grown",
    "slow-nodes",
    "slow-page-nodes",
    "move-slow-pages",
    "release-own-ring",
    "release-sibling-ring",
    "null-args",
    "error-threads",
    "ssd-ids-3*2^61",
    "fork-ssd",
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sanitized_driver(tmp_path_factory.mktemp("asan"), "address,undefined", "api_bounds_asan")


def test_api_bounds_under_address_sanitizer(driver: Path, tmp_path: Path) -> None:
    prefix = f"api_bounds_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    # an allocation of a size that wraps returns NULL, as glibc's does, instead of ASan's abort
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:exitcode=23")
    cmd = [str(driver), prefix, str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
    for probe in PROBES:
        assert f"{probe}: ok" in r.stdout.splitlines(), r.stdout
    assert "fork-ssd: the parent reads with io_uring" in r.stdout, "the fork probe needs io_uring"
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]


@pytest.fixture(scope="module")
def tsan_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sanitized_driver(tmp_path_factory.mktemp("tsan"), "thread", "api_bounds_tsan")


def test_refused_calls_on_two_threads_under_thread_sanitizer(tsan_driver: Path, tmp_path: Path) -> None:
    prefix = f"api_bounds_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    cmd = [str(tsan_driver), prefix, str(tmp_path), "threads"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
    assert "error-threads: ok" in r.stdout.splitlines(), r.stdout
    assert "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]
