"""The cap on the records of one unfinished batch (recmgd.daemon.tracker.MAX_BATCH_RECORDS): an app that
advances its ring but never writes a batch end must not make the daemon (or a recording of the pool) hold
its records without bound.

- the ring tracker cuts an unfinished batch at the cap: what is pending is handed on as one batch, the
  records after it start the next one, none is lost, ``cut_batches`` counts the cuts, one warning;
- the recordings' BatchSplitter cuts by the same rule, at the same drained arrays;
- a real daemon (cap lowered through RECMGD_TEST_MAX_BATCH_RECORDS) and a real app that never ends its
  batches: the stats show the cuts, the policy stepped on them, and a recording gets those boundaries;
- the pool cap (MAX_POOL_PENDING_RECORDS): many rings, each below the batch cap, together at the pool
  cap: the largest unfinished batch is cut first, none is lost, the pool's pending records stay below
  the cap, in the tracker, in the BatchSplitter and in a real daemon with several app handles.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from test_daemon_live import config
from test_daemon_plugin import daemon_env, shut_down, start_daemon, wait_socket
from test_record_outputs import create_pool, recmgctl, recorded, wait_attached, wait_recording

from recmgd.daemon import tracker as tracker_mod
from recmgd.daemon.control import request
from recmgd.daemon.record import BatchSplitter
from recmgd.daemon.tracker import RingTracker
from recmgd.keys import REC_BATCH_END, REC_HINT, REC_KEY_MASK, REC_LOOKUP, make_records

CAP = 100


def lookups(keys) -> np.ndarray:
    return make_records(REC_LOOKUP, np.asarray(keys, dtype=np.int64))


def hints(keys) -> np.ndarray:
    return make_records(REC_HINT, np.asarray(keys, dtype=np.int64))


END = make_records(REC_BATCH_END, np.zeros(1, dtype=np.int64))


class FakeRings:
    """One ring (index 0, app pid 7) whose next drains are given by the test."""

    name = "fake"

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def rings(self) -> list[dict]:
        return [{"index": 0, "pid": 7, "waiting": sum(len(c) for c in self.chunks), "drops": 0}]

    def drain_ring(self, index: int, max_records: int) -> np.ndarray:
        return self.chunks.pop(0) if self.chunks else np.zeros(0, dtype=np.uint64)


class Batches:
    """The tracker's sink: every batch handed on."""

    def __init__(self) -> None:
        self.got: list[tuple[np.ndarray, np.ndarray, int]] = []

    def __call__(self, keys: np.ndarray, hint_keys: np.ndarray, n_batches: int) -> None:
        self.got.append((keys.copy(), hint_keys.copy(), n_batches))

    def keys(self) -> list[int]:
        return [int(x) for keys, _, _ in self.got for x in keys]


def make_tracker(take_hints=lambda h: False) -> tuple[FakeRings, Batches, RingTracker]:
    src, sink = FakeRings(), Batches()
    return src, sink, RingTracker(src, sink, take_hints, step_mode=True)


def held(tr: RingTracker) -> int:
    return sum(len(p) for st in tr.rings.values() for p in st.pending)


def test_the_default_cap_is_far_above_a_real_batch() -> None:
    assert tracker_mod.MAX_BATCH_RECORDS >= 26 * 2048 * 100  # 26 tables, batch 2048, pooling 100
    assert RingTracker(FakeRings(), Batches(), lambda h: False).max_batch == tracker_mod.MAX_BATCH_RECORDS
    assert BatchSplitter().max_batch == tracker_mod.MAX_BATCH_RECORDS


