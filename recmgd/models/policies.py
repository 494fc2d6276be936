"""The learned policies: ``recmg-cache``, ``recmg-prefetch``, ``recmg`` and the ML baseline ``voyager``.

All four share one residency manager. Every resident row carries a *stamp* (the step of its last use)
and what the caching model said of it at that use; when rows must go, the lowest keep score goes first,
LRU order breaking ties, so without the caching model the manager is exactly LRU. With it, the keep
score is, by default, the age-aware table of recmgd.models.hazard: P(used again soon | the model's class
for the row at its last use, steps since); checkpoints without that table use a keep *level* from the
keep-probability plus the stamp. Missed rows compete with the residents for the slots (bypass). The
prefetchers add rows that are not resident; prefetched rows enter behind the step's own rows.

Per-row state is dense numpy arrays indexed by :class:`~recmgd.models.features.RowHistory` ids, and the
models score a whole step's batch of rows with a few numpy matrix products (no torch at inference).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from recmgd.errors import ModelError
from recmgd.models import checkpoint
from recmgd.models.fastinfer import FastCacheNet
from recmgd.models.features import HALF_LIVES, RowHistory, Stream
from recmgd.models.granularity import Granularity, checkpoint_config, from_config, mismatch
from recmgd.models.hazard import classify, hazard_scores
from recmgd.models.native_step import NativeStep, unsupported
from recmgd.models.numpy_nets import NumpyCacheNet, NumpyPrefetchNet
from recmgd.models.sampling import GOLDEN
from recmgd.models.train_config import TrainConfig, Trained
from recmgd.policy import EMPTY_KEYS, Decision, Policy, StepView, register
from recmgd.simcore import IdMap
from recmgd.simcore import lib as _simcore_lib

log = logging.getLogger(__name__)

class _Residency:
    """Which rows the policy believes resident, and in which order they go.

    Order ``"level"``: keep score = level + stamp (level in steps of LRU age; all 0 = LRU).
    Order ``"nextuse"``: keep score = -(estimated next use), where a row whose estimate has passed is
    re-estimated as now + its age (a row unused for a while stays unused for a while); stamp breaks ties.
    Order ``"hazard"``: keep score = ``table[class, age bucket]`` (recmgd.models.hazard: how likely a row
    of that class, that many steps after its last use, is used again within H steps); stamp breaks ties.
    """

    def __init__(self, capacity: int, order: str = "level", slack: float = 2.0,
                 table: np.ndarray | None = None) -> None:
        if order == "hazard" and table is None:
            raise ValueError("order 'hazard' needs a hazard table")
        self.capacity = capacity
        self.order = order
        self.slack = slack
        # flat, quantised so that equal probabilities tie exactly and LRU order decides among them
        self.table = None if table is None else np.round(np.asarray(table, np.float64) * 1e4).ravel()
        self.resident = np.zeros(0, bool)
        self.level = np.zeros(0, np.float64)
        self.cls = np.zeros(0, np.int64)
        self.stamp = np.zeros(0, np.float64)
        self.nxt = np.zeros(0, np.float64)
        self.n = 0
        self.recency_only = False  # True: plain LRU order (the guard's fallback), levels ignored

    def grow(self, n: int) -> None:
        if n <= len(self.resident):
            return
        cap = max(n, 2 * len(self.resident), 1024)
        for name, fill in (("resident", False), ("level", 0.0), ("stamp", -1.0), ("nxt", 0.0), ("cls", 0)):
            a = getattr(self, name)
            b = np.full(cap, fill, dtype=a.dtype)
            b[: len(a)] = a
            setattr(self, name, b)

    def set_resident(self, ids: np.ndarray, on: bool) -> None:
        if len(ids):
            ids = ids[self.resident[ids] != on]
            self.resident[ids] = on
            self.n += len(ids) if on else -len(ids)

    def keep_score(self, ids: np.ndarray, now: float) -> np.ndarray:
        if self.order == "hazard" and not self.recency_only:
            assert self.table is not None
            return hazard_scores(ids, self.cls, self.stamp, self.table, now)
        stamp = self.stamp[ids]
        if self.recency_only:
            return stamp
        if self.order == "nextuse":
            nxt = self.nxt[ids]
            eff = np.where(nxt >= now, nxt, now + (now - stamp))
            return -eff + 1e-3 * stamp
        if self.order == "hybrid":
            # the keep-level holds while the row is within (slack x) its predicted reuse distance
            live = (now - stamp) <= self.slack * (self.nxt[ids] - stamp) + 1.0
            return np.where(live, self.level[ids], 0.0) + stamp
        return self.level[ids] + stamp

    def plan(self, new: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Fit ``new`` (non-resident ids whose level/stamp/nxt are set) into the capacity.

        Returns (evicted resident ids, inserted new ids): the rows kept are those with the highest keep
        score among the residents and the new rows.
        """
        over = self.n + len(new) - self.capacity
        if over <= 0:
            return EMPTY_KEYS, new
        res = np.flatnonzero(self.resident)
        keys = np.concatenate([self.keep_score(res, now), self.keep_score(new, now) + 1e-4])
        # the lowest keys go, ties by position (residents by id, then the new rows in order): the C
        # step's order (native/policy/learned.c), deterministic
        drop = np.argsort(keys, kind="stable")[:over]
        is_new = drop >= len(res)
        evict = res[drop[~is_new]]
        dropped_new = np.zeros(len(new), bool)
        dropped_new[drop[is_new] - len(res)] = True
        return evict, new[~dropped_new]


