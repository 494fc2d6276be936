"""The daemon's service object in this process (no subprocess start-up): reload with policy, socket
and metrics changes, pools that go away, dead apps' rings, the STATUS line."""

from __future__ import annotations

import grp
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ports import free_port

import recmgd.pool as pool_mod
from recmgd.cli.recmgctl import TABLE_COLUMNS, byte_size, columns_help, format_stats
from recmgd.daemon import config
from recmgd.daemon.control import ControlServer
from recmgd.daemon.notify import Notifier
from recmgd.daemon.service import Daemon
from recmgd.errors import PoolLockedError, RecmgError
from recmgd.policy import Decision, Policy, StepView, register


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, message: str) -> None:
        self.sent.append(message)


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def make(tmp_path: Path, body: str) -> tuple[Daemon, Path, RecordingNotifier]:
    cfg_path = tmp_path / "d.toml"
    cfg_path.write_text(body)
    n = RecordingNotifier()
    d = Daemon(config.load(str(cfg_path)), str(cfg_path), notifier=n)
    d.setup()
    return d, cfg_path, n


def test_stats_help_says_what_each_column_counts() -> None:
    """`recmgctl stats --help` names every column of the table with what it counts, in the words of the
    metrics' help (one home: recmgd.daemon.table_counters): a "unique" larger than a table's rows was
    not explained anywhere a user of recmgctl looks."""
    from recmgd.daemon.table_counters import TABLE_METRICS

    text = columns_help()
    flat = " ".join(text.split())
    helps = {key: words for key, _, words in TABLE_METRICS}
    for key, head in TABLE_COLUMNS:
        assert f"\n  {head:>9}  " in text, head
        if key in helps:
            assert f"{head} {helps[key]}" in flat, key
    assert "distinct rows per batch, summed" in flat and "apps' own count" in flat
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "stats", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and text in r.stdout, r.stdout


def test_reload_changes_policy_socket_and_metrics(tmp_path: Path, restore_signals: None) -> None:
    name = f"recmgd-svc-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024)
    sock1, sock2 = tmp_path / "a.sock", tmp_path / "b.sock"
    base = f'pools = ["{name}"]\n[control]\nsocket = "{sock1}"\n[policy]\nname = "lru"\n'
    d, cfg, n = make(tmp_path, base)
    try:
        assert n.sent[-1].startswith("READY=1\nSTATUS=1 pool; ")
        att = d.pools[name]
        app.embedding_bag(0, np.arange(5), np.arange(5))
        app.end_batch()
        d.tick()
        assert att.driver.stats()["fills"] == 5 and att.driver.mover.pin_steps == 2  # the default
        # a new policy, a hint reserve and its pins, another socket, metrics on
        port = free_port()
        cfg.write_text(f'pools = ["{name}"]\n[control]\nsocket = "{sock2}"\n'
                       f'[metrics]\nlisten = "127.0.0.1:{port}"\n[policy]\nname = "lfu"\nhint_slots = 2\n'
                       f'hint_pin_batches = 7\n')
        assert d.reload() is None
        assert n.sent[-2].startswith("RELOADING=1\nMONOTONIC_USEC=") and n.sent[-1].startswith("READY=1")
        assert att.driver.policy_name == "lfu" and att.driver.capacity == 8
        assert att.driver.mover.pin_steps == 7
        assert att.driver.stats()["adopted"] == 5
        assert sock2.exists() and not sock1.exists()
        assert d.handle("stats", {})["daemon"]["reloads"] == 1
        d._snapshot = d.stats()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert f'recmgd_resident_rows{{pool="{name}"}} 5.0' in text
        assert f'recmgd_pin_refused_total{{pool="{name}"}} 0.0' in text
        # the bytes it holds for the pool: the mirror's and the C LFU's own (its key map, per-id arrays)
        held = re.search(rf'recmgd_state_bytes{{pool="{name}"}} (\S+)', text)
        assert held is not None and float(held.group(1)) == att.driver.stats()["state_bytes"]
        assert att.driver.stats()["state_bytes"] > att.driver.mover.nbytes() > 0
        assert f"steps 1, state {byte_size(att.driver.stats()['state_bytes'])}" in format_stats(d._snapshot)
        # (a state under 0.1 MB in KB: an LRU's of 600 keys showed as "state 0.0 MB")
        assert (byte_size(42_000), byte_size(99_999), byte_size(100_000), byte_size(2.54e6)) == \
            ("42.0 KB", "100.0 KB", "0.1 MB", "2.5 MB")
        # a bad one (unknown policy) changes nothing
        cfg.write_text(f'pools = ["{name}"]\n[control]\nsocket = "{sock1}"\n[policy]\nname = "nope"\n')
        err = d.reload()
        assert err is not None and "policy.name: unknown policy 'nope'" in err
        assert att.driver.policy_name == "lfu" and sock2.exists() and not sock1.exists()
        assert "last reload failed" in d.status_line()
        # metrics off again; the socket's mode and group change in place
        cfg.write_text(f'pools = ["{name}"]\n[control]\nsocket = "{sock2}"\nmode = 0o600\ngroup = "daemon"\n'
                       f'[policy]\nname = "lfu"\n')
        assert d.reload() is None and d.metrics is None
        st = os.stat(sock2)
        assert st.st_mode & 0o777 == 0o600 and st.st_gid == grp.getgrnam("daemon").gr_gid
        # the policy command, then a reload puts the configured policy back
        with pytest.raises(Exception, match="policy 'lru' takes no model"):  # (it was taken, and ignored)
            d.handle("policy", {"pool": name, "name": "lru", "model_dir": str(tmp_path)})
        assert d.handle("policy", {"pool": name, "name": "s3fifo"}) == {"pool": name, "policy": "s3fifo"}
        with pytest.raises(Exception, match="needs the future"):
            d.handle("policy", {"pool": name, "name": "opt"})
        assert att.driver.policy_name == "s3fifo"
        assert d.reload() is None and att.driver.policy_name == "lfu"
    finally:
        d.shutdown()
        app.destroy()
    assert n.sent[-1] == "STOPPING=1"
    assert not sock2.exists()


