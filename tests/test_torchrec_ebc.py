"""TieredEmbeddingBagCollection against TorchRec's own EmbeddingBagCollection and DLRM, through real pools."""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pytest
import torch  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402
from torchrec.modules.embedding_configs import DataType  # noqa: E402

from recmgd.keys import REC_BATCH_END, REC_HINT, REC_LOOKUP, ROW_BITS, record_keys, record_types  # noqa: E402
from recmgd.pool import Pool  # noqa: E402
from recmgd.torchrec_ebc import TieredEmbeddingBagCollection, pool_tables  # noqa: E402


def _configs(pooling: PoolingType = PoolingType.SUM, dims: tuple[int, ...] = (8, 4, 16)) -> list:
    rows = (97, 41, 300)
    feats = (["a", "b"], ["c"], ["d"])
    pools = (pooling, PoolingType.MEAN if pooling == PoolingType.SUM else pooling, pooling)
    return [EmbeddingBagConfig(num_embeddings=r, embedding_dim=d, name=f"t{i}", feature_names=list(f),
                               pooling=p)
            for i, (r, d, f, p) in enumerate(zip(rows, dims, feats, pools, strict=True))]


def _kjt(cfgs: list, batch: int, seed: int, weighted: bool = False) -> KeyedJaggedTensor:
    """Random bags (some empty) for every feature, keys in an order unlike the configs'."""
    g = np.random.default_rng(seed)
    keys, values, lengths = [], [], []
    feats = [(f, c.num_embeddings) for c in cfgs for f in c.feature_names][::-1]
    for f, rows in feats:
        ln = g.integers(0, 5, size=batch)
        keys.append(f)
        lengths.append(ln)
        values.append(g.integers(0, rows, size=int(ln.sum())))
    vals = torch.from_numpy(np.concatenate(values))
    w = torch.from_numpy(g.random(len(vals)).astype(np.float32)) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=vals,
                                               lengths=torch.from_numpy(np.concatenate(lengths)), weights=w)


@pytest.fixture
def pool_for():
    made: list[Pool] = []

    def make(cfgs: list, slots: int = 64, slow: str = "dram") -> Pool:
        p = Pool.create(f"test-trec-{uuid.uuid4().hex[:8]}", pool_tables(cfgs), slots, slow=slow)
        made.append(p)
        return p

    yield make
    for p in made:
        p.destroy()


