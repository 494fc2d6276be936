"""Recording a pool's live access stream (recmgctl record): real daemon, real app processes, real socket.

- the recorded trace holds exactly the app's batches, in order, one sample a batch; `recmg sim` on it
  (one sample a step) gives the daemon's own on-demand count in step mode; `recmg trace stats` reads it;
- two apps at once: every batch of both, each app's in its order;
- a recording started inside an app's batch begins at its next batch; a dead app's unfinished batch is
  not joined to the first batch of the app that takes its ring over (the tracker's ring resets);
- limits: --lookups ends at a batch end, the size cap, --seconds with an idle pool;
- a full disk (a 64 KiB tmpfs): one line, no FILE, no FILE.partial; the daemon goes on;
- errors: unknown pool, a second recording of the same pool, a request without a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_daemon_live import app, config, pstats, unique_keys
from test_daemon_plugin import daemon_env, shut_down, start_daemon, wait_socket

import recmgd.pool as pool_mod
from recmgd.daemon.control import CommandError, request
from recmgd.daemon.record import MIN_MAX_BYTES, BatchSplitter, Recorder, trace_bytes
from recmgd.trace import open_trace

AMAZON = "amazon_video.trace"
REPO = Path(__file__).resolve().parent.parent


def recmgctl(sock: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), *args],
                            env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def recmg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", *args], env=daemon_env(),
                          capture_output=True, text=True, timeout=300, cwd=str(REPO))


def batch_keys(batches: list[list[tuple[int, np.ndarray]]]) -> list[np.ndarray]:
    """The keys of each app batch in the order the app logs them (table by table)."""
    return [np.concatenate([(np.int64(t) << 40) | rows for t, rows in b]) for b in batches]


def recorded_batches(path: Path) -> list[np.ndarray]:
    tr = open_trace(path)
    keys = np.asarray(tr.keys)
    offs = np.asarray(tr.sample_offsets)
    return [keys[offs[i]:offs[i + 1]] for i in range(tr.n_samples)]


def wait_recording(sock: Path, pool: str, timeout: float = 20.0) -> dict:
    """Until the daemon says the pool is being recorded (recmgctl has passed its file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = request(str(sock), "record", {"pool": pool, "action": "status"})
            if st["state"] == "recording":
                return st
        except CommandError:
            pass
        time.sleep(0.02)
    raise AssertionError("the recording did not start")


@pytest.fixture
def daemon(tmp_path: Path):
    """A daemon in step mode over one pool name; yields (socket, pool name, proc)."""
    name = f"recmgd-rec-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    cfg = config(tmp_path / "d.toml", sock, [name], extra="step_mode = true")
    d = start_daemon(cfg)
    try:
        wait_socket(sock, d, timeout=60)
        yield sock, name, d
    finally:
        rc, err = shut_down(d, name)
        assert rc == 0, err


def create_pool(name: str, sizes: list[int], slots: int):
    from test_daemon_app import create_pool as create

    return create(name, sizes, slots, 65536)


def wait_attached(sock: Path, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in request(str(sock), "stats")["pools"]:
        assert time.monotonic() < deadline, "the daemon did not attach the pool"
        time.sleep(0.02)



def batches_until_done(pool: pool_mod.Pool, r: subprocess.Popen, seed: int) -> tuple[str, str]:
    """Batches of 64 random lookups from this process until recmgctl (r) ends (60 s at most); its output."""
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + 60
    while r.poll() is None and time.monotonic() < deadline:
        pool.embedding_bag(0, rng.integers(0, 1000, 64), np.arange(64))
        pool.end_batch()
        time.sleep(0.002)
    return r.communicate(timeout=60)

def test_splitter_keeps_batches_per_ring() -> None:
    end = np.uint64(1) << np.uint64(62)
    hint = np.uint64(2) << np.uint64(62)
    sp = BatchSplitter()
    # ring 0: [1 2 | 3 (hint 9) 4 ...   ring 1: 7 | 8 ...
    k, n = sp.feed(0, np.array([1, 2, end, 3, hint | np.uint64(9), 4], dtype=np.uint64))
    assert k.tolist() == [1, 2] and n.tolist() == [2]
    k, n = sp.feed(1, np.array([7, end, 8], dtype=np.uint64))
    assert k.tolist() == [7] and n.tolist() == [1]
    k, n = sp.feed(0, np.array([5, end, end, 6], dtype=np.uint64))  # an empty batch too
    assert k.tolist() == [3, 4, 5] and n.tolist() == [3, 0]
    sp.forget(1)  # ring 1's app went away: its unfinished batch (8) is dropped
    k, n = sp.feed(1, np.array([10, end], dtype=np.uint64))
    assert k.tolist() == [10] and n.tolist() == [1]


def test_splitter_ends_a_batch_at_a_change_of_owner() -> None:
    """A change of owner (RECMG_REC_OWNER, a pid its key) in a ring's records drops the unfinished batch
    before it, as forget does, also the rest of a batch under way when the splitter started: the records
    after it are another app's (they were joined to the dead app's unfinished batch)."""
    end = np.uint64(1) << np.uint64(62)
    owner = np.uint64(3) << np.uint64(62)
    sp = BatchSplitter(mid_batch={1: 2})
    k, n = sp.feed(0, np.array([1, end, 2, owner | np.uint64(99), 3, end, 4], dtype=np.uint64))
    assert k.tolist() == [1, 3] and n.tolist() == [1, 1] and sp.n_held == 2 + 1  # ring 1's 2, ring 0's 4
    k, n = sp.feed(1, np.array([5, owner | np.uint64(98), 6, end], dtype=np.uint64))
    assert k.tolist() == [6] and n.tolist() == [1] and sp.n_held == 1
    k, n = sp.feed(0, np.array([owner | np.uint64(97)], dtype=np.uint64))  # (alone at the end of an array)
    assert len(k) == len(n) == 0 and sp.n_held == 0
    k, n = sp.feed(0, np.array([7, end], dtype=np.uint64))
    assert k.tolist() == [7] and n.tolist() == [1]


@pytest.mark.slow
def test_record_step_mode_equals_app_and_simulator(daemon, tmp_path: Path, shared_traces: Path) -> None:
    from test_daemon_app import trace_batches

    from recmgd.sim import capacity_for

    sock, name, _ = daemon
    trace = shared_traces / AMAZON
    batches, sizes = trace_batches(str(trace), 32, 20_000)
    fraction = 0.1
    capacity = capacity_for(fraction, unique_keys(batches))
    expected = batch_keys(batches)
    total = sum(len(k) for k in expected)
    pool = create_pool(name, sizes, capacity)
    try:
        wait_attached(sock, name)
        out = tmp_path / "live.rtrace"
        rec = recmgctl(sock, "record", name, str(out), "--lookups", str(total))
        wait_recording(sock, name)
        a = app("replay", "--pool", name, "--trace", str(trace), "--batch", "32", "--limit", "20000",
                "--socket", str(sock))
        aout, aerr = a.communicate(timeout=300)
        assert a.returncode == 0, aerr
        rout, rerr = rec.communicate(timeout=60)
        assert rec.returncode == 0, rerr
        st = pstats(sock, name)
    finally:
        pool.close()
    assert json.loads(aout.strip().splitlines()[-1])["wrong"] == 0
    assert f"recorded {total} lookups in {len(batches)} batches (lookups" in rout
    assert not Path(str(out) + ".partial").exists()
    got = recorded_batches(out)
    assert len(got) == len(expected) == st["steps"]
    for g, e in zip(got, expected, strict=True):
        assert np.array_equal(g, e)
    assert st["recording"]["state"] == "done" and st["recording"]["lookups"] == total
    # the trace reproduces the daemon's steps: the simulator's LRU at the same capacity fetches what
    # the daemon's LRU fetched
    sim = recmg("sim", str(out), "--policies", "lru", "--fractions", str(fraction), "--batch", "1",
                "--json")
    assert sim.returncode == 0, sim.stderr
    res = json.loads(sim.stdout.strip().splitlines()[-1])
    assert res["capacity"] == capacity
    # `recmg sim` scores the second half after warming on the first; the daemon counts every step:
    # the simulator's driver over all the recorded steps gives the daemon's count exactly
    assert 0 < res["on_demand"] <= st["on_demand"]
    from recmgd import policy as policy_mod
    from recmgd.sim import drive

    counted = drive(policy_mod.create("lru"), open_trace(out).steps(1), capacity, 0).on_demand
    assert counted == st["on_demand"]
    stats = recmg("trace", "stats", str(out), "--json", "--no-sim")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["lookups"] == total
    # the README's path: train on the recording, switch the pool to the learned policy with it
    model = tmp_path / "model"
    tr = recmg("train", str(out), "--out", str(model), "-b", "1", "--fraction", str(fraction),
               "--epochs", "1", "-q")
    assert tr.returncode == 0, tr.stderr
    # (the first learned policy imports torch in the daemon: more than the default 10 s on a loaded machine)
    r = recmgctl(sock, "--timeout", "120", "policy", name, "recmg", "--model", str(model))
    pout, perr = r.communicate(timeout=120)
    assert r.returncode == 0, perr
    assert f"pool {name}: policy recmg (model {model})" in pout
    assert pstats(sock, name)["policy"] == "recmg"
    r = recmgctl(sock, "--timeout", "120", "policy", name, "recmg", "--model", str(tmp_path / "none"))
    _, perr = r.communicate(timeout=120)
    assert r.returncode == 1 and len(perr.strip().splitlines()) == 1


def test_record_two_apps(tmp_path: Path, shared_traces: Path) -> None:
    from test_daemon_app import trace_batches

    name = f"recmgd-rec-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    d = start_daemon(config(tmp_path / "d.toml", sock, [name]))
    trace = shared_traces / AMAZON
    batches, sizes = trace_batches(str(trace), 16, 12_000)
    expected = batch_keys(batches)
    total = sum(len(k) for k in expected)
    pool = None
    try:
        wait_socket(sock, d, timeout=60)
        pool = create_pool(name, sizes, 500)
        wait_attached(sock, name)
        out = tmp_path / "two.rtrace"
        rec = recmgctl(sock, "record", name, str(out), "--lookups", str(2 * total))
        wait_recording(sock, name)
        apps = [app("replay", "--pool", name, "--trace", str(trace), "--batch", "16", "--limit", "12000")
                for _ in range(2)]
        for a in apps:
            _, aerr = a.communicate(timeout=300)
            assert a.returncode == 0, aerr
        rout, rerr = rec.communicate(timeout=60)
        assert rec.returncode == 0, rerr
        drops = pstats(sock, name)["ring_drops"]
    finally:
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err
    assert drops == 0
    got = recorded_batches(out)
    assert len(got) == 2 * len(expected)
    # both apps replay the same batches: each batch appears twice, and in each app's order, so the
    # recording is an interleaving of two copies of the sequence: match it greedily
    pos = [0, 0]
    for g in got:
        for i in (0, 1):
            if pos[i] < len(expected) and np.array_equal(g, expected[pos[i]]):
                pos[i] += 1
                break
        else:
            raise AssertionError("a recorded batch is not the next batch of either app")
    assert pos == [len(expected), len(expected)]


def test_record_limits_and_errors(daemon, tmp_path: Path) -> None:
    sock, name, _ = daemon
    pool = create_pool(name, [1000, 1000], 100)
    try:
        wait_attached(sock, name)
        # --seconds over an idle pool: an empty but complete trace
        idle = tmp_path / "idle.rtrace"
        r = recmgctl(sock, "record", name, str(idle), "--seconds", "0.5")
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, err
        assert "recorded 0 lookups in 0 batches (seconds, 0.5 s; no app ended a batch in it) to" in out
        assert open_trace(idle).n_lookups == 0
        # a second recording of the same pool is refused, one line
        busy = recmgctl(sock, "record", name, str(tmp_path / "a.rtrace"), "--lookups", "100000")
        wait_recording(sock, name)
        r = recmgctl(sock, "record", name, str(tmp_path / "b.rtrace"))
        out, err = r.communicate(timeout=60)
        assert r.returncode == 1 and "already being recorded" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "b.rtrace.partial").exists() and not (tmp_path / "b.rtrace").exists()
        # the size cap: batches of 64 lookups from this process, until the cap of 10 kB ends it
        request(str(sock), "record", {"pool": name, "action": "stop"})
        out, err = busy.communicate(timeout=60)
        assert busy.returncode == 0, err
        capped = tmp_path / "capped.rtrace"
        r = recmgctl(sock, "record", name, str(capped), "--max-mb", "0.01")
        wait_recording(sock, name)
        out, err = batches_until_done(pool, r, seed=0)
        assert r.returncode == 0, err
        assert "(size cap" in out
        size = capped.stat().st_size
        assert 10_000 - 8 * 65 < size <= 10_000
        tr = open_trace(capped)
        assert tr.n_samples >= 1 and np.all(np.diff(np.asarray(tr.sample_offsets)) == 64)
        # a fourth recording of the pool holds each batch once, exactly as logged (no tap left behind)
        exact = tmp_path / "exact.rtrace"
        r = recmgctl(sock, "record", name, str(exact), "--lookups", str(10 * 64))
        wait_recording(sock, name)
        rng = np.random.default_rng(1)
        sent = [rng.integers(0, 1000, 64) for _ in range(10)]
        for ids in sent:
            pool.embedding_bag(1, ids, np.arange(64))
            pool.end_batch()
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, err
        got = recorded_batches(exact)
        assert len(got) == 10
        assert all(np.array_equal(g, (1 << 40) | s) for g, s in zip(got, sent, strict=True))
        # unknown pool, and a request that carries no file
        r = recmgctl(sock, "record", "no-such-pool", str(tmp_path / "x.rtrace"))
        _, err = r.communicate(timeout=60)
        assert r.returncode == 1 and "no such pool" in err
        assert not (tmp_path / "x.rtrace.partial").exists()
        with pytest.raises(CommandError, match="no file passed"):
            request(str(sock), "record", {"pool": name})
    finally:
        pool.close()


def test_record_seconds_counts_from_its_start(daemon, tmp_path: Path) -> None:
    """--seconds is wall time from the recording's start, before an app's first batch too: the recording
    holds the app's batches from its first one (none is missed at the start; the window's end cuts off
    the later ones), and its summary says when the first batch came, so a window that began well before
    the app shows as such (an engineer read a short recording as its first batches missed)."""
    import re

    sock, name, _ = daemon
    pool = create_pool(name, [1000], 100)
    try:
        wait_attached(sock, name)
        # this process's first lookup imports torch (a second or more): done before the window opens,
        # and its batch stepped on before the recording starts
        pool.embedding_bag(0, np.arange(4), np.arange(4))
        pool.end_batch()
        deadline = time.monotonic() + 30
        while pstats(sock, name)["steps"] < 1:
            assert time.monotonic() < deadline, "the daemon did not step on the first batch"
            time.sleep(0.02)
        out = tmp_path / "s.rtrace"
        r = recmgctl(sock, "record", name, str(out), "--seconds", "1")
        wait_recording(sock, name)
        rng = np.random.default_rng(4)
        sent = []
        deadline = time.monotonic() + 60
        while r.poll() is None and time.monotonic() < deadline:
            ids = rng.integers(0, 1000, 16)
            pool.embedding_bag(0, ids, np.arange(16))
            pool.end_batch()
            sent.append(ids)
            time.sleep(0.002)
        rout, rerr = r.communicate(timeout=60)
    finally:
        pool.close()
    assert r.returncode == 0, rerr
    m = re.search(r"recorded (\d+) lookups in (\d+) batches \(seconds, [\d.]+ s; the first batch [\d.]+ s "
                  r"in\) to ", rout)
    assert m, rout
    got = recorded_batches(out)
    assert len(got) == int(m.group(2)) >= 1
    # the recording's batches are the app's first ones, in order
    assert all(np.array_equal(g, s) for g, s in zip(got, sent, strict=False))


def test_record_full_disk(daemon, small_disk) -> None:
    sock, name, d = daemon
    small = small_disk("64k")
    pool = create_pool(name, [100_000], 100)
    try:
        wait_attached(sock, name)
        target = small / "full.rtrace"
        r = recmgctl(sock, "record", name, str(target))
        wait_recording(sock, name)
        rng = np.random.default_rng(1)
        deadline = time.monotonic() + 60
        while r.poll() is None and time.monotonic() < deadline:
            for _ in range(20):
                pool.embedding_bag(0, rng.integers(0, 100_000, 4096), np.arange(4096))
                pool.end_batch()
            time.sleep(0.01)
        out, err = r.communicate(timeout=60)
        assert r.returncode == 1
        assert err.strip().count("\n") == 0 and "No space left on device" in err and "no file was kept" in err
        assert os.listdir(small) == []  # neither FILE nor FILE.partial
        st = pstats(sock, name)
        assert st["recording"]["state"] == "failed"
        assert d.poll() is None  # the daemon goes on
        pool.embedding_bag(0, np.arange(10), np.arange(10))
        pool.end_batch()
    finally:
        pool.close()


def test_record_pool_removed_midway(daemon, tmp_path: Path) -> None:
    """The pool goes away while it is recorded: the daemon completes the file with what it had, and
    recmgctl keeps it."""
    sock, name, d = daemon
    pool = create_pool(name, [1000], 100)
    try:
        wait_attached(sock, name)
        out = tmp_path / "cut.rtrace"
        r = recmgctl(sock, "record", name, str(out))
        wait_recording(sock, name)
        rng = np.random.default_rng(2)
        sent = [rng.integers(0, 1000, 32) for _ in range(20)]
        for ids in sent:
            pool.embedding_bag(0, ids, np.arange(32))
            pool.end_batch()
        deadline = time.monotonic() + 30
        while request(str(sock), "record", {"pool": name, "action": "status"})["lookups"] < 20 * 32:
            assert time.monotonic() < deadline, "the batches were not recorded"
            time.sleep(0.02)
        pool_mod.Pool.unlink(name)  # the daemon detaches the pool at its next check
        rout, rerr = r.communicate(timeout=60)
    finally:
        pool.close()
    assert r.returncode == 0, rerr
    assert "recorded 640 lookups in 20 batches" in rout and "cut short: no such pool" in rout
    assert not Path(str(out) + ".partial").exists()
    got = recorded_batches(out)
    assert len(got) == 20 and all(np.array_equal(g, s) for g, s in zip(got, sent, strict=True))
    assert d.poll() is None


def test_recorder_whose_cap_holds_no_batch_fails(tmp_path: Path) -> None:
    """The writer's side: a cap that holds not even the first batch fails the recording with one line
    (the file truncated to nothing); it completed an empty trace, "done (size cap)"."""
    end = np.uint64(1) << np.uint64(62)
    path = tmp_path / "t.rtrace"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    rec = Recorder("p", fd, max_bytes=100, label=str(path))
    rec(np.append(np.arange(64, dtype=np.uint64), end), 0)
    rec.stop()
    assert rec.wait(30)
    st = rec.status()
    assert st["state"] == "failed" and st["batches"] == 0, st
    assert st["error"] == ("the size cap of 100 bytes holds no batch: the first has 64 lookups, a trace of "
                           f"{trace_bytes(64, 1)} bytes")
    assert path.stat().st_size == 0
    # a cap that holds the first batch: done, with the batches that fit
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    rec = Recorder("p", fd, max_bytes=trace_bytes(64, 1), label=str(path))
    rec(np.concatenate([np.arange(64, dtype=np.uint64), [end], np.arange(64, dtype=np.uint64), [end]]), 0)
    assert rec.wait(30)
    st = rec.status()
    assert st["state"] == "done" and st["reason"] == "size cap" and st["batches"] == 1, st
    assert path.stat().st_size == trace_bytes(64, 1)  # (the writer closed the descriptor)


def test_record_cap_too_small(daemon, tmp_path: Path) -> None:
    """--max-mb below one lookup's trace (88 bytes) is a usage error naming the minimum, before the
    daemon is asked (and the daemon's own check names it too); a cap above it that holds no batch of
    the pool's (64 lookups) ends the recording with one line, exit 1, no file (it wrote an empty
    trace and exited 0: "recorded 0 lookups in 0 batches (size cap)")."""
    sock, name, _ = daemon
    pool = create_pool(name, [1000], 100)
    try:
        wait_attached(sock, name)
        target = tmp_path / "t.rtrace"
        r = recmgctl(sock, "record", name, str(target), "--max-mb", "0.00005")
        out, err = r.communicate(timeout=60)
        assert r.returncode == 2 and out == ""
        assert err == ("recmgctl record: error: argument --max-mb: 5e-05 MB holds no batch (the smallest "
                       f"cap is 0.000088 MB, {MIN_MAX_BYTES} bytes: a trace of one lookup) "
                       "(see recmgctl record --help)\n")
        assert MIN_MAX_BYTES == 88
        with pytest.raises(CommandError, match=r"'max_bytes': 87 bytes holds no batch \(the smallest cap is "
                                               r"88 bytes"):
            request(str(sock), "record", {"pool": name, "max_bytes": 87})
        r = recmgctl(sock, "record", name, str(target), "--max-mb", "0.0001", "--seconds", "60")
        wait_recording(sock, name)
        out, err = batches_until_done(pool, r, seed=3)
        assert r.returncode == 1, (out, err)
        assert err == ("recmgctl: record: the size cap of 100 bytes holds no batch: the first has 64 "
                       "lookups, a trace of 592 bytes; no file was kept\n")
        assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["ctl.sock", "d.toml"]
        assert pstats(sock, name)["recording"]["state"] == "failed"
    finally:
        pool.close()


FULL = "recmgctl: cannot write the output: No space left on device\n"


def test_record_and_pause_into_a_full_stdout(daemon, tmp_path: Path) -> None:
    """stdout on a full device: recmgctl record keeps its complete trace and says in one line that its
    summary could not be written (exit 1); pause and resume are done and say the same (each was an
    OSError traceback)."""
    sock, name, _ = daemon
    pool = create_pool(name, [1000], 100)
    try:
        wait_attached(sock, name)
        target = tmp_path / "t.rtrace"
        with open("/dev/full", "w") as full:
            r = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock),
                                  "record", name, str(target), "--lookups", str(5 * 64)],
                                 env=daemon_env(), stdout=full, stderr=subprocess.PIPE, text=True)
        wait_recording(sock, name)
        sent = [np.arange(64) + i for i in range(5)]
        for ids in sent:
            pool.embedding_bag(0, ids, np.arange(64))
            pool.end_batch()
        _, err = r.communicate(timeout=60)
        assert r.returncode == 1 and err == FULL
        got = recorded_batches(target)
        assert [g.tolist() for g in got] == [s.tolist() for s in sent]
        for cmd, paused in (("pause", True), ("resume", False)):
            with open("/dev/full", "w") as full:
                r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), cmd,
                                    name], env=daemon_env(), stdout=full, stderr=subprocess.PIPE, text=True,
                                   timeout=60)
            assert r.returncode == 1 and r.stderr == FULL
            assert pstats(sock, name)["paused"] is paused
    finally:
        pool.close()


