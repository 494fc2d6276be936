"""Bad input gives a clear one-line error, never a crash, and the pool stays usable afterwards."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from recmgd.errors import PoolError, PoolVersionError
from recmgd.pool import Pool, RowIndexError

SHM = Path("/dev/shm")


def _name() -> str:
    return f"rt_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pool(tmp_path) -> Iterator[Pool]:
    p = Pool.create(_name(), tables=[(100, 8), (50, 4)], slots=20, slow=f"ssd:{tmp_path / 'e.bin'}")
    p.write_rows(0, np.arange(100), np.arange(800, dtype=np.float32).reshape(100, 8))
    try:
        yield p
    finally:
        p.destroy()


def _usable(p: Pool) -> None:
    out = p.embedding_bag(0, [1, 2], [0, 1])
    assert out[0, 0] == 8.0 and out[1, 0] == 16.0


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_wrong_version(pool: Pool) -> None:
    path = SHM / pool.name
    raw = bytearray(path.read_bytes()[:16])
    (version,) = struct.unpack_from("<I", raw, 8)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", version + 6))
    with pytest.raises(PoolVersionError) as e:
        Pool.attach(pool.name)
    assert f"layout version {version + 6}" in _one_line(e)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", version))
    Pool.attach(pool.name).close()
    _usable(pool)


def test_wrong_name(pool: Pool) -> None:
    with pytest.raises(PoolError, match="no pool named") as e:
        Pool.attach(_name())
    _one_line(e)
    for bad in ("", "a/b", "x" * 300, ".hidden"):
        with pytest.raises(PoolError, match="name"):
            Pool.attach(bad)
    with pytest.raises(PoolError, match="already exists"):
        Pool.create(pool.name, tables=[(1, 1)], slots=1)
    _usable(pool)


def test_truncated_and_non_pool_objects(pool: Pool) -> None:
    # a truncated pool
    trunc = _name()
    src = SHM / pool.name
    data = src.read_bytes()
    (SHM / trunc).write_bytes(data[: len(data) // 2])
    try:
        with pytest.raises(PoolVersionError, match="truncated") as e:
            Pool.attach(trunc)
        _one_line(e)
    finally:
        (SHM / trunc).unlink()
    # not a pool: random bytes, and a tiny file
    other = _name()
    (SHM / other).write_bytes(os.urandom(20000))
    try:
        with pytest.raises(PoolVersionError, match="not a recmg pool"):
            Pool.attach(other)
        (SHM / other).write_bytes(b"hello")
        with pytest.raises(PoolVersionError, match="too small"):
            Pool.attach(other)
    finally:
        (SHM / other).unlink()
    # a pool whose layout fields were corrupted
    bad = _name()
    raw = bytearray(data)
    struct.pack_into("<Q", raw, 48, 12345)  # n_slots
    (SHM / bad).write_bytes(bytes(raw))
    try:
        with pytest.raises(PoolVersionError, match="corrupt"):
            Pool.attach(bad)
    finally:
        (SHM / bad).unlink()
    _usable(pool)


def test_out_of_range_ids(pool: Pool) -> None:
    for bad in (100, -1, 1 << 41):
        with pytest.raises(IndexError, match=f"row id {bad} out of range") as e:
            pool.embedding_bag(0, [1, bad, 2], [0, 2])
        assert isinstance(e.value, RowIndexError) and isinstance(e.value, PoolError)
    with pytest.raises(IndexError, match="table 7"):
        pool.embedding_bag(7, [1], [0])
    with pytest.raises(IndexError):
        pool.fill(0, [100])
    with pytest.raises(IndexError):
        pool.hint(1, [50])
    with pytest.raises(IndexError):
        pool.read_rows(0, [1000])
    _usable(pool)


def test_bad_arguments(pool: Pool) -> None:
    with pytest.raises(PoolError, match="shape"):
        pool.write_rows(0, [1, 2], np.zeros((2, 7), np.float32))
    with pytest.raises(PoolError, match="shape"):
        pool.write_rows(1, [1], np.zeros((2, 4), np.float32))
    with pytest.raises(PoolError, match="mode"):
        pool.embedding_bag(0, [1], [0], mode="median")
    with pytest.raises(PoolError, match="only supported with mode 'sum'"):
        pool.embedding_bag(0, [1], [0], mode="mean", weights=[1.0])
    with pytest.raises(PoolError, match="offsets"):
        pool.embedding_bag(0, [1, 2, 3], [0, 2, 1])
    with pytest.raises(PoolError, match="offsets"):
        pool.embedding_bag(0, [1, 2, 3], [1])
    with pytest.raises(ValueError):
        pool.embedding_bag(0, [1, 2], [0], weights=[1.0])
    with pytest.raises(PoolError, match="free slots"):
        pool.fill(0, np.arange(30))
    with pytest.raises(PoolError, match="slow tier"):
        Pool.create(_name(), tables=[(1, 1)], slots=1, slow="tape")
    with pytest.raises(PoolError, match="NUMA node"):
        Pool.create(_name(), tables=[(1, 1)], slots=1, slow="numa:77")
    with pytest.raises(PoolError, match="dim"):
        Pool.create(_name(), tables=[(10, 0)], slots=1)
    with pytest.raises(PoolError, match="dtype"):
        Pool.create(_name(), tables=[(10, 1)], slots=1, dtype="int8")
    _usable(pool)
    pool.close()
    with pytest.raises(PoolError, match="closed"):
        pool.embedding_bag(0, [1], [0])


def test_unreadable_ssd_file(pool: Pool, tmp_path) -> None:
    path = tmp_path / "e.bin"
    size = path.stat().st_size
    os.truncate(path, 0)
    with pytest.raises(PoolError, match="slow-tier file .* failed") as e:
        pool.embedding_bag(0, [1, 2], [0, 1])
    _one_line(e)
    # hits do not need the file
    os.truncate(path, size)
    pool.write_rows(0, [3], np.full((1, 8), 5.0, np.float32))
    pool.fill(0, [3])
    os.truncate(path, 0)
    assert pool.embedding_bag(0, [3], [0])[0, 0] == 5.0
    with pytest.raises(PoolError, match="cannot open slow-tier file|bytes; the pool needs"):
        Pool.attach(pool.name)
    path.unlink()
    with pytest.raises(PoolError, match="cannot open slow-tier file"):
        Pool.attach(pool.name)
    with pytest.raises(PoolError, match="cannot create slow-tier file"):
        Pool.create(_name(), tables=[(1, 1)], slots=1, slow=f"ssd:{tmp_path}/no/such/dir/f.bin")
    # the file comes back: everything works again
    with open(path, "wb") as f:
        f.truncate(size)
    pool.write_rows(0, np.arange(100), np.arange(800, dtype=np.float32).reshape(100, 8))
    _usable(pool)
    Pool.attach(pool.name).close()


def test_mode_of_the_object(tmp_path) -> None:
    p = Pool.create(_name(), tables=[(10, 4)], slots=2)
    q = Pool.create(_name(), tables=[(10, 4)], slots=2, mode=0o640, slow=f"ssd:{tmp_path / 'f.bin'}")
    try:
        assert stat.S_IMODE((SHM / p.name).stat().st_mode) == 0o600
        assert stat.S_IMODE((SHM / q.name).stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o640
    finally:
        p.destroy()
        q.destroy()


def test_torch_inputs_on_error_paths(pool: Pool) -> None:
    with pytest.raises(ValueError):
        pool.embedding_bag(0, torch.zeros((2, 2, 2), dtype=torch.int64))
    _usable(pool)


CLOSE_DURING_LOOKUP = """
import sys, threading, time
import torch
from recmgd.errors import PoolError
from recmgd.pool import Pool