def test_pools_come_and_go_and_dead_apps_are_released(tmp_path: Path, restore_signals: None) -> None:
    name = f"recmgd-svc-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "c.sock"
    d, cfg, n = make(tmp_path, f'pools = ["{name}"]\n[control]\nsocket = "{sock}"\n[policy]\nname = "lru"\n')
    try:
        assert d.waiting_for() == [name] and "waiting for " + name in d.status_line()
        creator = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024, role="daemon")
        d._discover()
        assert name in d.pools and d.waiting_for() == []
        # an app attaches in a child and dies without detaching
        pid = os.fork()
        if pid == 0:
            try:
                p = pool_mod.Pool.attach(name)
                p.embedding_bag(0, np.arange(3), np.arange(3))
                p.end_batch()
                p.embedding_bag(0, np.arange(3, 6), np.arange(3))  # an unfinished batch
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        tracker = d.pools[name].tracker
        released = tracker.check()
        assert len(released) == 1 and tracker.exited == 1
        st = d.pools[name].driver.stats()
        assert st["rings_released"] == 1 and st["steps"] == 1 and st["lookups"] == 3  # the complete batch
        assert all(r.pid == 0 for r in creator.rings())
        assert d.handle("pools", {})[0]["apps"] == []
        # the pool goes away: detached
        creator.destroy()
        d._discover()
        assert d.pools == {} and d.waiting_for() == [name]
    finally:
        d.shutdown()


def test_stuck_rates_and_status(tmp_path: Path, restore_signals: None) -> None:
    sock = tmp_path / "s.sock"
    d, _, n = make(tmp_path, f'pools = ["recmgd-svc-none"]\n[control]\nsocket = "{sock}"\n'
                             '[policy]\nname = "lru"\n')
    try:
        t0 = time.monotonic()
        d.tick()
        d._update_rate(t0 + 1.0)
        line = d.status_line()
        assert line.startswith("0 pools; 0.00M lookups/s; hit rate -; lag ")
    finally:
        d.shutdown()


