"""The guest side of tests/test_vm_systemd.py: run in the NUMA test VM with systemd as PID 1, by the boot's
oneshot test unit (tools/numa_vm.py run_systemd). It starts the installed recmg-hugepages.service (the
remount of /dev/shm with huge=advise), drives the installed recmgd.service with systemctl, runs an app
process against it, stops both units, and prints one JSON report; the host test asserts on it.

    python tests/vm_systemd_guest.py run           # the whole sequence (the test unit's command)
    python tests/vm_systemd_guest.py app POOL      # the app: a numa:1 pool, rows, lookups

The app creates a pool with its slow tier on node 1, writes rows of known values and looks up the same
hot rows batch after batch until recmgd has filled them into the fast tier (a batch of all hits),
checking every row it reads; it stays attached until the daemon has drained its access ring. It looks up
through librecmg's recmg_embedding_bag with a numpy output buffer, the call Pool.embedding_bag makes,
because torch (which Pool.embedding_bag returns) takes about 85 s to import in the emulated guest. It
leaves the pool in place for the daemon.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
POOL = "vm_systemd_app"
UNIT = "recmgd"
HUGE_UNIT = "recmg-hugepages"
SYSUSERS = "/usr/lib/sysusers.d/recmgd.conf"
TMPFILES = "/usr/lib/tmpfiles.d/recmgd.conf"
ROWS, DIM, SLOTS = 2000, 32, 256
HOT = 64  # rows looked up in every batch
MIN_BATCHES = 3
APP_DEADLINE = 120.0  # seconds for the daemon to fill the hot rows
STATS_DEADLINE = 60.0  # seconds for the daemon's counters to take in every lookup of the app
PROPS = ("ActiveState", "SubState", "Result", "StatusText", "MainPID", "ExecMainStatus", "ExecMainCode",
         "NRestarts", "Type", "WatchdogUSec")


def value(row: Any, col: Any) -> Any:
    return row + col / 64.0


def app(name: str) -> dict[str, Any]:
    import numpy as np
    from recmgd._native import ffi, lib

    from recmgd.pool import Pool

    pool = Pool.create(name, tables=[(ROWS, DIM)], slots=SLOTS, slow="numa:1", threads=1, mode=0o660)
    # shared with the daemon (user recmgd) through its group, as README.md's Security section says
    os.chown(f"/dev/shm/{name}", -1, grp.getgrnam("recmgd").gr_gid)
    r = np.arange(ROWS)
    pool.write_rows(0, r, value(r[:, None].astype(np.float64), np.arange(DIM)[None, :]))
    ids = np.arange(0, ROWS, ROWS // HOT, dtype=np.int64)[:HOT]
    offsets = np.arange(len(ids) + 1, dtype=np.int64)
    want = value(ids[:, None].astype(np.float64), np.arange(DIM)[None, :]).astype(np.float32)
    out = np.empty((len(ids), DIM), dtype=np.float32)
    batches = wrong = 0
    hits: list[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < APP_DEADLINE:
        before = pool.stats()["process"]["hits"]
        rc = lib.recmg_embedding_bag(pool._handle, 0, ffi.from_buffer("int64_t[]", ids), len(ids),
                                     ffi.from_buffer("int64_t[]", offsets), len(ids), 0, ffi.NULL,
                                     ffi.from_buffer("float[]", out))
        if rc:
            raise RuntimeError(f"recmg_embedding_bag failed: {rc}")
        pool.end_batch()
        batches += 1
        wrong += int((out != want).sum())
        hits.append(pool.stats()["process"]["hits"] - before)
        if batches >= MIN_BATCHES and hits[-1] == len(ids):
            break
        time.sleep(0.2)
    # stay attached until the daemon has drained this app's ring, as a long-running app would be
    ring = pool.ring_index
    while pool.rings()[ring].waiting and time.monotonic() - t0 < APP_DEADLINE:
        time.sleep(0.2)
    waiting = pool.rings()[ring].waiting
    proc = pool.stats()["process"]
    nodes = sorted(set(np.asarray(pool.slow_nodes(0, r)).tolist()))
    pool.close()
    return {"batches": batches, "lookups": batches * len(ids), "wrong": wrong, "hits": hits,
            "waiting": waiting, "process": proc, "slow_nodes": nodes,
            "seconds": round(time.monotonic() - t0, 2)}


def sh(argv: list[str], timeout: float = 120.0) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -9, str(exc.stdout or ""), f"timed out after {timeout} s"
    return {"argv": argv, "rc": rc, "out": out, "err": err, "seconds": round(time.monotonic() - t0, 2)}


def show() -> dict[str, str]:
    r = sh(["systemctl", "show", UNIT, *(f"--property={p}" for p in PROPS)])
    props = dict(line.split("=", 1) for line in r["out"].splitlines() if "=" in line)
    return props


def stats() -> dict[str, Any]:
    r = sh(["recmgctl", "stats", "--json"])
    try:
        return {"rc": r["rc"], "json": json.loads(r["out"]) if r["rc"] == 0 else None, "err": r["err"]}
    except json.JSONDecodeError:
        return {"rc": r["rc"], "json": None, "err": r["err"] + " (not JSON: " + r["out"][:200] + ")"}


def main_process(pid: str) -> dict[str, Any]:
    """What the unit's sandbox did to the daemon: capabilities, no_new_privs, namespaces."""
    out: dict[str, Any] = {"pid": pid}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid", "Gid"):
                out[key] = val.strip()
        for ns in ("mnt", "net"):
            out[f"own_{ns}_ns"] = os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    except OSError as exc:
        out["error"] = str(exc)
    return out


