"""The PyTorch side of the pool: ``TieredEmbeddingBag``, an nn.Module over one table of a Pool.

Kept apart from recmgd.pool so that importing the pool (the daemon does) does not import torch;
``recmgd.pool.TieredEmbeddingBag`` resolves to this class on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from recmgd.pool import _MODES, Pool

__all__ = ["TieredEmbeddingBag", "not_copied", "outside_graph", "refuse_tracing"]

_WRITE_CHUNK = 65536  # rows a write_rows call when a whole table is loaded (bounded temporary memory)


def load_table(pool: Pool, table: int, weight: torch.Tensor | np.ndarray, what: str) -> None:
    """Write a whole table's weight (rows x dim; any float dtype, on any device) into the pool's slow
    tier, 65,536 rows a write_rows call. ValueError naming ``what`` when its shape is not the table's."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to("cpu", torch.float32).numpy()
    w = np.asarray(weight, dtype=np.float32)
    info = pool.tables[table]
    if w.shape != (info.rows, info.dim):
        raise ValueError(f"{what}: weight is {tuple(w.shape)}, the pool's table {table} is {info.rows} x "
                         f"{info.dim}")
    for lo in range(0, info.rows, _WRITE_CHUNK):
        hi = min(info.rows, lo + _WRITE_CHUNK)
        pool.write_rows(table, np.arange(lo, hi, dtype=np.int64), w[lo:hi])


def not_copied(module: nn.Module) -> NoReturn:
    """What copying or pickling a module over a pool raises: its rows live in the pool's shared memory,
    which a copy would not own (another process attaches the pool and builds its own module)."""
    pool = getattr(module, "pool", None)
    raise TypeError(f"{type(module).__name__} is a view of shared-memory pool "
                    f"{getattr(pool, 'name', '?')!r} and is not copied or pickled: attach the pool "
                    "(Pool.attach) where it is needed and build the module there")


@functools.cache
def outside_graph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, run by torch.compile outside its graph (dynamo cannot trace a native call). Made on first use
    under torch.compile: building it imports dynamo, about a second that an eager app does not pay."""
    return torch.compiler.disable(fn)


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

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if torch.compiler.is_compiling():  # (torch.compile: the lookup outside its graph)
            return outside_graph(TieredEmbeddingBag._lookup)(self, input, offsets, per_sample_weights)
        return self._lookup(input, offsets, per_sample_weights)

    def _lookup(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None,
        per_sample_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        refuse_tracing(self)
        if per_sample_weights is not None and self.mode != "sum":
            raise NotImplementedError(
                f"embedding_bag: per_sample_weights was not None. per_sample_weights is only supported for "
                f"mode='sum' (got mode='{self.mode}')"
            )
        if (per_sample_weights is not None and not input.is_nested  # (nested: the pool's check)
                and tuple(per_sample_weights.shape) != tuple(input.shape)):
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
        # nn.Module's own: the load pre-hooks, and the unexpected keys (``weight`` among them: the module
        # holds no parameter of that name)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "weight"
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        try:
            load_table(self.pool, self.table, state_dict[key], key)
        except ValueError as e:
            error_msgs.append(str(e))

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        not_copied(self)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        not_copied(self)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, "
            f"pool={self.pool.name!r}, table={self.table}"
        )
