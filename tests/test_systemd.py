"""The systemd files: the unit passes `systemd-analyze verify`, has the settings the daemon relies on,
and the tmpfiles snippet creates its directories (under a temporary root; no PID 1 needed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "recmgd.service"
HUGE_UNIT = REPO / "systemd" / "recmg-hugepages.service"
BIN = "/usr/local/bin/recmgd"


def unit_settings(unit: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at a wrapper around this venv's recmgd
    wrapper = tmp_path / "recmgd"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m recmgd.cli.recmgd_main \"$@\"\n")
    wrapper.chmod(0o755)
    unit = tmp_path / "recmgd.service"
    unit.write_text(UNIT.read_text().replace(BIN, str(wrapper)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
    # and the installed path is what the Makefile's `pip install` provides
    assert BIN in UNIT.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_hugepages_unit_verifies_and_runs_before_the_daemon() -> None:
    """recmg-hugepages.service (installed, not enabled): a oneshot that remounts /dev/shm with huge=advise
    before recmgd starts and puts the previous mode back when stopped. tests/test_vm_systemd.py runs it
    under systemd as PID 1."""
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(HUGE_UNIT)], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
    s = unit_settings(HUGE_UNIT)
    assert s["Unit"]["Before"] == ["recmgd.service"]
    assert s["Service"]["Type"] == ["oneshot"] and s["Service"]["RemainAfterExit"] == ["yes"]
    assert s["Service"]["RuntimeDirectory"] == ["recmg-hugepages"]
    assert s["Service"]["ExecStart"][-1] == "/bin/mount -o remount,huge=advise /dev/shm"
    assert len(s["Service"]["ExecStop"]) == 1


def unit_command(line: str) -> list[str]:
    """An Exec line of the hugepages unit as systemd runs it: its words, `$$` as `$` (the unit uses no
    other escape and no % specifier; asserted)."""
    assert "%" not in line and "\\" not in line, line
    return [w.replace("$$", "$") for w in shlex.split(line)]


HUGE_CHILD = """
import json, os, subprocess, sys
from recmgd.shm import huge_mode
start, stop, preset = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m" + ("," + preset if preset else ""), "x", "/dev/shm"],
               check=True)
seen = [huge_mode()]
for argv in start:
    subprocess.run(argv, check=True)
seen.append(huge_mode())
seen.append(open(os.path.join(os.environ["RUNTIME_DIRECTORY"], "previous")).read().strip())
for argv in stop:
    subprocess.run(argv, check=True)
seen.append(huge_mode())
print(json.dumps(seen))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("findmnt") is None,
                    reason="needs root, unshare(1) and findmnt(8) to mount a tmpfs in a private namespace")
@pytest.mark.parametrize(("preset", "before"), [("", "never"), ("huge=within_size", "within_size"),
                                                ("huge=advise", "advise")])
def test_hugepages_unit_puts_the_previous_mode_back(tmp_path: Path, preset: str, before: str) -> None:
    """The unit's own ExecStart and ExecStop lines, run in a private mount namespace over a tmpfs at
    /dev/shm: start remounts it huge=advise and keeps the mode it had; stop puts that mode back (never
    when the mount had no huge= option), not always huge=never."""
    s = unit_settings(HUGE_UNIT)["Service"]
    start = [unit_command(x) for x in s["ExecStart"]]
    stop = [unit_command(x) for x in s["ExecStop"]]
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path), PYTHONPATH=str(REPO))
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", HUGE_CHILD,
                        json.dumps(start), json.dumps(stop), preset], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen == [before, "advise", f"huge={before}", before], seen


