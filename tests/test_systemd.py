"""The systemd files: the unit passes `systemd-analyze verify`, has the settings the daemon relies on,
and the tmpfiles snippet creates its directories (under a temporary root; no PID 1 needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "recmgd.service"
BIN = "/usr/local/bin/recmgd"


def unit_settings() -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
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


def test_unit_settings() -> None:
    s = unit_settings()["Service"]
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["RuntimeDirectory"] == ["recmgd"]
    assert int(s["WatchdogSec"][0].rstrip("s")) > 0
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["ProtectHome"] == ["read-only"]  # the daemon's Python may live under /root (pyenv)
    assert s["PrivateNetwork"] == ["yes"]
    assert s["CapabilityBoundingSet"] == ["CAP_SYS_NICE"] and s["AmbientCapabilities"] == ["CAP_SYS_NICE"]
    assert "/dev/shm" in " ".join(s["ReadWritePaths"])
    note = UNIT.read_text().split("PrivateNetwork=yes")[0].rsplit("\n\n", 1)[-1]
    assert "Remove PrivateNetwork=" in note and "metrics" in note


def test_unit_matches_config_defaults() -> None:
    from recmgd.daemon import config

    c = config.load(str(REPO / "systemd" / "recmgd.toml.example"))
    runtime = unit_settings()["Service"]["RuntimeDirectory"][0]
    assert Path(c.control.socket).parent == Path("/run") / runtime


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles not installed")
def test_tmpfiles(tmp_path: Path) -> None:
    snippet = str(REPO / "systemd" / "recmgd.tmpfiles")
    r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", snippet],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "recmgd").is_dir()
    assert (tmp_path / "var" / "lib" / "recmgd" / "models").is_dir()
    assert (tmp_path / "run" / "recmgd").stat().st_mode & 0o777 == 0o755


def test_makefile_installs_the_three_files() -> None:
    mk = (REPO / "Makefile").read_text()
    for f in ("systemd/recmgd.service", "systemd/recmgd.toml.example", "systemd/recmgd.tmpfiles"):
        assert f in mk