def _fill_some(pool: Pool, cfgs: list) -> None:
    """Half the fast tier's slots hold rows, so lookups take both the hit and the slow-tier path."""
    d = Pool.attach(pool.name, role="daemon")
    try:
        keys = np.concatenate([(np.int64(t) << ROW_BITS) | np.arange(0, c.num_embeddings, 7, dtype=np.int64)
                               for t, c in enumerate(cfgs)])
        d.fill_keys(keys[: pool.n_slots // 2])
    finally:
        d.close()


@pytest.mark.parametrize("pooling", [PoolingType.SUM, PoolingType.MEAN])
def test_forward_equals_torchrec(pool_for, pooling, tmp_path) -> None:
    cfgs = _configs(pooling)
    ref = EmbeddingBagCollection(tables=cfgs)
    pool = pool_for(cfgs, slow=f"ssd:{tmp_path / 'slow.bin'}")
    col = TieredEmbeddingBagCollection.from_ebc(ref, pool)
    _fill_some(pool, cfgs)
    for seed in range(3):
        kjt = _kjt(cfgs, batch=6, seed=seed)
        want, got = ref(kjt), col(kjt)
        assert got.keys() == want.keys() == ["a", "b", "c", "d"]
        assert got.length_per_key() == want.length_per_key() == [8, 8, 4, 16]
        torch.testing.assert_close(got.values(), want.values().detach(), rtol=1e-5, atol=1e-6)
    st = pool.stats()["process"]
    assert st["hits"] > 0 and st["on_demand"] > 0  # both paths were taken


@pytest.mark.parametrize("pooling", [PoolingType.SUM, PoolingType.MEAN])
def test_fp16_tables_equal_torchrec_exactly(pooling) -> None:
    """FP16 configs: TorchRec's float16 bags round each sum to float16 (a mean: the rounded sum over the
    count, rounded again) before widening; the collection's output is the same, bit for bit. (It pooled
    in float32 and never rounded: off by up to about 1e-3.)"""
    cfgs = _configs(pooling)
    for c in cfgs:
        c.data_type = DataType.FP16
    torch.manual_seed(5)
    ref = EmbeddingBagCollection(tables=cfgs)
    col = TieredEmbeddingBagCollection.create(f"test-trec16-{uuid.uuid4().hex[:8]}", cfgs, slots=64)
    try:
        col.load_state_dict(ref.state_dict())
        for seed in range(4):
            kjt = _kjt(cfgs, batch=40, seed=seed)
            assert torch.equal(col(kjt).values(), ref(kjt).values().detach())
    finally:
        col.pool.destroy()


def test_fp16_mean_of_long_bags_equals_torchrec() -> None:
    """A float16 MEAN bag divides by its length as float16 holds it, as TorchRec's kernel does: 2,049
    ids count as 2,048, and from 65,520 ids on the length is inf and the mean 0. (The exact count was
    used: one float16 ulp off above 2,048 ids, a wholly other number past 65,519.)"""
    cfgs = [EmbeddingBagConfig(num_embeddings=100, embedding_dim=8, name="t0", feature_names=["f"],
                               pooling=PoolingType.MEAN, data_type=DataType.FP16)]
    torch.manual_seed(0)
    ref = EmbeddingBagCollection(tables=cfgs)
    col = TieredEmbeddingBagCollection.create(f"test-trec16m-{uuid.uuid4().hex[:8]}", cfgs, slots=16)
    try:
        col.load_state_dict(ref.state_dict())
        g = torch.Generator().manual_seed(1)
        for n in (2048, 2049, 2101, 4097, 65519, 65520, 70000):
            kjt = KeyedJaggedTensor(keys=["f"], values=torch.randint(0, 100, (n + 3,), generator=g),
                                    lengths=torch.tensor([n, 0, 3]))
            want = ref(kjt).values().detach()
            assert torch.equal(col(kjt).values(), want), n
    finally:
        col.pool.destroy()


def test_tensordict_input_as_torchrec(pool_for) -> None:
    """A TensorDict of jagged features, which TorchRec's EBC takes (maybe_td_to_kjt), in forward and
    prefetch. (It failed with an AttributeError.)"""
    from tensordict import TensorDict

    cfgs = _configs()
    ref = EmbeddingBagCollection(tables=cfgs)
    col = TieredEmbeddingBagCollection.from_ebc(ref, pool_for(cfgs))
    feats = {f: torch.nested.nested_tensor([torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64),
                                            torch.tensor([3, 40, 5])], layout=torch.jagged)
             for f in ["d", "a", "c", "b"]}
    td = TensorDict(feats, batch_size=[3])
    assert torch.equal(col(td).values(), ref(td).values().detach())
    assert col.prefetch(td) == 15  # (5 distinct rows in each of the three tables)


def test_deduplicated_kjt_is_expanded_as_torchrec(pool_for) -> None:
    """A KJT of deduplicated samples (``inverse_indices``: per feature, each sample's row) gives one output
    row a sample, as TorchRec's EBC does. (The inverse indices were ignored: one row a distinct sample.)"""
    cfgs = _configs()
    ref = EmbeddingBagCollection(tables=cfgs)
    col = TieredEmbeddingBagCollection.from_ebc(ref, pool_for(cfgs))
    base = _kjt(cfgs, batch=4, seed=11)
    g = np.random.default_rng(2)
    names = base.keys()[::-1]  # (an order of its own)
    inverse = torch.from_numpy(g.integers(0, 4, size=(len(names), 9)))
    kjt = KeyedJaggedTensor(keys=base.keys(), values=base.values(), lengths=base.lengths(),
                            inverse_indices=(names, inverse))
    want, got = ref(kjt).values().detach(), col(kjt).values()
    assert got.shape == want.shape == (9, 36)
    assert torch.equal(got, want)


def test_weighted_equals_torchrec(pool_for) -> None:
    cfgs = [EmbeddingBagConfig(num_embeddings=r, embedding_dim=d, name=f"w{i}", feature_names=[f"f{i}"])
            for i, (r, d) in enumerate([(50, 8), (70, 12)])]
    ref = EmbeddingBagCollection(tables=cfgs, is_weighted=True)
    col = TieredEmbeddingBagCollection.from_ebc(ref, pool_for(cfgs))
    assert col.is_weighted()
    kjt = _kjt(cfgs, batch=5, seed=7, weighted=True)
    torch.testing.assert_close(col(kjt).values(), ref(kjt).values().detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no weights"):
        col(_kjt(cfgs, batch=5, seed=7, weighted=False))


def test_state_dict_round_trip(pool_for) -> None:
    cfgs = _configs()
    ref = EmbeddingBagCollection(tables=cfgs)
    col = TieredEmbeddingBagCollection(cfgs, pool_for(cfgs))
    col.load_state_dict(ref.state_dict())  # TorchRec's own layout, strict
    for k, v in col.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k])
    kjt = _kjt(cfgs, batch=4, seed=3)
    torch.testing.assert_close(col(kjt).values(), ref(kjt).values().detach(), rtol=1e-5, atol=1e-6)
    bad = {k: v[:-1] for k, v in ref.state_dict().items()}
    with pytest.raises(RuntimeError, match="weight is"):
        col.load_state_dict(bad)