@register("daemon-test-broken")
class _Broken(Policy):
    """A policy whose step always fails (a bug in a policy)."""

    name = "daemon-test-broken"

    def reset(self, capacity: int) -> None:
        pass

    def observe(self, view: StepView) -> Decision:
        if view.step < 0:
            return Decision(admit=view.keys)
        raise RuntimeError("policy bug")


def test_a_failing_policy_detaches_only_its_pool(tmp_path: Path, restore_signals: None) -> None:
    bad, good = (f"recmgd-svc-{uuid.uuid4().hex[:8]}" for _ in range(2))
    apps = {n: pool_mod.Pool.create(n, tables=[(100, 4)], slots=10, ring_records=1024) for n in (bad, good)}
    sock = tmp_path / "e.sock"
    d, _, _ = make(tmp_path, f'pools = ["{bad}", "{good}"]\n[control]\nsocket = "{sock}"\n'
                             f'[policy]\nname = "lru"\n[pool.{bad}]\nname = "daemon-test-broken"\n')
    try:
        assert set(d.pools) == {bad, good}
        for app in apps.values():
            app.embedding_bag(0, np.arange(4), np.arange(4))
            app.end_batch()
        d.tick()
        assert set(d.pools) == {good} and d.pools[good].driver.stats()["fills"] == 4
        assert "policy bug" in d.handle("pools", {})[1]["error"]
        d._discover()
        assert bad not in d.pools  # not retried at once
        d._retry_after[bad] = 0.0
        d._discover()
        assert bad in d.pools  # attached again later
    finally:
        d.shutdown()
        for app in apps.values():
            app.destroy()


class _LockedPool:
    """A real pool whose writer calls find the writer lock held (what the timed lock reports)."""

    def __init__(self, pool: object) -> None:
        self._pool = pool

    def __getattr__(self, attr: str) -> object:
        return getattr(self._pool, attr)

    def _held(self, *args: object) -> int:
        raise PoolLockedError(f"pool {self._pool.name}: writer lock held by another process")

    fill_keys = evict_keys = _held


def test_a_pool_with_a_held_writer_lock_is_skipped_and_retried(tmp_path: Path,
                                                                restore_signals: None) -> None:
    stuck, good = (f"recmgd-svc-{uuid.uuid4().hex[:8]}" for _ in range(2))
    apps = {n: pool_mod.Pool.create(n, tables=[(100, 4)], slots=10, ring_records=1024) for n in (stuck, good)}
    sock = tmp_path / "k.sock"
    d, _, n = make(tmp_path, f'pools = ["{stuck}", "{good}"]\n[control]\nsocket = "{sock}"\n')
    try:
        drv = d.pools[stuck].driver
        drv.pool = drv.mover.pool = _LockedPool(drv.pool)  # the driver and its residency mover write
        for app in apps.values():
            app.embedding_bag(0, np.arange(4), np.arange(4))
            app.end_batch()
        d.tick()
        assert set(d.pools) == {good} and d.pools[good].driver.stats()["fills"] == 4
        st = d.handle("stats", {})["daemon"]["stuck"][stuck]
        assert "writer lock held" in st["error"] and st["tries"] == 1
        assert st["since"] <= time.time() + 0.001  # rounded to ms
        assert f"stuck: {stuck}" in d.status_line()
        from recmgd.daemon.metrics import StatsCollector

        fams = {f.name: f for f in StatsCollector(lambda: d.stats()).collect()}
        assert [s.labels["pool"] for s in fams["recmgd_pool_stuck_seconds"].samples] == [stuck]
        d._discover()
        assert stuck not in d.pools  # not retried at once
        d._retry_after[stuck] = 0.0
        d._discover()  # the lock is free (a real pool again): served, no longer stuck
        assert stuck in d.pools and not d.stats()["daemon"]["stuck"]
        apps[stuck].embedding_bag(0, np.arange(4), np.arange(4))
        apps[stuck].end_batch()
        d.tick()
        assert d.pools[stuck].driver.stats()["fills"] == 4
    finally:
        d.shutdown()
        for app in apps.values():
            app.destroy()