def test_splitter_starts_mid_batch_rings_at_their_next_batch() -> None:
    """A recording that starts while a ring's batch is under way (the daemon has drained part of it)
    begins that ring at its next batch: the rest of the batch under way is no app batch of its own."""
    end = np.uint64(1) << np.uint64(62)
    sp = BatchSplitter(mid_batch={0: 2})
    k, n = sp.feed(0, np.array([3, 4], dtype=np.uint64))  # the rest of ring 0's batch, no end yet
    assert k.tolist() == [] and n.tolist() == []
    k, n = sp.feed(0, np.array([5, end, 6, end, 7], dtype=np.uint64))
    assert k.tolist() == [6] and n.tolist() == [1]
    k, n = sp.feed(1, np.array([8, end], dtype=np.uint64))  # ring 1 was at a batch boundary
    assert k.tolist() == [8] and n.tolist() == [1]
    sp = BatchSplitter(mid_batch={2: 1})
    sp.forget(2)  # its app went: the next app's records start a batch
    k, n = sp.feed(2, np.array([9, end], dtype=np.uint64))
    assert k.tolist() == [9] and n.tolist() == [1]
    # a batch under way that reaches the batch cap ends where the daemon cuts it, counted from what the
    # daemon had drained of it; the records after the cut start a batch
    sp = BatchSplitter(max_batch=10, mid_batch={0: 6})
    assert sp.n_held == 6
    k, n = sp.feed(0, np.array([1, 2, 3], dtype=np.uint64))
    assert n.tolist() == [] and sp.n_held == 9
    k, n = sp.feed(0, np.array([4, 5], dtype=np.uint64))
    assert n.tolist() == [] and sp.n_held == 0 and sp.cut_batches == 0
    k, n = sp.feed(0, np.array([6, end], dtype=np.uint64))
    assert k.tolist() == [6] and n.tolist() == [1]


