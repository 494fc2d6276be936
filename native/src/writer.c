/* writer.c - the fast tier's single writer: fill, evict, write_rows, recovery after a writer died.
 *
 * Every fast-tier write happens under the pool's writer lock, a pid word in the header (writer_lock
 * below): the daemon's fills and evictions and apps' write_rows are serialised, and a writer killed
 * in the middle of a change is found dead by the next one, which repairs the slots (recover_fast_tier).
 * Readers never take the lock.
 *
 * The index is the record of what the fast tier holds: entry e = (t, r) names the slot that holds row r
 * of table t, or is -1. The seqlock versions guard the entries, one version for each group of 64
 * entries (C11 orders; readers are in lookup.c):
 *   every store to entry e is made in an odd window of its group's version (entry_store):
 *                 v = version[e >> 6]; version = v+1 (odd, release); release fence; index[e] = x (relaxed);
 *                 version = v+2 (release).
 *   a slot is written only while no entry names it, after a release fence (slot_write).
 *   evict a:      index[a] = -1 in a window; the slot goes to the free list, its row left in place.
 *   fill b into s (free):  the row into s (relaxed atomic words); index[b] = s in a window.
 *   write_rows:   row by row, one window: the slow-tier row, and if b is resident in s: index[b] = -1,
 *                 the row into s, index[b] = s. Slow-tier readers check the window as hits do. On a
 *                 memory tier the row's new bytes are staged first (stage_row): a reader of a writer
 *                 that stopped or died in the window reads them, and the repair finishes the row.
 * The reader (lookup.c): v = version[e >> 6] (acquire; odd: not a hit), s = index[e], later the
 * row's words from slot s (relaxed), an acquire fence, version[e >> 6] again. If it is v, the reader
 * has row b, because
 *   - no store to entry e fell between the two version loads (each is inside a window that would
 *     have changed v, or made it odd), so e named s throughout: the s it read was published before its
 *     first load, by a release store of the version that its acquire load saw, after the row was whole;
 *   - a write of slot s needs e unpublished first, and follows that window's release fence: had the
 *     copy seen any of its words, the acquire fence after the copy would make the second load see
 *     at least the window's odd version.
 * So pass 1 of a lookup reads each id's version and entry, and pass 2 checks the version after the
 * copy: the entry is read once. A hit whose check fails (most often because another entry of the group
 * changed) is resolved again in pass 2 the same way: version, entry, copy, version. */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <time.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline _Atomic int32_t *index_of(recmg_pool *p, int64_t key)
{
    uint32_t t = RECMG_KEY_TABLE(key);
    return &p->index[p->tables[t].index_first + (uint64_t)RECMG_KEY_ROW(key)];
}

/* Opens an odd window of index entry e's group version (e a position in the whole index): the version
 * made odd, then a release fence, so that the stores after it (entries, rows) follow the odd version
 * for any reader. Returns the version before, for window_close. */
static uint32_t window_open(recmg_pool *p, uint64_t e)
{
    _Atomic uint32_t *ver = entry_version(p, e);
    const uint32_t v = atomic_load_explicit(ver, memory_order_relaxed);
    /* (release: a reader that sees the odd version also sees the writer lock this writer took, so that
     * row_write_wait never takes a live writer's window for a dead one's) */
    atomic_store_explicit(ver, v + 1, memory_order_release);
    atomic_thread_fence(memory_order_release);
    return v;
}

/* Closes the window window_open(p, e) returned v for: the version v + 2, with release. */
static void window_close(recmg_pool *p, uint64_t e, uint32_t v)
{
    atomic_store_explicit(entry_version(p, e), v + 2, memory_order_release);
}

/* Stores x into index entry e inside an odd window of its group's version, so that a reader whose entry
 * load fell before or during the store sees the version change. */
static void entry_store(recmg_pool *p, uint64_t e, int32_t x)
{
    const uint32_t v = window_open(p, e);
    atomic_store_explicit(&p->index[e], x, memory_order_relaxed);
    window_close(p, e, v);
}

static inline uint64_t entry_of(recmg_pool *p, int64_t key)
{
    return p->tables[RECMG_KEY_TABLE(key)].index_first + (uint64_t)RECMG_KEY_ROW(key);
}

static int key_valid(recmg_pool *p, int64_t key)
{
    if (key < 0) return 0;
    uint32_t t = RECMG_KEY_TABLE(key);
    return t < p->h->n_tables && (uint64_t)RECMG_KEY_ROW(key) < p->tables[t].rows;
}

static int key_error(recmg_pool *p, int64_t key)
{
    uint32_t t = RECMG_KEY_TABLE(key);
    if (key < 0) return rc_set(p, RECMG_ERANGE, "key %lld is negative (a key is table << 40 | row)", (long long)key);
    if (t >= p->h->n_tables)
        return rc_set(p, RECMG_ERANGE, "key %lld names table %u; the pool has %u tables", (long long)key, t,
                      p->h->n_tables);
    return rc_set(p, RECMG_ERANGE, "row id %lld out of range for table %u (%llu rows)", (long long)RECMG_KEY_ROW(key),
                  t, (unsigned long long)p->tables[t].rows);
}

int hash_prepare(recmg_pool *p, uint64_t n)
{
    if (n > SIZE_MAX / 4 / sizeof *p->h_ent) /* need doubles to under 2 * (n + n / 2 + 1) */
        return rc_set(p, RECMG_ENOMEM, "out of memory for a hash of %llu rows", (unsigned long long)n);
    size_t need = 64;
    while (need < n + n / 2 + 1) need *= 2;
    if (need > p->h_cap) {
        free(p->h_ent);
        p->h_ent = calloc(need, sizeof *p->h_ent);
        if (!p->h_ent) {
            p->h_cap = 0;
            return rc_set(p, RECMG_ENOMEM, "out of memory for a %zu-entry hash", need);
        }
        p->h_cap = need;
        p->h_gen = 0;
    }
    if (++p->h_gen == 0) {
        memset(p->h_ent, 0, p->h_cap * sizeof *p->h_ent);
        p->h_gen = 1;
    }
    p->h_mask = need - 1;
    return RECMG_OK;
}

