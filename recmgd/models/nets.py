"""The networks: the caching model, the prefetching model, and their numpy inference twins.

Training runs in torch; inference in the policies runs on numpy copies of the weights (a step holds a
few dozen rows, where torch's per-call overhead would dominate), with the thread count bounded by the
caller.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recmgd.models.features import N_CAND_FEATURES, N_FEATURES, N_TABLE_SLOTS

# Per-feature normalisation is folded into the first layer; these are rough scales of the log features.
_FEATURE_SCALE = 0.25


class CacheNet(nn.Module):
    """Two heads at a row's access: logit of 'OPT still holds it at its next use' (keep-priority and
    admission), and log(1 + steps to its next use) (Belady order among the rows kept)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = hidden
        self.lin1 = nn.Linear(N_FEATURES, hidden)
        self.table = nn.Embedding(N_TABLE_SLOTS, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.table.weight)

    def forward(self, feats: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """(N, 2): keep logit, predicted log1p(steps to next use)."""
        h = torch.relu(self.lin1(feats * _FEATURE_SCALE) + self.table(tables))
        h = torch.relu(self.lin2(h))
        return self.out(h)


class NumpyCacheNet:
    """CacheNet's forward pass in numpy (float32)."""

    def __init__(self, net: CacheNet) -> None:
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


class PrefetchNet(nn.Module):
    """Set prediction of the rows OPT will miss in the next W steps.

    Every row has a representation ``r = normalize(E[id] + F(features))``: a learned embedding for rows
    seen in training (rows never seen get E = 0 and are described by their history alone) plus a
    projection of its history features. From the current context (the mean representation of the rows
    read in the last step and of a decayed summary of earlier steps) the net emits ``K`` query vectors;
    a candidate's score is its similarity to the nearest query. Trained with a Chamfer set loss between
    queries and the representations of the true future misses (``loss="chamfer"``), or with binary
    cross-entropy on the candidate scores (``loss="ce"``, the ablation).
    """

    def __init__(self, n_rows: int, dim: int = 16, queries: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.n_rows, self.dim, self.queries = n_rows, dim, queries
        self.emb = nn.Embedding(n_rows + 1, dim)  # last row: unknown
        nn.init.normal_(self.emb.weight, std=0.1)
        with torch.no_grad():
            self.emb.weight[n_rows].zero_()
        self.feat = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.table = nn.Embedding(N_TABLE_SLOTS, dim)
        nn.init.zeros_(self.table.weight)
        self.ctx = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, queries * dim))
        self.prior = nn.Sequential(nn.Linear(N_FEATURES + N_CAND_FEATURES, hidden), nn.ReLU(),
                                   nn.Linear(hidden, 1))
        self.temp = nn.Parameter(torch.tensor(5.0))

    def rep(self, ids: torch.Tensor, feats: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        r = self.emb(ids) + self.feat(feats * _FEATURE_SCALE) + self.table(tables)
        return nn.functional.normalize(r, dim=-1)

    def query(self, ctx_now: torch.Tensor, ctx_past: torch.Tensor) -> torch.Tensor:
        q = self.ctx(torch.cat([ctx_now, ctx_past], dim=-1)).view(*ctx_now.shape[:-1], self.queries, self.dim)
        return nn.functional.normalize(q, dim=-1)

    def prior_logit(self, feats: torch.Tensor, cfeats: torch.Tensor) -> torch.Tensor:
        return self.prior(torch.cat([feats * _FEATURE_SCALE, cfeats], dim=-1)).squeeze(-1)

    def score(self, q: torch.Tensor, r: torch.Tensor, feats: torch.Tensor, cfeats: torch.Tensor
              ) -> torch.Tensor:
        """q: (B, K, d); r: (B, N, d); feats: (B, N, F); cfeats: (B, N, C) -> logits (B, N)."""
        sim = torch.einsum("bkd,bnd->bnk", q, r).amax(-1)
        return self.temp * sim + self.prior_logit(feats, cfeats)


class NumpyPrefetchNet:
    """PrefetchNet's inference in numpy."""

    def __init__(self, net: PrefetchNet) -> None:
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
