"""Pool benchmarks, printed as ratios measured in one run (nothing is written but a temporary file).

1. All-hit lookup throughput (26 tables, dim 64, pooling 20, batch 2048, ring logging on) against
   torch.nn.functional.embedding_bag on in-DRAM tensors of the same shape and values.
2. SSD miss path: random row reads per second through the pool (slots=0, every lookup a miss, the
   distinct rows of a call in one io_uring batch) against fio random reads (O_DIRECT, io_uring) of
   the same file with the same block size and queue depth.
3. Pool metadata (header, table descriptors, index, slot-group versions, rings) over table bytes
   at dim 64 float32.

    .venv/bin/python tools/bench_pool.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from recmgd._native import ffi, lib

from recmgd.keys import make_keys
from recmgd.pool import Pool


def _name() -> str:
    return f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def bench_all_hit(tables: int, rows: int, dim: int, pooling: int, batch: int, reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    n = batch * pooling
    pool = Pool.create(
        _name(), tables=[(rows, dim)] * tables, slots=tables * rows, ring_records=2 * tables * n
    )
    try:
        weights = [
            torch.from_numpy(rng.standard_normal((rows, dim), dtype=np.float32)) for _ in range(tables)
        ]
        for t in range(tables):
            pool.write_rows(t, np.arange(rows), weights[t].numpy())
        pool.fill_keys(np.concatenate([make_keys(t, np.arange(rows)) for t in range(tables)]))
        batches = [[torch.from_numpy(rng.integers(0, rows, n)) for _ in range(tables)] for _ in range(4)]
        offsets = torch.arange(0, n, pooling)
        ring = pool.ring_index

        threads = torch.get_num_threads()

        def run_torch(b: list[torch.Tensor]) -> list[torch.Tensor]:
            return [F.embedding_bag(b[t], weights[t], offsets, mode="sum") for t in range(tables)]

        def run_torch1(b: list[torch.Tensor]) -> list[torch.Tensor]:
            torch.set_num_threads(1)
            try:
                return run_torch(b)
            finally:
                torch.set_num_threads(threads)

        def run_pool(b: list[torch.Tensor]) -> list[torch.Tensor]:
            out = [pool.embedding_bag(t, b[t], offsets) for t in range(tables)]
            pool.end_batch()
            return out

        def run_multi(b: list[torch.Tensor]) -> list[torch.Tensor]:
            out = pool.embedding_bags(range(tables), b, [offsets] * tables)
            pool.end_batch()
            return out

        def run_pool1(b: list[torch.Tensor]) -> list[torch.Tensor]:
            pool.set_threads(1)
            try:
                return run_pool(b)
            finally:
                pool.set_threads(threads)

        for a, c in zip(run_torch(batches[0]), run_pool(batches[0]), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
        pool.drain_ring(ring)
        fns = {
            "torch": run_torch,
            "torch1": run_torch1,
            "pool": run_pool,
            "pool_multi": run_multi,
            "pool1": run_pool1,
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):  # interleaved, so that load from other processes hits all alike
            for key, fn in fns.items():
                for b in batches:
                    t0 = time.perf_counter()
                    fn(b)
                    times[key].append(time.perf_counter() - t0)
                    waiting = pool.rings()[ring].waiting
                    if not key.startswith("torch"):  # every record is in the ring: logging on, no drops
                        assert waiting == tables * n + 1, waiting
                    pool.drain_ring(ring)
        assert pool.rings()[ring].drops == 0
        med = {k: statistics.median(v) for k, v in times.items()}
        return {
            "threads": threads,
            "torch_ms": med["torch"] * 1e3,
            "torch1_ms": med["torch1"] * 1e3,
            "pool_ms": med["pool"] * 1e3,
            "pool_multi_ms": med["pool_multi"] * 1e3,
            "pool1_ms": med["pool1"] * 1e3,
            "ratio": med["torch"] / med["pool"],
            "ratio_multi": med["torch"] / med["pool_multi"],
            "ratio1": med["torch1"] / med["pool1"],
        }
    finally:
        pool.destroy()


def _fio(path: str, bs: int, depth: int, seconds: float, engine: str) -> float:
    cmd = [
        "fio", "--name=randread", f"--filename={path}", "--rw=randread", f"--bs={bs}", "--direct=1",
        f"--ioengine={engine}", f"--iodepth={depth}", f"--runtime={seconds}", "--time_based", "--numjobs=1",
        "--norandommap", "--output-format=json",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(r.stdout)["jobs"][0]["read"]["iops"])


def bench_ssd(
    directory: str, rows: int, dim: int, depth: int, per_call: int, seconds: float
) -> dict[str, float]:
    os.environ["RECMG_IO_DEPTH"] = str(depth)
    tmp = tempfile.mkdtemp(prefix="recmg_bench_", dir=directory)
    path = os.path.join(tmp, "emb.bin")
    pool = Pool.create(_name(), tables=[(rows, dim)], slots=0, slow=f"ssd:{path}", ring_records=1 << 16)
    try:
        rng = np.random.default_rng(1)
        chunk = 1 << 16
        for r0 in range(0, rows, chunk):
            r = np.arange(r0, min(rows, r0 + chunk))
            pool.write_rows(0, r, rng.standard_normal((len(r), dim), dtype=np.float32))
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        st = pool.stats()
        if not st["direct_io"]:
            print("note: the file system refused O_DIRECT; the pool reads buffered", file=sys.stderr)
        align = st["io_align"] or 4096
        row_bytes = dim * 4
        bs = max(align, (row_bytes + align - 1) // align * align)

        def pool_rate(p: Pool) -> float:
            offsets = np.arange(per_call, dtype=np.int64)
            done = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                ids = rng.choice(rows, size=per_call, replace=False).astype(np.int64)
                p.embedding_bag(0, ids, offsets)
                p.drain_ring(p.ring_index)
                done += per_call
            return done / (time.perf_counter() - t0)

        rate = pool_rate(pool)
        assert pool.stats()["io_backend"] == "io_uring"
        fio_rate = _fio(path, bs, depth, seconds, "io_uring")
        rate2 = pool_rate(pool)  # again, after fio: the device's state drifts
        fio_rate2 = _fio(path, bs, depth, seconds, "io_uring")
        with Pool.attach(pool.name, io_uring=False) as fallback:
            pre_rate = pool_rate(fallback)
            assert fallback.stats()["io_backend"] == "preadv"
        fio_sync = _fio(path, bs, 1, seconds, "psync")
        return {
            "bs": bs,
            "depth": depth,
            "pool_reads_s": (rate + rate2) / 2,
            "fio_iops": (fio_rate + fio_rate2) / 2,
            "ratio": (rate + rate2) / (fio_rate + fio_rate2),
            "preadv_reads_s": pre_rate,
            "fio_psync_iops": fio_sync,
            "ratio_preadv": pre_rate / fio_sync,
        }
    finally:
        pool.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
        os.environ.pop("RECMG_IO_DEPTH", None)


def metadata_ratio(tables: int, rows: int, dim: int, slots: int, rings: int, ring_records: int) -> float:
    specs = ffi.new("recmg_table_spec[]", tables)
    for i in range(tables):
        specs[i].rows = rows
        specs[i].dim = dim
    o = ffi.new("recmg_create_opts *")
    o.n_tables = tables
    o.tables = specs
    o.n_slots = slots
    o.n_rings = rings
    o.ring_records = ring_records
    meta, table_bytes = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    if lib.recmg_layout_size(o, meta, table_bytes, ffi.NULL) != 0:
        raise SystemExit("bad layout")
    return meta[0] / table_bytes[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (a smoke test)")
    ap.add_argument("--rows", type=int, default=100_000, help="rows per table in the all-hit benchmark")
    ap.add_argument("--ssd-dir", default=tempfile.gettempdir(), help="where the SSD benchmark's file goes")
    ap.add_argument("--ssd-rows", type=int, default=2_000_000, help="rows of the SSD file (dim 64 float32)")
    ap.add_argument("--depth", type=int, default=64, help="I/O queue depth (pool and fio)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per SSD measurement")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.ssd_rows, args.seconds = 20_000, 200_000, 1.0
    rows_out: list[tuple[str, str, str, str]] = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs")

    for rows, note in ((args.rows, "[target >= 0.7]"), (2000, "[information: cache-resident]")):
        hit = bench_all_hit(26, rows, 64, 20, 2048, reps=2 if args.quick else 5)
        rows_out.append((
            f"all-hit, 26 tables x {rows:,} rows, 2048x20 dim 64, ring on, {hit['threads']} threads",
            f"pool {hit['pool_ms']:.1f} ms/batch (embedding_bag x 26)",
            f"torch {hit['torch_ms']:.1f} ms/batch",
            f"{hit['ratio']:.2f}x  {note}",
        ))  # fmt: skip
        rows_out.append((
            "  the same, one multi-table call",
            f"pool {hit['pool_multi_ms']:.1f} ms/batch (embedding_bags)",
            f"torch {hit['torch_ms']:.1f} ms/batch",
            f"{hit['ratio_multi']:.2f}x",
        ))  # fmt: skip
        rows_out.append((
            "  the same, 1 thread each",
            f"pool {hit['pool1_ms']:.1f} ms/batch (embedding_bag x 26)",
            f"torch {hit['torch1_ms']:.1f} ms/batch",
            f"{hit['ratio1']:.2f}x",
        ))  # fmt: skip

    if shutil.which("fio"):
        ssd = bench_ssd(args.ssd_dir, args.ssd_rows, 64, args.depth, 4096, args.seconds)
        rows_out.append((
            f"SSD miss reads, {ssd['bs']} B O_DIRECT, QD {ssd['depth']}",
            f"pool {ssd['pool_reads_s']:,.0f} rows/s (io_uring)",
            f"fio {ssd['fio_iops']:,.0f} IOPS (io_uring)",
            f"{ssd['ratio']:.2f}x  [target >= 0.8]",
        ))  # fmt: skip
        rows_out.append((
            "SSD miss reads, preadv fallback",
            f"pool {ssd['preadv_reads_s']:,.0f} rows/s (preadv)",
            f"fio {ssd['fio_psync_iops']:,.0f} IOPS (psync QD 1)",
            f"{ssd['ratio_preadv']:.2f}x  [information]",
        ))  # fmt: skip
    else:
        rows_out.append(("SSD miss reads", "skipped", "fio not installed", "-"))

    for frac in (0.05, 0.2, 1.0):
        r = metadata_ratio(26, 1_000_000, 64, int(26_000_000 * frac), 16, 65536)
        rows_out.append((
            f"metadata / table bytes, 26x1M rows dim 64 f32, slots {frac:.0%} of rows, 16 rings x 64K",
            f"{r:.3%}", "", "[target <= 2%]",
        ))  # fmt: skip

    w = [max(len(r[i]) for r in rows_out) for i in range(4)]
    head = ("benchmark", "pool", "baseline", "ratio")
    w = [max(w[i], len(head[i])) for i in range(4)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("  ".join("-" * x for x in w))
    for r in rows_out:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
