"""The one door to the simulator core's C library (``recmgd._simcore``, built from ``native/policy/``).

Every module that calls the C core imports ``ffi`` and ``lib`` from here, so a missing or stale build is
one error with one fix (rebuild: ``make native``) wherever it is first needed, and C return codes turn
into Python errors by one rule (:func:`check`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recmgd.errors import PolicyError

try:
    from recmgd._simcore import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError("recmgd._simcore (the simulator core's C library) is not built; run `make native` "
                      "(or `python recmgd/_build_simcore.py` from the repository root)") from exc

if not hasattr(lib, "lp_step"):  # pragma: no cover - a stale build
    raise ImportError("recmgd._simcore is older than this package (no lp_step); rebuild it: `make native`")

_ERRORS = {
    lib.SC_ENOMEM: "out of memory",
    lib.SC_EOVERFLOW: "more resident rows than the capacity",
    lib.SC_EFUTURE: "OPT driven through steps other than the future it was given (set_future)",
    lib.SC_EBADID: "an id outside the id map",
    lib.SC_EARG: "a bad argument",
}


def check(rc: int, what: str) -> None:
    """Raise for a failed C call: MemoryError for SC_ENOMEM, PolicyError naming ``what`` and the code's
    meaning otherwise."""
    if rc == lib.SC_OK:
        return
    if rc == lib.SC_ENOMEM:
        raise MemoryError(f"{what}: out of memory")
    raise PolicyError(f"{what}: {_ERRORS.get(rc, f'error {rc}')}")


def first_mask(keys: np.ndarray) -> np.ndarray:
    """Whether each key is the first appearance of its value (keys int64, >= 0): one pass over a hash
    set sized by the keys (``sc_first_mask``), not by the key space."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    n = keys.shape[0]
    keep = np.empty(n, dtype=np.bool_)
    if n:
        rc = lib.sc_first_mask(ffi.from_buffer("int64_t[]", keys), n, ffi.from_buffer("uint8_t[]", keep))
        if rc < 0:
            check(int(rc), "first_mask")
    return keep


class RowIndex:
    """int64 keys -> dense int32 indices of the rows something tracks, with indices released for reuse
    (``sc_idmap`` and its free list): per-row state kept in arrays indexed by it is sized by the rows
    tracked, not by the key space. :meth:`find` gives -1 for a key not tracked."""

    def __init__(self) -> None:
        ptr = lib.sc_idmap_new()
        if ptr == ffi.NULL:
            raise MemoryError("sc_idmap_new: out of memory")
        self._ptr: Any = ffi.gc(ptr, lib.sc_idmap_free)
        check(lib.sc_idmap_set_load(self._ptr, lib.SC_IDMAP_DAEMON_LOAD), "sc_idmap_set_load")

    @property
    def size(self) -> int:
        """Indices handed out so far (live and free): per-index arrays need this many entries."""
        return int(lib.sc_idmap_size(self._ptr))

    def __len__(self) -> int:
        """Keys tracked now."""
        return int(lib.sc_idmap_live(self._ptr))

    @property
    def nbytes(self) -> int:
        """Bytes the map holds allocated (hash slots, index -> key array, free list)."""
        return int(lib.sc_idmap_bytes(self._ptr))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key, -1 for keys not tracked."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        ids = np.empty(keys.shape[0], dtype=np.int32)
        if keys.shape[0]:
            lib.sc_idmap_find(self._ptr, ffi.from_buffer("int64_t[]", keys), keys.shape[0],
                              ffi.from_buffer("int32_t[]", ids))
        return ids

    def track(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key, tracking keys not tracked yet (freed indices first)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        ids = np.empty(keys.shape[0], dtype=np.int32)
        if keys.shape[0]:
            check(lib.sc_idmap_map(self._ptr, ffi.from_buffer("int64_t[]", keys), keys.shape[0],
                                   ffi.from_buffer("int32_t[]", ids)), "row index")
        return ids

    def keys(self, ids: np.ndarray) -> np.ndarray:
        """Keys of tracked indices (each must be one :meth:`find` or :meth:`track` gave, not released)."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        out = np.empty(ids.shape[0], dtype=np.int64)
        if ids.shape[0]:
            if int(ids.min()) < 0 or int(ids.max()) >= self.size:
                check(lib.SC_EBADID, "row index keys")
            lib.sc_idmap_keys(self._ptr, ffi.from_buffer("int32_t[]", ids), ids.shape[0],
                              ffi.from_buffer("int64_t[]", out))
        return out

    def release(self, ids: np.ndarray) -> None:
        """Stop tracking the keys of these indices (repeats and indices released already are skipped)."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.shape[0]:
            check(lib.sc_idmap_release(self._ptr, ffi.from_buffer("int32_t[]", ids), ids.shape[0]),
                  "row index release")


__all__ = ["ffi", "lib", "check", "first_mask", "RowIndex"]