class OwnedRing:
    """One ring (index 3) whose owner and next drains the test sets."""

    name = "fake"

    def __init__(self) -> None:
        self.pid = 7
        self.chunks: list[np.ndarray] = []

    def rings(self) -> list[dict]:
        return [{"index": 3, "pid": self.pid, "waiting": sum(len(c) for c in self.chunks), "drops": 0}]

    def drain_ring(self, index: int, max_records: int) -> np.ndarray:
        return self.chunks.pop(0) if self.chunks else np.zeros(0, dtype=np.uint64)


def test_tracker_tells_ring_resets_before_the_next_apps_records() -> None:
    """The ring tracker tells its reset listeners when a ring's state goes (another app, a detached app's
    empty ring, a dead app's ring flushed), in the order of the taps' records, and which rings are in a
    batch: what a recording's splitter needs to drop the same unfinished batches as the daemon."""
    from recmgd.daemon.tracker import RingTracker

    end = np.uint64(1) << np.uint64(62)
    src = OwnedRing()
    events: list[object] = []
    t = RingTracker(src, lambda *a: None, lambda h: False, step_mode=True)
    t.add_tap(lambda recs, ring: events.append((ring, recs.tolist())), with_ring=True)
    t.add_reset(lambda ring: events.append(ring))
    src.chunks = [np.array([1, end, 2], dtype=np.uint64)]
    t.drain()
    assert t.mid_batch() == {3: 1} and events == [(3, [1, int(end), 2])]
    src.pid, src.chunks = 8, [np.array([5, end], dtype=np.uint64)]  # another app took the ring over
    t.drain()
    assert events[1:] == [3, (3, [5, int(end)])] and t.mid_batch() == {}
    src.pid, src.chunks = 0, []  # the app detached, its ring empty
    t.drain()
    assert events[3:] == [3] and 3 not in t.rings
    src.pid, src.chunks = 9, [np.array([6], dtype=np.uint64)]
    t.drain()
    src.chunks = [np.array([7, end], dtype=np.uint64)]  # the app died: its ring flushed, then reset
    assert t.flush_ring(3, {"index": 3, "pid": 9, "waiting": 2}) == (2, True)
    assert events[4:] == [(3, [6]), (3, [7, int(end)]), 3]


