"""Fuzz cases for the trace readers and the C step builder, run by tests/test_trace_fuzz.py as

    python tests/trace_fuzz_cases.py TARGET CASES WORKDIR      (TARGET: binary, text, csv or steps)

each target in its own process, so that a signal (SIGSEGV, SIGBUS, an abort from a heap check) is a
failed test and not a dead test runner. Inputs are valid files mutated (bit flips, truncation, garbage
or inserted bytes, header fields and 8-byte words overwritten with edge values, sample offsets
shuffled) and random bytes. Each case must either raise TraceError or be accepted; an accepted file
must read back as exactly what it holds (and an unmutated one as what was written), and its steps must
equal a plain-Python deduplication. The case being run is in WORKDIR/case.* (left there on a crash).
Hypothesis runs derandomized, without a database, so every run is the same.
"""

from __future__ import annotations

import csv
import io
import random
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import given as hgiven
from hypothesis import strategies as st

from recmgd.errors import TraceError
from recmgd.keys import MAX_ROWS, MAX_TABLES, ROW_BITS, make_keys
from recmgd.trace import Trace, build_steps
from recmgd.trace.binary import HEADER, read_binary, write_binary
from recmgd.trace.csvlog import fnv1a64, read_csv_log
from recmgd.trace.text import read_text, write_text

KEY_LIMIT = MAX_TABLES << ROW_BITS
# cases an example: one generated input and PER mutations of it, the first drawn by hypothesis (shrinkable),
# the others from a drawn seed (hypothesis's own cost is per draw, several times a case's)
PER = 20
EDGE_WORDS = [0, 1, 2, 7, 8, 63, 64, 65, -1, -2, -(1 << 63), (1 << 63) - 1, 1 << 32, (1 << 40) - 1,
              KEY_LIMIT - 1, KEY_LIMIT, 1 << 61]
COUNTS = {"accepted": 0, "rejected": 0}


# ---- inputs ----

