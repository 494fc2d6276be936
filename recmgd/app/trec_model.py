"""The server's TorchRec DLRM over a trace: one EmbeddingBagConfig per trace table (feature ``f<t>``), the
tables' weights from a seed, TorchRec's ``torchrec.models.dlrm.DLRM`` over either TorchRec's own
EmbeddingBagCollection (all rows in DRAM) or recmg's ``TieredEmbeddingBagCollection`` (rows in a pool), and
the KeyedJaggedTensor of a run of the trace's samples (one request a sample).

Both variants get the same weights (the dense and over arch from ``torch.manual_seed(seed)``, the tables
from ``table_weights``), so they give the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

from recmgd.app.weights import table_weights
from recmgd.keys import key_row, key_table
from recmgd.pool import Pool
from recmgd.torchrec_ebc import TieredEmbeddingBagCollection, pool_tables
from recmgd.trace import Trace

DENSE_FEATURES = 13  # Criteo's dense features, as DLRM's benchmarks use
# the MLPs of TorchRec's DLRM example for Criteo (torchrec/examples dlrm_main: dense 512-256-D,
# over 512-512-256-1)
DENSE_ARCH = (512, 256)
OVER_ARCH = (512, 512, 256, 1)


def table_configs(sizes: Sequence[int], dim: int) -> list[EmbeddingBagConfig]:
    """One sum-pooled table a trace table: ``t<i>`` with feature ``f<i>``."""
    return [EmbeddingBagConfig(num_embeddings=int(r), embedding_dim=dim, name=f"t{i}",
                               feature_names=[f"f{i}"]) for i, r in enumerate(sizes)]


def _dlrm(ebc: Any, dim: int, seed: int) -> DLRM:
    torch.manual_seed(seed)
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE_FEATURES,
                 dense_arch_layer_sizes=[*DENSE_ARCH, dim], over_arch_layer_sizes=list(OVER_ARCH))
    return model.eval()


def dram_dlrm(sizes: Sequence[int], dim: int, seed: int) -> DLRM:
    """TorchRec's DLRM over TorchRec's EmbeddingBagCollection, every row in DRAM."""
    cfgs = table_configs(sizes, dim)
    ebc = EmbeddingBagCollection(tables=cfgs, device=torch.device("cpu"))
    with torch.no_grad():
        for t, lo, w in table_weights(sizes, dim, seed):
            ebc.embedding_bags[f"t{t}"].weight[lo:lo + len(w)] = torch.from_numpy(w)
    return _dlrm(ebc, dim, seed)


def pool_dlrm(pool: Pool, dim: int, seed: int) -> tuple[DLRM, TieredEmbeddingBagCollection]:
    """TorchRec's DLRM with its EmbeddingBagCollection swapped for recmg's, over a pool that already holds
    the weights (``recmgd.app.weights.write_weights``)."""
    sizes = [t.rows for t in pool.tables]
    col = TieredEmbeddingBagCollection(table_configs(sizes, dim), pool)
    if pool_tables(col.embedding_bag_configs()) != [(t.rows, t.dim) for t in pool.tables]:
        raise ValueError(f"pool {pool.name} does not have dim {dim} everywhere")
    return _dlrm(col, dim, seed), col


class Requests:
    """A trace's samples as requests: ``kjt(lo, hi)`` is the KeyedJaggedTensor of samples lo..hi-1."""

    def __init__(self, trace: Trace, n_tables: int) -> None:
        self.keys = np.asarray(trace.keys, dtype=np.int64)
        self.offsets = np.asarray(trace.sample_offsets, dtype=np.int64)
        self.n = len(self.offsets) - 1
        self.n_tables = int(n_tables)
        self.names = [f"f{t}" for t in range(self.n_tables)]

    def kjt(self, lo: int, hi: int) -> KeyedJaggedTensor:
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        keys = self.keys[a:b]
        n = hi - lo
        sample = np.repeat(np.arange(n), np.diff(self.offsets[lo:hi + 1]))
        table = key_table(keys)
        order = np.argsort(table, kind="stable")  # feature-major, samples in order within a feature
        lengths = np.bincount(table * n + sample, minlength=self.n_tables * n)
        return KeyedJaggedTensor(keys=self.names, values=torch.from_numpy(key_row(keys)[order]),
                                 lengths=torch.from_numpy(lengths.astype(np.int64)), stride=n)
