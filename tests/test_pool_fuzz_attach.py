"""Bit-flip fuzz of attach and use (issue #12): a valid pool's header, table descriptors, index
entries, entry-group versions and ring head/tail words changed at random, then attached as an app or a
daemon and used (lookups, fills, evictions, drains) in long-lived worker processes
(tests/fuzz_attach_worker.py). No signal, no exception but PoolError, and no wrong row, over 10,000
cases on a memory and on an SSD slow tier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from fuzz_attach_worker import TABLES, truth

from recmgd.keys import make_keys
from recmgd.pool import Pool

TESTS = Path(__file__).resolve().parent
SHM = Path("/dev/shm")
CASES = 10_000
WORKERS = 4


def make_image(tmp_path: Path, slow: str) -> Path:
    """A valid pool (some rows resident, records in a ring) copied to a file; the pool is removed."""
    name = f"fzt_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    p = Pool.create(name, tables=TABLES, slots=32, slow=slow, rings=2, ring_records=64)
    try:
        for t, (rows, _) in enumerate(TABLES):
            p.write_rows(t, np.arange(rows), truth(t))
        d = Pool.attach(name, role="daemon")
        d.fill_keys(np.concatenate([make_keys(0, np.arange(0, 100, 5)), make_keys(1, np.arange(0, 60, 6))]))
        d.close()
        p.embedding_bag(0, [1, 5, 7], [0, 1, 2])
        p.end_batch()
        image = tmp_path / f"{name}.img"
        image.write_bytes((SHM / name).read_bytes())
        return image
    finally:
        p.close()
        Pool.unlink(name)


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["dram", "ssd"])
def test_attach_fuzz(tmp_path: Path, tier: str) -> None:
    slow = "dram" if tier == "dram" else f"ssd:{tmp_path / 'fz.bin'}"
    image = make_image(tmp_path, slow)
    env = dict(os.environ, RECMG_LOCK_TIMEOUT_MS="5")
    per = CASES // 2 // WORKERS  # half the cases on each tier
    worker = str(TESTS / "fuzz_attach_worker.py")
    procs = [
        subprocess.Popen([sys.executable, worker, str(image), str(seed), str(per)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for seed in range(WORKERS)
    ]
    total: dict[str, int] = {}
    failures: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"worker died (status {proc.returncode}): {err[-2000:]}"
        stats = json.loads(out.strip().splitlines()[-1])
        failures += stats.pop("failures")
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v
    assert not failures, "\n".join(failures[:10])
    assert total["cases"] == per * WORKERS
    # the fuzz reached both outcomes: refused attaches, and attached pools whose rows were checked
    assert total["refused"] > 0 and total["attached"] > 0 and total["checked_rows"] > 0, total
