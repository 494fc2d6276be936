"""A/B of the lookup path between two builds of the native pool, in one process.

Builds ``recmgd._native`` from another git revision (``--base``, default the last commit before the
trust-boundary checks) into build/ab/REV, loads it beside this checkout's build, gives each build its
own pool with the same rows (every row in the fast tier, a dram slow tier; with ``--miss F`` the same
fraction F of each table's rows evicted in both, so those lookups read the slow tier), and times the
two builds' lookups interleaved (A B, B A, ...) over the same ids, so the machine's noise falls on
both alike. ``--multi`` makes one multi-table call (``recmg_embedding_bags``) instead of one call a
table, ``--packed`` the same call writing one ``[batch, tables x dim]`` output, table t's bags in its
columns (the TorchRec front's layout, ``Pool.embedding_bags_packed``); ``--threads N`` sets both
pools' lookup threads (with N > 1 each timed batch follows an untimed one of the same build: the other
build's idle workers poll for 2 ms after its last batch and would take a core from the first).
Prints the median time of each and new/base: what a change to the hit path (bounds checks, a new
kernel) costs or saves.

The pools are made twice, base's first and then new's first, half the repetitions each, and new/base
is the geometric mean of the two rounds' ratios. On one VM the pool made second read 9-13% faster than
the same build's pool made before it (HEAD against HEAD, all-hit, 26 x 100k rows: new/base 0.875 and
0.910 with base's pool made first, 1.128 and 1.148 with new's; both rounds together 1.022), more than
most changes measured here; the two orders cancel that. The rounds' ratios are printed too: far apart,
the placement of the pools' memory outweighs the change.

Memory: each pool holds every row twice (fast tier and slow tier), each creating handle of a build
before 68d500a keeps the buffer of its one fill of every row (later builds free it after the fill, but
the base may be older, and the fill's buffer exists while it runs), and the rows are generated once:
7 copies of the rows, and a
run of 13 x 1M rows at dim 64 (23 GB of rows and buffers) was OOM-killed on a 24 GB VM. The tool
counts 8 copies and 1 GiB (8 x 1M: 17 GB), stops with one line before it starts when the machine has
less available, and removes the pools that runs killed before their end (out of memory, Ctrl-C) left
in /dev/shm.

``--churn`` measures hits instead of time: for each build in turn, table 0's even rows stay resident
while a forked writer (daemon role) evicts and fills its odd rows back to back, and the app reads
only even rows (``--reps`` calls of batch x pooling ids); it prints the share of those reads that
were fast-tier hits. A build whose seqlock check fails on writes to other rows sends them to the
slow tier (right rows, fewer hits).

    .venv/bin/python tools/bench_ab_lookup.py [--base REV] [--rows 50000] [--tables 26] [--reps 40]
                                              [--miss 0.1] [--multi | --packed] [--threads 2]
                                              [--mode sum|mean|max]
    .venv/bin/python tools/bench_ab_lookup.py --churn [--base REV] --tables 1 --rows 4096 --dim 16 \
                                              --batch 512 --pooling 8 --reps 300
    .venv/bin/python tools/bench_ab_lookup.py --write-rows [--base REV] [--miss 0.5] [--batch 2048]

``--write-rows`` times write_rows instead (``--batch`` random rows of each table, written with their own
values, through the creating handle), the two builds interleaved as above: what a change to the write
path costs.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from types import ModuleType

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lookup_bench_common import IdDraw, miss_fraction, zipf_exponent  # noqa: E402

from recmgd.keys import ROW_BITS  # noqa: E402

BASE_DEFAULT = "c4d4e88"  # main before the trust-boundary work (layout 3, unchecked slot numbers)


def build_base(rev: str) -> Path:
    """The revision's native sources built by its own builder; returns the extension's path."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = ROOT / "build" / "ab" / sha
    built = list((dest / "recmgd").glob("_native*.so")) if dest.exists() else []
    if built:
        return built[0]
    dest.mkdir(parents=True, exist_ok=True)
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "native", "recmgd/_build_native.py"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    subprocess.run([sys.executable, "recmgd/_build_native.py"], cwd=dest, check=True)
    return next((dest / "recmgd").glob("_native*.so"))


