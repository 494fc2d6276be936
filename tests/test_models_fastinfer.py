"""The caching model's C inference (recmgd.models.fastinfer) against the numpy reference, on a real trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recmgd import policy as registry
from recmgd.errors import ModelError
from recmgd.keys import make_keys
from recmgd.models import checkpoint
from recmgd.models.fastinfer import FastCacheNet
from recmgd.models.features import COUNT_MAX, FEATURE_NAMES, GAP_MAX, MAX_STEP, N_FEATURES, RowHistory
from recmgd.models.nets import CacheNet, NumpyCacheNet
from recmgd.models.train import TrainConfig, Trained, train_models
from recmgd.policy import StepView
from recmgd.sim.driver import drive
from recmgd.trace import Steps, open_trace

N_STEPS = 1200  # amazon_video at batch 16: ~18 distinct rows a step, ~21k lookups


@pytest.fixture(scope="module")
def steps(shared_traces: Path) -> Steps:
    s = open_trace(str(shared_traces / "amazon_video.trace")).steps(16)
    return Steps.from_list(s.as_list()[:N_STEPS])


@pytest.fixture(scope="module")
def trained(steps: Steps) -> tuple[Trained, int]:
    lst = steps.as_list()
    cap = max(1, len(np.unique(steps.keys)) // 10)
    cfg = TrainConfig(epochs=1, batch=256, seed=0, max_samples=600)
    return train_models(lst[: len(lst) // 2], cap, cfg, which=("cache", "prefetch")), cap


def test_history_features_and_state_match_numpy(steps: Steps) -> None:
    ref, fast = RowHistory(), RowHistory(initial=16, native=True)  # small: exercises growth + rebinding
    worst = 0.0
    for b, keys in enumerate(steps.as_list()):
        ia, ib = ref.ids(keys), fast.ids(keys)
        assert np.array_equal(ia, ib)
        fa, fb = ref.features_numpy(ia, b), fast.features(ib, b)
        worst = max(worst, float(np.abs(fa - fb).max()))
        ref.update_numpy(ia, b)
        fast.update(ib, b)
    assert worst < 1e-5
    n = len(ref)
    for name in ("last", "first", "count", "gaps", "dec", "table"):  # the very bits (dec: float16)
        a, c = getattr(ref, name)[:n], getattr(fast, name)[:n]
        assert a.tobytes() == c.tobytes(), name
    # features of rows not read this step (as the prefetcher asks): all rows, some steps later
    every = np.arange(n)
    assert np.abs(ref.features_numpy(every, N_STEPS + 50) - fast.features(every, N_STEPS + 50)).max() < 1e-5


def test_records_keep_gaps_as_steps_up_to_gap_max() -> None:
    """A record keeps its previous gaps as steps (24-byte records): the features read log1p of them, as
    the float records did, a gap past GAP_MAX reads as GAP_MAX, the mean gap is (last - first) / (uses -
    1); the C path and numpy agree; a step past the int32 records is refused with a clear error."""
    uses = (0, 10, 10 + GAP_MAX + 1000, 10 + GAP_MAX + 1005)
    now = uses[-1] + 7
    for native in (False, True):
        h = RowHistory(native=native)
        ids = h.ids(np.array([5], np.int64))
        for b in uses:
            h.update(ids, b)
        f = (h.features if native else h.features_numpy)(ids, now)[0]
        col = {name: f[i] for i, name in enumerate(FEATURE_NAMES)}
        assert int(h.gaps[ids[0], 0]) == 5 and int(h.gaps[ids[0], 1]) == GAP_MAX
        assert col["log_prev_gap0"] == np.log1p(np.float32(5))
        assert col["log_prev_gap1"] == np.log1p(np.float32(GAP_MAX))  # 66,535 steps, kept as the most
        assert col["log_prev_gap2"] == np.log1p(np.float32(10)) and col["log_prev_gap3"] == 0.0
        mean = np.float32(uses[-1]) / np.float32(3)
        assert abs(col["log_mean_gap"] - np.log1p(mean)) < 1e-6
        assert col["log_gap"] == np.log1p(np.float32(7)) and col["log_count"] == np.log1p(np.float32(4))
        with pytest.raises(ValueError, match="outside the records' steps"):
            h.update(ids, MAX_STEP + 1)
        if native:  # the fused score-and-record path says the same
            with pytest.raises(ValueError, match="outside the records' steps"):
                FastCacheNet(NumpyCacheNet(CacheNet(hidden=8)))(h, ids, MAX_STEP + 1, update=True)


def test_records_round_decays_to_float16_and_halve_a_full_count() -> None:
    """24-byte records: the decayed counters are float16, rounded (to float32, then to float16, to
    nearest even) the same in C and numpy whatever their values and gaps; the use past COUNT_MAX halves
    the count and the age alike in both, so the mean gap stays about what it was."""
    rng = np.random.default_rng(3)
    n = 4096
    hists = [RowHistory(initial=n), RowHistory(initial=n, native=True)]
    for h in hists:
        ids = h.ids(np.arange(n, dtype=np.int64))
        h.update(ids, 0)
    start = rng.uniform(0, 3000, (n, 3)).astype(np.float16)  # any counter, ties of the rounding among them
    start[: n // 4] = rng.integers(0, 2048, (n // 4, 3)).astype(np.float16) + np.float16(0.5)
    for h in hists:
        h.dec[:n] = start
    now = 0
    for gap in (1, 3, 17, 250, 5000, 70000):
        now += gap
        for h in hists:
            h.update(np.arange(n), now)
        assert hists[0].dec[:n].tobytes() == hists[1].dec[:n].tobytes(), gap
    assert hists[0].dec.dtype == np.float16 and np.all(hists[0].dec[:n] >= 1)
    # a full count: last at 10^6, first at 0, COUNT_MAX uses; the next use at 10^6 + 2 halves both
    for native, h in enumerate(hists):
        h.count[:2] = COUNT_MAX
        h.first[:2], h.last[:2] = 0, 1_000_000
        before = (h.features if native else h.features_numpy)(np.array([0]), 1_000_002)[0]
        h.update(np.array([0]), 1_000_002)
        assert int(h.count[0]) == (COUNT_MAX + 1) // 2 and int(h.first[0]) == 500_001
        h.update(np.array([1]), 1_000_002)  # the other row too: one step, one use each
        after = (h.features if native else h.features_numpy)(np.array([0]), 1_000_004)[0]
        mean = FEATURE_NAMES.index("log_mean_gap")
        assert abs(float(after[mean]) - float(before[mean])) < 0.01
    assert hists[0].rows[:n].tobytes() == hists[1].rows[:n].tobytes()


def test_decay_table_gives_the_bits_of_exp(steps: Steps) -> None:
    """The decay factors looked up at integer gaps (cm_lut_set_rates, as the C step uses them) are exp's
    very results: the same feature bits as computed, below the table's end and beyond it; a view with
    other rates than the table's computes them."""
    from recmgd.simcore import ffi, lib

    hist = RowHistory(native=True)
    for b, keys in enumerate(steps.as_list()):
        hist.update(hist.ids(keys), b)
    rows = hist.native_rows
    assert rows is not None
    every = np.arange(len(hist))
    later = (N_STEPS + 50, N_STEPS + 3000, N_STEPS + lib.CM_LUT_N + 7)  # gaps in the table and past it
    computed = [rows.features(every, now) for now in later]
    view = rows._current()  # noqa: SLF001
    lib.cm_lut_set_rates(view.lut, view.rate)
    for now, ref in zip(later, computed, strict=True):
        assert rows.features(every, now).tobytes() == ref.tobytes(), now
    other = ffi.new("double[]", [2 * view.rate[k] for k in range(len(view.rate))])
    lib.cm_lut_set_rates(view.lut, other)  # another view's rates: this view must not use them
    for now, ref in zip(later, computed, strict=True):
        assert rows.features(every, now).tobytes() == ref.tobytes(), now



