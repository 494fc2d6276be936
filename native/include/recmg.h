/*
 * recmg.h - the C API of librecmg, the tiered embedding pool of recmg.
 *
 * A pool is one named POSIX shared-memory object that a DLRM inference process (the app) and the
 * recmg daemon both map. It holds the embedding tables' rows on a slow tier (plain DRAM, DRAM bound
 * to a NUMA node, or a file on an SSD), a fast tier of row slots in DRAM that only the daemon writes,
 * and one access ring per app process through which the daemon learns what the app looks up.
 *
 * This API mirrors the Python API (recmgd.pool.Pool). Every function that can fail returns a
 * negative RECMG_E* code and leaves a one-line message in recmg_errmsg(pool) (or in the caller's
 * buffer for create/attach/destroy, which have no pool yet). A pool handle may be used by several
 * threads (calls on one handle are serialised; use one handle per thread for parallel lookups, or
 * recmg_set_threads so that one call spreads its tables and bags over worker threads); a forked
 * child must attach again instead of using its parent's handle (it never releases the parent's
 * ring). Closing a handle while another thread is inside a call on it is undefined.
 *
 * Concurrency: the fast tier has one writer at a time (fills, evictions and write_rows take the
 * pool's writer lock, a word in shared memory holding the writer's pid; a writer killed mid-change
 * is found dead by the next one, which takes the lock over and repairs the fast tier). The
 * lock is never waited for without a limit: a writer that finds it held by another process for longer
 * than the handle's lock timeout (daemon role 100 ms, app role 2000 ms; RECMG_LOCK_TIMEOUT_MS in the
 * environment at attach, or recmg_set_lock_timeout) returns RECMG_ELOCKED having changed nothing.
 * Lookups never lock: each hit is read through the seqlock of its index entry's group of 64 entries
 * (the version before the entry, the row, the version again), and if the version changed the row is
 * read from the slow tier, which is the truth. The workers of recmg_set_threads poll for up to 2 ms between calls
 * before they sleep. write_rows writes each row (slow tier and copy) inside a window of that seqlock,
 * and slow-tier reads check it too: a lookup or read_rows sees every row whole, old or new. A reader
 * that meets a row being written waits for that row's write as long as its writer runs, but not for a
 * dead writer nor a stopped one (SIGSTOP): it then reads the row's new bytes, which write_rows stages
 * whole before each row's window, and the repair of a dead writer's lock finishes the row from them. (A
 * memory slow tier's rows wider than 4096 bytes are not staged: they are read as the slow tier holds
 * them. An SSD tier's row is one write(2), which no signal leaves half done.)
 *
 * Keys: a row of a table is the int64 key (table << 40) | row. Ring records are uint64 words with
 * the record type in bits 62..63 (0 lookup, 1 batch boundary, 2 hint, 3 change of owner) and the key
 * in bits 0..61. A change of owner comes before the first record of each owner of a ring but its first
 * (an app that took the ring over, from a dead app or after one that detached): its key is the new
 * owner's pid, and the records before it are the previous owners' (an unfinished batch of theirs ends
 * there, unfinished).
 */
#ifndef RECMG_H
#define RECMG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RECMG_LAYOUT_VERSION 5u

#define RECMG_ROW_BITS 40
#define RECMG_ROW_MASK ((UINT64_C(1) << RECMG_ROW_BITS) - 1)
#define RECMG_KEY(table, row) ((int64_t)(((uint64_t)(table) << RECMG_ROW_BITS) | (uint64_t)(row)))
#define RECMG_KEY_TABLE(key) ((uint32_t)((uint64_t)(key) >> RECMG_ROW_BITS))
#define RECMG_KEY_ROW(key) ((int64_t)((uint64_t)(key) & RECMG_ROW_MASK))

#define RECMG_REC_LOOKUP 0u
#define RECMG_REC_BATCH_END 1u
#define RECMG_REC_HINT 2u
#define RECMG_REC_OWNER 3u
#define RECMG_REC_TYPE(word) ((unsigned)((uint64_t)(word) >> 62))
#define RECMG_REC_KEY(word) ((int64_t)((uint64_t)(word) & ((UINT64_C(1) << 62) - 1)))

