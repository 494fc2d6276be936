"""The learned policies' C step (recmgd.models.native_step) against the Python step it replaces.

Both are driven in lockstep over the shared traces from checkpoints `recmg train` wrote: every step's
decision (evictions in order, admissions, prefetches) must be the same, with the driver sometimes
refusing an insertion (``rejected``), and so must the guard's counters and ``early_victims``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recmgd import policy as registry
from recmgd.errors import PolicyError
from recmgd.keys import make_keys
from recmgd.models.policies import GUARD_MIN_ROWS, GUARD_SAMPLE
from recmgd.policy import StepView
from recmgd.sim.runner import capacity_for
from recmgd.simcore import DAEMON_LOAD, HOLDER_MOVER
from recmgd.trace import open_trace


def _train(trace: Path, out: Path, batch: int, fraction: float) -> str:
    cmd = [sys.executable, "-m", "recmgd.cli.recmg", "train", str(trace), "--out", str(out), "-b", str(batch),
           "--fraction", str(fraction), "--epochs", "1", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.fixture(scope="module")
def obd_model(shared_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _train(shared_traces / "obd_random.trace", tmp_path_factory.mktemp("obd"), 8, 0.2)


@pytest.fixture(scope="module")
def video_model(shared_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _train(shared_traces / "amazon_video.trace", tmp_path_factory.mktemp("video"), 256, 0.1)


def _announced(steps: list[np.ndarray], b: int, lookahead: int) -> np.ndarray:
    """The keys of steps b+1..b+lookahead, deduplicated, nearest step first (as the lookahead driver
    announces them)."""
    nxt = steps[b + 1:b + 1 + lookahead]
    if not lookahead or not nxt:
        return np.zeros(0, np.int64)
    ids = np.concatenate(nxt)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def _lockstep(name: str, steps: list[np.ndarray], capacity: int, reject_every: int = 0, lookahead: int = 0,
              prefetched: list[np.ndarray] | None = None, in_lru: list[bool] | None = None,
              guard: dict[str, int] | None = None, **opts: object) -> tuple[int, int]:
    """Drive the C step and the Python step through the same views (with ``lookahead``, the next steps'
    keys announced); every decision must match. Returns (misses, prefetches issued) of the run; each
    step's prefetches are appended to ``prefetched`` when given, and whether the guard held the cache in
    LRU order after it to ``in_lru``; ``guard`` gets the guard's counters at the end."""
    opts.setdefault("history_window", 0)  # the Python step keeps every row's history
    c = registry.create(name, native_step=True, **opts)
    py = registry.create(name, native_step=False, **opts)
    c.reset(capacity)
    py.reset(capacity)
    assert c._native is not None and py._native is None  # type: ignore[attr-defined]
    assert not c.early_admission and py.early_admission
    resident: set[int] = set()
    misses = issued = 0
    for b, keys in enumerate(steps):
        hit = np.fromiter((k in resident for k in keys.tolist()), bool, len(keys))
        misses += int((~hit).sum())
        ann = _announced(steps, b, lookahead)
        view = StepView(b, keys, hit, announced=ann)
        dc, dp = c.observe(view), py.observe(view)
        for field in ("evict", "admit"):
            assert getattr(dc, field).tolist() == getattr(dp, field).tolist(), (b, field)
        # the same rows to prefetch; their order (best first) may differ between two candidates whose
        # scores are within float rounding of each other: the Python step's prefetcher scores in numpy
        assert sorted(dc.prefetch.tolist()) == sorted(dp.prefetch.tolist()), (b, "prefetch")
        if opts.get("prefetch_announced", True):  # the driver fetches announced rows itself
            assert not np.isin(dc.prefetch, ann).any(), b
        if prefetched is not None:
            prefetched.append(dc.prefetch)
        if in_lru is not None:
            in_lru.append(bool(c.guard_stats["lru_order"]))
        resident.difference_update(dc.evict.tolist())
        ins = dc.admit.tolist() + dc.prefetch.tolist()
        if reject_every and b % reject_every == 0 and ins:
            refused = np.asarray(ins[-1:], np.int64)  # the fill budget ran out for the last one
            c.rejected(refused)
            py.rejected(refused)
            ins = ins[:-1]
        resident.update(ins)
        issued += len(dc.prefetch)
        assert len(resident) <= capacity
    assert c.guard_stats == py.guard_stats
    if guard is not None:
        guard.update(c.guard_stats)
    assert c.prefetch_stats == py.prefetch_stats
    reading = steps[-1][:3]
    assert c.early_victims(5, reading).tolist() == py.early_victims(5, reading).tolist()
    gone = c.early_victims(2, reading)
    c.evicted(gone)
    py.evicted(gone)
    assert c.resident_keys(gone).tolist() == py.resident_keys(gone).tolist() == [False] * len(gone)
    return misses, issued


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2])
def test_c_step_decides_as_the_python_step_on_obd_random(shared_traces: Path, obd_model: str,
                                                          fraction: float) -> None:
    steps = open_trace(str(shared_traces / "obd_random.trace")).steps(8).as_list()
    cap = capacity_for(fraction, len(np.unique(np.concatenate(steps))))
    for name in ("recmg", "recmg-cache", "recmg-prefetch"):
        _lockstep(name, steps, cap, reject_every=7, model_dir=obd_model, prefetch_budget=8, seed=0)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2])
