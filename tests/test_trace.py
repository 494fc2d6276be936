"""Trace formats, readers, step building, statistics and the synthetic generator."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from recmgd.errors import TraceError
from recmgd.keys import key_row, key_table, make_keys
from recmgd.trace import Trace, build_steps, detect_format, open_trace, save_trace
from recmgd.trace.binary import HEADER, read_binary, write_binary
from recmgd.trace.csvlog import read_csv_log
from recmgd.trace.stats import BIN_LABELS, bin_of, parse_locality_stats, trace_stats
from recmgd.trace.synth import SynthConfig, synth_keys, write_synth

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"  # ../shared beside the checkout


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_text_reader(tmp_path: Path) -> None:
    p = write(tmp_path, "a.trace", "# comment\n0 5 0\n1 7 0\n\n0 5 1\n2 3 3\n")
    tr = open_trace(p)
    assert detect_format(p) == "text"
    assert key_table(tr.keys).tolist() == [0, 1, 0, 2]
    assert key_row(tr.keys).tolist() == [5, 7, 5, 3]
    assert tr.sample_offsets.tolist() == [0, 2, 3, 4]


def test_text_two_columns_each_lookup_a_sample(tmp_path: Path) -> None:
    tr = open_trace(write(tmp_path, "b.trace", "0 1\n0 2\n"))
    assert tr.n_samples == 2


@pytest.mark.parametrize("body,line,what", [
    ("0 1 0\n0 x 0\n", 2, "not an integer"),
    ("0 1 0\n0 1\n", 2, "fields"),
    ("0 1 0\n\n# c\n0 -1 0\n", 4, "row -1"),
    ("0 1 0\n4194304 1 0\n", 2, "table"),
    ("0 1 0 5\n", 1, "fields"),
])
def test_text_errors_name_file_and_line(tmp_path: Path, body: str, line: int, what: str) -> None:
    p = write(tmp_path, "bad.trace", body)
    with pytest.raises(TraceError, match=rf"bad.trace:{line}: .*{what}"):
        open_trace(p)


def test_binary_roundtrip_and_errors(tmp_path: Path) -> None:
    tr = Trace(make_keys(np.array([0, 1, 2]), np.array([9, 8, 7])), np.array([0, 2, 3]))
    p = tmp_path / "t.bin"
    write_binary(tr, p)
    assert detect_format(p) == "binary"
    back = read_binary(p)
    assert isinstance(back.keys, np.memmap)
    assert back.keys.tolist() == tr.keys.tolist() and back.sample_offsets.tolist() == [0, 2, 3]
    raw = bytearray(p.read_bytes())
    raw[8] = 2  # version
    (tmp_path / "v.bin").write_bytes(bytes(raw))
    with pytest.raises(TraceError, match="version 2"):
        read_binary(tmp_path / "v.bin")
    (tmp_path / "short.bin").write_bytes(p.read_bytes()[:-8])
    with pytest.raises(TraceError, match="sizes"):
        read_binary(tmp_path / "short.bin")
    (tmp_path / "junk.bin").write_bytes(b"x" * HEADER.size)
    with pytest.raises(TraceError, match="magic"):
        read_binary(tmp_path / "junk.bin")


def _meta_file(path: Path, gz: bool) -> None:
    """A tiny file in Meta's dlrm_datasets layout: 2 tables, batch 3, table-major indices."""
    import torch

    lengths = torch.tensor([[1, 2, 0], [1, 1, 1]])
    indices = torch.tensor([10, 11, 12, 20, 21, 22])
    offsets = torch.tensor([0, 1, 3, 3, 4, 5, 6])
    buf = io.BytesIO()
    torch.save((indices, offsets, lengths), buf)
    data = gzip.compress(buf.getvalue()) if gz else buf.getvalue()
    path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_dlrm_reader(tmp_path: Path, gz: bool) -> None:
    p = tmp_path / ("m.pt.gz" if gz else "m.pt")
    _meta_file(p, gz)
    tr = open_trace(p)
    # sample 0: t0 row 10, t1 row 20; sample 1: t0 11, 12, t1 21; sample 2: t1 22
    assert [(int(t), int(r)) for t, r in zip(key_table(tr.keys), key_row(tr.keys), strict=True)] == [
        (0, 10), (1, 20), (0, 11), (0, 12), (1, 21), (1, 22)]
    assert tr.sample_offsets.tolist() == [0, 2, 5, 6]
    out = tmp_path / "again.pt"
    save_trace(tr, out)
    again = open_trace(out)
    assert again.keys.tolist() == tr.keys.tolist()


