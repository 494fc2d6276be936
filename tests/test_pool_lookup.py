"""Pool lookups equal torch.nn.functional.embedding_bag: every slow tier, dtype, mode, with and without
per-sample weights, for all-hit, all-miss and mixed fast-tier states."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cpu_kernels import expected_kernel

from recmgd.errors import PoolError
from recmgd.keys import make_keys
from recmgd.pool import Pool, TieredEmbeddingBag

TABLES = [(700, 16), (300, 64), (50, 3)]
TIERS = ["dram", "numa:0", "ssd", "ssd-preadv"]


def _name() -> str:
    return f"rt_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def _make(tier: str, dtype: str, tmp_path, slots: int = 2000) -> Pool:
    if tier.startswith("ssd"):
        slow = f"ssd:{tmp_path / 'emb.bin'}"
    else:
        slow = tier
    return Pool.create(
        _name(), tables=TABLES, slots=slots, slow=slow, dtype=dtype, io_uring=tier != "ssd-preadv"
    )


@pytest.fixture(
    params=[(t, d) for t in TIERS for d in ("float32", "float16")], ids=lambda p: f"{p[0]}-{p[1]}"
)
def pool_and_weights(request, tmp_path) -> Iterator[tuple[Pool, list[torch.Tensor]]]:
    tier, dtype = request.param
    pool = _make(tier, dtype, tmp_path)
    rng = np.random.default_rng(1)
    weights = []
    for t, (rows, dim) in enumerate(TABLES):
        w = rng.standard_normal((rows, dim)).astype(np.float32)
        pool.write_rows(t, np.arange(rows), w)
        # the reference uses exactly what the pool stores
        weights.append(torch.from_numpy(w.astype(dtype).astype(np.float32)))
    if tier == "ssd-preadv":
        assert pool.stats()["io_backend"] == "preadv"
    try:
        yield pool, weights
    finally:
        pool.destroy()


def _batch(rng: np.random.Generator, rows: int, bags: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    lens = rng.integers(0, max_len + 1, size=bags)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    ids = rng.integers(0, rows, size=int(lens.sum())).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(offsets)


def _set_state(pool: Pool, state: str, rng: np.random.Generator) -> None:
    pool.evict_keys(pool.resident_keys())
    if state == "hit":
        for t, (rows, _) in enumerate(TABLES):
            pool.fill(t, np.arange(rows))
    elif state == "mixed":
        for t, (rows, _) in enumerate(TABLES):
            pool.fill(t, rng.permutation(rows)[: rows // 2])


def test_equal_to_torch(pool_and_weights) -> None:
    pool, weights = pool_and_weights
    rng = np.random.default_rng(7)
    for state in ("miss", "hit", "mixed"):
        _set_state(pool, state, rng)
        for t, (rows, dim) in enumerate(TABLES):
            ids, offsets = _batch(rng, rows, bags=33, max_len=12)
            psw = torch.from_numpy(rng.standard_normal(len(ids)).astype(np.float32))
            for mode in ("sum", "mean", "max"):
                for w in (None, psw) if mode == "sum" else (None,):
                    ref = F.embedding_bag(ids, weights[t], offsets, mode=mode, per_sample_weights=w)
                    got = pool.embedding_bag(t, ids, offsets, mode=mode, weights=w)
                    assert got.dtype == torch.float32 and got.shape == (33, dim)
                    torch.testing.assert_close(
                        got, ref, rtol=0, atol=0, msg=f"{state} t{t} {mode} w={w is not None}"
                    )
    c = pool.counters()["tables"]
    assert sum(x["hits"] for x in c) > 0 and sum(x["on_demand"] for x in c) > 0


def test_max_of_rows_with_nan_as_torch(pool_and_weights) -> None:
    """torch's max starts from a bag's first row: a NaN there stays NaN, a NaN after it is passed
    over (a NaN is greater than nothing). The pool gives the same bits, from slots and slow tier."""
    pool, weights = pool_and_weights
    rng = np.random.default_rng(5)
    for t, (rows, dim) in enumerate(TABLES):
        w = weights[t].clone()
        w[1] = float("nan")
        w[2, : (dim + 1) // 2] = float("nan")
        pool.write_rows(t, np.arange(rows), w)
        ids = torch.tensor([1, 0, 0, 1, 2, 0, 1, 2, 2, 1, 0], dtype=torch.int64)
        offsets = torch.tensor([0, 2, 4, 6, 7, 8, 9], dtype=torch.int64)
        ref = F.embedding_bag(ids, w, offsets, mode="max")
        assert ref.isnan().any() and not ref.isnan().all()
        for state in ("miss", "hit", "mixed"):
            _set_state(pool, state, rng)
            got = pool.embedding_bag(t, ids, offsets, mode="max")
            torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True, msg=f"{state} t{t}")


def test_hit_and_miss_paths_bitwise_equal(pool_and_weights) -> None:
    """The same rows read from slots and from the slow tier give identical bits."""
    pool, _ = pool_and_weights
    rng = np.random.default_rng(3)
    ids, offsets = _batch(rng, TABLES[1][0], bags=64, max_len=20)
    _set_state(pool, "miss", rng)
    miss = pool.embedding_bag(1, ids, offsets)
    _set_state(pool, "hit", rng)
    hit = pool.embedding_bag(1, ids, offsets)
    assert torch.equal(hit, miss)
    own = pool.stats()["process"]
    assert own["hits"] >= len(ids)


@pytest.mark.parametrize("tier", ["dram", "ssd"])
def test_embedding_bag_variants(tier, tmp_path) -> None:
    pool = _make(tier, "float32", tmp_path)
    try:
        rows, dim = TABLES[0]
        w = torch.randn(rows, dim)
        pool.write_rows(0, np.arange(rows), w)
        pool.fill(0, np.arange(0, rows, 3))
        # 2-D input without offsets
        ids2 = torch.randint(0, rows, (17, 5))
        torch.testing.assert_close(
            pool.embedding_bag(0, ids2, mode="mean"), F.embedding_bag(ids2, w, mode="mean")
        )
        # include_last_offset, empty bags, numpy and list inputs
        ids = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
        off = np.array([0, 2, 2, 6], dtype=np.int64)
        got = pool.embedding_bag(0, ids, off, include_last_offset=True)
        ref = F.embedding_bag(
            torch.from_numpy(ids), w, torch.from_numpy(off), mode="sum", include_last_offset=True
        )
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(pool.embedding_bag(0, [5, 6], [0])[0], w[5] + w[6])
        # int32 ids are accepted
        torch.testing.assert_close(
            pool.embedding_bag(0, torch.tensor([1, 2], dtype=torch.int32), torch.tensor([0, 1])),
            F.embedding_bag(torch.tensor([1, 2]), w, torch.tensor([0, 1]), mode="sum"),
        )
        # max of an empty bag is zero, like torch
        z = pool.embedding_bag(0, torch.tensor([3]), torch.tensor([0, 1]), mode="max")
        torch.testing.assert_close(z, F.embedding_bag(torch.tensor([3]), w, torch.tensor([0, 1]), mode="max"))
        # multi-table call
        ids_a, off_a = torch.randint(0, rows, (40,)), torch.arange(0, 40, 4)
        w1 = torch.randn(TABLES[1][0], TABLES[1][1])
        pool.write_rows(1, np.arange(TABLES[1][0]), w1)
        ids_b, off_b = torch.randint(0, TABLES[1][0], (30,)), torch.arange(0, 30, 3)
        a, b = pool.embedding_bags([0, 1], [ids_a, ids_b], [off_a, off_b])
        torch.testing.assert_close(a, F.embedding_bag(ids_a, w, off_a, mode="sum"))
        torch.testing.assert_close(b, F.embedding_bag(ids_b, w1, off_b, mode="sum"))
    finally:
        pool.destroy()


def test_tiered_embedding_bag_module(tmp_path) -> None:
    pool = _make("ssd", "float16", tmp_path)
    try:
        rows, dim = TABLES[1]
        ref_mod = torch.nn.EmbeddingBag(rows, dim, mode="sum")
        with torch.no_grad():
            ref_mod.weight.copy_(ref_mod.weight.half().float())
        pool.write_rows(1, np.arange(rows), ref_mod.weight.detach().numpy())
        mod = TieredEmbeddingBag(pool, 1, mode="sum")
        assert mod.embedding_dim == dim and mod.num_embeddings == rows
        pool.fill(1, np.arange(0, rows, 2))
        ids = torch.randint(0, rows, (50,))
        off = torch.tensor([0, 10, 30])
        psw = torch.rand(50)
        with torch.no_grad():
            torch.testing.assert_close(mod(ids, off), ref_mod(ids, off))
            torch.testing.assert_close(mod(ids, off, psw), ref_mod(ids, off, per_sample_weights=psw))
            ids2 = ids.view(10, 5)
            torch.testing.assert_close(mod(ids2), ref_mod(ids2))
        with pytest.raises(ValueError):
            mod(ids2, off)
        with pytest.raises(ValueError):
            mod(ids)
        with pytest.raises(NotImplementedError):
            TieredEmbeddingBag(pool, 1, mode="mean")(ids, off, psw)
    finally:
        pool.destroy()


@pytest.mark.parametrize("tier", ["dram", "ssd", "ssd-preadv"])
def test_write_rows_refreshes_resident(tier, tmp_path) -> None:
    pool = _make(tier, "float32", tmp_path)
    try:
        pool.write_rows(0, [4, 5], np.ones((2, 16), np.float32))
        pool.fill(0, [4, 5])
        pool.write_rows(0, [4], np.full((1, 16), 7.0, np.float32))
        np.testing.assert_array_equal(
            pool.read_rows(0, [4, 5]), np.array([[7.0] * 16, [1.0] * 16], np.float32)
        )
        before = pool.stats()["process"]["hits"]
        out = pool.embedding_bag(0, [4, 5], [0, 1])
        assert out[0, 0] == 7.0 and out[1, 0] == 1.0
        assert pool.stats()["process"]["hits"] - before == 2
        assert set(pool.resident_keys().tolist()) == set(make_keys(0, np.array([4, 5])).tolist())
    finally:
        pool.destroy()


def test_fill_evict_and_restart_rebuild(tmp_path) -> None:
    pool = _make("dram", "float32", tmp_path, slots=64)
    try:
        d1 = Pool.attach(pool.name, role="daemon")
        assert d1.ring_index == -1 and d1.free_slots() == 64
        keys = make_keys(1, np.arange(40))
        assert d1.fill_keys(keys) == 40
        assert d1.fill_keys(keys[:10]) == 0  # already resident
        assert d1.free_slots() == 24
        with pytest.raises(PoolError, match="free slots"):
            d1.fill_keys(make_keys(0, np.arange(100)))
        assert d1.evict_keys(keys[:5]) == 5
        d1.close()
        d2 = Pool.attach(pool.name, role="daemon")  # a restarted daemon
        assert sorted(d2.resident_keys().tolist()) == sorted(keys[5:].tolist())
        assert d2.free_slots() == 29
        assert d2.fill(0, np.arange(29)) == 29
        assert d2.free_slots() == 0
        # the app's writes and the daemon's fills interleave: both see a consistent free list
        pool.write_rows(0, [0], np.zeros((1, 16), np.float32))
        assert d2.evict(0, [0, 1]) == 2 and d2.free_slots() == 2
        d2.close()
    finally:
        pool.destroy()


def test_numa_pages(tmp_path) -> None:
    pool = _make("numa:0", "float32", tmp_path)
    try:
        pool.write_rows(0, np.arange(10), np.ones((10, 16), np.float32))
        assert (pool.slow_nodes(0, np.arange(10)) == 0).all()
        assert pool.move_slow_rows(0, 0, 700, 0) >= 1
        with pytest.raises(PoolError):
            pool.move_slow_rows(0, 0, 10, 999)
    finally:
        pool.destroy()


def _third_resident(tables: list[tuple[int, int]], slots: int, threads: int,
                    rng: np.random.Generator) -> tuple[Pool, list[torch.Tensor]]:
    """A dram pool of random rows with a third of each table's rows in the fast tier; its weights."""
    pool = Pool.create(_name(), tables=tables, slots=slots, threads=threads)
    ws = []
    for t, (rows, dim) in enumerate(tables):
        w = rng.standard_normal((rows, dim)).astype(np.float32)
        pool.write_rows(t, np.arange(rows), w)
        ws.append(torch.from_numpy(w))
        pool.fill(t, rng.permutation(rows)[: rows // 3])
    return pool, ws


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_multi_table_call_with_threads(threads: int, tmp_path) -> None:
    tables = [(500, 16), (300, 64), (200, 32), (100, 128), (50, 3)]
    rng = np.random.default_rng(threads)
    pool, ws = _third_resident(tables, 600, threads, rng)
    try:
        order = [0, 1, 2, 3, 4, 1, 1, 3]  # the same table several times in one call
        batches = [_batch(rng, tables[t][0], bags=40, max_len=15) for t in order]
        psw = [torch.rand(len(ids)) for ids, _ in batches]
        for mode, weights in (("sum", None), ("sum", psw), ("mean", None), ("max", None)):
            outs = pool.embedding_bags(order, [b[0] for b in batches], [b[1] for b in batches], mode, weights)
            for k, t in enumerate(order):
                ref = F.embedding_bag(
                    batches[k][0],
                    ws[t],
                    batches[k][1],
                    mode=mode,
                    per_sample_weights=None if weights is None else psw[k],
                )
                torch.testing.assert_close(outs[k], ref, rtol=1e-6, atol=1e-6)
        # the ring holds every table's ids in argument order
        pool.drain_ring(pool.ring_index)
        pool.embedding_bags(order, [b[0] for b in batches], [b[1] for b in batches])
        keys = pool.drain_ring(pool.ring_index).astype(np.int64)
        want = np.concatenate([make_keys(t, batches[k][0].numpy()) for k, t in enumerate(order)])
        assert keys.tolist() == want.tolist()
        # an error in one table: the first failing one (in argument order) is reported; the earlier ones
        # were logged, the pool stays usable
        bad = [b[0].clone() for b in batches]
        bad[5][0] = 10_000
        bad[7][0] = 20_000
        with pytest.raises(IndexError, match="row id 10000 out of range for table 1"):
            pool.embedding_bags(order, bad, [b[1] for b in batches])
        logged = len(pool.drain_ring(pool.ring_index))
        assert logged == sum(len(b[0]) for b in batches[:5])
        torch.testing.assert_close(
            pool.embedding_bags([2], [batches[2][0]], [batches[2][1]])[0],
            F.embedding_bag(batches[2][0], ws[2], batches[2][1], mode="sum"),
        )
    finally:
        pool.destroy()


def test_single_table_call_of_tensors_matches_the_general_path(monkeypatch) -> None:
    """What a model's forward passes (1-D contiguous int64 CPU tensors, no weights, an int table) takes
    embedding_bag's short path, which reads the ids in place: the same values, ring records and errors
    as the general path gets from the same arguments as numpy arrays; any other shape goes the general
    way."""
    tables = [(500, 64), (300, 16)]
    rng = np.random.default_rng(11)
    pool, ws = _third_resident(tables, 400, 1, rng)
    general_calls = []
    general = Pool._bag_args

    def counted(self, *args, **kwargs):
        general_calls.append(1)
        return general(self, *args, **kwargs)

    monkeypatch.setattr(Pool, "_bag_args", counted)
    try:
        pool.drain_ring(pool.ring_index)
        for t, (rows, _) in enumerate(tables):
            ids, offs = _batch(rng, rows, bags=40, max_len=15)
            for mode in ("sum", "mean", "max"):
                fast = pool.embedding_bag(t, ids, offs, mode)
                assert not general_calls, "tensors took the general path"
                fast_keys = pool.drain_ring(pool.ring_index)
                slow = pool.embedding_bag(t, ids.numpy(), offs.numpy(), mode)
                assert general_calls
                general_calls.clear()
                assert torch.equal(fast, slow)
                assert pool.drain_ring(pool.ring_index).tolist() == fast_keys.tolist()
                assert fast_keys.astype(np.int64).tolist() == make_keys(t, ids.numpy()).tolist()
                torch.testing.assert_close(fast, F.embedding_bag(ids, ws[t], offs, mode=mode), rtol=0, atol=0)
        ids, offs = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])
        bad = ids.clone()
        bad[3] = 10_000
        for i in (bad, bad.numpy()):
            with pytest.raises(IndexError, match="row id 10000 out of range for table 0"):
                pool.embedding_bag(0, i, offs)
        for o, match in (([0, 3, 2], "offsets must not decrease"), ([1, 2], "offsets must start at 0"),
                         ([0, 5], r"offsets\[1\] = 5 is past the end of the 4 ids")):
            for call_offs in (torch.tensor(o), np.array(o)):
                with pytest.raises(PoolError, match=match):
                    pool.embedding_bag(0, ids, call_offs)
        general_calls.clear()
        ref = F.embedding_bag(ids, ws[0], offs, mode="sum")
        # other shapes: strided ids, int32 ids, a numpy table number, weights: the general path, same rows
        for args in ((torch.tensor([1, 9, 2, 9, 3, 9, 4, 9])[::2], offs), (ids.int(), offs),
                     (ids, offs.int())):
            assert torch.equal(pool.embedding_bag(0, *args), ref)
        assert torch.equal(pool.embedding_bag(np.int64(0), ids, offs), ref)
        assert torch.equal(pool.embedding_bag(0, ids, offs, weights=torch.ones(4)), ref)
        assert len(general_calls) == 5
    finally:
        pool.destroy()


