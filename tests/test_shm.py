"""recmgd.shm: the huge= option of the tmpfs pools live on, and whether a pool's mapping is on huge pages.

The last test mounts real tmpfs instances (huge=never and huge=advise) on /dev/shm inside a private
mount namespace (unshare -m; the host's /dev/shm is not touched), creates a real pool in each and reads
the kernel's account of its mapping: the pool asks for huge pages (madvise) for its metadata and fast
tier and gets them exactly where the mount allows; its memory slow tier stays on 4 KiB pages (a NUMA
binding and page mode's move_pages work page by page)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recmgd.shm import SHM_DIR, huge_mode, mapped_kib, shm_path

REPO = Path(__file__).resolve().parent.parent


def test_huge_mode_reads_the_mount_table(tmp_path: Path) -> None:
    m = tmp_path / "mounts"
    m.write_text("proc /proc proc rw,nosuid 0 0\n"
                 "tmpfs /dev/shm tmpfs rw,nosuid,nodev,size=1024k 0 0\n")
    assert huge_mode(str(m)) == "never"  # no huge= option: the kernel's default
    m.write_text("tmpfs /dev/shm tmpfs rw,size=1024k,huge=advise 0 0\n")
    assert huge_mode(str(m)) == "advise"
    m.write_text("tmpfs /dev/shm tmpfs rw,huge=advise 0 0\ntmpfs /dev/shm tmpfs rw,huge=within_size 0 0\n")
    assert huge_mode(str(m)) == "within_size"  # the last mount hides the ones under it
    m.write_text("tmpfs /dev/shmx tmpfs rw,huge=always 0 0\n")
    assert huge_mode(str(m)) is None  # nothing at /dev/shm
    m.write_text("/dev/vda /dev/shm ext4 rw 0 0\n")
    assert huge_mode(str(m)) == "never"  # not a tmpfs: no shmem huge pages
    assert huge_mode(str(tmp_path / "missing")) is None
    assert huge_mode(str(m), where="/elsewhere") is None


def test_huge_mode_of_this_host() -> None:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        at_shm = [ln.split() for ln in f if ln.split()[1:2] == [SHM_DIR]]
    assert at_shm, "/dev/shm is not mounted"
    opts = at_shm[-1][3].split(",")
    want = next((o.split("=", 1)[1] for o in opts if o.startswith("huge=")), "never")
    assert huge_mode() == want


def test_mapped_kib_of_a_mapping(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    path = shm_path("pool-a")
    smaps.write_text(
        f"7f00-7f10 rw-s 00000000 00:1b 1 {path}\nSize: 64 kB\nRss: 40 kB\nShmemPmdMapped: 0 kB\n"
        f"7f20-7f30 rw-s 00000000 00:1b 1 {path}\nSize: 4096 kB\nRss: 4096 kB\nShmemPmdMapped: 4096 kB\n"
        f"7f40-7f50 rw-s 00000000 00:1b 2 {path}x\nRss: 999 kB\nShmemPmdMapped: 999 kB\n"
        "7f60-7f70 r--p 00000000 00:00 0 \nRss: 5 kB\n")
    assert mapped_kib("pool-a", str(smaps)) == (4136, 4096)
    assert mapped_kib("/pool-a", str(smaps)) == (4136, 4096)
    assert mapped_kib("other", str(smaps)) == (0, 0)
    smaps.write_text(
        f"7f00-7f10 rw-s 00000000 00:1b 1 {path}\nRss: 40 kB\nShmemPmdMapped: 32 kB\n"
        f"7f10-7f20 rw-s 00200000 00:1b 1 {path}\nRss: 12 kB\nShmemPmdMapped: 0 kB\n")
    assert mapped_kib("pool-a", str(smaps)) == (52, 32)
    assert mapped_kib("pool-a", str(smaps), from_offset=0x200000) == (12, 0)  # from the split on
    assert mapped_kib("pool-a", str(smaps), from_offset=0x200001) == (0, 0)


CHILD = r"""
import subprocess, sys
import numpy as np
from recmgd.keys import make_keys
from recmgd.pool import Pool
from recmgd.shm import huge_mode, mapped_kib

out = []
for mode, slow in (("never", "dram"), ("advise", "dram"), ("advise", "numa:0")):
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=256m,mode=1777,huge={mode}", "recmg-test",
                    "/dev/shm"], check=True)
    rows = 16384  # 4 tables x 16,384 rows x 256 bytes: 16 MiB of slots, several 2 MiB pages
    p = Pool.create(f"shm-test-{mode}-{slow[:4]}", tables=[(rows, 64)] * 4, slots=4 * rows, slow=slow)
    w = np.arange(rows * 64, dtype=np.float32).reshape(rows, 64)
    for t in range(4):
        p.write_rows(t, np.arange(rows), w)
    p.fill_keys(np.concatenate([make_keys(t, np.arange(rows)) for t in range(4)]))
    got = p.embedding_bag(3, np.array([5, 7]), np.array([0]))
    assert np.allclose(got.numpy()[0], w[5] + w[7])
    rss, huge = mapped_kib(p.name)
    st = p.stats()
    slow_off = st["meta_bytes"] + (st["slot_bytes"] + 4095) // 4096 * 4096
    slow_rss, slow_huge = mapped_kib(p.name, from_offset=slow_off)
    out.append(f"{huge_mode()} {slow} {rss} {huge} {slow_rss} {slow_huge} {slow_off // 1024}")
print(";".join(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to mount tmpfs instances in a private mount namespace")
def test_a_pool_gets_huge_pages_where_the_tmpfs_allows() -> None:
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", CHILD],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    (m0, _, rss0, huge0, _, _, _), (m1, _, rss1, huge1, _, _, _), (m2, slow2, rss2, huge2, srss2, shuge2,
                                                                   fast2) = (
        part.split() for part in r.stdout.strip().split(";"))
    assert (m0, m1, m2) == ("never", "advise", "advise")
    assert int(rss0) > 32 * 1024 and int(huge0) == 0  # huge=never: 4 KiB pages only
    # huge=advise, a dram slow tier (plain local memory): slots and slow tier (16 MiB each) on 2 MiB pages
    assert int(rss1) > 32 * 1024 and int(huge1) >= 24 * 1024
    # a NUMA slow tier: the fast tier (metadata and slots: the object up to the slow tier, all of it
    # taken at create) on 2 MiB pages, the slow tier (its own mapping, every row written) on 4 KiB pages
    # only, so that its binding and page mode's moves hold page by page
    assert slow2 == "numa:0"
    assert int(rss2) > 32 * 1024 and 16 * 1024 <= int(huge2) <= int(fast2) + 2048, (huge2, fast2)
    assert int(srss2) >= 16 * 1024 and int(shuge2) == 0, (srss2, shuge2)


def test_create_takes_the_pools_memory() -> None:
    """A pool's object is allocated whole at create (MADV_POPULATE_WRITE): a /dev/shm that cannot hold it
    is a create error, not a SIGBUS in the app or the daemon at its first write of a page; the object was
    sparse, its pages taken as they were first written."""
    import uuid

    from recmgd.pool import Pool

    p = Pool.create(f"shm-populate-{uuid.uuid4().hex[:8]}", tables=[(50_000, 64)], slots=20_000)
    try:
        st = os.stat(shm_path(p.name))
        assert st.st_blocks * 512 >= st.st_size > 12 * 2**20
    finally:
        p.destroy()
