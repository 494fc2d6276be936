"""The one door to the simulator core's C library (``recmgd._simcore``, built from ``native/policy/``).

Every module that calls the C core imports ``ffi`` and ``lib`` from here, so a missing or stale build is
one error with one fix (rebuild: ``make native``) wherever it is first needed, and C return codes turn
into Python errors by one rule (:func:`check`).
"""

from __future__ import annotations

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


__all__ = ["ffi", "lib", "check"]
