"""Output files written whole or not at all.

A trace, a checkpoint or a result cut short by a full disk, a write error or an exception must not be
left where the next reader takes it for a whole one (a text trace cut at a line end reads as a shorter
trace), nor replace the file it was to replace. :func:`whole_files` hands out a temporary path beside
each output, ``.partial-PID-RANDOM.NAME`` in the same directory: the rename stays within one file
system, and a writer that goes by the name's suffix (a ``.gz`` DLRM trace is compressed) writes the
same bytes. When the block ends cleanly the temporaries are renamed over the outputs, in the order
given; else they are removed and the outputs left as they were. Until the last rename has succeeded
each replaced output's old file is kept under a temporary name of the same pattern (a hard link, or the
file renamed away where the file system has none), so that an exception between two renames (an
OSError, a KeyboardInterrupt) puts every old file back before it is raised (:class:`PartlyReplaced`,
an OSError, when that too fails); the temporaries are removed in every case. An output that exists and
is not a regular file (``/dev/stdout``, a FIFO) is written directly: renaming over it would replace the
device. An output that is a symbolic link is written at its target, and the link kept, as open() would;
an existing output's mode (and, for root, owner) passes to its replacement. An output that is a
directory is refused before the block runs. ``replace_entries=True`` (the files of a folder the writer
owns: a checkpoint's) replaces whatever entry each output is, a symbolic link, a FIFO or a device
included, by the new regular file: nothing is written through a link to a file outside the folder.

A writer that seeks, or that another process runs through a descriptor passed to it (the daemon writes
a recording so), takes :func:`whole_fd`: the temporary open, and a regular file even for a device or
FIFO output, which gets its bytes copied in, in place, when the block ends cleanly.

Folders an output needs are made by :func:`make_dirs`, which says which it made, so that a writer that
fails removes them again (:func:`remove_dirs`: only those still empty) and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


def _output(path: str | os.PathLike[str]) -> Path:
    """Where an output is written: a symbolic link's target (as open() writes through the link; the
    link stays), but the link itself when it leads to no regular file (/dev/stdout's target may be a
    pipe's name that is no path), which open() then writes through in place."""
    if not os.path.islink(path):
        return Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None  # a dangling link: open() would make its target
    return Path(os.path.realpath(path)) if st is None or stat.S_ISREG(st.st_mode) else Path(path)


def _existing(path: Path) -> os.stat_result | None:
    """The output's stat, None when there is none yet; a directory is refused (IsADirectoryError)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    return st


#: a temporary's name: PARTIAL_PREFIX + PID-RANDOM + "." + the output's name (partial_name, the one
#: place that makes them; partial_owner reads them back)
PARTIAL_PREFIX = ".partial-"


def partial_name(folder: Path, name: str) -> Path:
    """A new temporary's path for output ``name`` in folder: ``.partial-PID-RANDOM.NAME``."""
    return folder / f"{PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.{name}"


def partial_owner(filename: str) -> tuple[int, str] | None:
    """(the pid of the process that made it, the output's name) of a temporary's file name; None for a
    name of another kind."""
    if not filename.startswith(PARTIAL_PREFIX):
        return None
    pid, sep, rest = filename[len(PARTIAL_PREFIX):].partition("-")
    rand, dot, out = rest.partition(".")
    if not (pid.isdigit() and sep and dot and out and rand and all(c in "0123456789abcdef" for c in rand)):
        return None
    return int(pid), out


def _create(folder: Path, name: str, st: os.stat_result | None) -> tuple[int, Path]:
    """A new empty file ``.partial-PID-RANDOM.NAME`` in folder, open for reading and writing. Its mode is
    st's (and, for root, its owner), so that a private file stays private; without st 0666 less the
    umask, as open() makes."""
    while True:
        tmp = partial_name(folder, name)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600 if st else 0o666)
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
        return fd, tmp


