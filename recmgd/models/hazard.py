"""The caching model's keep-probability made age-aware: a table of P(the row is used again within H
steps | the class the model gave it at its last use, the steps since that use), estimated on the
training steps.

The caching model (trained on Belady OPT's keep labels) scores a row when it is used. How much that
score is worth falls as the row goes unused: a user row not seen for one step has ended its session, an
item unused for a thousand steps is less likely back soon than one used a step ago. Rather than
re-running the model over every resident row each step, the policy keeps each row's class (its quantised
keep-probability and predicted reuse distance at the last use) and its last-use step, and evicts the
rows whose (class, age) cell of this table is lowest, LRU order breaking ties: the least-hit-density
idea (LHD, NSDI'18) with the learned model's class in place of hand-made ones. Each cell is measured
directly: at sampled training steps t, every row seen so far adds one observation to the cell of (its
class at its last use, t + 1 - that use), positive when its next use is within ``horizon`` steps of t.
(Labelling the cells with OPT's keep label of the last use instead did worse on amazon_video in
development runs.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recmgd.trace.steps import as_steps

if TYPE_CHECKING:
    from recmgd.oracle import StepsLike

#: age buckets: two a doubling of the age (1, 2, 3, 4-5, 6-7, 8-11, ...), the last one open
AGE_BUCKETS = 40
#: classes of the keep-probability (uniform in p) and of the predicted log1p reuse distance
P_CLASSES = 16
REUSE_CLASSES = 8
#: observations a cell is shrunk toward its age bucket's mean with (cells seen rarely are not trusted)
PRIOR_WEIGHT = 20.0
_HALF_SQRT2 = float(np.sqrt(0.5))


def age_bucket(age: np.ndarray) -> np.ndarray:
    """Bucket of ``age`` steps since the last use, floor(2 log2 age) capped (age < 1 counts as 1).

    From the float's exponent and mantissa (no logarithm: the policy buckets every resident row each
    step): age = m 2^e with m in [0.5, 1), so 2 log2 age = 2 (e - 1) + 2 log2 (2m), whose second term is
    1 or more exactly when m >= sqrt(1/2)."""
    m, e = np.frexp(np.maximum(np.asarray(age, np.float64), 1.0))
    b = 2 * (e.astype(np.int64) - 1) + (m >= _HALF_SQRT2)
    return np.minimum(b, AGE_BUCKETS - 1)


def uniform_edges(classes: int, top: float = 1.0) -> np.ndarray:
    """``classes - 1`` boundaries of equal width over [0, top] (for p, equal widths did better than
    quantiles of the training accesses' p on amazon_video in development runs)."""
    return np.linspace(0.0, top, classes + 1)[1:-1]


def hazard_scores(ids: np.ndarray, cls: np.ndarray, stamp: np.ndarray, table_flat: np.ndarray,
                  now: float) -> np.ndarray:
    """Keep scores of rows ``ids`` (per-row arrays ``cls`` int64 and ``stamp`` float64, indexed by id):
    ``table_flat[cls * AGE_BUCKETS + age_bucket(now - stamp)] + stamp / (|now| + 2)``, the table
    cell with LRU order breaking ties, computed in C (native/policy/hazard.c, the same doubles as that
    numpy expression, which tests/test_models_hazard.py checks)."""
    from recmgd.simcore import ffi, lib

    ids = np.ascontiguousarray(ids, np.int64)
    out = np.empty(len(ids), np.float64)
    if not len(ids):
        return out
    if cls.dtype != np.int64 or stamp.dtype != np.float64 or table_flat.dtype != np.float64:
        raise TypeError("hazard_scores wants int64 classes and float64 stamps and table")
    rc = lib.hz_scores(ffi.from_buffer("int64_t[]", ids), len(ids), ffi.from_buffer("int64_t[]", cls),
                       ffi.from_buffer("double[]", stamp), min(len(cls), len(stamp)),
                       ffi.from_buffer("double[]", table_flat), len(table_flat) // AGE_BUCKETS, float(now),
                       ffi.from_buffer("double[]", out))
    if rc == lib.SC_EBADID:
        raise IndexError("hazard_scores: an id outside the per-row arrays")
    if rc != lib.SC_OK:
        raise ValueError("hazard_scores: a class outside the table")
    return out


def class_of(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The class of values ``p`` between ``edges`` (0 = below the first)."""
    return np.searchsorted(edges, np.asarray(p, np.float64), side="right").astype(np.int64)


def classify(out: np.ndarray, p_edges: np.ndarray, nu_edges: np.ndarray) -> np.ndarray:
    """The table class of rows the caching model scored ``out`` (N x 2: keep logit, predicted log1p of
    the steps to the next use): the keep-probability's class x the predicted reuse distance's class.
    (The two together did better than classes of p alone on amazon_video in development runs.)"""
    p = 1.0 / (1.0 + np.exp(-np.asarray(out[:, 0], np.float64)))
    return class_of(p, p_edges) * (len(nu_edges) + 1) + class_of(out[:, 1], nu_edges)


def fit_table(steps: StepsLike, cls: np.ndarray, nxt: np.ndarray, *, horizon: int,
              classes: int, samples: int = 1024) -> np.ndarray:
    """Estimate the (classes x AGE_BUCKETS) table from the training steps.

    ``cls`` and ``nxt`` hold one value per access, in step order: the model's class of that access and
    the step of the row's next use (anything past the last step for none). Up to ``samples`` evenly
    spaced steps are sampled. Cells are shrunk toward their age bucket's mean over all classes.
    """
    st = as_steps(steps)
    lens = np.diff(st.offsets)
    if not len(lens) or not lens.sum():
        return np.full((classes, AGE_BUCKETS), 0.5)
    allk = st.keys[st.offsets[0] : st.offsets[-1]]  # a view: the flat steps are not copied
    _, rid = np.unique(allk, return_inverse=True)
    n = int(rid.max()) + 1
    last = np.full(n, -1, np.int64)
    rcls = np.zeros(n, np.int64)
    rnxt = np.zeros(n, np.float64)
    num = np.zeros((classes, AGE_BUCKETS))
    den = np.zeros((classes, AGE_BUCKETS))
    every = max(1, len(lens) // max(1, samples))
    off = np.concatenate([[0], np.cumsum(lens)])
    for t in range(len(lens)):
        sl = slice(off[t], off[t + 1])
        ids = rid[sl]
        last[ids] = t
        rcls[ids] = cls[sl]
        rnxt[ids] = nxt[sl]
        if t % every:
            continue
        seen = np.flatnonzero(last >= 0)
        cell = rcls[seen] * AGE_BUCKETS + age_bucket(t + 1 - last[seen])
        lab = (rnxt[seen] - t <= horizon).astype(np.float64)
        num += np.bincount(cell, weights=lab, minlength=classes * AGE_BUCKETS).reshape(num.shape)
        den += np.bincount(cell, minlength=classes * AGE_BUCKETS).reshape(den.shape)
    # shrink each cell toward the mean of its age bucket over all classes (a class's mean over all ages
    # would lift rarely seen old cells to the level of young rows, and they would never be evicted)
    overall = (num.sum() + 0.5) / (den.sum() + 1.0)
    amean = (num.sum(0, keepdims=True) + PRIOR_WEIGHT * overall) / (den.sum(0, keepdims=True) + PRIOR_WEIGHT)
    return (num + PRIOR_WEIGHT * amean) / (den + PRIOR_WEIGHT)


def check_table(table: np.ndarray, p_edges: np.ndarray | None, nu_edges: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``table`` (classes x AGE_BUCKETS, probabilities) and its class edges as float64; ValueError
    naming what is wrong otherwise."""
    t = np.asarray(table, np.float64)
    if t.ndim != 2 or t.shape[1] != AGE_BUCKETS or t.shape[0] < 1:
        raise ValueError(f"hazard table must be (classes x {AGE_BUCKETS}), got shape {t.shape}")
    if not np.all(np.isfinite(t)) or t.min() < 0.0 or t.max() > 1.0:
        raise ValueError("hazard table values must be probabilities in [0, 1]")
    edges = []
    for name, e in (("p", p_edges), ("reuse", nu_edges)):
        if e is None:
            raise ValueError(f"hazard table without its {name} class edges")
        a = np.asarray(e, np.float64)
        if a.ndim != 1 or np.any(np.diff(a) < 0) or not np.all(np.isfinite(a)):
            raise ValueError(f"hazard {name} class edges must be increasing values, got shape {a.shape}")
        edges.append(a)
    if (len(edges[0]) + 1) * (len(edges[1]) + 1) != t.shape[0]:
        raise ValueError(f"hazard class edges give {(len(edges[0]) + 1) * (len(edges[1]) + 1)} classes, "
                         f"the table has {t.shape[0]}")
    return t, edges[0], edges[1]