def test_record_started_mid_batch_leaves_that_batch_out(daemon, tmp_path: Path) -> None:
    """The app is inside a batch (its first lookups drained) when the recording starts: the trace begins
    at its next batch, as it ends at the last batch the app ended (before: the batch's rest was the
    trace's first sample)."""
    sock, name, _ = daemon
    pool = create_pool(name, [1000], 100)
    try:
        wait_attached(sock, name)
        pool.embedding_bag(0, np.arange(4), np.arange(4))  # (imports torch) a batch before
        pool.end_batch()
        pool.embedding_bag(0, np.arange(10, 18), np.arange(8))  # the batch under way
        deadline = time.monotonic() + 30
        while pstats(sock, name)["pending_records"] < 8:
            assert time.monotonic() < deadline, "the daemon did not drain the batch under way"
            time.sleep(0.02)
        out = tmp_path / "mid.rtrace"
        later = [np.arange(100, 108) + 8 * i for i in range(3)]
        r = recmgctl(sock, "record", name, str(out), "--lookups", str(sum(len(b) for b in later)))
        wait_recording(sock, name)
        pool.embedding_bag(0, np.arange(20, 24), np.arange(4))  # the batch under way ends
        pool.end_batch()
        for ids in later:
            pool.embedding_bag(0, ids, np.arange(len(ids)))
            pool.end_batch()
        rout, rerr = r.communicate(timeout=60)
    finally:
        pool.close()
    assert r.returncode == 0, rerr
    got = recorded_batches(out)
    assert [g.tolist() for g in got] == [b.tolist() for b in later]


