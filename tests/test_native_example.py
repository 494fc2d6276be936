"""The C API: librecmg and the example DLRM app build with `make -C native`, and the app runs and
checks its own results (create, write, daemon fill, lookups, ring records) on each slow tier."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parent.parent / "native"
APP = NATIVE / "build" / "dlrm_example"


@pytest.fixture(scope="module")
def built() -> Path:
    r = subprocess.run(["make", "-s", "-C", str(NATIVE)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for f in ("librecmg.so", "librecmg.a", "dlrm_example"):
        assert (NATIVE / "build" / f).exists()
    return APP


@pytest.mark.parametrize("slow", ["dram", "numa:0", "ssd", "ssd-preadv"])
def test_example_app_runs(built: Path, slow: str, tmp_path) -> None:
    env = dict(os.environ)
    arg = slow
    if slow.startswith("ssd"):
        arg = f"ssd:{tmp_path / 'emb.bin'}"
        if slow == "ssd-preadv":
            env["RECMG_NO_IO_URING"] = "1"
    name = f"rt_ex_{uuid.uuid4().hex[:10]}"
    r = subprocess.run([str(built), name, arg], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrong=0" in r.stdout and "ring_ok=1" in r.stdout
    assert not Path(f"/dev/shm/{name}").exists()


def test_shared_library_exports_the_api(built: Path) -> None:
    r = subprocess.run(
        ["nm", "-D", "--defined-only", str(NATIVE / "build" / "librecmg.so")],
        capture_output=True,
        text=True,
        check=True,
    )
    header = (NATIVE / "include" / "recmg.h").read_text()
    for sym in ("recmg_create", "recmg_attach", "recmg_embedding_bag", "recmg_fill_keys", "recmg_drain_ring"):
        assert sym in r.stdout and sym in header


def test_example_second_run_on_the_same_ssd_file_says_why(built: Path, tmp_path: Path) -> None:
    """The slow-tier file of an ssd run stays behind (recmg_destroy keeps it) and is never overwritten: a
    second run on the same file fails saying so (not "no pool named ...": create's RECMG_EEXIST is also
    the file's, and the example took it for an existing pool, attached and printed attach's error)."""
    path = tmp_path / "emb.tables"
    name = f"rt_ex_{uuid.uuid4().hex[:10]}"
    r = subprocess.run([str(built), name, f"ssd:{path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert path.exists() and not Path(f"/dev/shm/{name}").exists()
    r = subprocess.run([str(built), name, f"ssd:{path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout
    assert f"create: slow-tier file {path} already exists" in r.stderr, r.stderr
    assert "no pool named" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not Path(f"/dev/shm/{name}").exists()
    # the header comment tells how to run it again
    head = (NATIVE / "examples" / "dlrm_example.c").read_text().split("*/", 1)[0]
    assert "stays" in head and "rm " in head, head
