#!/usr/bin/env python3
"""The TorchRec front's forward at serving batch sizes: TorchRec's own EmbeddingBagCollection (all DRAM)
against recmg's TieredEmbeddingBagCollection over a pool with every row in the fast tier, in one run.

The front's forward is one table-batched native call that writes the bags side by side into the
KeyedTensor's values; "per-table args" is the path it replaced (a Python argument block and an output
tensor per table, one native call, then torch.cat), kept here for the A/B. Small batches show the fixed
cost a forward pays in Python; large ones the kernel.

    .venv/bin/python tools/bench_front.py [--tables 26] [--rows 100000] [--dim 64] [--pooling 20]
                                          [--batches 1,16,64,512,2048] [--reps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402

from recmgd.torchrec_ebc import TieredEmbeddingBagCollection  # noqa: E402


def kjt(names: list[str], rows: int, batch: int, pooling: int, rng: np.random.Generator) -> KeyedJaggedTensor:
    n = len(names) * batch * pooling
    values = torch.from_numpy(rng.integers(0, rows, size=n).astype(np.int64))
    lengths = torch.full((len(names) * batch,), pooling, dtype=torch.int64)
    return KeyedJaggedTensor.from_lengths_sync(keys=names, values=values, lengths=lengths)


def per_table_forward(front: TieredEmbeddingBagCollection, features: KeyedJaggedTensor) -> torch.Tensor:
    """The replaced path: per-table arguments and outputs through Pool.embedding_bags, then torch.cat."""
    tables, ids, offs, wts = front._split(features)
    outs = front.pool.embedding_bags(tables, ids, offs, [m for _, _, m in front._bags], wts)
    return torch.cat(outs, dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--batches", default="1,16,64,512,2048")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch's and the pool's threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfgs = [EmbeddingBagConfig(num_embeddings=a.rows, embedding_dim=a.dim, name=f"t{i}",
                               feature_names=[f"f{i}"]) for i in range(a.tables)]
    names = [f"f{i}" for i in range(a.tables)]
    ref = EmbeddingBagCollection(tables=cfgs, device=torch.device("cpu"))
    name = f"bench-front-{uuid.uuid4().hex[:8]}"
    front = TieredEmbeddingBagCollection.create(name, cfgs, slots=a.tables * a.rows, threads=a.threads)
    front.batch_boundary = False
    try:
        front.load_state_dict(ref.state_dict())
        pool = front.pool
        for t in range(a.tables):
            pool.fill(t, np.arange(a.rows))
        rng = np.random.default_rng(0)
        print(f"{a.tables} tables x {a.rows:,} rows, dim {a.dim}, pooling {a.pooling}, every row in the fast "
              f"tier, {a.threads} thread(s); medians of {a.reps} interleaved forwards")
        print("| batch | torchrec EBC ms | recmg per-table args ms | recmg table-batched ms | "
              "torchrec / table-batched | per-table / table-batched |")
        print("|---|---|---|---|---|---|")
        for batch in (int(b) for b in a.batches.split(",")):
            feats = [kjt(names, a.rows, batch, a.pooling, rng) for _ in range(4)]
            fns = {"ref": lambda f: ref(f).values(), "old": lambda f: per_table_forward(front, f),
                   "new": lambda f: front(f).values()}
            got = {k: fn(feats[0]) for k, fn in fns.items()}
            assert torch.equal(got["old"], got["new"])
            torch.testing.assert_close(got["new"], got["ref"], rtol=1e-5, atol=1e-5)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(a.reps):
                for k, fn in fns.items():
                    f = feats[r % len(feats)]
                    t0 = time.perf_counter()
                    fn(f)
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"| {batch} | {med['ref']:.3f} | {med['old']:.3f} | {med['new']:.3f} | "
                  f"{med['ref'] / med['new']:.2f}x | {med['old'] / med['new']:.2f}x |")
    finally:
        front.pool.destroy()


if __name__ == "__main__":
    main()