enum { HOLDER_RUNS, HOLDER_DEAD, HOLDER_STOPPED, HOLDER_UNKNOWN };

/* What process pid is: gone (no such process, or a zombie: killed, not yet reaped, which kill(2) still
 * answers for; /proc/PID/stat says Z or X), stopped (T: SIGSTOP; t: a tracer's stop), running (or
 * sleeping: it will go on), or unknown (alive, but /proc does not show it: hidepid). A process this
 * one may not signal is alive (EPERM). */
static int holder_state(int32_t pid)
{
    if (pid <= 0) return HOLDER_DEAD;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return HOLDER_DEAD;
    char path[48], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return HOLDER_UNKNOWN;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return HOLDER_UNKNOWN;
    buf[n] = 0;
    const char *q = strrchr(buf, ')'); /* "pid (comm) S ...": comm may hold anything */
    if (!q || q[1] != ' ') return HOLDER_UNKNOWN;
    if (q[2] == 'Z' || q[2] == 'X') return HOLDER_DEAD;
    if (q[2] == 'T' || q[2] == 't') return HOLDER_STOPPED;
    return HOLDER_RUNS;
}

static int holder_dead(int32_t pid)
{
    return holder_state(pid) == HOLDER_DEAD;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Rows left the fast tier behind the daemon's back (see shm_header.repairs). */
static void note_repair(recmg_pool *p)
{
    atomic_fetch_add_explicit(&p->sh->repairs, 1, memory_order_relaxed);
}

/* Sleeps while the writer lock word holds cur, at most ns (< 1 s): a shared futex, the word being in a
 * MAP_SHARED mapping; EAGAIN (changed meanwhile), EINTR and ETIMEDOUT all mean look again. */
static void lock_word_wait(_Atomic int32_t *w, int32_t cur, uint64_t ns)
{
    struct timespec ts = {0, (long)ns};
    (void)syscall(SYS_futex, (void *)w, FUTEX_WAIT, cur, &ts, NULL, 0);
}

/* The writer lock: a word in the header, 0 or the holder's pid, taken by compare-and-swap. A waiter
 * sleeps on it (futex, at most 1 ms at a time) until it is free, its holder is dead (then the waiter
 * takes it over and repairs the fast tier, as a dead writer may have left an entry group's version
 * odd), or the handle's timeout passes (RECMG_ELOCKED). Two handles of one process exclude each other
 * like two processes (the lock then names this process, which is alive). */
int writer_lock(recmg_pool *p)
{
    _Atomic int32_t *w = &p->sh->writer_lock;
    const int32_t me = (int32_t)getpid();
    const uint64_t deadline = now_ns() + (uint64_t)p->lock_ms * 1000000u;
    for (;;) {
        int32_t cur = atomic_load_explicit(w, memory_order_relaxed);
        if (cur == 0) {
            if (atomic_compare_exchange_strong_explicit(w, &cur, me, memory_order_acquire, memory_order_relaxed))
                return RECMG_OK;
            continue;
        }
        if (cur != me && holder_dead(cur)) {
            if (atomic_compare_exchange_strong_explicit(w, &cur, me, memory_order_acquire, memory_order_relaxed)) {
                recover_fast_tier(p);
                note_repair(p); /* the dead writer may have unpublished rows (write_rows) */
                return RECMG_OK;
            }
            continue;
        }
        uint64_t t = now_ns();
        if (t >= deadline)
            return rc_set(p, RECMG_ELOCKED,
                          "the writer lock of pool '%s' stayed held by process %d for %u ms (a stopped or stuck "
                          "writer); nothing was changed",
                          p->name + 1, (int)cur, p->lock_ms);
        lock_word_wait(w, cur, deadline - t < 1000000u ? deadline - t : 1000000u);
    }
}

/* A daemon's mapping was lost (busguard) while it held the writer lock: its unlock went to the zero
 * pages, so the shared word still names this (live) process and nobody would ever take it over. The
 * header is mapped again from the object's descriptor, if the object still holds it, and the lock
 * word set to -1, which the next writer takes for a dead holder's: it takes the lock over and repairs
 * what this call left half done. The daemon pid is cleared the same way. */
static void release_lost_lock(recmg_pool *p)
{
    struct stat st;
    if (p->lock_fd < 0 || fstat(p->lock_fd, &st) != 0 || (uint64_t)st.st_size < sizeof(shm_header)) return;
    uint8_t *m = mmap(NULL, sizeof(shm_header), PROT_READ | PROT_WRITE, MAP_SHARED, p->lock_fd, 0);
    if (m == MAP_FAILED) return;
    int g = busguard_add(m, sizeof(shm_header)); /* (it may shrink again meanwhile) */
    if (g >= 0) {
        shm_header *h = (shm_header *)m;
        int32_t me = (int32_t)getpid();
        if (atomic_compare_exchange_strong(&h->writer_lock, &me, -1))
            (void)syscall(SYS_futex, (void *)&h->writer_lock, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
        me = (int32_t)getpid();
        atomic_compare_exchange_strong(&h->daemon_pid, &me, 0);
        busguard_remove(g);
    }
    munmap(m, sizeof(shm_header));
}

void writer_unlock(recmg_pool *p)
{
    if (busguard_lost(p->busguard)) {
        release_lost_lock(p);
        return;
    }
    atomic_store_explicit(&p->sh->writer_lock, 0, memory_order_release);
    (void)syscall(SYS_futex, (void *)&p->sh->writer_lock, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

int recmg_set_lock_timeout(recmg_pool *p, uint32_t ms)
{
    if (!p) return RECMG_EINVAL;
    if (ms < 1 || ms > 3600000u) return rc_set(p, RECMG_EINVAL, "lock timeout must be 1..3600000 ms, got %u", ms);
    p->lock_ms = ms;
    return RECMG_OK;
}

static void bump_generation(recmg_pool *p)
{
    uint64_t g = atomic_fetch_add_explicit(&p->sh->generation, 1, memory_order_release) + 1;
    if (p->free_valid && p->free_gen == g - 1) p->free_gen = g;
}

static void stage_finish(recmg_pool *p);

/* Makes the fast tier consistent after a writer died mid-change (called under the writer lock). An
 * index entry only ever names a slot whose row is complete (a slot is written while no entry names
 * it, and published after), so the repair is finishing the row a write_rows died writing (its new
 * bytes staged before its window, stage_finish), closing the odd version the dead writer's window left
 * (at most one), dropping every copy of the table a write_rows was writing (writing_table: its copies
 * may be older than its slow rows), and rebuilding the free list from the index. */
void recover_fast_tier(recmg_pool *p)
{
    stage_finish(p); /* (while its window is still odd) */
    uint64_t ng = version_groups(p->h->index_entries);
    for (uint64_t g = 0; g < ng; g++) {
        uint32_t v = atomic_load_explicit(&p->vers[g], memory_order_relaxed);
        if (v & 1u) atomic_store_explicit(&p->vers[g], v + 1, memory_order_release);
    }
    const int32_t wt = atomic_exchange_explicit(&p->sh->writing_table, 0, memory_order_relaxed);
    if (wt > 0 && (uint32_t)wt <= p->h->n_tables) {
        const tabdesc *t = &p->tables[wt - 1];
        for (uint64_t r = 0; r < t->rows; r++)
            if (atomic_load_explicit(&p->index[t->index_first + r], memory_order_relaxed) >= 0)
                entry_store(p, t->index_first + r, -1);
    }
    atomic_fetch_add_explicit(&p->sh->generation, 1, memory_order_release);
    p->free_valid = 0;
}

/* The free-slot stack is process-local and rebuilt from the index (the slots no entry names) whenever
 * another process wrote the fast tier since this handle last did (the generation tells). An entry
 * that names a slot out of range or one already named (only a corrupted pool has them) is cleared.
 * Called under the writer lock. */
static int free_list_sync(recmg_pool *p)
{
    uint64_t g = atomic_load_explicit(&p->sh->generation, memory_order_acquire);
    if (p->free_valid && p->free_gen == g) return RECMG_OK;
    uint64_t n = p->h->n_slots;
    if (!p->free_list) {
        p->free_list = malloc((n ? n : 1) * sizeof *p->free_list);
        if (!p->free_list) return rc_set(p, RECMG_ENOMEM, "out of memory for a %llu-slot free list", (unsigned long long)n);
    }
    uint64_t *used = calloc((n + 63) / 64 + 1, sizeof *used);
    if (!used) return rc_set(p, RECMG_ENOMEM, "out of memory for a %llu-slot bitmap", (unsigned long long)n);
    for (uint64_t i = 0; i < p->h->index_entries; i++) {
        int32_t s = atomic_load_explicit(&p->index[i], memory_order_relaxed);
        if (s < 0) continue;
        uint64_t bit = UINT64_C(1) << (s & 63);
        if ((uint64_t)s >= n || (used[s >> 6] & bit)) {
            entry_store(p, i, -1);
            note_repair(p);
            continue;
        }
        used[s >> 6] |= bit;
    }
    uint64_t k = 0;
    for (uint64_t s = n; s-- > 0;)
        if (!(used[s >> 6] & (UINT64_C(1) << (s & 63)))) p->free_list[k++] = (uint32_t)s;
    free(used);
    p->n_free = k;
    p->free_gen = g;
    p->free_valid = 1;
    return RECMG_OK;
}

/* Writes a row into slot s, which no index entry names. The release fence orders the version stores
 * of the window that unpublished s (in this process or, through the writer lock, another) before the
 * row's words: a reader that copied any of them sees that window's version change. */
static void slot_write(recmg_pool *p, uint64_t s, const uint64_t *words)
{
    atomic_thread_fence(memory_order_release);
    words_store(slot_ptr(p, s), words, p->h->slot_stride / 8);
}

/* Fault injection for the crash tests: RECMG_FAULT_KILL_IN_FILL=K makes a fill die with SIGKILL in
 * the middle of writing its K-th slot (half the row copied, no entry naming it, writer lock held);
 * RECMG_FAULT_KILL_IN_PUBLISH=K in the window that publishes its K-th slot (the row whole, the entry
 * stored, its group's version odd); RECMG_FAULT_KILL_IN_WRITE (set) makes write_rows die in the window
 * of its last row, its copy not written and its slow row half written (memory tiers) or written (SSD);
 * RECMG_FAULT_KILL_IN_FINISH (set) makes a repair die half way through finishing a staged row. */
static int64_t fault_point(const char *name)
{
    const char *e = getenv(name);
    return e && e[0] ? strtoll(e, NULL, 10) : -1;
}

void fault_stop(const char *name)
{
    if (env_flag(name)) raise(SIGSTOP);
}

static void die_mid_write(recmg_pool *p, uint64_t s, const uint64_t *words)
{
    atomic_thread_fence(memory_order_release);
    words_store(slot_ptr(p, s), words, p->h->slot_stride / 16);
    raise(SIGKILL);
}

static void die_mid_publish(recmg_pool *p, uint64_t e, int32_t s)
{
    window_open(p, e);
    atomic_store_explicit(&p->index[e], s, memory_order_relaxed);
    raise(SIGKILL);
}

/* RECMG_FAULT_SLEEP_IN_PUBLISH=K: the fill sleeps 3 s inside the window that publishes its K-th slot
 * (running, not stopped: a descheduled daemon's window, for the tests). */
static void sleep_mid_publish(recmg_pool *p, uint64_t e, int32_t s)
{
    const uint32_t v = window_open(p, e);
    atomic_store_explicit(&p->index[e], s, memory_order_relaxed);
    struct timespec ts = {3, 0};
    nanosleep(&ts, NULL);
    window_close(p, e, v);
}

/* Reads rows of the slow tier (any tables) into dst + k * stride: memory copy, or one I/O batch. */
static int read_slow_keys(recmg_pool *p, const int64_t *keys, uint64_t n, uint8_t *dst, size_t stride, uint64_t *bytes)
{
    if (p->slow) {
        for (uint64_t k = 0; k < n; k++) {
            const tabdesc *t = &p->tables[RECMG_KEY_TABLE(keys[k])];
            memcpy(dst + k * stride, p->slow + t->slow_off + (uint64_t)RECMG_KEY_ROW(keys[k]) * t->row_bytes, t->row_bytes);
            *bytes += t->row_bytes;
        }
        return RECMG_OK;
    }
    if (grow(&p->sreq, &p->sreq_cap, n, sizeof(slow_req)) != 0)
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu reads", (unsigned long long)n);
    slow_req *r = p->sreq;
    for (uint64_t k = 0; k < n; k++) {
        const tabdesc *t = &p->tables[RECMG_KEY_TABLE(keys[k])];
        r[k] = (slow_req){.off = t->slow_off + (uint64_t)RECMG_KEY_ROW(keys[k]) * t->row_bytes, .dst = dst + k * stride,
                          .len = t->row_bytes};
    }
    return slowio_read(p, r, n, bytes);
}

int read_slow_rows(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, uint8_t *dst, size_t dst_stride,
                   uint64_t *bytes)
{
    const tabdesc *t = &p->tables[table];
    if (p->slow) {
        for (uint64_t k = 0; k < n; k++)
            memcpy(dst + k * dst_stride, p->slow + t->slow_off + (uint64_t)rows[k] * t->row_bytes, t->row_bytes);
        *bytes += n * t->row_bytes;
        return RECMG_OK;
    }
    if (grow(&p->sreq, &p->sreq_cap, n, sizeof(slow_req)) != 0)
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu reads", (unsigned long long)n);
    slow_req *r = p->sreq;
    for (uint64_t k = 0; k < n; k++)
        r[k] = (slow_req){.off = t->slow_off + (uint64_t)rows[k] * t->row_bytes, .dst = dst + k * dst_stride,
                          .len = t->row_bytes};
    return slowio_read(p, r, n, bytes);
}

/* The row a write_rows window writes, staged (memory slow tiers, rows of up to RECMG_STAGE_BYTES): its
 * new bytes at RECMG_STAGE_OFF of the header's region, named by shm_header.staged_key, which is set
 * (with shm_header.staged_ver, the window's odd version) before the window opens and cleared after it
 * closes. So while a row's window is open, staged_key and staged_ver name that row's window and the
 * stage holds it whole, and a reader that will not wait for the window (its
 * writer stopped or dead) reads the row from the stage (stage_read) instead of half written; a dead
 * writer's repair finishes the row from it (stage_finish). The bytes are stored as a slot's are
 * (relaxed atomic words after a release fence) and read as a hit's are (relaxed words, an acquire fence,
 * the row's version again), so a reader that copied any byte of a later row's staging sees its row's
 * window closed. The stage is written from the caller's rows, which the cache holds: the slow row is
 * not read. */
static inline uint64_t stage_name(uint32_t table, int64_t row) { return ((uint64_t)table + 1) << 40 | (uint64_t)row; }
static inline uint8_t *stage_bytes(const recmg_pool *p) { return (uint8_t *)p->sh + RECMG_STAGE_OFF; }
static inline int stage_fits(const recmg_pool *p, uint32_t rb) { return p->slow && rb <= RECMG_STAGE_BYTES; }

/* Stages row (table, row)'s new bytes (src) before its window opens, as version odd of its group (the
 * version the window will have); buf is scratch of RECMG_STAGE_BYTES, 8-byte aligned. */
static void stage_row(recmg_pool *p, uint32_t table, int64_t row, const uint8_t *src, uint32_t rb, uint32_t odd,
                      uint64_t *buf)
{
    buf[(rb + 7) / 8 - 1] = 0; /* (the bytes past the row in its last word) */
    memcpy(buf, src, rb);
    atomic_thread_fence(memory_order_release); /* (after the window that closed the last row staged) */
    words_store(stage_bytes(p), buf, (rb + 7) / 8);
    atomic_store_explicit(&p->sh->staged_ver, odd, memory_order_relaxed);
    atomic_store_explicit(&p->sh->staged_key, stage_name(table, row), memory_order_release);
}

/* Whether the stage holds row (table, row) of the window of odd version v (acquire: its bytes seen). */
static int stage_holds(recmg_pool *p, uint32_t table, int64_t row, uint32_t v)
{
    return atomic_load_explicit(&p->sh->staged_key, memory_order_acquire) == stage_name(table, row) &&
           atomic_load_explicit(&p->sh->staged_ver, memory_order_relaxed) == v;
}

/* Row (table, row) as the window whose odd version v the reader gave up on writes it, into dst: 1 if that
 * window is the row's own (staged_key names it) and still open after the copy, else 0. */
static int stage_read(recmg_pool *p, uint32_t table, int64_t row, const _Atomic uint32_t *ver, uint32_t v, uint8_t *dst)
{
    const uint32_t rb = p->tables[table].row_bytes;
    if (!(v & 1u) || !stage_fits(p, rb) || !stage_holds(p, table, row, v)) return 0;
    uint64_t buf[RECMG_STAGE_BYTES / 8];
    words_load(buf, stage_bytes(p), (rb + 7) / 8);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(ver, memory_order_relaxed) != v) return 0;
    memcpy(dst, buf, rb);
    return 1;
}

/* A dead writer's row finished from the stage, if it died inside the row's window (its group's version
 * odd, and the one the stage names); under the writer lock, before the repair closes the windows. The key is cleared only after the
 * copy (release): until then readers that give up on the window read the stage, after it the whole row,
 * and a repairer that dies in the copy leaves the key for the next repair to copy again. The key is
 * checked against the handle's own geometry (the header is the owner's to write). */
static void stage_finish(recmg_pool *p)
{
    const uint64_t key = atomic_load_explicit(&p->sh->staged_key, memory_order_relaxed);
    const uint64_t t1 = key >> 40, row = key & ((UINT64_C(1) << 40) - 1);
    const tabdesc *t = t1 && t1 <= p->h->n_tables ? &p->tables[t1 - 1] : NULL;
    const int named = t && row < t->rows && stage_fits(p, t->row_bytes);
    const uint32_t v = named ? atomic_load_explicit(entry_version(p, t->index_first + row), memory_order_relaxed) : 0;
    if (named && (v & 1u) && stage_holds(p, (uint32_t)(t1 - 1), (int64_t)row, v)) {
        uint64_t buf[RECMG_STAGE_BYTES / 8];
        words_load(buf, stage_bytes(p), (t->row_bytes + 7) / 8);
        uint8_t *dst = p->slow + t->slow_off + row * t->row_bytes;
        if (env_flag("RECMG_FAULT_KILL_IN_FINISH")) { /* (tests: the repairer dies half way through) */
            memcpy(dst, buf, t->row_bytes / 2);
            raise(SIGKILL);
        }
        memcpy(dst, buf, t->row_bytes);
    }
    if (key) atomic_store_explicit(&p->sh->staged_key, 0, memory_order_release);
}

/* How long a reader waits for a window whose holder it cannot see in /proc (hidepid) before it takes the
 * holder for stopped; a holder it can see is waited for as long as it runs. */
#define UNSEEN_WAIT_NS UINT64_C(1000000000)

/* Whether the writer lock's holder (the lock word) will write no more: none or lost (<= 0), dead,
 * stopped, or one /proc does not show for more than UNSEEN_WAIT_NS since `since`. This process (another
 * thread, or another handle of it) runs. */
static int holder_idle(int32_t holder, uint64_t since)
{
    if (holder <= 0) return 1;
    if (holder == (int32_t)getpid()) return 0;
    const int st = holder_state(holder);
    return st == HOLDER_DEAD || st == HOLDER_STOPPED || (st == HOLDER_UNKNOWN && now_ns() - since > UNSEEN_WAIT_NS);
}

/* The handle's mark of the window it gave up on (odd version v of entry group g, as one word: g << 32 |
 * v, v odd, so 0 is none; groups past 2^32 are not marked). */
static inline uint64_t stale_word(uint64_t group, uint32_t v)
{
    return group >> 32 ? 0 : group << 32 | v;
}

uint32_t row_write_wait(recmg_pool *p, uint32_t table, const _Atomic uint32_t *ver)
{
    uint32_t v = atomic_load_explicit(ver, memory_order_acquire);
    if (!(v & 1u)) return v;
    /* a window of a fill, an eviction or a write_rows of another table (a group may span two tables):
     * no slow row of this table changes in it (the caller's check sees any window opened after it) */
    if (atomic_load_explicit(&p->sh->writing_table, memory_order_relaxed) != (int32_t)table + 1) return v;
    const uint64_t group = (uint64_t)(ver - p->vers);
    uint64_t mark = stale_word(group, v);
    if (mark && atomic_load_explicit(&p->stale, memory_order_relaxed) == mark)
        return v; /* (given up on before: a dead or stopped writer's window) */
    for (int k = 0; (v & 1u) && k < 64; k++) { /* a live writer's window: one row's write */
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        v = atomic_load_explicit(ver, memory_order_acquire);
    }
    const uint64_t t0 = now_ns();
    while (v & 1u) {
        /* no live writer will close it (the lock free or lost: a dead writer's window; the caller's
         * check after its read sees it if a writer closed it meanwhile) */
        if (holder_idle(atomic_load_explicit(&p->sh->writer_lock, memory_order_relaxed), t0)) {
            mark = stale_word(group, v);
            if (mark) atomic_store_explicit(&p->stale, mark, memory_order_relaxed);
            return v;
        }
        /* a running writer that has not closed it: descheduled, or its write waits for the disk; a sleep
         * gives it the CPU where a yield may not (a writer of lower priority) */
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
        v = atomic_load_explicit(ver, memory_order_acquire);
    }
    return v;
}

/* The writer lock for a reader: waited for as long as its holder runs (no takeover: a dead holder's
 * lock is left to the next writer's repair). 1 if taken (writer_unlock releases it); 0 if the holder
 * is dead or stopped, which then changes no row. */
static int writer_lock_read(recmg_pool *p)
{
    _Atomic int32_t *w = &p->sh->writer_lock;
    const int32_t me = (int32_t)getpid();
    const uint64_t t0 = now_ns();
    for (;;) {
        int32_t cur = atomic_load_explicit(w, memory_order_relaxed);
        if (cur == 0) {
            if (atomic_compare_exchange_strong_explicit(w, &cur, me, memory_order_acquire, memory_order_relaxed))
                return 1;
            continue;
        }
        if (holder_idle(cur, t0)) return 0; /* (or lost by a daemon: the next writer takes it over) */
        lock_word_wait(w, cur, 1000000u);
    }
}

/* Tries at a row's read under the version before the writer lock is asked for. */
#define ROW_TRIES 8

int read_row_whole(recmg_pool *p, uint32_t table, int64_t row, uint8_t *dst, uint64_t *bytes)
{
    const _Atomic uint32_t *ver = entry_version(p, p->tables[table].index_first + (uint64_t)row);
    for (int round = 0;; round++) {
        for (int k = 0; k < ROW_TRIES; k++) {
            const uint32_t v = row_write_wait(p, table, ver);
            if (stage_read(p, table, row, ver, v, dst)) return RECMG_OK; /* (a stopped or dead writer's row) */
            const int rc = read_slow_rows(p, table, &row, 1, dst, 0, bytes);
            if (rc) return rc;
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(ver, memory_order_relaxed) == v) return RECMG_OK;
        }
        /* a writer rewrites the row's group faster than the row can be read: read it holding the
         * writer lock (write_rows holds it over a whole call) */
        if (writer_lock_read(p)) {
            const int rc = read_slow_rows(p, table, &row, 1, dst, 0, bytes);
            writer_unlock(p);
            return rc;
        }
        /* its holder died or stopped: nothing changes the row now, and the next tries read it (a
         * third round only if writers keep dying or stopping: then it is read as it is) */
        if (round == 2) {
            const uint32_t v = atomic_load_explicit(ver, memory_order_acquire);
            return stage_read(p, table, row, ver, v, dst) ? RECMG_OK : read_slow_rows(p, table, &row, 1, dst, 0, bytes);
        }
    }
}

int read_slow_whole(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, uint8_t *dst, size_t dst_stride,
                    uint64_t *bytes)
{
    const uint64_t efirst = p->tables[table].index_first;
    if (grow((void **)&p->m_ver, &p->m_ver_cap, n ? n : 1, sizeof *p->m_ver) != 0)
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu reads", (unsigned long long)n);
    uint32_t *sv = p->m_ver;
    for (uint64_t k = 0; k < n; k++) sv[k] = row_write_wait(p, table, entry_version(p, efirst + (uint64_t)rows[k]));
    int rc = read_slow_rows(p, table, rows, n, dst, dst_stride, bytes);
    if (rc) return rc;
    atomic_thread_fence(memory_order_acquire);
    /* rows whose group a write_rows wrote meanwhile, and a memory tier's rows in a window given up on (a
     * stopped or dead writer's: its row is read as it was): again, alone */
    for (uint64_t k = 0; k < n; k++)
        if ((atomic_load_explicit(entry_version(p, efirst + (uint64_t)rows[k]), memory_order_relaxed) != sv[k] ||
             ((sv[k] & 1u) && p->slow)) &&
            (rc = read_row_whole(p, table, rows[k], dst + k * dst_stride, bytes)) != RECMG_OK)
            return rc;
    return RECMG_OK;
}

int64_t recmg_fill_keys(recmg_pool *p, const int64_t *keys, uint64_t n)
{
    if (!p) return RECMG_EINVAL;
    if (n && !keys) return null_arg(p, "recmg_fill_keys: keys is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    for (uint64_t i = 0; i < n; i++)
        if (!key_valid(p, keys[i])) return key_error(p, keys[i]);
    pthread_mutex_lock(&p->lock);
    int64_t rc = writer_lock(p);
    if (rc) goto out_unlocked;
    fault_stop("RECMG_FAULT_STOP_IN_FILL"); /* (tests: the object shrinks under a running fill) */
    rc = free_list_sync(p);
    if (rc) goto out;
    /* the keys to fill: not resident, first occurrence only */
    rc = hash_prepare(p, n);
    if (rc) goto out;
    if (grow((void **)&p->m_rows, &p->m_cap, n ? n : 1, sizeof *p->m_rows) != 0) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for %llu keys", (unsigned long long)n);
        goto out;
    }
    uint64_t m = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (atomic_load_explicit(index_of(p, keys[i]), memory_order_relaxed) >= 0) continue;
        if (hash_get_or_put(p, keys[i], 0) >= 0) continue;
        p->m_rows[m++] = keys[i];
    }
    if (m > p->n_free) {
        rc = rc_set(p, RECMG_ENOSPC, "only %llu free slots for %llu keys to fill", (unsigned long long)p->n_free,
                    (unsigned long long)m);
        goto out;
    }
    size_t stride = p->h->slot_stride;
    uint8_t *buf = rows_buf(p, m, 0, stride);
    if (!buf) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for %llu rows", (unsigned long long)m);
        goto out;
    }
    memset(buf, 0, m * stride);
    uint64_t bytes = 0;
    rc = read_slow_keys(p, p->m_rows, m, buf, stride, &bytes);
    if (rc) goto out;
    const int64_t die_at = fault_point("RECMG_FAULT_KILL_IN_FILL"), die_in = fault_point("RECMG_FAULT_KILL_IN_PUBLISH");
    const int64_t sleep_in = fault_point("RECMG_FAULT_SLEEP_IN_PUBLISH");
    for (uint64_t k = 0; k < m; k++) {
        int64_t key = p->m_rows[k];
        uint32_t s = p->free_list[--p->n_free];
        if ((int64_t)k == die_at) die_mid_write(p, s, (const uint64_t *)(const void *)(buf + k * stride));
        slot_write(p, s, (const uint64_t *)(const void *)(buf + k * stride));
        if ((int64_t)k == die_in) die_mid_publish(p, entry_of(p, key), (int32_t)s);
        if ((int64_t)k == sleep_in)
            sleep_mid_publish(p, entry_of(p, key), (int32_t)s);
        else
            entry_store(p, entry_of(p, key), (int32_t)s);
        const uint32_t tk = RECMG_KEY_TABLE(key);
        const tabdesc *t = &p->tables[tk];
        /* what the read cost, as lookups count theirs (an O_DIRECT span, not the row) */
        const uint64_t cost = p->slow ? t->row_bytes
                                      : slowio_read_span(p, t->slow_off + (uint64_t)RECMG_KEY_ROW(key) * t->row_bytes,
                                                         t->row_bytes);
        atomic_fetch_add_explicit(&p->stab[tk].c.slow_bytes, cost, memory_order_relaxed);
    }
    bump_generation(p);
    rc = (int64_t)m;
out:
    writer_unlock(p);
out_unlocked:
    scratch_trim(p);
    pthread_mutex_unlock(&p->lock);
    return intact_after(p, rc);
}

