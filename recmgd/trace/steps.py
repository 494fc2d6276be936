"""Steps: a trace cut into batches of B consecutive samples, deduplicated, as one flat CSR array.

A step is the set of rows one batch reads, in order of first appearance (an embedding bag reads each
row once). :class:`Steps` holds many steps as a flat int64 ``keys`` array and ``offsets`` (``n + 1``
int64 boundaries), so step ``i`` is ``keys[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from recmgd.errors import TraceError


@dataclass(frozen=True)
class Steps:
    """Deduplicated steps in CSR form (flat int64 ``keys``, ``offsets`` of length ``len + 1``)."""

    keys: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.keys[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def n_lookups(self) -> int:
        """Deduplicated lookups in all steps."""
        return int(self.offsets[-1] - self.offsets[0])

    def slice(self, start: int, stop: int) -> Steps:
        """Steps ``start`` to ``stop - 1`` (offsets rebased to 0)."""
        off = self.offsets[start:stop + 1]
        return Steps(self.keys[off[0]:off[-1]], off - off[0])

    def singletons(self) -> Steps:
        """Every lookup its own step, in the same order (the textbook, ``delay 0`` view)."""
        keys = self.keys[self.offsets[0]:self.offsets[-1]]
        return Steps(keys, np.arange(keys.shape[0] + 1, dtype=np.int64))

    def step_of(self) -> np.ndarray:
        """The step index of every flat position (int64)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))

    def as_list(self) -> list[np.ndarray]:
        """The steps as a list of int64 arrays (views)."""
        return [self[i] for i in range(len(self))]

    @classmethod
    def from_list(cls, steps: Sequence[np.ndarray]) -> Steps:
        """Steps from a list of arrays of keys (each already deduplicated)."""
        lens = np.fromiter((len(s) for s in steps), dtype=np.int64, count=len(steps))
        offsets = np.zeros(len(steps) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        keys = (np.concatenate([np.asarray(s, dtype=np.int64) for s in steps]) if len(steps)
                else np.zeros(0, dtype=np.int64))
        return cls(np.ascontiguousarray(keys, dtype=np.int64), offsets)


def as_steps(steps: Steps | Sequence[np.ndarray]) -> Steps:
    """Accept either a :class:`Steps` or a list of int64 arrays."""
    return steps if isinstance(steps, Steps) else Steps.from_list(steps)


def dedup_steps(keys: np.ndarray, step_ids: np.ndarray, n_steps: int) -> Steps:
    """Deduplicate ``keys`` within each step, keeping first appearances in order.

    ``step_ids`` is the (nondecreasing) step of every lookup, 0 .. ``n_steps - 1``.
    """
    keys = np.asarray(keys, dtype=np.int64)
    step_ids = np.asarray(step_ids, dtype=np.int64)
    n = keys.shape[0]
    if n == 0:
        return Steps(np.zeros(0, dtype=np.int64), np.zeros(n_steps + 1, dtype=np.int64))
    order = np.lexsort((keys, step_ids))  # stable: first appearance leads each (step, key) group
    sk = keys[order]
    ss = step_ids[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (sk[1:] != sk[:-1]) | (ss[1:] != ss[:-1])
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    out_keys = np.ascontiguousarray(keys[keep])
    counts = np.bincount(step_ids[keep], minlength=n_steps)
    offsets = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Steps(out_keys, offsets)


def build_steps(keys: np.ndarray, sample_offsets: np.ndarray, batch: int) -> Steps:
    """Cut lookups into steps of ``batch`` consecutive samples and deduplicate each step.

    ``sample_offsets`` (``n_samples + 1`` int64) are the sample boundaries in ``keys``. Uses the C
    core (``recmgd.simcore``, linear time) when it is built, numpy (a sort) otherwise.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    sample_offsets = np.asarray(sample_offsets, dtype=np.int64)
    n_keys = int(keys.shape[0])
    if sample_offsets.ndim != 1 or sample_offsets.shape[0] < 1:
        raise TraceError("step building: sample offsets must be a 1-D array of n_samples + 1 values")
    n_samples = sample_offsets.shape[0] - 1
    n_steps = -(-n_samples // batch)
    bounds = sample_offsets[::batch]
    if bounds.shape[0] < n_steps + 1:
        bounds = np.append(bounds, sample_offsets[-1])
    # the C builder checks these too; here they become a message instead of an error code
    back = sample_offsets[1:] < sample_offsets[:-1]  # compared, not subtracted (no int64 wrap-around)
    if back.any():
        s = int(np.flatnonzero(back)[0])
        raise TraceError(f"step building: sample {s} ends before it starts "
                         f"(offsets {int(sample_offsets[s])} then {int(sample_offsets[s + 1])})")
    if int(bounds[0]) < 0 or int(bounds[-1]) > n_keys:
        raise TraceError(f"step building: sample offsets {int(bounds[0])}..{int(bounds[-1])} outside the "
                         f"{n_keys} lookups")
    base = int(bounds[0])
    chunk = np.ascontiguousarray(keys[base:bounds[-1]], dtype=np.int64)
    fast = _dedup_native(chunk, np.ascontiguousarray(bounds - base, dtype=np.int64), n_steps)
    if fast is not None:
        return fast
    step_ids = np.repeat(np.arange(n_steps, dtype=np.int64), np.diff(bounds))
    return dedup_steps(chunk, step_ids, n_steps)


def _dedup_native(keys: np.ndarray, bounds: np.ndarray, n_steps: int) -> Steps | None:
    try:
        from recmgd.simcore import ffi, lib
    except ImportError:
        return None
    out = np.empty(keys.shape[0], dtype=np.int64)
    offsets = np.empty(n_steps + 1, dtype=np.int64)
    if keys.shape[0] == 0:
        return Steps(out, np.zeros(n_steps + 1, dtype=np.int64))
    n = lib.sc_dedup_steps(ffi.from_buffer("int64_t[]", keys), keys.shape[0],
                           ffi.from_buffer("int64_t[]", bounds), n_steps,
                           ffi.from_buffer("int64_t[]", out), ffi.from_buffer("int64_t[]", offsets))
    if n == lib.SC_EARG:
        raise TraceError("step building: step bounds outside the lookups (refused by the C core)")
    if n < 0:
        raise MemoryError("step building: out of memory")
    return Steps(out[:n].copy() if n < out.shape[0] // 2 else out[:n], offsets)
