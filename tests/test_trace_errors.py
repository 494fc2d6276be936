"""Bad trace files through the CLIs: each one is a one-line error naming the file and the problem and a
non-zero exit, never a traceback or a signal (the trust-boundary findings of issue #12)."""

from __future__ import annotations

import gzip
import io
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recmgd.errors import TraceError
from recmgd.keys import MAX_TABLES, ROW_BITS, make_keys
from recmgd.trace import Trace, build_steps, open_trace
from recmgd.trace.binary import HEADER, write_binary

REPO = Path(__file__).resolve().parent.parent


def recmg(*args: str, cwd: Path, memory: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``memory``: its address-space limit in bytes (a file that makes it allocate more
    fails fast instead of filling the machine)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def limit() -> None:
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env, preexec_fn=limit)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def good_trace(n: int = 400, per_sample: int = 4) -> Trace:
    rng = np.random.default_rng(1)
    keys = make_keys(rng.integers(0, 3, n), rng.integers(0, 50, n))
    return Trace(keys, np.arange(0, n + 1, per_sample, dtype=np.int64))


def binary_with(tmp_path: Path, name: str, keys: np.ndarray | None = None,
                offsets: np.ndarray | None = None) -> Path:
    """A binary trace whose key or offset array is overwritten in place after writing (the header
    stays consistent, as a corrupted or hostile file's would)."""
    tr = good_trace()
    p = tmp_path / name
    write_binary(tr, p)
    raw = bytearray(p.read_bytes())
    if keys is not None:
        raw[HEADER.size:HEADER.size + 8 * tr.n_lookups] = keys.astype("<i8").tobytes()
    if offsets is not None:
        soff = HEADER.size + 8 * tr.n_lookups
        raw[soff:] = offsets.astype("<i8").tobytes()
    p.write_bytes(bytes(raw))
    return p


def nonmonotonic(tmp_path: Path) -> Path:
    offs = np.asarray(good_trace().sample_offsets).copy()
    offs[3], offs[5] = 1 << 40, offs[1]  # far past the keys, then back: the old reader only checked the ends
    return binary_with(tmp_path, "nonmono.bin", offsets=offs)


def negative_key(tmp_path: Path) -> Path:
    keys = np.asarray(good_trace().keys).copy()
    keys[7] = -5
    return binary_with(tmp_path, "negkey.bin", keys=keys)


def big_key(tmp_path: Path) -> Path:
    keys = np.asarray(good_trace().keys).copy()
    keys[9] = MAX_TABLES << ROW_BITS  # table 2**22: one past the last table
    return binary_with(tmp_path, "bigkey.bin", keys=keys)


def directory(tmp_path: Path) -> Path:
    d = tmp_path / "traces.d"
    d.mkdir()
    return d


def non_utf8_csv(tmp_path: Path) -> Path:
    p = tmp_path / "log.csv"
    p.write_bytes(b"id,click,site,app\n1,0,abc,def\n2,1,\xff\xfe,x\n")
    return p


