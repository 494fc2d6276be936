/* internal.h - the shared-memory layout of a pool and the process-local handle. */
#ifndef RECMG_INTERNAL_H
#define RECMG_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "recmg.h"

#define RECMG_MAGIC UINT64_C(0x4c4f4f50474d4352) /* "RCMGPOOL" little-endian */
#define RECMG_HDR_BYTES 8192u
/* The second half of the header's region holds the row write_rows is writing, staged whole
 * (shm_header.staged_key names it) */
#define RECMG_STAGE_OFF 4096u
#define RECMG_STAGE_BYTES (RECMG_HDR_BYTES - RECMG_STAGE_OFF)
#define RECMG_PATH_MAX 1024u
#define RECMG_PAGE 4096u
#define RECMG_ERRLEN 256u
#define RECMG_MAX_TABLES (1u << 22)
/* 64 index entries (rows) share one seqlock version: the versions of tables of millions of rows stay
 * in the CPU caches (4 bytes per 64 rows), so a hit reads its index entry once, the row, and nothing
 * else from memory. */
#define RECMG_GROUP_SHIFT 6u

/* ---------------- shared layout (all offsets from the start of the object) ---------------- */

typedef struct shm_counters {
    _Atomic uint64_t lookups, unique, hits, on_demand, ring_drops, slow_bytes;
} shm_counters;

typedef struct shm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_bytes;
    uint64_t total_bytes;
    _Atomic uint32_t ready; /* set (release) when creation finished */
    uint32_t n_tables;
    int32_t dtype;
    int32_t slow_kind;
    int32_t numa_node;
    uint32_t mode;
    uint64_t n_slots;
    uint32_t slot_stride;  /* bytes per fast-tier slot (a multiple of 64) */
    uint32_t n_rings;
    uint32_t ring_records; /* a power of two */
    uint32_t group_shift;  /* index entries e >> group_shift share one seqlock version */
    uint64_t ring_stride;
    uint64_t tables_off;
    uint64_t vers_off;     /* the seqlock versions, one uint32 per group of 2^group_shift index entries */
    uint64_t slots_off, index_off, rings_off, slow_off;
    uint64_t slow_bytes;   /* bytes of table rows (in the object for dram/numa, in the file for ssd) */
    uint64_t index_entries;
    uint64_t meta_bytes;
    _Atomic uint64_t generation; /* bumped by every fast-tier write operation */
    _Atomic int32_t daemon_pid;
    _Atomic int32_t writer_lock; /* the writer lock: the holder's pid, 0 when free (writer.c) */
    char slow_path[RECMG_PATH_MAX];
    /* bumped when rows left the fast tier other than by the daemon's evictions: a dead writer's repair,
     * copies a writer dropped (no memory, a bad slot number); a daemon then rebuilds its record of what
     * is resident (zero in pools made before it: the field was padding) */
    _Atomic uint64_t repairs;
    /* table + 1 while a write_rows has written its slow rows and not yet their copies, else 0: a
     * writer that dies then leaves copies older than the slow tier, all dropped at the repair */
    _Atomic int32_t writing_table;
    /* the odd version of the window the staged row is written in (staged_key, below; writer.c): a key
     * left by a writer that did not stage (an older library) names no window of it */
    _Atomic uint32_t staged_ver;
    /* the PID namespace of the pool's creator (device and inode of /proc/self/ns/pid; 0 in pools made
     * before it, the field was padding, or where /proc was not readable): the writer lock and the rings
     * name processes by pid, so a process of another PID namespace is refused at attach */
    uint64_t pid_ns_dev, pid_ns_ino;
    /* the row whose window write_rows has open, (table + 1) << 40 | row, its new bytes staged at
     * RECMG_STAGE_OFF (memory slow tiers, rows of up to RECMG_STAGE_BYTES; 0: none): a reader of a
     * stopped or dead writer's row reads them, and the repair finishes the row from them (writer.c;
     * zero in pools made before it: the field was padding) */
    _Atomic uint64_t staged_key;
    char pad2[24];
} shm_header;

/* A table's geometry: the first 40 bytes of its shared descriptor (shm_table.d), and, as validated at
 * attach, the handle's private copy (recmg_pool.tables); the shared one is used for its counters only. */
