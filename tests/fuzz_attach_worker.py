"""Worker of the attach fuzz (test_pool_fuzz_attach.py): one long-lived process runs many cases.

Each case writes a copy of a valid pool's shared object with a few bytes changed (header, table
descriptors, index entries, entry-group versions, ring head/tail) as a new object in /dev/shm,
attaches it as an app or a daemon, and uses it: lookups of every row, hints, batch ends, slow-tier
reads; for a daemon also fills, evictions, free slots, resident keys, ring drains. A case passes if
every call either returns right rows (equal to the slow tier's truth) or raises a PoolError. Prints
one JSON line of counts and failures.

    python tests/fuzz_attach_worker.py IMAGE SEED CASES
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pool_layout import HDR_BYTES, HEADER, HEADER_USED, RING, TABLE_BYTES  # noqa: E402

from recmgd.errors import PoolError  # noqa: E402
from recmgd.keys import make_keys  # noqa: E402
from recmgd.pool import Pool  # noqa: E402

SHM = Path("/dev/shm")
# the tables of the fuzzed pool (test_pool_fuzz_attach.make_image) and their rows' truth
TABLES = [(100, 8), (60, 4)]
INTERESTING = [0, 1, 2, 31, 32, 63, 64, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 40, 1 << 44, (1 << 64) - 1]


def truth(t: int) -> np.ndarray:
    rows, dim = TABLES[t]
    return np.arange(rows * dim, dtype=np.float32).reshape(rows, dim) + 1000.0 * (t + 1)


def _get(buf: bytes, field: str) -> int:
    off, fmt = HEADER[field]
    return struct.unpack_from(fmt, buf, off)[0]


class Image:
    """The valid pool's bytes and the regions a case changes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.n_slots = _get(raw, "n_slots")
        self.index_off = _get(raw, "index_off")
        self.entries = _get(raw, "index_entries")
        self.vers_off = _get(raw, "vers_off")
        rings_off, stride, n_rings = _get(raw, "rings_off"), _get(raw, "ring_stride"), _get(raw, "n_rings")
        ready = HEADER["ready"][0]
        # (start, length) byte ranges; the header without `ready` (0 there means "being created":
        # attach waits 2 s for the creator, which is behaviour, not a fault)
        self.regions = [(0, ready), (ready + 4, HEADER_USED - ready - 4),
                        (HDR_BYTES, len(TABLES) * TABLE_BYTES), (self.index_off, 4 * self.entries),
                        (self.vers_off, 4)]
        for i in range(n_rings):
            for f in ("head", "tail"):
                self.regions.append((rings_off + i * stride + RING[f][0], 8))
        self.weights = [4, 2, 3, 4, 1] + [1] * (2 * n_rings)
        self.index = np.frombuffer(raw, dtype=np.int32, count=self.entries, offset=self.index_off)

    def mutate(self, rng: random.Random) -> tuple[bytearray, list[str]]:
        buf = bytearray(self.raw)
        what = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            start, length = rng.choices(self.regions, weights=self.weights)[0]
            kind = rng.randrange(3)
            if kind == 0:
                pos = start + rng.randrange(length)
                bit = rng.randrange(8)
                buf[pos] ^= 1 << bit
                what.append(f"flip {pos}:{bit}")
            elif kind == 1:
                pos = start + rng.randrange(length)
                buf[pos] = rng.randrange(256)
                what.append(f"byte {pos}={buf[pos]}")
            else:
                size = 8 if length >= 8 and rng.random() < 0.5 else 4
                pos = start + rng.randrange(max(1, length - size + 1)) // size * size
                value = rng.choice(INTERESTING + [rng.getrandbits(size * 8)]) & ((1 << (size * 8)) - 1)
                struct.pack_into("<Q" if size == 8 else "<I", buf, pos, value)
                what.append(f"word {pos}={value:#x}")
        return buf, what

    def unsure_rows(self, buf: bytes) -> set[tuple[int, int]]:
        """Rows whose value a changed index may alias (an entry changed to another valid slot number
        names a slot holding another row: no check on the reader's side can tell, see ARCHITECTURE)."""
        new = np.frombuffer(buf, dtype=np.int32, count=self.entries, offset=self.index_off)
        changed = (new != self.index) & (new >= 0) & (new < self.n_slots)
        slots = set(new[changed].tolist())
        if not slots:
            return set()
        hit = np.isin(new, list(slots)) | np.isin(self.index, list(slots))
        out = set()
        first = 0
        for t, (rows, _) in enumerate(TABLES):
            for r in np.nonzero(hit[first:first + rows])[0].tolist():
                out.add((t, r))
            first += rows
        return out