def test_pools_of_other_owners_are_skipped(tmp_path: Path, restore_signals: None) -> None:
    mine, theirs = (f"recmgd-svc-{uuid.uuid4().hex[:8]}" for _ in range(2))
    apps = {n: pool_mod.Pool.create(n, tables=[(100, 4)], slots=10, ring_records=1024)
            for n in (mine, theirs)}
    os.chown(f"/dev/shm/{theirs}", 65534, 65534)  # nobody:nogroup
    sock = tmp_path / "o.sock"
    body = f'pools = ["{mine}", "{theirs}"]\n[control]\nsocket = "{sock}"\n'
    d, cfg, _ = make(tmp_path, body)
    try:
        assert set(d.pools) == {mine}
        why = d.stats()["daemon"]["skipped"][theirs]
        assert why.startswith("owned by nobody:") and "serve_users" in why
        assert {"name": theirs, "waiting": True, "error": f"skipped: {why}"} in d.handle("pools", {})
        # served once its group is configured (a reload), skipped again when it is not
        nogroup = grp.getgrgid(65534).gr_name
        cfg.write_text(body.replace("[control]", f'serve_groups = ["{nogroup}"]\n[control]'))
        assert d.reload() is None
        assert set(d.pools) == {mine, theirs} and not d.stats()["daemon"]["skipped"]
        cfg.write_text(body)
        assert d.reload() is None
        assert set(d.pools) == {mine} and theirs in d.stats()["daemon"]["skipped"]
    finally:
        d.shutdown()
        for app in apps.values():
            app.destroy()


def test_a_non_root_daemon_serves_pools_shared_through_its_group() -> None:
    """The daemon as an unprivileged user (nobody:nogroup here, recmgd:recmgd when installed): a pool
    created with mode 0o660 and the daemon's group is served (no capability needed), root's own 0600
    pool is skipped, and the daemon cannot open it anyway."""
    import json

    shared, private = (f"recmgd-svc-{uuid.uuid4().hex[:8]}" for _ in range(2))
    pools = {shared: pool_mod.Pool.create(shared, tables=[(100, 4)], slots=10, ring_records=1024, mode=0o660),
             private: pool_mod.Pool.create(private, tables=[(100, 4)], slots=10, ring_records=1024)}
    os.chown(f"/dev/shm/{shared}", -1, 65534)  # the app (root here) gives the pool to the daemon's group
    run = Path(tempfile.mkdtemp(prefix="recmgd-nonroot-"))  # tmp_path's parents are root's 0700 dirs
    os.chmod(run, 0o777)
    cfg_path = run / "d.toml"
    cfg_path.write_text(f'pools = ["{shared}", "{private}"]\n[control]\nsocket = "{run}/c.sock"\n')
    for p in pools.values():
        p.embedding_bag(0, np.arange(4), np.arange(4))
        p.end_batch()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon, in a child that gives up root first
        out: dict = {}
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            d = Daemon(config.load(str(cfg_path)), str(cfg_path), notifier=RecordingNotifier())
            d.setup()
            d.tick()
            st = d.stats()
            out = {"pools": {n: p["fills"] for n, p in st["pools"].items()},
                   "skipped": st["daemon"]["skipped"]}
            d.shutdown()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as fh:
            res = json.loads(fh.read() or b"{}")
        os.waitpid(pid, 0)
    finally:
        for p in pools.values():
            p.destroy()
        shutil.rmtree(run, ignore_errors=True)
    assert "error" not in res, res
    assert res["pools"] == {shared: 4}, res
    assert res["skipped"][private].startswith("owned by root:root"), res


