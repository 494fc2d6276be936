"""SIGINT and SIGTERM in the command-line tools: each raises its exception where the process is
(KeyboardInterrupt; Terminated for SIGTERM, from systemd's stop, timeout(1), the daemon stopping a
candidate), so that the blocks the process is in unwind: an output's temporary is removed
(recmgd/fileout.py), a recording is stopped. C code may swallow such an exception (a handler that runs
inside a module's import in numpy's random generator does, and the work goes on), so it is raised
again every RERAISE_S seconds until it is seen unwinding the stack or being handled; whoever handles
it and goes on calls landed()."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

#: seconds between raises of a signal's exception until it lands
RERAISE_S = 0.25


class Terminated(BaseException):
    """SIGTERM, raised where the process is (not an Exception: no `except Exception` takes it)."""


def _exception(signum: int) -> BaseException:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: object) -> None:
    def again(_signum: int, _frame: object) -> None:
        if not isinstance(sys.exc_info()[1], (Terminated, KeyboardInterrupt)):  # (not yet landed)
            raise _exception(signum)

    signal.signal(signal.SIGALRM, again)
    signal.setitimer(signal.ITIMER_REAL, RERAISE_S, RERAISE_S)
    raise _exception(signum)


def landed() -> None:
    """The signal's exception was handled: no more raises of it."""
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def raised() -> Iterator[None]:
    """SIGINT and SIGTERM raise their exceptions inside the block (see the module docstring); the
    handlers before it are put back after it."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        yield
    finally:
        landed()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