name, slow = sys.argv[1], sys.argv[2]
p = Pool.create(name, tables=[(20000, 64)], slots=1000, slow=slow)
Pool.unlink(name)
ids, offs = torch.randint(0, 20000, (400000,)), torch.arange(0, 400000, 4)
ref = p.embedding_bag(0, ids, offs)
seen = []

def lookups():
    try:
        for _ in range(200):
            out = p.embedding_bag(0, ids, offs)
            assert torch.equal(out, ref)
            seen.append(1)
    except PoolError as e:
        seen.append(str(e))

t = threading.Thread(target=lookups)
t.start()
while not seen:
    time.sleep(0.001)
p.close()
t.join()
print(seen[-1])
"""


@pytest.mark.parametrize("tier", ["dram", "ssd"])
def test_close_while_another_thread_looks_up(tier: str, tmp_path: Path) -> None:
    """close() from one thread while another is inside a lookup: the lookup finishes (right rows),
    the next one raises "closed"; the process does not crash (it did: the handle was freed under
    the call, a segfault in 5 of 6 runs)."""
    slow = "dram" if tier == "dram" else f"ssd:{tmp_path / 'c.bin'}"
    r = subprocess.run([sys.executable, "-c", CLOSE_DURING_LOOKUP, _name(), slow],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "is closed" in r.stdout


def test_create_refused_after_the_object_leaves_nothing(tmp_path: Path) -> None:
    """A thread count the library refuses, after the object was made: the object and the SSD file
    this call created are removed, so that the same create can be retried."""
    name, path = _name(), tmp_path / "t.bin"
    with pytest.raises(PoolError, match="threads must be"):
        Pool.create(name, tables=[(10, 4)], slots=4, slow=f"ssd:{path}", threads=100000)
    assert not (SHM / name).exists() and not path.exists()
    Pool.create(name, tables=[(10, 4)], slots=4, slow=f"ssd:{path}", threads=2).destroy()


def test_float_table_numbers_and_offsets_are_refused(pool: Pool) -> None:
    values = torch.arange(6) % 50
    for call, what in (
        (lambda: pool.embedding_bag(1.9, [1, 2], [0]), "table must be an integer"),
        (lambda: pool.embedding_bags_windows([0.9], values, [[0, 6]]), "tables must be integers"),
        (lambda: pool.embedding_bags_windows([0], values, [[0, 1.7, 6]]), "offsets must be integers"),
    ):
        with pytest.raises(PoolError, match=what) as e:
            call()
        _one_line(e)
    _usable(pool)


@pytest.mark.parametrize(("kwargs", "what"), [
    ({"tables": [(10.5, 4.7)]}, r"table 0: rows must be an integer, got 10\.5"),  # (was a 10 x 4 table)
    ({"tables": [(10, 2**33)]}, "table 0: dim is too large: 8589934592"),
    ({"tables": [("a", 4)]}, "table 0: rows must be an integer, got 'a'"),
    ({"tables": [(0, 4)]}, "table 0: rows must be at least 1, got 0"),
    ({"tables": None}, "tables must be a list of"),
    ({"slots": 2**64}, "slots is too large"),
    ({"slots": 1.5}, "slots must be an integer, got 1.5"),
    ({"slots": float("nan")}, "slots must be an integer, got nan"),
    ({"slots": True}, "slots must be an integer, got True"),
    ({"ring_records": -1}, "ring_records must be at least 0, got -1"),
    ({"rings": 2**40}, "rings is too large"),
    ({"mode": 0o4755}, "mode is too large"),
    ({"name": 123}, "a pool name must be a string, got 123"),
])
def test_create_arguments_of_the_wrong_kind(kwargs: dict, what: str) -> None:
    """Arguments the C fields cannot hold, or that a cast would change (a float truncated, a bool taken
    for 1), are a one-line PoolError naming the argument (they were OverflowError, TypeError,
    AttributeError, or a table quietly made smaller), and no pool is left behind."""
    name = _name()
    args = {"name": name, "tables": [(10, 4)], "slots": 2, **kwargs}
    with pytest.raises(PoolError, match=what) as e:
        Pool.create(**args)
    _one_line(e)
    assert not (SHM / name).exists()


def test_shapes_torch_refuses_are_refused(pool: Pool) -> None:
    """2-D offsets, and per-sample weights of another shape than a 2-D input's, are refused as torch's
    embedding_bag refuses them (they were flattened and used)."""
    w = torch.zeros(100, 8)
    cases = (((torch.tensor([1, 2, 3, 4]), torch.tensor([[0, 2]])), "offsets has to be a 1D Tensor"),
             ((torch.tensor([[1, 2], [3, 4]]), None, "sum", torch.ones(4)), "per_sample_weights"),
             # (n, 1) weights of n ids in 1-D (they were flattened and used too)
             ((torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2]), "sum", torch.ones(4, 1)),
              r"per_sample_weights has shape \(4, 1\); input has \(4,\)"))
    for args, what in cases:
        with pytest.raises(ValueError, match=what):
            pool.embedding_bag(0, *args)
        mode = args[2] if len(args) > 2 else "mean"
        weights = args[3] if len(args) > 3 else None
        with pytest.raises((ValueError, RuntimeError)):  # (torch's own refusal of the same call)
            torch.nn.functional.embedding_bag(args[0], w, args[1], mode=mode, per_sample_weights=weights)
    _usable(pool)


def test_nested_input_as_torch(pool: Pool) -> None:
    """A jagged nested 2-D input, which torch's embedding_bag takes (its values and offsets, with
    include_last_offset; weights nested too), through the pool and the module, and in a multi-table
    call; plain weights with it are refused as torch refuses them. (It failed with an AttributeError.)"""
    from recmgd.pool_torch import TieredEmbeddingBag

    w = torch.from_numpy(pool.read_rows(0, np.arange(100)))
    nt = torch.nested.nested_tensor([torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64),
                                     torch.tensor([3, 4, 99])], layout=torch.jagged)
    nw = torch.nested.nested_tensor_from_jagged(torch.tensor([0.5, 2.0, 1.0, -1.0, 3.0]), nt.offsets())
    other = torch.nested.nested_tensor([torch.ones(1), torch.ones(1), torch.ones(3)], layout=torch.jagged)
    for mode in ("sum", "mean", "max"):
        want = torch.nn.EmbeddingBag.from_pretrained(w, mode=mode)(nt)
        assert torch.equal(pool.embedding_bag(0, nt, mode=mode), want)
        assert torch.equal(TieredEmbeddingBag(pool, 0, mode=mode)(nt), want)
    want = torch.nn.functional.embedding_bag(nt, w, mode="sum", per_sample_weights=nw)
    assert torch.equal(pool.embedding_bag(0, nt, None, "sum", nw), want)
    assert torch.equal(TieredEmbeddingBag(pool, 0, mode="sum")(nt, per_sample_weights=nw), want)
    assert torch.equal(pool.embedding_bags([0, 0], [nt, nt], mode="sum")[1],
                       torch.nn.functional.embedding_bag(nt, w, mode="sum"))
    with pytest.raises(ValueError, match="per_sample_weights must be nested"):
        pool.embedding_bag(0, nt, None, "sum", torch.ones(5))
    with pytest.raises(ValueError, match="must have the input's bags"):
        pool.embedding_bag(0, nt, None, "sum", other)
    with pytest.raises(ValueError, match="per_sample_weights"):  # (torch's own refusal)
        torch.nn.functional.embedding_bag(nt, w, mode="sum", per_sample_weights=torch.ones(5))
    _usable(pool)


def test_include_last_offset_without_bags_names_the_first_offset(pool: Pool) -> None:
    """include_last_offset with one offset (no bags) that is not 0: the message names it and the ids
    (it said the offsets must end at the number of ids, 0, with 5 ids given)."""
    msg = r"offsets must start at 0, got 5 \(include_last_offset, no bags, 5 ids\)"
    with pytest.raises(PoolError, match=msg):
        pool.embedding_bag(0, torch.arange(5), torch.tensor([5]), include_last_offset=True)
    assert pool.embedding_bag(0, torch.arange(5), torch.tensor([0]), include_last_offset=True).shape == (0, 8)


def test_whole_number_floats_are_taken() -> None:
    """A float of a whole number (2e6 slots, as people write them) is the integer it names."""
    p = Pool.create(_name(), tables=[(10.0, np.float64(4))], slots=2e1)
    try:
        assert p.tables[0].rows == 10 and p.tables[0].dim == 4 and p.n_slots == 20
    finally:
        p.destroy()


def test_handle_arguments_of_the_wrong_kind(pool: Pool) -> None:
    """The same for a handle's calls: numbers the C call cannot take, and messages that say what is wrong
    (a negative key was said to name table 0, an id past 64 bits to be no integer, a negative offset to
    be past the end)."""
    daemon = Pool.attach(pool.name, role="daemon")
    try:
        for call, err, what in (
            (lambda: pool.set_lock_timeout(-5), PoolError, "lock timeout .ms. must be at least 0, got -5"),
            (lambda: pool.set_lock_timeout(2**40), PoolError, "lock timeout .ms. is too large"),
            (lambda: daemon.drain_ring(-1), PoolError, "ring must be at least 0, got -1"),
            (lambda: daemon.drain_ring(9999), RowIndexError, "ring 9999 out of range"),
            (lambda: daemon.drain_ring(0, -3), PoolError, "max_records must be at least 0, got -3"),
            (lambda: daemon.release_ring(-1), PoolError, "ring must be at least 0, got -1"),
            (lambda: daemon.fill_keys([-1]), RowIndexError, r"key -1 is negative"),
            (lambda: pool.read_rows(0, [2**70]), PoolError, f"rows must fit 64-bit integers, got {2**70}"),
            (lambda: pool.embedding_bag(0, [1, 2], [-1]), PoolError, r"offsets\[0\] = -1 is negative"),
            (lambda: Pool.attach(7), PoolError, "a pool name must be a string, got 7"),
        ):
            with pytest.raises(err, match=what) as e:
                call()
            _one_line(e)
        assert daemon.drain_ring(pool.ring_index).dtype == np.uint64  # (the handle usable after them)
    finally:
        daemon.close()
    _usable(pool)


def test_bags_at_the_edges_as_torch(pool: Pool) -> None:
    """No bags, no tables, and offsets past the ids: torch's shapes, or one line naming the offset."""
    w = torch.from_numpy(pool.read_rows(0, np.arange(100)))
    ids = torch.tensor([1, 2, 3])
    assert pool.embedding_bag(0, ids, torch.tensor([], dtype=torch.int64)).shape == (0, 8)
    assert pool.embedding_bag(0, ids, torch.tensor([0]), include_last_offset=True).shape == (0, 8)
    got = pool.embedding_bag(0, ids, torch.tensor([0, 1, 3]), include_last_offset=True)
    assert torch.equal(got, torch.nn.functional.embedding_bag(ids, w, torch.tensor([0, 1, 3]), mode="sum",
                                                              include_last_offset=True))
    with pytest.raises(PoolError, match=r"last offset \(2\) must be the number of ids \(3\)"):
        pool.embedding_bag(0, ids, torch.tensor([0, 1, 2]), include_last_offset=True)
    with pytest.raises(PoolError, match=r"offsets\[1\] = 5 is past the end of the 3 ids"):
        pool.embedding_bag(0, ids, torch.tensor([0, 5]))
    # table-batched: no bags of two tables, and bags of no tables
    assert pool.embedding_bags_packed([0, 1], torch.tensor([], dtype=torch.int64), [0], 0).shape == (0, 12)
    assert pool.embedding_bags_packed([], torch.tensor([], dtype=torch.int64), [0], 3).shape == (3, 0)
    _usable(pool)


def test_tiered_embedding_bag_as_nn_embedding_bag(pool: Pool) -> None:
    """Its mode defaults to nn.EmbeddingBag's ('mean'); a table out of range or not an integer is
    refused when the module is made, not at its first forward."""
    from recmgd.pool_torch import TieredEmbeddingBag

    w = torch.from_numpy(pool.read_rows(0, np.arange(100)))
    ref = torch.nn.EmbeddingBag.from_pretrained(w)
    ids, offs = torch.tensor([1, 2, 3, 7, 9]), torch.tensor([0, 3])
    assert torch.equal(TieredEmbeddingBag(pool, 0)(ids, offs), ref(ids, offs))
    for table in (-1, 2, 0.5):
        with pytest.raises(PoolError) as e:
            TieredEmbeddingBag(pool, table)
        _one_line(e)