def test_a_dead_apps_last_records_are_cut_by_the_pool_cap_in_both() -> None:
    """A dead app's ring flushed empty: its last records go through the caps in the tracker as in a
    recording's splitter (the tracker split them without the pool cap, so a recording had a batch cut
    there that the daemon never stepped on)."""
    from recmgd.daemon.tracker import RingTracker

    src = OwnedRing()
    steps: list[list[int]] = []
    t = RingTracker(src, lambda keys, hints, n: steps.append(keys.tolist()), lambda h: False,
                    step_mode=True, max_pending=4)
    sp = BatchSplitter(max_pending=4)
    recorded: list[list[int]] = []

    def tap(recs: np.ndarray, ring: int) -> None:
        keys, lengths = sp.feed(ring, recs)
        recorded.extend(np.split(keys, np.cumsum(lengths)[:-1]) if len(lengths) else [])

    t.add_tap(tap, with_ring=True)
    t.add_reset(sp.forget)
    src.chunks = [np.array([1, 2, 3], dtype=np.uint64)]  # a batch under way
    t.drain()
    src.chunks = [np.array([4], dtype=np.uint64)]  # one lookup more, and the app dies
    assert t.flush_ring(3, {"index": 3, "pid": 7, "waiting": 1}) == (1, True)
    assert steps == [[1, 2, 3, 4]] and [r.tolist() for r in recorded] == steps
    assert t.cut_batches == sp.cut_batches == 1 and t.n_pending == sp.n_held == 0


