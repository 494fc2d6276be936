"""The daemon with real pools and real app processes.

- deterministic step mode: an app replays a shared trace through a pool while the daemon runs LRU; the
  daemon's on-demand fetches (and the pool's own count of the app's slow-tier reads) equal the
  simulator's for the same steps, policy and capacity.
- failures: an app SIGKILLed (ring released, others unaffected), the daemon SIGKILLed and restarted
  (apps keep returning correct rows; the new daemon goes on from the fast tier's contents), a full ring
  (drops counted, the app never blocks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from ports import free_port
from test_daemon_plugin import TESTS, daemon_env, shut_down, start_daemon, stop_daemon, wait_socket

from recmgd.daemon.control import request

OBD = "obd_random.trace"
AMAZON = "amazon_video.trace"


def app(*args: str) -> subprocess.Popen:
    env = daemon_env()
    return subprocess.Popen([sys.executable, "-m", "test_daemon_app", *args], env=env, cwd=str(TESTS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def config(path: Path, sock: Path, pools: list[str], policy: str = "lru", extra: str = "",
           metrics: str = "") -> Path:
    path.write_text(f"pools = {json.dumps(pools)}\ninterval = 0.001\napp_check_interval = 0.1\n"
                    f"status_interval = 0.5\n{extra}\n[control]\nsocket = \"{sock}\"\n"
                    f"[metrics]\nlisten = \"{metrics}\"\n[policy]\nname = \"{policy}\"\n")
    return path


def sim_on_demand(batches: list[list[tuple[int, np.ndarray]]], capacity: int, policy: str) -> int:
    """The simulator (python API, allowed in tests) on the steps the app produces."""
    from recmgd import policy as policy_mod
    from recmgd.sim import drive
    from recmgd.trace.steps import build_steps

    keys = []
    offsets = [0]
    for batch in batches:
        for t, rows in batch:
            keys.append((np.int64(t) << 40) | rows)
        offsets.append(offsets[-1] + sum(len(r) for _, r in batch))
    steps = build_steps(np.concatenate(keys), np.array(offsets, dtype=np.int64), 1)
    return drive(policy_mod.create(policy), steps, capacity, 0).on_demand


def unique_keys(batches: list[list[tuple[int, np.ndarray]]]) -> int:
    return len({(t, int(r)) for b in batches for t, rows in b for r in rows})


@pytest.mark.parametrize("trace_name,batch,limit,fraction", [
    (OBD, 16, 0, 0.1),
    (AMAZON, 32, 30_000, 0.05),
])
def test_step_mode_matches_simulator(tmp_path: Path, shared_traces: Path, trace_name: str, batch: int,
                                     limit: int, fraction: float) -> None:
    from test_daemon_app import trace_batches

    from recmgd.sim import capacity_for

    trace = shared_traces / trace_name
    batches, _ = trace_batches(str(trace), batch, limit)
    capacity = capacity_for(fraction, unique_keys(batches))
    expected = sim_on_demand(batches, capacity, "lru")

    name = f"recmgd-test-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    cfg = config(tmp_path / "d.toml", sock, [name], extra="step_mode = true")
    d = start_daemon(cfg)
    a = None
    try:
        wait_socket(sock, d, timeout=60)
        a = app("replay", "--pool", name, "--trace", str(trace), "--batch", str(batch), "--limit", str(limit),
                "--create", "--slots", str(capacity), "--socket", str(sock))
        out, err = a.communicate(timeout=300)
        assert a.returncode == 0, err
        res = json.loads(out.strip().splitlines()[-1])
        st = pstats(sock, name)
    finally:
        rc, derr = shut_down(d, name)
    assert rc == 0, derr
    assert res["wrong"] == 0
    assert st["steps"] == len(batches) == res["batches"]
    assert st["step_mode"] and st["policy"] == "lru" and st["capacity"] == capacity
    # the daemon's count, the app's own count (pool counters) and the simulator's agree
    assert st["on_demand"] == expected, (st["on_demand"], expected)
    assert res["process"]["on_demand"] == expected
    assert st["app"]["on_demand"] == expected and st["app"]["unique"] == st["unique"]
    assert st["hits"] + st["on_demand"] == st["unique"] == res["process"]["unique"]
    assert st["resident"] == res["resident"] <= capacity
    assert st["ring_drops"] == 0 and st["bad_records"] == 0


def pstats(sock: Path, name: str) -> dict:
    return request(str(sock), "stats")["pools"][name]


def progress(path: Path, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    raise AssertionError(f"no progress in {path}")


def wait_progress(path: Path, beyond: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = progress(path)
        if p["lookups"] > beyond:
            return p
        time.sleep(0.05)
    raise AssertionError(f"app made no progress beyond {beyond}")


def wait_until(fn, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_apps_die_daemon_dies_and_comes_back(tmp_path: Path) -> None:
    from test_daemon_app import create_pool

    name = f"recmgd-test-{uuid.uuid4().hex[:8]}"
    owner = create_pool(name, [5000, 3000], slots=600, ring_records=65536)  # the creator takes ring 0
    sock = tmp_path / "ctl.sock"
    port = free_port()
    cfg = config(tmp_path / "d.toml", sock, [name], metrics=f"127.0.0.1:{port}")
    d = start_daemon(cfg)
    apps: list[subprocess.Popen] = []
    try:
        wait_socket(sock, d, timeout=60)
        pa, pb = tmp_path / "a.json", tmp_path / "b.json"
        apps.append(app("loop", "--pool", name, "--seed", "1", "--progress", str(pa), "--sleep", "0.002"))
        apps.append(app("loop", "--pool", name, "--seed", "2", "--progress", str(pb), "--sleep", "0.002"))
        wait_progress(pa, 0, timeout=60)
        wait_progress(pb, 0, timeout=60)
        wait_until(lambda: len(request(str(sock), "pools")[0]["apps"]) == 3, what="both apps seen")
        st = wait_until(lambda: (s := pstats(sock, name))["hits"] > 0 and s,
                        what="the daemon to fill rows")
        assert st["resident"] <= 600 and st["fills"] > 0

        # the pools command, the metrics endpoint
        pools = request(str(sock), "pools")
        assert sorted(x["pid"] for x in pools[0]["apps"]) == sorted([os.getpid(), apps[0].pid, apps[1].pid])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert f'recmgd_lookups_total{{pool="{name}",table="0"}}' in text
        assert f'recmgd_resident_rows{{pool="{name}"}}' in text
        assert f'recmgd_app_on_demand_total{{pool="{name}"}}' in text
        assert f'recmgd_early_admissions_total{{pool="{name}"}}' in text

        # app A is SIGKILLed: its ring is released, B goes on unharmed
        apps[0].kill()
        apps[0].wait()
        st = wait_until(lambda: (s := pstats(sock, name))["rings_released"] >= 1 and s,
                        what="the dead app's ring to be released")
        assert st["apps"] == 2
        free = [r for r in owner.rings() if r.pid == apps[0].pid]
        assert free == []
        before = progress(pb)["lookups"]
        wait_progress(pb, before + 1000)

        # pause: rows stop moving; resume; switch the policy (the fast tier's contents carry over)
        request(str(sock), "pause", {"pool": name})
        f0 = pstats(sock, name)["fills"]
        time.sleep(0.3)
        st = pstats(sock, name)
        assert st["paused"] and st["fills"] == f0 and st["lookups"] > 0
        request(str(sock), "resume", {"pool": name})
        res = request(str(sock), "policy", {"pool": name, "name": "lfu"})
        assert res == {"pool": name, "policy": "lfu"}
        wait_until(lambda: pstats(sock, name)["fills"] > f0, what="fills after resume")

        # the daemon is SIGKILLed while B runs: B keeps getting correct rows from the slow tier. Paused
        # first, so that no fill lands between the snapshot of the fast tier and the kill
        request(str(sock), "pause", {"pool": name})
        f1 = pstats(sock, name)["fills"]
        time.sleep(0.3)
        assert pstats(sock, name)["fills"] == f1
        resident_before = set(owner.resident_keys().tolist())
        assert resident_before
        d.kill()
        d.wait()
        before = progress(pb)["lookups"]
        p = wait_progress(pb, before + 2000)
        assert p["wrong"] == 0
        assert set(owner.resident_keys().tolist()) == resident_before  # nobody touched the fast tier

        # a restarted daemon (stale control socket left behind) attaches and goes on from the fast tier
        d = start_daemon(cfg)
        wait_socket(sock, d, timeout=60)
        st = wait_until(lambda: request(str(sock), "stats")["pools"].get(name), what="re-attach")
        assert st["adopted"] == len(resident_before) and st["adopt_evicted"] == 0  # LRU took them all over
        before = pstats(sock, name)["lookups"]
        wait_until(lambda: pstats(sock, name)["lookups"] > before + 1000,
                   what="the new daemon to follow the app")
        apps[1].send_signal(signal.SIGTERM)
        out, err = apps[1].communicate(timeout=30)
        res = json.loads(out.strip().splitlines()[-1])
        assert res["wrong"] == 0 and res["lookups"] > 0, err
        # never blocked: no single lookup waited on the dead daemon (a stall would last until the kill)
        assert res["max_call_s"] < 5.0
    finally:
        for a in apps:
            if a.poll() is None:
                a.kill()
                a.wait()
        rc, derr = stop_daemon(d)
        owner.destroy()
    assert rc == 0, derr


def test_full_ring_drops_and_never_blocks(tmp_path: Path) -> None:
    from test_daemon_app import create_pool

    name = f"recmgd-test-{uuid.uuid4().hex[:8]}"
    pool = create_pool(name, [1000], slots=100, ring_records=1024)
    try:
        rows = np.arange(1000, dtype=np.int64) % 1000
        t0 = time.perf_counter()
        for _ in range(20):  # 20k lookups into a 1024-record ring nobody drains
            pool.embedding_bag(0, rows, np.arange(1000, dtype=np.int64))
            pool.end_batch()
        elapsed = time.perf_counter() - t0
        drops = pool.counters()["processes"][0]["ring_drops"]
        assert drops >= 20 * 1001 - 1024
        assert elapsed < 5.0
        # the daemon reports the drops and drives the pool from what arrives
        sock = tmp_path / "ctl.sock"
        d = start_daemon(config(tmp_path / "d.toml", sock, [name]))
        try:
            wait_socket(sock, d, timeout=60)
            st = wait_until(lambda: request(str(sock), "stats")["pools"].get(name), what="attach")
            for _ in range(5):
                pool.embedding_bag(0, rows[:100], np.arange(100, dtype=np.int64))
                pool.end_batch()
            st = wait_until(lambda: (s := pstats(sock, name))["batches"] >= 5 and s,
                            what="batches")
            assert st["ring_drops"] == drops
        finally:
            rc, derr = stop_daemon(d)
        assert rc == 0, derr
    finally:
        pool.destroy()


def test_discover_pools_finds_pools() -> None:
    from test_daemon_app import create_pool

    from recmgd.daemon.apps import discover_pools

    name = f"recmgd-test-{uuid.uuid4().hex[:8]}"
    pool = create_pool(name, [10], slots=2, ring_records=1024)
    try:
        assert name in discover_pools(None)
        assert discover_pools([name, "recmgd-test-none"]) == [name]
    finally:
        pool.destroy()
    assert name not in discover_pools(None)


