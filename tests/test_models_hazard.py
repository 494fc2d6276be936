"""The age-aware hazard table of the caching policy (recmgd.models.hazard): its estimate, its use as the
eviction order, and its place in checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recmgd.errors import ModelError
from recmgd.models import checkpoint, hazard
from recmgd.models.train import TrainConfig, train_models
from recmgd.sim import simulate
from recmgd.trace import open_trace

FRACTION = 0.1


def test_age_buckets_and_classes() -> None:
    b = hazard.age_bucket(np.array([0, 1, 2, 3, 4, 6, 8, 1 << 40]))
    assert b.tolist()[:6] == [0, 0, 2, 3, 4, 5]
    assert np.all(np.diff(b) >= 0) and b[-1] == hazard.AGE_BUCKETS - 1
    edges = hazard.uniform_edges(4)
    assert hazard.class_of(np.array([0.0, 0.24, 0.25, 0.6, 0.99, 1.0]), edges).tolist() == [0, 0, 1, 2, 3, 3]
    # keep logit 0 (p = 0.5) and reuse log1p 3.0 with 4 p classes and reuse edges [1, 2]: class 2 x 3 + 2
    out = np.array([[0.0, 3.0], [-10.0, 0.5]])
    assert hazard.classify(out, edges, np.array([1.0, 2.0])).tolist() == [8, 0]


def test_hazard_scores_in_c_equal_the_numpy_expression() -> None:
    from recmgd.simcore import lib

    assert lib.HZ_AGE_BUCKETS == hazard.AGE_BUCKETS
    rng = np.random.default_rng(0)
    n_ids, classes = 5000, 128
    cls = rng.integers(0, classes, n_ids).astype(np.int64)
    now = 123_457.0
    stamp = now - np.concatenate([rng.integers(1, 200_000, n_ids - 4), [1, 0, -5]]).astype(np.float64)
    stamp = np.r_[stamp, now - 1.5]  # a prefetched row (stamped half a step back)
    stamp[7] = -1.0  # never stamped
    table = np.round(rng.random((classes, hazard.AGE_BUCKETS)) * 1e4).ravel()
    ids = rng.permutation(n_ids)[:3000].astype(np.int64)
    ids = np.r_[ids, [7, n_ids - 1, n_ids - 2, n_ids - 3, n_ids - 4]]
    got = hazard.hazard_scores(ids, cls, stamp, table, now)
    cell = cls[ids] * hazard.AGE_BUCKETS + hazard.age_bucket(now - stamp[ids])
    ref = table[cell] + stamp[ids] / (now + 2.0)
    assert np.array_equal(got, ref)
    bad = cls.copy()
    bad[ids[0]] = classes
    with pytest.raises(ValueError, match="class outside"):
        hazard.hazard_scores(ids, bad, stamp, table, now)
    with pytest.raises(IndexError, match="id outside"):
        hazard.hazard_scores(np.r_[ids, n_ids], cls, stamp, table, now)


def test_fit_table_separates_reused_from_dead_rows() -> None:
    # rows 0..9 (class 1) are used every step; every step also uses two fresh rows (class 0) never seen again
    steps, cls, nxt = [], [], []
    n_steps = 400
    for t in range(n_steps):
        fresh = 1000 + 2 * t + np.arange(2)
        steps.append(np.concatenate([np.arange(10), fresh]).astype(np.int64))
        cls.append(np.r_[np.ones(10), np.zeros(2)])
        nxt.append(np.r_[np.full(10, t + 1), np.full(2, 1 << 40)])
    table = hazard.fit_table(steps, np.concatenate(cls).astype(np.int64), np.concatenate(nxt), horizon=4,
                             classes=2, samples=100)
    assert table.shape == (2, hazard.AGE_BUCKETS)
    young = hazard.age_bucket(np.array([1]))[0]
    assert table[1, young] > 0.95  # used again next step, always
    old = hazard.age_bucket(np.array([8, 64, 300]))
    assert np.all(table[0, old] < 0.05)  # a fresh row is never seen again


def _session_trace(path: Path, samples: int = 24_000, seed: int = 0) -> None:
    """Like amazon_video: each sample is (user, item); a user's samples are consecutive (a session of 1
    to 12 samples, never seen again); items follow a Zipf law over 3,000 rows."""
    rng = np.random.default_rng(seed)
    items = rng.zipf(1.3, size=samples) % 3000
    lines, user, left = [], -1, 0
    for s in range(samples):
        if left == 0:
            user, left = user + 1, int(rng.integers(1, 13))
        left -= 1
        lines.append(f"0 {user} {s}\n1 {items[s]} {s}\n")
    path.write_text("".join(lines))


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("hazard") / "sessions.trace"
    _session_trace(p)
    return p


def test_hazard_order_beats_lru_and_level_order_on_sessions(sessions: Path, tmp_path: Path) -> None:
    # users pollute an LRU cache for a full turnover after their session ends; the table learns that a
    # user row unused for a step is dead, and evicts it first
    res = simulate(open_trace(sessions), ["lru", "recmg-cache"], [FRACTION], batch=16,
                   options={"model_dir": str(tmp_path / "m"), "seed": 0, "epochs": 1})
    od = {r.policy: r.on_demand for r in res}
    assert checkpoint.load(str(tmp_path / "m")).hazard is not None
    level = simulate(open_trace(sessions), ["recmg-cache"], [FRACTION], batch=16,
                     options={"model_dir": str(tmp_path / "m"), "order": "level", "guard": False})
    assert od["recmg-cache"] < 0.9 * od["lru"]
    assert od["recmg-cache"] < level[0].on_demand


def test_checkpoint_round_trip_and_bad_table(sessions: Path, tmp_path: Path) -> None:
    steps = open_trace(sessions).steps(16).as_list()
    half = len(steps) // 2
    t = train_models(steps[:half], 500, TrainConfig(epochs=1, seed=0), which=("cache",))
    assert t.hazard is not None and t.hazard_edges is not None
    checkpoint.save(t, tmp_path / "ok")
    back = checkpoint.load(str(tmp_path / "ok"))
    assert back.hazard is not None and back.hazard_edges is not None
    assert np.array_equal(back.hazard, t.hazard)
    assert all(np.array_equal(a, b) for a, b in zip(back.hazard_edges, t.hazard_edges, strict=True))
    t.hazard_edges = (t.hazard_edges[0][:-1], t.hazard_edges[1])  # the table and its edges disagree
    checkpoint.save(t, tmp_path / "bad")
    with pytest.raises(ModelError, match="hazard class edges give"):
        checkpoint.load(str(tmp_path / "bad"))


def test_hazard_order_needs_a_table(sessions: Path, tmp_path: Path) -> None:
    steps = open_trace(sessions).steps(16).as_list()
    t = train_models(steps[: len(steps) // 2], 500, TrainConfig(epochs=1, seed=0), which=("cache",))
    t.hazard = t.hazard_edges = None  # as a checkpoint from before the table
    checkpoint.save(t, tmp_path / "old")
    with pytest.raises(ModelError, match="hazard table"):
        simulate(open_trace(sessions), ["recmg-cache"], [FRACTION], batch=16,
                 options={"model_dir": str(tmp_path / "old"), "order": "hazard"})
    # "auto" falls back to the keep-level order
    r = simulate(open_trace(sessions), ["recmg-cache"], [FRACTION], batch=16,
                 options={"model_dir": str(tmp_path / "old")})
    assert r[0].on_demand > 0
