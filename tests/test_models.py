"""The learned policies: features, networks (numpy twins match torch), checkpoints, policies, recmg train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recmgd import policy as registry
from recmgd.errors import ModelError
from recmgd.keys import make_keys
from recmgd.models import checkpoint
from recmgd.models.features import N_CAND_FEATURES, N_FEATURES, KeyIndex, RowHistory, Stream
from recmgd.models.nets import CacheNet, NumpyCacheNet, NumpyPrefetchNet, PrefetchNet
from recmgd.models.train import TrainConfig, train_models
from recmgd.models.voyager_net import NumpyVoyager, VoyagerNet
from recmgd.policy import StepView
from recmgd.sim.driver import drive
from recmgd.trace import Steps

LEARNED = ("recmg-cache", "recmg-prefetch", "recmg", "voyager")


def zipf_steps(seed: int = 0, n_steps: int = 160, per_step: int = 24, universe: int = 400) -> Steps:
    """Two tables; table 0 rows in short runs (like users), table 1 Zipf-popular (like items)."""
    rng = np.random.default_rng(seed)
    out = []
    user = 0
    for _ in range(n_steps):
        if rng.random() < 0.5:
            user += 1
        items = np.unique(np.minimum(rng.zipf(1.3, per_step), universe) - 1)
        rng.shuffle(items)
        keys = np.concatenate([make_keys(0, np.array([user])), make_keys(1, items)])
        out.append(keys)
    return Steps.from_list(out)


def small_cfg(**kw: object) -> TrainConfig:
    base = {"epochs": 1, "batch": 256, "max_samples": 60, "voyager_epochs": 1, "voyager_seq": 16}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_key_index_assigns_dense_ids_in_order() -> None:
    idx = KeyIndex()
    a = idx.get_or_add(np.array([50, 7, 9], np.int64))
    b = idx.get_or_add(np.array([7, 1 << 41, 50], np.int64))
    assert a.tolist() == [0, 1, 2] and b.tolist() == [1, 3, 0]
    assert idx.lookup(np.array([9, 12345], np.int64)).tolist() == [2, -1]
    assert idx.keys_of(np.array([3, 0])).tolist() == [1 << 41, 50]
    for i in range(3000):  # growth
        idx.get_or_add(np.array([10_000 + i], np.int64))
    assert len(idx) == 3004 and idx.all_keys()[-1] == 12_999


def test_row_history_features() -> None:
    h = RowHistory()
    k = make_keys(np.array([0, 1]), np.array([5, 5]))
    ids = h.ids(k)
    f0 = h.features(ids, 0)
    assert f0.shape == (2, N_FEATURES) and f0[:, 0].tolist() == [1.0, 1.0]  # both new
    h.update(ids, 0)
    h.update(ids[:1], 3)
    h.update(ids[:1], 10)
    f = h.features(ids, 12)
    assert f[0, 0] == 0 and f[0, 1] == pytest.approx(np.log1p(2))  # gap since last use
    assert f[0, 2] == pytest.approx(np.log1p(3))  # count
    assert f[0, 4] == pytest.approx(np.log1p(7)) and f[0, 5] == pytest.approx(np.log1p(3))  # prev gaps
    assert f[1, 1] == pytest.approx(np.log1p(12)) and f[1, 4] == 0
    assert h.tables(ids).tolist() == [0, 1]
    # features depend on history, never on the id: a renamed row gets the same features
    h2 = RowHistory()
    ids2 = h2.ids(make_keys(np.array([0, 1]), np.array([999, 77])))
    h2.update(ids2, 0)
    h2.update(ids2[:1], 3)
    h2.update(ids2[:1], 10)
    assert np.allclose(h2.features(ids2, 12), f)


def test_stream_candidates_follow_previous_occurrences() -> None:
    st = Stream(depth=2)
    st.append(np.array([0, 1, 2]), 0)
    st.append(np.array([3, 0, 4]), 1)
    st.append(np.array([5]), 2)
    cand, f = st.candidates(np.array([0, 3]), 3)
    # 0 last seen at position 4 -> successors 5 (pos 5); 3 at position 3 -> 0, 4
    assert cand.tolist() == [0, 4, 5]
    assert f.shape == (3, N_CAND_FEATURES)
    assert f[1, 0] == pytest.approx(np.log1p(2))  # 4 proposed by both triggers
    none, _ = st.candidates(np.array([9]), 3)
    assert len(none) == 0


def test_numpy_twins_match_torch() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, N_FEATURES)).astype(np.float32)
    t = rng.integers(0, 4, 9)
    net = CacheNet()
    with torch.no_grad():
        ref = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.allclose(NumpyCacheNet(net)(x, t), ref, atol=1e-5)

    p = PrefetchNet(20, dim=8, queries=3)
    ids = rng.integers(0, 21, 9)
    npn = NumpyPrefetchNet(p)
    with torch.no_grad():
        r = p.rep(torch.from_numpy(ids), torch.from_numpy(x), torch.from_numpy(t))
        q = p.query(r[:4].mean(0, keepdim=True), r[4:].mean(0, keepdim=True))
        cf = torch.from_numpy(x[:, :N_CAND_FEATURES].copy()).unsqueeze(0)
        s = p.score(q, r.unsqueeze(0), torch.from_numpy(x).unsqueeze(0), cf)[0].numpy()
    rn = npn.rep(ids, x, t)
    assert np.allclose(rn, r.numpy(), atol=1e-5)
    qn = npn.query(rn[:4].mean(0), rn[4:].mean(0))
    assert np.allclose(npn.score(qn, rn, x, x[:, :N_CAND_FEATURES]), s, atol=1e-4)

    v = VoyagerNet(30, np.arange(30), hidden=16)
    seq = rng.integers(0, 31, 7)
    with torch.no_grad():
        logits, _ = v(torch.from_numpy(seq).unsqueeze(0))
    nv = NumpyVoyager(v)
    nv.feed(seq)
    top, lp = nv.top(5)
    want = torch.log_softmax(logits[0, -1, :30], -1).numpy()  # 'unknown' excluded by top()
    assert set(top.tolist()) == set(np.argsort(-want)[:5].tolist())


def test_checkpoint_round_trip_and_version_errors(tmp_path: Path) -> None:
    steps = zipf_steps(n_steps=60).as_list()
    t = train_models(steps, 40, small_cfg(), which=("cache", "prefetch", "voyager"))
    d = checkpoint.save(t, tmp_path / "ck")
    t2 = checkpoint.load(d)
    assert t2.capacity == 40 and t2.cache is not None and t2.prefetch is not None and t2.voyager is not None
    for a, b in zip(t.cache.state_dict().values(), t2.cache.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(t2.prefetch_keys, t.prefetch_keys)
    cfg = json.loads((d / "config.json").read_text())
    cfg["feature_version"] = 999
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="feature version 999"):
        checkpoint.load(d)
    cfg["feature_version"] = t2.config and checkpoint.FEATURE_VERSION
    cfg["format_version"] = 0
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="format version 0"):
        checkpoint.load(d)
    with pytest.raises(ModelError, match="no config.json"):
        checkpoint.load(tmp_path / "nothing")


def test_policies_registered_and_learned() -> None:
    names = registry.available()
    for n in LEARNED:
        assert n in names
        p = registry.create(n, prefetch_budget=4, seed=1, model_dir=None, threads=1, epochs=1, region=8)
        assert p.learned and p.name == n


def _run(p: registry.Policy, steps: Steps, capacity: int) -> list[tuple[list[int], list[int], list[int]]]:
    """A strict reference driver: checks every decision against the protocol."""
    lst = steps.as_list()
    p.fit(lst[: len(lst) // 2], capacity)
    p.reset(capacity)
    res: set[int] = set()
    log = []
    for b, keys in enumerate(lst):
        hit = np.array([k in res for k in keys.tolist()], bool)
        d = p.observe(StepView(b, keys, hit))
        ev, ad, pf = d.evict.tolist(), d.admit.tolist(), d.prefetch.tolist()
        assert set(ev) <= res, "evicts a row that is not resident"
        assert set(ad) <= set(keys[~hit].tolist()), "admits a row that was not missed"
        assert not (set(pf) & res) and not (set(pf) & set(keys.tolist())), "prefetches a resident/read row"
        res -= set(ev)
        res |= set(ad) | set(pf)
        assert len(res) <= capacity
        log.append((ev, ad, pf))
    return log


@pytest.mark.parametrize("name", LEARNED)
def test_policy_protocol_and_determinism(name: str) -> None:
    steps = zipf_steps(seed=3, n_steps=120)
    opts = {"prefetch_budget": 4, "seed": 7, "epochs": 1}
    a = _run(registry.create(name, **opts), steps, 30)
    b = _run(registry.create(name, **opts), steps, 30)
    assert a == b


def test_step_larger_than_capacity() -> None:
    steps = zipf_steps(seed=4, n_steps=80, per_step=40)
    for name in LEARNED:
        _run(registry.create(name, prefetch_budget=8, epochs=1), steps, 5)


def test_rejected_keeps_residency_exact() -> None:
    steps = zipf_steps(seed=5, n_steps=40).as_list()
    p = registry.create("recmg-cache", epochs=1)
    p.fit(steps[:20], 20)
    p.reset(20)
    d = p.observe(StepView(0, steps[0], np.zeros(len(steps[0]), bool)))
    p.rejected(d.admit)
    assert p.res.n == 0


def test_checkpoint_reused_by_policy(tmp_path: Path) -> None:
    steps = zipf_steps(seed=6, n_steps=80)
    d = tmp_path / "m"
    p = registry.create("recmg", model_dir=str(d), epochs=1)
    a = _run(p, steps, 25)  # trains and saves
    assert (d / "config.json").is_file()
    q = registry.create("recmg", model_dir=str(d), epochs=1)
    assert q.trained is not None  # loaded, fit() will not retrain
    assert _run(q, steps, 25) == a
    with pytest.raises(ModelError, match="no voyager model"):
        registry.create("voyager", model_dir=str(d))


@pytest.mark.parametrize(("threshold", "probe", "idle"), [(1e9, 8, True), (1e9, 1, False), (-1e9, 8, False)])
def test_prefetcher_throttled_while_it_proposes_nothing(threshold: float, probe: int, idle: bool) -> None:
    from recmgd.models.policies import PREFETCH_IDLE_STEPS

    steps = zipf_steps(seed=9, n_steps=400)
    # the Python step (the reference; tests/test_models_native_step.py holds the C step to it)
    p = registry.create("recmg", prefetch_budget=4, epochs=1, prefetch_threshold=threshold,
                        prefetch_probe=probe, native_step=False)
    calls = []
    inner = p._prefetch_recmg

    def counted(b: int, ids: np.ndarray, ann: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(b)
        return inner(b, ids, ann)

    p._prefetch_recmg = counted  # type: ignore[method-assign]
    c = drive(p, steps, 30, 200, path="python")
    asked = len(calls)
    if idle:  # never proposes: every step until idle, then every probe-th step
        assert c.prefetch_issued == 0
        probed = sum(1 for b in range(PREFETCH_IDLE_STEPS, 400) if b % probe == 0)
        assert asked == PREFETCH_IDLE_STEPS + probed
        assert asked < 400 // 2
    else:  # asked every step: no throttling, or it always has something to propose
        assert asked == 400


def test_simulator_drives_learned_policies() -> None:
    steps = zipf_steps(seed=8, n_steps=100)
    lru = drive(registry.create("lru"), steps, 30, 50, path="python")
    c = drive(registry.create("recmg-cache", epochs=2), steps, 30, 50, path="python")
    assert c.lookups == lru.lookups and c.on_demand > 0


def test_recmg_train_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recmgd.cli.recmg import main

    lines = []
    rng = np.random.default_rng(0)
    for s in range(600):
        lines.append(f"0 {s // 5} {s}")
        lines.append(f"1 {int(min(rng.zipf(1.3), 300))} {s}")
    tr = tmp_path / "t.trace"
    tr.write_text("\n".join(lines) + "\n")
    out = tmp_path / "ck"
    rc = main(["train", str(tr), "--out", str(out), "--epochs", "1", "--quiet", "--fraction", "0.2"])
    assert rc == 0
    assert capsys.readouterr().out == ""
    cfg = checkpoint.read_config(out)
    assert set(cfg["models"]) == {"cache", "prefetch"}  # type: ignore[arg-type]
    assert main(["train", str(tmp_path / "missing.trace"), "--out", str(out), "--quiet"]) != 0
    # a real process: --quiet prints nothing at all (no progress, no INFO log lines) when all goes well
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "recmgd.cli.recmg", "train", str(tr), "--out", str(tmp_path / "q"),
           "--epochs", "1", "--quiet", "--fraction", "0.2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