def test_tracker_cuts_an_unfinished_batch_at_the_cap(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tracker_mod, "MAX_BATCH_RECORDS", CAP)
    src, sink, tr = make_tracker()
    assert tr.max_batch == CAP
    sent: list[int] = []
    most = 0
    with caplog.at_level(logging.WARNING, logger="recmgd.daemon.tracker"):
        for i in range(1000):  # 30 000 lookups, never a batch end
            keys = list(range(30 * i, 30 * i + 30))
            sent += keys
            src.chunks.append(lookups(keys))
            assert tr.drain() == 30
            most = max(most, held(tr))
    assert most < CAP  # the memory of the unfinished batch stays bounded
    # cut after every 4th drain (120 >= 100 records): 250 batches of 120, nothing left pending
    assert tr.cut_batches == 250 and held(tr) == 0
    assert [len(k) for k, _, _ in sink.got] == [120] * 250 and all(nb == 1 for _, _, nb in sink.got)
    assert sink.keys() == sent  # every lookup handed on, in order
    warned = [r for r in caplog.records if "without a batch end" in r.getMessage()]
    assert len(warned) == 1 and "fake" in warned[0].getMessage()  # once per pool, not per cut

    # after a cut the next batch starts afresh: a real batch end hands on what follows the cut
    src.chunks.append(np.concatenate([lookups([1, 2, 3]), END, lookups([4])]))
    tr.drain()
    assert [k.tolist() for k, _, _ in sink.got[-1:]] == [[1, 2, 3]] and tr.cut_batches == 250
    # one drain larger than the cap (tail after a batch end included) is cut whole
    src.chunks.append(np.concatenate([lookups([5]), END, lookups(range(10, 10 + 3 * CAP))]))
    tr.drain()
    assert [k.tolist() for k, _, _ in sink.got[-2:]] == [[4, 5], list(range(10, 10 + 3 * CAP))]
    assert tr.cut_batches == 251 and held(tr) == 0


def test_tracker_counts_hints_taken_early_toward_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_mod, "MAX_BATCH_RECORDS", CAP)
    taken: list[int] = []
    src, sink, tr = make_tracker(lambda h: taken.extend(h.tolist()) or True)
    for i in range(5):  # 20 hints (taken at once) and 20 lookups a drain
        keys = range(i * 20, i * 20 + 20)
        src.chunks.append(np.concatenate([hints(keys), lookups(keys)]))
        tr.drain()
        assert held(tr) < CAP
    # 40 records a drain as drained: the cut falls after the 3rd drain (120 records, 60 of them lookups)
    assert tr.cut_batches == 1 and len(taken) == 100
    assert [len(k) for k, _, _ in sink.got] == [60] and sink.got[0][1].size == 0
    assert sum(len(p) for p in tr.rings[0].pending) == 40 and tr.rings[0].n_pending == 80


def test_splitter_cuts_by_the_trackers_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_mod, "MAX_BATCH_RECORDS", CAP)
    sp = BatchSplitter()
    src, sink, tr = make_tracker()
    tapped: list[tuple[np.ndarray, np.ndarray]] = []
    tr.add_tap(lambda recs, ring: tapped.append(sp.feed(ring, recs)), with_ring=True)
    rng = np.random.default_rng(0)
    sent: list[int] = []
    most = 0
    for i in range(400):  # chunks of 1..70 lookups (and a hint or two), a batch end now and then
        keys = rng.integers(0, 1 << 20, int(rng.integers(1, 70)))
        parts = [lookups(keys), hints(keys[:2])]
        sent += keys.tolist()
        if i % 37 == 36:
            parts.append(END)
        src.chunks.append(np.concatenate(parts))
        tr.drain()
        most = max(most, sum(len(p) for p in sp.pending.get(0, [])))
    assert most < CAP
    assert sp.cut_batches == tr.cut_batches > 10
    # the recording's samples are the daemon's steps: the same boundaries, the same lookups
    rec_lengths = [int(n) for _, ns in tapped for n in ns]
    assert rec_lengths == [len(k) for k, _, _ in sink.got]
    rec_keys = [int(x) for ks, _ in tapped for x in ks]
    assert rec_keys == sink.keys() == sent[:len(rec_keys)]
    assert len(sent) - len(rec_keys) == sum(len(p) for p in sp.pending[0])  # only the last batch waits


