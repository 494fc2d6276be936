"""The caching model cannot lose badly to LRU: checkpoints carry the step length its keep-levels (the
"level" order, used by checkpoints without the hazard table) are sized by, and the guard (shadow LRU
and shadow model caches) falls back to LRU order while the model loses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recmgd.cli.cmd_demo import _synth_trace
from recmgd.models import checkpoint
from recmgd.models.train import TrainConfig, train_models
from recmgd.sim import simulate
from recmgd.trace import open_trace

FRACTION = 0.1


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small trace made by the demo's generator (Meta 2021 statistics, dense rows) and a caching model
    trained on its first half and saved the way `recmg train` does (train_models + checkpoint.save)."""
    d = tmp_path_factory.mktemp("guard")
    trace_path = d / "demo.trace"
    _synth_trace(trace_path, seed=0, lookups=120_000)
    trace = open_trace(trace_path)
    steps = trace.steps(16).as_list()
    half = len(steps) // 2
    capacity = max(1, int(FRACTION * np.unique(np.concatenate(steps)).size))
    cfg = TrainConfig(epochs=1, seed=0)
    trained = train_models(steps[:half], capacity, cfg, which=("cache",))
    model = d / "model"
    checkpoint.save(trained, model)
    return trace_path, model


def _with_step_len(src: Path, dst: Path, step_len: float | None) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        dst.joinpath(f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / "config.json").read_text())
    if step_len is None:
        cfg["stats"].pop("mean_step_len", None)
    else:
        cfg["stats"]["mean_step_len"] = step_len
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _on_demand(trace_path: Path, model: Path | None, fraction: float = FRACTION,
               counters: dict[str, dict[str, int]] | None = None, **opts: object) -> dict[str, int]:
    pols = ["lru", "recmg-cache"]
    res = simulate(open_trace(trace_path), pols, [fraction], batch=16,
                   options={"model_dir": str(model) if model else None, "seed": 0, **opts})
    if counters is not None:
        counters.update({r.policy: r.counters for r in res})
    return {r.policy: r.on_demand for r in res}


def test_checkpoint_carries_step_length(demo_like: tuple[Path, Path]) -> None:
    _, model = demo_like
    stats = checkpoint.load(str(model)).stats
    assert stats["mean_step_len"] > 16  # ~180 distinct rows a step of 16 samples on this trace


def test_recmg_cache_from_checkpoint_no_worse_than_lru(demo_like: tuple[Path, Path]) -> None:
    trace_path, model = demo_like
    r = _on_demand(trace_path, model)
    assert r["recmg-cache"] <= r["lru"]


def test_old_checkpoint_without_step_length(demo_like: tuple[Path, Path], tmp_path: Path) -> None:
    trace_path, model = demo_like
    old = _with_step_len(model, tmp_path / "old", None)
    # no help from the guard: the keep-level's unit from the steps seen is as good as the checkpoint's
    r = _on_demand(trace_path, old, guard=False, order="level")
    ref = _on_demand(trace_path, model, guard=False, order="level")
    assert r["recmg-cache"] <= 1.01 * ref["recmg-cache"]


@pytest.mark.parametrize("fraction", [FRACTION, 2 * FRACTION])  # the guard on every row; on a sample
def test_guard_falls_back_to_lru_when_the_model_loses(demo_like: tuple[Path, Path], tmp_path: Path,
                                                      fraction: float) -> None:
    trace_path, model = demo_like
    bad = _with_step_len(model, tmp_path / "bad", 1.0)  # keep-levels worth ~180x too much LRU age
    off_counters: dict[str, dict[str, int]] = {}
    off = _on_demand(trace_path, bad, fraction, off_counters, guard=False, order="level")
    assert off["recmg-cache"] > 1.1 * off["lru"]  # the scenario is a real loss without the guard
    assert off_counters == {"lru": {}, "recmg-cache": {}}  # no guard, nothing of it in the results
    counters: dict[str, dict[str, int]] = {}
    on = _on_demand(trace_path, bad, fraction, counters, order="level")
    assert on["recmg-cache"] <= 1.01 * on["lru"]
    # the results say so: the guard held LRU order on most steps, and its shadows show why
    g, steps = counters["recmg-cache"], open_trace(trace_path).n_steps(16)
    assert g["guard_lru_steps"] > steps / 2 and g["guard_model_misses"] > g["guard_lru_misses"], g


def test_guard_watches_a_sample_of_rows(demo_like: tuple[Path, Path]) -> None:
    from recmgd import policy as registry
    from recmgd.models.policies import GUARD_MIN_ROWS, GUARD_SAMPLE
    from recmgd.sim.driver import drive

    trace_path, model = demo_like
    steps = open_trace(trace_path).steps(16)
    capacity = max(1, int(2 * FRACTION * np.unique(steps.keys).size))
    assert capacity >= GUARD_SAMPLE * GUARD_MIN_ROWS  # a tier big enough to sample
    p = registry.create("recmg-cache", model_dir=str(model))
    c = drive(p, steps, capacity, len(steps) // 2, path="python")
    shadow = p.guard_stats["lru_misses"]  # over the whole run, warm-up included
    assert p._shadows[0].capacity == capacity // GUARD_SAMPLE
    # the LRU shadow sees about one row in GUARD_SAMPLE (8): over both halves that is about a quarter of
    # the scored half's misses; watching every row, it would miss about twice as many as that half
    assert 0 < shadow < c.on_demand / 2


def test_guard_sample_bounds_the_shadows_on_large_tiers() -> None:
    """One row in GUARD_SAMPLE on ordinary tiers; on tiers so large that a shadow would pass
    GUARD_MAX_ROWS, one in a larger power of two, so each shadow holds at most GUARD_MAX_ROWS rows (the
    C step gets the same sample: the lockstep tests run on the ordinary tiers)."""
    from recmgd.models.policies import GUARD_MAX_ROWS, GUARD_SAMPLE, GUARD_SAMPLE_MAX, guard_sample

    assert guard_sample(100_000) == GUARD_SAMPLE
    # the C step's guard_sample is an int32: past 2^46 slots the sample stops at GUARD_SAMPLE_MAX
    assert GUARD_SAMPLE_MAX < 2**31
    assert guard_sample(GUARD_SAMPLE_MAX * GUARD_MAX_ROWS) == GUARD_SAMPLE_MAX
    assert guard_sample(1 << 62) == GUARD_SAMPLE_MAX
    assert guard_sample(GUARD_SAMPLE * GUARD_MAX_ROWS) == GUARD_SAMPLE
    assert guard_sample(GUARD_SAMPLE * GUARD_MAX_ROWS + GUARD_SAMPLE) == 2 * GUARD_SAMPLE
    for capacity in (10**6, 10**7, 10**9):
        s = guard_sample(capacity)
        assert s & (s - 1) == 0 and capacity // s <= GUARD_MAX_ROWS < capacity // (s // 2), (capacity, s)
