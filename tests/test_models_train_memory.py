"""`recmg train`'s memory estimate (recmgd.models.train_memory) and its refusal (--memory-mb)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recmgd.cli.cmd_train import probe_size
from recmgd.models.train_memory import (
    MB,
    estimate_for,
    estimate_train_bytes,
    fitting_rate,
    mem_available_bytes,
)

BATCH = 8


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mem") / "s.bin"
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", "trace", "synth", str(path),
                        "--lookups", "60000", "--tables", "8", "--seed", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return path


def _train(trace: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "recmgd.cli.recmg", "train", str(trace), "--out", str(out), "-b", str(BATCH),
           "--epochs", "1", "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_estimate_grows_with_the_trace_and_shrinks_with_the_sample() -> None:
    def est(lookups: int, sample: float = 1.0) -> int:
        return estimate_train_bytes(lookups, lookups // 5, 16, sample, samples=lookups // 256,
                                    dedup_lookups=lookups // 2)

    sizes = [10**6, 10**7, 10**8, 10**9]
    assert [est(n) for n in sizes] == sorted(est(n) for n in sizes)
    assert est(10**9) - est(10**8) > 8 * (10**9 - 10**8)  # at least the trace's keys
    rates = [1.0, 0.5, 0.1, 0.01]
    at = [est(10**8, r) for r in rates]
    assert at == sorted(at, reverse=True) and at[0] > 2 * at[-1]
    # more distinct rows, more memory; more rows in a step (larger batches), fewer steps: not more
    assert estimate_train_bytes(10**7, 10**7, 16) > estimate_train_bytes(10**7, 10**6, 16)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            estimate_train_bytes(10**6, 10**5, 16, bad)


def test_fitting_rate_is_the_largest_two_digit_rate_within_the_limit(trace: Path) -> None:
    size = probe_size(str(trace), BATCH)
    full = estimate_for(size, BATCH)
    assert fitting_rate(size, BATCH, full) == 1.0
    limit = estimate_for(size, BATCH, 0.5)
    rate = fitting_rate(size, BATCH, limit)
    assert rate is not None and 0.4 <= rate <= 0.5
    assert estimate_for(size, BATCH, rate) <= limit < estimate_for(size, BATCH, rate + 0.01)
    assert fitting_rate(size, BATCH, 1) is None


def test_probe_measures_the_trace(trace: Path) -> None:
    from recmgd.trace import open_trace

    size = probe_size(str(trace), BATCH)
    steps = open_trace(trace).steps(BATCH)
    import numpy as np

    assert size.lookups == 60000 and size.dedup_lookups == steps.n_lookups
    assert size.unique_rows == len(np.unique(steps.keys[: steps.offsets[-1]]))
    assert 0 < size.train_rows <= size.unique_rows  # type: ignore[operator]


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n")
    assert mem_available_bytes(f) == 2048 * 1024
    f.write_text("MemTotal:       24000000 kB\n")
    assert mem_available_bytes(f) is None
    assert mem_available_bytes(tmp_path / "none") is None


def test_train_refuses_in_one_line_and_writes_nothing(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    r = _train(trace, out, "--memory-mb", "50")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "needs about" in lines[0] and "limit of 50 MB" in lines[0] and "--sample" in lines[0]
    assert not out.exists()


def test_train_suggests_a_rate_that_then_trains(trace: Path, tmp_path: Path) -> None:
    size = probe_size(str(trace), BATCH)
    limit_mb = estimate_for(size, BATCH, 0.5) / MB
    out = tmp_path / "m"
    r = _train(trace, out, "--memory-mb", f"{limit_mb:.3f}")
    assert r.returncode == 2 and not out.exists(), r.stderr
    hint = r.stderr.split("--sample ")[-1].split()[0]
    assert 0.4 <= float(hint) <= 0.5, r.stderr
    r = _train(trace, out, "--memory-mb", f"{limit_mb:.3f}", "--sample", hint)
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").exists()


def test_train_with_enough_memory_trains(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    size = probe_size(str(trace), BATCH)
    r = _train(trace, out, "--memory-mb", str(estimate_for(size, BATCH) // MB + 1))
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").exists() and (out / "weights.pt").exists()


def test_chunked_scoring_equals_one_pass() -> None:
    import numpy as np
    import torch

    from recmgd.models.features import N_FEATURES
    from recmgd.models.nets import CacheNet
    from recmgd.models.train import score_cache

    torch.manual_seed(0)
    net = CacheNet().eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, N_FEATURES)).astype(np.float32)
    t = rng.integers(0, 32, 5000)
    with torch.no_grad():
        whole = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.array_equal(score_cache(net, x, t, chunk=1024), whole)
    assert np.array_equal(score_cache(net, x, t), whole)


@pytest.mark.parametrize(("extra", "needle"), [(("--memory-mb", "-1"), "--memory-mb: MB >= 0"),
                                               (("--memory-mb", "50", "--page-bytes", "4096"),
                                                "--sample (row keys only) does not apply")])
def test_train_memory_bad_use_is_one_line(trace: Path, tmp_path: Path, extra: tuple[str, ...],
                                          needle: str) -> None:
    r = _train(trace, tmp_path / "x", *extra)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "x").exists()


def test_train_says_whether_its_estimate_is_only_the_upper_bound(trace: Path, tmp_path: Path) -> None:
    """Under a limit that the upper bound (every lookup a distinct row) fits, the line says "at most" and
    calls it the bound; under one only the probed estimate fits, it gives that estimate."""
    size = probe_size(str(trace), BATCH)
    est = estimate_for(size, BATCH)
    for limit, needle in ((est // MB + 1, f"peak memory about {est / MB:,.0f} MB by estimate"),
                          (10**6, "(an upper bound: every lookup taken as a distinct row")):
        cmd = [sys.executable, "-m", "recmgd.cli.recmg", "train", str(trace), "--out",
               str(tmp_path / str(limit)), "-b", str(BATCH), "--epochs", "1", "--memory-mb", str(limit)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert needle in r.stdout + r.stderr, (limit, r.stdout, r.stderr)
