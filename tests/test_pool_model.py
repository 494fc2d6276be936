"""Property test: random sequences of write_rows / fill / evict / lookups against a plain numpy model.

Whatever the fast tier holds, a lookup equals the model's embedding bag, resident_keys() is exactly
the set the model says, and free_slots() is what is left."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recmgd.errors import PoolError
from recmgd.keys import make_keys
from recmgd.pool import Pool

TABLES = [(40, 8), (25, 16)]
SLOTS = 20

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1), st.lists(st.integers(0, 24), min_size=1, max_size=6)),
    st.tuples(st.just("fill"), st.integers(0, 1), st.lists(st.integers(0, 24), min_size=1, max_size=12)),
    st.tuples(st.just("evict"), st.integers(0, 1), st.lists(st.integers(0, 24), min_size=1, max_size=12)),
    st.tuples(st.just("lookup"), st.integers(0, 1), st.lists(st.integers(0, 24), min_size=0, max_size=20)),
)


@pytest.mark.parametrize("slow", ["dram", "ssd"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=25), dtype=st.sampled_from(["float32", "float16"]))
def test_matches_model(slow: str, tmp_path, ops, dtype: str) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.bin"
    pool = Pool.create(
        f"rt_{os.getpid()}_{uuid.uuid4().hex[:10]}",
        tables=TABLES,
        slots=SLOTS,
        slow="dram" if slow == "dram" else f"ssd:{path}",
        dtype=dtype,
        threads=2,
    )
    try:
        rng = np.random.default_rng(len(ops))
        model = [np.zeros((rows, dim), dtype=np.float32) for rows, dim in TABLES]
        resident: set[int] = set()
        for kind, t, rows in ops:
            r = np.array(rows, dtype=np.int64)
            keys = make_keys(t, r)
            if kind == "write":
                v = rng.standard_normal((len(r), TABLES[t][1])).astype(dtype)
                pool.write_rows(t, r, v)
                model[t][r] = v.astype(np.float32)  # the last write of a repeated row wins
            elif kind == "fill":
                new = set(keys.tolist()) - resident
                if len(new) > SLOTS - len(resident):
                    with pytest.raises(PoolError, match="free slots"):
                        pool.fill(t, r)
                else:
                    assert pool.fill(t, r) == len(new)
                    resident |= new
            elif kind == "evict":
                gone = set(keys.tolist()) & resident
                assert pool.evict(t, r) == len(gone)
                resident -= gone
            else:
                offsets = np.array([0, len(r) // 2], dtype=np.int64)
                got = pool.embedding_bag(t, r, offsets)
                ref = F.embedding_bag(
                    torch.from_numpy(r), torch.from_numpy(model[t]), torch.from_numpy(offsets), mode="sum"
                )
                torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        assert set(pool.resident_keys().tolist()) == resident
        assert pool.free_slots() == SLOTS - len(resident)
        for t, (rows, _) in enumerate(TABLES):
            np.testing.assert_array_equal(pool.read_rows(t, np.arange(rows)).astype(np.float32), model[t])
    finally:
        pool.destroy()