def test_a_pool_that_fails_to_attach_is_retried_later_and_later(tmp_path: Path, restore_signals: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """An object of 0 bytes (a creator that died between shm_open and ftruncate) named in `pools`: the
    attach does not wait for a creator, fails, and is tried again after a delay that doubles from
    app_check_interval up to ATTACH_RETRY_MAX (logged once); a new object of that name is attached at
    the next discovery."""
    from recmgd.shm import SHM_DIR

    name = f"recmgd-svc-{uuid.uuid4().hex[:8]}"
    path = Path(SHM_DIR) / name
    path.touch()
    sock = tmp_path / "b.sock"
    creator = None
    try:
        with caplog.at_level(logging.INFO, logger="recmgd.daemon.service"):
            d, _, _ = make(tmp_path, f'pools = ["{name}"]\napp_check_interval = 0.5\n'
                                     f'[control]\nsocket = "{sock}"\n[policy]\nname = "lru"\n')
            try:
                assert d.pools == {} and "too small for a header" in d.handle("pools", {})[0]["error"]
                delays = []
                for _ in range(8):
                    d._retry_after[name] = 0.0  # due now
                    t0 = time.monotonic()
                    d._discover()
                    took = time.monotonic() - t0
                    assert took < 1.0, took  # the C attach waits up to 2 s for a creator unless told not to
                    delays.append(round(d._retry_after[name] - t0, 1))
                assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]  # ATTACH_RETRY_MAX
                d._discover()  # not due: not tried
                assert d.pools == {}
                path.unlink()
                creator = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024)
                d._discover()  # a new object: tried now, attached; the delay starts over after a failure
                assert name in d.pools and name not in d._retry_after
            finally:
                d.shutdown()
        failures = [r for r in caplog.records if "cannot attach" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
    finally:
        path.unlink(missing_ok=True)
        if creator is not None:
            creator.destroy()


@register("daemon-test-counted")
class _Counted(Policy):
    """A policy that counts how many times it was made (a model load, for a learned one)."""

    name = "daemon-test-counted"
    made = 0

    def __init__(self, **options: object) -> None:
        type(self).made += 1

    def reset(self, capacity: int) -> None:
        pass

    def observe(self, view: StepView) -> Decision:
        return Decision(admit=view.keys)


def test_why_a_pool_is_not_driven_is_reported_and_retries_load_no_policy(tmp_path: Path,
                                                                          restore_signals: None) -> None:
    """pools = "all" and a pool of another layout version (a library upgrade): stats (JSON and recmgctl's
    text), `pools` and the metrics say it is not driven and why (only the log did, and stats said "no
    pools"); its retries make no policy (each one loaded the learned policy's checkpoint first, on the
    loop thread). A pool that attaches makes one. When the object goes, so does its error."""
    from pool_layout import HEADER

    from recmgd.daemon.metrics import StatsCollector
    from recmgd.shm import SHM_DIR

    name = f"recmgd-svc-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024)
    off, fmt = HEADER["version"]
    with open(Path(SHM_DIR) / name, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, 4))
    sock = tmp_path / "w.sock"
    _Counted.made = 0
    d, _, _ = make(tmp_path, f'pools = "all"\n[control]\nsocket = "{sock}"\n'
                             '[policy]\nname = "daemon-test-counted"\n')
    try:
        made = _Counted.made  # (pools = "all": other pools on this machine may have been attached)
        for _ in range(3):
            d._retry_after[name] = 0.0
            d._discover()
        assert name not in d.pools and _Counted.made == made
        st = d.stats()["daemon"]
        assert name in st["waiting_for"] and "layout version 4" in st["attach_errors"][name], st
        assert "layout version 4" in next(p for p in d.handle("pools", {}) if p["name"] == name)["error"]
        assert f"pool {name}: not attached: " in format_stats(d.stats())
        samples = {(m.name, tuple(s.labels.values())): s.value
                   for m in StatsCollector(d.stats).collect() for s in m.samples}
        assert samples[("recmgd_pool_waiting", (name,))] == 1.0
        with open(Path(SHM_DIR) / name, "r+b") as f:  # the library upgraded back, so to speak
            f.seek(off)
            f.write(struct.pack(fmt, 5))
        d._retry_after[name] = 0.0
        d._discover()
        assert name in d.pools and _Counted.made == made + 1
        assert name not in d.stats()["daemon"]["attach_errors"]
    finally:
        d.shutdown()
        app.destroy()
    d2, _, _ = make(tmp_path, f'pools = "all"\n[control]\nsocket = "{tmp_path / "w2.sock"}"\n'
                              '[policy]\nname = "daemon-test-counted"\n')
    try:
        assert name not in d2.stats()["daemon"]["attach_errors"]
    finally:
        d2.shutdown()