class TakenRing:
    """Ring 3 of 4, whose records and owners the test sets, described as Pool.ring_table describes rings
    (recmg_ring_state): ``claims`` counts its claims, ``before`` of its waiting records came before the
    last one (a previous owner's)."""

    name = "fake"
    FIELDS = ("pid", "claims", "waiting", "drops", "before_claim")

    def __init__(self) -> None:
        self.pid = 7
        self.claims = 1
        self.recs = np.zeros(0, dtype=np.uint64)
        self.before = 0
        self.after_look: Callable[[], None] | None = None

    def log(self, *words: int) -> None:
        self.recs = np.concatenate([self.recs, np.array(words, dtype=np.uint64)])

    def take_over(self, pid: int, counted: bool = True) -> None:
        """Another app claims the ring (its claim counted, or not yet: under way, or an older library)."""
        self.pid = pid
        if counted:
            self.claims += 1
            self.before = len(self.recs)

    def ring_table(self, first: int = 0, count: int | None = None) -> np.ndarray:
        t = np.zeros(4, dtype=[(f, np.int64) for f in self.FIELDS])
        t[3] = (self.pid, self.claims, len(self.recs), 0, self.before)
        if self.after_look is not None:  # what happens between the tracker's look and its drain
            self.after_look()
            self.after_look = None
        return t[first:] if count is None else t[first:first + count]

    def rings(self) -> list[dict]:
        raise AssertionError("the tracker reads ring_table when the pool has it")

    def drain_ring(self, index: int, max_records: int) -> np.ndarray:
        out, self.recs = self.recs[:max_records], self.recs[max_records:]
        self.before = max(0, self.before - len(out))
        return out


def test_tracker_ends_a_previous_owners_records_before_the_new_owners() -> None:
    """Records a dead app left undrained in a ring that the next app took over (before the app check
    released it): the tracker steps on that app's complete batches with its own state, drops its
    unfinished one and tells the reset listeners, then the new app's records start a batch of their own
    (they were joined to the dead app's unfinished batch: the policy and a recording saw a batch no app
    made). The same when the new app has already left again (its claim counted), for a ring the tracker
    never saw under a drain budget that does not hold them all, and after a claim under way."""
    from recmgd.daemon.tracker import RingTracker

    e = int(np.uint64(1) << np.uint64(62))

    def tracker(src: TakenRing, **kw: int) -> tuple[RingTracker, list, list]:
        steps: list[list[int]] = []
        events: list[object] = []
        t = RingTracker(src, lambda keys, hints, n: steps.append(keys.tolist()), lambda h: False,
                        step_mode=True, **kw)
        t.add_tap(lambda recs, ring: events.append((ring, recs.tolist())), with_ring=True)
        t.add_reset(lambda ring: events.append(ring))
        return t, steps, events

    for left in (False, True):
        src = TakenRing()
        t, steps, events = tracker(src)
        src.log(1, e, 2)
        t.drain()
        src.log(3, e, 4)  # the app goes on, then dies with these undrained
        src.take_over(8)
        src.log(5, e)
        if left:  # the new app came and went before the drain
            src.pid = 0
        t.drain()
        assert steps == [[1], [2, 3], [5]], left  # (before: [1], [2, 3], [4, 5])
        assert events == [(3, [1, e, 2]), (3, [3, e, 4]), 3, (3, [5, e])] and t.n_pending == 0

    # a ring the tracker did not know (a daemon started after the app died), its budget too small
    src = TakenRing()
    t, steps, events = tracker(src, max_drain=2)
    src.pid = 0
    src.log(9, e, 10)
    src.take_over(8)
    src.log(5, e)
    t.drain()  # two of the previous owner's three records: the rest next time, nothing of the new one's
    assert events == [(3, [9, e])] and steps == [[9]] and t.backlog == 3
    t.drain()  # the last one, the reset, and the new owner's first records under what is left
    assert events[1:] == [(3, [10]), 3, (3, [5])] and steps == [[9]]
    t.drain()
    assert events[4:] == [(3, [e])] and steps == [[9], [5]] and t.n_pending == 0

    # the same, the new app gone again by the first look (the ring free): still two batches of their own
    src = TakenRing()
    t, steps, events = tracker(src, max_drain=1)
    src.pid = 0
    src.log(9, 10, 11)
    src.take_over(8)
    src.log(5, e)
    src.pid = 0
    for _ in range(6):
        t.drain()
    assert steps == [[5]] and 3 in events and t.n_pending == 0  # (before: [9, 10, 11, 5])

    # an app that ends its batch and leaves between the app check's look and its flush: the flush takes
    # what the ring holds, not what the look saw (it took the look's 3 records, said the ring empty and
    # dropped them; the batch end came later as an empty batch)
    src = TakenRing()
    t, steps, events = tracker(src)
    src.log(1, 2, 3, e)
    assert t.flush_ring(3, {"index": 3, "pid": 7, "waiting": 3}) == (4, True)
    assert steps == [[1, 2, 3]]

    # a claim under way (a new pid, its count not moved yet): one drain waits, then the count says it
    src = TakenRing()
    t, steps, events = tracker(src)
    src.log(1, e, 2)
    t.drain()
    src.log(3)
    src.take_over(8, counted=False)
    t.drain()
    assert steps == [[1]] and events == [(3, [1, e, 2])]  # nothing taken meanwhile
    src.claims, src.before = src.claims + 1, len(src.recs)
    src.log(5, e)
    t.drain()
    assert steps == [[1], [5]] and events[1:] == [(3, [3]), 3, (3, [5, e])]
    # a takeover between the tracker's look and its drain: the drain takes no more than the look saw
    src.log(6)

    def takeover() -> None:
        src.take_over(10)
        src.log(7, e)

    src.after_look = takeover
    t.drain()
    assert steps == [[1], [5]] and events[-1] == (3, [6])  # (it took [6, 7, e] as the old owner's)
    t.drain()
    assert steps == [[1], [5], [7]] and events[-2:] == [3, (3, [7, e])]
    # an app of a library before the count: taken as a change of owner at the next drain (no stall)
    src.log(8)
    src.take_over(9, counted=False)
    src.log(9, e)
    t.drain()
    assert steps == [[1], [5], [7]]
    t.drain()
    assert steps == [[1], [5], [7], [8, 9]] and events[-1] == (3, [8, 9, e])


