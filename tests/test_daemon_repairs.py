"""A writer killed in the middle of write_rows (in its last row's window, half of that row's slow row
written, its copy not), under a real daemon: every row is read new, the one it died in from where
write_rows staged it; at its next app check the daemon repairs the dead writer's lock (``Pool.repair``),
which finishes that row and drops the copies of the table being written (the header names it), so every
read stays the same; the repair
counts itself (``Pool.repairs``), and the daemon, seeing the count move, attaches the pool again so that
what it believes resident is what the fast tier holds. (The stale copies stayed for good.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from test_daemon_app import DIM, create_pool
from test_daemon_live import config, wait_until
from test_daemon_plugin import start_daemon, stop_daemon, wait_socket

from recmgd.daemon.control import request

ROWS, SLOTS = 400, 200

KILLED_WRITER = """
import os, sys
import numpy as np
from recmgd.pool import Pool
p = Pool.attach(sys.argv[1])
os.environ["RECMG_FAULT_KILL_IN_WRITE"] = "1"
p.write_rows(0, np.arange(20), np.full((20, int(sys.argv[2])), 7.0, dtype=np.float32))
"""


def test_a_dead_writers_rows_are_known_gone(tmp_path: Path) -> None:
    name = f"recmgd-repair-{uuid.uuid4().hex[:8]}"
    owner = create_pool(name, [ROWS], slots=SLOTS, ring_records=65536)
    sock = tmp_path / "ctl.sock"
    d = start_daemon(config(tmp_path / "d.toml", sock, [name]))
    try:
        wait_socket(sock, d, timeout=60)
        wait_until(lambda: name in request(str(sock), "stats")["pools"], timeout=60, what="attached")

        def read(rows: np.ndarray) -> np.ndarray:
            out = owner.embedding_bag(0, rows, np.arange(len(rows)))
            owner.end_batch()
            return out.numpy()

        hot = np.arange(100)  # (fits the fast tier: LRU keeps all of them)
        wait_until(lambda: read(hot) is not None and request(str(sock), "stats")["pools"][name]["resident"]
                   >= 100, timeout=60, what="the hot rows resident")
        assert set(range(20)) <= {int(k) for k in owner.resident_keys()}
        child = subprocess.run([sys.executable, "-c", KILLED_WRITER, name, str(DIM)], timeout=60)
        assert child.returncode == -signal.SIGKILL
        seven = np.full((20, DIM), 7.0, dtype=np.float32)
        # it died inside its last row's window: every row is read new, the one it died in (half written in
        # the slow tier, its copy older) from where write_rows staged it
        np.testing.assert_array_equal(read(np.arange(20)), seven)
        # the daemon's next app check repairs the dead writer's lock: the row it died in finished, the
        # window closed, the table's copies dropped, and the reads stay the same
        wait_until(lambda: owner.repairs() >= 1, timeout=60, what="the dead writer's lock repaired")
        np.testing.assert_array_equal(read(np.arange(20)), seven)

        def agrees() -> bool:  # the daemon's record against the fast tier, with some traffic (writes)
            read(np.arange(100, 140))
            st = request(str(sock), "stats")["pools"].get(name)
            return st is not None and st["resident"] == len(owner.resident_keys())

        wait_until(agrees, timeout=60, what="the daemon's record of resident rows rebuilt")
        assert owner.repairs() >= 1
        rc, err = stop_daemon(d, timeout=30)
        assert rc == 0, err
        assert "attached again to rebuild what it knows" in err
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
        owner.destroy()
