"""The ML baseline's network: a Voyager-style LSTM next-access model at row granularity.

Voyager (Shi et al., ASPLOS'21) embeds page and offset and predicts the next access with an LSTM and a
softmax. Rows of an embedding table have no page/offset structure (ids are hashed), so here the input is
a learned embedding of the row itself and the output a softmax over the rows used at least twice in
training (at most ``max_out``, the most frequent; Voyager likewise bounds its output vocabulary), plus
one "other" class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class VoyagerNet(nn.Module):
    def __init__(self, n_rows: int, out_ids: np.ndarray, emb: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.n_rows, self.hidden = n_rows, hidden
        self.out_ids = np.asarray(out_ids, np.int64)  # output class -> model id
        self.emb = nn.Embedding(n_rows + 1, emb)  # last: unknown row
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, len(self.out_ids) + 1)  # last: any other row

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, st = self.lstm(self.emb(x), state)
        return self.out(h), st


class NumpyVoyager:
    """Step-by-step inference of VoyagerNet in numpy: feed a step's rows, rank the next ones."""

    def __init__(self, net: VoyagerNet) -> None:
        sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
        # fold the embedding into the input projection: one row of x-gates per row id
        self.xg = sd["emb.weight"] @ sd["lstm.weight_ih_l0"].T + sd["lstm.bias_ih_l0"] + sd["lstm.bias_hh_l0"]
        self.whh = sd["lstm.weight_hh_l0"].T.copy()
        self.ow = sd["out.weight"].T.copy()
        self.ob = sd["out.bias"]
        self.hidden = net.hidden
        self.n_rows = net.n_rows
        self.out_ids = net.out_ids
        self.reset()

    def reset(self) -> None:
        self.h = np.zeros(self.hidden, np.float32)
        self.c = np.zeros(self.hidden, np.float32)

    def feed(self, mids: np.ndarray) -> None:
        H = self.hidden
        h, c = self.h, self.c
        for g0 in self.xg[mids]:
            g = g0 + h @ self.whh
            i = 1 / (1 + np.exp(-g[:H]))
            f = 1 / (1 + np.exp(-g[H : 2 * H]))
            gg = np.tanh(g[2 * H : 3 * H])
            o = 1 / (1 + np.exp(-g[3 * H :]))
            c = f * c + i * gg
            h = o * np.tanh(c)
        self.h, self.c = h, c

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most likely next rows (model ids, excluding 'other') and their log-probabilities."""
        logits = self.h @ self.ow + self.ob
        n_out = len(self.out_ids)
        k = min(k, n_out)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        m = logits.max()
        lse = m + np.log(np.exp(logits - m).sum())
        body = logits[:n_out]
        idx = np.argpartition(-body, k - 1)[:k]
        idx = idx[np.argsort(-body[idx])]
        return self.out_ids[idx], (body[idx] - lse).astype(np.float32)