CASES = {
    "nonmonotonic": (nonmonotonic, "nonmono.bin: sample 3 ends before it starts (offsets 1099511627776 then"),
    "negative key": (negative_key, "negkey.bin: lookup 7: key -5 is negative"),
    "out-of-range key": (big_key, "bigkey.bin: lookup 9: key 4611686018427387904 has table 4194304"),
    "directory": (directory, "traces.d: is a directory"),
    "non-UTF-8 CSV": (non_utf8_csv, "log.csv:3: not UTF-8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trace_stats_one_line_error(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    path = make(tmp_path)
    r = recmg("trace", "stats", path.name, cwd=tmp_path)
    assert_one_line_error(r, "recmg trace: error: ", message)
    with pytest.raises(TraceError) as err:
        open_trace(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


@pytest.mark.parametrize("case", ["nonmonotonic", "negative key", "directory", "non-UTF-8 CSV"])
def test_sim_one_line_error(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    path = make(tmp_path)
    r = recmg("sim", path.name, "--policies", "lru", "--fractions", "0.1", cwd=tmp_path)
    assert_one_line_error(r, "recmg sim: error: ", message)


def test_train_one_line_error(tmp_path: Path) -> None:
    path = nonmonotonic(tmp_path)
    r = recmg("train", path.name, "--out", str(tmp_path / "ckpt"), "--epochs", "1", "-q", cwd=tmp_path)
    assert_one_line_error(r, "recmg train: error: ", CASES["nonmonotonic"][1])
    assert not (tmp_path / "ckpt").exists()


def test_convert_keeps_a_good_trace_and_names_a_truncated_one(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    write_binary(good_trace(), good)
    r = recmg("trace", "convert", "good.bin", "good.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert open_trace(tmp_path / "good.txt").keys.tolist() == good_trace().keys.tolist()
    (tmp_path / "cut.bin").write_bytes(good.read_bytes()[:-3])
    r = recmg("trace", "convert", "cut.bin", "cut.txt", cwd=tmp_path)
    assert_one_line_error(r, "cut.bin: sizes in the header (400 lookups, 100 samples) do not match")
    assert not (tmp_path / "cut.txt").exists()


@pytest.mark.parametrize(("body", "message"), [
    (b"", "empty file"),
    (b"0 1 0\n0 2 0\n\x80\x81 3 1\n", "e.trace:3: not ASCII"),
    (b"0 1 0\n0 1_0 0\n", "e.trace:2: not an integer"),
    (b"0 1 0\n0 99999999999999999999999 0\n", "e.trace:2: row 99999999999999999999999 outside"),
])
def test_text_reader_errors_name_the_line(tmp_path: Path, body: bytes, message: str) -> None:
    p = tmp_path / "e.trace"
    p.write_bytes(body)
    with pytest.raises(TraceError, match=message):
        open_trace(p)


def test_binary_header_flags_and_counts(tmp_path: Path) -> None:
    p = tmp_path / "h.bin"
    write_binary(good_trace(), p)
    raw = bytearray(p.read_bytes())
    raw[12] = 1  # flags
    p.write_bytes(bytes(raw))
    with pytest.raises(TraceError, match="h.bin: unknown header flags 0x1"):
        open_trace(p)
    raw[12] = 0
    raw[16:24] = (1 << 63).to_bytes(8, "little")  # n_lookups far past the file
    p.write_bytes(bytes(raw))
    with pytest.raises(TraceError, match="h.bin: sizes in the header"):
        open_trace(p)


def test_csv_table_size_and_garbage(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,click,site\n1,0,a\n")
    with pytest.raises(TraceError, match="c.csv: table size 0 outside"):
        open_trace(p, table_size=0)
    p.write_text("\n1,2\n")
    with pytest.raises(TraceError, match="c.csv:1: empty first line"):
        open_trace(p, fmt="csv")


def test_build_steps_refuses_offsets_outside_the_keys() -> None:
    keys = np.arange(10, dtype=np.int64)
    for offsets in ([0, 5, 3, 10], [0, 5, 20], [-1, 5, 10]):
        with pytest.raises(TraceError, match="step building"):
            build_steps(keys, np.array(offsets, dtype=np.int64), 1)
    s = build_steps(keys[[0, 1, 1, 2, 0, 0]], np.array([0, 2, 4, 6], dtype=np.int64), 2)
    assert s.keys.tolist() == [0, 1, 2, 0] and s.offsets.tolist() == [0, 3, 4]


def test_a_trace_without_lookups_and_an_unwritable_output(tmp_path: Path) -> None:
    (tmp_path / "c.trace").write_text("# only a comment\n\n")
    assert open_trace(tmp_path / "c.trace").n_lookups == 0  # valid (an idle recording is one too)
    r = recmg("train", "c.trace", "--out", str(tmp_path / "ckpt"), "-q", cwd=tmp_path)
    assert_one_line_error(r, "recmg train: error: c.trace: no lookups to train on")
    write_binary(good_trace(), tmp_path / "good.bin")
    r = recmg("trace", "convert", "good.bin", "no/such/dir/out.bin", cwd=tmp_path)
    assert_one_line_error(r, "no/such/dir/out.bin: cannot write (No such file or directory)")


# ------------------------------------------------------------------ hostile DLRM and text files (audit)
def torch_file(path: Path, obj: object, gz: bool = False) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())
    return path


def dlrm_lengths_that_wrap(tmp_path: Path) -> Path:
    """4 lengths of 2**62: their int64 sum wraps to 0, the number of indices (the old reader then wrote
    out of bounds: SIGSEGV)."""
    import torch

    return torch_file(tmp_path / "wrap.pt", (torch.zeros(0, dtype=torch.int64), torch.tensor([0]),
                                             torch.tensor([[1 << 62] * 4])))


def dlrm_bad_deflate(tmp_path: Path) -> Path:
    g = gzip.compress(b"hello world" * 100)
    p = tmp_path / "deflate.pt.gz"
    p.write_bytes(g[:10] + b"\xff\xff\xff\xff" + g[14:])
    return p


def dlrm_expanded_lengths(tmp_path: Path) -> Path:
    """A 2 KB file whose lengths are a stride-0 view of shape (8, 2**28): a copy of them is 16 GiB."""
    import torch

    lengths = torch.zeros(1, dtype=torch.int64).expand(8, 1 << 28)
    empty = torch.zeros(0, dtype=torch.int64)
    return torch_file(tmp_path / "expand.pt", (empty, torch.zeros(1, dtype=torch.int64), lengths))


def dlrm_numpy_pickle(tmp_path: Path) -> Path:
    """numpy arrays in the pickle: torch's weights-only loader refuses them with a message of several
    lines, ANSI codes and advice to load with weights_only=False."""
    return torch_file(tmp_path / "np.pt", (np.arange(3), np.arange(2), np.ones((1, 1), dtype=np.int64)))


def text_long_integer(tmp_path: Path) -> Path:
    p = tmp_path / "long.trace"
    p.write_text("0 1\n1 " + "9" * 5000 + "\n")
    return p


def text_huge_sample(tmp_path: Path) -> Path:
    p = tmp_path / "huge.trace"
    p.write_text("1 2 0\n1 3 1\n1 4 99999999999999999999\n1 5 3\n")
    return p


HOSTILE = {
    "DLRM lengths whose sum wraps": (dlrm_lengths_that_wrap, "wrap.pt: a length of 4611686018427387904, more "
                                     "than the 0 indices"),
    "DLRM bad deflate stream": (dlrm_bad_deflate, "deflate.pt.gz: corrupt gzip (Error -3"),
    "DLRM expanded lengths": (dlrm_expanded_lengths, "expand.pt: lengths is a view of 2,147,483,648 values "
                              "over 1 stored ones"),
    "DLRM pickle of numpy arrays": (dlrm_numpy_pickle, "np.pt: not a torch file (UnpicklingError: "
                                    "Unsupported global"),
    "text 5000-digit integer": (text_long_integer, "long.trace:2: row 999999999999... (5,000 digits) is out "
                                "of range 0..1099511627775"),
    "text sample past int64": (text_huge_sample, "huge.trace:3: sample 99999999999999999999 outside "
                               "0..9223372036854775807"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_one_line(tmp_path: Path, case: str) -> None:
    make, message = HOSTILE[case]
    path = make(tmp_path)
    r = recmg("trace", "stats", "--no-sim", path.name, cwd=tmp_path, memory=4 << 30)
    assert_one_line_error(r, "recmg trace: error: ", message)
    assert "\x1b" not in r.stderr and "weights_only" not in r.stderr  # no ANSI codes, no unsafe advice
    with pytest.raises(TraceError, match=re.escape(message)):
        open_trace(path)


def test_torch_reasons_are_one_clean_line() -> None:
    from recmgd.trace.dlrm import torch_reason

    exc = RuntimeError("Weights only load failed. In PyTorch 2.6, we changed the default value of the "
                       "`weights_only` argument. Re-running `torch.load` with `weights_only` set to `False` "
                       "will likely succeed. Do it only if you got the file from a trusted source.\n"
                       "\x1b[1mPlease file an issue\x1b[0m: WeightsUnpickler error: \n\n"
                       "Unsupported operand 49\n\nCheck the documentation of torch.load")
    assert torch_reason(exc) == "RuntimeError: Unsupported operand 49"
    assert torch_reason(RuntimeError("Re-run with weights_only=False\x1b[0m")) == \
        "RuntimeError: refused by the weights-only loader"
    assert torch_reason(ValueError("bad\tbyte\x07here\nsecond line")) == "ValueError: bad byte here"


def test_convert_to_text_refuses_empty_samples(tmp_path: Path) -> None:
    """Text cannot hold an empty sample (a sample is the lines of one sample value): converting a trace
    with some to text is refused, naming how many, and nothing is written (it was dropped silently)."""
    keys = make_keys(np.zeros(4, np.int64), np.array([1, 2, 1, 2]))
    write_binary(Trace(keys, np.array([0, 0, 1, 1, 2, 2, 3, 3, 4], dtype=np.int64)), tmp_path / "alt.bin")
    r = recmg("trace", "convert", "alt.bin", "alt.txt", cwd=tmp_path)
    assert_one_line_error(r, "recmg trace: error: alt.txt: 4 of the trace's 8 samples are empty", "binary")
    assert not (tmp_path / "alt.txt").exists()
    r = recmg("trace", "convert", "alt.bin", "alt2.bin", cwd=tmp_path)
    assert r.returncode == 0 and "4 lookups, 8 samples (binary)" in r.stdout, r.stderr
    assert open_trace(tmp_path / "alt2.bin").sample_offsets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