def test_unit_settings() -> None:
    s = unit_settings()["Service"]
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["RuntimeDirectory"] == ["recmgd"]
    assert int(s["WatchdogSec"][0].rstrip("s")) > 0
    assert s["User"] == ["recmgd"] and s["Group"] == ["recmgd"]  # not root (systemd/recmgd.sysusers)
    assert s["StateDirectory"] == ["recmgd"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["PrivateDevices"] == ["yes"]  # /dev/shm stays the host's (bind-mounted by systemd)
    assert s["SystemCallFilter"][0] == "@system-service" and s["SystemCallArchitectures"] == ["native"]
    assert s["ProtectHome"] == ["read-only"]  # the daemon's Python may live under /root (pyenv)
    assert s["PrivateNetwork"] == ["yes"]
    assert s["CapabilityBoundingSet"] == ["CAP_SYS_NICE"] and s["AmbientCapabilities"] == ["CAP_SYS_NICE"]
    assert "/dev/shm" in " ".join(s["ReadWritePaths"])
    note = UNIT.read_text().split("PrivateNetwork=yes")[0].rsplit("\n\n", 1)[-1]
    assert "remove privatenetwork=" in note.lower() and "metrics" in note


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_security_exposure(tmp_path: Path) -> None:
    """`systemd-analyze security` on the unit file: well below the 3.4 of the unit that ran as root."""
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "offline" in r.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {r.stderr.strip()[:200]}")
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    print(f"systemd-analyze security --offline=yes systemd/recmgd.service: {m.group(1)}")
    assert float(m.group(1)) <= 2.0, r.stdout


def test_unit_matches_config_defaults() -> None:
    from recmgd.daemon import config

    c = config.load(str(REPO / "systemd" / "recmgd.toml.example"))
    runtime = unit_settings()["Service"]["RuntimeDirectory"][0]
    assert Path(c.control.socket).parent == Path("/run") / runtime


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None or shutil.which("systemd-sysusers") is None,
                    reason="systemd-tmpfiles or systemd-sysusers not installed")
def test_sysusers_and_tmpfiles(tmp_path: Path) -> None:
    """The user and group first (as `make install` does), then the directories, owned by them."""
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(REPO / "systemd" / "recmgd.sysusers")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    etc = tmp_path / "etc"
    users = {f[0]: f for f in (ln.split(":") for ln in (etc / "passwd").read_text().splitlines())}
    groups = {f[0]: f for f in (ln.split(":") for ln in (etc / "group").read_text().splitlines())}
    uid, gid = int(users["recmgd"][2]), int(users["recmgd"][3])
    assert int(groups["recmgd"][2]) == gid and 0 < uid < 1000  # a system user, its own group
    assert users["recmgd"][5] == "/var/lib/recmgd"
    r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}",
                        str(REPO / "systemd" / "recmgd.tmpfiles")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for d, mode in (("run/recmgd", 0o755), ("var/lib/recmgd", 0o700), ("var/lib/recmgd/models", 0o700)):
        st = (tmp_path / d).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, mode), d


def test_install_files_follow_prefix_and_uninstall_removes_them(tmp_path: Path) -> None:
    """`make install-files` (install without the venv) into a DESTDIR with PREFIX=/usr, under umask 077:
    the units run $(PREFIX)/bin/recmgd (they named /usr/local whatever the prefix), every file is
    readable by the daemon's user; `make uninstall` removes them all but the admin's config."""
    root = tmp_path / "root"
    env = dict(os.environ, MAKEFLAGS="")
    args = ["make", "-s", "-C", str(REPO), f"DESTDIR={root}", "PREFIX=/usr"]
    r = subprocess.run([*args, "install-files"], capture_output=True, text=True, timeout=600, env=env,
                       preexec_fn=lambda: os.umask(0o077))
    assert r.returncode == 0, r.stderr
    unit = (root / "etc/systemd/system/recmgd.service").read_text()
    assert "ExecStart=/usr/bin/recmgd\n" in unit and "/usr/local" not in unit
    assert "/usr/local" not in (root / "etc/systemd/system/recmg-hugepages.service").read_text()
    assert os.readlink(root / "usr/bin/recmgd") == "/usr/lib/recmgd/venv/bin/recmgd"
    for f in ("etc/systemd/system/recmgd.service", "usr/lib/librecmg.so", "usr/include/recmg.h",
              "usr/share/doc/recmgd/README.md", "etc/recmgd/recmgd.toml", "usr/lib/tmpfiles.d/recmgd.conf",
              "usr/lib/sysusers.d/recmgd.conf", "usr/lib/librecmg.a"):
        assert (root / f).stat().st_mode & 0o004, f"{f} is not readable by others"
    for d in (p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()):
        assert d.stat().st_mode & 0o005 == 0o005, f"{d} cannot be entered by others"
    r = subprocess.run([*args, "uninstall"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert left == ["etc/recmgd/recmgd.toml"], left