def test_dlrm_errors(tmp_path: Path) -> None:
    import torch

    p = tmp_path / "bad.pt"
    torch.save((torch.tensor([1, 2]), torch.tensor([0, 2]), torch.tensor([[1]])), p)
    with pytest.raises(TraceError, match="bad.pt: lengths add up to 1, indices hold 2"):
        open_trace(p)
    torch.save((torch.tensor([1, 2]), torch.tensor([0, 2]), torch.tensor([[5]])), p)
    with pytest.raises(TraceError, match="bad.pt: a length of 5, more than the 2 indices"):
        open_trace(p)
    (tmp_path / "x.pt").write_bytes(b"PK not a zip")
    with pytest.raises(TraceError, match="x.pt: not a torch file"):
        open_trace(tmp_path / "x.pt")


def test_format_by_content_not_name(tmp_path: Path) -> None:
    """A text trace named .pt is text (formats are recognised by content); a .pt name only names a file
    that starts as no text a torch file; a comment with a comma on the first line is still text."""
    assert open_trace(write(tmp_path, "text.pt", "1 2\n3 4\n")).keys.tolist() == [
        int(k) for k in make_keys(np.array([1, 3]), np.array([2, 4]))]
    assert detect_format(tmp_path / "text.pt") == "text"
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01junk")
    assert detect_format(tmp_path / "junk.pt") == "dlrm"
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01junk")
    assert detect_format(tmp_path / "junk.bin") == "text"
    for body in ("0 1  # user 7, day 2\n0 2\n1 3\n", "0 1\n0 2  # user 7, day 2\n1 3\n",
                 "# user 7, day 2\n0 1\n0 2\n1 3\n", "0\t1 # a, b\n0 2\n1 3\n"):
        p = write(tmp_path, "c.trace", body)
        assert detect_format(p) == "text", body
        assert open_trace(p).n_lookups == 3


def test_csv_with_a_byte_order_mark_reads_the_same(tmp_path: Path) -> None:
    """A UTF-8 BOM is no part of the header (Avazu: no extra table) nor of the first row (headerless
    Criteo: not taken for a header)."""
    bom = b"\xef\xbb\xbf"
    avazu = (SHARED / "avazu_sample.txt").read_bytes()
    criteo = (SHARED / "criteo_sample.txt").read_bytes().split(b"\n", 1)[1]  # headerless
    for name, data in (("avazu", avazu), ("criteo", criteo)):
        (tmp_path / f"{name}.csv").write_bytes(data)
        (tmp_path / f"{name}_bom.csv").write_bytes(bom + data)
        plain, marked = open_trace(tmp_path / f"{name}.csv"), open_trace(tmp_path / f"{name}_bom.csv")
        assert detect_format(tmp_path / f"{name}_bom.csv") == "csv"
        assert marked.keys.tolist() == plain.keys.tolist(), name
        assert marked.sample_offsets.tolist() == plain.sample_offsets.tolist(), name
    assert open_trace(tmp_path / "criteo_bom.csv").n_samples == 200


