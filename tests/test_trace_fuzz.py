"""Fuzzing the trust boundary of trace files (issue #12): the binary, text and CSV readers and the C step
builder get mutated and random inputs (tests/trace_fuzz_cases.py, hypothesis, derandomized), each target
in its own process so that a signal fails the test instead of killing the runner; and the step builder
alone runs a C fuzz loop under AddressSanitizer + UndefinedBehaviorSanitizer
(native/policy/tests/dedup_fuzz.c)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "native" / "policy"
TARGETS = ("binary", "text", "csv", "steps")
CASES = 10_000


@pytest.fixture(scope="module")
def fuzz_runs() -> Iterator[dict[str, tuple[subprocess.Popen[str], Path]]]:
    """All targets started at once (they are independent; on more than one core they overlap). Work files
    go to /dev/shm where there is one: a case rewrites its file, and a truncating rewrite on a journaling
    file system costs more than the case."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="recmg_tracefuzz_", dir=shm))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runs = {}
    for target in TARGETS:
        work = root / target
        work.mkdir()
        cmd = [sys.executable, str(REPO / "tests" / "trace_fuzz_cases.py"), target, str(CASES), str(work)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=REPO)
        runs[target] = (proc, work)
    try:
        yield runs
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_no_signal_only_trace_errors_and_round_trips(
        fuzz_runs: dict[str, tuple[subprocess.Popen[str], Path]], target: str) -> None:
    proc, work = fuzz_runs[target]
    out, _ = proc.communicate(timeout=900)
    left = sorted(p.name for p in work.iterdir())
    assert proc.returncode == 0, (f"{target}: exit {proc.returncode} (negative: killed by signal "
                                  f"{-proc.returncode if proc.returncode < 0 else '-'}); last case file(s) "
                                  f"{left} in {work}\n{out[-6000:]}")
    m = re.search(rf"^{target}: (\d+) cases, (\d+) accepted, (\d+) rejected$", out, re.M)
    assert m, out[-3000:]
    total, accepted, rejected = (int(g) for g in m.groups())
    assert total >= CASES
    # both outcomes were exercised: the mutations reach past the first check, and valid files are read
    assert accepted >= CASES // 20 and rejected >= CASES // 20, m.group(0)


@pytest.fixture(scope="module")
def dedup_fuzz_asan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("asan") / "dedup_fuzz"
    cc = os.environ.get("CC", "cc")
    probe = subprocess.run([cc, "-x", "c", "-fsanitize=address,undefined", "-o", str(exe), "-"],
                           input="int main(void) { return 0; }\n", capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"the C compiler cannot build with sanitizers here: {probe.stderr.strip()[-300:]}")
    cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
           "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
           f"-I{POLICY}", "-o", str(exe), str(POLICY / "tests" / "dedup_fuzz.c"), str(POLICY / "dedup.c")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize("seed", [1, 2])
def test_step_builder_fuzz_under_address_sanitizer(dedup_fuzz_asan: Path, seed: int) -> None:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([str(dedup_fuzz_asan), "100000", str(seed)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
    m = re.search(r"dedup_fuzz: ok 100000 cases, (\d+) accepted, (\d+) refused", r.stdout)
    assert m and int(m.group(1)) > 10_000 and int(m.group(2)) > 10_000, r.stdout
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr
