"""Hash sampling of rows (recmgd.models.sampling) and `recmg train --sample`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recmgd.models.sampling import sampled


def test_sample_is_a_fixed_hash_chosen_share_of_the_rows() -> None:
    keys = np.arange(200_000, dtype=np.int64) | (np.int64(3) << 40)
    m = sampled(keys, 0.25)
    assert abs(m.mean() - 0.25) < 0.01
    assert np.array_equal(m, sampled(keys[::-1], 0.25)[::-1])  # per key, not per position
    assert np.all(sampled(keys, 0.5)[m])  # a larger sample holds the smaller one
    assert sampled(keys, 1.0).all()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            sampled(keys, bad)


def _train(trace: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "recmgd.cli.recmg", "train", str(trace), "--out", str(out), "-b", "8",
           "--fraction", "0.2", "--epochs", "1", "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_train_on_a_sample_records_the_whole_trace_s_scale(shared_traces: Path, tmp_path: Path) -> None:
    trace = shared_traces / "amazon_video.trace"
    r = _train(trace, tmp_path / "s", "--sample", "0.25", "-b", "256")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["stats"]["sample_rate"] == 0.25 and cfg["meta"]["sample"] == 0.25
    full_rows = 54_728  # amazon_video's unique rows: the checkpoint describes the whole trace's tier
    assert abs(cfg["capacity"] - 0.2 * full_rows) < 0.1 * 0.2 * full_rows
    # the models it trained run (the C step, loaded without torch)
    from recmgd import policy as registry
    from recmgd.policy import StepView

    p = registry.create("recmg", model_dir=str(tmp_path / "s"), prefetch_budget=4)
    p.reset(100)
    keys = np.arange(10, dtype=np.int64)
    assert p.observe(StepView(0, keys, np.zeros(10, bool))).admit.tolist() == keys.tolist()


@pytest.mark.parametrize(("extra", "needle"), [(("--sample", "0"), "--sample"),
                                               (("--sample", "0.5", "--page-bytes", "4096"), "--sample")])
def test_train_sample_bad_use_is_one_line(shared_traces: Path, tmp_path: Path, extra: tuple[str, ...],
                                          needle: str) -> None:
    r = _train(shared_traces / "obd_random.trace", tmp_path / "x", *extra)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
