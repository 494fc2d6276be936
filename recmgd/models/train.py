"""Training: datasets built by replaying the training steps, and the training loops of the three models.

Everything is deterministic for a given seed (numpy Generator + torch.manual_seed, one thread unless
the caller sets more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recmgd.models import hazard
from recmgd.models.features import N_CAND_FEATURES, N_FEATURES, KeyIndex, RowHistory, Stream
from recmgd.models.labels import opt_labels
from recmgd.models.nets import CacheNet, PrefetchNet
from recmgd.models.train_config import TrainConfig, Trained, check_train_steps
from recmgd.models.voyager_net import VoyagerNet
from recmgd.oracle import NEVER, StepsLike, next_use
from recmgd.trace.steps import as_steps

log = logging.getLogger(__name__)

#: progress(stage, done, total, loss, lookups_per_s)
Progress = Callable[[str, int, int, float, float], None]


#: accesses a chunk when the per-access work is done in pieces (scoring, targets): bounds the temporaries
_CHUNK = 1 << 16


def _noop(stage: str, done: int, total: int, loss: float, rate: float) -> None:
    pass


# ----------------------------------------------------------------------------------------- caching model
def cache_dataset(steps: StepsLike, keep: Sequence[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features at each access (before it), table slots and targets (N x 2: OPT keep label,
    log1p(steps to the next use), capped at twice the trace length for rows never used again).

    Each array is allocated once at its final size and filled step by step (no per-step list joined at
    the end, which held the features twice)."""
    s = as_steps(steps)
    n, n_steps = s.n_lookups, len(s)
    base = int(s.offsets[0])
    # the targets first: next_use's sort temporaries are gone before the features are allocated
    y = np.zeros((n, 2), np.float32)
    if len(keep):
        np.concatenate(keep, out=y[:, 0], casting="unsafe")
        nu = next_use(s)
        never = 2.0 * n_steps
        for lo in range(0, n, _CHUNK):  # log1p(gap) a chunk at a time: no N-long float64 temporaries
            hi = min(n, lo + _CHUNK)
            here = np.searchsorted(s.offsets[1:] - base, np.arange(lo, hi), side="right")
            nc = nu[lo:hi]
            gap = np.where(nc >= NEVER, never, nc.astype(np.float64) - here)
            y[lo:hi, 1] = np.log1p(gap)
        del nu
    hist = RowHistory()
    x = np.empty((n, N_FEATURES), np.float32)
    t = np.empty(n, np.int64)
    for b in range(n_steps):
        lo, hi = int(s.offsets[b]) - base, int(s.offsets[b + 1]) - base
        ids = hist.ids(s[b])
        x[lo:hi] = hist.features(ids, b)
        t[lo:hi] = hist.tables(ids)
        hist.update(ids, b)
    return x, t, y


def score_cache(net: CacheNet, x: np.ndarray, t: np.ndarray, chunk: int = 0) -> np.ndarray:
    """The caching model's outputs (N x 2, float32) at every access of a dataset, ``chunk`` rows at a
    time (default _CHUNK): the hidden layers of one chunk, never of all N at once."""
    chunk = chunk or _CHUNK
    out = np.empty((len(x), 2), np.float32)
    with torch.no_grad():
        for lo in range(0, len(x), chunk):
            out[lo : lo + chunk] = net(torch.from_numpy(x[lo : lo + chunk]),
                                       torch.from_numpy(t[lo : lo + chunk])).numpy()
    return out