/* error codes (all negative) */
enum {
    RECMG_OK = 0,
    RECMG_EINVAL = -1,   /* bad argument (mismatched dims, bad mode, bad name, ...) */
    RECMG_ENOENT = -2,   /* no pool of that name */
    RECMG_EEXIST = -3,   /* a pool of that name already exists */
    RECMG_EVERSION = -4, /* a pool of another layout version */
    RECMG_ENOTPOOL = -5, /* the object is not a pool, or it is truncated */
    RECMG_ERANGE = -6,   /* a row id out of range (the message names it) */
    RECMG_EIO = -7,      /* slow-tier I/O failed */
    RECMG_ENOSPC = -8,   /* not enough free fast-tier slots, or no free access ring */
    RECMG_ENOMEM = -9,   /* out of memory */
    RECMG_ESYS = -10,    /* another system call failed (the message names it) */
    RECMG_EBUSY = -11,   /* the pool is still being created, or has a live daemon */
    RECMG_ELOCKED = -12, /* the pool's writer lock stayed held by another process past the timeout */
};

enum { RECMG_F32 = 0, RECMG_F16 = 1 };
enum { RECMG_SLOW_DRAM = 0, RECMG_SLOW_NUMA = 1, RECMG_SLOW_SSD = 2 };
enum { RECMG_SUM = 0, RECMG_MEAN = 1, RECMG_MAX = 2 };
enum { RECMG_ROLE_APP = 0, RECMG_ROLE_DAEMON = 1 };

/* attach/create flags */
#define RECMG_F_NO_IO_URING 0x1u /* read the SSD tier with preadv even if io_uring works */
#define RECMG_F_NO_DIRECT 0x2u   /* never use O_DIRECT on the SSD tier */
#define RECMG_F_REUSE_SLOW 0x4u  /* create: reuse an existing slow-tier file of the tables' size, content kept */
#define RECMG_F_NO_WAIT 0x8u     /* attach: fail at once (RECMG_EBUSY, RECMG_ENOTPOOL) on an object still being
                                  * created, instead of waiting up to 2 s for its creator; a daemon's attach
                                  * then also takes the writer lock only if it is free (no wait for a holder) */

typedef struct recmg_pool recmg_pool;

typedef struct recmg_table_spec {
    uint64_t rows;
    uint32_t dim;
} recmg_table_spec;

typedef struct recmg_create_opts {
    uint32_t n_tables;
    const recmg_table_spec *tables;
    uint64_t n_slots;
    int dtype;             /* RECMG_F32 or RECMG_F16 */
    int slow_kind;         /* RECMG_SLOW_* */
    int numa_node;         /* RECMG_SLOW_NUMA: the node the slow tier is bound to */
    const char *slow_path; /* RECMG_SLOW_SSD: the backing file, created with its space reserved
                            * (posix_fallocate); an existing file is never truncated: create fails
                            * (RECMG_EEXIST) unless RECMG_F_REUSE_SLOW, which keeps it and its content
                            * if its size is the tables' size */
    uint32_t mode;         /* permission bits of the shm object and the file; 0 means 0600 */
    uint32_t ring_records; /* records per access ring, rounded up to a power of two, at least 16; 0 = 65536 */
    uint32_t n_rings;      /* access rings (attached app processes at once); 0 = 16 */
    int role;              /* the creator's role: RECMG_ROLE_APP takes a ring */
    uint32_t flags;        /* RECMG_F_* */
} recmg_create_opts;