def test_dlrm_values_checked_before_any_cast(tmp_path: Path) -> None:
    """Lengths and offsets are compared in the file's own dtype and without int64 arithmetic that can
    wrap; a list where a tensor belongs is refused (an array of it could be any size)."""
    import torch

    p = tmp_path / "d.pt"
    torch.save((torch.tensor([1, 2], dtype=torch.uint64), torch.tensor([0, 2]),
                torch.tensor([[2]], dtype=torch.uint8)), p)
    assert open_trace(p).keys.tolist() == [1, 2]
    torch.save((torch.tensor([1, 2]), torch.tensor([0, 2]), torch.tensor([[-1, 3]])), p)
    with pytest.raises(TraceError, match="d.pt: negative lengths"):
        open_trace(p)
    wrap = torch.tensor([(1 << 63) - 1, -(1 << 63), -(1 << 63) + 1])  # int64 differences: 1 (wrapped), 1
    torch.save((torch.tensor([1, 2]), wrap, torch.tensor([[1, 1]])), p)
    with pytest.raises(TraceError, match="d.pt: offsets disagree"):
        open_trace(p)
    torch.save(([1, 2], torch.tensor([0, 2]), torch.tensor([[2]])), p)
    with pytest.raises(TraceError, match="d.pt: indices must be an integer tensor, got list"):
        open_trace(p)


def test_criteo_and_avazu_csv() -> None:
    cri = open_trace(SHARED / "criteo_sample.txt")
    assert cri.n_samples == 200
    assert int(key_table(cri.keys).max()) == 25
    ref = open_trace(SHARED / "criteo_sample.trace")
    assert cri.n_lookups == ref.n_lookups  # the same 200 rows, same missing values
    ava = open_trace(SHARED / "avazu_sample.txt")
    assert ava.n_samples == 100
    assert int(key_table(ava.keys).max()) + 1 == 22  # every column but id and click


def test_csv_errors_and_headerless(tmp_path: Path) -> None:
    p = write(tmp_path, "c.csv", "id,click,site\n1,0,a\n2,0\n")
    with pytest.raises(TraceError, match="c.csv:3: 2 fields"):
        read_csv_log(p)
    row = "\t".join(["0"] + ["1"] * 13 + ["abc"] * 26)
    q = write(tmp_path, "day_0", row + "\n" + row + "\n")
    tr = read_csv_log(q, table_size=100)
    assert tr.n_samples == 2 and tr.n_lookups == 52
    assert int(key_row(tr.keys).max()) < 100


def test_build_steps_dedups_in_first_appearance_order() -> None:
    keys = np.array([5, 3, 5, 7, 3, 3, 9, 1], dtype=np.int64)
    offsets = np.array([0, 2, 4, 6, 8])
    s = build_steps(keys, offsets, 2)
    assert [x.tolist() for x in s] == [[5, 3, 7], [3, 9, 1]]
    s3 = build_steps(keys, offsets, 3)
    assert [x.tolist() for x in s3] == [[5, 3, 7], [9, 1]]


def test_iter_steps_matches_steps() -> None:
    tr = open_trace(SHARED / "obd_random.trace")
    whole = tr.steps(16)
    parts = [s for _, s in tr.iter_steps(16, chunk_steps=100)]
    assert sum(len(p) for p in parts) == len(whole)
    assert np.array_equal(np.concatenate([p.keys for p in parts]), whole.keys)


def test_stats_bins() -> None:
    assert bin_of(np.array([1, 2, 3, 4, 5, 8, 9, 32768, 32769, 10**6])).tolist() == \
        [0, 1, 2, 2, 3, 3, 4, 15, 16, 16]
    assert BIN_LABELS[0] == "(0, 1]" and BIN_LABELS[-1] == "(32768+"
    tr = Trace(np.array([1, 1, 2, 3, 3, 3], dtype=np.int64), np.arange(7))
    st = trace_stats(tr)
    assert st.unique_rows == 3 and st.lookups == 6
    assert st.row_hist[:3] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert st.lookup_hist[:3] == pytest.approx([1 / 6, 2 / 6, 3 / 6])


META_ROWS, _ = parse_locality_stats((SHARED / "meta_2021_locality_stats.txt").read_text())