def test_splitter_bounded_without_batch_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_mod, "MAX_BATCH_RECORDS", CAP)
    sp = BatchSplitter()
    out: list[int] = []
    lengths: list[int] = []
    for i in range(300):  # two rings, 45 records a feed each, never a batch end
        for ring in (0, 1):
            k, n = sp.feed(ring, lookups(range(1000 * ring + 45 * i, 1000 * ring + 45 * i + 45)))
            if ring == 0:
                out += k.tolist()
                lengths += n.tolist()
            assert all(sum(len(p) for p in pend) < CAP for pend in sp.pending.values())
    assert sp.cut_batches == 2 * 100 and lengths == [135] * 100 and out == list(range(45 * 300))
    sp.forget(1)
    assert 1 not in sp.pending and 1 not in sp.held


def test_the_environment_can_only_lower_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, cap in (("1000", 1000), ("0", 1 << 23), ("-5", 1 << 23), ("x", 1 << 23),
                       (str(1 << 30), 1 << 23), ("", 1 << 23)):
        monkeypatch.setenv(tracker_mod.MAX_BATCH_ENV, value)
        assert tracker_mod._cap_from_env(1 << 23) == cap
    monkeypatch.delenv(tracker_mod.MAX_BATCH_ENV)
    for value, cap in (("3000", 3000), ("0", 1 << 24), (str(1 << 25), 1 << 24), ("", 1 << 24)):
        monkeypatch.setenv(tracker_mod.MAX_POOL_ENV, value)
        assert tracker_mod._cap_from_env(1 << 24, tracker_mod.MAX_POOL_ENV) == cap
        assert tracker_mod._cap_from_env(1 << 23) == 1 << 23  # the batch cap reads its own variable


# -- the pool cap --------------------------------------------------------------------------------------

POOL = 250


class ManyRings:
    """Rings 0..n-1 (app pid 100 + index unless set) whose next drains are given by the test."""

    name = "many"

    def __init__(self, n: int) -> None:
        self.chunks: dict[int, list[np.ndarray]] = {i: [] for i in range(n)}
        self.pids = {i: 100 + i for i in range(n)}

    def rings(self) -> list[dict]:
        return [{"index": i, "pid": self.pids[i], "waiting": sum(len(c) for c in ch), "drops": 0}
                for i, ch in self.chunks.items()]

    def drain_ring(self, index: int, max_records: int) -> np.ndarray:
        ch = self.chunks[index]
        return ch.pop(0) if ch else np.zeros(0, dtype=np.uint64)


def ring_keys(ring: int, start: int, n: int) -> np.ndarray:
    """n keys of one ring, numbered from start (the ring in the key's high part, so batches show whose
    records they hold)."""
    return (np.int64(ring) << 32) + np.arange(start, start + n, dtype=np.int64)


def caps(monkeypatch: pytest.MonkeyPatch, batch: int = CAP, pool: int = POOL) -> None:
    monkeypatch.setattr(tracker_mod, "MAX_BATCH_RECORDS", batch)
    monkeypatch.setattr(tracker_mod, "MAX_POOL_PENDING_RECORDS", pool)


def test_the_default_pool_cap_bounds_a_pool_of_many_rings() -> None:
    assert tracker_mod.MAX_POOL_PENDING_RECORDS >= 2 * tracker_mod.MAX_BATCH_RECORDS
    assert tracker_mod.MAX_POOL_PENDING_RECORDS * 8 <= 128 << 20  # 128 MiB a pool, not 64 MiB a ring
    tr = RingTracker(FakeRings(), Batches(), lambda h: False)
    assert tr.max_pending == tracker_mod.MAX_POOL_PENDING_RECORDS and tr.n_pending == 0
    assert BatchSplitter().max_pending == tracker_mod.MAX_POOL_PENDING_RECORDS


