"""What a handle keeps between calls: a bulk fill's buffers (the rows read from the slow tier, the keys,
the hash of keys, the read requests) are freed after the call when larger than the library's keep
limit (64 MiB each, SCRATCH_KEEP_BYTES in native/src/internal.h), so that an app that fills millions of
rows once does not carry buffers of that size for the rest of its life; the next call works as before."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from recmgd.keys import make_keys
from recmgd.pool import Pool

# 600k rows of 256 bytes: a fill of them all reads 154 MB of rows into the handle's buffer
ROWS, DIM = 600_000, 64
KEEP = 64 << 20


def _anon_bytes() -> int:
    """This process's resident anonymous memory (the pool's mapping is shared memory, not counted)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _values(rows: np.ndarray) -> np.ndarray:
    return (rows[:, None] * 128 + np.arange(DIM)[None, :]).astype(np.float32)


@pytest.mark.parametrize("tier", ["dram", "ssd"])
def test_a_bulk_fill_leaves_no_buffer_of_its_size(tier: str, tmp_path: Path) -> None:
    slow = "dram" if tier == "dram" else f"ssd:{tmp_path / 'rows.bin'}"
    name = f"scr_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pool = Pool.create(name, tables=[(ROWS, DIM)], slots=ROWS, slow=slow)
    try:
        all_rows = np.arange(ROWS, dtype=np.int64)
        for lo in range(0, ROWS, 100_000):  # the truth, in parts (write_rows' own buffers stay small)
            part = all_rows[lo : lo + 100_000]
            pool.write_rows(0, part, _values(part))
        keys = make_keys(0, all_rows)
        before = _anon_bytes()
        assert pool.fill_keys(keys) == ROWS
        grown = _anon_bytes() - before
        # 154 MB of rows, a 16 MB hash and 5 MB of keys went through the call (and over an SSD tier the
        # requests and, where the file's O_DIRECT alignment is 512 bytes, 614 MB of bounce buffers);
        # what stays is the buffers under the keep limit (the hash, the keys' list). Before the trim the
        # fill left 150 MiB (dram) and 768 MiB (ssd) allocated here.
        assert grown < KEEP, f"the fill left {grown / 2**20:.0f} MiB allocated"
        # the handle works on: a lookup hits and is exact, and a second bulk fill (its buffers allocated
        # again) fills what was evicted; the lookup's first call imports torch, so the second fill is
        # measured from after it
        ids = np.arange(0, ROWS, 7, dtype=np.int64)
        np.testing.assert_array_equal(pool.embedding_bag(0, ids, np.arange(len(ids))).numpy(), _values(ids))
        assert pool.stats()["process"]["hits"] == len(ids)
        assert pool.evict_keys(keys[::2]) == (ROWS + 1) // 2
        before = _anon_bytes()
        assert pool.fill_keys(keys) == (ROWS + 1) // 2
        assert _anon_bytes() - before < KEEP
        np.testing.assert_array_equal(pool.read_rows(0, ids), _values(ids))
        np.testing.assert_array_equal(pool.embedding_bag(0, ids, np.arange(len(ids))).numpy(), _values(ids))
        assert pool.stats()["process"]["hits"] == 2 * len(ids)
    finally:
        pool.destroy()