def test_c_step_decides_as_the_python_step_on_amazon_video(shared_traces: Path, video_model: str,
                                                           fraction: float) -> None:
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(256).as_list()
    cap = capacity_for(fraction, len(np.unique(np.concatenate(steps))))
    # the first 300 steps of 256 samples (~75k rows): warm-up, eviction and the guard at work
    misses, _ = _lockstep("recmg", steps[:300], cap, reject_every=11, model_dir=video_model,
                          prefetch_budget=16, seed=0)
    assert misses > 0


def test_rows_read_in_lru_order_keep_their_class_in_both_steps(shared_traces: Path, video_model: str) -> None:
    """While the guard holds LRU order, a resident row read outside its sample is not scored (its use
    renews only its stamp); when the guard lets go, the hazard order reads the class of its last scored
    use. amazon_video (the model fits), then zipf steps over other tables (it does not: the guard takes
    LRU order), then amazon_video again (the guard lets go): the two steps decide alike throughout."""
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(256).as_list()
    rng = np.random.default_rng(0)
    zipf = [np.unique(make_keys(rng.integers(100, 108, 1024), (rng.zipf(1.1, 1024) - 1) % 100_000))
            for _ in range(80)]
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    assert cap >= GUARD_SAMPLE * GUARD_MIN_ROWS  # the guard watches a sample of the rows
    in_lru: list[bool] = []
    guard: dict[str, int] = {}
    _lockstep("recmg", steps[:120] + zipf + steps[120:300], cap, reject_every=11, model_dir=video_model,
              prefetch_budget=16, seed=0, in_lru=in_lru, guard=guard)
    lets_go = [b for b in range(1, len(in_lru)) if in_lru[b - 1] and not in_lru[b]]
    assert not any(in_lru[:120]) and any(in_lru[120:200]) and lets_go and lets_go[0] > 200, in_lru
    # the zipf steps' rows read resident in LRU order, 7 in 8 of them outside the sample
    assert guard["stamp_only"] > 50 * guard["lru_steps"], guard


def test_no_budget_to_prefetch_keeps_no_prefetching_model(shared_traces: Path, video_model: str) -> None:
    """At a prefetch budget of 0 (the daemon's default) the prefetching model is never asked: a loaded
    policy keeps no copy of it nor of its row keys (both grow with the model's rows), and both steps
    still decide alike and prefetch nothing; with a budget they are kept."""
    none = registry.create("recmg", model_dir=video_model, prefetch_budget=0)
    some = registry.create("recmg", model_dir=video_model, prefetch_budget=16)
    assert none._np_pref is None and some._np_pref is not None  # type: ignore[attr-defined]
    assert len(none._model_keys) == 0 and len(some._model_keys) > 0  # type: ignore[attr-defined]
    assert none.trained.prefetch_keys is None and some.trained.prefetch_keys is not None  # type: ignore[attr-defined]
    # nor a stream ring in the C step (never written without a budget)
    for p in (none, some):
        p.reset(1000)
    assert none.native_stats["ring_bytes"] == 0  # type: ignore[attr-defined,index]
    assert some.native_stats["ring_bytes"] > 0  # type: ignore[attr-defined,index]
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(256).as_list()[:200]
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    misses, issued = _lockstep("recmg", steps, cap, reject_every=9, model_dir=video_model, prefetch_budget=0,
                               seed=0)
    assert misses > 0 and issued == 0


def _twins_decide_alike(pols: list, steps: list[np.ndarray]) -> tuple[int, int]:
    """Drive two policies through the same steps (residency as the first one's decisions leave it) and
    assert at every step that they evict, admit and prefetch the same keys; returns (evicted,
    prefetched) in all."""
    resident: set[int] = set()
    evicted = prefetched = 0
    for b, keys in enumerate(steps):
        hit = np.fromiter((k in resident for k in keys.tolist()), bool, len(keys))
        view = StepView(b, keys, hit)
        da, db = pols[0].observe(view), pols[1].observe(view)
        for field in ("evict", "admit", "prefetch"):
            assert getattr(da, field).tolist() == getattr(db, field).tolist(), (b, field)
        resident.difference_update(da.evict.tolist())
        resident.update(da.admit.tolist() + da.prefetch.tolist())
        evicted += len(da.evict)
        prefetched += len(da.prefetch)
    return evicted, prefetched