typedef struct tabdesc {
    uint64_t rows;
    uint32_t dim;
    int32_t dtype;
    uint32_t row_bytes;
    uint32_t pad;
    uint64_t index_first; /* first entry of this table in the index */
    uint64_t slow_off;    /* byte offset of row 0 in the slow tier (object region or file) */
} tabdesc;

typedef struct shm_table {
    tabdesc d;
    char pad2[24];
    shm_counters c;       /* per-table counters, all processes */
    char pad3[16];
} shm_table;


typedef struct shm_ring {
    _Atomic int32_t owner;  /* pid of the app that owns it, 0 if free */
    /* successful claims of the ring, counted after the claim's owner_head is stored (0 in pools made
     * before it: the field was padding): a daemon tells every change of owner by it, one that already
     * left too, and a claim under way (a new pid, the count not yet moved) */
    _Atomic uint32_t claims;
    /* the owner's start time (clock ticks after boot, /proc/PID/stat; 0 when unknown, and in pools made
     * before it: the field was padding): a ring that names this process's pid is held by a handle of
     * this process only if it also has this process's start time (else its pid was reused) */
    _Atomic uint64_t owner_start;
    /* the ring's head when its last claim took it (0 in pools made before it: the field was padding):
     * the records before it, if still waiting, are a previous owner's (recmg_get_rings' before_claim).
     * Written only by a claim that won its compare-and-swap, before it counts the claim */
    _Atomic uint64_t owner_head;
    char padA[40];
    _Atomic uint64_t head;  /* written by the producer only */
    char padB[56];
    _Atomic uint64_t tail;  /* written by the consumer (daemon) only */
    char padC[56];
    shm_counters c;         /* per-process counters (ring_drops counted here) */
    char padD[16];
    /* ring_records uint64 records follow */
} shm_ring;

_Static_assert(sizeof(shm_table) == 128, "table descriptor size");
_Static_assert(sizeof(shm_ring) == 256, "ring header size");
_Static_assert(sizeof(shm_header) <= RECMG_STAGE_OFF, "header size");
_Static_assert(sizeof(shm_header) == 1256, "the header's size (fields added since layout 5 replace padding)");

/* ---------------- process-local ---------------- */

/* The pool's geometry as this handle validated it at attach (or wrote it at create). Everything in
 * the shared object is input from whoever can write it (the pool's creator), so nothing read from
 * shared memory after attach is used as a size, offset, stride or count: the handle uses this copy
 * (p->h points at it), and bounds every slot number it reads from the index and every ring head/tail. */
typedef struct pool_geom {
    uint32_t n_tables;
    int32_t dtype;
    int32_t slow_kind;
    int32_t numa_node;
    uint32_t mode;
    uint32_t slot_stride;
    uint32_t n_rings;
    uint32_t ring_records;
    uint64_t n_slots;
    uint64_t ring_stride;
    uint64_t total_bytes;
    uint64_t meta_bytes;
    uint64_t slow_bytes;
    uint64_t index_entries;
    char slow_path[RECMG_PATH_MAX];
} pool_geom;


typedef struct slowio {
    int fd;         /* buffered read/write */
    int dfd;        /* O_DIRECT read-only, -1 if not used */
    uint32_t align; /* O_DIRECT offset/length/memory alignment */
    int uring_state; /* 0 not tried, 1 ready, -1 unavailable or disabled */
    unsigned depth;
    void *uring;    /* struct io_uring *, allocated when ready */
    pid_t uring_pid; /* the process that set the ring up: a child forked with the handle makes its own (a
                      * ring's queues are shared memory: two processes submitting to one corrupt both) */
    uint8_t *bounce;
    size_t bounce_cap;
    void *reqs;     /* struct io_req array */
    size_t reqs_cap;
    uint32_t flags;
    int writable;   /* fd open read-write and the owner may write the file */
} slowio;

/* Per-thread lookup scratch. */
/* A growable list of row ids. */
typedef struct rowvec {
    int64_t *v;
    size_t n, cap;
} rowvec;