def test_dlrm_equals_torchrec_dlrm(pool_for) -> None:
    cfgs = [EmbeddingBagConfig(num_embeddings=r, embedding_dim=16, name=f"t{i}", feature_names=[f"f{i}"])
            for i, r in enumerate([120, 33, 500, 64])]
    torch.manual_seed(0)
    ref = DLRM(EmbeddingBagCollection(tables=cfgs), dense_in_features=13, dense_arch_layer_sizes=[32, 16],
               over_arch_layer_sizes=[32, 1])
    col = TieredEmbeddingBagCollection(cfgs, pool_for(cfgs, slots=100))
    ours = DLRM(col, dense_in_features=13, dense_arch_layer_sizes=[32, 16], over_arch_layer_sizes=[32, 1])
    ours.load_state_dict(ref.state_dict())  # every weight, the tables through the pool
    assert ours.sparse_arch.embedding_bag_collection is col
    _fill_some(col.pool, cfgs)
    with torch.inference_mode():
        for seed in range(3):
            dense = torch.randn(8, 13, generator=torch.Generator().manual_seed(seed))
            kjt = _kjt(cfgs, batch=8, seed=seed)
            torch.testing.assert_close(ours(dense, kjt), ref(dense, kjt), rtol=1e-5, atol=1e-6)


def test_prefetch_announces_rows_and_forward_ends_batches(pool_for) -> None:
    cfgs = _configs()
    pool = pool_for(cfgs)
    col = TieredEmbeddingBagCollection(cfgs, pool)
    kjt = _kjt(cfgs, batch=6, seed=11)
    n = col.prefetch(kjt)
    col(kjt)
    d = Pool.attach(pool.name, role="daemon")
    try:
        recs = d.drain_ring(pool.ring_index)
    finally:
        d.close()
    kind = record_types(recs).astype(np.int64)
    keys = record_keys(recs)
    hinted = keys[kind == REC_HINT]
    # the hints: every row of the batch once per table (features a and b share table 0)
    want = set()
    for t, c in enumerate(cfgs):
        for f in c.feature_names:
            want.update((t << ROW_BITS) | int(r) for r in kjt[f].values())
    assert n == len(hinted) == len(want) and set(hinted.tolist()) == want
    assert kind[-1] == REC_BATCH_END and (kind == REC_BATCH_END).sum() == 1  # one batch, after its lookups
    assert (kind == REC_LOOKUP).sum() == len(kjt.values())


def test_mismatch_errors(pool_for) -> None:
    cfgs = _configs()
    other = pool_for(_configs(dims=(8, 4, 32)))
    with pytest.raises(ValueError, match="table t2: config 300 x 16, pool .* is 300 x 32"):
        TieredEmbeddingBagCollection(cfgs, other)
    with pytest.raises(ValueError, match="per-sample weights need SUM"):
        TieredEmbeddingBagCollection(cfgs, pool_for(cfgs), is_weighted=True)
    col = TieredEmbeddingBagCollection(cfgs, pool_for(cfgs))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=torch.tensor([1]), lengths=torch.tensor([1]))
    with pytest.raises(ValueError, match="lacks feature 'b'"):
        col(kjt)
    # offsets not from 0 (TorchRec fails to split the values; the bags skipped the values before it)
    kjt = KeyedJaggedTensor(keys=["a", "b", "c", "d"], values=torch.arange(6),
                            offsets=torch.tensor([2, 3, 4, 5, 6]))
    with pytest.raises(ValueError, match="offsets start at 2, not 0"):
        col(kjt)
    kjt = KeyedJaggedTensor(keys=["a", "b", "a", "c", "d"], values=torch.arange(5),
                            lengths=torch.ones(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="names feature 'a' more than once"):
        col(kjt)


def test_collection_under_compile_trace_and_copy(pool_for) -> None:
    """torch.compile runs the collection's lookup outside its graph (same output as eager); torch.jit.trace
    and copying the collection are refused in one line."""
    cfgs = _configs()
    ref = EmbeddingBagCollection(tables=cfgs)
    col = TieredEmbeddingBagCollection.from_ebc(ref, pool_for(cfgs))
    kjt = _kjt(cfgs, batch=4, seed=5)
    assert torch.equal(torch.compile(col, backend="eager")(kjt).values(), col(kjt).values())
    with pytest.raises(TypeError, match="is not copied") as e:
        copy.deepcopy(col)
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(col, (kjt,), strict=False)