def test_table_log1p_gives_the_float_of_libms() -> None:
    """The decayed counters' features take (float)log1p(x) from the table's sum (cm_log1p with a table)
    where it cannot round otherwise than libm's log1p, and from libm where it could: the same float as
    libm's (cm_log1p without a table) for counters and decays of every size, and for inputs whose
    log1p lies at a float's rounding boundary or one double either side (the sum alone, without the
    check, rounds a few percent of those the other way)."""
    from recmgd.simcore import ffi, lib

    lut = ffi.gc(lib.cm_lut_new(), lib.cm_lut_free)
    rng = np.random.default_rng(0)
    f = np.exp(rng.uniform(-40.0, np.log(11.0), 300_000)).astype(np.float32)  # log1p of up to 65504
    mid = (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2
    at = np.expm1(mid)  # log1p of these lies at the midpoint between two floats (within a double or so)
    cases = {
        "below 1": rng.uniform(0.0, 1.0, 300_000),
        "every size": np.exp(rng.uniform(-745.0, np.log(65504.0), 300_000)),
        "integers": rng.integers(1, 1 << 20, 300_000).astype(np.float64),
        "at boundaries": at,
        "a double below": np.nextafter(at, 0.0),
        "a double above": np.nextafter(at, np.inf),
    }
    for name, x in cases.items():
        x = np.ascontiguousarray(x, np.float64)
        fast, libm = np.empty(len(x), np.float32), np.empty(len(x), np.float32)
        lib.cm_log1p(lut, ffi.from_buffer("double[]", x), len(x), ffi.from_buffer("float[]", fast))
        lib.cm_log1p(ffi.NULL, ffi.from_buffer("double[]", x), len(x), ffi.from_buffer("float[]", libm))
        assert fast.tobytes() == libm.tobytes(), (name, int((fast != libm).sum()))

def test_never_used_rows_scored_together_as_one_by_one(steps: Steps, trained: tuple[Trained, int]) -> None:
    """Rows never used share their features: in one call the forward pass of the first one of a table
    slot serves the others (cm_score's memo). Their scores are the very bits each gets alone, mixed
    with used rows and over many tables."""
    t, _ = trained
    assert t.cache is not None
    fast = FastCacheNet(NumpyCacheNet(t.cache))
    hist = RowHistory(native=True)
    for b, keys in enumerate(steps.as_list()[:200]):
        hist.update(hist.ids(keys), b)
    used = hist.ids(steps.as_list()[200])
    fresh = hist.ids(make_keys(np.arange(300) % 150, 10_000_000 + np.arange(300)))
    ids = np.concatenate([fresh[:100], used, fresh[100:]])
    together = fast(hist, ids, 300).copy()
    alone = np.concatenate([fast(hist, ids[i:i + 1], 300).copy() for i in range(len(ids))])
    assert together.tobytes() == alone.tobytes()
    assert len(np.unique(together[: 100], axis=0)) > 1  # the tables' slots differ


def test_scores_match_numpy(steps: Steps, trained: tuple[Trained, int]) -> None:
    t, _ = trained
    assert t.cache is not None
    ref = NumpyCacheNet(t.cache)
    fast = FastCacheNet(ref)
    ha, hb = RowHistory(), RowHistory(native=True)
    worst_s = worst_f = 0.0
    for b, keys in enumerate(steps.as_list()):
        ia, ib = ha.ids(keys), hb.ids(keys)
        want = ref(ha.features_numpy(ia, b), ha.tables(ia))
        feats = np.empty((len(ib), N_FEATURES), np.float32)
        got = fast(hb, ib, b, update=True, feats=feats)  # scores, then records the use
        worst_s = max(worst_s, float(np.abs(want - got).max()))
        worst_f = max(worst_f, float(np.abs(ha.features_numpy(ia, b) - feats).max()))
        ha.update_numpy(ia, b)
    assert worst_s < 1e-4 and worst_f < 1e-5
    assert np.array_equal(ha.last[: len(ha)], hb.last[: len(hb)])


def test_scores_match_torch_with_table_embeddings() -> None:
    """A net with non-zero table embeddings and another width, against torch itself."""
    torch.manual_seed(1)
    net = CacheNet(hidden=24)
    with torch.no_grad():
        net.table.weight.normal_(0, 0.5)
    h = RowHistory(native=True)
    rng = np.random.default_rng(2)
    for b in range(40):
        keys = np.unique(make_keys(rng.integers(0, 40, 12), rng.integers(0, 60, 12)))
        ids = h.ids(keys)
        feats = h.features_numpy(ids, b)
        with torch.no_grad():
            want = net(torch.from_numpy(feats), torch.from_numpy(h.tables(ids))).numpy()
        got = FastCacheNet(NumpyCacheNet(net))(h, ids, b)
        assert np.abs(want - got).max() < 1e-4
        h.update(ids, b)


def _decisions(p: registry.Policy, steps: Steps, cap: int) -> list[tuple[list[int], ...]]:
    p.reset(cap)
    res: set[int] = set()
    out = []
    for b, keys in enumerate(steps.as_list()):
        hit = np.fromiter((k in res for k in keys.tolist()), bool, len(keys))
        d = p.observe(StepView(b, keys, hit))
        res.difference_update(d.evict.tolist())
        res.update(d.admit.tolist())
        res.update(d.prefetch.tolist())
        out.append((d.evict.tolist(), d.admit.tolist(), d.prefetch.tolist()))
    return out


@pytest.mark.parametrize("name", ["recmg-cache", "recmg"])
def test_policy_decisions_identical(name: str, steps: Steps, trained: tuple[Trained, int]) -> None:
    t, cap = trained
    pols = []
    for native in (True, False):
        # history_window=0: the Python step keeps every row, while the C step's window gives ids back (rows
        # it forgets, and, with no prefetcher, rows used once: the once table) and ties between equal keep
        # scores go by id, so the two steps are compared with the window off, as the lockstep tests do
        p = registry.create(name, prefetch_budget=8, threads=1, native_infer=native, history_window=0)
        p._install(t)  # type: ignore[attr-defined]
        pols.append(p)
    fast, ref = pols
    assert fast._fast_cache is not None and fast.hist.native_rows is not None  # type: ignore[attr-defined]
    assert ref._fast_cache is None  # type: ignore[attr-defined]
    if name == "recmg":  # the prefetcher (numpy, on C features) costs ~2 ms a step: a shorter slice
        steps = Steps.from_list(steps.as_list()[:500])
    half = len(steps) // 2
    cf = drive(fast, steps, cap, half, path="python")
    cr = drive(ref, steps, cap, half, path="python")
    assert cf.on_demand == cr.on_demand and cf.on_demand > 0
    assert cf.prefetch_issued == cr.prefetch_issued and cf.prefetch_useful == cr.prefetch_useful
    assert _decisions(fast, steps, cap) == _decisions(ref, steps, cap)


def test_default_is_native_and_checkpoint_loads(tmp_path: Path, steps: Steps,
                                                trained: tuple[Trained, int]) -> None:
    t, cap = trained
    checkpoint.save(t, tmp_path / "ck")
    p = registry.create("recmg-cache", model_dir=str(tmp_path / "ck"))
    assert p._fast_cache is not None and p.hist.native_rows is not None  # type: ignore[attr-defined]
    # the window off on both, as in test_policy_decisions_identical (the Python step has none)
    p = registry.create("recmg-cache", model_dir=str(tmp_path / "ck"), history_window=0)
    q = registry.create("recmg-cache", model_dir=str(tmp_path / "ck"), native_infer=False, history_window=0)
    short = Steps.from_list(steps.as_list()[:300])
    assert _decisions(p, short, cap) == _decisions(q, short, cap)


def test_errors() -> None:
    h = RowHistory(native=True)
    ids = h.ids(np.array([5, 6], np.int64))
    net = FastCacheNet(NumpyCacheNet(CacheNet()))
    with pytest.raises(IndexError):
        h.features(np.array([-1]), 0)
    with pytest.raises(IndexError):
        net(h, np.array([1 << 40]), 0)
    with pytest.raises(ModelError, match="native=True"):
        net(RowHistory(), ids, 0)
    with pytest.raises(ValueError, match="feats"):
        net(h, ids, 0, feats=np.zeros((3, N_FEATURES), np.float32))
    # non-contiguous / other-dtype ids are converted, not misread
    wide = np.stack([ids, ids], 1)[:, 0]
    assert np.array_equal(net(h, wide, 0), net(h, ids.astype(np.int32), 0))
    assert net(h, np.zeros(0, np.int64), 0).shape == (0, 2)


def test_portable_forward_pass_matches(steps: Steps, trained: tuple[Trained, int]) -> None:
    """The AVX2/FMA pass (where the CPU has it) and the portable one agree with numpy alike."""
    t, _ = trained
    assert t.cache is not None
    ref = NumpyCacheNet(t.cache)
    simd, portable = FastCacheNet(ref), FastCacheNet(ref)
    portable.simd = False
    assert not portable.simd
    h = RowHistory(native=True)
    for b, keys in enumerate(steps.as_list()[:400]):
        ids = h.ids(keys)
        want = ref(h.features_numpy(ids, b), h.tables(ids))
        assert np.abs(portable(h, ids, b) - want).max() < 1e-4
        assert np.abs(simd(h, ids, b) - want).max() < 1e-4
        h.update(ids, b)