@pytest.mark.parametrize("threads", [1, 2])
def test_multi_table_call_of_tensors_matches_the_general_path(threads: int) -> None:
    """Arguments of one shape (1-D contiguous int64 ids and offsets, all tensors or all numpy arrays, the
    same bags and dim in every table, no weights) take embedding_bags' vectorised argument building: the
    same values, ring records and errors as the general path gets from the same arguments as lists."""
    tables = [(500, 64), (300, 64), (200, 64)]
    rng = np.random.default_rng(9)
    pool, ws = _third_resident(tables, 400, threads, rng)
    try:
        order = [0, 1, 2, 1]
        batches = [_batch(rng, tables[t][0], bags=40, max_len=15) for t in order]
        ids, offs = [b[0] for b in batches], [b[1] for b in batches]
        as_np = [x.numpy() for x in ids], [o.numpy() for o in offs]
        as_lists = [x.tolist() for x in ids], [o.tolist() for o in offs]
        pool.drain_ring(pool.ring_index)
        for mode in ("sum", "mean", "max"):
            fast = pool.embedding_bags(order, ids, offs, mode)
            # one output tensor for all tables: the vectorised path ran
            assert fast[0].untyped_storage().data_ptr() == fast[3].untyped_storage().data_ptr()
            fast_keys = pool.drain_ring(pool.ring_index)
            fast_np = pool.embedding_bags(order, *as_np, mode)
            assert fast_np[0].untyped_storage().data_ptr() == fast_np[3].untyped_storage().data_ptr()
            assert pool.drain_ring(pool.ring_index).tolist() == fast_keys.tolist()
            general = pool.embedding_bags(order, *as_lists, mode)
            assert general[0].untyped_storage().data_ptr() != general[3].untyped_storage().data_ptr()
            assert pool.drain_ring(pool.ring_index).tolist() == fast_keys.tolist()
            for k, t in enumerate(order):
                assert torch.equal(fast[k], general[k]) and torch.equal(fast_np[k], general[k])
                ref = F.embedding_bag(ids[k], ws[t], offs[k], mode=mode)
                torch.testing.assert_close(fast[k], ref, rtol=1e-6, atol=1e-6)
        want = np.concatenate([make_keys(t, ids[k].numpy()) for k, t in enumerate(order)])
        assert fast_keys.astype(np.int64).tolist() == want.tolist()
        # a mode a table and a list of no weights take it too
        modes = ["sum", "mean", "max", "sum"]
        fast = pool.embedding_bags(order, ids, offs, modes, [None] * len(order))
        assert fast[0].untyped_storage().data_ptr() == fast[3].untyped_storage().data_ptr()
        general = pool.embedding_bags(order, *as_lists, modes, [None] * len(order))
        assert all(torch.equal(a, b) for a, b in zip(fast, general, strict=True))
        bad = [x.clone() for x in ids]
        bad[2][0] = 10_000
        for call_ids in (bad, [x.numpy() for x in bad], [x.tolist() for x in bad]):
            with pytest.raises(IndexError, match="row id 10000 out of range for table 2"):
                pool.embedding_bags(order, call_ids, offs)
        falling = [o.clone() for o in offs]
        falling[1][5] = falling[1][4] - 1 if falling[1][4] > 0 else 1
        for call_offs in (falling, [o.numpy() for o in falling], [o.tolist() for o in falling]):
            with pytest.raises(PoolError, match="offsets must not decrease|offsets must start at 0"):
                pool.embedding_bags(order, ids, call_offs)
    finally:
        pool.destroy()