int64_t recmg_evict_keys(recmg_pool *p, const int64_t *keys, uint64_t n)
{
    if (!p) return RECMG_EINVAL;
    if (n && !keys) return null_arg(p, "recmg_evict_keys: keys is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    for (uint64_t i = 0; i < n; i++)
        if (!key_valid(p, keys[i])) return key_error(p, keys[i]);
    pthread_mutex_lock(&p->lock);
    int64_t rc = writer_lock(p);
    if (rc) goto out_unlocked;
    rc = free_list_sync(p);
    if (rc) goto out;
    int64_t evicted = 0;
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t e = entry_of(p, keys[i]);
        int32_t s = atomic_load_explicit(&p->index[e], memory_order_relaxed);
        if (s < 0) continue;
        if (!slot_ok(p, s) || p->n_free >= p->h->n_slots) {
            /* a slot number no writer wrote (the object was changed behind our back): clear the entry
             * and rebuild the free list from the index at the next write */
            entry_store(p, e, -1);
            p->free_valid = 0;
            continue;
        }
        /* the slot keeps the row until it is reused (a reader that still copies it checks the
         * version this window changed) */
        entry_store(p, e, -1);
        p->free_list[p->n_free++] = (uint32_t)s;
        evicted++;
    }
    bump_generation(p);
    rc = evicted;
out:
    writer_unlock(p);
out_unlocked:
    pthread_mutex_unlock(&p->lock);
    return intact_after(p, rc);
}