def test_c_step_plan_in_avx2_decides_as_the_portable_one(shared_traces: Path, video_model: str) -> None:
    """The eviction plan's AVX2 filter of the residents and its portable C twin: the same decisions at
    every step (the tier large enough for the sampled threshold, the guard's shadows planned too)."""
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(64).as_list()
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    pols = [registry.create("recmg", model_dir=video_model, prefetch_budget=8, seed=0, history_window=0)
            for _ in range(2)]
    for p in pols:
        p.reset(cap)
    native = [p._native for p in pols]  # type: ignore[attr-defined]
    assert native[0] is not None and native[1] is not None
    if not native[0].set_simd(True):
        pytest.skip("no AVX2 on this CPU: only the portable plan runs")
    assert not native[1].set_simd(False)
    evicted, _ = _twins_decide_alike(pols, steps)
    assert evicted > cap  # the plan chose many victims
    assert pols[0].guard_stats == pols[1].guard_stats


@pytest.mark.parametrize("budget", [8, 0])
@pytest.mark.parametrize("window", [0, 64])
def test_once_used_steps_decide_alike_whatever_their_base(shared_traces: Path, video_model: str,
                                                          window: int, budget: int) -> None:
    """A row used once keeps its step as an int32 offset from a base that moves every ``rs_span`` steps
    (2^30 by default; 5 here, so it moves every few steps): the rows used once before the new base get
    their full records then. Decisions, the guard and the prefetcher are the same as with the default
    span, with the recency window off (every once-used row lives on, many past any base) and on. With
    the window and no budget to prefetch, rows used once move to the once table, whose offsets follow
    the base (negative ones too: a row whose use lies behind the base gets a record when it is back)."""
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(64).as_list()[:600]
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    pols = [registry.create("recmg", model_dir=video_model, prefetch_budget=budget, seed=0,
                            history_window=window, prefetch_threshold=-1e9) for _ in range(2)]
    for p in pols:
        p.reset(cap)
    native = [p._native for p in pols]  # type: ignore[attr-defined]
    assert native[0] is not None and native[1] is not None
    native[1].set_rs_span(5)
    with pytest.raises(PolicyError):
        native[1].set_rs_span(1)
    evicted, prefetched = _twins_decide_alike(pols, steps)
    assert evicted > cap and (prefetched > 0) == (budget > 0)
    assert pols[0].guard_stats == pols[1].guard_stats
    s0, s1 = native[0].stats(), native[1].stats()
    assert s0["rows"] == s1["rows"] and s0["forgotten"] == s1["forgotten"]
    assert s0["once_rows"] == s1["once_rows"] and s0["moved"] == s1["moved"]
    assert (s0["moved"] > 0) == (budget == 0 and window > 0)
    # the moved base gave rows used once long ago their records (the default span never moved)
    assert s1["records"] > s0["records"]


def test_c_step_prefetches_when_the_model_proposes(shared_traces: Path, video_model: str) -> None:
    """With a threshold every candidate passes, the C prefetcher's scoring and ranking are exercised
    (and still equal the Python one's)."""
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(256).as_list()
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    _, issued = _lockstep("recmg", steps[:60], cap, model_dir=video_model, prefetch_budget=16, seed=0,
                          prefetch_threshold=-1e9)
    assert issued > 0


def test_announced_rows_seed_the_prefetcher_in_both_steps(shared_traces: Path, video_model: str) -> None:
    """With lookahead, the announced rows' stream successors are candidates too (issue #15): the C and
    the Python step still decide alike, never prefetch an announced row, and prefetch other rows than
    with the announced rows ignored (``prefetch_announced`` off)."""
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(16).as_list()[:400]
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    runs: dict[bool, list[np.ndarray]] = {}
    for on in (True, False):
        runs[on] = []
        _, issued = _lockstep("recmg", steps, cap, reject_every=5, lookahead=2, prefetched=runs[on],
                              model_dir=video_model, prefetch_budget=4, seed=0, prefetch_threshold=-1e9,
                              prefetch_announced=on)
        assert issued > 0
    assert any(a.tolist() != b.tolist() for a, b in zip(runs[True], runs[False], strict=True))