def open_to_recmgd(paths: list[Path]) -> list[str]:
    """Let the daemon's user reach this venv's Python and the checkout: add o+x to the directories on
    their way that only their owner may enter (/root, for a pyenv Python), in the guest's overlay only.
    An installed recmgd needs none of this: `make install` refuses a Python the recmgd user cannot run."""
    opened = []
    for p in paths:
        for d in [*reversed(p.parents), p]:
            st = d.stat()
            if not st.st_mode & 0o001:
                os.chmod(d, st.st_mode | 0o005)
                opened.append(str(d))
    return opened


def pool_lookups(s: dict[str, Any]) -> int:
    pools = (s.get("json") or {}).get("pools", {})
    return int(pools.get(POOL, {}).get("lookups", -1))


def run() -> dict[str, Any]:
    rep: dict[str, Any] = {}
    # what `make install` does after copying the files: the user and group, then its directories
    rep["sysusers"] = sh(["systemd-sysusers", SYSUSERS])
    rep["tmpfiles"] = sh(["systemd-tmpfiles", "--create", TMPFILES])
    rep["opened"] = open_to_recmgd([Path(sys.base_prefix), Path(sys.prefix),
                                    Path(sys.executable).resolve().parent, REPO])
    try:
        pw = pwd.getpwnam("recmgd")
        rep["recmgd_user"] = [pw.pw_uid, pw.pw_gid]
    except KeyError:
        rep["recmgd_user"] = None
    from recmgd.shm import huge_mode

    rep["huge_before"] = huge_mode()
    rep["huge_start"] = sh(["systemctl", "start", HUGE_UNIT])
    rep["huge_on"] = huge_mode()
    rep["start"] = sh(["systemctl", "start", UNIT], timeout=180)
    rep["after_start"] = show()
    rep["main_process"] = main_process(rep["after_start"].get("MainPID", "0"))
    if rep["start"]["rc"] != 0:  # no daemon: the rest would only wait for it
        skipped = {"argv": ["(skipped)"], "rc": -1, "out": "", "err": "skipped: systemctl start failed"}
        for k in ("app", "reload", "stop"):
            rep[k] = skipped
        rep["app_report"] = None
        for k in ("stats", "stats_after_reload"):
            rep[k] = {"rc": -1, "json": None, "err": skipped["err"]}
        for k in ("after_app", "after_reload", "after_stop"):
            rep[k] = rep["after_start"]
        rep["journal"] = sh(["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"])
        rep["huge_stop"] = sh(["systemctl", "stop", HUGE_UNIT])
        rep["huge_off"] = huge_mode()
        huge_round_from(rep, "within_size")
        return rep
    rep["app"] = sh([sys.executable, __file__, "app", POOL], timeout=APP_DEADLINE + 60)
    try:
        rep["app_report"] = json.loads(rep["app"]["out"].strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        rep["app_report"] = None
    want = (rep["app_report"] or {}).get("lookups", -1)
    t0 = time.monotonic()
    s = stats()
    while pool_lookups(s) < want and time.monotonic() - t0 < STATS_DEADLINE:
        time.sleep(1.0)
        s = stats()
    rep["stats"] = s
    t0 = time.monotonic()
    props = show()
    while not props.get("StatusText", "").startswith("1 pool;") and time.monotonic() - t0 < 15:
        time.sleep(1.0)
        props = show()
    rep["after_app"] = props
    rep["reload"] = sh(["systemctl", "reload", UNIT])
    rep["after_reload"] = show()
    rep["stats_after_reload"] = stats()
    rep["stop"] = sh(["systemctl", "stop", UNIT])
    rep["after_stop"] = show()
    rep["journal"] = sh(["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"])
    rep["huge_stop"] = sh(["systemctl", "stop", HUGE_UNIT])
    rep["huge_off"] = huge_mode()
    huge_round_from(rep, "within_size")
    return rep


def huge_round_from(rep: dict[str, Any], mode: str) -> None:
    """The hugepages unit started and stopped again over /dev/shm remounted huge=MODE first: the stop
    must put MODE back. /dev/shm is left huge=never."""
    from recmgd.shm import huge_mode

    rep["huge2_preset"] = sh(["mount", "-o", f"remount,huge={mode}", "/dev/shm"])
    rep["huge2_before"] = huge_mode()
    rep["huge2_start"] = sh(["systemctl", "start", HUGE_UNIT])
    rep["huge2_on"] = huge_mode()
    rep["huge2_stop"] = sh(["systemctl", "stop", HUGE_UNIT])
    rep["huge2_off"] = huge_mode()
    sh(["mount", "-o", "remount,huge=never", "/dev/shm"])


def main(argv: list[str]) -> int:
    if argv[:1] == ["app"] and len(argv) == 2:
        print(json.dumps(app(argv[1])))
        return 0
    if argv == ["run"]:
        os.chdir(REPO)
        print(json.dumps(run()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