def test_app_check_flush_leaves_a_ring_taken_over_since_its_look() -> None:
    """The app check found a ring's app dead with records waiting; before its flush another app took the
    ring over and began a batch. The flush looks at the ring itself: another owner, so it drains nothing
    and says so (None: not the check's to release or count as draining); the drains end the dead app's
    records at the claim, and the new app's batch is whole (the flush took the new app's records as the
    dead one's and, counting by the check's look, called the ring empty: the new app's batch under way
    was dropped, its end became an empty batch)."""
    from recmgd.daemon.tracker import OWNER_MIN, RingTracker

    e = 1 << 62
    src = TakenRing()
    steps: list[list[int]] = []
    t = RingTracker(src, lambda keys, hints, n: steps.append(keys.tolist()), lambda h: False, step_mode=True)
    src.log(1, e, 2)  # app 7, then it dies
    info = {"index": 3, "pid": 7, "waiting": 3}  # the check's look
    src.take_over(8)
    src.log(int(OWNER_MIN) | 8, 5)
    assert t.flush_ring(3, info) == (0, None) and len(src.recs) == 5
    src.log(e)
    assert t.drain() == 6
    assert steps == [[1], [5]] and t.n_pending == 0


def test_tracker_and_splitter_cut_at_the_pool_cap_alike_across_a_change_of_owner() -> None:
    """The pool cap across a change of owner: the daemon drops the dead app's unfinished batch at the
    change first and holds the pool to its cap after the whole array; a recording's splitter does the
    same (it applied the cap before the change too, cutting another ring's batch under way that the
    daemon never cut: the recording and the retraining window held batches no app made)."""
    from recmgd.daemon.tracker import OWNER_MIN, RingState, RingTracker

    e, owner = 1 << 62, int(OWNER_MIN)
    steps: list[list[int]] = []
    recorded: list[list[int]] = []
    t = RingTracker(TakenRing(), lambda keys, hints, n: steps.append(keys.tolist()), lambda h: False,
                    step_mode=True, max_pending=10)
    sp = BatchSplitter(max_pending=10)
    states = {0: RingState(pid=7, claims=1), 1: RingState(pid=8, claims=1)}
    t.rings.update(states)
    for ring, words in [(0, [1, 2, 3, 4, 5, 6]), (1, [10, 11, 12, 13, 14, owner | 9, 20]), (0, [7, e])]:
        recs = np.array(words, dtype=np.uint64)
        t.consume(states[ring], recs)
        body, lengths = sp.feed(ring, recs)
        recorded.extend(b.tolist() for b in np.split(body, np.cumsum(lengths)[:-1]) if len(lengths))
    assert steps == recorded == [[1, 2, 3, 4, 5, 6, 7]]  # (the recording: [1 .. 6], [7])
    assert t.n_pending == sp.n_held == 1 and t.cut_batches == sp.cut_batches == 0


def test_a_flush_the_budget_stops_keeps_a_taken_over_rings_batch_whole() -> None:
    """An app took a ring over, logged a batch and died inside the next before the daemon's next drain;
    the app check flushes it under a budget too small for all of it. The flush ends the previous
    owner's records at the claim (as a drain does) and its state takes the new count, so the next drain
    goes on with the same batch (it took the moved count for a change of owner again and dropped the
    first part of that batch: the policy and a recording got [7] for [5, 6, 7])."""
    from recmgd.daemon.tracker import OWNER_MIN, RingTracker

    e = 1 << 62
    src = TakenRing()
    steps: list[list[int]] = []
    recorded: list[list[int]] = []
    resets: list[int] = []
    t = RingTracker(src, lambda keys, hints, n: steps.append(keys.tolist()), lambda h: False, step_mode=True,
                    max_drain=3)
    sp = BatchSplitter()

    def record(recs: np.ndarray, ring: int) -> None:
        body, lengths = sp.feed(ring, recs)
        recorded.extend(b.tolist() for b in np.split(body, np.cumsum(lengths)[:-1]) if len(lengths))

    t.add_tap(record, with_ring=True)
    t.add_reset(sp.forget)
    t.add_reset(resets.append)
    src.log(1)  # app 7, a batch under way
    t.drain()
    src.take_over(8)  # 7 died; 8 takes the ring, ends a batch, and dies too
    src.log(int(OWNER_MIN) | 8, 5, 6, 7, e)
    assert t.flush_ring(3, {"index": 3, "pid": 8, "waiting": 5}) == (3, False)
    assert resets == [3] and t.rings[3].claims == 2  # 7's batch under way dropped at 8's claim
    t.drain()
    t.drain()
    assert steps == recorded == [[5, 6, 7]] and resets == [3]


def test_a_new_owners_drops_count_from_zero() -> None:
    """A claim zeroes its ring's drop count: the tracker counts a new owner's drops from 0 (it took them
    from the previous owner's count, and a new owner's first drops went uncounted)."""
    from recmgd.daemon.tracker import RingTracker

    class Dropping(TakenRing):
        drops = 0

        def ring_table(self, first: int = 0, count: int | None = None) -> np.ndarray:
            t = super().ring_table(first, count)
            t["drops"][-1] = self.drops
            return t

    src = Dropping()
    t = RingTracker(src, lambda keys, hints, n: None, lambda h: False)
    src.drops = 100
    t.drain()
    t.drain()  # (no new drops: nothing counted again)
    src.take_over(8)
    src.drops = 30
    t.drain()
    assert t.dropped_total == 130


def _logs_and_dies(name: str, rows: list[int]) -> None:
    p = pool_mod.Pool.attach(name)
    p.embedding_bag(0, np.array(rows), np.array([0]))  # a batch under way
    os._exit(0)  # dies holding its ring


def test_tracker_on_a_real_ring_whose_new_owner_already_left() -> None:
    """A real pool, every ring taken: an app dies inside a batch, the daemon drains it, a new app takes
    the ring over, logs a batch and closes, all before the daemon's next drain. The ring's claim count
    says the owner changed: the new app's batch is stepped on its own (it was joined to the dead app's
    unfinished one, since the ring was free again by then)."""
    import multiprocessing as mp

    from recmgd.daemon.tracker import RingTracker

    name = f"recmgd-rec-{uuid.uuid4().hex[:8]}"
    creator = pool_mod.Pool.create(name, tables=[(1000, 8)], slots=100, rings=2)  # holds one ring
    daemon = pool_mod.Pool.attach(name, role="daemon")
    steps: list[list[int]] = []
    t = RingTracker(daemon, lambda keys, hints, n: steps.append((keys & ((1 << 40) - 1)).tolist()),
                    lambda h: False, step_mode=True)
    try:
        child = mp.get_context("fork").Process(target=_logs_and_dies, args=(name, [1, 2, 3]))
        child.start()
        child.join(60)
        t.drain()
        assert steps == [] and t.n_pending == 3
        q = pool_mod.Pool.attach(name)  # the dead app's ring: the only one left
        q.embedding_bag(0, np.array([7, 8]), np.array([0]))
        q.end_batch()
        q.close()
        t.drain()
        assert steps == [[7, 8]] and t.n_pending == 0
    finally:
        daemon.close()
        creator.destroy()


