"""The cap on the records of one unfinished batch (recmgd.daemon.tracker.MAX_BATCH_RECORDS): an app that
advances its ring but never writes a batch end must not make the daemon (or a recording of the pool) hold
its records without bound.

- the ring tracker cuts an unfinished batch at the cap: what is pending is handed on as one batch, the
  records after it start the next one, none is lost, ``cut_batches`` counts the cuts, one warning;
- the recordings' BatchSplitter cuts by the same rule, at the same drained arrays;
- a real daemon (cap lowered through RECMGD_TEST_MAX_BATCH_RECORDS) and a real app that never ends its
  batches: the stats show the cuts, the policy stepped on them, and a recording gets those boundaries.
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
from recmgd.keys import REC_BATCH_END, REC_HINT, REC_LOOKUP, make_records

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