def test_c_step_bad_parameters_are_one_clear_error(obd_model: str) -> None:
    p = registry.create("recmg", model_dir=obd_model)
    p.reset(0)  # no tier: no C state yet
    assert p._native is None  # type: ignore[attr-defined]
    p.reset(4)
    assert p._native is not None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="refused its parameters"):
        p.levels = 0
        p.reset(4)


def test_a_policy_loaded_from_a_checkpoint_never_imports_torch(obd_model: str) -> None:
    """The daemon's side: a learned policy from `recmg train`'s checkpoint, stepped, with the daemon's
    modules imported, and torch never loaded (only training needs it)."""
    code = (
        "import sys, numpy as np\n"
        "import recmgd.daemon.loop, recmgd.daemon.service\n"
        "from recmgd import policy\n"
        "from recmgd.policy import StepView\n"
        f"p = policy.create('recmg', model_dir={obd_model!r}, prefetch_budget=8)\n"
        "p.reset(10)\n"
        "for b in range(20):\n"
        "    keys = np.arange(b, b + 6, dtype=np.int64)\n"
        "    p.observe(StepView(b, keys, p.resident_keys(keys)))\n"
        "assert p._native is not None\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_inference_arrays_decide_as_the_torch_checkpoint(shared_traces: Path, obd_model: str) -> None:
    """Loaded through torch (the state dicts) or from inference.npz: the same models, the same steps."""
    from recmgd.models import checkpoint

    steps = open_trace(str(shared_traces / "obd_random.trace")).steps(8).as_list()[:200]
    a = registry.create("recmg", model_dir=obd_model, prefetch_budget=8)
    b = registry.create("recmg", prefetch_budget=8)
    b._install(checkpoint.load(obd_model))  # type: ignore[attr-defined]
    for p in (a, b):
        p.reset(20)
    for i, keys in enumerate(steps):
        hit = a.resident_keys(keys)  # type: ignore[attr-defined]
        da, db = a.observe(StepView(i, keys, hit)), b.observe(StepView(i, keys, hit))
        assert da.evict.tolist() == db.evict.tolist() and da.admit.tolist() == db.admit.tolist()
        assert da.prefetch.tolist() == db.prefetch.tolist()


def test_c_step_takes_empty_steps_and_unknown_keys(obd_model: str) -> None:
    p = registry.create("recmg", model_dir=obd_model, prefetch_budget=8)
    p.reset(3)
    empty = np.zeros(0, np.int64)
    d = p.observe(StepView(0, empty, np.zeros(0, bool)))  # before any row was seen
    assert len(d.evict) == len(d.admit) == len(d.prefetch) == 0
    keys = np.asarray([7, 1 << 40, 5], np.int64)
    assert p.observe(StepView(1, keys, np.zeros(3, bool))).admit.tolist() == keys.tolist()
    p.rejected(np.asarray([99, 5], np.int64))  # 99 never seen: ignored
    assert p.resident_keys(keys).tolist() == [True, True, False]
    assert sorted(p.early_victims(9, empty).tolist()) == [7, 1 << 40]
    d = p.observe(StepView(2, np.asarray([8, 9], np.int64), np.zeros(2, bool)))
    assert len(d.evict) == 1 and len(d.admit) == 2  # 3 slots: one of 7, 1 << 40 goes


def _windowed_run(steps: list[np.ndarray], capacity: int, window: int, check_every: int = 0,
                  **opts: object) -> tuple[int, int, dict[str, int]]:
    """The C step alone with ``history_window``; its decisions must stay valid. Every ``check_every``
    steps, the rows with a history must be at most the tier and the guard's shadows (3 x capacity) plus
    the rows seen in the last 3 x window steps. Returns (misses, peak rows with a history, last stats with
    the peak of the once table's rows added as ``peak_once_rows``)."""
    p = registry.create("recmg", history_window=window, **opts)
    p.reset(capacity)
    resident: set[int] = set()
    misses = peak = peak_once = 0
    for b, keys in enumerate(steps):
        hit = np.fromiter((k in resident for k in keys.tolist()), bool, len(keys))
        misses += int((~hit).sum())
        d = p.observe(StepView(b, keys, hit))
        assert set(d.evict.tolist()) <= resident, b
        resident.difference_update(d.evict.tolist())
        resident.update(d.admit.tolist() + d.prefetch.tolist())
        assert len(resident) <= capacity
        st = p.native_stats  # type: ignore[attr-defined]
        assert st is not None
        peak = max(peak, st["rows"])
        peak_once = max(peak_once, st["once_rows"])
        if check_every and b % check_every == 0:
            recent = len(np.unique(np.concatenate(steps[max(0, b + 1 - 3 * window): b + 1])))
            assert st["rows"] <= 3 * capacity + recent, (b, st["rows"], recent)
            # the census of the rows with an id adds up to the step's own counts
            c = p.id_census()  # type: ignore[attr-defined]
            assert c["ids"] == st["rows"] - st["once_rows"], (b, c, st)
            assert c["ids"] == c["resident"] + c["shadow_only"] + c["other_records"] + c["other_once"] + \
                c["other_never"], (b, c)
            assert c["resident"] == st["resident"] == len(resident), (b, c, st)
            records = c["resident_records"] + c["shadow_records"] + c["other_records"]
            assert records == st["records"], (b, c, st)
    return misses, peak, {**st, "peak_once_rows": peak_once}


@pytest.mark.parametrize("budget", [8, 0])
@pytest.mark.parametrize("trace", ["obd_random", "amazon_video"])
def test_history_window_bounds_the_state_and_keeps_fetches_close(shared_traces: Path, trace: str, budget: int,
                                                                 request: pytest.FixtureRequest) -> None:
    """With a short recency window (64 steps, far below the default) rows are forgotten and recycled,
    the rows with a history stay bounded by the tier plus the window's rows while the trace goes on,
    and on-demand fetches stay within 1% of the unbounded run's at 10%. With no budget to prefetch,
    rows used once move to the once table (their ids given back) and come back from it."""
    batch, model = (8, request.getfixturevalue("obd_model")) if trace == "obd_random" else (
        256, request.getfixturevalue("video_model"))
    steps = open_trace(str(shared_traces / f"{trace}.trace")).steps(batch).as_list()
    distinct = len(np.unique(np.concatenate(steps)))
    cap = capacity_for(0.1, distinct)
    opts = {"model_dir": model, "prefetch_budget": budget, "seed": 0}
    full, full_peak, full_st = _windowed_run(steps, cap, 0, **opts)
    assert full_st["forgotten"] == 0 and full_peak == distinct
    got, peak, st = _windowed_run(steps, cap, 64, check_every=50, **opts)
    assert st["forgotten"] > 0
    assert full_st["moved"] == full_st["once_rows"] == 0  # no window: no once table
    if budget == 0:  # moved, some back or forgotten (moved more than were ever there), the table counted
        assert st["moved"] > st["peak_once_rows"] > 0 and st["once_bytes"] > 0, st
        assert 0 < st["back"] < st["moved"], st
    else:
        assert st["moved"] == st["once_rows"] == st["once_bytes"] == st["back"] == 0, st
    assert abs(got - full) <= 0.01 * full, (got, full)
    if trace == "amazon_video":  # many rows seen once: the window keeps a fraction of them
        assert peak < distinct // 2, (peak, distinct)
    # rows used once keep no history record (the lockstep tests show it is rebuilt exactly): on
    # amazon_video most rows are read once; the parts the step counts are within its total
    for s in (full_st, st):
        assert 0 < s["records"] <= s["rows"], s
        parts = s["map_bytes"] + s["row_bytes"] + s["record_bytes"] + s["ring_bytes"] + s["once_bytes"]
        assert 0 < parts <= s["bytes"], s
    if trace == "amazon_video":
        assert full_st["records"] < full_st["rows"] // 2, full_st


def test_history_window_default_comes_from_the_model(obd_model: str) -> None:
    p = registry.create("recmg", model_dir=obd_model)
    auto = p.history_window_steps()  # type: ignore[attr-defined]
    assert auto >= 4 * 1024  # four of the features' longest half-life
    assert registry.create("recmg", model_dir=obd_model, history_window=0).history_window_steps() == 0  # type: ignore[attr-defined]
    assert registry.create("recmg", model_dir=obd_model, history_window=1).history_window_steps() > 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="history_window"):
        registry.create("recmg", model_dir=obd_model, history_window=-1)