def _logs_batches_and_dies(name: str, batches: list[list[int]], rest: list[int]) -> None:
    p = pool_mod.Pool.attach(name)
    for rows in batches:
        p.embedding_bag(0, np.array(rows), np.array([0]))
        p.end_batch()
    if rest:
        p.embedding_bag(0, np.array(rest), np.array([0]))  # a batch under way
    os._exit(0)  # dies holding its ring


def test_tracker_and_recording_on_a_ring_taken_over_twice_between_drains() -> None:
    """A real pool, every ring taken: three apps take one ring in turn, each after the one before died
    inside a batch, all between two drains of the daemon. Each new owner's records begin with a change of
    owner (RECMG_REC_OWNER): the tracker and a recording's splitter step on each app's complete batches
    on their own and drop each dead app's unfinished one (the claim count alone ended the records at the
    last claim only: the middle app's first batch was joined to the first app's unfinished one). The
    drain's count holds every record it took, the previous owners' too."""
    import multiprocessing as mp

    from recmgd.daemon.tracker import RingTracker

    name = f"recmgd-rec-{uuid.uuid4().hex[:8]}"
    creator = pool_mod.Pool.create(name, tables=[(1000, 8)], slots=100, rings=2)  # holds one ring
    daemon = pool_mod.Pool.attach(name, role="daemon")
    steps: list[list[int]] = []
    recorded: list[list[int]] = []
    t = RingTracker(daemon, lambda keys, hints, n: steps.append((keys & ((1 << 40) - 1)).tolist()),
                    lambda h: False, step_mode=True)
    sp = BatchSplitter()

    def record(recs: np.ndarray, ring: int) -> None:
        body, lengths = sp.feed(ring, recs)
        recorded.extend(b.tolist() for b in np.split(body & ((1 << 40) - 1), np.cumsum(lengths)[:-1]))

    t.add_tap(record, with_ring=True)
    t.add_reset(sp.forget)
    try:
        t.drain()
        for batches, rest in [([[1, 2]], [3]), ([[4]], [5]), ([[6], [7, 8]], [])]:
            child = mp.get_context("fork").Process(target=_logs_batches_and_dies, args=(name, batches, rest))
            child.start()
            child.join(60)
            assert child.exitcode == 0
        assert daemon.ring_table()["claims"][1 - creator.ring_index] == 3
        drained = t.drain()
        assert steps == recorded == [[1, 2], [4], [6], [7, 8]]  # (before: [1, 2], [3, 4], [6], [7, 8])
        assert drained == 4 + 4 + 6  # 1 2 end 3, owner 4 end 5, owner 6 end 7 8 end
        assert t.n_pending == 0 and sp.n_held == 0
    finally:
        daemon.close()
        creator.destroy()


APP_BATCHES = r'''
import sys, numpy as np
from recmgd.pool import Pool
p = Pool.attach(sys.argv[1])
p.embedding_bag(0, np.array([int(x) for x in sys.argv[2].split(",")]), np.array([0]))
if sys.argv[3] == "end":
    p.end_batch()
print(p.ring_index, flush=True)
sys.stdin.read()  # until the test closes it (or kills this process)
'''


@pytest.mark.parametrize("drained", [True, False], ids=["drained", "left-in-the-ring"])
def test_record_ring_taken_over_from_a_dead_app(tmp_path: Path, drained: bool) -> None:
    """Every ring taken, an app dies inside a batch, and a new app takes its ring over before the daemon's
    app check has released it: the recording drops the dead app's unfinished batch (as the daemon's own
    steps do) instead of prefixing it to the new app's first batch. Drained: the daemon had taken the
    dead app's records before the new app came; left in the ring: the daemon (stopped) had not, so they
    wait in the ring ahead of the new app's (the ring's claim position says whose they are)."""
    name = f"recmgd-rec-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    cfg = config(tmp_path / "d.toml", sock, [name], extra="step_mode = true")
    cfg.write_text(cfg.read_text().replace("app_check_interval = 0.1", "app_check_interval = 3600"))
    # (the app check finds new pools too: the pool is there before the daemon starts)
    pool = pool_mod.Pool.create(name, tables=[(1000, 8)], slots=100, rings=2)  # this process has one
    d = start_daemon(cfg)
    apps: list[subprocess.Popen] = []

    def start(ids: list[int], end: bool) -> tuple[subprocess.Popen, int]:
        a = subprocess.Popen([sys.executable, "-c", APP_BATCHES, name, ",".join(map(str, ids)),
                              "end" if end else "open"], env=daemon_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        apps.append(a)
        line = a.stdout.readline()
        assert line.strip().isdigit(), a.stderr.read()
        return a, int(line)

    try:
        wait_socket(sock, d, timeout=60)
        wait_attached(sock, name)
        out = tmp_path / "taken.rtrace"
        r = recmgctl(sock, "record", name, str(out), "--lookups", "2")
        wait_recording(sock, name)
        if not drained:
            d.send_signal(signal.SIGSTOP)
        dead, ring = start([10, 11, 12], end=False)  # a batch under way, then the app dies
        deadline = time.monotonic() + 30
        while drained and pstats(sock, name)["pending_records"] < 3:
            assert time.monotonic() < deadline, "the daemon did not drain the batch under way"
            time.sleep(0.02)
        dead.kill()
        dead.wait()
        assert start([20, 21], end=True)[1] == ring  # the dead app's ring: the only one left
        if not drained:
            d.send_signal(signal.SIGCONT)
        rout, rerr = r.communicate(timeout=60)
        assert r.returncode == 0, rerr
    finally:
        for a in apps:
            a.kill()
            a.communicate()
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err
    assert [g.tolist() for g in recorded_batches(out)] == [[20, 21]]