@pytest.mark.parametrize("threads", [1, 2])
def test_table_batched_call_writes_the_tables_side_by_side(threads: int) -> None:
    """embedding_bags_packed (a KeyedJaggedTensor's / TBE's layout: values table after table, one offsets
    array) gives, in one [batch, sum of dims] tensor, exactly the per-table bags, hits and misses alike,
    logs the same ring records, and rejects bad offsets, tables and strides in one line."""
    tables = [(500, 16), (300, 64), (200, 32), (50, 3)]
    rng = np.random.default_rng(5)
    pool, ws = _third_resident(tables, 400, threads, rng)
    try:
        order, batch = [0, 1, 2, 3, 1], 37
        lens = rng.integers(0, 9, size=len(order) * batch)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        values = np.concatenate([rng.integers(0, tables[t][0], size=int(lens[k * batch:][:batch].sum()))
                                 for k, t in enumerate(order)]).astype(np.int64)
        psw = torch.rand(len(values))
        for mode, w in (("sum", None), ("sum", psw), ("mean", None), ("max", None)):
            out = pool.embedding_bags_packed(order, torch.from_numpy(values), torch.from_numpy(offsets),
                                             batch, mode, w)
            assert out.shape == (batch, sum(tables[t][1] for t in order)) and out.is_contiguous()
            col = 0
            for k, t in enumerate(order):
                lo, hi = offsets[k * batch], offsets[(k + 1) * batch]
                ref = F.embedding_bag(torch.from_numpy(values[lo:hi]), ws[t],
                                      torch.from_numpy(offsets[k * batch:(k + 1) * batch] - lo), mode=mode,
                                      per_sample_weights=None if w is None else w[lo:hi])
                dim = tables[t][1]
                torch.testing.assert_close(out[:, col:col + dim], ref, rtol=1e-6, atol=1e-6)
                col += dim
        pool.drain_ring(pool.ring_index)
        pool.embedding_bags_packed(order, values, offsets, batch)
        keys = pool.drain_ring(pool.ring_index).astype(np.int64)
        want = np.concatenate([make_keys(t, values[offsets[k * batch]:offsets[(k + 1) * batch]])
                               for k, t in enumerate(order)])
        assert keys.tolist() == want.tolist()
        with pytest.raises(ValueError, match="offsets has 10 entries; expected len"):
            pool.embedding_bags_packed(order, values, offsets[:10], batch)
        bad = offsets.copy()
        bad[-1] = len(values) + 1
        with pytest.raises(ValueError, match="offsets must lie in"):
            pool.embedding_bags_packed(order, values, bad, batch)
        with pytest.raises(IndexError, match="table 9 out of range"):
            pool.embedding_bags_packed([0, 1, 2, 3, 9], values, offsets, batch)
        with pytest.raises(PoolError, match="bad mode"):
            pool.embedding_bags_packed(order, values, offsets, batch, "median")
        assert pool.embedding_bags_packed([], [], [0], 0).shape == (0, 0)
        # the C call refuses an output stride narrower than the table's rows
        from recmgd._native import ffi, lib

        args = ffi.new("recmg_bag_args *")
        ids, offs, out = np.array([1], np.int64), np.array([0, 1], np.int64), np.zeros(64, np.float32)
        args.table, args.ids, args.n_ids = 1, ffi.from_buffer("int64_t[]", ids), 1
        args.offsets, args.n_bags = ffi.from_buffer("int64_t[]", offs), 1
        args.out, args.out_stride = ffi.from_buffer("float[]", out), 63
        assert lib.recmg_embedding_bags(pool._handle, 1, args) == lib.RECMG_EINVAL
        msg = ffi.string(lib.recmg_errmsg(pool._handle)).decode()
        assert "out_stride 63 is less than table 1's dim (64)" in msg
    finally:
        pool.destroy()


