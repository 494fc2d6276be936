"""The exceptions recmg raises; every one carries a one-line message that names the problem."""

from __future__ import annotations


class RecmgError(Exception):
    """Base class of every recmg error."""


class PoolError(RecmgError):
    """A pool could not be created, attached or used (wrong version, wrong name, bad arguments)."""


class PoolVersionError(PoolError):
    """The shared-memory object is a pool of another layout version, or not a pool at all."""


class PoolBusyError(PoolError):
    """The pool is busy: still being created (attach), or in use in a way that refuses the call (a live
    daemon, a ring this handle owns)."""


class PoolLockedError(PoolError):
    """The pool's writer lock stayed held by another process past the timeout (a stuck or stopped
    writer); nothing was changed, and the call may be retried later."""


class PoolWriteError(PoolError):
    """write_rows failed part way (a slow-tier file write failed): the first ``written`` rows of the
    batch were written, with their fast-tier copies, and none after them."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


class TraceError(RecmgError):
    """A trace file is malformed or unreadable; the message names file and line."""


class ConfigError(RecmgError):
    """A configuration file is invalid; the message names file, key and problem."""


class ModelError(RecmgError):
    """A model checkpoint is missing, corrupt, or of another format version."""


class OutputError(RecmgError):
    """A result file (a plot, a JSON report) could not be written; nothing was left in its place."""


class PolicyError(RecmgError):
    """A policy broke its contract (for example, it asked for more rows than the capacity)."""