def train_cache(x: np.ndarray, t: np.ndarray, y: np.ndarray, cfg: TrainConfig,
                progress: Progress = _noop) -> CacheNet:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = CacheNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, tt, yt = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)
    n = len(y)
    bce = nn.BCEWithLogitsLoss()
    total = cfg.epochs * max(1, (n + cfg.batch - 1) // cfg.batch)
    done, t0, ema = 0, time.perf_counter(), None
    for _ in range(cfg.epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for s in range(0, n, cfg.batch):
            idx = perm[s : s + cfg.batch]
            out = net(xt[idx], tt[idx])
            loss = bce(out[:, 0], yt[idx, 0]) + 0.1 * ((out[:, 1] - yt[idx, 1]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if done % 20 == 0 or done == total:
                progress("cache", done, total, ema, done * cfg.batch / max(time.perf_counter() - t0, 1e-9))
    net.eval()
    return net


# ------------------------------------------------------------------------------------- prefetching model
@dataclass
class PrefetchData:
    cand_ids: np.ndarray  # (S, M) model ids (n_rows = unknown / padding)
    cand_x: np.ndarray  # (S, M, F) history features
    cand_c: np.ndarray  # (S, M, C) candidate features (how the stream proposed it)
    cand_t: np.ndarray  # (S, M)
    is_cand: np.ndarray  # (S, M) 1 = proposed by the stream (0: a true miss added for the set loss)
    label: np.ndarray  # (S, M) 1 = OPT misses it within W steps
    weight: np.ndarray  # (S, M) loss weight (0 = padding)
    now_ids: np.ndarray  # (S, A)
    now_x: np.ndarray
    now_t: np.ndarray
    now_m: np.ndarray  # (S, A) mask
    past_ids: np.ndarray
    past_x: np.ndarray
    past_t: np.ndarray
    past_m: np.ndarray
    keys: np.ndarray  # model id -> key


def _sample(rng: np.random.Generator, a: np.ndarray, k: int) -> np.ndarray:
    return a if len(a) <= k else rng.choice(a, size=k, replace=False)


def prefetch_dataset(steps: StepsLike, miss: Sequence[np.ndarray], cfg: TrainConfig
                     ) -> PrefetchData:
    """Replay the training steps; at sampled steps record the stream's candidates, their labels (in
    OPT's misses of the next W steps), the true miss set (for the set loss) and the context."""
    rng = np.random.default_rng(cfg.seed + 1)
    H, W = len(steps), cfg.window
    index = KeyIndex()  # the ids RowHistory gives (its index's), without a history of every row twice
    step_ids = [index.get_or_add(s) for s in steps]
    n_rows = len(index)
    keys_all = index.all_keys()
    del index
    miss_ids = [ids[m] for ids, m in zip(step_ids, miss, strict=True)]
    hist = RowHistory(initial=n_rows)  # its final size: no doubling growth (and copy) on the way
    stream = Stream(cfg.depth)
    usable = list(range(cfg.past_steps, H - W))
    stride = max(1, len(usable) // cfg.max_samples)
    chosen = set(usable[::stride][: cfg.max_samples])
    M = cfg.max_cand + cfg.max_pos
    S = len(chosen)
    F, C = N_FEATURES, N_CAND_FEATURES
    d = PrefetchData(
        cand_ids=np.full((S, M), n_rows, np.int64), cand_x=np.zeros((S, M, F), np.float32),
        cand_c=np.zeros((S, M, C), np.float32), cand_t=np.zeros((S, M), np.int64),
        is_cand=np.zeros((S, M), np.float32), label=np.zeros((S, M), np.float32),
        weight=np.zeros((S, M), np.float32),
        now_ids=np.full((S, cfg.ctx_now), n_rows, np.int64), now_x=np.zeros((S, cfg.ctx_now, F), np.float32),
        now_t=np.zeros((S, cfg.ctx_now), np.int64), now_m=np.zeros((S, cfg.ctx_now), np.float32),
        past_ids=np.full((S, cfg.ctx_past), n_rows, np.int64),
        past_x=np.zeros((S, cfg.ctx_past, F), np.float32),
        past_t=np.zeros((S, cfg.ctx_past), np.int64), past_m=np.zeros((S, cfg.ctx_past), np.float32),
        keys=keys_all)
    s = 0
    for b in range(H):
        ids = hist.ids(steps[b])
        hist.update(ids, b)
        now = b + 1
        if b in chosen:
            cand, cf = stream.candidates(ids, now)
            keep = ~np.isin(cand, ids)
            cand, cf = cand[keep], cf[keep]
            if len(cand) > cfg.max_cand:
                pick = np.sort(rng.choice(len(cand), cfg.max_cand, replace=False))
                cand, cf = cand[pick], cf[pick]
            fut = np.unique(np.concatenate(miss_ids[b + 1 : b + 1 + W]))
            fut = fut[fut < len(hist)]  # only rows seen before can be prefetched
            fut = np.setdiff1d(fut, ids, assume_unique=True)
            extra = _sample(rng, np.setdiff1d(fut, cand, assume_unique=True), cfg.max_pos)
            allc = np.concatenate([cand, extra])
            m = len(allc)
            lab = np.isin(allc, fut)
            d.cand_ids[s, :m] = allc
            d.cand_x[s, :m] = hist.features(allc, now)
            d.cand_c[s, : len(cand)] = cf
            d.cand_c[s, len(cand) : m] = (0.0, (cfg.depth + 1) / cfg.depth, np.log1p(H))
            d.cand_t[s, :m] = hist.tables(allc)
            d.is_cand[s, : len(cand)] = 1
            d.label[s, :m] = lab
            # weight true misses toward long reuse distance and infrequent rows
            gap = (now - hist.last[allc].astype(np.int64)).astype(np.float32)  # rows used before now
            w = np.log1p(gap) / np.sqrt(np.maximum(hist.count[allc], 1))
            pw = w[lab]
            d.weight[s, :m] = 1.0
            if len(pw):
                d.weight[s, :m][lab] = pw / max(float(pw.mean()), 1e-6)
            a = _sample(rng, ids, cfg.ctx_now)
            d.now_ids[s, : len(a)] = a
            d.now_x[s, : len(a)] = hist.features(a, now)
            d.now_t[s, : len(a)] = hist.tables(a)
            d.now_m[s, : len(a)] = 1
            past = np.unique(np.concatenate(step_ids[b - cfg.past_steps : b]))
            p = _sample(rng, past, cfg.ctx_past)
            d.past_ids[s, : len(p)] = p
            d.past_x[s, : len(p)] = hist.features(p, now)
            d.past_t[s, : len(p)] = hist.tables(p)
            d.past_m[s, : len(p)] = 1
            s += 1
        stream.append(ids, b)
    return d


def _masked_mean(r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (r * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)


def train_prefetch(data: PrefetchData, cfg: TrainConfig, progress: Progress = _noop) -> PrefetchNet:
    torch.manual_seed(cfg.seed + 2)
    rng = np.random.default_rng(cfg.seed + 2)
    n_rows = len(data.keys)
    net = PrefetchNet(n_rows, dim=cfg.dim, queries=cfg.queries)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    T = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.__dict__.items() if k != "keys"}
    S = len(data.label)
    bs = max(16, cfg.batch // 4)
    total = cfg.epochs * max(1, (S + bs - 1) // bs)
    done, t0, ema = 0, time.perf_counter(), None
    lookups_per_sample = float(T["now_m"].sum()) / max(S, 1)
    for _ in range(cfg.epochs):
        perm = torch.from_numpy(rng.permutation(S))
        for s0 in range(0, S, bs):
            i = perm[s0 : s0 + bs]
            loss = _prefetch_loss(net, {k: v[i] for k, v in T.items()}, cfg.prefetch_loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if done % 10 == 0 or done == total:
                rate = done * bs * lookups_per_sample / max(time.perf_counter() - t0, 1e-9)
                progress("prefetch", done, total, ema, rate)
    net.eval()
    return net


def _prefetch_loss(net: PrefetchNet, b: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
    r_now = net.rep(b["now_ids"], b["now_x"], b["now_t"])
    r_past = net.rep(b["past_ids"], b["past_x"], b["past_t"])
    q = net.query(_masked_mean(r_now, b["now_m"]), _masked_mean(r_past, b["past_m"]))  # (B,K,d)
    r = net.rep(b["cand_ids"], b["cand_x"], b["cand_t"])  # (B,M,d)
    sims = torch.einsum("bkd,bmd->bmk", q, r)  # (B,M,K)
    label, w = b["label"], b["weight"]
    valid = (w > 0).float()
    best = sims.amax(-1)  # (B,M)
    bce = nn.functional.binary_cross_entropy_with_logits
    cm = b["is_cand"] * valid  # the candidates the policy would see
    if mode == "ce":
        logits = net.temp * best + net.prior_logit(b["cand_x"], b["cand_c"])
        return (bce(logits, label, reduction="none") * w * cm).sum() / cm.sum().clamp(min=1)
    # Chamfer set loss between the K predicted points and the true future-miss set, in rep space
    pos = label * valid
    npos = pos.sum(1)
    has = (npos > 0).float()
    dist = 1.0 - sims  # cosine distance (B,M,K)
    # every true miss close to some query (weighted: long reuse, rare rows count more)
    cover = ((dist.amin(-1) * w * pos).sum(1) / (w * pos).sum(1).clamp(min=1e-6) * has).sum()
    # every query close to some true miss
    big = 4.0
    dq = (dist + big * (1 - pos).unsqueeze(-1)).amin(1)  # (B,K)
    prec = (dq.mean(-1) * has).sum()
    chamfer = (cover + prec) / has.sum().clamp(min=1)
    # negatives pushed away from every query (keeps the space from collapsing)
    negm = (1 - label) * valid
    repel = (torch.relu(best - 0.2) ** 2 * negm).sum() / negm.sum().clamp(min=1)
    # calibration head: temperature and history prior on detached similarities (used to rank/threshold)
    logits = net.temp * best.detach() + net.prior_logit(b["cand_x"], b["cand_c"])
    cal = (bce(logits, label, reduction="none") * w * cm).sum() / cm.sum().clamp(min=1)
    return chamfer + repel + cal


# ------------------------------------------------------------------------------------------- voyager
def voyager_dataset(steps: StepsLike) -> tuple[np.ndarray, np.ndarray]:
    """The lookup stream as model ids (in order of first sight) and the id -> key table."""
    hist = RowHistory()
    ids = [hist.ids(s) for s in steps]
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return flat, hist.index.all_keys()


def train_voyager(stream: np.ndarray, keys: np.ndarray, cfg: TrainConfig,
                  progress: Progress = _noop) -> VoyagerNet:
    torch.manual_seed(cfg.seed + 3)
    rng = np.random.default_rng(cfg.seed + 3)
    counts = np.bincount(stream, minlength=len(keys))
    often = np.flatnonzero(counts >= 2)
    out_ids = often[np.argsort(-counts[often], kind="stable")][: cfg.voyager_vocab]
    cls = np.full(len(keys) + 1, len(out_ids), np.int64)  # model id -> class ("other" by default)
    cls[out_ids] = np.arange(len(out_ids))
    net = VoyagerNet(len(keys), out_ids, hidden=cfg.voyager_hidden)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    L = cfg.voyager_seq
    n = (len(stream) - 1) // L
    if n <= 0:
        return net
    x = torch.from_numpy(stream[: n * L].reshape(n, L))
    y = torch.from_numpy(cls[stream[1 : n * L + 1]].reshape(n, L))
    bs = max(8, cfg.batch // L)
    total = cfg.voyager_epochs * ((n + bs - 1) // bs)
    done, t0, ema = 0, time.perf_counter(), None
    lossf = nn.CrossEntropyLoss()
    for _ in range(cfg.voyager_epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for s0 in range(0, n, bs):
            i = perm[s0 : s0 + bs]
            logits, _ = net(x[i])
            loss = lossf(logits.reshape(-1, logits.shape[-1]), y[i].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if done % 10 == 0 or done == total:
                progress("voyager", done, total, ema, done * bs * L / max(time.perf_counter() - t0, 1e-9))
    net.eval()
    return net


# ------------------------------------------------------------------------------------------- all
def fit_hazard(steps: StepsLike, scored: np.ndarray, capacity: int, stats: dict[str, float],
                  cfg: TrainConfig) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The age-aware table (recmgd.models.hazard) over the caching model's outputs ``scored`` at every
    training access, and its class edges."""
    # the reuse head's target is at most log1p(2 x steps) (rows never used again)
    edges = (hazard.uniform_edges(cfg.hazard_p_classes),
             hazard.uniform_edges(cfg.hazard_reuse_classes, float(np.log1p(2.0 * len(steps)))))
    horizon = cfg.hazard_horizon or max(1, round(capacity / stats["mean_step_len"] / 2))
    stats["hazard_horizon"] = float(horizon)
    nu = next_use(as_steps(steps)).astype(np.float64)
    table = hazard.fit_table(steps, hazard.classify(scored, *edges), nu, horizon=horizon,
                             classes=cfg.hazard_p_classes * cfg.hazard_reuse_classes)
    return table, edges


def train_models(steps: StepsLike, capacity: int, cfg: TrainConfig,
                 which: Sequence[str] = ("cache", "prefetch"), progress: Progress = _noop) -> Trained:
    """Train the requested models ('cache', 'prefetch', 'voyager') on ``steps`` (at least
    MIN_TRAIN_STEPS, with lookups in them: else TrainStepsError).

    Memory: each per-access array lives only as long as the stage that needs it (the caching model's
    dataset is dropped once it is scored, the scores once they are classified), and the steps are one
    flat array throughout (recmgd.models.train_memory estimates the peak)."""
    s = as_steps(steps)  # one flat copy at most: every stage below reads this one
    check_train_steps(len(s), s.n_lookups)  # TrainStepsError: none to train on
    out = Trained(capacity=capacity, config=cfg)
    # rows a (deduplicated) step: the policies size a keep-level in steps of LRU age from it, so every
    # checkpoint must carry it (`recmg train` checkpoints once lacked it and were scored with 16)
    out.stats["mean_step_len"] = float(np.mean(np.diff(s.offsets))) if len(s) else 1.0
    t0 = time.perf_counter()
    if "cache" in which or "prefetch" in which:
        keep, miss = opt_labels(s, capacity)
        out.stats["opt_label_s"] = time.perf_counter() - t0
        out.stats["keep_rate"] = float(np.mean(np.concatenate(keep))) if len(s) else 0.0
        if "cache" in which:
            x, t, y = cache_dataset(s, keep)
            del keep
            out.cache = train_cache(x, t, y, cfg, progress)
            del y
            scored = score_cache(out.cache, x, t)
            del x, t
            out.hazard, out.hazard_edges = fit_hazard(s, scored, capacity, out.stats, cfg)
            del scored
        if "prefetch" in which:
            data = prefetch_dataset(s, miss, cfg)
            del miss
            out.prefetch = train_prefetch(data, cfg, progress)
            out.prefetch_keys = data.keys
            del data
    if "voyager" in which:
        stream, keys = voyager_dataset(s)
        out.voyager = train_voyager(stream, keys, cfg, progress)
        out.voyager_keys = keys
    out.stats["train_s"] = time.perf_counter() - t0
    log.info("trained %s on %d steps in %.1fs", ",".join(which), len(s), out.stats["train_s"])
    return out
