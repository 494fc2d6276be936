"""The PyTorch side of the pool: ``TieredEmbeddingBag``, an nn.Module over one table of a Pool.

Kept apart from recmgd.pool so that importing the pool (the daemon does) does not import torch;
``recmgd.pool.TieredEmbeddingBag`` resolves to this class on first use.
"""

from __future__ import annotations

import torch
from torch import nn

from recmgd.pool import _MODES, Pool

__all__ = ["TieredEmbeddingBag"]


class TieredEmbeddingBag(nn.Module):
    """Drop-in for torch.nn.EmbeddingBag (inference only) over one table of a pool; its mode defaults
    to 'mean', as nn.EmbeddingBag's does (a DLRM's tables are 'sum': say so)."""

    def __init__(self, pool: Pool, table: int, mode: str = "mean", include_last_offset: bool = False) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode has to be one of sum, mean or max, got {mode!r}")
        t = pool._table(table)  # an integer in range, or the pool's one-line error
        info = pool.tables[t]
        self.pool = pool
        self.table = t
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.num_embeddings = info.rows
        self.embedding_dim = info.dim

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if per_sample_weights is not None and self.mode != "sum":
            raise NotImplementedError(
                f"embedding_bag: per_sample_weights was not None. per_sample_weights is only supported for "
                f"mode='sum' (got mode='{self.mode}')"
            )
        if per_sample_weights is not None and tuple(per_sample_weights.shape) != tuple(input.shape):
            raise ValueError(
                f"per_sample_weights has shape {tuple(per_sample_weights.shape)}; "
                f"input has {tuple(input.shape)}"
            )
        return self.pool.embedding_bag(
            self.table, input, offsets, self.mode, per_sample_weights, self.include_last_offset
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, "
            f"pool={self.pool.name!r}, table={self.table}"
        )