def test_single_table_split_across_threads_is_identical() -> None:
    """A large single-table call is split over threads: same bits, same counters as one thread."""
    rows, dim = 3000, 64
    results = []
    for threads in (1, 2, 4):
        pool = Pool.create(_name(), tables=[(rows, dim)], slots=1500, threads=threads)
        try:
            rng = np.random.default_rng(5)
            pool.write_rows(0, np.arange(rows), rng.standard_normal((rows, dim)).astype(np.float32))
            pool.fill(0, rng.permutation(rows)[:1500])
            ids, offsets = _batch(rng, rows, bags=1000, max_len=30)
            psw = torch.from_numpy(rng.standard_normal(len(ids)).astype(np.float32))
            outs = [
                pool.embedding_bag(0, ids, offsets, mode=m, weights=w)
                for m, w in (("sum", None), ("sum", psw), ("mean", None), ("max", None))
            ]
            c = pool.counters()["tables"][0]
            keys = pool.drain_ring(pool.ring_index)
            results.append(
                (outs, {k: c[k] for k in ("lookups", "unique", "hits", "on_demand", "slow_bytes")}, keys)
            )
            with pytest.raises(IndexError, match="row id 3000"):
                bad = ids.clone()
                bad[len(bad) // 2] = rows
                pool.embedding_bag(0, bad, offsets)
        finally:
            pool.destroy()
    for outs, counters, keys in results[1:]:
        for a, b in zip(outs, results[0][0], strict=True):
            assert torch.equal(a, b)
        assert counters == results[0][1]
        assert np.array_equal(keys, results[0][2])


def test_split_multi_table_call_counts_like_one_thread() -> None:
    """A multi-table call with few arguments splits each over the threads (distinct rows counted by join
    items over the threads' bitmaps, or by row-range scans where a table repeats): same bits, same
    per-table counters as one thread, and again on a second call (the bitmaps and miss lists were
    cleared); the distinct rows and distinct misses are those of the ids."""
    tables = [(3000, 64), (2000, 32), (5000, 16)]
    order = [0, 1, 0, 2]  # table 0 twice: counted by row-range scans; tables 1 and 2 by join items
    results = []
    # 2 threads: 4 arguments keep both busy, none split; 3: each split in 3 chunks (4 whole arguments
    # would leave 2 threads idle in the second round), counted from the bitmaps of the threads that
    # ran them; 4: each split in 8
    for threads in (1, 2, 3, 4):
        pool = Pool.create(_name(), tables=tables, slots=6000, threads=threads)
        try:
            rng = np.random.default_rng(11)
            resident = []
            for t, (rows, dim) in enumerate(tables):
                pool.write_rows(t, np.arange(rows), rng.standard_normal((rows, dim)).astype(np.float32))
                resident.append(rng.permutation(rows)[: rows // 2])
                pool.fill(t, resident[-1])
            batches = [_batch(rng, tables[t][0], bags=600, max_len=20) for t in order]
            got = []
            for _ in range(2):
                outs = pool.embedding_bags(order, [b[0] for b in batches], [b[1] for b in batches])
                c = pool.counters()["tables"]
                got.append(
                    (
                        outs,
                        [{k: c[t][k] for k in ("lookups", "unique", "hits", "on_demand")} for t in range(3)],
                    )
                )
            results.append(got)
        finally:
            pool.destroy()
    want_unique = [
        sum(len(np.unique(batches[k][0].numpy())) for k, t in enumerate(order) if t == tb) for tb in range(3)
    ]
    want_missed = [
        sum(len(np.setdiff1d(batches[k][0].numpy(), resident[tb])) for k, t in enumerate(order) if t == tb)
        for tb in range(3)
    ]
    assert min(want_missed) > 0
    for got in results:
        assert [c["unique"] for c in got[0][1]] == want_unique
        assert [c["on_demand"] for c in got[0][1]] == want_missed
        assert [c["on_demand"] for c in got[1][1]] == [2 * m for m in want_missed]
        for (outs, counters), (outs1, counters1) in zip(got, results[0], strict=True):
            for a, b in zip(outs, outs1, strict=True):
                assert torch.equal(a, b)
            assert counters == counters1


# A process whose first lookup worker, once it has seen a job, waits while the path in
# RECMG_FAULT_HOLD_WORKER exists: the calls must be done by the other threads, with torch's values.
HELD_WORKER = r"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

from recmgd.pool import Pool

rows, dim, bags, pooling = 3000, 64, 600, 20
pool = Pool.create(sys.argv[1], tables=[(rows, dim)] * 3, slots=4500, threads=4)
try:
    rng = np.random.default_rng(3)
    ws = []
    for t in range(3):
        w = rng.standard_normal((rows, dim)).astype(np.float32)
        pool.write_rows(t, np.arange(rows), w)
        pool.fill(t, rng.permutation(rows)[: rows // 2])
        ws.append(torch.from_numpy(w))
    offsets = torch.arange(0, bags * pooling + 1, pooling)
    for _ in range(4):
        ids = [torch.from_numpy(rng.integers(0, rows, bags * pooling)) for _ in range(3)]
        outs = pool.embedding_bags([0, 1, 2], ids, [offsets] * 3)
        outs.append(pool.embedding_bag(1, ids[1], offsets))
        for out, t in zip(outs, [0, 1, 2, 1], strict=True):
            ref = F.embedding_bag(ids[t], ws[t], offsets, mode="sum")
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    print("ok", flush=True)
finally:
    pool.destroy()
"""


def test_a_worker_that_does_not_run_holds_up_no_call(tmp_path) -> None:
    """A call waits for its items, not for every lookup thread: with one of the 4 threads held (the
    RECMG_FAULT_HOLD_WORKER fault point, as a thread the kernel does not run), split and whole
    arguments still complete, exactly."""
    hold = tmp_path / "hold"
    hold.touch()
    env = dict(os.environ, RECMG_FAULT_HOLD_WORKER=str(hold))
    r = subprocess.run([sys.executable, "-c", HELD_WORKER, _name()], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("tier,dtype", [("dram", "float32"), ("ssd", "float32"), ("dram", "float16"),
                                        ("ssd", "float16")])
def test_avx512_and_avx2_bag_kernels_agree_bitwise(tier, dtype, tmp_path, monkeypatch) -> None:
    """A handle opened with RECMG_NO_AVX512=1 keeps the AVX2 bag kernels; one opened without it takes
    AVX-512F at dim 64 and 128 where the CPU has it. Both give torch's values and the same bits, for
    hits, misses and rows of both in one bag, with weights and mean, float32 and float16 rows."""
    tables = [(400, 64), (200, 128), (300, 16), (250, 32), (100, 24)]
    slow = f"ssd:{tmp_path / 'k.bin'}" if tier == "ssd" else "dram"
    pool = Pool.create(_name(), tables=tables, slots=1200, slow=slow, dtype=dtype)
    try:
        rng = np.random.default_rng(11)
        weights = []
        for t, (rows, dim) in enumerate(tables):
            w = rng.standard_normal((rows, dim)).astype(np.float32)
            pool.write_rows(t, np.arange(rows), w)
            pool.fill(t, rng.permutation(rows)[: rows // 2])  # half the rows hit
            weights.append(torch.from_numpy(w.astype(dtype).astype(np.float32)))  # what the pool holds
        monkeypatch.setenv("RECMG_NO_AVX512", "1")
        narrow = Pool.attach(pool.name)
        monkeypatch.delenv("RECMG_NO_AVX512")
        wide = Pool.attach(pool.name)
        try:
            for t, (rows, dim) in enumerate(tables):
                assert narrow.lookup_kernel(t) == expected_kernel(dim, dtype, no_avx512=True)
                assert wide.lookup_kernel(t) == expected_kernel(dim, dtype)
                ids, offsets = _batch(rng, rows, bags=40, max_len=30)
                psw = torch.from_numpy(rng.standard_normal(len(ids)).astype(np.float32))
                for mode, w in (("sum", None), ("sum", psw), ("mean", None)):
                    a = narrow.embedding_bag(t, ids, offsets, mode=mode, weights=w)
                    b = wide.embedding_bag(t, ids, offsets, mode=mode, weights=w)
                    assert torch.equal(a, b), f"table {t} (dim {dim}) {mode} w={w is not None}"
                    ref = F.embedding_bag(ids, weights[t], offsets, mode=mode, per_sample_weights=w)
                    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-5)
            assert wide.stats()["process"]["hits"] > 0 and wide.stats()["process"]["on_demand"] > 0
        finally:
            narrow.close()
            wide.close()
    finally:
        pool.destroy()
