"""Float (and boolean) ids are a one-line error, never truncated to rows: 3.7 is not row 3."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from recmgd.errors import PoolError
from recmgd.pool import Pool

ROWS, DIM = 20, 4


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool.create(f"fl_{os.getpid()}_{uuid.uuid4().hex[:8]}", tables=[(ROWS, DIM)], slots=4)
    p.write_rows(0, np.arange(ROWS), np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM))
    try:
        yield p
    finally:
        p.destroy()


BAD = [
    np.array([1.0, 3.7]),
    np.array([1, 3], dtype=np.float32),
    [1.5, 2.0],
    np.array([True, False]),
    torch.tensor([1.0, 3.7]),
    torch.tensor([1, 3], dtype=torch.float16),
    torch.tensor([True, False]),
]


def _label(x) -> str:
    return f"{type(x).__name__}-{getattr(x, 'dtype', 'list')}"


@pytest.mark.parametrize("ids", BAD, ids=_label)
def test_float_ids_are_refused(pool: Pool, ids) -> None:
    calls = [
        lambda: pool.embedding_bag(0, ids, [0, 1]),
        lambda: pool.embedding_bags([0], [ids], [[0, 1]]),
        lambda: pool.read_rows(0, ids),
        lambda: pool.write_rows(0, ids, np.zeros((2, DIM), dtype=np.float32)),
        lambda: pool.hint(0, ids),
    ]
    for call in calls:
        with pytest.raises(PoolError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "must be integers" in msg, msg
    # nothing was written, and integer ids of any width still work
    np.testing.assert_array_equal(pool.read_rows(0, [1, 3])[:, 0], [4.0, 12.0])
    good = [np.array([1, 3], dtype=np.int32), np.array([1, 3], dtype=np.uint8), torch.tensor([1, 3]), [1, 3]]
    good.append([])
    for ok in good:
        out = pool.embedding_bag(0, ok, [0] if len(ok) else [])
        assert out.shape[0] == (1 if len(ok) else 0)