def test_the_drop_warning_counts_drops_since_the_daemon_attached(tmp_path: Path, restore_signals: None,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    name = f"recmgd-svc-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(1000, 4)], slots=10, ring_records=1024)
    rows = np.arange(1000, dtype=np.int64)
    sock = tmp_path / "w.sock"
    try:
        for _ in range(5):  # 5005 records into a ring of 1024 nobody drains: drops before the daemon
            app.embedding_bag(0, rows, rows)
            app.end_batch()
        before = app.counters()["processes"][0]["ring_drops"]
        assert before > 0
        d, _, _ = make(tmp_path, f'pools = ["{name}"]\n[control]\nsocket = "{sock}"\n'
                                 '[policy]\nname = "lru"\n')
        try:
            with caplog.at_level(logging.WARNING, logger="recmgd.daemon.service"):
                d.tick()
                d._check_drops(time.monotonic() + 100)
                assert not [r for r in caplog.records if "dropped" in r.getMessage()]
                for _ in range(3):  # drops while the daemon runs
                    app.embedding_bag(0, rows, rows)
                    app.end_batch()
                d.tick()
                d._check_drops(time.monotonic() + 200)
            since = app.counters()["processes"][0]["ring_drops"] - before
            assert since > 0 and d.pools[name].driver.stats()["ring_drops"] == before + since
            (warning,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
            assert f"apps dropped {since} ring records since the daemon attached the pool" in warning
        finally:
            d.shutdown()
    finally:
        app.destroy()


def test_reload_keeps_a_retraining_pool_waiting_for_its_first_model(tmp_path: Path,
                                                                   restore_signals: None) -> None:
    """A pool that retrains (retrain_every) and has no checkpoint yet runs LRU until its first retrain;
    a reload of the unchanged configuration keeps it so, and a `recmgctl policy` switch of it is undone
    by a reload the same way. (Every reload failed: the LRU it ran looked like a switch, and reverting
    it asked for a recmg-cache model that does not exist yet.)"""
    name = f"recmgd-svc-rt-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024)
    body = (f'pools = ["{name}"]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[control]\nsocket = "{tmp_path / "s"}"\n'
            f'[policy]\nname = "recmg-cache"\nretrain_every = 1000000\n')
    d, cfg, n = make(tmp_path, body)
    try:
        att = d.pools[name]
        assert att.driver.policy_name == "lru"
        assert d.reload() is None and att.driver.policy_name == "lru"
        d.handle("policy", {"pool": name, "name": "lfu"})
        assert att.driver.policy_name == "lfu"
        assert d.reload() is None and att.driver.policy_name == "lru"
    finally:
        d.shutdown()
        app.destroy()


def test_a_pool_bumping_its_repairs_is_attached_again_at_most_so_often(tmp_path: Path,
                                                                       restore_signals: None) -> None:
    """The repairs count lives in the pool's shared memory: an app bumping it at every check would make
    the daemon attach the pool again at every check (a checkpoint loaded again, the index scanned). A
    move is acted on at once, then at most once in REPAIR_RESYNC_MIN."""
    import struct

    from pool_layout import REPAIRS

    from recmgd.daemon import service

    name = f"recmgd-svc-rp-{uuid.uuid4().hex[:8]}"
    app = pool_mod.Pool.create(name, tables=[(100, 4)], slots=10, ring_records=1024)
    d, _, _ = make(tmp_path, f'pools = ["{name}"]\n[control]\nsocket = "{tmp_path / "s"}"\n')

    def bump() -> None:
        off, fmt = REPAIRS
        with open(f"/dev/shm/{name}", "r+b") as f:
            f.seek(off)
            (n,) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
            f.seek(off)
            f.write(struct.pack(fmt, n + 1))

    try:
        first = d.pools[name]
        d._check_repairs(first)
        assert d.pools[name] is first  # nothing moved
        bump()
        d._check_repairs(first)
        d._discover()
        second = d.pools[name]
        assert second is not first and second.repairs == app.repairs() == 1  # attached again at once
        bump()
        d._check_repairs(second)
        d._discover()
        assert d.pools[name] is second  # not again so soon
        d._resynced[name] -= service.REPAIR_RESYNC_MIN
        d._check_repairs(second)
        d._discover()
        assert d.pools[name] is not second and d.pools[name].repairs == 2
    finally:
        d.shutdown()
        app.destroy()


def _busy_port() -> tuple[socket.socket, int]:
    """A loopback port something listens on (the metrics listener cannot have it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, int(s.getsockname()[1])


def test_a_failed_start_leaves_no_control_socket(tmp_path: Path, restore_signals: None) -> None:
    """The metrics address is taken: setup fails with its one line, and the control socket it had opened
    is gone, with the directories it made for it; the same configuration starts once the port is free
    (a clean stop removes the same)."""
    held, port = _busy_port()
    sock = tmp_path / "run" / "sub" / "c.sock"
    cfg_path = tmp_path / "d.toml"
    cfg_path.write_text(f'pools = ["nothing-here"]\n[control]\nsocket = "{sock}"\n'
                        f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    d = Daemon(config.load(str(cfg_path)), str(cfg_path), notifier=RecordingNotifier())
    try:
        with pytest.raises(RecmgError, match=rf"^metrics: cannot listen on 127\.0\.0\.1:{port}: "):
            d.setup()
    finally:
        held.close()
    assert not (tmp_path / "run").exists() and d.control is None
    d = Daemon(config.load(str(cfg_path)), str(cfg_path), notifier=RecordingNotifier())
    d.setup()
    try:
        assert sock.exists()
    finally:
        d.shutdown()
    assert not (tmp_path / "run").exists()


def test_recmgd_that_cannot_start_removes_its_socket(tmp_path: Path) -> None:
    """The audit's case, as the process runs: `recmgd --foreground` whose metrics port is in use exits 1
    with the one line, and leaves no control socket (a stale one stayed)."""
    from test_daemon_plugin import daemon_env

    held, port = _busy_port()
    (tmp_path / "d").mkdir()
    sock = tmp_path / "d" / "c.sock"
    cfg = tmp_path / "x.toml"
    cfg.write_text(f'pools = ["x"]\n[control]\nsocket = "{sock}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg),
                            "--foreground"], capture_output=True, text=True, env=daemon_env(), timeout=120)
    finally:
        held.close()
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("recmgd: error:")]
    assert errors == [f"recmgd: error: metrics: cannot listen on 127.0.0.1:{port}: Address already in use"], \
        r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path / "d") == []  # the directory it did not make stays


def test_a_control_socket_whose_group_cannot_be_set_is_not_left(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ControlServer.open binds, then sets the group: when that fails (a group the daemon's user is
    not in), the socket file it bound and the directories it made are removed."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", refuse)
    sock = tmp_path / "a" / "b" / "c.sock"
    srv = ControlServer(str(sock), 0o660, lambda cmd, args: None, group="daemon")
    with pytest.raises(RecmgError, match="cannot set group 'daemon'"):
        srv.open()
    assert not (tmp_path / "a").exists()
    srv.close()


def test_a_control_socket_folder_made_part_way_is_removed(tmp_path: Path) -> None:
    """A socket path whose folders can be made only part way (a name too long for the file system):
    the one-line error, and the folders it did make are removed. (The removal stopped at the first
    folder it had not made, and left the outer ones.)"""
    sock = tmp_path / "made" / ("x" * 300) / "c.sock"
    srv = ControlServer(str(sock), 0o660, lambda cmd, args: None)
    with pytest.raises(RecmgError, match="cannot create"):
        srv.open()
    assert os.listdir(tmp_path) == []
    srv.close()
