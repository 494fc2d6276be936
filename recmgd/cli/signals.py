"""SIGINT, SIGTERM and SIGHUP in the command-line tools: each raises its exception where the process is
(KeyboardInterrupt; Terminated for SIGTERM, from systemd's stop, timeout(1), the daemon stopping a
candidate, and for SIGHUP, a terminal or SSH session gone), so that the blocks the process is in unwind:
an output's temporary is removed
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
    """SIGTERM or SIGHUP, raised where the process is (not an Exception: no `except Exception` takes
    it); ``status`` is the exit status that says which (128 + the signal's number)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = 128 + signum

    def __str__(self) -> str:
        return "hung up" if self.signum == signal.SIGHUP else "terminated"


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


#: the signal whose exception has not landed yet (0: none). A SIGALRM that the kernel delivered just
#: before landed() stopped the timer runs its Python handler later, at the next bytecode: by then the
#: exception may have been handled and the process be on its way out, where another one would end it
#: by the signal's default action (exit status -2 instead of 130).
_unlanded = 0


def _on_signal(signum: int, frame: object) -> None:
    global _unlanded

    def again(_signum: int, _frame: object) -> None:
        if _unlanded and not isinstance(sys.exc_info()[1], (Terminated, KeyboardInterrupt)):  # (in flight)
            raise _exception(_unlanded)

    _unlanded = signum
    signal.signal(signal.SIGALRM, again)
    signal.setitimer(signal.ITIMER_REAL, RERAISE_S, RERAISE_S)
    raise _exception(signum)


def landed() -> None:
    """The signal's exception was handled: no more raises of it."""
    global _unlanded
    _unlanded = 0
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def raised() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise their exceptions inside the block (see the module docstring);
    the handlers before it are put back after it. (A SIGHUP ignored when the block starts, as nohup
    leaves it, stays ignored.)"""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    previous = {sig: signal.getsignal(sig) for sig in sigs}
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if previous[signal.SIGHUP] is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _on_signal)
    try:
        yield
    finally:
        landed()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