@pytest.mark.parametrize("tables,lookups,seed", [(1, 300_000, 0), (26, 1_000_000, 1), (856, 2_000_000, 2)])
def test_synth_matches_meta_2021(tmp_path: Path, tables: int, lookups: int, seed: int) -> None:
    p = tmp_path / "s.bin"
    n = write_synth(SynthConfig(lookups=lookups, tables=tables, seed=seed), p)
    assert n == lookups
    st = trace_stats(open_trace(p))
    assert st.lookups == lookups
    assert st.tables <= tables
    for got, want in zip(st.row_hist, META_ROWS, strict=True):
        assert abs(got - want) <= 0.02
    tr = open_trace(p)
    assert tr.n_samples == -(-lookups // (tables * 4))


def test_synth_huge_spread_warns_nothing() -> None:
    """Gaps drawn past float64 (sigma 1000) are clipped: no RuntimeWarning, no NaN position, and every
    lookup is still emitted."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cfg in (SynthConfig(lookups=20_000, sigma=1000.0), SynthConfig(lookups=20_000, gap=1e307)):
            keys = np.concatenate(list(synth_keys(cfg)))
            assert keys.shape[0] == 20_000 and int(keys.min()) >= 0


def test_synth_streams_in_bounded_blocks() -> None:
    cfg = SynthConfig(lookups=3_000_000, tables=8, block_rows=4096)
    sizes = [b.shape[0] for b in synth_keys(cfg)]
    assert sum(sizes) == 3_000_000
    assert max(sizes) < 4096 * 200  # a block is bounded by its rows, not by the length
    a = np.concatenate(list(synth_keys(SynthConfig(lookups=10_000, seed=3))))
    b = np.concatenate(list(synth_keys(SynthConfig(lookups=10_000, seed=3))))
    assert np.array_equal(a, b)


def test_cli_convert_stats_synth_sim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recmgd.cli.recmg import main

    out = tmp_path / "obd.bin"
    assert main(["trace", "convert", str(SHARED / "obd_random.trace"), str(out)]) == 0
    assert open_trace(out).n_lookups == 60_000
    txt = tmp_path / "obd.trace"
    assert main(["trace", "convert", str(out), str(txt)]) == 0
    assert open_trace(txt).keys.tolist() == open_trace(out).keys.tolist()
    capsys.readouterr()
    assert main(["trace", "stats", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["lookups"] == 60_000 and st["tables"] == 6 and len(st["hit_rates"]) == 6
    assert main(["trace", "stats", str(SHARED / "criteo_sample.trace"), "--no-sim"]) == 0
    text = capsys.readouterr().out
    n = open_trace(SHARED / "criteo_sample.trace").n_lookups
    assert "Histogram of col sizes" in text
    assert f"\n# of indices: {n}\n" in text and "Avg #" not in text  # totals, not labelled averages
    syn = tmp_path / "syn.bin"
    assert main(["trace", "synth", str(syn), "--lookups", "2e4", "--tables", "3"]) == 0
    assert open_trace(syn).n_lookups == 20_000
    bad = write(tmp_path, "bad.trace", "0 1 0\nzz\n")
    assert main(["trace", "stats", str(bad)]) == 1
    assert "bad.trace:2" in capsys.readouterr().err


def test_native_dedup_matches_numpy() -> None:
    from recmgd.trace.steps import _dedup_native, dedup_steps

    rng = np.random.default_rng(2)
    keys = rng.integers(0, 50, size=5000).astype(np.int64)
    bounds = np.concatenate(([0], np.sort(rng.choice(np.arange(1, 5000), 300, replace=False)), [5000]))
    n = bounds.shape[0] - 1
    fast = _dedup_native(keys, bounds.astype(np.int64), n)
    ref = dedup_steps(keys, np.repeat(np.arange(n), np.diff(bounds)), n)
    assert fast is not None
    assert np.array_equal(fast.keys, ref.keys) and np.array_equal(fast.offsets, ref.offsets)