def _build_check(tmp_path: Path, name: str, *sources: str) -> Path:
    """native/policy/tests/NAME.c (with the policy sources named) built with AddressSanitizer and UBSan
    where the compiler has them (the reference check runs either way)."""
    policy = Path(__file__).resolve().parent.parent / "native" / "policy"
    exe = tmp_path / name
    cc = os.environ.get("CC", "cc")
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    probe = subprocess.run([cc, "-x", "c", *flags, "-o", str(exe), "-"],
                           input="int main(void) { return 0; }\n", capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        flags = []  # no sanitizers here: the reference check still runs
    cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", *flags, f"-I{policy}", "-o", str(exe),
           str(policy / "tests" / f"{name}.c"), *(str(policy / src) for src in sources)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return exe


def test_stream_ring_runs_give_each_position_its_step_under_sanitizers(tmp_path: Path) -> None:
    """The stream ring's runs (native/policy/runs.h: a step's first position, instead of a step a
    position) against a per-position reference: empty steps, steps that wrap the ring on their own, runs
    that outgrow their first allocation (native/policy/tests/runs_check.c)."""
    exe = _build_check(tmp_path, "runs_check")
    most = {}
    for steps, seed, ring in ((6000, 1, 257), (12000, 2, 8192), (3000, 3, 1)):
        r = subprocess.run([str(exe), str(steps), str(seed), str(ring)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith(f"runs_check: ok {steps} steps"), r.stdout
        most[ring] = int(r.stdout.split()[-2])
    assert most[8192] > 1024  # the runs grew past their first allocation
    assert most[1] <= 2  # a one-position ring: the oldest run and the newest


def test_once_table_keeps_each_rows_step_under_sanitizers(tmp_path: Path) -> None:
    """The once-used rows' table (native/policy/once.h) against a reference under AddressSanitizer and
    UBSan (native/policy/tests/once_check.c): puts, takes, partial and full expiry turns, and shifts of
    the base that move entries out of int32, the whole table scanned every 500 operations."""
    exe = _build_check(tmp_path, "once_check", "once.c")
    for seed in (1, 2, 3):
        r = subprocess.run([str(exe), "200000", str(seed)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("once_check: ok 200000 ops"), r.stdout
        expired, shifted = int(r.stdout.split()[4]), int(r.stdout.split()[6])
        assert expired > 10000 and shifted > 1000, r.stdout


def test_key_map_deletes_and_reuses_ids_under_sanitizers(tmp_path: Path) -> None:
    """The recency window's key map: deletion (backward shift) and id reuse against a reference, in C
    with AddressSanitizer and UBSan (native/policy/tests/idmap_check.c)."""
    exe = _build_check(tmp_path, "idmap_check", "idmap.c")
    # the default (half load, slots doubled) and the daemon's (3/4, grown by a quarter: any size); then a
    # map shared by two holders (the daemon's mirror and a classical policy), an id freed by its last one
    for seed, load, mode in ((1, "50", []), (2, "50", []), (3, str(DAEMON_LOAD), []),
                             (4, str(DAEMON_LOAD), ["shared"]), (5, "50", ["shared"])):
        r = subprocess.run([str(exe), "200000", str(seed), load, *mode], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("idmap_check: ok 200000 ops"), r.stdout
        deletions, reused = (int(w) for w in r.stdout.split()[4:8:2])
        assert deletions > 10000 and reused > 10000, r.stdout
        if mode:  # releases the other holder's bit kept alive
            assert int(r.stdout.split()[9]) > 10000, r.stdout


def test_daemon_config_sets_the_history_window(obd_model: str) -> None:
    """`[policy.options] history_window` reaches the learned policy the daemon makes (and only it)."""
    from recmgd.daemon.config import parse

    c = parse(f'[policy]\nname = "recmg"\nmodel_dir = "{obd_model}"\n'
              '[policy.options]\nhistory_window = 100\n')
    opts = c.policy_for("p").create_options()
    assert registry.create("recmg", **opts).history_window_steps() == 100  # type: ignore[attr-defined]
    registry.create("lru", **opts)  # other policies ignore it
    from recmgd.errors import ConfigError

    with pytest.raises(ConfigError, match="history_window: impossible value -1"):
        parse('[policy.options]\nhistory_window = -1\n')


def _throttle_runs(steps: list[np.ndarray], cap: int, **opts: object
                   ) -> dict[float, tuple[int, dict[str, int]]]:
    """(prefetches issued, prefetch_stats) with the accuracy throttle at its default and off, the C and
    the Python step in lockstep."""
    out = {}
    for acc in (0.25, 0.0):
        pf: list[np.ndarray] = []
        _lockstep("recmg", steps, cap, prefetched=pf, prefetch_min_accuracy=acc, **opts)
        pol = registry.create("recmg", prefetch_min_accuracy=acc, history_window=0, **opts)
        pol.reset(cap)
        resident: set[int] = set()
        for b, keys in enumerate(steps):
            hit = np.fromiter((x in resident for x in keys.tolist()), bool, len(keys))
            d = pol.observe(StepView(b, keys, hit))
            resident.difference_update(d.evict.tolist())
            resident.update(d.admit.tolist() + d.prefetch.tolist())
        out[acc] = (sum(len(p) for p in pf), pol.prefetch_stats)
    return out


def test_a_mostly_wrong_prefetcher_is_throttled(shared_traces: Path, video_model: str) -> None:
    """amazon_video's stream successors are rarely read next (a few % of them): with every candidate
    passing, the accuracy throttle asks the prefetcher only now and then, in both steps alike; off,
    it never is."""
    steps = open_trace(str(shared_traces / "amazon_video.trace")).steps(256).as_list()
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    runs = _throttle_runs(steps[:300], cap, model_dir=video_model, prefetch_budget=16, seed=0,
                          prefetch_threshold=-1e9)
    (on_issued, on), (off_issued, off) = runs[0.25], runs[0.0]
    assert off["pf_throttled"] == 0 and off["pf_asked"] == 300
    assert off["pf_useful"] < 0.25 * (off["pf_useful"] + off["pf_useless"])
    assert on["pf_throttled"] > 100 and on["pf_asked"] < off["pf_asked"] / 2
    assert on_issued <= off_issued


def test_a_right_prefetcher_is_not_throttled(tmp_path: Path) -> None:
    """A loop over more rows than the tier holds, read in order: what followed a row last time is read
    in the next step, the prefetches are read, and the throttle never engages."""
    from recmgd.trace import Trace, save_trace

    rows = np.arange(2000, dtype=np.int64)
    keys = np.tile(rows, 12)
    path = tmp_path / "loop.trace"
    save_trace(Trace(keys, np.arange(len(keys) + 1, dtype=np.int64)), path)
    model = _train(path, tmp_path / "m", 16, 0.1)
    steps = open_trace(str(path)).steps(16).as_list()
    cap = capacity_for(0.1, 2000)
    runs = _throttle_runs(steps, cap, model_dir=model, prefetch_budget=16, seed=0, prefetch_threshold=-1e9)
    (on_issued, on), (off_issued, off) = runs[0.25], runs[0.0]
    assert on["pf_useful"] > 0.5 * (on["pf_useful"] + on["pf_useless"])
    assert on["pf_throttled"] == 0 and on_issued == off_issued > 1000
    assert on["pf_asked"] == off["pf_asked"]


def test_a_plan_over_every_resident_of_a_large_tier_lets_its_buffer_go(video_model: str) -> None:
    """The plan lists its candidates in a buffer of 16 bytes a resident. A plan that lists every resident
    (a step that evicts a quarter of the tier or more) writes all of it, 16 MB at 10^6 slots, which would
    stay resident for good: past 2^16 residents it lets the buffer go; the plans of ordinary steps, which
    list only the residents under a sampled threshold, keep theirs (allocated, touched where written)."""
    pol = registry.create("recmg", model_dir=video_model, prefetch_budget=0, seed=0)
    cap = 70_000
    pol.reset(cap)
    nxt = b = 0

    def step(n: int) -> dict[str, int]:
        nonlocal nxt, b
        keys = np.arange(nxt, nxt + n, dtype=np.int64)
        nxt += n
        d = pol.observe(StepView(b, keys, np.zeros(n, bool)))
        b += 1
        assert len(d.admit) == n and len(d.evict) == max(0, nxt - cap) - max(0, nxt - n - cap)
        st = pol.native_stats  # type: ignore[attr-defined]
        assert st is not None
        return st

    for _ in range(8):  # the tier full, then a step that evicts a seventh of it
        st = step(10_000)
    assert st["resident"] == cap and st["plan_bytes"] >= 16 * cap
    assert step(40_000)["plan_bytes"] == 0  # every resident listed: the buffer went back
    st = step(100)
    assert 0 < st["plan_bytes"] and st["resident"] == cap  # an ordinary step: allocated again


def test_ids_the_mirror_maps_are_not_the_steps_rows(video_model: str) -> None:
    """In the key map the C step shares with the daemon's mirror, ids the mirror mapped (rows it tracks
    that the step never read) lie among the step's: they are free to the step (no row, no history, not
    resident, not counted), whether below the step's ids or past its room; a row the step reads later
    is its own from then on."""
    pol = registry.create("recmg", model_dir=video_model, prefetch_budget=0, seed=0, history_window=64)
    pol.step_by_step()  # type: ignore[attr-defined]
    pol.reset(500)
    shared = pol.shared_key_map()  # type: ignore[attr-defined]
    assert shared is not None
    mirror_only = np.arange(10_000, 13_000, dtype=np.int64)  # ids 0 .. 2,999: the mirror's alone
    shared.map(mirror_only, holder=HOLDER_MOVER)
    for b in range(40):
        keys = np.arange(b * 200, b * 200 + 300, dtype=np.int64) % 9_000
        if b == 20:  # rows the mirror mapped, read now: the step's from here on
            keys = np.concatenate([keys, mirror_only[:50]])
        pol.observe(StepView(b, keys, pol.resident_keys(keys)))
        if b == 10:  # and more of the mirror's, past the ids the step has handed out so far
            shared.map(np.arange(20_000, 25_000, dtype=np.int64), holder=HOLDER_MOVER)
        st, c = pol.native_stats, pol.id_census()  # type: ignore[attr-defined]
        assert c["ids"] == st["rows"] - st["once_rows"], (b, c, st)
        assert c["resident"] == st["resident"] <= 500, (b, c, st)
    assert not pol.resident_keys(mirror_only[50:]).any()


def test_stream_ring_is_sized_by_the_tier_and_capped_by_the_window() -> None:
    from recmgd.models.native_step import STREAM_MIN, STREAM_PER_SLOT, stream_ring

    # small tiers: the floor (the power of two above STREAM_MIN); large ones: STREAM_PER_SLOT a slot,
    # rounded up to a power of two
    floor = stream_ring(1, 0, None)
    assert floor > STREAM_MIN and stream_ring(1000, 0, None) == floor
    assert stream_ring(1_000_000, 0, None) == 1 << 24 >= STREAM_PER_SLOT * 1_000_000
    # a recency window of 4096 steps of ~1,870 rows: its 7.7M positions, not 16M
    assert stream_ring(1_000_000, 4096, 1870.0) == 1 << 23
    # unknown step length, or no window: the tier alone
    assert stream_ring(1_000_000, 4096, None) == 1 << 24
    assert stream_ring(1_000_000, 0, 1870.0) == 1 << 24
    # the window never takes it under the floor
    assert stream_ring(1_000_000, 64, 10.0) == floor


def _drive_daemon(steps: list[np.ndarray], cap: int, model_dir: str,
                  share: bool) -> tuple[int, int, int, int]:
    """RecMG (the C step) behind a real PoolDriver in step mode over a real pool, one table; ``share``:
    the mirror keeps its rows in the C step's key map (the daemon's way), else in a map of its own.
    Returns (on-demand fetches, peak ids in the shared map, histories the step forgot, rows it moved to
    the once table)."""
    import uuid

    from recmgd.daemon.loop import PoolDriver
    from recmgd.keys import key_row
    from recmgd.pool import Pool

    rows = int(key_row(np.concatenate(steps)).max()) + 1
    name = f"recmgd-share-{uuid.uuid4().hex[:8]}"
    app = Pool.create(name, tables=[(rows, 4)], slots=cap, ring_records=1 << 14)
    daemon = Pool.attach(name, role="daemon")
    try:
        pol = registry.create("recmg", model_dir=model_dir, prefetch_budget=0, seed=0, history_window=64)
        if not share:
            pol.shared_key_map = lambda: None  # type: ignore[method-assign]
        drv = PoolDriver(daemon, pol, "recmg", step_mode=True)
        assert drv.mover.shares_key_map == share
        peak = 0
        for keys in steps:
            r = key_row(keys)
            app.embedding_bag(0, r, np.arange(len(r), dtype=np.int64))
            app.end_batch()
            drv.tick()
            if share:
                peak = max(peak, pol.shared_key_map().live)  # type: ignore[union-attr]
            if share:  # the mirror, through the step's map, is the pool's residency
                owned = np.sort(drv.mover.owned_keys())
                assert np.array_equal(owned, np.sort(np.asarray(daemon.resident_keys(), dtype=np.int64)))
        st = pol.native_stats  # type: ignore[attr-defined]
        return int(drv.stats()["on_demand"]), peak, int(st["forgotten"]), int(st["moved"])
    finally:
        daemon.close()
        app.destroy()


def test_the_c_step_shares_its_key_map_with_the_daemons_mirror(shared_traces: Path, video_model: str) -> None:
    """Driven by the daemon, the C step's key map is the mirror's too (one entry for a row both track):
    the same on-demand fetches as with a map of the mirror's own, and the mirror exact, while a short
    recency window makes the step forget rows and hand their ids out again, and rows used once give
    their ids back for the once table (the mirror may hold some of those ids still)."""
    steps = [s for s in open_trace(str(shared_traces / "amazon_video.trace")).steps(256).as_list()[:300]]
    steps = [s[(s >> 40) == 0] for s in steps]
    cap = capacity_for(0.1, len(np.unique(np.concatenate(steps))))
    shared, peak, forgotten, moved = _drive_daemon(steps, cap, video_model, share=True)
    own, _, _, _ = _drive_daemon(steps, cap, video_model, share=False)
    assert shared == own > 0
    assert forgotten > 0 and moved > 0  # the window made the step let rows go
    assert 0 < peak < len(np.unique(np.concatenate(steps)))  # and it bounds the map
