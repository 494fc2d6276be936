"""A DLRM (Naumov et al. 2019) for inference: bottom MLP, embedding bags, pairwise dot interaction, top MLP.

The embedding bags are any modules with ``torch.nn.EmbeddingBag``'s forward signature, so the same model
runs on plain in-DRAM ``nn.EmbeddingBag`` tables (the reference) and on recmg's ``TieredEmbeddingBag``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _mlp(sizes: Sequence[int], sigmoid_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        last = i == len(sizes) - 2
        layers.append(nn.Sigmoid() if (last and sigmoid_last) else nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM with dot interaction; ``embeddings`` are EmbeddingBag-like modules of equal dim."""

    def __init__(self, dense_features: int, dim: int, embeddings: Sequence[nn.Module],
                 top_hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embeddings = nn.ModuleList(embeddings)
        self.bottom = _mlp([dense_features, 64, dim], sigmoid_last=False)
        n = len(embeddings) + 1
        self.top = _mlp([dim + n * (n - 1) // 2, top_hidden, 1], sigmoid_last=True)
        with torch.no_grad():
            for p in list(self.bottom.parameters()) + list(self.top.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        iu = torch.triu_indices(n, n, offset=1)
        self.register_buffer("_iu0", iu[0], persistent=False)
        self.register_buffer("_iu1", iu[1], persistent=False)

    @torch.inference_mode()
    def forward(self, dense: torch.Tensor, ids: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        feats = [x] + [emb(i, o) for emb, i, o in zip(self.embeddings, ids, offsets, strict=True)]
        t = torch.stack(feats, dim=1)  # batch x n x dim
        inter = torch.bmm(t, t.transpose(1, 2))[:, self._iu0, self._iu1]
        return self.top(torch.cat([x, inter], dim=1)).squeeze(1)
