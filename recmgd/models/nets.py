"""The networks: the caching model, the prefetching model, and their numpy inference twins.

Training runs in torch; inference in the policies runs on numpy copies of the weights (a step holds a
few dozen rows, where torch's per-call overhead would dominate), with the thread count bounded by the
caller.
"""

from __future__ import annotations

import torch
from torch import nn

from recmgd.models.features import N_CAND_FEATURES, N_FEATURES, N_TABLE_SLOTS
from recmgd.models.numpy_nets import _FEATURE_SCALE, NumpyCacheNet, NumpyPrefetchNet

__all__ = ["CacheNet", "NumpyCacheNet", "NumpyPrefetchNet", "PrefetchNet"]


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


