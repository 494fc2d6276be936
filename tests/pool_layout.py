"""Byte offsets of the pool's shared layout (native/src/internal.h: shm_header, shm_table, shm_ring),
for the tests that corrupt a pool on purpose. test_pool_attach_checks checks them against a real pool."""

from __future__ import annotations

HDR_BYTES = 8192  # RECMG_HDR_BYTES: the table descriptors start here
TABLE_BYTES = 128  # sizeof(shm_table)
RING_HDR_BYTES = 256  # sizeof(shm_ring): the records follow

# shm_header: name -> (offset, struct format)
HEADER = {
    "magic": (0, "<Q"),
    "version": (8, "<I"),
    "hdr_bytes": (12, "<I"),
    "total_bytes": (16, "<Q"),
    "ready": (24, "<I"),
    "n_tables": (28, "<I"),
    "dtype": (32, "<i"),
    "slow_kind": (36, "<i"),
    "numa_node": (40, "<i"),
    "mode": (44, "<I"),
    "n_slots": (48, "<Q"),
    "slot_stride": (56, "<I"),
    "n_rings": (60, "<I"),
    "ring_records": (64, "<I"),
    "group_shift": (68, "<I"),
    "ring_stride": (72, "<Q"),
    "tables_off": (80, "<Q"),
    "vers_off": (88, "<Q"),
    "slots_off": (96, "<Q"),
    "index_off": (104, "<Q"),
    "rings_off": (112, "<Q"),
    "slow_off": (120, "<Q"),
    "slow_bytes": (128, "<Q"),
    "index_entries": (136, "<Q"),
    "meta_bytes": (144, "<Q"),
    "generation": (152, "<Q"),
    "daemon_pid": (160, "<i"),
    "writer_lock": (164, "<i"),  # the writer lock: its holder's pid, 0 when free
}
SLOW_PATH = (168, 1024)  # char slow_path[1024]
REPAIRS = (1192, "<Q")  # shm_header.repairs, after slow_path (the former padding)
PID_NS_INO = (1216, "<Q")  # shm_header.pid_ns_ino: the creator's PID namespace (0: not compared)
STAGED_VER = (1204, "<I")  # shm_header.staged_ver: the odd version of the staged row's window
STAGED_KEY = (1224, "<Q")  # shm_header.staged_key: (table + 1) << 40 | row of the row write_rows writes
HEADER_USED = 1256  # sizeof(shm_header); padding after it
STAGE_OFF = 4096  # RECMG_STAGE_OFF: that row's new bytes, up to HDR_BYTES

# shm_table (at HDR_BYTES + t * TABLE_BYTES)
TABLE = {
    "rows": (0, "<Q"),
    "dim": (8, "<I"),
    "dtype": (12, "<i"),
    "row_bytes": (16, "<I"),
    "index_first": (24, "<Q"),
    "slow_off": (32, "<Q"),
}

# shm_ring (at rings_off + i * ring_stride)
RING = {"owner": (0, "<i"), "claims": (4, "<I"), "owner_start": (8, "<Q"), "owner_head": (16, "<Q"),
        "head": (64, "<Q"), "tail": (128, "<Q")}