def _temporary(path: Path, replace_entries: bool = False) -> Path | None:
    """A new empty file beside path (see _create), or None when path exists and is not a regular file
    (with ``replace_entries``, never None: any entry but a directory is replaced, its mode not kept
    unless it is a regular file)."""
    if replace_entries:
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if st is not None and not stat.S_ISREG(st.st_mode):
            st = None
    else:
        st = _existing(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            return None
    fd, tmp = _create(path.parent, path.name, st)
    os.close(fd)
    return tmp


class PartlyReplaced(OSError):
    """The renames of :func:`whole_files` failed part way (``errno``, ``strerror``: why) and putting the
    old files back failed too: ``replaced`` are the outputs left new, the others are old."""

    def __init__(self, err: int | None, reason: str, replaced: list[Path]) -> None:
        super().__init__(err, reason)
        self.replaced = replaced


@contextlib.contextmanager
def whole_files(paths: Sequence[str | os.PathLike[str]], *,
                replace_entries: bool = False) -> Iterator[list[Path]]:
    """Temporary paths to write the outputs to, one for each of paths; see the module's docstring. An
    OSError making a temporary (a missing directory, no permission, an output that is a directory) is
    raised before the block runs. ``replace_entries``: each output's entry is replaced whatever it is
    (a symbolic link is not followed), for the files of a folder that belongs to the writer."""
    outs = [Path(p) if replace_entries else _output(p) for p in paths]
    tmps: list[Path | None] = []
    try:
        for p in outs:
            tmps.append(_temporary(p, replace_entries))
        yield [t if t is not None else p for t, p in zip(tmps, outs, strict=True)]
    except BaseException:
        _remove(tmps)
        raise
    try:
        _replace_all([(t, p) for t, p in zip(tmps, outs, strict=True) if t is not None])
    finally:
        _remove(tmps)  # (those renamed are gone: not found, passed over)


class _Old:
    """An output's old file while the renames run: kept at ``kept`` (None: there was none), as a hard
    link (``moved`` False: the output still names it) or renamed away (``moved``: the output names
    nothing until its new file is renamed in)."""

    __slots__ = ("out", "kept", "moved", "replaced")

    def __init__(self, out: Path) -> None:
        self.out, self.kept, self.moved, self.replaced = out, None, False, False

    def keep(self) -> None:
        try:
            os.lstat(self.out)
        except FileNotFoundError:
            return
        while True:
            kept = partial_name(self.out.parent, self.out.name)
            try:
                os.link(self.out, kept, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError:  # no hard links here (or not allowed): the old file is renamed away instead
                if os.path.lexists(kept):
                    continue
                os.rename(self.out, kept)
                self.kept, self.moved = kept, True
                return
            self.kept = kept
            return

    def restore(self) -> None:
        """Put the old file back (or take the new one away where there was none)."""
        if self.kept is not None:
            if self.replaced or self.moved:
                os.replace(self.kept, self.out)
            else:  # the output still is the old file: drop the extra link
                self.kept.unlink()
            self.kept = None
        elif self.replaced:
            self.out.unlink()
        self.replaced = False


def _replace_all(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each temporary over its output, in order, all or none: on any exception the outputs renamed
    already get their old files back before it is raised (PartlyReplaced for an OSError when that
    fails too; another exception is raised as it is, the outputs then possibly mixed)."""
    olds: list[_Old] = []
    try:
        for tmp, out in pairs:
            old = _Old(out)
            olds.append(old)
            old.keep()
            os.replace(tmp, out)
            old.replaced = True
    except BaseException as exc:
        left = _restore(olds)
        if left and isinstance(exc, OSError):
            raise PartlyReplaced(exc.errno, exc.strerror or str(exc), left) from exc
        raise
    finally:  # (after a restore: None, passed over; an old file renamed away and not put back, the
        # output then missing, stays where it is rather than be lost)
        _remove([o.kept for o in olds if not o.moved or o.replaced])


def _restore(olds: list[_Old]) -> list[Path]:
    """Put back the old files of ``olds``, last first, each step tried even when another one fails or a
    signal's exception lands in the middle (raised again after); the outputs left new."""
    left: list[Path] = []
    pending: BaseException | None = None
    for old in reversed(olds):
        for _ in range(3):
            try:
                old.restore()
                break
            except OSError:
                break
            except BaseException as exc:  # (KeyboardInterrupt, Terminated: the restore is tried again)
                pending = pending or exc
        if old.replaced or (old.moved and old.kept is not None):
            left.append(old.out)
    if pending is not None:
        raise pending
    return left


def _remove(tmps: Sequence[Path | None]) -> None:
    for t in tmps:
        if t is not None:
            with contextlib.suppress(OSError):
                t.unlink()


@contextlib.contextmanager
def whole_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`whole_files` for one output."""
    with whole_files([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def whole_fd(path: str | os.PathLike[str]) -> Iterator[tuple[int, Path]]:
    """:func:`whole_file` for a writer that seeks, or that another process runs through the descriptor
    (a recording: recmgctl passes it to the daemon): a new, empty, regular temporary file, open for
    reading and writing (its mode does not matter to the writer), and its path. It lies beside the
    output and is renamed over it when the block ends cleanly; the directory is fsynced then (a writer
    that fsynced the data has the output on disk; a failure there is not reported). A device or FIFO
    output, which can take neither, gets its temporary in the temporary directory
    (``tempfile.gettempdir()``) and the bytes copied to it, in place (a FIFO's open waits for a reader),
    when the block ends cleanly. The descriptor is closed and the temporary removed when the block
    ends, and on an exception the output is left as it was. An OSError making the temporary (an output
    that is a directory, no permission) is raised before the block runs, as is one for a device or FIFO
    output this process may not write."""
    out = _output(path)
    st = _existing(out)
    in_place = st is not None and not stat.S_ISREG(st.st_mode)
    if in_place and not os.access(out, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
    fd, tmp = _create(Path(tempfile.gettempdir()) if in_place else out.parent, out.name,
                      None if in_place else st)
    try:
        try:
            yield fd, tmp
        finally:
            os.close(fd)
        if in_place:
            with open(tmp, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.unlink()
        else:
            os.replace(tmp, out)
            with contextlib.suppress(OSError):  # (the output is in place: no reason to say it is not)
                dfd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
    except BaseException:
        _remove([tmp])
        raise


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


def missing_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and those of its parents that are not there, innermost first (what making it makes)."""
    missing = []
    p = Path(path).absolute()
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def make_dirs(path: str | os.PathLike[str], mode: int = 0o777) -> list[Path]:
    """Make folder ``path`` and its missing parents (``mode``, less the umask); the folders this call
    made, innermost first (for :func:`remove_dirs`; one another process made meanwhile is not among
    them). An OSError removes those it made before it is raised."""
    made: list[Path] = []
    try:
        for p in reversed(missing_dirs(path)):  # outermost first
            try:
                p.mkdir(mode)
            except FileExistsError:
                continue
            made.insert(0, p)
        Path(path).mkdir(mode, parents=True, exist_ok=True)  # (there already: only checks it is a folder)
    except OSError:
        remove_dirs(made)
        raise
    return made


def remove_dirs(made: Sequence[str | os.PathLike[str]]) -> bool:
    """Remove folders a writer made (innermost first), each only if empty: one someone has put a file in
    since is left, and the others are still tried. Whether all of them are gone."""
    gone = True
    for p in made:
        try:
            os.rmdir(p)
        except FileNotFoundError:
            continue
        except OSError:
            gone = False
    return gone