#: steps without a proposal after which the recmg prefetcher is only asked every prefetch_probe-th step
PREFETCH_IDLE_STEPS = 64
#: the prefetcher's accuracy (feedback-directed throttling; the C step's constants, learned.h): outcomes
#: needed before it throttles, the counts' decay (1/2^shift a step) and fixed-point scale (2^shift)
PF_MIN_OUTCOMES = int(_simcore_lib.LP_PF_MIN_OUTCOMES)
PF_DECAY_SHIFT = int(_simcore_lib.LP_PF_DECAY_SHIFT)
PF_SCALE_SHIFT = int(_simcore_lib.LP_PF_SCALE_SHIFT)

#: the guard watches one row in this many (a power of two), on tiers of at least GUARD_MIN_ROWS x it
GUARD_SAMPLE = 8
GUARD_MIN_ROWS = 256
#: ... and at most this many rows in each shadow: on larger tiers one row in a larger power of two
GUARD_MAX_ROWS = 1 << 16
#: the largest sample the C step takes (its lp_params.guard_sample is an int32 power of two)
GUARD_SAMPLE_MAX = 1 << 30


def guard_sample(capacity: int) -> int:
    """One row in how many the guard watches on a tier of ``capacity`` slots: GUARD_SAMPLE, doubled
    until a shadow (capacity / sample slots) holds at most GUARD_MAX_ROWS rows, so the guard's state
    stays bounded on any tier (the sampled miss ratio tracks the whole one, as in SHARDS); at most
    GUARD_SAMPLE_MAX (beyond 2^46 slots a shadow holds more than GUARD_MAX_ROWS rows)."""
    s = GUARD_SAMPLE
    while capacity // s > GUARD_MAX_ROWS and s < GUARD_SAMPLE_MAX:
        s *= 2
    return s
#: the default recency window of the C step spans this many of the features' longest decay half-life
WINDOW_HALF_LIVES = 4

#: eviction orders of the caching policies ("auto": "hazard" when the checkpoint has the table, else "level")
ORDERS = ("auto", "hazard", "level", "nextuse", "hybrid")


