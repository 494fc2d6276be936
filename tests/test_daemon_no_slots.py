"""A pool with no fast-tier slots (a "no-cache" pool: every row read from the slow tier) beside a normal
one, with a real daemon process: the daemon skips it with one line at INFO (no error, no attach retried
in a loop), `recmgctl stats` shows it skipped with the reason, the normal pool is served, and a new
object of the name is looked at again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from test_daemon_app import check, create_pool, wait_steps
from test_daemon_live import config, wait_until
from test_daemon_plugin import start_daemon, stop_daemon, wait_socket
from test_record_outputs import recmgctl, wait_attached

from recmgd.daemon.control import request

REASON = "no fast-tier slots: nothing to manage"


def test_a_pool_without_slots_is_skipped_once_and_the_pool_beside_it_served(tmp_path: Path) -> None:
    normal, nocache = (f"recmgd-noslot-{uuid.uuid4().hex[:8]}" for _ in range(2))
    sock = tmp_path / "ctl.sock"
    pools = {normal: create_pool(normal, [500], 32, 1 << 14)}
    try:
        pools[nocache] = create_pool(nocache, [500], 0, 1 << 14)
    except BaseException:
        pools[normal].destroy()
        raise
    proc = start_daemon(config(tmp_path / "d.toml", sock, [normal, nocache], extra='log_level = "debug"'))
    rng = np.random.default_rng(0)
    try:
        wait_socket(sock, proc, timeout=60)
        wait_attached(sock, normal)
        wait_until(lambda: nocache in request(str(sock), "stats")["daemon"]["skipped"], what="the skip")
        for _ in range(20):  # apps on both pools read right rows (the no-cache one from its slow tier)
            for p in pools.values():
                assert check(p, 0, rng.integers(0, 40, 16)) == 0
                p.end_batch()
        wait_steps(str(sock), normal, 20)
        time.sleep(1.0)  # ten discoveries (app_check_interval 0.1 s): the skipped pool is not tried again
        st = request(str(sock), "stats")
        assert st["daemon"]["skipped"] == {nocache: REASON}
        assert set(st["pools"]) == {normal}
        served = st["pools"][normal]
        assert served["steps"] >= 20 and served["resident"] > 0 and served["hits"] > 0
        out, err = recmgctl(sock, "stats").communicate(timeout=60)
        assert f"pool {nocache}: skipped: {REASON}" in out.splitlines(), (out, err)
        assert f"pool {normal}: policy lru" in out
        # a new object of the name is looked at again: this one has slots, so it is served
        pools.pop(nocache).destroy()
        pools[nocache] = create_pool(nocache, [500], 8, 1 << 14)
        wait_attached(sock, nocache)
        assert request(str(sock), "stats")["daemon"]["skipped"] == {}
    finally:
        rc, derr = stop_daemon(proc)
        for p in pools.values():
            p.destroy()
    assert rc == 0, derr
    lines = [line for line in derr.splitlines() if nocache in line]
    said = [line for line in lines if "has no fast-tier slots: nothing to manage" in line]
    assert len(said) == 1 and " INFO recmgd.daemon.service: " in said[0], lines
    assert not [line for line in lines if " ERROR " in line or " WARNING " in line or "cannot" in line], lines
    # attached twice in all: once found without slots (then never again), once the new object with slots
    assert sum(f"attached pool {nocache} as daemon" in line for line in lines) == 2, lines
