"""A command's output on stdout, for recmg, recmgctl and `recmgd --check-config`: a write error (a full
disk, an I/O error) is one line, ``PROG: cannot write the output: REASON``, and exit status 1; a closed
pipe (``| head``) ends the command quietly. Neither leaves a traceback, nor a second error when the
interpreter flushes stdout at exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO


class StdoutError(Exception):
    """A write to stdout failed (not a broken pipe): the output is lost; one line, exit 1."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))


class Stdout:
    """sys.stdout, with a write error (a full disk, an I/O error) raised as StdoutError, so that it is
    told from the OSErrors of the files a command reads and writes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(exc) from None

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def drop_stdout() -> None:
    """Point fd 1 at /dev/null: what stdout still buffers goes nowhere at exit, with no second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def guarded(prog: str, run: Callable[[], int]) -> int:
    """``run()`` with sys.stdout wrapped; its exit status, or 1 after one line on stderr when stdout
    could not be written, or 0 when stdout's reader has gone (a broken pipe). Every other exception
    passes through (sys.stdout put back first)."""
    stdout = sys.stdout
    sys.stdout = Stdout(stdout)  # type: ignore[assignment]
    try:
        rc = run()
        sys.stdout.flush()
        return rc
    except StdoutError as exc:
        print(f"{prog}: cannot write the output: {exc}", file=sys.stderr)
        drop_stdout()
        return 1
    except BrokenPipeError:  # the reader is gone (`| head`): nobody is left to tell
        drop_stdout()
        return 0
    finally:
        sys.stdout = stdout