typedef struct lscratch {
    int32_t *slot;  /* per id: slot, -1 (memory miss) or -2 - k (k-th distinct SSD miss) */
    size_t slot_cap;
    int64_t *urow;  /* distinct rows of the call (to clear their seen bits) */
    size_t urow_cap;
    uint64_t **seen; /* per table, one bit per row, all clear between calls */
    struct rowvec *mrows; /* per table, the missing rows that this thread's chunks of a split argument
                           * read (with repeats), empty between calls */
    uint32_t *ver;  /* per id: its entry's version when pass 1 read the entry (checked after the row's copy) */
    size_t ver_cap;
    char err[RECMG_ERRLEN];
} lscratch;

/* What one table's lookup did (the caller adds the counters, and publishes the ring records that the
 * work items wrote, in argument order). */
typedef struct bagres {
    int rc;
    int pad;
    uint64_t unique, hits, on_demand, slow_bytes;
    char err[RECMG_ERRLEN];
} bagres;

typedef struct hash_ent {
    int64_t key;
    uint32_t stamp;
    int32_t val;
} hash_ent;

typedef void (*acc_fn)(float *out, const void *row, float w, uint32_t dim);
typedef void (*max_fn)(float *out, const void *row, uint32_t dim);

struct recmg_pool {
    char name[256];
    int role;
    uint32_t flags;
    uint8_t *base;
    size_t map_bytes;
    const pool_geom *h;   /* = &geom: the validated geometry (never the shared header) */
    shm_header *sh;       /* the shared header: ready, generation, daemon_pid, writer_lock only */
    tabdesc *tables;      /* validated table descriptors (process-local) */
    shm_table *stab;      /* the shared table descriptors: their counters only */
    pool_geom geom;
    uid_t owner;          /* the shm object's owner: the slow-tier file must be theirs */
    uint32_t lock_ms;     /* how long writer_lock waits for another process's writer (ms) */
    int lock_fd;          /* daemon role: the shm object's fd, flock()ed so that one daemon serves a pool */
    int busguard;         /* daemon role: the mapping's registration with the SIGBUS guard (busguard.c), or -1 */
    _Atomic uint32_t *vers; /* seqlock versions of the index entries' groups */
    uint8_t *slots;
    _Atomic int32_t *index;
    uint8_t *rings;
    uint8_t *slow; /* dram/numa slow tier, NULL for ssd */
    int ring_index;
    shm_ring *ring;
    /* the ring was another owner's before this handle claimed it: this handle's first records begin
     * with a change of owner (RECMG_REC_OWNER), written by the first run that has room for it */
    int ring_mark;
    pid_t pid;
    uint64_t start; /* this process's start time (proc_start), for its rings' owner_start */
    slowio io;
    pthread_mutex_t lock; /* serialises calls on this handle */
    pthread_mutex_t err_lock; /* rc_set's, for err */
    /* kernels */
    acc_fn acc32, acc16;
    acc_fn facc32, facc16; /* fused: accumulate straight from a slot with relaxed atomic word loads */
    int vec_copy; /* AVX2 seqlock row copies */
    int vec512;   /* AVX-512F fused bag kernels (kernels_select; RECMG_NO_AVX512=1 keeps AVX2) */
    int vec_f16;  /* F16C: the fused bag kernels take float16 rows too */
    int fault_pass2; /* RECMG_FAULT_STOP_BEFORE_PASS2 was set when the handle was opened (fault_stop) */
    max_fn max32, max16;
    /* scratch (grown on demand) */
    struct lscratch *ls;   /* lookup scratch: [0] the calling thread, [1..] the workers */
    struct workers *wk;    /* lookup worker threads (memory slow tiers), NULL until first needed */
    int n_threads;         /* threads a multi-table lookup may use, the caller included */
    struct hash_ent *h_ent;
    size_t h_cap;
    size_t h_mask;
    uint32_t h_gen;
    uint8_t *mbuf;
    size_t mbuf_cap;
    int64_t *m_rows;
    size_t m_cap;
    void *sreq; /* slow_req array */
    size_t sreq_cap;
    uint32_t *m_ver; /* the versions under which read_slow_whole reads its rows */
    size_t m_ver_cap;
    /* the last entry-group version that row_write_wait gave up on (the window of a dead or stopped
     * writer), group << 32 | version: the next wait for that group at that version does not wait again */
    _Atomic uint64_t stale;
    /* daemon side: free-slot stack, valid for generation free_gen */
    uint32_t *free_list;
    uint64_t n_free;
    uint64_t free_gen;
    int free_valid;
    char err[RECMG_ERRLEN];
};

