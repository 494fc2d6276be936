"""The PyTorch side of the pool: ``TieredEmbeddingBag``, an nn.Module over one table of a Pool.

Kept apart from recmgd.pool so that importing the pool (the daemon does) does not import torch;
``recmgd.pool.TieredEmbeddingBag`` resolves to this class on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from recmgd.pool import _MODES, Pool

__all__ = ["TieredEmbeddingBag", "not_copied", "refuse_tracing"]

_WRITE_CHUNK = 65536  # rows a write_rows call when a state dict is loaded (bounded temporary memory)


def not_copied(module: nn.Module) -> NoReturn:
    """What copying or pickling a module over a pool raises: its rows live in the pool's shared memory,
    which a copy would not own (another process attaches the pool and builds its own module)."""
    pool = getattr(module, "pool", None)
    raise TypeError(f"{type(module).__name__} is a view of shared-memory pool "
                    f"{getattr(pool, 'name', '?')!r} and is not copied or pickled: attach the pool "
                    "(Pool.attach) where it is needed and build the module there")


def refuse_tracing(module: nn.Module) -> None:
    if torch.jit.is_tracing():
        raise RuntimeError(f"{type(module).__name__} cannot be traced (torch.jit.trace): its lookup is a "
                           "native call the tracer does not see, and the trace would return uninitialised "
                           "memory; run it eagerly (torch.compile leaves it out of its graph)")


class TieredEmbeddingBag(nn.Module):
    """Drop-in for torch.nn.EmbeddingBag (inference only) over one table of a pool; its mode defaults
    to 'mean', as nn.EmbeddingBag's does (a DLRM's tables are 'sum': say so).

    Its state dict holds ``weight`` as nn.EmbeddingBag's does, read from and written to the pool's slow
    tier (``load_state_dict`` writes the rows; the module holds no parameter, so ``.to()`` and ``.half()``
    change nothing: the output is float32 on the CPU). Under ``torch.compile`` the lookup runs outside the
    graph; ``torch.jit.trace`` is refused, and the module is not copied nor pickled (the pool's shared
    memory is not the module's to copy)."""

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

    @torch.compiler.disable  # (torch.compile runs it outside the graph: dynamo cannot trace a native call)
    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        refuse_tracing(self)
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

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        rows = self.pool.read_rows(self.table, np.arange(self.num_embeddings, dtype=np.int64))
        destination[prefix + "weight"] = torch.from_numpy(rows)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, local_metadata: Any,
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        w = state_dict[key]
        w = w.detach().to("cpu").numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        if w.shape != (self.num_embeddings, self.embedding_dim):
            error_msgs.append(f"{key}: weight is {tuple(w.shape)}; the pool's table {self.table} is "
                              f"{self.num_embeddings} x {self.embedding_dim}")
            return
        for lo in range(0, self.num_embeddings, _WRITE_CHUNK):
            hi = min(self.num_embeddings, lo + _WRITE_CHUNK)
            self.pool.write_rows(self.table, np.arange(lo, hi, dtype=np.int64), w[lo:hi])

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        not_copied(self)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        not_copied(self)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, "
            f"pool={self.pool.name!r}, table={self.table}"
        )
