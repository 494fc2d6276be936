"""The caching and prefetching models' inference in numpy (no torch): what the learned policies run.

Built from the trained torch modules (recmgd.models.nets) or from the arrays a checkpoint's
``inference.npz`` holds (recmgd.models.checkpoint.load_inference), so a policy loaded from a checkpoint
never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recmgd.models.features import N_CAND_FEATURES, N_FEATURES, N_TABLE_SLOTS

if TYPE_CHECKING:
    from recmgd.models.nets import CacheNet, PrefetchNet

# Per-feature normalisation is folded into the first layer; these are rough scales of the log features.
_FEATURE_SCALE = 0.25
#: the caching model's outputs (keep logit, log1p of the steps to the next use)
N_OUT = 2


def _take(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``arrays[name]`` as C-contiguous float32 when it is an array of real numbers of ``shape``;
    ValueError naming it otherwise (the C inference reads these arrays at the sizes the shapes say)."""
    a = arrays[name]
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
        raise ValueError(f"{name} is not an array of real numbers")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return np.ascontiguousarray(a, np.float32)


def _int_scalar(arrays: dict[str, np.ndarray], name: str) -> int:
    v = np.asarray(arrays[name])
    if v.shape != () or v.dtype.kind not in "iu":
        raise ValueError(f"{name} is not an integer")
    return int(v)


def _float_scalar(arrays: dict[str, np.ndarray], name: str) -> float:
    v = np.asarray(arrays[name])
    if v.shape != () or v.dtype.kind not in "fiu" or not np.isfinite(v):
        raise ValueError(f"{name} is not a finite number")
    return float(v)


class NumpyCacheNet:
    """CacheNet's forward pass in numpy (float32)."""

    #: the arrays that make it (what a checkpoint's inference.npz holds, prefixed "cache.")
    ARRAYS = ("w1", "tb", "w2", "b2", "w3", "b3")

    @staticmethod
    def shapes(hidden: int) -> dict[str, tuple[int, ...]]:
        """The shape of each of ARRAYS for a model of ``hidden`` units."""
        return {"w1": (N_FEATURES, hidden), "tb": (N_TABLE_SLOTS, hidden), "w2": (hidden, hidden),
                "b2": (hidden,), "w3": (hidden, N_OUT), "b3": (N_OUT,)}

    def __init__(self, net: CacheNet | dict[str, np.ndarray]) -> None:
        if isinstance(net, dict):  # the arrays themselves (no torch): each of the shape the others imply
            w1 = net["w1"]
            if not isinstance(w1, np.ndarray) or w1.ndim != 2 or w1.shape[1] < 1:
                raise ValueError(f"w1 has shape {np.shape(w1)}, expected ({N_FEATURES}, hidden)")
            want = self.shapes(int(w1.shape[1]))
            for name in self.ARRAYS:
                setattr(self, name, _take(net, name, want[name]))
            return
        sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
        self.w1 = (sd["lin1.weight"].T * _FEATURE_SCALE).copy()
        self.tb = sd["table.weight"] + sd["lin1.bias"][None, :]
        self.w2 = sd["lin2.weight"].T.copy()
        self.b2 = sd["lin2.bias"]
        self.w3 = sd["out.weight"].T.copy()
        self.b3 = sd["out.bias"]

    def __call__(self, feats: np.ndarray, tables: np.ndarray) -> np.ndarray:
        """(N, 2): keep logit, predicted log1p(steps to next use)."""
        h = feats @ self.w1
        h += self.tb[tables]
        np.maximum(h, 0, out=h)
        h = h @ self.w2
        h += self.b2
        np.maximum(h, 0, out=h)
        return h @ self.w3 + self.b3

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.ARRAYS}


