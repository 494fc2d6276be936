"""TorchRec front: ``TieredEmbeddingBagCollection``, a drop-in for ``torchrec.EmbeddingBagCollection`` at
inference whose tables live in a recmg pool (needs the ``torchrec`` extra; the pool and daemon do not).

Built from the same ``EmbeddingBagConfig`` list as TorchRec's EBC; ``forward(KeyedJaggedTensor) ->
KeyedTensor`` with TorchRec's key order (table order, then each table's features) and pooling (sum, mean,
per-sample weights when ``is_weighted``). All of a batch's bags go to the pool in one table-batched native
call (``Pool.embedding_bags_windows``, which fans out over the pool's threads) that writes them side by
side into the KeyedTensor's values: no per-table Python and no concatenation. Config i is pool table i.

Weights come from a TorchRec state dict (``load_state_dict``: keys ``embedding_bags.<name>.weight``, so a
model holding the collection, TorchRec's DLRM for one, loads TorchRec's own checkpoint) or from an
existing EBC (``from_ebc``); they are written to the pool's slow tier (``Pool.write_rows``).
``state_dict()`` reads them back from the slow tier.

Batches: each ``forward`` ends one batch in the process's access ring (``batch_boundary=True``), so the
daemon sees one step a forward. ``prefetch(kjt)`` announces the rows of a batch that will run later
(hint records, ``Pool.hint``): the daemon fetches announced rows ahead of the policy's own work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import torch
from torchrec.modules.embedding_configs import (
    DataType,
    EmbeddingBagConfig,
    PoolingType,
    pooling_type_to_str,
)
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingBagCollectionInterface,
    get_embedding_names_by_table,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor
from torchrec.sparse.tensor_dict import maybe_td_to_kjt

from recmgd.pool import Pool
from recmgd.pool_torch import load_table, not_copied, outside_graph, refuse_tracing

__all__ = ["TieredEmbeddingBagCollection", "pool_tables", "pool_dtype"]

log = logging.getLogger(__name__)


def pool_tables(tables: Sequence[EmbeddingBagConfig]) -> list[tuple[int, int]]:
    """The (rows, dim) list ``Pool.create`` takes for these configs (config i = pool table i)."""
    return [(int(c.num_embeddings), int(c.embedding_dim)) for c in tables]


def pool_dtype(tables: Sequence[EmbeddingBagConfig]) -> str:
    """The pool dtype of these configs (all FP32 or all FP16; a pool has one dtype)."""
    kinds = {c.data_type for c in tables}
    if kinds == {DataType.FP32} or not kinds:
        return "float32"
    if kinds == {DataType.FP16}:
        return "float16"
    mixed = sorted(k.value for k in kinds)
    raise ValueError(f"tables mix data types {mixed}: a pool holds one (FP32 or FP16)")


class TieredEmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """``torchrec.EmbeddingBagCollection`` (inference) over the tables of a recmg pool."""

    def __init__(self, tables: Sequence[EmbeddingBagConfig], pool: Pool, is_weighted: bool = False,
                 batch_boundary: bool = True) -> None:
        super().__init__()
        tables = list(tables)
        if not tables:
            raise ValueError("no tables: an EmbeddingBagCollection needs at least one EmbeddingBagConfig")
        names = [c.name for c in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table name in {names}")
        if len(pool.tables) != len(tables):
            raise ValueError(f"pool {pool.name} has {len(pool.tables)} tables; "
                             f"the configs name {len(tables)}")
        want = pool_dtype(tables)
        if pool.dtype != want:
            raise ValueError(f"pool {pool.name} holds {pool.dtype}; the configs ask for {want}")
        for i, (c, info) in enumerate(zip(tables, pool.tables, strict=True)):
            if (info.rows, info.dim) != (c.num_embeddings, c.embedding_dim):
                raise ValueError(f"table {c.name}: config {c.num_embeddings} x {c.embedding_dim}, "
                                 f"pool {pool.name} table {i} is {info.rows} x {info.dim}")
            if not c.feature_names:
                c.feature_names = [c.name]
            if c.pooling not in (PoolingType.SUM, PoolingType.MEAN):
                raise ValueError(f"table {c.name}: pooling {c.pooling.name} is not supported (SUM or MEAN)")
            if is_weighted and c.pooling != PoolingType.SUM:
                raise ValueError(f"table {c.name}: per-sample weights need SUM pooling "
                                 f"(got {c.pooling.name}), as torch.nn.EmbeddingBag")
        self.pool = pool
        self._configs = tables
        self._is_weighted = bool(is_weighted)
        self.batch_boundary = bool(batch_boundary)
        self._embedding_names = [n for names in get_embedding_names_by_table(tables) for n in names]
        # one bag a (table, feature): pool table, feature name, pooling mode, dim
        self._bags: list[tuple[int, str, str]] = [
            (t, f, pooling_type_to_str(c.pooling)) for t, c in enumerate(tables) for f in c.feature_names
        ]
        self._lengths_per_embedding = [tables[t].embedding_dim for t, _, _ in self._bags]
        # FP16 tables: TorchRec's bags are float16 nn.EmbeddingBags, whose sums torch rounds to float16
        # (a mean: the rounded sum divided by the count, rounded again) before TorchRec widens them
        # (.float()); the pool pools float16 rows in float32, so the collection asks it for sums and
        # rounds and divides the same way, to equal TorchRec's output
        self._round_fp16 = want == "float16"

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, name: str, tables: Sequence[EmbeddingBagConfig], slots: int, slow: str = "dram",
               is_weighted: bool = False, **pool_options: Any) -> TieredEmbeddingBagCollection:
        """A new pool shaped for ``tables`` (``Pool.create``'s options) and a collection over it (rows 0)."""
        tables = list(tables)
        pool = Pool.create(name, pool_tables(tables), slots, slow=slow, dtype=pool_dtype(tables),
                           **pool_options)
        return cls(tables, pool, is_weighted=is_weighted)

    @classmethod
    def from_ebc(cls, ebc: EmbeddingBagCollection, pool: Pool,
                 batch_boundary: bool = True) -> TieredEmbeddingBagCollection:
        """A collection with ``ebc``'s configs over ``pool``, its weights written into the pool."""
        out = cls(ebc.embedding_bag_configs(), pool, is_weighted=ebc.is_weighted(),
                  batch_boundary=batch_boundary)
        out.load_weights({n: m.weight for n, m in ebc.embedding_bags.items()})
        return out

    def load_weights(self, weights: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Write each table's full weight (``{table name: rows x dim}``) into the pool's slow tier."""
        for c in self._configs:
            if c.name not in weights:
                raise ValueError(f"no weight for table {c.name}")
        for t, c in enumerate(self._configs):
            load_table(self.pool, t, weights[c.name], f"table {c.name}")
        log.debug("pool %s: loaded %d tables", self.pool.name, len(self._configs))

    # TorchRec's state dict layout: <prefix>embedding_bags.<table name>.weight
    def _weight_key(self, prefix: str, c: EmbeddingBagConfig) -> str:
        return f"{prefix}embedding_bags.{c.name}.weight"

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for t, c in enumerate(self._configs):
            rows = self.pool.read_rows(t, np.arange(c.num_embeddings, dtype=np.int64))
            destination[self._weight_key(prefix, c)] = torch.from_numpy(rows)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, local_metadata: Any,
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        found = {}
        for c in self._configs:
            key = self._weight_key(prefix, c)
            if key in state_dict:
                found[c.name] = state_dict[key]
            else:
                missing_keys.append(key)
        if len(found) == len(self._configs):
            try:
                self.load_weights(found)
            except ValueError as e:
                error_msgs.append(str(e))
        elif found:
            error_msgs.append(f"pool {self.pool.name}: the state dict holds {len(found)} of "
                              f"{len(self._configs)} tables; nothing loaded")
        if strict:
            mine = {self._weight_key(prefix, c) for c in self._configs}
            sub = f"{prefix}embedding_bags."
            unexpected_keys.extend(k for k in state_dict if k.startswith(sub) and k not in mine)

    # ------------------------------------------------------------------ TorchRec's interface
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _windows(self, features: KeyedJaggedTensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor,
                                                             torch.Tensor | None]:
        """Per bag: its pool table and its window of the KJT's offsets (``stride + 1`` bag starts into the
        values); then the values and the weights (None unless weighted)."""
        if features.variable_stride_per_key():
            raise ValueError("variable batch size per feature (VBE) KeyedJaggedTensors are not supported")
        index = {k: i for i, k in enumerate(features.keys())}
        if len(index) != len(features.keys()):
            dup = next(k for i, k in enumerate(features.keys()) if index[k] != i)
            raise ValueError(f"the KeyedJaggedTensor names feature {dup!r} more than once")
        missing = [f for _, f, _ in self._bags if f not in index]
        if missing:
            raise ValueError(f"the KeyedJaggedTensor lacks feature {missing[0]!r} (has {features.keys()})")
        stride = features.stride()
        offsets = features.offsets().numpy().astype(np.int64, copy=False)
        if len(offsets) != len(index) * stride + 1:
            raise ValueError(f"the KeyedJaggedTensor has {len(offsets)} offsets; expected "
                             f"{len(index) * stride + 1}")
        if offsets[0] != 0:  # (TorchRec's split of the values fails; the windows would skip values)
            raise ValueError(f"the KeyedJaggedTensor's offsets start at {int(offsets[0])}, not 0")
        weights = None
        if self._is_weighted:
            weights = features.weights_or_none()
            if weights is None:
                raise ValueError("is_weighted collection: the KeyedJaggedTensor has no weights")
        tables = np.asarray([t for t, _, _ in self._bags], dtype=np.int64)
        feature = np.asarray([index[f] for _, f, _ in self._bags], dtype=np.int64)
        if stride:
            windows = np.lib.stride_tricks.sliding_window_view(offsets, stride + 1)[::stride][feature]
        else:
            windows = np.zeros((len(tables), 1), dtype=np.int64)
        return tables, windows, features.values(), weights

    def _split(self, features: KeyedJaggedTensor) -> tuple[list[int], list[np.ndarray], list[np.ndarray],
                                                           list[np.ndarray | None] | None]:
        """Per bag: pool table, ids, bag start offsets, weights (all of one batch)."""
        tables, windows, values, weights = self._windows(features)
        v = values.numpy()
        w = None if weights is None else weights.detach().to(torch.float32).numpy()
        ids = [v[o[0]:o[-1]] for o in windows]
        offs = [o[:-1] - o[0] for o in windows]
        wts = None if w is None else [w[o[0]:o[-1]] for o in windows]
        return tables.tolist(), ids, offs, wts

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """One table-batched native call: every bag's rows, written side by side into the KeyedTensor's
        values (no per-table arguments or outputs, no concatenation). Outside ``torch.compile``'s graph;
        ``torch.jit.trace`` is refused (the native call is invisible to it)."""
        if torch.compiler.is_compiling():
            return outside_graph(TieredEmbeddingBagCollection._lookup)(self, features)
        return self._lookup(features)

    def _lookup(self, features: KeyedJaggedTensor) -> KeyedTensor:
        refuse_tracing(self)
        features = maybe_td_to_kjt(features, None)  # (a TensorDict of jagged features, as TorchRec takes)
        tables, windows, values, weights = self._windows(features)
        modes = [m for _, _, m in self._bags]
        if self._round_fp16:
            modes = ["sum"] * len(modes)
        out = self.pool.embedding_bags_windows(tables, values, windows, modes, weights)
        if self.batch_boundary:
            self.pool.end_batch()
        if self._round_fp16:
            out = self._as_fp16_bags(out, windows)
        inverse = features.inverse_indices_or_none()
        if inverse is not None:
            out = self._expand(out, inverse)
        return KeyedTensor(keys=self._embedding_names, length_per_key=self._lengths_per_embedding,
                           values=out)

    def _as_fp16_bags(self, sums: torch.Tensor, windows: np.ndarray) -> torch.Tensor:
        """The bags' float32 sums as torch's float16 nn.EmbeddingBag gives them, widened: each sum rounded
        to float16, a mean bag's divided by its length (an empty bag's stays 0) and rounded again."""
        out = sums.to(torch.float16).to(torch.float32)
        col = 0
        for b, ((_, _, mode), dim) in enumerate(zip(self._bags, self._lengths_per_embedding, strict=True)):
            if mode == "mean":
                # the length as torch's float16 kernel divides by it: rounded to float16 (2,049 ids count
                # as 2,048; from 65,520 on it is inf, and the mean 0)
                n = torch.from_numpy(np.maximum(np.diff(windows[b]), 1).astype(np.float32))
                n = n.to(torch.float16).to(torch.float32)
                mean = out[:, col:col + dim] / n[:, None]
                out[:, col:col + dim] = mean.to(torch.float16).to(torch.float32)
            col += dim
        return out

    def _expand(self, out: torch.Tensor, inverse: tuple[list[str], torch.Tensor]) -> torch.Tensor:
        """A KJT of deduplicated samples (``inverse_indices``: per feature, the row of each sample): each
        feature's pooled rows put back in sample order, as TorchRec's EBC does."""
        names, index = inverse
        where = {n: i for i, n in enumerate(names)}
        missing = [f for _, f, _ in self._bags if f.split("@")[0] not in where]
        if missing:
            raise ValueError(f"the KeyedJaggedTensor's inverse_indices lack feature {missing[0]!r}")
        parts, col = [], 0
        for (_, f, _), dim in zip(self._bags, self._lengths_per_embedding, strict=True):
            parts.append(out[:, col:col + dim].index_select(0, index[where[f.split("@")[0]]].to(torch.int64)))
            col += dim
        return torch.cat(parts, dim=1)

    def prefetch(self, features: KeyedJaggedTensor) -> int:
        """Announce the rows of a batch that will run later (hint records); returns how many rows."""
        tables, ids, _, _ = self._split(maybe_td_to_kjt(features, None))
        per: dict[int, list[np.ndarray]] = {}
        for t, i in zip(tables, ids, strict=True):
            per.setdefault(t, []).append(i)
        n = 0
        for t, parts in per.items():
            rows = np.unique(np.concatenate(parts))
            if rows.size:
                self.pool.hint(t, rows)
                n += int(rows.size)
        return n

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        not_copied(self)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        not_copied(self)

    def extra_repr(self) -> str:
        names = [c.name for c in self._configs]
        return f"pool={self.pool.name!r}, tables={names}, weighted={self._is_weighted}"
