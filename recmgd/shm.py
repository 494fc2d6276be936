"""Where pools live (POSIX shared memory, the tmpfs at /dev/shm) and whether that tmpfs gives huge pages.

A pool is a shm_open(3) object: the file /dev/shm/NAME. Its fast tier is read at random, one 256-byte row
a lookup, so each row costs a TLB lookup as well as its cache lines; on 2 MiB pages the hit path takes
less time (by how much: BENCHMARKS.md, measured by tools/bench_hugepages.py). The pool asks for them
with madvise(MADV_HUGEPAGE) on every mapping, but a tmpfs grants them only if it was mounted with
``huge=advise`` (or ``always``, ``within_size``); the default is ``never``. The mount option is the
operator's (README, "Huge pages").
"""

from __future__ import annotations

import os

SHM_DIR = "/dev/shm"
#: tmpfs huge= values under which the pool's madvise(MADV_HUGEPAGE) gets huge pages
HUGE_OK = frozenset({"advise", "always", "within_size"})


def shm_path(name: str) -> str:
    """The file of the shared-memory object NAME (without the leading slash)."""
    return os.path.join(SHM_DIR, name.lstrip("/"))


def huge_mode(mounts: str = "/proc/self/mounts", where: str = SHM_DIR) -> str | None:
    """The huge= option of the tmpfs mounted at ``where`` ("never" when the option is absent), or None
    when nothing is mounted there or the mount table cannot be read. The last mount at ``where`` wins
    (it hides the ones before it)."""
    mode = None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4 or parts[1] != where:
                    continue
                if parts[2] != "tmpfs":
                    mode = "never"
                    continue
                opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in parts[3].split(","))
                mode = opts.get("huge", "never")
    except OSError:
        return None
    return mode


def mapped_kib(name: str, smaps: str = "/proc/self/smaps", from_offset: int = 0) -> tuple[int, int]:
    """(resident, on huge pages) KiB of this process's mappings of the shm object NAME: the sums of
    Rss and ShmemPmdMapped over them in /proc/self/smaps. With from_offset, only the mappings that
    start at that file offset or later (a pool's mapping is split where its NUMA slow tier starts)."""
    path, rss, pmd, inside = shm_path(name), 0, 0, False
    with open(smaps, encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):  # range perms offset dev inode path
                inside = line.rstrip().endswith(" " + path) and int(head[2], 16) >= from_offset
            elif inside and head[0] == "Rss:":
                rss += int(head[1])
            elif inside and head[0] == "ShmemPmdMapped:":
                pmd += int(head[1])
    return rss, pmd