class NumpyPrefetchNet:
    """PrefetchNet's inference in numpy."""

    #: the arrays that make it (a checkpoint's inference.npz, prefixed "prefetch."), then the scalars
    ARRAYS = ("emb", "f1w", "f1b", "f2w", "f2b", "tab", "c1w", "c1b", "c2w", "c2b", "p1w", "p1b", "p2w")
    SCALARS = ("unknown", "p2b", "temp", "queries", "dim")

    @staticmethod
    def shapes(n_rows: int, dim: int, queries: int, hidden: int) -> dict[str, tuple[int, ...]]:
        """The shape of each of ARRAYS for a model of ``n_rows`` embeddings (and the unknown row's) of
        ``dim`` floats, ``queries`` queries and ``hidden`` units."""
        return {"emb": (n_rows + 1, dim), "f1w": (N_FEATURES, hidden), "f1b": (hidden,), "f2w": (hidden, dim),
                "f2b": (dim,), "tab": (N_TABLE_SLOTS, dim), "c1w": (2 * dim, hidden), "c1b": (hidden,),
                "c2w": (hidden, queries * dim), "c2b": (queries * dim,),
                "p1w": (N_FEATURES + N_CAND_FEATURES, hidden), "p1b": (hidden,), "p2w": (hidden,)}

    def __init__(self, net: PrefetchNet | dict[str, np.ndarray]) -> None:
        if isinstance(net, dict):  # the arrays themselves (no torch): each of the shape the others imply
            self.unknown, self.queries, self.dim = (_int_scalar(net, n)
                                                    for n in ("unknown", "queries", "dim"))
            self.p2b, self.temp = _float_scalar(net, "p2b"), _float_scalar(net, "temp")
            f1w = net["f1w"]
            if (self.unknown < 0 or self.queries < 1 or self.dim < 1 or not isinstance(f1w, np.ndarray)
                    or f1w.ndim != 2 or f1w.shape[1] < 1):
                raise ValueError(f"unknown {self.unknown}, queries {self.queries}, dim {self.dim}, f1w of "
                                 f"shape {np.shape(f1w)}: not a prefetching model")
            want = self.shapes(self.unknown, self.dim, self.queries, int(f1w.shape[1]))
            for name in self.ARRAYS:
                setattr(self, name, _take(net, name, want[name]))
            return
        sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
        self.emb = sd["emb.weight"]
        self.unknown = net.n_rows
        self.f1w, self.f1b = (sd["feat.0.weight"].T * _FEATURE_SCALE).copy(), sd["feat.0.bias"]
        self.f2w, self.f2b = sd["feat.2.weight"].T.copy(), sd["feat.2.bias"]
        self.tab = sd["table.weight"]
        self.c1w, self.c1b = sd["ctx.0.weight"].T.copy(), sd["ctx.0.bias"]
        self.c2w, self.c2b = sd["ctx.2.weight"].T.copy(), sd["ctx.2.bias"]
        p1 = sd["prior.0.weight"].T.copy()
        p1[:N_FEATURES] *= _FEATURE_SCALE
        self.p1w, self.p1b = p1, sd["prior.0.bias"]
        self.p2w, self.p2b = sd["prior.2.weight"][0].copy(), float(sd["prior.2.bias"][0])
        self.temp = float(sd["temp"])
        self.queries, self.dim = net.queries, net.dim

    def rep(self, mids: np.ndarray, feats: np.ndarray, tables: np.ndarray) -> np.ndarray:
        h = np.maximum(feats @ self.f1w + self.f1b, 0)
        r = self.emb[mids] + h @ self.f2w + self.f2b + self.tab[tables]
        r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-6)
        return r

    def query(self, ctx_now: np.ndarray, ctx_past: np.ndarray) -> np.ndarray:
        h = np.maximum(np.concatenate([ctx_now, ctx_past]) @ self.c1w + self.c1b, 0)
        q = (h @ self.c2w + self.c2b).reshape(self.queries, self.dim)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-6)
        return q

    def score(self, q: np.ndarray, r: np.ndarray, feats: np.ndarray, cfeats: np.ndarray) -> np.ndarray:
        sim = (r @ q.T).max(axis=1)
        h = np.maximum(feats @ self.p1w[:N_FEATURES] + cfeats @ self.p1w[N_FEATURES:] + self.p1b, 0)
        return self.temp * sim + h @ self.p2w + self.p2b

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in self.ARRAYS}
        out.update({name: np.asarray(getattr(self, name)) for name in self.SCALARS})
        return out