typedef struct recmg_pool_info {
    uint32_t version;
    uint32_t n_tables;
    uint64_t n_slots;
    int dtype;
    int slow_kind;
    int numa_node;
    int role;
    uint32_t n_rings;
    uint32_t ring_records;
    int ring_index;        /* this handle's ring, -1 if none */
    int direct_io;         /* SSD tier read with O_DIRECT */
    uint32_t io_align;     /* O_DIRECT offset alignment in bytes (0 if not direct) */
    uint32_t io_depth;     /* io_uring queue depth */
    uint64_t total_bytes;  /* size of the shm object */
    uint64_t meta_bytes;   /* header, table descriptors, entry-group versions, index, rings */
    uint64_t table_bytes;  /* rows * row_bytes over all tables (the slow tier's content) */
    uint64_t slot_bytes;   /* the fast tier's row slots */
    uint64_t generation;   /* fast-tier writes so far */
    uint64_t free_slots;   /* as this handle last saw them (daemon side) */
    char io_backend[16];   /* "io_uring", "preadv" or "memory" */
    char slow_path[1024];
} recmg_pool_info;

typedef struct recmg_table_info {
    uint64_t rows;
    uint32_t dim;
    int dtype;
    uint32_t row_bytes;
} recmg_table_info;

typedef struct recmg_counters {
    uint64_t lookups;    /* ids looked up */
    uint64_t unique;     /* distinct rows per call, summed over calls */
    uint64_t hits;       /* ids served from the fast tier */
    uint64_t on_demand;  /* distinct rows per call read from the slow tier */
    uint64_t ring_drops; /* ring records dropped because the ring was full */
    uint64_t slow_bytes; /* bytes read from the slow tier by lookups and fills */
} recmg_counters;

typedef struct recmg_ring_info {
    int32_t pid;       /* owning process, 0 if the ring is free */
    uint64_t waiting;  /* records not yet drained */
    uint64_t drops;
    uint64_t capacity;
} recmg_ring_info;

/* What a daemon reads of a ring each tick (recmg_get_rings): recmg_ring_info's fields, and how its
 * owners changed. claims counts the ring's claims (0 in pools made before it was counted): a count that
 * moved since the last look is a change of owner, even one that already left; a new pid with the count
 * not moved is a claim under way (or an app of a library before the count). before_claim: of the
 * records waiting, how many were logged before the last claim (a previous owner's, left undrained). */
typedef struct recmg_ring_state {
    int32_t pid;
    uint32_t claims;
    uint64_t waiting;
    uint64_t drops;
    uint64_t capacity;
    uint64_t before_claim;
} recmg_ring_state;

/* One table's bags for recmg_embedding_bags. offsets has n_bags + 1 entries (CSR: bag b holds
 * ids[offsets[b] .. offsets[b+1]-1]); weights (per id) may be NULL; bag b's dim floats go to
 * out + b * out_stride (out_stride 0: dim, the bags back to back; a larger one writes the tables' bags
 * side by side into one [n_bags, sum of dims] output, as a table-batched front wants it). */
typedef struct recmg_bag_args {
    uint32_t table;
    int mode;
    const int64_t *ids;
    uint64_t n_ids;
    const int64_t *offsets;
    uint64_t n_bags;
    const float *weights;
    float *out;
    uint64_t out_stride;
} recmg_bag_args;

/* ---- lifetime ---- */
int recmg_create(const char *name, const recmg_create_opts *opts, recmg_pool **out, char *err,
                 size_t errlen);
/* Refuses (RECMG_EINVAL) a process of another PID namespace than the pool's creator: every process
 * using a pool must share one, as the writer lock and the rings name processes by pid. */
int recmg_attach(const char *name, int role, uint32_t flags, recmg_pool **out, char *err, size_t errlen);
void recmg_close(recmg_pool *pool);
int recmg_destroy(const char *name, char *err, size_t errlen); /* unlinks the object (and keeps the file) */
/* Whether name can name a pool (1..200 of letters, digits, '_', '-', '.', not starting with '.'; a
 * leading '/' is allowed): RECMG_OK, or RECMG_EINVAL with the reason in err. */
int recmg_check_name(const char *name, char *err, size_t errlen);
const char *recmg_errmsg(const recmg_pool *pool);
/* The bag kernel this handle's sum and mean lookups of a table use: "avx512f" (dim 64 or 128, unless
 * RECMG_NO_AVX512=1 was set when the handle was opened), "avx2" (dim 16, 32, 64 or 128; float16 rows
 * also need F16C) or "generic"; "" for a table out of range. */
