"""The bridge to the C core (``recmgd._simcore``): key -> dense id maps and policies whose step is C.

A :class:`NativePolicy` is an ordinary :class:`~recmgd.policy.Policy`: the daemon calls ``observe()``
once per step. The simulator may instead hand the same object's C handle to the whole-trace loop
(``sc_driver_run``), which calls the very same C step function; both give identical numbers.

Driven only step by step (:meth:`NativePolicy.step_by_step`, as the daemon does), LRU, S3-FIFO, STMS and
Bingo give back the ids of rows they hold no state for (evicted or rejected and not in S3-FIFO's ghost or
STMS's history): at the start of the next ``observe()``, before its keys are mapped, so no id handed out
before is still held anywhere (the last decision's were turned into keys, ``rejected()`` looks its keys
up between steps). Their key map and per-id arrays then follow the rows they hold, not every row ever
seen; their decisions are the same. LFU (counts of every row), OPT (the future) and Domino (a pair table
hashed by id) keep every id: their memory still grows with the distinct rows of the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from recmgd.errors import PolicyError
from recmgd.policy import MAX_REGION, Decision, Policy, StepView
from recmgd.simcore import DAEMON_LOAD, HOLDER_POLICY, IdMap, check, ffi, lib
from recmgd.trace.steps import Steps, as_steps

log = logging.getLogger(__name__)


def i32_ptr(a: np.ndarray) -> Any:
    return ffi.from_buffer("int32_t[]", a)


def i64_ptr(a: np.ndarray) -> Any:
    return ffi.from_buffer("int64_t[]", a)


def u8_ptr(a: np.ndarray) -> Any:
    return ffi.from_buffer("uint8_t[]", a)


def c_ids(ptr: Any, n: int) -> np.ndarray:
    """Copy ``n`` int32 ids from a C pointer."""
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    return np.frombuffer(ffi.buffer(ptr, 4 * n), dtype=np.int32).copy()


class NativePolicy(Policy):
    """A policy whose state and step function live in the C core; ``kind`` names the C policy."""

    kind: ClassVar[str] = ""

    def __init__(self, prefetch_budget: int = 16, region: int = 8, degree: int = 0, seed: int = 0) -> None:
        if prefetch_budget < 0:
            raise ValueError(f"prefetch_budget must be >= 0, got {prefetch_budget}")
        if not 1 <= region <= MAX_REGION:
            raise ValueError(f"region must be 1..{MAX_REGION} rows, got {region}")
        self.prefetch_budget = int(prefetch_budget)
        self.region = int(region)
        self.degree = int(degree)
        self.seed = int(seed)
        self.capacity = 0
        self.idmap: IdMap | None = None
        self.handle: Any = None
        self._future: Steps | None = None
        self._step_by_step = False
        #: the C policy gives back the ids of rows it holds no state for (step by step, a kind that can)
        self.gives_back = False

    def step_by_step(self) -> None:
        """Driven only through observe/rejected/evicted from now on (the daemon): the kinds that can give
        back the ids of rows they hold no state for (see the module's docstring); from the next
        :meth:`reset` on. :meth:`native_state` is then refused (a whole-trace driver would share the ids)."""
        self._step_by_step = True

    def reset(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.idmap = IdMap()
        params = ffi.new("sc_params *", {"prefetch_budget": self.prefetch_budget, "region": self.region,
                                          "degree": self.degree, "seed": self.seed})
        ptr = lib.sc_policy_new(self.kind.encode(), self.idmap.ptr, self.capacity, params)
        if ptr == ffi.NULL:
            raise PolicyError(f"{self.name}: cannot create the C policy {self.kind!r}")
        self.handle = ffi.gc(ptr, lib.sc_policy_free)
        self.gives_back = False
        if self._step_by_step:
            rc = int(lib.sc_policy_set_release(self.handle, 1))
            if rc < 0:
                check(rc, self.name)
            self.gives_back = rc == 1
            if self.gives_back:  # a long-lived map of about the tier's rows: fuller slots, fewer bytes
                self.idmap.set_load(DAEMON_LOAD)
                self.idmap.share()  # the daemon's mirror tracks about the same rows: one map for both
        if self._future is not None:
            self._push_future()

    def _state(self) -> tuple[IdMap, Any]:
        if self.handle is None or self.idmap is None:
            raise PolicyError(f"{self.name}: observe() before reset()")
        return self.idmap, self.handle

    def native_state(self) -> tuple[IdMap, Any]:
        """(id map, C policy handle), for a driver that runs the C step function itself."""
        if self.gives_back:
            raise PolicyError(f"{self.name}: driven step by step, it gives ids back: its id map cannot be "
                              "shared with a whole-trace driver")
        return self._state()

    def shared_key_map(self) -> IdMap | None:
        """The id map, shared with the daemon's mirror, when this policy gives ids back (step by step)."""
        return self.idmap if self.gives_back else None

    @property
    def live_ids(self) -> int:
        """Keys the policy's id map holds for it now (all it ever saw unless it gives ids back)."""
        return 0 if self.idmap is None else self.idmap.held(HOLDER_POLICY)

    @property
    def nbytes(self) -> int:
        """Bytes the C policy and its id map hold allocated."""
        if self.handle is None or self.idmap is None:
            return 0
        return int(lib.sc_policy_bytes(self.handle)) + self.idmap.nbytes

    def state_bytes(self) -> int:
        return self.nbytes

    def observe(self, view: StepView) -> Decision:
        idmap, handle = self._state()
        if self.gives_back:  # the last step's stateless rows: no id of theirs is held any more
            check(lib.sc_policy_release(handle), self.name)
        ids = idmap.map(view.keys)
        hit = np.ascontiguousarray(view.hit, dtype=np.uint8)
        check(lib.sc_policy_step(handle, i32_ptr(ids), u8_ptr(hit), ids.shape[0]), self.name)
        dec = lib.sc_policy_decision(handle)
        return Decision(evict=idmap.keys(c_ids(dec.evict, dec.n_evict)),
                        admit=idmap.keys(c_ids(dec.admit, dec.n_admit)),
                        prefetch=idmap.keys(c_ids(dec.prefetch, dec.n_prefetch)))

    def rejected(self, keys: np.ndarray) -> None:
        idmap, handle = self._state()
        ids = idmap.find(keys)
        ids = ids[ids >= 0]
        check(lib.sc_policy_rejected(handle, i32_ptr(ids), ids.shape[0]), self.name)

    def set_future(self, steps: Sequence[np.ndarray] | Steps) -> None:
        self._future = as_steps(steps)
        if self.handle is not None:
            self._push_future()

    def _push_future(self) -> None:
        idmap, handle = self._state()
        fut = self._future
        assert fut is not None
        ids = idmap.map(fut.keys[fut.offsets[0]:fut.offsets[-1]])
        offsets = np.ascontiguousarray(fut.offsets - fut.offsets[0], dtype=np.int64)
        check(lib.sc_policy_set_future(handle, i32_ptr(ids), i64_ptr(offsets), len(fut)), self.name)

    @property
    def resident(self) -> int:
        """Rows the policy believes resident."""
        return 0 if self.handle is None else int(lib.sc_policy_resident(self.handle))