def test_tracker_cuts_the_largest_batch_at_the_pool_cap(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caps(monkeypatch)
    src, sink = ManyRings(4), Batches()
    tr = RingTracker(src, sink, lambda h: False, step_mode=True)
    assert (tr.max_batch, tr.max_pending) == (CAP, POOL)
    for ring, n in ((0, 60), (1, 40), (2, 90), (3, 20)):  # 210 pending, each ring below the batch cap
        src.chunks[ring].append(lookups(ring_keys(ring, 0, n)))
    with caplog.at_level(logging.WARNING, logger="recmgd.daemon.tracker"):
        tr.drain()
        assert tr.n_pending == 210 and not sink.got and tr.cut_batches == 0
        # ring 3 brings the pool to 255: the largest batch (ring 2's 90, not ring 3's) is cut
        src.chunks[3].append(lookups(ring_keys(3, 20, 45)))
        tr.drain()
    assert tr.cut_batches == 1 and tr.n_pending == 165 and tr.peak_pending == 210
    assert [k.tolist() for k, _, _ in sink.got] == [ring_keys(2, 0, 90).tolist()]
    assert [st.n_pending for st in tr.rings.values()] == [60, 40, 0, 65]
    warned = [r.getMessage() for r in caplog.records if "without a batch end" in r.getMessage()]
    assert len(warned) == 1 and "pool cap" in warned[0] and "many" in warned[0]
    # equals: the lowest ring goes first (ring 1 and ring 3 at 65; 60 + 65 + 65 + 60 = 250)
    src.chunks[1].append(lookups(ring_keys(1, 40, 25)))
    src.chunks[2].append(lookups(ring_keys(2, 90, 60)))
    tr.drain()
    assert tr.cut_batches == 2 and [k[0] >> 32 for k, _, _ in sink.got] == [2, 1]
    assert len(sink.got[-1][0]) == 65 and tr.n_pending == 185
    # a batch end of a ring leaves the sum too
    src.chunks[3].append(np.concatenate([lookups(ring_keys(3, 65, 5)), END, lookups(ring_keys(3, 70, 2))]))
    tr.drain()
    assert [len(k) for k, _, _ in sink.got[-1:]] == [70] and tr.n_pending == 60 + 60 + 2


def test_tracker_pool_cap_many_rings_nothing_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    caps(monkeypatch)
    n_rings = 16
    src, sink = ManyRings(n_rings), Batches()
    tr = RingTracker(src, sink, lambda h: False, step_mode=True)
    rng = np.random.default_rng(3)
    sent: dict[int, list[int]] = {i: [] for i in range(n_rings)}
    nxt = dict.fromkeys(range(n_rings), 0)
    most = 0
    for _ in range(300):  # 1..20 lookups a ring a drain, never a batch end; 16 x 99 would be 1584
        for ring in range(n_rings):
            n = int(rng.integers(1, 21))
            src.chunks[ring].append(lookups(ring_keys(ring, nxt[ring], n)))
            sent[ring] += ring_keys(ring, nxt[ring], n).tolist()
            nxt[ring] += n
        tr.drain()
        assert tr.n_pending == sum(st.n_pending for st in tr.rings.values()) == held(tr)
        assert tr.n_pending < POOL and all(st.n_pending < CAP for st in tr.rings.values())
        most = max(most, held(tr))
    assert POOL - 20 <= most < POOL and tr.peak_pending == most
    # every batch handed on is a cut one, one ring's records in order; nothing lost
    assert tr.cut_batches == len(sink.got) > 100
    got: dict[int, list[int]] = {i: [] for i in range(n_rings)}
    for keys, _, nb in sink.got:
        assert nb == 1 and len(set((keys >> 32).tolist())) == 1
        got[int(keys[0] >> 32)] += keys.tolist()
    for ring, st in tr.rings.items():
        left = [int(x) for p in st.pending for x in (p & np.uint64(REC_KEY_MASK)).astype(np.int64)]
        assert got[ring] + left == sent[ring]
    # an app that detaches leaves the sum (its partial batch is dropped), and so does a new app's ring
    before, gone = tr.n_pending, tr.rings[5].n_pending
    src.pids[5] = 0
    tr.drain()
    assert 5 not in tr.rings and tr.n_pending == before - gone
    before, replaced = tr.n_pending, tr.rings[6].n_pending
    src.pids[6] = 999
    src.chunks[6].append(lookups(ring_keys(6, 10**6, 3)))
    tr.drain()
    assert tr.rings[6].n_pending == 3 and tr.n_pending == before - replaced + 3
    before, flushed = tr.n_pending, tr.rings[7].n_pending
    src.chunks[7].append(lookups(ring_keys(7, 10**6, 3)))
    tr.flush_ring(7)
    assert 7 not in tr.rings and tr.n_pending == before - flushed


def test_splitter_pool_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    caps(monkeypatch)
    sp = BatchSplitter()
    assert (sp.max_batch, sp.max_pending) == (CAP, POOL)
    for ring, n in ((0, 60), (1, 40), (2, 90), (3, 20)):
        k, n_ = sp.feed(ring, lookups(ring_keys(ring, 0, n)))
        assert not len(n_)
    assert sp.n_held == 210
    # ring 3 ends a batch of 5 and brings the pool to 255: its own batch first, then ring 2's (the largest)
    k, n = sp.feed(3, np.concatenate([lookups(ring_keys(3, 20, 5)), END, hints([1]),
                                      lookups(ring_keys(3, 25, 64))]))
    assert n.tolist() == [25, 90] and k[25:].tolist() == ring_keys(2, 0, 90).tolist()
    assert sp.cut_batches == 1 and sp.n_held == 60 + 40 + 65 and sp.held[2] == 0

    rng = np.random.default_rng(5)
    n_rings = 16
    sent: dict[int, list[int]] = {i: [] for i in range(n_rings)}
    nxt = dict.fromkeys(range(n_rings), 10**6)
    out: list[int] = []
    for _ in range(200):
        for ring in range(n_rings):
            c = int(rng.integers(1, 21))
            sent[ring] += ring_keys(ring, nxt[ring], c).tolist()
            k, n = sp.feed(ring, lookups(ring_keys(ring, nxt[ring], c)))
            nxt[ring] += c
            assert int(n.sum()) == len(k)
            out += k.tolist()
            assert sp.n_held == sum(sp.held.values()) < POOL
            assert all(sum(len(p) for p in pend) < CAP for pend in sp.pending.values())
    assert sp.cut_batches > 100
    for ring in range(n_rings):  # none lost, each ring's in order
        mine = [x for x in out if x >> 32 == ring and x & 0xFFFFFFFF >= 10**6]
        left = [int(x) for p in sp.pending[ring] for x in p if x & 0xFFFFFFFF >= 10**6]
        assert mine + left == sent[ring]
    before, gone = sp.n_held, sp.held[4]
    sp.forget(4)
    assert sp.n_held == before - gone


def test_splitter_cuts_by_the_trackers_pool_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    caps(monkeypatch)
    n_rings = 8
    src, sink = ManyRings(n_rings), Batches()
    tr = RingTracker(src, sink, lambda h: False, step_mode=True)
    sp = BatchSplitter()
    tapped: list[tuple[np.ndarray, np.ndarray]] = []
    tr.add_tap(lambda recs, ring: tapped.append(sp.feed(ring, recs)), with_ring=True)
    rng = np.random.default_rng(7)
    for i in range(300):  # 1..40 lookups and a hint a ring a drain, a batch end now and then
        for ring in range(n_rings):
            keys = ring_keys(ring, 1000 * i, int(rng.integers(1, 41)))
            parts = [lookups(keys), hints(keys[:1])]
            if rng.random() < 0.03:
                parts.insert(1, END)
            src.chunks[ring].append(np.concatenate(parts))
        tr.drain()
        assert tr.n_pending == sp.n_held < POOL
    assert sp.cut_batches == tr.cut_batches > 50
    rec_lengths = [int(n) for _, ns in tapped for n in ns]
    assert rec_lengths == [len(k) for k, _, _ in sink.got]
    assert [int(x) for ks, _ in tapped for x in ks] == sink.keys()


def test_live_daemon_cuts_an_app_that_never_ends_its_batches(tmp_path: Path) -> None:
    cap = 1000
    name = f"recmgd-batchcap-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    out = tmp_path / "rec.rtrace"
    daemon = start_daemon(config(tmp_path / "d.toml", sock, [name]),
                          env=daemon_env({tracker_mod.MAX_BATCH_ENV: str(cap)}))
    pool = rec = None
    try:
        wait_socket(sock, daemon, timeout=60)
        pool = create_pool(name)
        wait_attached(sock, name)
        rec = recmgctl(sock, "record", name, str(out), "--lookups", "4000")
        wait_recording(sock, name)
        rng = np.random.default_rng(1)
        sent = 0
        for _ in range(40):  # 40 x 256 lookups, never a batch end
            ids = rng.integers(0, 1000, 256)
            pool.embedding_bag(0, ids, np.arange(len(ids)))  # type: ignore[attr-defined]
            sent += len(ids)
            time.sleep(0.002)
        deadline = time.monotonic() + 30
        while True:
            st = request(str(sock), "stats")["pools"][name]
            if st.get("lookups", 0) > sent - cap:
                break
            assert time.monotonic() < deadline, f"the daemon did not step on the cut batches: {st}"
            time.sleep(0.02)
        assert st["cut_batches"] >= 1
        assert st["steps"] == st["cut_batches"] == st["batches"]  # each cut a step, as a batch end
        assert st["ring_drops"] == 0
        o, e = rec.communicate(timeout=60)
        assert rec.returncode == 0, (o, e)
        samples = recorded(out)
        assert samples and sum(len(s) for s in samples) >= 4000
        assert all(cap <= len(s) < sent for s in samples)  # cut at the drained array that reached the cap
    finally:
        if rec is not None and rec.poll() is None:
            rec.kill()
            rec.communicate()
        rc, err = shut_down(daemon, name, pool)
    assert rc == 0, err
    assert err.count("without a batch end") == 1, err  # one warning for the pool


def test_live_daemon_bounds_a_pool_of_apps_that_never_end_their_batches(tmp_path: Path) -> None:
    from recmgd.pool import Pool

    batch_cap, pool_cap, n_apps = 100_000, 2000, 4
    name = f"recmgd-poolcap-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    out = tmp_path / "rec.rtrace"
    daemon = start_daemon(config(tmp_path / "d.toml", sock, [name]),
                          env=daemon_env({tracker_mod.MAX_BATCH_ENV: str(batch_cap),
                                          tracker_mod.MAX_POOL_ENV: str(pool_cap)}))
    pool = rec = None
    apps: list = []
    try:
        wait_socket(sock, daemon, timeout=60)
        pool = create_pool(name)
        apps = [pool] + [Pool.attach(name, "app") for _ in range(n_apps - 1)]  # a ring each
        assert len({a.ring_index for a in apps}) == n_apps
        wait_attached(sock, name)
        rec = recmgctl(sock, "record", name, str(out), "--lookups", "3000")
        wait_recording(sock, name)
        rng = np.random.default_rng(2)
        sent = 0
        for i in range(60):  # 6000 lookups, 40..160 a bag, over 4 rings (each below the batch cap)
            app = apps[i % n_apps]
            ids = rng.integers(0, 1000, 40 * (1 + i % n_apps))  # rings of different sizes
            app.embedding_bag(0, ids, np.arange(len(ids)))
            sent += len(ids)
            time.sleep(0.002)
        deadline = time.monotonic() + 30
        while True:
            st = request(str(sock), "stats")["pools"][name]
            if st.get("lookups", 0) + st.get("pending_records", 0) == sent:
                break
            assert time.monotonic() < deadline, f"the daemon did not drain the rings: {st}"
            time.sleep(0.02)
        assert st["apps"] == n_apps and st["ring_drops"] == 0
        assert st["cut_batches"] >= 2
        assert st["steps"] == st["cut_batches"] == st["batches"]  # each cut a step, as a batch end
        assert 0 < st["pending_records"] <= st["pending_records_peak"] < pool_cap  # the pool-wide bound
        assert st["lookups"] >= sent - pool_cap
        o, e = rec.communicate(timeout=60)
        assert rec.returncode == 0, (o, e)
        samples = recorded(out)
        assert samples and sum(len(s) for s in samples) >= 3000
        assert all(len(s) <= pool_cap for s in samples)  # the largest batch, cut at the pool cap
    finally:
        if rec is not None and rec.poll() is None:
            rec.kill()
            rec.communicate()
        for app in apps[1:]:
            app.close()
        rc, err = shut_down(daemon, name, pool)
    assert rc == 0, err
    assert err.count("without a batch end") == 1 and "pool cap" in err, err  # one warning for the pool