const char *recmg_lookup_kernel(const recmg_pool *pool, uint32_t table);
const char *recmg_strerror(int code);

int recmg_info(recmg_pool *pool, recmg_pool_info *info);
int recmg_get_table_info(recmg_pool *pool, uint32_t table, recmg_table_info *info);
/* Sizes of a layout without creating it (bytes of metadata and of table rows). */
int recmg_layout_size(const recmg_create_opts *opts, uint64_t *meta_bytes, uint64_t *table_bytes,
                      uint64_t *total_bytes);

/* ---- app side ---- */
int recmg_embedding_bag(recmg_pool *pool, uint32_t table, const int64_t *ids, uint64_t n_ids,
                        const int64_t *offsets, uint64_t n_bags, int mode, const float *weights,
                        float *out);
int recmg_embedding_bags(recmg_pool *pool, uint32_t n, const recmg_bag_args *args);
/* How long this handle's writes (fill, evict, write_rows, free_slots) wait for the writer lock that
 * another process holds before they return RECMG_ELOCKED (milliseconds, 1..3600000). */
int recmg_set_lock_timeout(recmg_pool *pool, uint32_t ms);
/* Threads a multi-table lookup may use (the caller included; default 1). Memory slow tiers only. */
int recmg_set_threads(recmg_pool *pool, int n);
int recmg_end_batch(recmg_pool *pool);
int recmg_hint(recmg_pool *pool, uint32_t table, const int64_t *rows, uint64_t n);
/* Slow tier, in the storage dtype (float or uint16 half bits), row after row. */
int recmg_read_rows(recmg_pool *pool, uint32_t table, const int64_t *rows, uint64_t n, void *out);
int recmg_write_rows(recmg_pool *pool, uint32_t table, const int64_t *rows, uint64_t n, const void *values);
/* write_rows that tells how many rows were written: all n (also with RECMG_ENOMEM: no memory to
 * rewrite their fast-tier copies, which were dropped), or on a slow-tier write failure (RECMG_EIO) the
 * first *written rows of the batch (their fast-tier copies updated too), none after; 0 with any other
 * error (nothing was written). */
int recmg_write_rows_ex(recmg_pool *pool, uint32_t table, const int64_t *rows, uint64_t n, const void *values,
                        uint64_t *written);

/* ---- daemon side (the only writer of the fast tier) ---- */
int64_t recmg_fill_keys(recmg_pool *pool, const int64_t *keys, uint64_t n);   /* newly filled */
int64_t recmg_evict_keys(recmg_pool *pool, const int64_t *keys, uint64_t n);  /* evicted */
int64_t recmg_resident_keys(recmg_pool *pool, int64_t *out, uint64_t cap);    /* count (may exceed cap) */
int64_t recmg_free_slots(recmg_pool *pool);
/* The pid of the live process that holds the pool's writer lock, 0 when it is free or its holder is dead
 * (the next write takes it over); never waits. */
int64_t recmg_writer_holder(recmg_pool *pool);
/* How many times rows left the fast tier other than by a daemon's evictions (a writer that died in the
 * middle of a change, copies a writer dropped): a daemon that sees it change rebuilds its record of what
 * is resident from recmg_resident_keys. Never waits. */
int64_t recmg_repairs(recmg_pool *pool);
/* If the writer lock's holder is dead, take the lock over and repair the fast tier now (never waits for
 * a live holder): 1 when it repaired, 0 when there was nothing to do. A daemon calls it periodically,
 * so that a writer that died inside write_rows leaves its table's copies for no longer than that. */
int64_t recmg_repair(recmg_pool *pool);
int recmg_get_ring_info(recmg_pool *pool, uint32_t ring, recmg_ring_info *info);
/* The state of rings first, first + 1, ... into out[0 .. n-1], as many as the pool has from first:
 * returns how many were filled (a daemon's look at every ring in one call). */
