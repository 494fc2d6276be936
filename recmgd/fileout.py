"""Output files written whole or not at all.

A trace, a checkpoint or a result cut short by a full disk, a write error or an exception must not be
left where the next reader takes it for a whole one (a text trace cut at a line end reads as a shorter
trace), nor replace the file it was to replace. :func:`whole_files` hands out a temporary path beside
each output, ``.partial-PID-RANDOM.NAME`` in the same directory: the rename stays within one file
system, and a writer that goes by the name's suffix (a ``.gz`` DLRM trace is compressed) writes the
same bytes. When the block ends cleanly the temporaries are renamed over the outputs, in the order
given; else they are removed and the outputs left as they were. An output that exists and is not a
regular file (``/dev/stdout``, a FIFO) is written directly: renaming over it would replace the device.
An output that is a symbolic link is written at its target, and the link kept, as open() would; an
existing output's mode (and, for root, owner) passes to its replacement.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path


def _temporary(path: Path) -> Path | None:
    """A new empty file beside path, or None when path exists and is not a regular file. Its mode is
    the existing output's (and, for root, its owner), so that a private file stays private; for a new
    output 0666 less the umask, as open() makes."""
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        return None
    while True:
        tmp = path.with_name(f".partial-{os.getpid()}-{secrets.token_hex(4)}.{path.name}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600 if st else 0o666)
        except FileExistsError:
            continue
        try:
            if st is not None:
                if os.geteuid() == 0:
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
        except OSError:
            os.close(fd)
            tmp.unlink()
            raise
        os.close(fd)
        return tmp


@contextlib.contextmanager
def whole_files(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Temporary paths to write the outputs to, one for each of paths; see the module's docstring. An
    OSError making a temporary (a missing directory, no permission) is raised before the block runs."""
    # a symbolic link's target is the output (as open() writes through the link): the link stays
    outs = [Path(os.path.realpath(p)) if os.path.islink(p) else Path(p) for p in paths]
    tmps: list[Path | None] = []
    try:
        for p in outs:
            tmps.append(_temporary(p))
        yield [t if t is not None else p for t, p in zip(tmps, outs, strict=True)]
    except BaseException:
        _remove(tmps)
        raise
    try:
        for t, p in zip(tmps, outs, strict=True):
            if t is not None:
                os.replace(t, p)
    except OSError:
        _remove(tmps)  # (those renamed already are gone: not found, passed over)
        raise


def _remove(tmps: list[Path | None]) -> None:
    for t in tmps:
        if t is not None:
            with contextlib.suppress(OSError):
                t.unlink()


@contextlib.contextmanager
def whole_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`whole_files` for one output."""
    with whole_files([path]) as (tmp,):
        yield tmp


def write_reason(exc: BaseException) -> str:
    """The operating system's reason for a failed write, looked for along the exception's chain (torch.save
    reports a full disk as a RuntimeError raised while the OSError is handled), else the exception."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e.strerror or str(e)
        e = e.__cause__ or e.__context__
    return str(exc) or type(exc).__name__
