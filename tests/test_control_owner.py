"""Pool commands are the pool owner's: a member of the control socket's group reads every pool's stats,
but only a pool's owner (the uid owning its object), root and the daemon's own user may record its
lookups, pause or resume it, switch its policy (from a model folder of the client's own) or retrain it,
and only root and the daemon's user may reload. The client's uid is the kernel's
(SO_PEERCRED). (Any member could record another user's lookup stream.) Needs root: the clients run as
nobody, the daemon serves nobody's pools too."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from nobody import as_nobody
from test_daemon_live import wait_until
from test_daemon_plugin import start_daemon, stop_daemon, wait_socket

from recmgd.daemon.control import request
from recmgd.pool import Pool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (clients run as the nobody user)")


def _ask(sock: Path, cmd: str, args: dict) -> str:
    """One request over the socket; the answer line (the client's own code: no recmgd import needed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(json.dumps({"version": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode().strip()


def test_only_a_pools_owner_steers_it(tmp_path: Path) -> None:
    root_pool, own_pool = (f"recmgd-own-{k}-{uuid.uuid4().hex[:8]}" for k in ("root", "nobody"))
    sockdir = Path(tempfile.mkdtemp(prefix="recmgd-owner-"))  # (nobody cannot enter pytest's tmp_path)
    os.chmod(sockdir, 0o755)
    sock = sockdir / "ctl.sock"
    cfg = tmp_path / "d.toml"
    cfg.write_text(f"pools = {json.dumps([root_pool, own_pool])}\ninterval = 0.001\n"
                   f"app_check_interval = 0.1\nserve_users = [\"nobody\"]\n"
                   f"[control]\nsocket = \"{sock}\"\nmode = \"0666\"\n"
                   f"[policy]\nname = \"lru\"\n")
    pools = [Pool.create(root_pool, tables=[(1000, 16)], slots=100)]

    def make_own() -> str:
        Pool.create(own_pool, tables=[(1000, 16)], slots=100, mode=0o666).close()
        return "made"

    d = start_daemon(cfg)
    try:
        assert as_nobody(make_own) == "made"
        wait_socket(sock, d, timeout=60)
        wait_until(lambda: set(request(str(sock), "stats")["pools"]) == {root_pool, own_pool}, timeout=60,
                   what="both pools attached")
        # nobody: the stats of every pool; its own pool steered; root's refused, in one line
        stats = json.loads(as_nobody(lambda: _ask(sock, "stats", {})))
        assert stats["ok"] and set(stats["result"]["pools"]) == {root_pool, own_pool}
        for cmd, args in (("pause", {}), ("resume", {}), ("policy", {"name": "lfu"}),
                          ("record", {"action": "status"})):
            ask = {"pool": root_pool, **args}
            a = json.loads(as_nobody(lambda cmd=cmd, ask=ask: _ask(sock, cmd, ask)))
            assert not a["ok"] and "only its owner (uid 0), root or the daemon's user" in a["error"], (cmd, a)
            assert f"you are uid {pwd.getpwnam('nobody').pw_uid}" in a["error"]
        a = json.loads(as_nobody(lambda: _ask(sock, "pause", {"pool": own_pool})))
        assert a["ok"] and a["result"]["paused"] is True
        # a reload (which would undo every owner's policy switch) is the admin's; and a checkpoint the
        # daemon loads for nobody's pool must be a folder of nobody's (root's /etc is not)
        a = json.loads(as_nobody(lambda: _ask(sock, "reload", {})))
        assert not a["ok"] and "only root or the daemon's user may reload" in a["error"], a
        a = json.loads(as_nobody(lambda: _ask(sock, "policy", {"pool": own_pool, "name": "recmg-cache",
                                                                 "model_dir": "/etc"})))
        assert not a["ok"] and "/etc must be a directory of yours" in a["error"], a
        a = json.loads(as_nobody(lambda: _ask(sock, "policy", {"pool": own_pool, "name": "lfu"})))
        assert a["ok"], a
        # root steers any pool; nothing nobody asked of root's pool happened
        pools_now = {p["name"]: p for p in request(str(sock), "pools")}
        assert pools_now[root_pool]["paused"] is False and pools_now[root_pool]["policy"] == "lru"
        assert pools_now[own_pool]["paused"] is True and pools_now[own_pool]["policy"] == "lfu"
        assert request(str(sock), "pause", {"pool": own_pool})["paused"] is True
        assert request(str(sock), "pause", {"pool": root_pool})["paused"] is True
        pools[0].embedding_bag(0, np.arange(4), np.arange(4))
        rc, err = stop_daemon(d, timeout=30)
        assert rc == 0, err
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
        for p in pools:
            p.destroy()
        Path(f"/dev/shm/{own_pool}").unlink(missing_ok=True)
        shutil.rmtree(sockdir, ignore_errors=True)
