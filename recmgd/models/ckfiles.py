"""A checkpoint folder's files, read as untrusted input: users copy checkpoint folders between machines.

Every member is looked at with lstat and opened without following a symbolic link (``O_NOFOLLOW``) and
without waiting (``O_NONBLOCK``: a FIFO's open does not hang), and must then be a regular file (fstat):
a symbolic link, a FIFO, a device or a directory is one line (ModelError), as is a member that is
missing. ``config.json`` is at most :data:`MAX_CONFIG_BYTES`, and JSON nested too deeply to parse is
refused, not a RecursionError. An ``.npz`` member is read through :class:`Npz`, only the arrays asked
for: each array's npy header (version, dtype, shape) is checked against what the caller expects before
its data is read, and an array's uncompressed size may not pass :data:`MAX_INFLATE` times its
compressed size (np.savez stores arrays as they are; a small file that would unpack to far more is
refused). Nothing here imports torch.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from recmgd.errors import ModelError

#: the largest config.json read
MAX_CONFIG_BYTES = 1 << 20
#: an archive member may unpack to at most this many times its compressed size ...
MAX_INFLATE = 64
#: ... or to this many bytes, whichever is more (small arrays compress well)
INFLATE_FREE_BYTES = 1 << 20
#: the member of each npz file (and the key of weights.pt's dict) that holds the save's generation id,
#: also config.json's ``generation``: all files of one save hold the same id
GENERATION = "__generation__"
_GENERATION_RE = re.compile(r"[0-9a-f]{1,64}")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_REASON_CHARS = 200


#: the sentences of torch.load's refusal that are advice, not its reason (one advises loading with
#: weights_only=False, which runs any code the file holds)
_ADVICE = ("weights_only", "safe_globals", "trust", "Weights only load failed", "Check the documentation")


#: a member larger than this must have at least half its bytes on disk (not a sparse file)
SPARSE_FREE_BYTES = 1 << 20


def one_line(exc: BaseException) -> str:
    """One line of an exception's message: its first line with something left once torch's advice is
    taken out (never its advice to load with ``weights_only=False``, which runs any code a file holds;
    the weights-only unpickler's own reason where it gives one), without control characters (ANSI
    colours), at most 200 characters."""
    text = _ANSI.sub("", str(exc))
    mark = text.find("WeightsUnpickler error:")
    if mark >= 0:
        text = text[mark + len("WeightsUnpickler error:"):]
    reason = type(exc).__name__
    for line in text.splitlines():
        kept = [s for s in re.split(r"(?<=\.)\s+", _CONTROL.sub(" ", line).strip())
                if s and not any(w in s for w in _ADVICE)]
        if kept:
            reason = " ".join(kept)
            break
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS - 5] + "[...]"
    return reason


def valid_generation(value: object) -> bool:
    return isinstance(value, str) and _GENERATION_RE.fullmatch(value) is not None


def open_member(d: Path, name: str, *, missing_ok: bool = False) -> BinaryIO | None:
    """Checkpoint ``d``'s member ``name`` open for reading, a regular file in the folder; None when it is
    missing and ``missing_ok``; ModelError (one line) otherwise."""
    p = d / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ModelError(f"{d}: checkpoint has no {name}") from None
    except OSError as exc:
        raise ModelError(f"{p}: cannot read ({exc.strerror})") from None
    _check_kind(p, st)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ModelError(f"{d}: checkpoint has no {name} (removed while it was read)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelError(f"{p}: a symbolic link; a checkpoint's files are read only as regular files "
                             "in its folder") from None
        raise ModelError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        _check_kind(p, st)  # what was opened (it may have been replaced since the lstat)
        # a sparse file (holes read as zeros) would let a few kB on disk claim gigabytes of arrays
        if st.st_size > SPARSE_FREE_BYTES and st.st_blocks * 512 < st.st_size // 2:
            raise ModelError(f"{p}: a sparse file ({st.st_size:,} bytes, {st.st_blocks * 512:,} on disk); a "
                             "checkpoint's files are written whole")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_kind(p: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise ModelError(f"{p}: a symbolic link; a checkpoint's files are read only as regular files in "
                         "its folder")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device or socket")
        raise ModelError(f"{p}: {kind}, not a regular file")


def read_json(f: Path, *, missing: str | None = None) -> object:
    """The JSON value in checkpoint file ``f`` (a regular file of at most MAX_CONFIG_BYTES); ModelError
    (one line) for anything else. ``missing``: the message when there is no such file."""
    fh = open_member(f.parent, f.name, missing_ok=missing is not None)
    if fh is None:
        raise ModelError(missing or f"{f}: missing")
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_CONFIG_BYTES:
                raise ModelError(f"{f}: {size:,} bytes, more than a checkpoint's config may have "
                                 f"({MAX_CONFIG_BYTES:,})")
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ModelError(f"{f}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelError(f"{f}: more than {MAX_CONFIG_BYTES:,} bytes, more than a checkpoint's config "
                         "may have")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ModelError(f"{f}: unreadable config: JSON nested too deeply") from None
    except ValueError as exc:  # (UnicodeDecodeError, JSONDecodeError, an integer of too many digits)
        raise ModelError(f"{f}: unreadable config: {one_line(exc)}") from None


def check_archive(fh: BinaryIO, where: str, what: str) -> None:
    """``fh`` (a regular file) is a zip archive whose members unpack to no more than MAX_INFLATE times
    what they take (torch's weights.pt is one); ModelError naming ``where`` and ``what`` the file
    should be otherwise. Leaves ``fh`` at its start."""
    size = os.fstat(fh.fileno()).st_size
    try:
        with zipfile.ZipFile(fh) as z:
            for info in z.infolist():
                _check_member_size(info, size, where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelError(f"{where}: not {what} ({one_line(exc)})") from None
    except OSError as exc:
        raise ModelError(f"{where}: cannot read ({exc.strerror or one_line(exc)})") from None
    fh.seek(0)


def _check_member_size(info: zipfile.ZipInfo, archive_bytes: int, where: str) -> None:
    if info.compress_size > archive_bytes:
        raise ModelError(f"{where}: member {info.filename!r} claims {info.compress_size:,} bytes in an "
                         f"archive of {archive_bytes:,}")
    if info.file_size > max(MAX_INFLATE * info.compress_size, INFLATE_FREE_BYTES):
        raise ModelError(f"{where}: member {info.filename!r} would unpack {info.compress_size:,} bytes to "
                         f"{info.file_size:,} (more than {MAX_INFLATE} times): refused")


#: a shape with None where any length is taken
Shape = tuple[int | None, ...]


class Npz:
    """One npz file of a checkpoint, its arrays read one at a time, each checked before its data is
    read; a context manager (closes the file)."""

    def __init__(self, d: Path, name: str) -> None:
        self.where = str(d / name)
        fh = open_member(d, name)
        assert fh is not None
        self._fh = fh
        try:
            self._size = os.fstat(fh.fileno()).st_size
            self._zip = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
            fh.close()
            raise ModelError(f"{self.where}: not an npz file ({one_line(exc)})") from None
        except OSError as exc:
            fh.close()
            raise ModelError(f"{self.where}: cannot read ({exc.strerror or one_line(exc)})") from None
        self._info: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            if info.filename.endswith(".npy"):
                self._info.setdefault(info.filename[:-4], info)

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._fh.close()

    def __contains__(self, key: str) -> bool:
        return key in self._info

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype array ``key`` declares (its data unread); ModelError when it is missing,
        malformed, of an object dtype, or its declared size is not the member's (or is too large)."""
        info = self._info.get(key)
        if info is None:
            raise ModelError(f"{self.where}: no array {key!r}")
        _check_member_size(info, self._size, self.where)
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"npy format version {version} (1.0 and 2.0 are read)")
                offset = f.tell()
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, SyntaxError,
                TypeError) as exc:
            raise ModelError(f"{self.where}: array {key!r} is malformed ({one_line(exc)})") from None
        except OSError as exc:
            raise ModelError(f"{self.where}: cannot read ({exc.strerror or one_line(exc)})") from None
        if dtype.hasobject or dtype.itemsize == 0:
            raise ModelError(f"{self.where}: array {key!r} has dtype {dtype}, not numbers")
        if offset + math.prod(shape) * dtype.itemsize != info.file_size:
            raise ModelError(f"{self.where}: array {key!r} of shape {shape} does not fill its member "
                             f"({info.file_size:,} bytes)")
        return tuple(int(n) for n in shape), dtype

    def array(self, key: str, shape: Shape, kinds: str, *, exact: np.dtype | None = None,
              finite: bool = False) -> np.ndarray:
        """Array ``key``, C-contiguous, when its header says ``shape`` (None: any length there) and a dtype
        of one of ``kinds`` (numpy kind letters; ``exact``: that very dtype); ``finite``: no NaN or
        infinity in it. ModelError (one line, naming file and array) otherwise."""
        got, dtype = self.header(key)
        if len(got) != len(shape) or any(w is not None and w != g for w, g in zip(shape, got, strict=False)):
            want = ", ".join("*" if w is None else str(w) for w in shape)
            want = f"({want},)" if len(shape) == 1 else f"({want})"
            raise ModelError(f"{self.where}: array {key!r} has shape {got}, expected {want}")
        if dtype.kind not in kinds or (exact is not None and dtype != exact):
            raise ModelError(f"{self.where}: array {key!r} has dtype {dtype}, expected "
                             f"{exact if exact is not None else _kind_names(kinds)}")
        try:
            with self._zip.open(self._info[key]) as f:
                a = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise ModelError(f"{self.where}: array {key!r} is unreadable ({one_line(exc)})") from None
        except OSError as exc:
            raise ModelError(f"{self.where}: cannot read ({exc.strerror or one_line(exc)})") from None
        if not a.flags.c_contiguous:  # (a Fortran-order array; not ascontiguousarray: it makes 0-d 1-d)
            a = a.copy(order="C")
        if finite and a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ModelError(f"{self.where}: array {key!r} holds NaN or infinite values")
        return a

    def scalar(self, key: str, kinds: str) -> int | float:
        """A 0-d array's value, an int (kinds of "iu") or a finite float ("f")."""
        a = self.array(key, (), kinds, finite=True)
        return int(a) if a.dtype.kind in "iub" else float(a)

    def generation(self) -> str | None:
        """The save's generation id this file holds (None: a file of a save before generation ids)."""
        if GENERATION not in self:
            return None
        shape, dtype = self.header(GENERATION)
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * 64:
            raise ModelError(f"{self.where}: malformed {GENERATION}")
        return str(self.array(GENERATION, (), "U"))


def _kind_names(kinds: str) -> str:
    names = {"f": "floats", "i": "integers", "u": "unsigned integers", "U": "a string", "b": "booleans"}
    return " or ".join(names.get(k, k) for k in kinds)
