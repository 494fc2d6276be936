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
import tempfile
from collections.abc import Iterator
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
    assert s["ProtectHome"] == ["read-only"]  # the daemon's Python may live under /home or /root
    # ... where user recmgd may enter every folder on the way: not a pyenv under a 0700 /root
    note = UNIT.read_text().split("ProtectHome=read-only")[0].rsplit("\n\n", 1)[-1].split("\n# read-only")[-1]
    assert "0700 /root" in note and "PYTHON=/usr/bin/python3" in note, note
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


def test_units_go_where_unitdir_says(tmp_path: Path) -> None:
    """A package puts units in /usr/lib/systemd/system (UNITDIR=), not the admin's /etc/systemd/system;
    uninstall removes them from there."""
    root = tmp_path / "root"
    env = dict(os.environ, MAKEFLAGS="")
    args = ["make", "-s", "-C", str(REPO), f"DESTDIR={root}", "PREFIX=/usr",
            "UNITDIR=/usr/lib/systemd/system"]
    r = subprocess.run([*args, "install-files"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert "ExecStart=/usr/bin/recmgd\n" in (root / "usr/lib/systemd/system/recmgd.service").read_text()
    assert (root / "usr/lib/systemd/system/recmg-hugepages.service").is_file()
    assert not (root / "etc/systemd").exists()
    r = subprocess.run([*args, "uninstall"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert not any((root / "usr/lib/systemd/system").iterdir())


def test_make_help_lists_the_targets() -> None:
    """`make help`: every target a user runs, each with a line, and the variables they take."""
    r = subprocess.run(["make", "-s", "-C", str(REPO), "help"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MAKEFLAGS=""))
    assert r.returncode == 0, r.stderr
    listed = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("  make ")}
    assert {"demo", "test", "test-vm", "bench", "bench-e2e", "lint", "native", "install", "uninstall",
            "clean"} <= listed, listed
    for var in ("PREFIX", "DESTDIR", "UNITDIR", "PYTHON", "TRACE"):
        assert var in r.stdout, var


PKG_APP = r"""
#include <stdio.h>
#include "recmg.h"
int main(void)
{
    char err[512];
    recmg_table_spec t = {.rows = 64, .dim = 8};
    recmg_create_opts o = {.n_tables = 1, .tables = &t, .n_slots = 16, .dtype = RECMG_F32,
                           .slow_kind = RECMG_SLOW_DRAM, .role = RECMG_ROLE_APP};
    recmg_pool *p = NULL;
    if (recmg_create(NAME, &o, &p, err, sizeof err)) { fprintf(stderr, "create: %s\n", err); return 1; }
    recmg_pool_info info;
    if (recmg_info(p, &info)) { fprintf(stderr, "info: %s\n", recmg_errmsg(p)); return 1; }
    recmg_close(p);
    if (recmg_destroy(NAME, err, sizeof err)) { fprintf(stderr, "destroy: %s\n", err); return 1; }
    printf("ok tables=%u\n", info.n_tables);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("pkg-config") is None or shutil.which("cc") is None,
                    reason="pkg-config or cc not installed (make sysdeps installs them)")
def test_installed_pkg_config_builds_an_app(tmp_path: Path) -> None:
    """`make install-files` puts down $(PREFIX)/lib/pkgconfig/recmg.pc (its prefix the install's): an app
    built with just `pkg-config --cflags --libs recmg` links (librecmg.so carries its own -lm -luring) and
    runs, creating and destroying a pool; the README's static line (librecmg.a by its path, then
    Libs.private) links an app that needs no librecmg.so; uninstall removes recmg.pc."""
    import uuid

    root = tmp_path / "root"
    env = dict(os.environ, MAKEFLAGS="")
    args = ["make", "-s", "-C", str(REPO), f"DESTDIR={root}", "PREFIX=/opt/recmg"]
    r = subprocess.run([*args, "install-files"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    pc = root / "opt/recmg/lib/pkgconfig/recmg.pc"
    assert pc.is_file() and pc.stat().st_mode & 0o004, pc
    assert "prefix=/opt/recmg\n" in pc.read_text()
    pkg_env = dict(os.environ, PKG_CONFIG_PATH=str(pc.parent), PKG_CONFIG_SYSROOT_DIR=str(root))
    pkg_env.pop("PKG_CONFIG_LIBDIR", None)

    def pkg(*what: str) -> list[str]:
        r = subprocess.run(["pkg-config", *what, "recmg"], capture_output=True, text=True, env=pkg_env,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    flags = pkg("--cflags", "--libs")
    assert flags == [f"-I{root}/opt/recmg/include", f"-L{root}/opt/recmg/lib", "-lrecmg"], flags
    static = pkg("--static", "--libs")
    assert {"-luring", "-lm", "-pthread"} <= set(static), static
    name = f"rt_pc_{uuid.uuid4().hex[:10]}"
    src = tmp_path / "app.c"
    src.write_text(PKG_APP.replace("NAME", f'"{name}"'))
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]
    # the README's static line: librecmg.a by its path in libdir, then what it needs (Libs.private)
    libdir = pkg("--variable=libdir")[0]
    if not libdir.startswith(str(root)):  # (pkg-config leaves variables without the sysroot)
        libdir = str(root) + libdir
    private = [x for x in static if x not in flags]
    assert private == ["-luring", "-lm", "-pthread"], static
    for exe, libs in (("app", flags), ("app_static", [*pkg("--cflags"), f"{libdir}/librecmg.a", *private])):
        r = subprocess.run(["cc", *cflags, "-o", str(tmp_path / exe), str(src), *libs], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, f"cc {' '.join(libs)}: {r.stderr}"
        r = subprocess.run([str(tmp_path / exe)], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, LD_LIBRARY_PATH=str(root / "opt/recmg/lib")))
        assert r.returncode == 0 and r.stdout.strip() == "ok tables=1", r.stdout + r.stderr
        assert not Path(f"/dev/shm/{name}").exists()
    r = subprocess.run(["ldd", str(tmp_path / "app_static")], capture_output=True, text=True, timeout=30)
    assert "librecmg" not in r.stdout, r.stdout
    if shutil.which("readelf"):
        r = subprocess.run(["readelf", "-d", str(root / "opt/recmg/lib/librecmg.so")], capture_output=True,
                           text=True, timeout=30, check=True)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", r.stdout)
        assert any(n.startswith("libm.") for n in needed), needed
        assert any(n.startswith("liburing.") for n in needed), needed
    r = subprocess.run([*args, "uninstall"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert not pc.exists() and not (root / "opt/recmg/lib/librecmg.so").exists()


CHECK_PY = REPO / "tools" / "check_python_access.sh"


def top_private_dir(path: Path) -> Path | None:
    """The top-most directory from / down to path that others cannot enter (o+x unset), if any."""
    found = None
    for d in [path, *path.parents]:
        if d.exists() and not d.stat().st_mode & 0o001:
            found = d
    return found


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary folder that others can enter, as every folder above it (tmp_path is under a 0700 one)."""
    with tempfile.TemporaryDirectory(dir="/tmp" if top_private_dir(Path("/tmp")) is None else None) as d:
        os.chmod(d, 0o755)
        if top_private_dir(Path(d)) is not None:
            pytest.skip(f"no temporary folder that others can enter ({top_private_dir(Path(d))})")
        yield Path(d)


def base_python() -> Path:
    """The real interpreter under this venv's python."""
    return Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def public_python() -> Path | None:
    """An interpreter that others can reach and run: this venv's, else /usr/bin/python3; None if neither."""
    for p in (base_python(), Path("/usr/bin/python3")):
        if p.exists() and p.stat().st_mode & 0o001 and top_private_dir(p.resolve().parent) is None:
            return p
    return None


def test_install_into_destdir_refuses_a_python_others_cannot_reach(tmp_path: Path, public_tmp: Path) -> None:
    """`make install DESTDIR=...` with a Python that only root can reach (pyenv under /root, mode 0700: here
    a link to one in a 0700 folder): the tree's daemon would fail to start (runuser -u recmgd ... python:
    Permission denied), and install refuses at once, before the pip installs, with one line that names
    the folder and the way out; the venv is removed (a venv made again over it keeps its links). Into /,
    the check runs the venv as recmgd; into a DESTDIR that user may not exist: permission bits decide."""
    priv = public_tmp / "priv"
    priv.mkdir(mode=0o700)
    os.chmod(priv, 0o700)
    (priv / "python3").symlink_to(base_python())
    dest = tmp_path / "dest"
    # pip offline: without the check, install-venv gets past the venv and fails in pip at once
    env = dict(os.environ, MAKEFLAGS="", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(["make", "-s", "-C", str(REPO), f"DESTDIR={dest}", f"PYTHON={priv / 'python3'}",
                        "install-venv"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("make install:")]
    assert len(lines) == 1, r.stdout + r.stderr
    assert f"is under {priv} (mode 0700)" in lines[0] and "PYTHON=/usr/bin/python3" in lines[0], lines[0]
    assert "/usr/local/lib/recmgd/venv/bin/python" in lines[0], lines[0]
    assert not (dest / "usr/local/lib/recmgd/venv").exists()


def make_venv(python: Path, where: Path) -> Path:
    r = subprocess.run([str(python), "-m", "venv", "--without-pip", str(where)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return where / "bin" / "python"


def check_python(python: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(CHECK_PY), str(python)], capture_output=True, text=True, timeout=60)


def test_check_python_access_refuses_what_others_cannot_reach(tmp_path: Path, public_tmp: Path) -> None:
    """tools/check_python_access.sh: a link to the interpreter in a private folder, an interpreter others
    cannot execute, a pyvenv.cfg home in a private folder: each refused with one line naming it."""
    priv = public_tmp / "priv"
    priv.mkdir(mode=0o700)
    os.chmod(priv, 0o700)
    (priv / "python3").symlink_to(base_python())
    py = make_venv(priv / "python3", tmp_path / "v1")
    r = check_python(py)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1, r.stdout + r.stderr
    want = f"{priv / 'python3'} (a link to {base_python()}), is under {priv} (mode 0700)"
    assert want in r.stdout, r.stdout
    # an interpreter others cannot execute
    exe = public_tmp / "python-0700"
    shutil.copy(base_python(), exe)
    os.chmod(exe, 0o700)
    r = check_python(exe)
    assert r.returncode == 1 and "not executable by other users (mode 0700)" in r.stdout, r.stdout


@pytest.mark.skipif(public_python() is None, reason="no Python that others can run here")
def test_check_python_access_refuses_a_private_venv_home(tmp_path: Path, public_tmp: Path) -> None:
    """A venv of a public Python whose pyvenv.cfg home is a private folder: refused, naming it."""
    priv = public_tmp / "priv"
    priv.mkdir(mode=0o700)
    os.chmod(priv, 0o700)
    public = public_python()
    assert public is not None
    py = make_venv(public, tmp_path / "v2")
    assert check_python(py).returncode == 0
    cfg = py.parent.parent / "pyvenv.cfg"
    cfg.write_text(re.sub(r"(?m)^home = .*$", f"home = {priv}", cfg.read_text()))
    r = check_python(py)
    assert r.returncode == 1 and f"home (pyvenv.cfg), {priv}, is under {priv}" in r.stdout, r.stdout


@pytest.mark.skipif(public_python() is None, reason="no Python that others can run here")
def test_check_python_access_passes_a_public_python_in_a_private_destdir(tmp_path: Path) -> None:
    """A venv of a Python that others can run passes, also built under a folder only root may enter (a
    DESTDIR's own folders are the installer's: the tree is moved into / to run)."""
    public = public_python()
    assert public is not None
    priv = tmp_path / "priv"
    priv.mkdir(mode=0o700)
    os.chmod(priv, 0o700)
    py = make_venv(public, priv / "usr/local/lib/recmgd/venv")
    assert top_private_dir(py) is not None
    r = check_python(py)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    r = check_python(public)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
