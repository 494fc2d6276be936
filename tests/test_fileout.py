"""Outputs written whole or not at all (recmgd/fileout.py): a trace converted or synthesized onto a disk
that fills up, or a checkpoint trained onto one, is a one-line error that leaves no file behind and the
file it was to replace as it was; the same without a full disk, for any exception in the writer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recmgd.cli import recmg
from recmgd.fileout import whole_fd, whole_file, whole_files, write_reason
from recmgd.models import checkpoint
from recmgd.trace import open_trace

REPO = Path(__file__).resolve().parent.parent


def _digest(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


def test_whole_files_replace_all_or_none(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with whole_files([a, b]) as (ta, tb):
        assert ta.parent == tmp_path and ta.name.endswith(".a.txt") and ta != a
        ta.write_text("new a")
        tb.write_text("new b")
        assert a.read_text() == "old a" and not b.exists()  # nothing replaced before the end
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]

    with pytest.raises(ValueError, match="the writer failed"), whole_files([a, b]) as (ta, tb):
        ta.write_text("newer a")
        raise ValueError("the writer failed")
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary left


def failing_replace(monkeypatch: pytest.MonkeyPatch, fail_at: int, exc: BaseException,
                     fail_after: bool = False) -> None:
    """os.replace fails (raises exc) at its fail_at-th call (and every later one with fail_after)."""
    real, calls = os.replace, [0]

    def flaky(src: object, dst: object) -> None:
        calls[0] += 1
        if calls[0] == fail_at or (fail_after and calls[0] > fail_at):
            raise exc
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", flaky)


@pytest.mark.parametrize("no_links", [False, True], ids=["hard-links", "renamed-away"])
@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), KeyboardInterrupt()], ids=["eio", "int"])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failed_rename_puts_every_old_file_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  fail_at: int, exc: BaseException, no_links: bool) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"  # c is new: it must not be left behind
    a.write_text("old a")
    b.write_text("old b")
    if no_links:  # a file system without hard links: the old files are renamed away, then back
        def no_link(*args: object, **kw: object) -> None:
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    failing_replace(monkeypatch, fail_at, exc)
    with pytest.raises(type(exc)), whole_files([a, b, c]) as (ta, tb, tc):
        ta.write_text("new a")
        tb.write_text("new b")
        tc.write_text("new c")
    monkeypatch.undo()
    assert a.read_text() == "old a" and b.read_text() == "old b" and not c.exists()
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no temporary, no kept old file


def test_a_rollback_that_fails_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recmgd.fileout import PartlyReplaced

    outs = [tmp_path / n for n in ("a", "b", "c")]
    for p in outs:
        p.write_text(f"old {p.name}")
    failing_replace(monkeypatch, 3, OSError(5, "Input/output error"), fail_after=True)
    with pytest.raises(PartlyReplaced) as ei, whole_files(outs) as tmps:
        for t in tmps:
            t.write_text("new")
    monkeypatch.undo()
    assert ei.value.strerror == "Input/output error" and write_reason(ei.value) == "Input/output error"
    assert sorted(p.name for p in ei.value.replaced) == ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]


def test_replace_entries_never_writes_through(tmp_path: Path) -> None:
    """The files of a folder the writer owns (a checkpoint's): a link is replaced, not written through;
    a FIFO is replaced, not opened (its open would wait for a reader)."""
    (tmp_path / "ck").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link, fifo = tmp_path / "ck" / "keys.npz", tmp_path / "ck" / "weights.pt"
    link.symlink_to("../victim")
    os.mkfifo(fifo)
    dangling = tmp_path / "ck" / "x.npz"
    dangling.symlink_to("/nonexistent/elsewhere")
    with whole_files([link, fifo, dangling], replace_entries=True) as tmps:
        assert all(t.parent == tmp_path / "ck" for t in tmps)
        for t in tmps:
            t.write_text("new")
    assert victim.read_text() == "precious"
    for p in (link, fifo, dangling):
        assert not p.is_symlink() and stat.S_ISREG(p.lstat().st_mode) and p.read_text() == "new"
    (tmp_path / "ck" / "d").mkdir()
    with pytest.raises(IsADirectoryError), whole_files([tmp_path / "ck" / "d"], replace_entries=True):
        raise AssertionError("the block ran")


def test_modes_owners_and_a_device(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with whole_file(tmp_path / "out.bin") as t:
            t.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o640
    (tmp_path / "out.bin").chmod(0o600)  # a private output stays private when it is replaced
    with whole_file(tmp_path / "out.bin") as t:
        t.write_bytes(b"y")
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:  # root: the owner passes too
        os.chown(tmp_path / "out.bin", 1234, 4321)
        with whole_file(tmp_path / "out.bin") as t:
            t.write_bytes(b"z")
        st = (tmp_path / "out.bin").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 4321, 0o600)
    with whole_file("/dev/null") as t:  # not a regular file: not renamed over
        assert t == Path("/dev/null")
        t.write_bytes(b"x")
    assert Path("/dev/null").is_char_device()


def test_a_symbolic_link_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    target = tmp_path / "v1" / "t.bin"
    target.write_bytes(b"old")
    link = tmp_path / "current.bin"
    link.symlink_to(target)
    with whole_file(link) as t:
        assert t.parent == target.parent
        t.write_bytes(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert os.listdir(tmp_path / "v1") == ["t.bin"]


def test_a_directory_is_refused_before_the_block(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for make in (whole_file, whole_fd):
        with pytest.raises(IsADirectoryError), make(tmp_path / "d"):
            raise AssertionError("the block ran")
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_dev_stdout_as_a_pipe_is_written_in_place(tmp_path: Path) -> None:
    # /dev/stdout's target is then "pipe:[N]", no path: the link itself is written through
    code = ("import os\nfrom recmgd.fileout import whole_fd, whole_file\n"
            "with whole_file('/dev/stdout') as t:\n    t.write_bytes(b'one ')\n"
            "with whole_fd('/dev/stdout') as (fd, t):\n    os.write(fd, b'two')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"one two"


def test_whole_fd(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    out.chmod(0o400)  # a read-only output: the writer has the descriptor, mode or not
    with whole_fd(out) as (fd, t):
        assert t.parent == tmp_path and t != out and stat.S_IMODE(t.stat().st_mode) == 0o400
        os.write(fd, b"new, longer")
        os.lseek(fd, 0, os.SEEK_SET)  # it seeks
        os.write(fd, b"N")
        assert out.read_bytes() == b"old"
    assert out.read_bytes() == b"New, longer" and stat.S_IMODE(out.stat().st_mode) == 0o400
    with pytest.raises(ValueError, match="the writer failed"), whole_fd(out) as (fd, t):
        os.write(fd, b"x")
        raise ValueError("the writer failed")
    assert out.read_bytes() == b"New, longer" and os.listdir(tmp_path) == ["out.bin"]
    # a FIFO: the whole file is copied in at the end (a reader reads it all); the FIFO stays
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with whole_fd(fifo) as (fd, t):
        assert stat.S_ISREG(t.stat().st_mode) and t.parent != tmp_path
        os.write(fd, b"0123456789")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"ab")
    assert reader.communicate(timeout=30)[0] == b"ab23456789"
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and not t.exists()
    # a device that refuses the bytes: its error when the block ends, nothing left
    with pytest.raises(OSError, match="No space left on device"), whole_fd("/dev/full") as (fd, t):
        os.write(fd, b"x")
    assert Path("/dev/full").is_char_device() and not t.exists()
    if os.geteuid() != 0:  # a device this process may not write: refused before the block
        with pytest.raises(PermissionError), whole_fd("/dev/mem"):
            raise AssertionError("the block ran")


def test_write_reason_finds_the_os_error_behind_another() -> None:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598") from None
    except RuntimeError as exc:
        assert write_reason(exc) == "No space left on device"
    assert write_reason(RuntimeError("plain")) == "plain"


@pytest.mark.parametrize("to", ["binary", "text", "dlrm"])
def test_convert_onto_a_full_disk(to: str, small_disk, shared_traces: Path, capsys) -> None:
    small = small_disk("64k")
    before = small / "kept.trace"  # an earlier output: it stays as it was
    src = shared_traces / "criteo_sample.trace"
    shutil.copy(src, before)
    rc = recmg.main(["trace", "convert", "--to", to, str(shared_traces / "obd_random.trace"), str(before)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "No space left on device" in err and "nothing was written" in err
    assert os.listdir(small) == ["kept.trace"] and before.read_bytes() == src.read_bytes()


def test_synth_onto_a_full_disk(small_disk, capsys) -> None:
    small = small_disk("64k")
    rc = recmg.main(["trace", "synth", "--lookups", "100000", "--tables", "8", str(small / "s.bin")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert os.listdir(small) == []


def test_a_gzip_dlrm_trace_is_still_compressed(tmp_path: Path, shared_traces: Path) -> None:
    out = tmp_path / "t.pt.gz"  # the writer compresses by the name: the temporary ends in it too
    assert recmg.main(["trace", "convert", str(shared_traces / "criteo_sample.trace"), str(out)]) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    a, b = open_trace(out), open_trace(shared_traces / "criteo_sample.trace")
    assert np.array_equal(np.asarray(a.keys), np.asarray(b.keys))


def test_train_onto_a_full_disk_keeps_the_old_checkpoint(small_disk, tmp_path: Path, shared_traces: Path,
                                                         capsys) -> None:
    trace = str(shared_traces / "criteo_sample.trace")
    assert recmg.main(["train", trace, "--out", str(tmp_path / "ck"), "--epochs", "1", "--quiet"]) == 0
    size = sum(f.stat().st_size for f in (tmp_path / "ck").iterdir())
    # room for one checkpoint, not for a second beside it
    small = small_disk(f"{(size * 3 // 2 + 8192) // 4096 * 4}k")
    old = small / "ck"
    shutil.copytree(tmp_path / "ck", old)
    kept = _digest(old)
    capsys.readouterr()
    rc = recmg.main(["train", trace, "--out", str(old), "--epochs", "1", "--seed", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "No space left on device" in err and "nothing in it was replaced" in err
    assert _digest(old) == kept and os.listdir(small) == ["ck"]
    assert json.loads((old / "config.json").read_text())["format"] == checkpoint.FORMAT


def test_the_demos_outputs_onto_a_full_disk(small_disk) -> None:
    from recmgd.cli import cmd_demo
    from recmgd.errors import OutputError

    small = small_disk("64k")
    with pytest.raises(OutputError, match=r"x\.png: cannot write \(No space left on device\)") as err:
        cmd_demo._write(str(small / "x.png"), lambda tmp: tmp.write_bytes(bytes(200_000)))
    assert "\n" not in str(err.value) and os.listdir(small) == []
    cmd_demo._write(str(small / "r.json"), lambda tmp: tmp.write_text("[]\n"))
    assert os.listdir(small) == ["r.json"]


def test_a_temporarys_name_is_read_back_by_the_same_module(tmp_path: Path) -> None:
    """partial_name makes a temporary's name and partial_owner reads it (the retrainer's sweep finds a
    dead process's temporaries by it): the pid and the output's name, None for other names."""
    from recmgd.fileout import partial_name, partial_owner

    p = partial_name(tmp_path, "result-1-2-ab-3.json")
    assert p.parent == tmp_path and partial_owner(p.name) == (os.getpid(), "result-1-2-ab-3.json")
    for other in ("result-1.json", ".partial-x-ab.out", ".partial-12-zz.out", ".partial-12-ab", ".partial-"):
        assert partial_owner(other) is None, other
