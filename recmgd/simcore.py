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


#: requests of at least this many bytes get a mapping of their own in the daemon (see
#: :func:`map_large_allocations`); below it numpy's per-batch temporaries stay on the heap
LARGE_ALLOCATION = 1 << 20


def map_large_allocations(threshold: int = LARGE_ALLOCATION) -> bool:
    """Make the process's allocator serve every request of ``threshold`` bytes or more from a mapping of
    its own, for good (``sc_map_large_allocations``): the policies' key maps and per-id arrays grow by
    realloc, and with glibc's default (a threshold that rises as mappings are freed) each growth left its
    old copy as a hole in the heap. Process-wide: the daemon calls it once at start. False when the
    process's allocator is not glibc's (a preloaded jemalloc or tcmalloc, AddressSanitizer) and keeps
    its own policy; a threshold outside 4 KiB .. 32 MiB is a PolicyError."""
    rc = int(lib.sc_map_large_allocations(int(threshold)))
    if rc < 0:
        check(rc, f"allocator threshold {threshold}")
    return rc == 1


#: the holders of a shared key map (:meth:`IdMap.share`): a policy on the daemon's loop thread (a classical
#: one that gives ids back, or the learned C step; its own calls, and :meth:`IdMap.map` /
#: :meth:`IdMap.release` by default) and the daemon's residency mover
HOLDER_POLICY = int(lib.SC_HOLDER_POLICY)
HOLDER_MOVER = int(lib.SC_HOLDER_MOVER)

#: the load the daemon's long-lived key maps use (the C step's, the mover's, a forgetting C policy's)
DAEMON_LOAD = int(lib.SC_IDMAP_DAEMON_LOAD)


class IdMap:
    """int64 keys -> dense int32 ids (``sc_idmap``), numbered in order of first sight, with ids given back
    for reuse (:meth:`release`; freed ids are handed out again first): per-row state kept in arrays
    indexed by id is sized by the keys mapped, not by the key space. ``load_pct``: the share of hash
    slots live keys may fill before the slots double (50 by default; :data:`DAEMON_LOAD` for the
    daemon's maps, which hold about the tier's rows for a long time). ``ptr`` is the C map, for C calls
    that take one.

    A shared map (:meth:`share`) serves two holders, :data:`HOLDER_POLICY` and :data:`HOLDER_MOVER`: an id
    is freed only when the last of them releases it, so the daemon keeps one map of the rows both its
    mirror and its policy track (the same thread)."""

    def __init__(self, load_pct: int = 50) -> None:
        ptr = lib.sc_idmap_new()
        if ptr == ffi.NULL:
            raise MemoryError("sc_idmap_new: out of memory")
        self.ptr: Any = ffi.gc(ptr, lib.sc_idmap_free)
        self._owner: object = None
        self.set_load(load_pct)

    @classmethod
    def of(cls, ptr: Any, owner: object) -> IdMap:
        """A view of a map another C object owns (``owner``, kept alive by the view; the learned C
        step's, ``lp_key_map``): the same methods, and the owner frees it."""
        view = cls.__new__(cls)
        view.ptr = ptr
        view._owner = owner
        return view

    def set_load(self, load_pct: int) -> None:
        check(lib.sc_idmap_set_load(self.ptr, load_pct), f"id map load {load_pct}%")

    @property
    def size(self) -> int:
        """Ids handed out so far (live and free): per-id arrays need this many entries."""
        return int(lib.sc_idmap_size(self.ptr))

    def __len__(self) -> int:
        return self.size

    @property
    def live(self) -> int:
        """Keys mapped now (ids handed out less those given back)."""
        return int(lib.sc_idmap_live(self.ptr))

    @property
    def nbytes(self) -> int:
        """Bytes the map holds allocated (hash slots, id -> key array, free list)."""
        return int(lib.sc_idmap_bytes(self.ptr))

    def share(self) -> None:
        """Make this (empty) map shared by two holders: one byte more an id."""
        check(lib.sc_idmap_set_shared(self.ptr), "id map share (only an empty map)")

    def held(self, holder: int = HOLDER_POLICY) -> int:
        """Ids ``holder`` holds now (:attr:`live` for a map that is not shared)."""
        n = int(lib.sc_idmap_held(self.ptr, holder))
        if n < 0:
            check(n, f"id map holder {holder}")
        return n

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Id of each key, -1 for keys not mapped."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        ids = np.empty(keys.shape[0], dtype=np.int32)
        if keys.shape[0]:
            lib.sc_idmap_find(self.ptr, ffi.from_buffer("int64_t[]", keys), keys.shape[0],
                              ffi.from_buffer("int32_t[]", ids))
        return ids

    def map(self, keys: np.ndarray, holder: int = HOLDER_POLICY) -> np.ndarray:
        """Id of each key, mapping unknown ones (freed ids first); on a shared map ``holder`` holds them."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        ids = np.empty(keys.shape[0], dtype=np.int32)
        if keys.shape[0]:
            check(lib.sc_idmap_map_as(self.ptr, ffi.from_buffer("int64_t[]", keys), keys.shape[0],
                                      ffi.from_buffer("int32_t[]", ids), holder), "id map")
        return ids

    def keys(self, ids: np.ndarray) -> np.ndarray:
        """Keys of mapped ids (each one :meth:`find` or :meth:`map` gave, not released)."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        out = np.empty(ids.shape[0], dtype=np.int64)
        if ids.shape[0]:
            if int(ids.min()) < 0 or int(ids.max()) >= self.size:
                check(lib.SC_EBADID, "id map keys")
            lib.sc_idmap_keys(self.ptr, ffi.from_buffer("int32_t[]", ids), ids.shape[0],
                              ffi.from_buffer("int64_t[]", out))
        return out

    def release(self, ids: np.ndarray, holder: int = HOLDER_POLICY) -> None:
        """Forget the keys of these ids (repeats and ids released already are skipped); on a shared map
        ``holder`` lets them go, and a key is forgotten when no holder is left."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.shape[0]:
            check(lib.sc_idmap_release_as(self.ptr, ffi.from_buffer("int32_t[]", ids), ids.shape[0], holder),
                  "id map release")


__all__ = ["ffi", "lib", "check", "first_mask", "IdMap", "DAEMON_LOAD", "HOLDER_MOVER", "HOLDER_POLICY",
           "LARGE_ALLOCATION", "map_large_allocations"]