int64_t recmg_resident_keys(recmg_pool *p, int64_t *out, uint64_t cap)
{
    if (!p) return RECMG_EINVAL;
    if (cap && !out) return null_arg(p, "recmg_resident_keys: out is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    /* the index is the record of what is resident: one pass over it, in key order */
    uint64_t k = 0;
    for (uint32_t t = 0; t < p->h->n_tables; t++) {
        const _Atomic int32_t *ix = p->index + p->tables[t].index_first;
        for (uint64_t r = 0; r < p->tables[t].rows; r++) {
            if (atomic_load_explicit(&ix[r], memory_order_relaxed) < 0) continue;
            if (k < cap) out[k] = RECMG_KEY(t, r);
            k++;
        }
    }
    return intact_after(p, (int64_t)k);
}

int64_t recmg_free_slots(recmg_pool *p)
{
    if (!p) return RECMG_EINVAL;
    int irc = shm_intact(p);
    if (irc) return irc;
    pthread_mutex_lock(&p->lock);
    int64_t rc = writer_lock(p);
    if (rc == 0) {
        rc = free_list_sync(p);
        if (rc == 0) rc = (int64_t)p->n_free;
        writer_unlock(p);
    }
    pthread_mutex_unlock(&p->lock);
    return intact_after(p, rc);
}

int64_t recmg_writer_holder(recmg_pool *p)
{
    if (!p) return RECMG_EINVAL;
    int irc = shm_intact(p);
    if (irc) return irc;
    int32_t cur = atomic_load_explicit(&p->sh->writer_lock, memory_order_relaxed);
    int64_t holder = cur != 0 && !holder_dead(cur) ? cur : 0;
    return intact_after(p, holder);
}

int64_t recmg_repair(recmg_pool *p)
{
    if (!p) return RECMG_EINVAL;
    int irc = shm_intact(p);
    if (irc) return irc;
    int64_t rc = 0;
    pthread_mutex_lock(&p->lock);
    const int32_t cur = atomic_load_explicit(&p->sh->writer_lock, memory_order_relaxed);
    if (cur != 0 && cur != (int32_t)getpid() && holder_dead(cur)) {
        const uint32_t ms = p->lock_ms;
        p->lock_ms = 0; /* (a dead holder's lock is taken over at once; a live one is not waited for) */
        if (writer_lock(p) == RECMG_OK) {
            writer_unlock(p);
            rc = 1;
        }
        p->lock_ms = ms;
    }
    pthread_mutex_unlock(&p->lock);
    return intact_after(p, rc);
}

int64_t recmg_repairs(recmg_pool *p)
{
    if (!p) return RECMG_EINVAL;
    int irc = shm_intact(p);
    if (irc) return irc;
    int64_t n = (int64_t)(atomic_load_explicit(&p->sh->repairs, memory_order_relaxed) & INT64_MAX);
    return intact_after(p, n);
}

static int rows_check(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n)
{
    if (table >= p->h->n_tables)
        return rc_set(p, RECMG_ERANGE, "table %u out of range (pool has %u tables)", table, p->h->n_tables);
    uint64_t nr = p->tables[table].rows;
    for (uint64_t i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= nr)
            return rc_set(p, RECMG_ERANGE, "row id %lld out of range for table %u (%llu rows)", (long long)rows[i],
                          table, (unsigned long long)nr);
    return RECMG_OK;
}

int recmg_read_rows(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, void *out)
{
    if (!p) return RECMG_EINVAL;
    if (n && (!rows || !out)) return null_arg(p, "recmg_read_rows: rows or out is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    int rc = rows_check(p, table, rows, n);
    if (rc) return rc;
    uint64_t bytes = 0;
    pthread_mutex_lock(&p->lock);
    rc = read_slow_whole(p, table, rows, n, out, p->tables[table].row_bytes, &bytes);
    scratch_trim(p);
    pthread_mutex_unlock(&p->lock);
    return (int)intact_after(p, rc);
}

/* write_rows on a memory slow tier: the lines it will write WRITE_AHEAD rows on (the slow row) and
 * WRITE_AHEAD / 2 rows on (the copy, if the entry prefetched before names a slot) are asked for ahead, so
 * that their misses overlap (the stores of the rows between, the stage's and the copies', fill the
 * store buffer, and a store that misses holds up those after it). Rows of up to 16 lines. */
#define WRITE_AHEAD 8
static inline void write_ahead(recmg_pool *p, const tabdesc *t, const int64_t *rows, uint64_t n, uint64_t k,
                               uint32_t rb)
{
    const uint32_t span = rb < 1024 ? rb : 1024;
    if (k + WRITE_AHEAD < n) {
        const uint64_t r = (uint64_t)rows[k + WRITE_AHEAD];
        const uint8_t *row = p->slow + t->slow_off + r * rb;
        for (uint32_t b = 0; b < span; b += 64) __builtin_prefetch(row + b, 1);
        __builtin_prefetch(&p->index[t->index_first + r], 0);
    }
    if (k + WRITE_AHEAD / 2 < n) {
        const int32_t s = atomic_load_explicit(&p->index[t->index_first + (uint64_t)rows[k + WRITE_AHEAD / 2]],
                                               memory_order_relaxed);
        if (slot_ok(p, s))
            for (uint32_t b = 0; b < span; b += 64) __builtin_prefetch(slot_ptr(p, (uint64_t)s) + b, 1);
    }
}

int recmg_write_rows(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, const void *values)
{
    return recmg_write_rows_ex(p, table, rows, n, values, NULL);
}

int recmg_write_rows_ex(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, const void *values,
                        uint64_t *written)
{
    if (written) *written = 0;
    if (!p) return RECMG_EINVAL;
    if (n && (!rows || !values)) return null_arg(p, "recmg_write_rows_ex: rows or values is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    int rc = rows_check(p, table, rows, n);
    if (rc) return rc;
    const tabdesc *t = &p->tables[table];
    uint32_t rb = t->row_bytes;
    const uint8_t *src = values;
    uint64_t done = 0; /* (rows written: n once the loop ran, or the rows before a failed write) */
    pthread_mutex_lock(&p->lock);
    rc = writer_lock(p);
    if (rc) goto out_unlocked;
    done = n;
    fault_stop("RECMG_FAULT_STOP_IN_WRITE");
    /* Row by row, one odd window of the row's entry group around the row's slow-tier write and its copy's
     * rewrite: a reader of the slow tier checks the group's version around its read as a hit's reader
     * does around the slot (lookup.c), so that no read sees a half-written row; the copy is rewritten
     * with its entry unpublished inside the window, so that a slot an entry names is always whole, also
     * if this writer dies there. All under the writer lock, so that no fill copies a half-written row.
     * The header names the table being written until the call ends: a writer that dies between a row's
     * slow write and its copy's leaves a copy older than the slow tier, and the next writer's repair
     * drops every copy of that table (recover_fast_tier). If the file write of row k fails, rows [0, k)
     * are written and their copies updated; row k's copy is dropped (its slow row may be half written). */
    atomic_store_explicit(&p->sh->writing_table, (int32_t)table + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* (named before any row changes) */
    const int kill_in_write = env_flag("RECMG_FAULT_KILL_IN_WRITE");
    const int stop_in_row = env_flag("RECMG_FAULT_STOP_IN_ROW"), sleep_in_row = env_flag("RECMG_FAULT_SLEEP_IN_ROW");
    uint64_t words[RECMG_PAGE / 8], staged[RECMG_STAGE_BYTES / 8];
    uint64_t *w = words;
    const int stage = stage_fits(p, rb);
    uint64_t *heap = NULL;
    int changed = 0;
    if (p->h->slot_stride > sizeof words) w = heap = calloc(1, p->h->slot_stride);
    if (w) memset(w, 0, p->h->slot_stride);
    for (uint64_t k = 0; k < n; k++) {
        const uint64_t e = entry_of(p, RECMG_KEY(table, rows[k]));
        const uint64_t off = t->slow_off + (uint64_t)rows[k] * rb;
        if (p->slow) write_ahead(p, t, rows, n, k, rb);
        if (stage) /* (the version its window will have: only this writer changes versions) */
            stage_row(p, table, rows[k], src + k * rb, rb,
                      atomic_load_explicit(entry_version(p, e), memory_order_relaxed) + 1u, staged);
        const uint32_t v = window_open(p, e);
        if (p->slow) {
            if (kill_in_write && k + 1 == n) { /* (tests: dies with half of the last row written) */
                memcpy(p->slow + off, src + k * rb, rb / 2);
                raise(SIGKILL);
            }
            if ((stop_in_row || sleep_in_row) && k == 0) { /* (tests: stopped, or 200 ms asleep, in the first
                                                              * row's window, half of it written) */
                memcpy(p->slow + off, src + k * rb, rb / 2);
                if (stop_in_row) {
                    fault_stop("RECMG_FAULT_STOP_IN_ROW");
                } else {
                    struct timespec ts = {0, 200000000};
                    nanosleep(&ts, NULL);
                }
            }
            memcpy(p->slow + off, src + k * rb, rb);
        } else {
            rc = slowio_write_row(p, off, src + k * rb, rb);
        }
        if (kill_in_write && k + 1 == n) raise(SIGKILL); /* (tests, SSD: the last row written, its copy not) */
        const int32_t s = atomic_load_explicit(&p->index[e], memory_order_relaxed);
        if (s >= 0) {
            changed = 1;
            if (!slot_ok(p, s) || !w || rc) {
                /* not a slot of this pool, no memory for a row, or the row a failed write may have left
                 * half written: the copy is dropped (lookups read the slow tier) */
                atomic_store_explicit(&p->index[e], -1, memory_order_relaxed);
                p->free_valid = 0;
                note_repair(p);
            } else {
                memcpy(w, src + k * rb, rb);
                atomic_store_explicit(&p->index[e], -1, memory_order_relaxed);
                slot_write(p, (uint64_t)s, w);
                atomic_store_explicit(&p->index[e], s, memory_order_relaxed);
            }
        }
        window_close(p, e, v);
        /* (release: a reader that sees the key cleared sees the row written, in C11 terms as on x86) */
        if (stage) atomic_store_explicit(&p->sh->staged_key, 0, memory_order_release);
        if (rc) {
            char why[RECMG_ERRLEN];
            err_copy(p, rc, why, sizeof why);
            if (k)
                rc = rc_set(p, rc, "%s; rows [0, %llu) of the batch of %llu were written", why, (unsigned long long)k,
                            (unsigned long long)n);
            else
                rc = rc_set(p, rc, "%s; no rows written", why);
            done = k;
            break;
        }
    }
    atomic_store_explicit(&p->sh->writing_table, 0, memory_order_release);
    if (!w && changed && !rc) rc = rc_set(p, RECMG_ENOMEM, "out of memory for a row (all rows written, copies dropped)");
    free(heap);
    if (changed) bump_generation(p);
    writer_unlock(p);
out_unlocked:
    scratch_trim(p);
    pthread_mutex_unlock(&p->lock);
    if (written) *written = done;
    return (int)intact_after(p, rc);
}