/* errors: format into the handle (or a caller buffer) and return code. rc_set writes the handle's
 * message under its own lock (err_lock), so that two threads' failed calls on one handle (argument checks
 * run before p->lock) leave one of the two messages whole. */
int rc_set(recmg_pool *p, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int rc_buf(char *buf, size_t len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The handle's message copied into buf (under err_lock); returns code. */
int err_copy(recmg_pool *p, int code, char *buf, size_t len);
/* ring.c: a process's start time, clock ticks after boot (/proc/PID/stat field 22); 0 if unknown. */
uint64_t proc_start(pid_t pid);
/* A NULL pointer argument where the call needs one: RECMG_EINVAL and the message what (p not NULL). */
static inline int null_arg(recmg_pool *p, const char *what) { return rc_set(p, RECMG_EINVAL, "%s", what); }

/* pool.c */
static inline shm_ring *ring_at(const recmg_pool *p, uint32_t i)
{
    return (shm_ring *)(p->rings + (uint64_t)i * p->h->ring_stride);
}
static inline uint64_t *ring_records(shm_ring *r) { return (uint64_t *)((uint8_t *)r + sizeof(shm_ring)); }
/* An on/off switch from the environment: set, not empty and not "0" (RECMG_NO_IO_URING, RECMG_NO_DIRECT,
 * RECMG_NO_AVX512). */
static inline int env_flag(const char *name)
{
    const char *e = getenv(name);
    return e && e[0] && strcmp(e, "0") != 0;
}
static inline uint8_t *slot_ptr(const recmg_pool *p, uint64_t s) { return p->slots + s * p->h->slot_stride; }
/* A slot number read from the shared index names a slot of this pool (anything else is treated as empty). */
static inline int slot_ok(const recmg_pool *p, int32_t s) { return (uint64_t)(uint32_t)s < p->h->n_slots; }
/* The seqlock version of index entry e (a position in the whole index, shared by its group of
 * 2^RECMG_GROUP_SHIFT entries): every store to an entry is made inside an odd window of it (writer.c). */
static inline uint64_t version_index(uint64_t e) { return e >> RECMG_GROUP_SHIFT; }
static inline _Atomic uint32_t *entry_version(const recmg_pool *p, uint64_t e) { return &p->vers[version_index(e)]; }
/* How many versions an index of `entries` entries has. */
static inline uint64_t version_groups(uint64_t entries) { return (entries + (1u << RECMG_GROUP_SHIFT) - 1) >> RECMG_GROUP_SHIFT; }
int grow(void **buf, size_t *cap, size_t need, size_t elem);
/* The handle's buffer of rows read from the slow tier for one call (a fill's, or a lookup's misses):
 * 64-byte aligned, room for `rows` rows of `stride` bytes, its first `keep` rows kept when it grows;
 * NULL when out of memory. */
uint8_t *rows_buf(recmg_pool *p, uint64_t rows, uint64_t keep, size_t stride);
/* The most bytes one of a handle's call buffers (rows_buf, the keys, the hash, the read requests, the
 * I/O bounce buffers) keeps between writer-side calls; scratch_trim frees any larger one, so that one
 * bulk fill of millions of rows does not pin a buffer its size for the handle's life. Lookups do not
 * trim: their buffers hold one batch's misses and are reused by the next batch. */
#define SCRATCH_KEEP_BYTES ((size_t)64 << 20)
void scratch_trim(recmg_pool *p);
/* Frees *buf (cap elements of elem bytes) when it holds more than keep bytes: *buf NULL, *cap 0. */
void buf_trim(void **buf, size_t *cap, size_t elem, size_t keep);

/* pool.c: the daemon's check (its shm descriptor, p->lock_fd) that the object was not truncated under
 * its mapping by its owner (touching pages past the end would raise SIGBUS); RECMG_OK for apps. */
int shm_intact(recmg_pool *p);

/* busguard.c: a daemon handle's mapping survives its object shrinking under it (see the file) */
int busguard_add(void *base, size_t len); /* the registration, or -1 (errno) */
void busguard_remove(int slot);
int busguard_lost(int slot);              /* a fault in the mapping replaced it by zero pages */
/* The result of a daemon call that read the mapping: rc, or shm_intact's error when the mapping was
 * lost during the call (what the call read after the fault was zeros). */
static inline int64_t intact_after(recmg_pool *p, int64_t rc)
{
    return busguard_lost(p->busguard) ? shm_intact(p) : rc;
}

/* writer.c: the writer lock, timed (RECMG_ELOCKED after p->lock_ms), with recovery after a dead holder.
 * Not a pthread mutex: a robust mutex keeps glibc's robust-list pointers in the mutex, which whoever
 * can write the pool could point anywhere in a writer's memory (glibc writes through them at unlock). */
#define RECMG_LOCK_MS_DAEMON 100u
#define RECMG_LOCK_MS_APP 2000u
int writer_lock(recmg_pool *p);
void writer_unlock(recmg_pool *p);
void recover_fast_tier(recmg_pool *p);

/* seqlock row copies (relaxed atomic word copies; see lookup.c and writer.c) */
static inline void words_load(uint64_t *dst, const uint8_t *src, uint32_t nwords)
{
    const _Atomic uint64_t *s = (const _Atomic uint64_t *)(const void *)src;
    for (uint32_t i = 0; i < nwords; i++) dst[i] = atomic_load_explicit(&s[i], memory_order_relaxed);
}
static inline void words_store(uint8_t *dst, const uint64_t *src, uint32_t nwords)
{
    _Atomic uint64_t *d = (_Atomic uint64_t *)(void *)dst;
    for (uint32_t i = 0; i < nwords; i++) atomic_store_explicit(&d[i], src[i], memory_order_relaxed);
}

/* ring.c */
/* A run of records to append at the ring's head (positions head, head + 1, ...), room of them free. */
typedef struct ringrun {
    uint64_t head, room;
    int mark; /* the run begins after the handle's change of owner (at head - 1), published with it */
} ringrun;
ringrun ring_begin(recmg_pool *p);
void ring_write(recmg_pool *p, const ringrun *rr, uint64_t at, uint32_t table, const int64_t *rows, uint64_t n,
                unsigned type);
uint64_t ring_count_drops(recmg_pool *p, const ringrun *rr, uint64_t at, uint32_t table, uint64_t n, unsigned type);
void ring_publish(recmg_pool *p, const ringrun *rr, uint64_t n);
void ring_append(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, unsigned type);
int ring_claim(recmg_pool *p);
int ring_forked_error(recmg_pool *p);
void ring_release_own(recmg_pool *p);

/* slowio.c */
void slowio_init(slowio *io);
enum { SLOW_ATTACH = 0, SLOW_CREATE = 1, SLOW_REUSE = 2 };
/* Opens the SSD tier's file: SLOW_ATTACH an existing one, SLOW_CREATE a new one (never an existing one),
 * SLOW_REUSE a new one or the existing one if its size is size. The file must be a regular file (not a
 * symbolic link) owned by owner, readable by its owner. *created (may be NULL) tells whether it was made. */
int slowio_open(recmg_pool *p, const char *path, int how, uint64_t size, uint32_t mode, uid_t owner, int *created);
void slowio_close(slowio *io);
/* Frees the request array and bounce buffers when either holds more than `keep` bytes. */
void slowio_trim(slowio *io, size_t keep);
/* One batch of reads (one io_uring submission): r[k].len bytes at r[k].off into r[k].dst. */
typedef struct slow_req {
    uint64_t off;
    uint8_t *dst;
    uint32_t len;
    uint32_t pad;
} slow_req;
int slowio_read(recmg_pool *p, const slow_req *r, uint64_t n, uint64_t *bytes_read);
/* What a read of len bytes at off costs the device, as slowio_read counts it: the aligned span that
 * covers it when the handle reads it directly (O_DIRECT), else len. */
uint64_t slowio_read_span(const recmg_pool *p, uint64_t off, uint32_t len);
/* Writes len bytes at off (buffered): RECMG_OK, or RECMG_EIO naming the offset and the cause. */
int slowio_write_row(recmg_pool *p, uint64_t off, const uint8_t *src, uint32_t len);
const char *slowio_backend(recmg_pool *p);

/* lookup.c */
void lookup_free(recmg_pool *p);

/* kernels.c */
void kernels_select(recmg_pool *p);
void f16_to_f32_row(float *dst, const uint16_t *src, uint32_t dim);

/* numa.c */
int numa_bind_region(recmg_pool *p, void *addr, size_t len, int node);
int numa_node_valid(int node);

/* ---- per-call dedup hash (open addressing, stamped so it never needs clearing) ---- */
int hash_prepare(recmg_pool *p, uint64_t n);
/* The value stored for key, or inserts val and returns -1. */
static inline int32_t hash_get_or_put(recmg_pool *p, int64_t key, int32_t val)
{
    size_t mask = p->h_mask;
    size_t i = (size_t)(((uint64_t)key * UINT64_C(0x9E3779B97F4A7C15)) >> 24) & mask;
    for (;;) {
        hash_ent *e = &p->h_ent[i];
        if (e->stamp != p->h_gen) {
            e->stamp = p->h_gen;
            e->key = key;
            e->val = val;
            return -1;
        }
        if (e->key == key) return e->val;
        i = (i + 1) & mask;
    }
}

/* Fault injection for the tests: the process stops itself (SIGSTOP) where the environment variable
 * NAME is set (env_flag). RECMG_FAULT_STOP_IN_WRITE: write_rows, holding the writer lock;
 * RECMG_FAULT_STOP_IN_ROW: write_rows of a memory tier, inside its first row's window with half of the
 * row written (RECMG_FAULT_SLEEP_IN_ROW: there, it sleeps 200 ms instead; RECMG_FAULT_SLEEP_IN_PUBLISH
 * (writer.c) sleeps in a fill's window);
 * RECMG_FAULT_STOP_AFTER_SLOW_READ: a lookup, after its batch of SSD reads and before it checks its
 * hits again (lookup.c); RECMG_FAULT_STOP_BEFORE_PASS2 (read when the handle is opened: pass 2 runs
 * for every item): a lookup, between its passes. */
void fault_stop(const char *name);

/* Reading the slow tier whole (writer.c). write_rows writes each row inside an odd window of its index
 * entry's group version, so a slow-tier reader does as a hit's reader does: an even version, the read,
 * an acquire fence, the same version again.
 * row_write_wait: the version of the group at ver (a row of table) once even: a window is one row's
 * write long, and a running writer's is waited for however long it takes (descheduled, or waiting for
 * the disk). Odd, at once, when it is not a write_rows window of that table (shm_header.writing_table:
 * a fill's or an eviction's, which change no slow row, so a lookup never waits for the daemon), or when
 * no running writer will close it: the lock free or lost, its holder dead (the row is as it
 * left it; the next writer's repair closes the window) or stopped (SIGSTOP: the row as it is, maybe half
 * written), or a holder /proc does not show after 1 s; later waits for that group at that version
 * return at once. */
uint32_t row_write_wait(recmg_pool *p, uint32_t table, const _Atomic uint32_t *ver);
/* Row `row` of the slow tier into dst, whole: read under the version up to 8 times; a writer that
 * rewrites the row's group faster than that, and the row is read holding the writer lock, waited for as
 * long as its holder runs. An SSD tier's reads use the handle's scratch (p->lock). */
int read_row_whole(recmg_pool *p, uint32_t table, int64_t row, uint8_t *dst, uint64_t *bytes);
/* read_slow_rows (below) under the rows' versions: a row whose group's version changed during the
 * batch is read again alone (read_row_whole). */
int read_slow_whole(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, uint8_t *dst, size_t dst_stride,
                    uint64_t *bytes);

/* slow-tier row reads shared by lookup and fill (not checked against write_rows: a fill holds the
 * writer lock, which excludes it) */
int read_slow_rows(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, uint8_t *dst,
                   size_t dst_stride, uint64_t *bytes);

#endif
