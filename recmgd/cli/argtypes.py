"""The ``type=`` functions of recmg's flags, the checks of its paths and its parser, shared by the
subcommands.

A bad number is an argparse usage error (exit 2, one line naming the flag, the value and the range:
:class:`OneLineParser`, whose ``error`` prints no usage block);
a path that cannot serve (an output folder that is not one, a --current that holds no checkpoint) is a
RecmgError (one line, exit 1), raised before any work is done.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from recmgd.errors import RecmgError
from recmgd.keys import MAX_ROWS


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line usage error, ``PROG: error: PROBLEM (see PROG --help)``, exit status 2
    (argparse's own prints the whole usage block first). The subparsers of one are of its class too
    (argparse makes them with the parent's class), so ``PROG`` names the subcommand: ``recmg train``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_version(self) -> None:
        """--version: the program and the package's version (what an operator asks first)."""
        from recmgd import __version__

        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


#: a value shown in a message: at most this many characters of it
_SHOW = 40


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOW else text[: _SHOW - 5] + "[...]")


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``lo..hi`` (either end open when None)."""
    what = (f"an integer in {lo}..{hi}" if lo is not None and hi is not None else
            f"an integer >= {lo}" if lo is not None else f"an integer <= {hi}" if hi is not None else
            "an integer")

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {_show(text)}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {_show(text)}")
        return value

    parse.__name__ = "integer"
    return parse


def count(lo: int = 0, hi: int | None = None) -> Callable[[str], int]:
    """A whole number that may be written as 1e9 or 10_000_000, in ``lo..hi``."""
    what = f"a count in {lo:,}..{hi:,}" if hi is not None else f"a count >= {lo:,}"

    def parse(text: str) -> int:
        clean = text.strip().replace("_", "")
        try:
            value = int(clean, 10)
        except ValueError:
            try:
                f = float(clean)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {_show(text)}") from None
            if not math.isfinite(f) or f != int(f):
                raise argparse.ArgumentTypeError(f"not a count: {_show(text)}") from None
            value = int(f)
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {_show(text)}")
        return value

    parse.__name__ = "count"
    return parse


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """A finite number in the range (ends closed unless ``lo_open``/``hi_open``; None: no end)."""
    what = _range(lo, hi, lo_open, hi_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {_show(text)}") from None
        if (not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo))
                or (hi is not None and (value >= hi if hi_open else value > hi))):
            raise argparse.ArgumentTypeError(f"must be a number {what}, got {_show(text)}")
        return value

    parse.__name__ = "number"
    return parse


def policy_option(name: str) -> Callable[[str], float | int]:
    """A flag that is a policy option: the range the daemon's configuration allows it
    (recmgd.daemon.config.POLICY_OPTIONS, the one home of those ranges; read when a value is parsed)."""

    def parse(text: str) -> float | int:
        from recmgd.daemon.config import POLICY_OPTIONS

        typ, lo, hi = POLICY_OPTIONS[name]
        if typ is float:
            return number(lo, hi)(text)
        return integer(int(lo), None if hi is None else int(hi))(text)

    parse.__name__ = name
    return parse


#: samples a step (--batch of sim and trace stats, train -b)
STEP_BATCH = integer(1, 1 << 40)
#: a random seed (a policy's, training's, the generator's: the range the daemon's seed option allows)
SEED = policy_option("seed")
#: torch threads and training epochs
THREADS = policy_option("threads")
EPOCHS = policy_option("epochs")
#: a share of the trace's unique rows the fast tier holds
FRACTION = number(0.0, 1.0, lo_open=True)
#: bytes a row or a page
BYTES = integer(1, 1 << 40)
#: CSV logs: rows a table that values hash to
TABLE_SIZE = count(1, MAX_ROWS)
#: steps whose rows are known ahead (sim --lookahead; more than a trace's steps: all of them, the same)
LOOKAHEAD = integer(0, 1 << 40)


def _probe(folder: Path, flag: str, path: str) -> None:
    """RecmgError unless a directory entry can be made in ``folder`` (made and removed at once: where
    access(2) says yes and the file system says no, as /proc for root or a read-only mount)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".recmg-probe-", dir=folder))
    except OSError as exc:
        raise RecmgError(f"{flag} {path}: cannot write in {folder} ({exc.strerror})") from None


def check_output_file(path: str, flag: str) -> None:
    """RecmgError (one line) when ``path`` cannot be written as a whole file: it is a directory, or its
    folder is missing, not a folder or not writable. Nothing is left behind."""
    p = Path(path)
    if p.is_dir():
        raise RecmgError(f"{flag} {path}: is a directory")
    folder = p.parent
    if not folder.is_dir():
        raise RecmgError(f"{flag} {path}: no directory {folder}")
    _probe(folder, flag, path)


def check_output_dir(path: str, flag: str) -> None:
    """RecmgError (one line) when a directory cannot be made or written at ``path``: it is something
    else than a directory, or its nearest existing ancestor is not a writable directory. Nothing is
    left behind."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RecmgError(f"{flag} {path}: not a directory")
    probe = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), Path("/"))
    if not probe.is_dir():
        raise RecmgError(f"{flag} {path}: {probe} is not a directory")
    _probe(probe, flag, path)