class LearnedPolicy(Policy):
    """Common driver of the four learned policies.

    Options (besides the driver's prefetch_budget, seed, model_dir, threads, epochs): ``levels`` keep
    levels of the caching model's probability; ``horizon`` how many cache turnovers (capacity / rows a
    step) the top level is worth in LRU age (16 did best on amazon_video at 5/10/20% in development
    runs); ``bypass`` a missed row whose keep-probability is below it is not admitted when the tier is
    full (0, off: in development runs on amazon_video it helped at 5% and cost fetches at 20%);
    ``tune`` horizons to choose from by replaying the training steps; ``prefetch_threshold`` the logit
    a candidate needs;
    ``prefetch_probe``: after PREFETCH_IDLE_STEPS steps in which the prefetching model proposed nothing
    (feedback-directed throttling), it is asked only every prefetch_probe-th step until it proposes a
    row again (1: every step; it costs more than half of recmg's step and issues nothing on some traces);
    ``prefetch_min_accuracy`` (default 0.25; 0: off): feedback-directed throttling on what the prefetches
    became: while fewer than this share of the recmg prefetcher's recent prefetches were read before the
    plan evicted them (counts decaying by 1/64 a step, after PF_MIN_OUTCOMES outcomes), it is asked only
    every ``prefetch_throttled_probe``-th step (default 64; the probes keep measuring, so it comes back
    when it is right again);
    a mostly wrong prefetcher costs a slow-tier read per row and evicts better rows (on amazon_video, 3-5%
    of its prefetches are read, and prefetching made more on-demand fetches than none);
    ``order`` "auto" (default: "hazard" when the models carry the hazard table, else "level"),
    "hazard" (the age-aware table of recmgd.models.hazard over the model's class at the last use),
    "level", "nextuse" (Belady order on the regression head) or "hybrid".
    ``guard`` (default on, caching model only): two shadow caches, in LRU order and in the model's
    order, see every step (on tiers of GUARD_SAMPLE x GUARD_MIN_ROWS slots or more, only a hash-sampled
    1/GUARD_SAMPLE of the rows, with as much of the capacity; 1/``guard_sample(capacity)`` on tiers so
    large that a shadow would pass GUARD_MAX_ROWS); while the model's shadow has missed
    more than LRU's lately (a saturating counter of a shadow's capacity / 8 misses, as in set dueling),
    the real cache is kept in LRU order and admits every miss, so a model that does not fit the trace
    costs at most about LRU's fetches (a checkpoint with keep-levels sized for the wrong step length
    made recmg-cache 1.8x LRU on the demo's trace); ``guard_stats`` counts the shadows' misses and the
    steps spent in LRU order.
    With ``model_dir`` holding a checkpoint, the models are loaded and ``fit`` does not retrain; with an
    empty ``model_dir``, ``fit`` trains and saves there. ``granularity`` (default rows) is what the keys
    the policy sees are: a checkpoint of another granularity is refused at load (ModelError, one line),
    and ``fit`` records it in the checkpoint it saves. ``native_infer`` (default on): row history,
    features and the caching model's forward pass in C (recmgd.models.fastinfer); off: the numpy reference.
    ``prefetch_announced`` (default on; lookahead only): the rows announced for the next steps
    (``StepView.announced``) seed the recmg prefetcher's candidates as this step's rows do (the rows that
    followed them in the stream last time, so the model chooses among what comes after the window);
    announced rows are never candidates (the driver fetches them).
    ``native_step`` (default on): the whole step in C, one call a step (recmgd.models.native_step), for
    the configurations it runs (orders "hazard" and "level", no rescore, the recmg prefetcher or none);
    off, or for the others: this module's Python step, the reference the C step is tested against.
    ``history_window`` (C step only; default None: from the model, see ``history_window_steps``): a row
    that is neither resident nor in a guard shadow and was not used for this many steps loses its history
    record and id, so the state grows with the fast tier and the rows seen in the window, not with every
    row ever seen (0: keep every row's history, as the Python step does).
    """

    learned = True
    use_cache_model = False
    prefetcher: str | None = None  # "recmg" or "voyager"
    models_needed: tuple[str, ...] = ()

    def __init__(self, prefetch_budget: int = 8, seed: int = 0, model_dir: str | None = None,
                 threads: int = 1, epochs: int = 4, levels: int = 16, bypass: float = 0.0,
                 prefetch_threshold: float = 0.0, prefetch_probe: int = 8,
                 prefetch_min_accuracy: float = 0.25,
                 prefetch_throttled_probe: int = 64,
                 voyager_min_prob: float = 0.0, horizon: float | None = 16.0, order: str = "auto",
                 slack: float = 2.0, gap_mode: str = "max", rescore: int = 0,
                 tune: Sequence[float] | None = None, guard: bool = True,
                 train_config: TrainConfig | None = None, native_infer: bool = True,
                 native_step: bool = True, granularity: Granularity | None = None,
                 history_window: int | None = None, prefetch_announced: bool = True) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.slack = float(slack)
        self.gap_mode = gap_mode
        self.rescore = int(rescore)
        self.order = order
        self.prefetch_budget = int(prefetch_budget)
        self.seed = int(seed)
        self.model_dir = model_dir
        self.granularity = granularity or Granularity.rows()
        self.threads = max(1, int(threads))
        self.native_infer = bool(native_infer)
        self.native_step = bool(native_step)
        if history_window is not None and int(history_window) < 0:
            raise ValueError(f"history_window must be >= 0 steps, got {history_window}")
        self.history_window = None if history_window is None else int(history_window)
        self._native: NativeStep | None = None
        self.cfg = train_config or TrainConfig(epochs=int(epochs), seed=self.seed)
        self.levels = int(levels)
        self.guard = bool(guard)
        self.bypass = float(bypass)
        self.prefetch_threshold = float(prefetch_threshold)
        self.prefetch_probe = max(1, int(prefetch_probe))
        if not 0.0 <= float(prefetch_min_accuracy) <= 1.0:
            raise ValueError(f"prefetch_min_accuracy must be in [0, 1], got {prefetch_min_accuracy}")
        self.prefetch_min_accuracy = float(prefetch_min_accuracy)
        self.prefetch_throttled_probe = max(1, int(prefetch_throttled_probe))
        self.prefetch_announced = bool(prefetch_announced)
        self.voyager_min_prob = float(voyager_min_prob)
        self._horizon_opt = horizon  # None: tuned in fit() on the training steps
        self.horizon = 16.0 if horizon is None else float(horizon)
        self.tune = tuple(tune) if (tune and horizon is None) else ()
        self._step_len = 0.0
        self.trained: Trained | None = None
        self._np_cache: NumpyCacheNet | None = None
        self._np_pref: NumpyPrefetchNet | None = None
        self._np_voy: Any = None  # recmgd.models.voyager_net.NumpyVoyager (torch)
        self._fast_cache: FastCacheNet | None = None
        self._model_index: dict[int, int] | None = None  # the Python step's, built when first needed
        self._step_by_step = False  # the daemon drives it: the C step shares its key map (step_by_step)
        # a checkpoint there is loaded; an empty or missing directory gets one trained and saved (fit);
        # anything else (files without a config.json, a config.json that is no regular file) is refused
        if model_dir is not None and checkpoint_config(model_dir) is not None:
            self.load(model_dir)
        self.reset(0)

    # ---------------------------------------------------------------------------------- models
    def load(self, model_dir: str) -> None:
        """Load the checkpoint in ``model_dir``; ModelError when it lacks a model this policy needs or
        was trained on another granularity than ``self.granularity``."""
        cfg = checkpoint.read_config(model_dir)
        have = from_config(cfg, os.path.join(model_dir, "config.json"))
        msg = mismatch(model_dir, have, self.granularity, f"policy {self.name!r}")
        if msg:
            raise ModelError(msg)
        # the numpy inference arrays, without torch; Voyager and checkpoints without them: through torch
        got = checkpoint.load_inference(model_dir) if self.prefetcher != "voyager" else None
        if got is not None:
            t, np_cache, np_pref = got
            have_models = {"cache": np_cache is not None, "prefetch": np_pref is not None}
        else:
            t = checkpoint.load(model_dir)
            np_cache = np_pref = None
            have_models = {m: getattr(t, m) is not None for m in ("cache", "prefetch", "voyager")}
        missing = [m for m in self.models_needed if not have_models.get(m)]
        if missing:
            raise ModelError(f"{model_dir}: checkpoint has no {', '.join(missing)} model, needed by "
                             f"policy {self.name!r}; train it with `recmg train`")
        # with no budget to prefetch the prefetching model is never asked: no copy of it is kept (its
        # embeddings grow with the rows it was trained on)
        self._install(t, np_cache, np_pref, keep_prefetch=self.prefetch_budget > 0)
        log.info("%s: loaded models from %s", self.name, model_dir)

    def _install(self, t: Trained, np_cache: NumpyCacheNet | None = None,
                 np_pref: NumpyPrefetchNet | None = None, *, keep_prefetch: bool = True) -> None:
        """Take trained models: ``t``'s torch modules (converted here), or their numpy inference given;
        ``keep_prefetch`` False: not the prefetching model's inference nor its row keys (a loaded policy
        that may not prefetch: the keys grow with the rows the model was trained on)."""
        if not keep_prefetch:
            np_pref = None
            t = dataclasses.replace(t, prefetch=None, prefetch_keys=None)  # the caller's t keeps its own
        self.trained = t
        if np_cache is None and t.cache is not None:
            np_cache = NumpyCacheNet(t.cache)
        if np_pref is None and t.prefetch is not None:
            np_pref = NumpyPrefetchNet(t.prefetch)
        self._np_cache, self._np_pref = np_cache, np_pref
        self._fast_cache = (FastCacheNet(np_cache) if self.native_infer and np_cache is not None else None)
        if t.voyager is not None:
            from recmgd.models.voyager_net import NumpyVoyager

            self._np_voy = NumpyVoyager(t.voyager)
        keys = t.voyager_keys if self.prefetcher == "voyager" else t.prefetch_keys
        self._model_keys = keys if keys is not None else np.zeros(0, np.int64)
        self._model_index = None

    def use_trained(self, t: Trained) -> None:
        """Take the models another policy of this name trained (``trained`` after its fit), as if
        this one had trained them: the simulator trains once for the runs of one capacity at several
        lookaheads (the same first half, the same seed, the same models)."""
        self._install(t)

    def fit(self, steps: Sequence[np.ndarray], capacity: int) -> None:
        if self.trained is not None:
            if self.trained.capacity and self.trained.capacity != capacity:
                log.warning("%s: models were trained for capacity %d, used at %d", self.name,
                            self.trained.capacity, capacity)
            return
        import torch

        from recmgd.models.train import train_models

        torch.set_num_threads(self.threads)
        t = train_models(list(steps), capacity, self.cfg, which=self.models_needed)
        t.stats["mean_step_len"] = float(np.mean([len(s) for s in steps])) if len(steps) else 1.0
        self._install(t)
        if self.use_cache_model and self.tune and len(steps) >= 8:
            t.stats["horizon"] = self._tune_horizon(list(steps), capacity)
        if self.model_dir is not None:
            checkpoint.save(t, self.model_dir, granularity=self.granularity)

    def _tune_horizon(self, steps: list[np.ndarray], capacity: int) -> float:
        """Pick how many steps of LRU age a keep-level is worth by replaying the training steps (warm on
        their first half, count misses on the second), the prefetcher off; training data only."""
        budget, best = self.prefetch_budget, (None, self.horizon)
        self.prefetch_budget = 0
        half = len(steps) // 2
        for h in self.tune:
            self.horizon = h
            self.reset(capacity)
            misses = 0
            for b, keys in enumerate(steps):
                hit = self.resident_keys(keys)
                if b >= half:
                    misses += int((~hit).sum())
                self.observe(StepView(b, keys, hit))
            log.info("%s: horizon %g: %d misses on the training steps", self.name, h, misses)
            if best[0] is None or misses < best[0]:
                best = (misses, h)
        self.prefetch_budget = budget
        self.horizon = best[1]
        return float(best[1])

    # ---------------------------------------------------------------------------------- stepping
    def reset(self, capacity: int) -> None:
        self.capacity = int(capacity)
        if self.trained is not None and "horizon" in self.trained.stats and self._horizon_opt is None:
            self.horizon = float(self.trained.stats["horizon"])
        stats = self.trained.stats if self.trained is not None else {}
        # rows a step; a checkpoint without it (older `recmg train`): the mean of the steps seen so far
        self._step_len_known = "mean_step_len" in stats
        self._seen_rows, self._seen_steps = 0, 0
        self._set_unit(float(stats.get("mean_step_len", 16.0)))
        # the guard: two shadow caches, one in LRU order and one in the model's order, both fed this
        # policy's accesses of a hash-sampled 1/guard_sample(capacity) of the rows with as much of the tier
        # (the sampled miss ratio tracks the whole one, as in SHARDS; all rows on small tiers); while
        # the model's shadow misses more than LRU's (a saturating counter, as in set dueling), the real
        # cache falls back to LRU order and admits every miss
        on = self.guard and self.use_cache_model
        sample = guard_sample(self.capacity)
        self._guard_shift = (64 - sample.bit_length() + 1 if self.capacity >= sample * GUARD_MIN_ROWS else 64)
        cap = self.capacity if self._guard_shift == 64 else self.capacity // sample
        self._shadows = ((_Residency(cap), _Residency(cap, self.res_order(), self.slack, self._table()))
                         if on else ())
        self._psel = 0.0
        self._psel_max = max(64.0, cap / 8.0)
        self._guard_stats = {"lru_misses": 0, "model_misses": 0, "lru_steps": 0, "stamp_only": 0}
        self._native = None
        if self.native_step and self.capacity >= 1 and self.trained is not None:
            why = unsupported(self)
            if why is None:
                self._native = NativeStep(self, self.capacity, share_key_map=self._step_by_step)
            else:
                log.info("%s: the Python step (the C step does not run %s)", self.name, why)
        self.hist = RowHistory(native=self.native_infer)
        self.res = _Residency(self.capacity, self.res_order(), self.slack, self._table())
        self.mid = np.zeros(0, np.int64)  # history id -> model id (n_rows = unknown)
        self.t = 0
        self._pf_idle = 0  # steps since the prefetching model last proposed a row
        # the prefetcher's accuracy (see prefetch_min_accuracy; the C step's pf_account, the same integers)
        self._pfu = np.zeros(0, bool)  # history id -> prefetched, not read yet
        self._pf_u = self._pf_t = self._pend_u = self._pend_x = 0
        self._pf_throttled = False
        self._pf_counts = {"pf_useful": 0, "pf_useless": 0, "pf_throttled": 0, "pf_asked": 0}
        self.recent: deque[np.ndarray] = deque(maxlen=max(1, self.cfg.past_steps))
        self.stream = Stream(self.cfg.depth)
        if self._np_voy is not None:
            self._np_voy.reset()

    @property
    def guard_stats(self) -> dict[str, int]:
        """The guard's counters: the shadows' misses, the steps spent in LRU order, whether the cache is
        held in LRU order now (``lru_order``, 0 or 1), and the uses in LRU order that renewed only a
        row's stamp (``stamp_only``, see ``observe``)."""
        if self._native is not None:
            st = self._native.stats()
            return {k: st[k] for k in ("lru_misses", "model_misses", "lru_steps", "lru_order", "stamp_only")}
        return {**self._guard_stats, "lru_order": int(self.res.recency_only)}

    def counters(self) -> dict[str, int]:
        """The guard's counters (``guard_stats``) as ``guard_*``, with the guard on; else none."""
        if not getattr(self, "_shadows", ()):  # not reset yet, or no guard
            return {}
        return {f"guard_{k}": v for k, v in self.guard_stats.items()}

    @property
    def native_stats(self) -> dict[str, int] | None:
        """The C step's counters (NativeStep.stats: rows with a history, histories dropped, bytes);
        None when the Python step runs."""
        return self._native.stats() if self._native is not None else None

    def id_census(self) -> dict[str, int] | None:
        """What the C step's rows with an id are (NativeStep.census: one pass over every id, for tools);
        None when the Python step runs."""
        return self._native.census() if self._native is not None else None

    def state_bytes(self) -> int:
        """The C step's bytes (its key map, rows, records, ring, once table, sets); 0 when the Python step
        runs."""
        st = self.native_stats
        return st["bytes"] if st else 0

    def resident_keys(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` is resident in the policy's view (bool array)."""
        keys = np.asarray(keys, np.int64)
        if self._native is not None:
            return self._native.resident(keys)
        ids = self.hist.index.lookup(keys)
        out = np.zeros(len(keys), bool)
        known = ids >= 0
        out[known] = self.res.resident[ids[known]]
        return out

    def step_by_step(self) -> None:
        """The daemon drives this policy: the C step (from the next :meth:`reset`) shares its key map
        with the mirror (:meth:`shared_key_map`)."""
        self._step_by_step = True

    def shared_key_map(self) -> IdMap | None:
        """The C step's key map, shared with the daemon's mirror (driven step by step; the C step runs on
        the loop's thread); None for the Python step."""
        return self._native.key_map() if self._native is not None and self._step_by_step else None

    @property  # type: ignore[override]
    def early_admission(self) -> bool:
        """The Python step is slow next to LRU's: the live daemon runs it in a thread of its own and
        fills missed rows itself (recmgd.policy); the C step is not, and runs in the loop."""
        return self._native is None

    def res_order(self) -> str:
        if not self.use_cache_model:
            return "level"
        if self.order == "auto":
            return "hazard" if self._table() is not None else "level"
        if self.order == "hazard" and self._table() is None:
            raise ModelError(f"{self.name}: order 'hazard' needs a checkpoint with the hazard table; "
                             "retrain with `recmg train`")
        return self.order

    def _table(self) -> np.ndarray | None:
        return self.trained.hazard if self.trained is not None else None

    def _classes(self, out: np.ndarray) -> np.ndarray:
        """The hazard-table class of rows the caching model scored ``out`` (keep logit, log1p next use)."""
        return classify(out, *self._edges)

    def history_window_steps(self) -> int:
        """The C step's recency window in steps (0: unbounded). By default the longest span the model
        tells apart: WINDOW_HALF_LIVES x the longest decay half-life of the features (a count older than
        that has decayed below 1/16) or the largest reuse-distance class edge of the hazard order, and
        always more than the prefetcher's past steps."""
        if self.history_window is not None:
            return 0 if self.history_window == 0 else max(self.history_window, self.cfg.past_steps + 1)
        w = WINDOW_HALF_LIVES * max(HALF_LIVES)
        if self.trained is not None and self.trained.hazard_edges is not None and len(self._edges[1]):
            w = max(w, float(np.expm1(float(np.max(self._edges[1])))))
        return int(np.ceil(max(w, self.cfg.past_steps + 1)))

    @property
    def _edges(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.trained is not None and self.trained.hazard_edges is not None
        return self.trained.hazard_edges

    def _set_unit(self, step_len: float) -> None:
        # one keep-level is worth this many steps of LRU age: the cache's turnover time times `horizon`
        self._unit = self.horizon * max(self.capacity, 1) / max(step_len, 1.0) / max(self.levels - 1, 1)

    def _admit(self, missed: np.ndarray, p: np.ndarray, free: int) -> np.ndarray:
        """Which missed rows the caching model admits (bypass below ``self.bypass`` when full)."""
        admit_mask = missed & (p >= self.bypass)
        if free > 0:  # room left: admit the best of the bypassed too
            rest = np.flatnonzero(missed & ~admit_mask)
            rest = rest[np.argsort(-p[rest], kind="stable")][:free]
            admit_mask[rest] = True
        return admit_mask

    def _in_sample(self, ids: np.ndarray) -> np.ndarray:
        """Which of rows ``ids`` the guard watches (its hash sample; every row on small tiers)."""
        if self._guard_shift == 64:
            return np.ones(len(ids), bool)
        return (ids.astype(np.uint64) * np.uint64(GOLDEN)) >> np.uint64(self._guard_shift) == 0

    def _guard_step(self, ids: np.ndarray, lvl: np.ndarray, cls: np.ndarray, p: np.ndarray, b: int) -> None:
        """Run this step's sampled rows through both shadow caches and move the selector."""
        if self._guard_shift < 64:
            keep = self._in_sample(ids)
            ids, lvl, cls, p = ids[keep], lvl[keep], cls[keep], p[keep]
            if not len(ids):
                return
        sh_model = self._shadows[1]
        misses = []
        for sh in self._shadows:
            hit = sh.resident[ids]
            missed = ~hit
            misses.append(int(missed.sum()))
            sh.stamp[ids] = b
            if sh is sh_model:
                sh.level[ids] = lvl
                sh.cls[ids] = cls
                sh.nxt[ids] = self.res.nxt[ids]
                adm = ids[self._admit(missed, p, sh.capacity - sh.n)]
            else:
                adm = ids[missed]
            evict, ins = sh.plan(adm, b + 1)
            sh.set_resident(evict, False)
            sh.set_resident(ins, True)
        self._guard_stats["lru_misses"] += misses[0]
        self._guard_stats["model_misses"] += misses[1]
        self._psel = min(max(self._psel + misses[1] - misses[0], -self._psel_max), self._psel_max)
        self.res.recency_only = self._psel > 0
        self._guard_stats["lru_steps"] += int(self.res.recency_only)

    def rejected(self, keys: np.ndarray) -> None:
        if self._native is not None:
            self._native.rejected(np.asarray(keys, np.int64))
            return
        ids = self.hist.index.lookup(np.asarray(keys, np.int64))
        ids = ids[ids >= 0]
        self.res.set_resident(ids, False)
        self._pfu[ids[ids < len(self._pfu)]] = False  # not inserted (or evicted by the driver): no outcome

    def early_victims(self, n: int, reading: np.ndarray) -> np.ndarray:
        """The ``n`` resident rows with the lowest keep score as of the last step (what the next
        ``plan`` would evict first), none of them in ``reading``."""
        if self._native is not None:
            return self._native.early_victims(n, np.asarray(reading, np.int64))
        res = self.res
        if n <= 0 or res.n == 0:
            return EMPTY_KEYS
        rid = np.flatnonzero(res.resident)
        if len(reading):
            rd = self.hist.index.lookup(np.asarray(reading, np.int64))
            rid = rid[~np.isin(rid, rd[rd >= 0])]
        if not len(rid):
            return EMPTY_KEYS
        score = res.keep_score(rid, float(self.t))
        # lowest first, ties by id (rid is ascending): the C step's order
        return self.hist.index.keys_of(rid[np.argsort(score, kind="stable")[:n]])

    def _ids(self, keys: np.ndarray) -> np.ndarray:
        n0 = len(self.hist)
        ids = self.hist.ids(keys)
        n1 = len(self.hist)
        if n1 > n0:
            self.res.grow(n1)
            for sh in self._shadows:
                sh.grow(n1)
            if len(self.mid) < n1:
                m = np.full(max(n1, 2 * len(self.mid), 1024), -1, np.int64)
                m[: len(self.mid)] = self.mid
                self.mid = m
            if len(self._pfu) < n1:
                self._pfu = np.concatenate([self._pfu, np.zeros(len(self.mid) - len(self._pfu), bool)])
            unknown = len(self._model_keys)
            if self._model_index is None:
                self._model_index = {k: i for i, k in enumerate(self._model_keys.tolist())}
            get = self._model_index.get
            new_keys = self.hist.index.keys_of(np.arange(n0, n1))
            self.mid[n0:n1] = np.fromiter((get(k, unknown) for k in new_keys.tolist()), np.int64, n1 - n0)
        return ids

    def _cache_scores(self, ids: np.ndarray, b: int) -> np.ndarray:
        """The caching model's (keep logit, log1p next use) of rows ``ids`` as of step ``b``: one C call
        (fastinfer) by default, the numpy reference with ``native_infer=False``."""
        if self._fast_cache is not None and self.hist.native_rows is not None:
            return self._fast_cache(self.hist, ids, b)
        assert self._np_cache is not None
        return self._np_cache(self.hist.features(ids, b), self.hist.tables(ids))

    def observe(self, view: StepView) -> Decision:
        if self._native is not None:
            self.t += 1
            ann = view.announced if self.prefetch_announced else None
            return self._native.step(view.keys, view.hit, ann)
        b = self.t
        self.t += 1
        keys = np.asarray(view.keys, np.int64)
        hit = np.asarray(view.hit, bool)
        ids = self._ids(keys)
        res = self.res
        read = self._pfu[ids]
        if read.any():  # a prefetch's outcome: read while resident (or gone already: none)
            self._pend_u += int((read & hit).sum())
            self._pfu[ids[read]] = False
        # while the guard holds LRU order (as of the last step), a row read where this policy held it
        # resident, outside the guard's sample, is not scored: no one reads its scores (the order is the
        # stamps, every miss is admitted, the shadows see only the sample); its use renews its stamp and
        # history, its class and level stay those of its last scored use (the C step skips its scoring)
        stale = np.zeros(len(ids), bool)
        if self._shadows and res.recency_only:
            stale = hit & res.resident[ids] & ~self._in_sample(ids)
            self._guard_stats["stamp_only"] += int(stale.sum())
        # the driver's view is the truth
        res.set_resident(ids[hit], True)
        res.set_resident(ids[~hit], False)
        now = b + 1
        if not self._step_len_known and len(ids):
            self._seen_rows += len(ids)
            self._seen_steps += 1
            self._set_unit(self._seen_rows / self._seen_steps)
        rescore_now = bool(self.rescore and b % self.rescore == 0 and self._np_cache is not None and res.n)
        # score and record this step's uses in one C call, unless resident rows are re-scored first
        fused = (not rescore_now and self._fast_cache is not None and self.hist.native_rows is not None)
        updated = False
        if self.use_cache_model and self._np_cache is not None and len(ids):
            # the rows' history before this step's uses (the model scores that, too)
            cnt = self.hist.count[ids]
            gapsum = self.hist.gap_sum(ids)
            if fused:
                assert self._fast_cache is not None
                out = self._fast_cache(self.hist, ids, b, update=True)
                updated = True
            else:
                out = self._cache_scores(ids, b)
            p = 1.0 / (1.0 + np.exp(-out[:, 0]))
            lvl = np.minimum(np.floor(p * self.levels), self.levels - 1) * self._unit
            cls = self._classes(out) if res.table is not None else np.zeros(len(ids), np.int64)
            # expected reuse distance: the model's, or the row's own mean gap when that is longer
            mean_gap = np.where(cnt > 1, gapsum / np.maximum(cnt, 1), 0.0)
            gap = np.maximum(np.expm1(out[:, 1]), 1.0)
            fresh = ids[~stale]
            res.nxt[fresh] = (b + (np.maximum(gap, mean_gap) if self.gap_mode == "max" else gap))[~stale]
        else:
            p = np.ones(len(ids))
            lvl = np.zeros(len(ids))
            cls = np.zeros(len(ids), np.int64)
        if rescore_now:
            # re-score every resident row with its history as of now (age since last use as the gap)
            rid = np.flatnonzero(res.resident)
            o = self._cache_scores(rid, b)
            pr = 1.0 / (1.0 + np.exp(-o[:, 0]))
            res.level[rid] = np.minimum(np.floor(pr * self.levels), self.levels - 1) * self._unit
            if res.table is not None:
                res.cls[rid] = self._classes(o)
        if not updated:
            self.hist.update(ids, b)
        res.level[ids[~stale]] = lvl[~stale]
        res.cls[ids[~stale]] = cls[~stale]
        res.stamp[ids] = b
        missed = ~hit
        if self._shadows and len(ids):
            self._guard_step(ids, lvl, cls, p, b)
        if self.use_cache_model and not res.recency_only:
            admit_mask = self._admit(missed, p, res.capacity - res.n)
        else:
            admit_mask = missed
        adm = ids[admit_mask]
        ann = (self.hist.index.lookup(np.asarray(view.announced, np.int64))
               if self.prefetch_announced and len(view.announced) else EMPTY_KEYS)
        self._pf_account()
        pf, pf_p = self._prefetch(b, ids, ann[ann >= 0])
        if len(pf):
            # prefetches are inserted after admissions, predicted used within the window; with the
            # caching model they enter at the lowest keep-level, behind this step's rows, so they only
            # take the place of rows the caching model would evict first anyway
            res.cls[pf] = 0
            if self.use_cache_model:
                res.level[pf] = 0.0
                res.stamp[pf] = b - 0.5
            else:
                res.level[pf] = 0.0
                res.stamp[pf] = b + 0.5
            res.nxt[pf] = now + self.cfg.window / 2
            new = np.concatenate([adm, pf])
        else:
            new = adm
        evict, ins = res.plan(new, now)
        res.set_resident(evict, False)
        res.set_resident(ins, True)
        unread = self._pfu[evict]
        if unread.any():  # prefetches evicted unread
            self._pend_x += int(unread.sum())
            self._pfu[evict[unread]] = False
        for_pf = np.isin(ins, pf) if len(pf) else np.zeros(len(ins), bool)
        self._pfu[ins[for_pf]] = True
        self.recent.append(ids)
        if self.prefetcher == "recmg":
            self.stream.append(ids, b)
        idx = self.hist.index
        return Decision(evict=idx.keys_of(evict), admit=idx.keys_of(ins[~for_pf]),
                        prefetch=idx.keys_of(ins[for_pf]))

    # ---------------------------------------------------------------------------------- prefetchers
    def _pf_account(self) -> None:
        """The outcomes since the last step join the prefetcher's decaying accuracy counts, and it is
        throttled while too few of its prefetches were read (learned.c's pf_account, integer for integer)."""
        u, x = self._pend_u, self._pend_x
        self._pf_counts["pf_useful"] += u
        self._pf_counts["pf_useless"] += x
        self._pf_u = self._pf_u - (self._pf_u >> PF_DECAY_SHIFT) + (u << PF_SCALE_SHIFT)
        self._pf_t = self._pf_t - (self._pf_t >> PF_DECAY_SHIFT) + ((u + x) << PF_SCALE_SHIFT)
        self._pend_u = self._pend_x = 0
        acc = self.prefetch_min_accuracy
        # it stays throttled (the counts decay alike; only a probe's outcomes move their ratio) until
        # the probes' prefetches are read often enough
        enough = PF_MIN_OUTCOMES << PF_SCALE_SHIFT
        self._pf_throttled = (acc > 0.0 and (self._pf_throttled or self._pf_t >= enough)
                              and float(self._pf_u) < acc * float(self._pf_t))
        self._pf_counts["pf_throttled"] += int(self._pf_throttled)

    @property
    def prefetch_stats(self) -> dict[str, int]:
        """The prefetcher's outcomes as the policy saw them: prefetched rows read before their eviction
        (``pf_useful``), evicted unread (``pf_useless``), the steps it was throttled for accuracy, and the
        steps it ran (``pf_asked``: its cost)."""
        if self._native is not None:
            st = self._native.stats()
            return {k: st[k] for k in ("pf_useful", "pf_useless", "pf_throttled", "pf_asked")}
        return dict(self._pf_counts)

    def _prefetch(self, b: int, ids: np.ndarray,
                  ann: np.ndarray = EMPTY_KEYS) -> tuple[np.ndarray, np.ndarray]:
        """Rows to prefetch (history ids, best first) and their predicted probabilities; ``ann``: the
        history ids of the announced rows (lookahead), more triggers for the recmg prefetcher."""
        none = (EMPTY_KEYS, np.zeros(0))
        if self.prefetch_budget <= 0 or self.capacity <= 0:
            return none
        if self.prefetcher == "recmg" and self._np_pref is not None:
            # throttled while it has nothing to say: asked every prefetch_probe-th step after
            # PREFETCH_IDLE_STEPS steps without a proposal, every step again after its first one
            if ((self._pf_throttled and b % self.prefetch_throttled_probe)
                    or (self._pf_idle >= PREFETCH_IDLE_STEPS and b % self.prefetch_probe)):
                self._pf_idle += 1
                return none
            self._pf_counts["pf_asked"] += 1
            out = self._prefetch_recmg(b, ids, ann)
            self._pf_idle = 0 if len(out[0]) else self._pf_idle + 1
            return out
        if self.prefetcher == "voyager" and self._np_voy is not None:
            pf = self._prefetch_voyager(ids)
            return pf, np.ones(len(pf))
        return none

    def _prefetch_recmg(self, b: int, ids: np.ndarray, ann: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        net = self._np_pref
        assert net is not None
        h = self.hist
        now = b + 1
        # the triggers: this step's rows, then the announced rows not among them (first occurrence)
        trig = ids
        if len(ann):
            ann = ann[~np.isin(ann, ids)]
            _, first = np.unique(ann, return_index=True)
            trig = np.concatenate([ids, ann[np.sort(first)]])
        cand, cf = self.stream.candidates(trig, now)
        if len(cand):
            ok = ~self.res.resident[cand] & ~np.isin(cand, trig)
            cand, cf = cand[ok], cf[ok]
        if not len(cand):
            return EMPTY_KEYS, np.zeros(0)
        now_r = net.rep(self.mid[ids], h.features(ids, now), h.tables(ids)).mean(0)
        past = np.unique(np.concatenate(list(self.recent))) if len(self.recent) else ids
        past_r = net.rep(self.mid[past], h.features(past, now), h.tables(past)).mean(0)
        q = net.query(now_r, past_r)
        fc = h.features(cand, now)
        s = net.score(q, net.rep(self.mid[cand], fc, h.tables(cand)), fc, cf)
        ok = np.flatnonzero(s > self.prefetch_threshold)
        if not len(ok):
            return EMPTY_KEYS, np.zeros(0)
        ok = ok[np.argsort(-s[ok], kind="stable")][: self.prefetch_budget]
        return cand[ok], 1.0 / (1.0 + np.exp(-s[ok]))

    def _prefetch_voyager(self, ids: np.ndarray) -> np.ndarray:
        v = self._np_voy
        assert v is not None
        v.feed(self.mid[ids])
        top, lp = v.top(self.prefetch_budget + len(ids))
        if self.voyager_min_prob > 0:
            top = top[lp >= np.log(self.voyager_min_prob)]
        if not len(top):
            return EMPTY_KEYS
        hid = self._ids(self._model_keys[top])
        hid = hid[~self.res.resident[hid]]
        hid = hid[~np.isin(hid, ids)]
        return hid[: self.prefetch_budget]


@register("recmg-cache")
class RecmgCache(LearnedPolicy):
    """The caching model alone: keep-priority and bypass from OPT labels, LRU tiebreak; no prefetch."""

    name = "recmg-cache"
    use_cache_model = True
    models_needed = ("cache",)


@register("recmg-prefetch")
class RecmgPrefetch(LearnedPolicy):
    """LRU plus the prefetching model."""

    name = "recmg-prefetch"
    prefetcher = "recmg"
    models_needed = ("prefetch",)


@register("recmg")
class Recmg(LearnedPolicy):
    """RecMG: the caching model and the prefetching model together."""

    name = "recmg"
    use_cache_model = True
    prefetcher = "recmg"
    models_needed = ("cache", "prefetch")


@register("voyager")
class Voyager(LearnedPolicy):
    """ML baseline: a Voyager-style LSTM next-access prefetcher at row granularity, on LRU."""

    name = "voyager"
    prefetcher = "voyager"
    models_needed = ("voyager",)