int64_t recmg_get_rings(recmg_pool *pool, uint32_t first, recmg_ring_state *out, uint64_t n);
int64_t recmg_drain_ring(recmg_pool *pool, uint32_t ring, uint64_t *out, uint64_t max_records);

/* Frees a ring whose app is gone (drain it first): RECMG_EBUSY, nothing changed, while its owner lives
 * (another process, or another handle of this one) and for this handle's own ring. */
int recmg_release_ring(recmg_pool *pool, uint32_t ring);
int recmg_table_counters(recmg_pool *pool, uint32_t table, recmg_counters *c);
int recmg_ring_counters(recmg_pool *pool, uint32_t ring, recmg_counters *c);
int recmg_reset_counters(recmg_pool *pool);

/* ---- NUMA slow tier (page mode helpers; raw syscalls, no libnuma) ---- */
/* The node of the page holding each listed row of a table's slow tier (-errno for unmapped). */
int recmg_slow_nodes(recmg_pool *pool, uint32_t table, const int64_t *rows, uint64_t n, int32_t *nodes);
/* Move the pages that hold rows [first, first + count) of a table's slow tier to a node; returns the
 * pages now there. MPOL_MF_MOVE: a page another process maps too (an app's, a daemon's) is not moved;
 * recmg_move_slow_pages with RECMG_MOVE_ALL (CAP_SYS_NICE) moves those. -EBUSY pages are retried. */
int64_t recmg_move_slow_rows(recmg_pool *pool, uint32_t table, uint64_t first, uint64_t count, int node);

/* Page mode (the daemon moves whole 4096-byte pages of a table's slow tier; a table's region starts on
 * a page boundary, so page k of table t holds bytes [k * 4096, (k + 1) * 4096) of its rows). A page is
 * read once by these calls before it is queried or moved (move_pages sees only pages this process
 * maps). Status per page: the node it is on, or a negative errno (-EBUSY, -ENOMEM: target node full,
 * -EACCES: mapped by another process and no MPOL_MF_MOVE_ALL, -EFAULT, -ENOENT, -EPERM). */
enum {
    RECMG_MOVE_ALL = 1,    /* MPOL_MF_MOVE_ALL: also pages the apps map (needs CAP_SYS_NICE); without the
                              capability the call falls back to MPOL_MF_MOVE and says so in move_all */
    RECMG_MOVE_STRICT = 2, /* with RECMG_MOVE_ALL: no fallback, EPERM is an error */
};

typedef struct recmg_move_stats {
    uint64_t calls;        /* move_pages system calls made (retries included) */
    uint64_t requested;    /* pages asked for */
    uint64_t moved;        /* pages on the target node afterwards (those already there included) */
    uint64_t busy_retries; /* pages asked for again after -EBUSY */
    int move_all;          /* 1 if MPOL_MF_MOVE_ALL was in effect, 0 if MPOL_MF_MOVE */
    int pad;
} recmg_move_stats;

/* Pages of a table's slow tier (ceil(rows * row_bytes / 4096)); memory slow tiers only. */
int64_t recmg_slow_pages(recmg_pool *pool, uint32_t table);
/* The node of each listed page of a table's slow tier (or a negative errno), by move_pages(nodes=NULL). */
int recmg_slow_page_nodes(recmg_pool *pool, uint32_t table, const int64_t *pages, uint64_t n, int32_t *nodes);
/* Move the listed pages of a table's slow tier to a node with move_pages(2), asking again up to
 * busy_retries times for the pages whose status is -EBUSY; status[i] gets page i's final status.
 * Returns how many pages are on the node afterwards; stats (may be NULL) gets the call's counts. */
int64_t recmg_move_slow_pages(recmg_pool *pool, uint32_t table, const int64_t *pages, uint64_t n, int node,
                              uint32_t flags, int busy_retries, int32_t *status, recmg_move_stats *stats);

#ifdef __cplusplus
}
#endif

#endif /* RECMG_H */
