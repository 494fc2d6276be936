"""The caching and prefetching models' inference in numpy (no torch): what the learned policies run.

Built from the trained torch modules (recmgd.models.nets) or from the arrays a checkpoint's
``inference.npz`` holds (recmgd.models.checkpoint.load_inference), so a policy loaded from a checkpoint
never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recmgd.models.features import N_FEATURES

if TYPE_CHECKING:
    from recmgd.models.nets import CacheNet, PrefetchNet

# Per-feature normalisation is folded into the first layer; these are rough scales of the log features.
_FEATURE_SCALE = 0.25


class NumpyCacheNet:
    """CacheNet's forward pass in numpy (float32)."""

    #: the arrays that make it (what a checkpoint's inference.npz holds, prefixed "cache.")
    ARRAYS = ("w1", "tb", "w2", "b2", "w3", "b3")

    def __init__(self, net: CacheNet | dict[str, np.ndarray]) -> None:
        if isinstance(net, dict):  # the arrays themselves (no torch)
            for name in self.ARRAYS:
                setattr(self, name, np.ascontiguousarray(net[name], np.float32))
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

    def __init__(self, net: PrefetchNet | dict[str, np.ndarray]) -> None:
        if isinstance(net, dict):  # the arrays themselves (no torch)
            for name in self.ARRAYS:
                setattr(self, name, np.ascontiguousarray(net[name], np.float32))
            self.unknown, self.queries, self.dim = (int(net[n]) for n in ("unknown", "queries", "dim"))
            self.p2b, self.temp = float(net["p2b"]), float(net["temp"])
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