@st.composite
def traces(draw: st.DrawFn, empty_samples: bool) -> Trace:
    """A small valid trace: up to 10 samples of up to 6 lookups; tables and rows small (repeats), at the
    edges of their ranges, or anywhere in them (numpy from a drawn seed: drawing every key through
    hypothesis costs more than the case itself)."""
    n_samples = draw(st.integers(0, 10))
    rng = np.random.default_rng(draw(st.integers(0, (1 << 32) - 1)))
    lengths = rng.integers(0 if empty_samples else 1, 7, n_samples)
    n = int(lengths.sum())
    tables = np.where(rng.random(n) < 0.8, rng.integers(0, 4, n), rng.choice([1000, MAX_TABLES - 1], n))
    rows = np.where(rng.random(n) < 0.8, rng.integers(0, 7, n), rng.integers(0, MAX_ROWS, n))
    offsets = np.zeros(n_samples + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Trace(make_keys(tables, rows), offsets)


POS = st.integers(0, 1 << 16)
MUTATIONS = st.one_of(
    st.tuples(st.just("none")),
    st.tuples(st.just("flip"), st.lists(POS, min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("garbage"), POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("word"), POS, st.sampled_from(EDGE_WORDS) | st.integers(-(1 << 63), (1 << 63) - 1)),
    st.tuples(st.just("random"), st.binary(max_size=300)),
)
BINARY_MUTATIONS = MUTATIONS | st.one_of(
    st.tuples(st.just("field"), st.integers(1, 6),
              st.sampled_from([0, 1, 2, 63, 64, 65, 1 << 32, 1 << 61, (1 << 64) - 1])
              | st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("shuffle_offsets"), st.randoms(use_true_random=False)),
    st.tuples(st.just("swap_offsets"), POS, POS),
)


def random_mutation(rnd: random.Random, binary: bool) -> tuple:
    """One mutation of the kinds MUTATIONS / BINARY_MUTATIONS draw, from a seeded generator."""
    kinds = ["none", "flip", "truncate", "garbage", "insert", "word", "random"]
    if binary:
        kinds += ["field", "shuffle_offsets", "swap_offsets"]
    kind = rnd.choice(kinds)
    pos = rnd.randrange(1 << 16)
    if kind == "flip":
        return kind, [rnd.randrange(1 << 16) for _ in range(rnd.randint(1, 4))]
    if kind == "truncate":
        return kind, pos
    if kind in ("garbage", "insert"):
        return kind, pos, rnd.randbytes(rnd.randint(1, 16))
    if kind == "word":
        return kind, pos, rnd.choice(EDGE_WORDS) if rnd.random() < 0.5 else rnd.randrange(-(1 << 63), 1 << 63)
    if kind == "random":
        return kind, rnd.randbytes(rnd.randint(0, 300))
    if kind == "field":
        return kind, rnd.randint(1, 6), rnd.choice([0, 1, 2, 63, 64, 65, 1 << 32, 1 << 61, (1 << 64) - 1,
                                                    rnd.randrange(1 << 64)])
    if kind == "shuffle_offsets":
        return kind, random.Random(rnd.random())
    if kind == "swap_offsets":
        return kind, pos, rnd.randrange(1 << 16)
    return ("none",)


@st.composite
def mutation_lists(draw: st.DrawFn, binary: bool) -> list[tuple]:
    """PER mutations: one drawn by hypothesis, PER - 1 from a drawn seed."""
    first = draw(BINARY_MUTATIONS if binary else MUTATIONS)
    rnd = random.Random(draw(st.integers(0, (1 << 32) - 1)))
    return [first, *(random_mutation(rnd, binary) for _ in range(PER - 1))]


def mutate(data: bytes, mut: tuple, prefix: bytes = b"") -> bytes:
    """Apply one mutation; positions wrap around the data (a binary trace's offsets: after the keys)."""
    kind = mut[0]
    buf = bytearray(data)
    size = max(len(buf), 1)
    if kind == "flip":
        for bit in mut[1]:
            if buf:
                buf[(bit // 8) % len(buf)] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del buf[mut[1] % size:]
    elif kind == "garbage":
        at = mut[1] % size
        buf[at:at + len(mut[2])] = mut[2]
    elif kind == "insert":
        at = mut[1] % (len(buf) + 1)
        buf[at:at] = mut[2]
    elif kind == "word":
        at = (mut[1] * 8) % size
        buf[at:at + 8] = struct.pack("<q", mut[2])
    elif kind == "random":
        buf = bytearray(prefix + mut[1])
    elif kind == "field":  # one of the header's u32/u64 fields: version, flags, n, ns, koff, soff
        fmt, at = [("<I", 8), ("<I", 12), ("<Q", 16), ("<Q", 24), ("<Q", 32), ("<Q", 40)][mut[1] - 1]
        buf[at:at + struct.calcsize(fmt)] = struct.pack(fmt, mut[2] % (1 << (8 * struct.calcsize(fmt))))
    elif kind in ("shuffle_offsets", "swap_offsets"):
        n, ns = struct.unpack_from("<QQ", buf, 16)
        soff = HEADER.size + 8 * n
        offs = list(struct.unpack_from(f"<{ns + 1}q", buf, soff))
        if kind == "shuffle_offsets":
            mut[1].shuffle(offs)
        else:
            i, j = mut[1] % len(offs), mut[2] % len(offs)
            offs[i], offs[j] = offs[j], offs[i]
        struct.pack_into(f"<{ns + 1}q", buf, soff, *offs)
    return bytes(buf)


# ---- checks ----

def reference_steps(keys: list[int], offsets: list[int], batch: int) -> tuple[list[int], list[int]]:
    """Steps of ``batch`` samples, each deduplicated in first-appearance order, in plain Python."""
    out: list[int] = []
    outoffs = [0]
    for s in range(0, len(offsets) - 1, batch):
        seen: set[int] = set()
        for k in keys[offsets[s]:offsets[min(s + batch, len(offsets) - 1)]]:
            if k not in seen:
                seen.add(k)
                out.append(k)
        outoffs.append(len(out))
    return out, outoffs


def check_accepted(tr: Trace, batch: int) -> None:
    """What every accepted trace must satisfy, and its steps (the C builder) must match the reference."""
    keys = np.asarray(tr.keys).tolist()
    offs = np.asarray(tr.sample_offsets).tolist()
    assert offs[0] == 0 and offs[-1] == len(keys), offs
    assert all(a <= b for a, b in zip(offs, offs[1:], strict=False)), offs
    assert all(0 <= k < KEY_LIMIT for k in keys), keys
    steps = tr.steps(batch)
    ref_keys, ref_offs = reference_steps(keys, offs, batch)
    assert steps.keys.tolist() == ref_keys and steps.offsets.tolist() == ref_offs


def same(tr: Trace, keys: list[int], offsets: list[int]) -> bool:
    return np.asarray(tr.keys).tolist() == keys and np.asarray(tr.sample_offsets).tolist() == offsets


def run_binary(work: Path) -> Callable[[], None]:
    path = work / "case.bin"

    @hgiven(traces(empty_samples=True), mutation_lists(binary=True), st.integers(1, 4))
    def example(tr: Trace, muts: list[tuple], batch: int) -> None:
        write_binary(tr, path)
        written = path.read_bytes()
        for mut in muts:
            case(tr, written, mutate(written, mut, prefix=written[:8]), batch)

    def case(tr: Trace, written: bytes, data: bytes, batch: int) -> None:
        path.write_bytes(data)
        try:
            got = read_binary(path)
        except TraceError:
            COUNTS["rejected"] += 1
            assert data != written, "a valid trace was refused"
            return
        COUNTS["accepted"] += 1
        n = got.n_lookups
        assert np.asarray(got.keys).astype("<i8").tobytes() == data[HEADER.size:HEADER.size + 8 * n]
        assert np.asarray(got.sample_offsets).astype("<i8").tobytes() == data[HEADER.size + 8 * n:]
        if data == written:
            assert same(got, tr.keys.tolist(), tr.sample_offsets.tolist())
        check_accepted(got, batch)
        del got

    return example


def parse_text_reference(data: bytes) -> tuple[list[int], list[int]] | None:
    """The text format's rules, line by line: (keys, offsets), or None for a file they refuse."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    rows: list[list[int]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        body = line.split("#", 1)[0].split()
        if not body:
            continue
        if len(body) not in (2, 3) or (rows and len(body) != len(rows[0])):
            return None
        if not all(re.fullmatch(r"[+-]?[0-9]+", v) for v in body):
            return None
        vals = [int(v) for v in body]
        if not (0 <= vals[0] < MAX_TABLES and 0 <= vals[1] < MAX_ROWS and (len(vals) == 2 or vals[2] >= 0)):
            return None
        rows.append(vals)
    keys = [(t << ROW_BITS) | r for t, r, *_ in rows]
    offsets = [0]
    for i in range(1, len(rows)):
        if len(rows[i]) == 2 or rows[i][2] != rows[i - 1][2]:
            offsets.append(i)
    if rows:
        offsets.append(len(rows))
    return keys, offsets


def run_text(work: Path) -> Callable[[], None]:
    path = work / "case.trace"

    @hgiven(traces(empty_samples=False), mutation_lists(binary=False), st.integers(1, 4))
    def example(tr: Trace, muts: list[tuple], batch: int) -> None:
        write_text(tr, path)
        written = path.read_bytes()
        for mut in muts:
            case(tr, written, mutate(written, mut), batch)

    def case(tr: Trace, written: bytes, data: bytes, batch: int) -> None:
        path.write_bytes(data)
        try:
            got = read_text(path)
        except TraceError:
            COUNTS["rejected"] += 1
            assert data != written or not written, "a valid trace was refused"
            return
        COUNTS["accepted"] += 1
        ref = parse_text_reference(data)
        assert ref is not None, "the reader accepted what the format's rules refuse"
        assert same(got, *ref)
        if data == written:
            assert same(got, tr.keys.tolist(), tr.sample_offsets.tolist())
        check_accepted(got, batch)

    return example


VALUE_CHARS = "ab0 9,\"\n\t\xe9\u4e2d"
CRITEO_CHARS = "0123456789abcdef"


@st.composite
def csv_logs(draw: st.DrawFn) -> tuple[bytes, list[list[str]], list[int], int]:
    """A log as (bytes, rows, table columns, table size): Avazu-style with a header (values with commas,
    quotes, newlines, tabs and non-ASCII), or headerless tab-separated Criteo; values from a drawn seed."""
    size = draw(st.sampled_from([1, 7, 1 << 20, MAX_ROWS]))
    rnd = random.Random(draw(st.integers(0, (1 << 32) - 1)))

    def value(chars: str) -> str:
        return "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 4)))

    buf = io.StringIO()
    if draw(st.booleans()):
        k = rnd.randint(1, 4)
        names = ["id", "click", *(f"c{i}" for i in range(k))]
        rows = [[value(VALUE_CHARS) for _ in range(k + 2)] for _ in range(rnd.randint(0, 6))]
        csv.writer(buf, lineterminator="\n").writerows([names, *rows])
        cols = list(range(2, k + 2))
    else:
        rows = [[rnd.choice("01"), *(rnd.choice(["", "3", "17"]) for _ in range(13)),
                 *(value(CRITEO_CHARS) for _ in range(26))] for _ in range(rnd.randint(1, 5))]
        csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
        cols = list(range(14, 40))
    return buf.getvalue().encode(), rows, cols, size


def run_csv(work: Path) -> Callable[[], None]:
    path = work / "case.csv"

    @hgiven(csv_logs(), mutation_lists(binary=False), st.integers(1, 4))
    def example(log: tuple[bytes, list[list[str]], list[int], int], muts: list[tuple], batch: int) -> None:
        for mut in muts:
            case(log, mutate(log[0], mut), batch)

    def case(log: tuple[bytes, list[list[str]], list[int], int], data: bytes, batch: int) -> None:
        written, rows, cols, size = log
        path.write_bytes(data)
        try:
            got = read_csv_log(path, table_size=size)
        except TraceError:
            COUNTS["rejected"] += 1
            assert data != written, "a valid log was refused"
            return
        COUNTS["accepted"] += 1
        assert got.n_samples <= data.count(b"\n") + data.count(b"\r") + 1
        assert all(0 <= int(k) & ((1 << ROW_BITS) - 1) < size for k in np.asarray(got.keys))
        if data == written:
            keys: list[int] = []
            offsets = [0]
            for row in rows:
                for t, c in enumerate(cols):
                    v = row[c].strip()
                    if v:
                        keys.append((t << ROW_BITS) | fnv1a64(v) % size)
                offsets.append(len(keys))
            assert same(got, keys, offsets)
        check_accepted(got, batch)

    return example


def run_steps(work: Path) -> Callable[[], None]:
    from recmgd.simcore import ffi, lib

    guard = -0x5EED
    any_offsets = st.lists(st.sampled_from(EDGE_WORDS) | st.integers(-3, 40), min_size=1, max_size=12)
    cut_offsets = st.tuples(st.integers(0, (1 << 32) - 1), st.booleans())

    def keys_of(seed: int) -> list[int]:
        """Up to 30 keys: mostly a few small values (repeats to deduplicate), some any int64."""
        rng = np.random.default_rng(seed)
        n = int(rng.integers(0, 31))
        wide = rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64, endpoint=True)
        return np.where(rng.random(n) < 0.8, rng.integers(0, 6, n), wide).tolist()

    def offsets_of(n_keys: int, how: tuple[int, bool] | list[int]) -> list[int]:
        if isinstance(how, list):
            return how
        rng = np.random.default_rng(how[0])
        cuts = sorted(rng.integers(0, n_keys + 1, int(rng.integers(0, 11))).tolist())
        return [0, *cuts, n_keys] if how[1] else [*cuts, n_keys]

    def random_offsets(rnd: random.Random) -> tuple[int, bool] | list[int]:
        if rnd.random() < 0.5:
            return rnd.randrange(1 << 32), rnd.random() < 0.5
        return [rnd.choice(EDGE_WORDS) if rnd.random() < 0.3 else rnd.randint(-3, 40)
                for _ in range(rnd.randint(1, 12))]

    @hgiven(st.integers(0, (1 << 32) - 1), any_offsets | cut_offsets, st.integers(0, (1 << 32) - 1),
            st.integers(1, 4))
    def example(seed: int, first: tuple[int, bool] | list[int], more: int, batch: int) -> None:
        keys = keys_of(seed)
        rnd = random.Random(more)
        for how in [first, *(random_offsets(rnd) for _ in range(PER - 1))]:
            case((keys, offsets_of(len(keys), how)), batch)

    def case(ko: tuple[list[int], list[int]], batch: int) -> None:
        keys, offsets = ko
        valid = (offsets[0] >= 0 and offsets[-1] <= len(keys)
                 and all(a <= b for a, b in zip(offsets, offsets[1:], strict=False)))
        # the Python entry point: a TraceError, or the reference's steps
        karr = np.array(keys, dtype=np.int64)
        oarr = np.array(offsets, dtype=np.int64)
        try:
            steps = build_steps(karr, oarr, batch)
        except TraceError:
            assert not valid
            COUNTS["rejected"] += 1
        else:
            assert valid
            COUNTS["accepted"] += 1
            base = offsets[0]
            ref_keys, ref_offs = reference_steps(keys[base:], [o - base for o in offsets], batch)
            assert steps.keys.tolist() == ref_keys and steps.offsets.tolist() == ref_offs
        # the C core directly, every step a bound (batch 1): SC_EARG, or within exactly-sized outputs
        n_steps = len(offsets) - 1
        out = np.full(len(keys) + 4, guard, dtype=np.int64)
        out_offs = np.full(n_steps + 5, guard, dtype=np.int64)
        rc = lib.sc_dedup_steps(ffi.from_buffer("int64_t[]", karr), len(keys),
                                ffi.from_buffer("int64_t[]", oarr), n_steps,
                                ffi.from_buffer("int64_t[]", out), ffi.from_buffer("int64_t[]", out_offs))
        assert (out[len(keys):] == guard).all() and (out_offs[n_steps + 1:] == guard).all()
        if not valid:
            assert rc == lib.SC_EARG and (out == guard).all() and (out_offs == guard).all()
            return
        ref_keys = []
        for s in range(n_steps):
            step = keys[offsets[s]:offsets[s + 1]]
            ref_keys += [k for i, k in enumerate(step) if k not in step[:i]]
        assert rc == len(ref_keys) and out[:rc].tolist() == ref_keys

    return example


TARGETS = {"binary": run_binary, "text": run_text, "csv": run_csv, "steps": run_steps}


def main() -> int:
    target, cases, work = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    test = TARGETS[target](work)
    settings(max_examples=-(-cases // PER), deadline=None, derandomize=True, database=None, print_blob=True,
             suppress_health_check=list(HealthCheck))(test)()
    print(f"{target}: {COUNTS['accepted'] + COUNTS['rejected']} cases, {COUNTS['accepted']} accepted, "
          f"{COUNTS['rejected']} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
