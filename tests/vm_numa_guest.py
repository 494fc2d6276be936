"""The guest side of tests/test_vm_numa.py: run in the NUMA test VM (tools/numa_vm.py), where node 1 is a
CPU-less memory node. It measures and prints one JSON report; the host test asserts on it.

    python tests/vm_numa_guest.py          # in the guest, as root

What it does: reads the node topology from sysfs; creates a pool with slow="numa:1" and writes rows of
known values; records, at each stage, the node of every row's page (Pool.slow_nodes) and the page counts
per node of the pool's mappings in /proc/self/numa_maps; looks rows up through the pool's native lookup
(bags of one id: the output is the row), some from the fast tier (filled through a daemon handle, closed
before the moves) and the rest from the slow tier; moves a range of rows' pages to node 0 and back to 1
(Pool.move_slow_rows). Lookups call librecmg's recmg_embedding_bag with a numpy output buffer, the call
Pool.embedding_bag makes, because torch, which Pool.embedding_bag returns, takes about 85 s to import in
the emulated guest. Then it runs the C example app on a numa:1 pool, and tests/page_mode_scenario.py
(page mode: the daemon's page driver moving an app's hot pages between node 1 and node 0).

The host test imports this module for its constants (no recmgd import happens at module level).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096
SLOW_NODE, FAST_NODE = 1, 0
# Row sizes that do and do not divide a page: 96-byte rows straddle page boundaries.
TABLES = ((3000, 24), (500, 64))  # (rows, dim), float32
SLOTS = 400
MOVE = (0, 1000, 500)  # table, first row, count: the rows whose pages move to node 0 and back
LOOKUP_IDS = 240  # lookups per table per round, half of them rows filled into the fast tier


def value(table: int, row: Any, col: Any) -> Any:
    """The value stored at (table, row, col): exact in float32 for these sizes."""
    return table * 100000 + row + col / 64.0


def row_bytes(table: int) -> int:
    return TABLES[table][1] * 4


def table_pages(table: int) -> int:
    """Pages of a table's slow-tier region (each table's region starts on a page boundary)."""
    rows, _ = TABLES[table]
    return -(-rows * row_bytes(table) // PAGE)


def row_pages(table: int, first: int, count: int) -> range:
    """The pages (within the table's region) that hold rows [first, first + count)."""
    rb = row_bytes(table)
    return range(first * rb // PAGE, -(-(first + count) * rb // PAGE))


def nodes_topology() -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = Path("/sys/devices/system/node")
    for d in sorted(base.glob("node[0-9]*")):
        meminfo = (d / "meminfo").read_text()
        m = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
        out[d.name.removeprefix("node")] = {
            "cpulist": (d / "cpulist").read_text().strip(),
            "mem_kb": int(m.group(1)) if m else -1,
            "distance": (d / "distance").read_text().split(),
        }
    return out


def numa_maps(shm_name: str) -> list[dict[str, Any]]:
    """This process's mappings of /dev/shm/NAME from /proc/self/numa_maps: policy and pages per node."""
    out = []
    for line in Path("/proc/self/numa_maps").read_text().splitlines():
        if f"file=/dev/shm/{shm_name}" not in line.split():
            continue
        fields = line.split()
        per_node = {m.group(1): int(m.group(2)) for m in re.finditer(r"\bN(\d+)=(\d+)", line)}
        out.append({"addr": fields[0], "policy": fields[1], "pages": per_node})
    return out


def main() -> int:
    import numpy as np
    from recmgd._native import ffi, lib

    from recmgd.pool import Pool

    t0 = time.monotonic()
    report: dict[str, Any] = {"nodes": nodes_topology()}
    name = f"vm_numa_{uuid.uuid4().hex[:8]}"
    pool = Pool.create(name, tables=list(TABLES), slots=SLOTS, slow=f"numa:{SLOW_NODE}", threads=1)
    daemon = Pool.attach(name, role="daemon")
    stages: dict[str, Any] = {}

    def where(stage: str) -> None:
        stages[stage] = {
            "rows": {str(t): np.asarray(pool.slow_nodes(t, np.arange(rows))).tolist()
                     for t, (rows, _) in enumerate(TABLES)},
            "numa_maps": numa_maps(name),
        }

    def lookups(stage: str) -> None:
        """Bags of one id each through the native lookup; the output must be the rows themselves."""
        rng = np.random.default_rng(len(stage))
        res: dict[str, Any] = {}
        for t, (rows, dim) in enumerate(TABLES):
            filled = np.arange(0, rows, 2 * rows // SLOTS + 1)[: SLOTS // len(TABLES)]
            ids = np.concatenate([rng.choice(filled, LOOKUP_IDS // 2),
                                  rng.integers(0, rows, LOOKUP_IDS // 2), [0, rows - 1]]).astype(np.int64)
            offsets = np.arange(len(ids) + 1, dtype=np.int64)
            out = np.full((len(ids), dim), np.nan, dtype=np.float32)
            before = pool.counters()["tables"][t]
            rc = lib.recmg_embedding_bag(pool._handle, t, ffi.from_buffer("int64_t[]", ids), len(ids),
                                         ffi.from_buffer("int64_t[]", offsets), len(ids), 0, ffi.NULL,
                                         ffi.from_buffer("float[]", out))
            after = pool.counters()["tables"][t]
            want = value(t, ids[:, None].astype(np.float64), np.arange(dim)[None, :]).astype(np.float32)
            res[str(t)] = {"rc": int(rc), "ids": len(ids), "wrong": int((out != want).sum()),
                           "hits": after["hits"] - before["hits"],
                           "on_demand": after["on_demand"] - before["on_demand"]}
        pool.end_batch()
        stages.setdefault(stage, {})["lookups"] = res

    where("created")
    for t, (rows, dim) in enumerate(TABLES):
        r = np.arange(rows)
        pool.write_rows(t, r, value(t, r[:, None].astype(np.float64), np.arange(dim)[None, :]))
    # the fast tier: every few rows of each table, through a daemon handle (as recmgd fills it)
    for t, (rows, _) in enumerate(TABLES):
        daemon.fill(t, np.arange(0, rows, 2 * rows // SLOTS + 1)[: SLOTS // len(TABLES)])
    # MPOL_MF_MOVE moves only pages that one mapping maps: the daemon handle's mapping (its fills read
    # the slow tier) goes before the moves, as a second process's would have to
    daemon.close()
    where("written")
    lookups("written")
    table, first, count = MOVE
    report["moved_to_fast"] = pool.move_slow_rows(table, first, count, FAST_NODE)
    where("moved_to_fast")
    lookups("moved_to_fast")
    report["moved_back"] = pool.move_slow_rows(table, first, count, SLOW_NODE)
    where("moved_back")
    lookups("moved_back")
    report["stages"] = stages
    report["table_bytes"] = [t.rows * t.row_bytes for t in pool.tables]
    pool.destroy()

    # the C API: the example app creates a numa:1 pool, fills, looks up and checks every result
    app = REPO / "native" / "build" / "dlrm_example"
    r = subprocess.run([str(app), f"vm_ex_{os.getpid()}", f"numa:{SLOW_NODE}"], capture_output=True,
                       text=True, timeout=120)
    report["c_example"] = {"rc": r.returncode, "out": r.stdout.strip(), "err": r.stderr.strip()}

    # page mode end to end (the daemon's PageDriver promoting and demoting an app's hot pages)
    r = subprocess.run([sys.executable, str(REPO / "tests" / "page_mode_scenario.py"), "--slow-node",
                        str(SLOW_NODE), "--fast-node", str(FAST_NODE)], capture_output=True, text=True,
                       timeout=300)
    try:
        scenario = json.loads(r.stdout) if r.returncode == 0 else None
    except json.JSONDecodeError:
        scenario = None
    report["page_mode"] = {"rc": r.returncode, "json": scenario, "err": r.stderr[-2000:]}
    report["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