def run_case(img: Image, rng: random.Random, case: int, stats: dict) -> None:
    buf, what = img.mutate(rng)
    unsure = img.unsure_rows(buf)
    stats["aliased_rows"] += len(unsure)
    name = f"fz_{os.getpid()}_{case}"
    fd = os.open(SHM / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, buf)
    finally:
        os.close(fd)
    role = "daemon" if case % 2 else "app"
    try:
        try:
            p = Pool.attach(name, role=role, threads=1)
        except PoolError:
            stats["refused"] += 1
            return
        stats["attached"] += 1
        try:
            ops(p, role, rng, unsure, stats)
        finally:
            p.close()
    except Exception as exc:  # anything but a PoolError is a failure
        stats["failures"].append(f"case {case} {role} {what}: {type(exc).__name__}: {exc}"
                                 f" {traceback.format_exc(limit=2)[-300:]}")
    finally:
        (SHM / name).unlink(missing_ok=True)


def _call(stats: dict, fn, *args):
    try:
        return fn(*args)
    except PoolError:
        stats["call_errors"] += 1
        return None


def _check_rows(p: Pool, unsure: set, stats: dict) -> None:
    for t, (rows, _) in enumerate(TABLES):
        ids = np.arange(rows)
        got = _call(stats, p.embedding_bag, t, ids, ids)
        if got is None:
            continue
        want = truth(t)
        bad = [r for r in range(rows) if (t, r) not in unsure and not np.array_equal(got[r], want[r])]
        stats["checked_rows"] += rows - len([1 for r in range(rows) if (t, r) in unsure])
        if bad:
            r = bad[0]
            raise AssertionError(f"table {t}: wrong rows {bad[:5]} (got {got[r][:3]}, want {want[r][:3]})")
        rr = _call(stats, p.read_rows, t, ids[:7])
        if rr is not None and not np.array_equal(rr, want[:7]):
            raise AssertionError(f"table {t}: read_rows differs from the truth")


def ops(p: Pool, role: str, rng: random.Random, unsure: set, stats: dict) -> None:
    _check_rows(p, unsure, stats)
    if role == "app":
        _call(stats, p.hint, 0, [1, 2, 3])
        _call(stats, p.end_batch)
        _call(stats, p.embedding_bags, [0, 1], [[5, 6], [7]], [[0, 1], [0]])
        return
    keys = np.concatenate([make_keys(t, rng.sample(range(rows), 12)) for t, (rows, _) in enumerate(TABLES)])
    _call(stats, p.fill_keys, keys)
    _call(stats, p.evict_keys, keys[::3])
    _call(stats, p.free_slots)
    _call(stats, p.resident_keys)
    for i in range(p.n_rings):
        _call(stats, p.drain_ring, i)
    _call(stats, p.rings)
    _call(stats, p.counters)
    _check_rows(p, unsure, stats)


def main() -> int:
    image, seed, cases = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    img = Image(image.read_bytes())
    rng = random.Random(seed)
    stats = {"cases": 0, "attached": 0, "refused": 0, "call_errors": 0, "checked_rows": 0, "aliased_rows": 0,
             "failures": []}
    for case in range(cases):
        run_case(img, rng, case, stats)
        stats["cases"] += 1
        if len(stats["failures"]) > 20:
            break
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