def load(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader("recmgd._native", str(path))
    spec = importlib.util.spec_from_file_location("recmgd._native", str(path), loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Side:
    """One build: a pool it created (daemon role, every row filled) and an app handle on it."""

    def __init__(self, mod: ModuleType, tag: str, tables: int, rows: int, dim: int, weights: np.ndarray,
                 gone: np.ndarray, threads: int):
        """gone: the keys to evict after every row is filled (the mixed workload's misses)."""
        self.mod, self.ffi, self.lib = mod, mod.ffi, mod.lib
        self.dim = dim
        self.name = f"recmg-ab-{tag}-{os.getpid()}".encode()
        ffi, lib = self.ffi, self.lib
        specs = ffi.new("recmg_table_spec[]", tables)
        for t in range(tables):
            specs[t].rows, specs[t].dim = rows, dim
        o = ffi.new("recmg_create_opts *")
        o.n_tables, o.tables, o.n_slots = tables, specs, tables * rows
        o.dtype = lib.RECMG_F16 if weights.dtype == np.float16 else lib.RECMG_F32
        o.ring_records, o.n_rings, o.role = 1 << 22, 4, 1
        out, err = ffi.new("recmg_pool **"), ffi.new("char[256]")
        if lib.recmg_create(self.name, o, out, err, 256) != 0:
            raise SystemExit(f"{tag}: create: {ffi.string(err).decode()}")
        self.owner = out[0]
        ids = np.arange(rows, dtype=np.int64)
        for t in range(tables):
            rc = lib.recmg_write_rows(self.owner, t, ffi.from_buffer("int64_t[]", ids), rows,
                                      ffi.from_buffer(weights[t]))
            if rc != 0:
                raise SystemExit(f"{tag}: write_rows: {ffi.string(lib.recmg_errmsg(self.owner)).decode()}")
        keys = np.concatenate([(np.int64(t) << ROW_BITS) | ids for t in range(tables)])
        if lib.recmg_fill_keys(self.owner, ffi.from_buffer("int64_t[]", keys), len(keys)) != len(keys):
            raise SystemExit(f"{tag}: fill: {ffi.string(lib.recmg_errmsg(self.owner)).decode()}")
        if len(gone):
            out_keys = gone
            evicted = lib.recmg_evict_keys(self.owner, ffi.from_buffer("int64_t[]", out_keys), len(out_keys))
            if evicted != len(out_keys):
                raise SystemExit(f"{tag}: evict: {ffi.string(lib.recmg_errmsg(self.owner)).decode()}")
        out = ffi.new("recmg_pool **")
        if lib.recmg_attach(self.name, 0, 0, out, err, 256) != 0:
            raise SystemExit(f"{tag}: attach: {ffi.string(err).decode()}")
        self.app = out[0]
        if lib.recmg_set_threads(self.app, threads) != 0:
            raise SystemExit(f"{tag}: threads: {ffi.string(lib.recmg_errmsg(self.app)).decode()}")
        info = ffi.new("recmg_pool_info *")
        lib.recmg_info(self.app, info)
        self.ring = info.ring_index

    def run(self, ids: list[np.ndarray], offsets: np.ndarray, out: np.ndarray, drain: np.ndarray,
            call: str, mode: int = 0) -> float:
        """One batch: every table's bags (call "table": one call a table into out[t]; "multi": one
        multi-table call into out[t]; "packed": one multi-table call into out[b, t * dim:], out being
        [batch, tables * dim])."""
        ffi, lib = self.ffi, self.lib
        n, batch = len(ids[0]), len(offsets) - 1
        t0 = time.perf_counter()
        if call != "table":
            args = ffi.new("recmg_bag_args[]", len(ids))
            keep = []
            whole = ffi.from_buffer("float[]", out)
            for t, tid in enumerate(ids):
                dest = whole + t * self.dim if call == "packed" else ffi.from_buffer("float[]", out[t])
                keep.append((ffi.from_buffer("int64_t[]", tid), ffi.from_buffer("int64_t[]", offsets), dest))
                a = args[t]
                a.table, a.mode, a.n_ids, a.n_bags = t, mode, n, batch
                a.ids, a.offsets, a.out = keep[-1]
                a.out_stride = len(ids) * self.dim if call == "packed" else 0
            rc = lib.recmg_embedding_bags(self.app, len(ids), args)
            if rc != 0:
                raise SystemExit(f"lookup: {ffi.string(lib.recmg_errmsg(self.app)).decode()}")
        else:
            for t, tid in enumerate(ids):
                rc = lib.recmg_embedding_bag(self.app, t, ffi.from_buffer("int64_t[]", tid), n,
                                             ffi.from_buffer("int64_t[]", offsets), batch, mode, ffi.NULL,
                                             ffi.from_buffer("float[]", out[t]))
                if rc != 0:
                    raise SystemExit(f"lookup: {ffi.string(lib.recmg_errmsg(self.app)).decode()}")
        lib.recmg_end_batch(self.app)
        dt = time.perf_counter() - t0
        lib.recmg_drain_ring(self.owner, self.ring, ffi.from_buffer("uint64_t[]", drain), len(drain))
        return dt

    def write(self, rows: list[np.ndarray], values: list[np.ndarray]) -> float:
        """One batch of write_rows: rows[t] of table t set to values[t] (their own values: the pool's rows
        do not change), through the creating handle; the time."""
        ffi, lib = self.ffi, self.lib
        t0 = time.perf_counter()
        for t, (r, v) in enumerate(zip(rows, values, strict=True)):
            rb, vb = ffi.from_buffer("int64_t[]", r), ffi.from_buffer(v)
            if lib.recmg_write_rows(self.owner, t, rb, len(r), vb) != 0:
                raise SystemExit(f"write_rows: {ffi.string(lib.recmg_errmsg(self.owner)).decode()}")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.lib.recmg_close(self.app)
        self.lib.recmg_close(self.owner)
        self.lib.recmg_destroy(self.name, self.ffi.NULL, 0)

    def churn(self, rows: int) -> int:
        """Forks a writer that evicts and fills table 0's odd rows until it is killed; its pid."""
        pid = os.fork()
        if pid:
            return pid
        try:  # the child: its own daemon-role handle (the creator's takes no daemon lock)
            ffi, lib = self.ffi, self.lib
            out, err = ffi.new("recmg_pool **"), ffi.new("char[256]")
            if lib.recmg_attach(self.name, 1, 0, out, err, 256) != 0:
                os._exit(2)
            odd = np.arange(1, rows, 2, dtype=np.int64)  # table 0: the keys are the rows
            buf = ffi.from_buffer("int64_t[]", odd)
            while True:
                lib.recmg_evict_keys(out[0], buf, len(odd))
                lib.recmg_fill_keys(out[0], buf, len(odd))
        finally:
            os._exit(1)

    def hits(self) -> tuple[int, int]:
        """(hits, lookups) of this process's ring so far."""
        c = self.ffi.new("recmg_counters *")
        self.lib.recmg_ring_counters(self.app, self.ring, c)
        return int(c.hits), int(c.lookups)


def churn_hits(side: Side, rows: int, calls: int, n: int, pooling: int, drain: np.ndarray) -> float:
    """Share of reads of table 0's even rows that were hits while side.churn()'s writer runs."""
    rng = np.random.default_rng(7)
    offsets = np.arange(0, n + 1, pooling, dtype=np.int64)
    out = np.empty((1, len(offsets) - 1, side.dim), dtype=np.float32)
    pid = side.churn(rows)
    try:
        time.sleep(0.2)
        h0, l0 = side.hits()
        for _ in range(calls):  # table 0's even rows only
            side.run([rng.integers(0, rows // 2, n).astype(np.int64) * 2], offsets, out, drain, "table")
        h1, l1 = side.hits()
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            raise SystemExit("the writer stopped before the reads were done")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return (h1 - h0) / (l1 - l0)


def drop_stale_pools(shm: Path = Path("/dev/shm")) -> list[str]:
    """Removes this tool's pools (recmg-ab-TAG-PID) whose process is gone; their names."""
    gone = []
    for f in shm.glob("recmg-ab-*-*"):
        pid = f.name.rsplit("-", 1)[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            f.unlink(missing_ok=True)
            gone.append(f.name)
    return gone


def memory_needed(tables: int, rows: int, dim: int) -> int:
    """Bytes a run takes: two pools of every row twice (fast and slow tier, float32 at most), the two
    creators' fill buffers and the generated rows (7 copies; 8 counted, which a run of 13 x 1M rows
    OOM-killed at 7 showed is needed), and 1 GiB for the interpreter, torch and the ids."""
    return 8 * tables * rows * dim * 4 + 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=BASE_DEFAULT, help="git revision of the base build")
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--rows", type=int, default=50_000, help="rows a table")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--miss", type=miss_fraction, default=0.0,
                    help="fraction of each table's rows evicted (0: all hits; the rows bench_pool evicts)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--multi", action="store_true", help="one multi-table call instead of one call a table")
    how.add_argument("--packed", action="store_true",
                     help="one multi-table call into one [batch, tables x dim] output (the TorchRec front's)")
    ap.add_argument("--threads", type=int, default=1, help="lookup threads of both pools")
    ap.add_argument("--mode", choices=("sum", "mean", "max"), default="sum", help="the bags' pooling mode")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                    help="the pools' row type (the rows are written in it)")
    ap.add_argument("--zipf", type=zipf_exponent, default=0.0,
                    help="ids Zipf-distributed with this exponent over each table's rows (0: uniform)")
    ap.add_argument("--churn", action="store_true", help="hits of resident rows while a writer changes the "
                    "other rows of their groups, instead of time (table 0 only)")  # fmt: skip
    ap.add_argument("--write-rows", action="store_true",
                    help="time write_rows of --batch random rows of each table (to their own values) instead "
                         "of lookups")  # fmt: skip
    a = ap.parse_args()
    for name in drop_stale_pools():
        print(f"removed /dev/shm/{name}, left by a run that did not finish")
    need, have = memory_needed(a.tables, a.rows, a.dim), psutil.virtual_memory().available
    if need > have:
        raise SystemExit(f"{a.tables} tables x {a.rows} rows at dim {a.dim} need about {need / 2**30:.1f} "
                         f"GiB, {have / 2**30:.1f} GiB available: use fewer --tables or --rows")
    import recmgd._native as new_mod

    base_mod = load(build_base(a.base))
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((a.tables, a.rows, a.dim), dtype=np.float32).astype(a.dtype, copy=False)
    n = a.batch * a.pooling
    draw = IdDraw(a.tables, a.rows, a.zipf)
    gone = draw.evicted_keys(a.tables, a.miss) if a.miss else np.zeros(0, np.int64)
    ids = [draw.ids(t, n) for t in range(a.tables)]
    offsets = np.arange(0, n + 1, a.pooling, dtype=np.int64)
    call = "packed" if a.packed else "multi" if a.multi else "table"
    mode = getattr(new_mod.lib, f"RECMG_{a.mode.upper()}")
    shape = (a.batch, a.tables * a.dim) if a.packed else (a.tables, a.batch, a.dim)
    outs = {k: np.empty(shape, dtype=np.float32) for k in ("base", "new")}
    drain = np.empty(a.tables * n + 16, dtype=np.uint64)
    mods = {"base": base_mod, "new": new_mod}
    if a.churn:
        share = {}
        for tag in ("base", "new"):
            side = Side(mods[tag], tag, a.tables, a.rows, a.dim, weights, gone, 1)
            try:
                share[tag] = churn_hits(side, a.rows, a.reps, n, a.pooling, drain)
            finally:
                side.close()
        print(f"table 0's even rows read while a writer evicts and fills its odd rows ({a.rows} rows, dim "
              f"{a.dim}, {a.reps} calls of {n} ids): hits base {a.base} {share['base']:.4f}, "
              f"new (this checkout) {share['new']:.4f}")
        return 0
    wrows, wvals = [], []  # (--write-rows: the rows each batch writes, and their own values)
    if a.write_rows:
        n_write = min(a.batch, a.rows)
        wrows = [rng.choice(a.rows, size=n_write, replace=False).astype(np.int64) for _ in weights]
        wvals = [np.ascontiguousarray(weights[t][r]) for t, r in enumerate(wrows)]
    rounds: list[tuple[str, float, float]] = []
    for first in ("base", "new"):
        sides: dict[str, Side] = {}
        times: dict[str, list[float]] = {"base": [], "new": []}
        try:
            for tag in (first, "new" if first == "base" else "base"):
                sides[tag] = Side(mods[tag], tag, a.tables, a.rows, a.dim, weights, gone, a.threads)
            for i in range((a.reps + 1) // 2):
                for tag in ("base", "new") if i % 2 == 0 else ("new", "base"):
                    if a.write_rows:
                        times[tag].append(sides[tag].write(wrows, wvals))
                        continue
                    if a.threads > 1:  # untimed: the other build's workers poll on for 2 ms after its batch
                        sides[tag].run(ids, offsets, outs[tag], drain, call, mode)
                    times[tag].append(sides[tag].run(ids, offsets, outs[tag], drain, call, mode))
            if not a.write_rows and not np.array_equal(outs["base"], outs["new"]):
                raise SystemExit("the two builds returned different rows")
        finally:
            for s in sides.values():
                s.close()
        rounds.append((first, statistics.median(times["base"]), statistics.median(times["new"])))
    what = "all-hit"
    if a.miss:
        what = (f"the rows that take {1 - a.miss:.0%} of the lookups resident" if a.zipf
                else f"{1 - a.miss:.0%} of rows resident")
    what += f", Zipf {a.zipf} ids" if a.zipf else ", uniform ids"
    said = {"table": "a call a table", "multi": "one multi-table call",
            "packed": "one multi-table call into one packed output"}[call]
    if a.write_rows:
        print(f"write_rows of {len(wrows[0])} random rows of each of {a.tables} tables x {a.rows} rows "
              f"({what}), dim {a.dim} {a.dtype}, {a.reps} interleaved batches each")
    else:
        print(f"{what}, {a.tables} tables x {a.rows} rows, dim {a.dim} {a.dtype}, batch {a.batch} x "
              f"{a.pooling}, {said}, {a.mode}, {a.threads} thread(s), {a.reps} interleaved batches each")
    for first, mb, mn in rounds:
        print(f"  {first}'s pool made first: base {mb * 1e3:.2f} ms, new {mn * 1e3:.2f} ms, "
              f"new/base {mn / mb:.3f}")
    ratio = math.sqrt(math.prod(mn / mb for _, mb, mn in rounds))
    mb = math.sqrt(math.prod(mb for _, mb, _ in rounds))
    mn = math.sqrt(math.prod(mn for _, _, mn in rounds))
    print(f"base {a.base}: {mb * 1e3:.2f} ms   new (this checkout): {mn * 1e3:.2f} ms   new/base {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
