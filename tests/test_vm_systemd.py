"""recmgd.service under systemd as PID 1: a QEMU guest (tools/numa_vm.py) with a CPU-less NUMA node 1
boots systemd, which runs the repo's systemd/recmgd.service unchanged from /etc/systemd/system, with
/usr/local/bin/{recmgd,recmgctl,recmg} linked to this venv's commands and /etc/recmgd/recmgd.toml made
from systemd/recmgd.toml.example. One boot runs tests/vm_systemd_guest.py as the boot's oneshot unit; it
drives the service with systemctl and an app process, and the tests here assert on its report.

What is checked: `systemctl start` succeeds (Type=notify: READY=1 arrived), StatusText carries the
daemon's status line; the sandbox is applied (capabilities, no_new_privs, own mount and network
namespaces); an app creates a numa:1 pool and looks rows up, recmgd (policy lru) fills the hot rows and
`recmgctl stats --json` shows the pool with every lookup of the app; the daemon runs as the recmgd user
(systemd/recmgd.sysusers, which the guest applies as `make install` does) with a seccomp filter, and the
app shares its pool with it through group recmgd (mode 0660); `systemctl reload` keeps it active
(same pid, one reload counted); `systemctl stop` ends it cleanly; the journal holds the daemon's lines.
The unit's own timeouts (TimeoutStartSec=90s) hold under the emulation. The one drop-in, only when this
checkout or its venv lives under /tmp or /var/tmp (a CI clone may), binds them read-only into the
daemon's private /tmp (PrivateTmp=yes hides them, and the daemon runs from the venv); an installed
recmgd runs from /usr/local/lib/recmgd/venv and needs none.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import vm_systemd_guest as g
from vm_support import REPO, last_json, numa_vm, prepared

pytestmark = pytest.mark.vm

GUEST_TIMEOUT = 480.0  # systemd's boot, the daemon's start and the steps: ~80 s on an idle host
COMMANDS = ("recmgd", "recmgctl", "recmg")
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))  # what PrivateTmp=yes replaces in the daemon's namespace
CAP_SYS_NICE = 1 << 23


def guest_files() -> dict[str, Any]:
    """The installed files, as `make install` lays them out (the venv is this test's)."""
    venv_bin = Path(sys.executable).parent
    files: dict[str, Any] = {
        "/etc/systemd/system/recmgd.service": (REPO / "systemd" / "recmgd.service").read_text(),
        "/etc/systemd/system/recmg-hugepages.service":
            (REPO / "systemd" / "recmg-hugepages.service").read_text(),
        "/etc/recmgd/recmgd.toml": (REPO / "systemd" / "recmgd.toml.example").read_text(),
        # the guest script runs systemd-sysusers and systemd-tmpfiles on these, as `make install` does
        g.SYSUSERS: (REPO / "systemd" / "recmgd.sysusers").read_text(),
        g.TMPFILES: (REPO / "systemd" / "recmgd.tmpfiles").read_text(),
    }
    for c in COMMANDS:
        assert (venv_bin / c).is_file(), f"{venv_bin / c} is missing (pip install -e . makes it)"
        files[f"/usr/local/bin/{c}"] = numa_vm.Link(str(venv_bin / c))
    under_tmp = {p for p in (REPO, Path(sys.prefix), Path(sys.base_prefix))
                 if any(t == p or t in p.parents for t in PRIVATE_TMP)}
    hidden = sorted(str(p) for p in under_tmp if not any(q in p.parents for q in under_tmp))
    if hidden:  # a checkout under /tmp: see the module docstring
        files["/etc/systemd/system/recmgd.service.d/50-test-checkout-in-tmp.conf"] = (
            "[Service]\n" + "".join(f"BindReadOnlyPaths={p}\n" for p in hidden))
    return files


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    p = prepared()
    r = numa_vm.run_systemd([sys.executable, str(REPO / "tests" / "vm_systemd_guest.py"), "run"],
                            files=guest_files(), prepared=p, timeout=GUEST_TIMEOUT, label="test_vm_systemd")
    assert r.returncode == 0, f"the guest script failed (exit {r.returncode}): {r.output[-3000:]}"
    return last_json(r.output)


def step(rep: dict[str, Any], name: str) -> dict[str, Any]:
    s = rep[name]
    assert s["rc"] == 0, f"{' '.join(s['argv'])}: exit {s['rc']}: {s['err'][-2000:]}"
    return s


def test_start_is_ready(report: dict[str, Any]) -> None:
    journal = report["journal"]["out"]
    assert report["start"]["rc"] == 0, f"systemctl start recmgd failed; the journal ends:\n{journal[-3000:]}"
    # Type=notify: `systemctl start` returned once READY=1 arrived
    props = report["after_start"]
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["NRestarts"] == "0", props
    assert props["WatchdogUSec"] == "30s", props
    assert re.fullmatch(r"0 pools; [\d.]+M lookups/s; hit rate -; lag \d+ ms", props["StatusText"]), props


def test_sandbox_applied(report: dict[str, Any]) -> None:
    step(report, "sysusers")
    step(report, "tmpfiles")
    m = report["main_process"]
    assert m["pid"] == report["after_start"]["MainPID"] and "error" not in m, m
    uid = report["recmgd_user"]
    assert uid is not None and m["Uid"].split()[:2] == [str(uid[0])] * 2, (m, uid)  # not root: User=recmgd
    assert m["Gid"].split()[:2] == [str(uid[1])] * 2, (m, uid)
    assert m["Seccomp"] == "2", m  # SystemCallFilter=
    assert int(m["CapBnd"], 16) == CAP_SYS_NICE, m
    assert int(m["CapEff"], 16) == CAP_SYS_NICE and int(m["CapAmb"], 16) == CAP_SYS_NICE, m
    assert m["NoNewPrivs"] == "1", m
    assert m["own_mnt_ns"] and m["own_net_ns"], m  # ProtectSystem=/PrivateTmp=, PrivateNetwork=


def test_app_lookups_through_the_daemon(report: dict[str, Any]) -> None:
    step(report, "app")
    app = report["app_report"]
    assert app is not None, report["app"]["out"][-2000:]
    assert app["wrong"] == 0 and app["slow_nodes"] == [1], app
    assert app["hits"][0] == 0 and app["hits"][-1] == g.HOT, app  # recmgd filled the hot rows
    assert app["waiting"] == 0, app
    st = report["stats"]
    assert st["rc"] == 0 and st["json"] is not None, st
    pool = st["json"]["pools"][g.POOL]
    assert pool["policy"] == "lru" and pool["mode"] == "rows", pool
    assert pool["lookups"] == app["lookups"], (pool["lookups"], app)
    assert pool["batches"] == app["batches"], (pool["batches"], app)
    assert pool["fills"] >= g.HOT and pool["hits"] > 0, pool
    assert pool["app"]["lookups"] == app["lookups"], pool["app"]
    props = report["after_app"]
    m = re.fullmatch(r"1 pool; [\d.]+M lookups/s; hit rate ([\d.]+)%; lag \d+ ms", props["StatusText"])
    assert m and float(m.group(1)) > 0, props


def test_reload_keeps_it_active(report: dict[str, Any]) -> None:
    step(report, "reload")
    props = report["after_reload"]
    assert props["ActiveState"] == "active" and props["MainPID"] == report["after_start"]["MainPID"], props
    d = report["stats_after_reload"]["json"]["daemon"]
    assert d["reloads"] == 1 and d["last_reload_error"] is None, d
    assert g.POOL in report["stats_after_reload"]["json"]["pools"]


def test_stop_is_clean(report: dict[str, Any]) -> None:
    step(report, "stop")
    props = report["after_stop"]
    assert props["ActiveState"] == "inactive" and props["Result"] == "success", props


def test_journal_has_the_daemon_lines(report: dict[str, Any]) -> None:
    journal = step(report, "journal")["out"]
    for line in ("configuration is valid", "recmgd ready", f"pool {g.POOL} attached", "reloaded",
                 "stopping", "recmgd.service: Deactivated successfully"):
        assert line in journal, f"{line!r} not in the journal:\n{journal[-3000:]}"
    assert "Traceback" not in journal, journal[-3000:]


def test_hugepages_unit_remounts_dev_shm(report: dict[str, Any]) -> None:
    """recmg-hugepages.service, started by systemd, remounts /dev/shm with huge=advise (the daemon then
    reports it), and stopping it puts the mode from before back: huge=never the first time, huge=within_size
    after /dev/shm was remounted so."""
    assert report["huge_before"] == "never", report["huge_before"]
    step(report, "huge_start")
    assert report["huge_on"] == "advise"
    assert report["stats"]["json"]["daemon"]["shm_huge"] == "advise", report["stats"]
    step(report, "huge_stop")
    assert report["huge_off"] == "never"
    step(report, "huge2_preset")
    assert report["huge2_before"] == "within_size"
    step(report, "huge2_start")
    assert report["huge2_on"] == "advise"
    step(report, "huge2_stop")
    assert report["huge2_off"] == "within_size"
