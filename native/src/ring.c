/* ring.c - per-process access rings (single producer: the app; single consumer: the daemon) and
 * counters.
 *
 * head and tail are free-running uint64 counters; record i lives at records[i & (cap - 1)]. The
 * producer never waits: what does not fit is dropped and counted. A ring whose owner died is taken
 * over by the next app that finds no free ring (or released by the daemon); head and tail are never
 * reset, so the daemon can still drain what the dead process logged; the new owner's records begin
 * with a change of owner (RECMG_REC_OWNER, ring_begin), so the daemon ends the dead one's there. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

static int pid_alive(int32_t pid)
{
    if (pid <= 0) return 0;
    return !(kill((pid_t)pid, 0) != 0 && errno == ESRCH);
}

uint64_t proc_start(pid_t pid)
{
    char path[48], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *q = strrchr(buf, ')'); /* "pid (comm) state ...": comm may hold anything */
    if (!q) return 0;
    for (int field = 2; field < 22; field++) { /* (the field after ')' is the 3rd; the start time the 22nd) */
        q = strchr(q + 1, ' ');
        if (!q) return 0;
    }
    return strtoull(q + 1, NULL, 10);
}

static void counters_zero(shm_counters *c)
{
    atomic_store_explicit(&c->lookups, 0, memory_order_relaxed);
    atomic_store_explicit(&c->unique, 0, memory_order_relaxed);
    atomic_store_explicit(&c->hits, 0, memory_order_relaxed);
    atomic_store_explicit(&c->on_demand, 0, memory_order_relaxed);
    atomic_store_explicit(&c->ring_drops, 0, memory_order_relaxed);
    atomic_store_explicit(&c->slow_bytes, 0, memory_order_relaxed);
}

static void counters_read(const shm_counters *c, recmg_counters *o)
{
    o->lookups = atomic_load_explicit(&c->lookups, memory_order_relaxed);
    o->unique = atomic_load_explicit(&c->unique, memory_order_relaxed);
    o->hits = atomic_load_explicit(&c->hits, memory_order_relaxed);
    o->on_demand = atomic_load_explicit(&c->on_demand, memory_order_relaxed);
    o->ring_drops = atomic_load_explicit(&c->ring_drops, memory_order_relaxed);
    o->slow_bytes = atomic_load_explicit(&c->slow_bytes, memory_order_relaxed);
}

int ring_claim(recmg_pool *p)
{
    int32_t me = (int32_t)p->pid;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < p->h->n_rings; i++) {
            shm_ring *r = ring_at(p, i);
            int32_t cur = atomic_load_explicit(&r->owner, memory_order_relaxed);
            if (pass == 0 ? cur != 0 : pid_alive(cur)) continue;
            /* the start time before the pid (and again after): from the moment the ring names this pid,
             * another handle of this process finds its own start time there and leaves the ring alone
             * (recmg_release_ring). A claimer that loses the race to another process may leave its
             * start time on the winner's ring; only the winner's own release calls would read it. */
            atomic_store_explicit(&r->owner_start, p->start, memory_order_relaxed);
            if (atomic_compare_exchange_strong_explicit(&r->owner, &cur, me, memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                atomic_store_explicit(&r->owner_start, p->start, memory_order_relaxed);
                /* where this owner's records start (nobody logs into the ring until this handle does,
                 * after its attach), then the claim counted (release: a daemon that reads the new count
                 * reads this head). Only the winner writes them: a loser that read the head late would
                 * put the winner's first records before its claim */
                uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
                atomic_store_explicit(&r->owner_head, head, memory_order_relaxed);
                uint32_t before = atomic_fetch_add_explicit(&r->claims, 1, memory_order_release);
                counters_zero(&r->c);
                /* a ring owned before (a dead app's, or one an app detached from): the change of owner
                 * goes before this handle's first record, so a daemon ends the previous owner's records
                 * there however many claims it missed (the first owner of a ring has nothing before it) */
                p->ring_mark = before != 0;
                p->ring = r;
                p->ring_index = (int)i;
                return RECMG_OK;
            }
        }
    }
    return rc_set(p, RECMG_ENOSPC, "pool '%s' has no free access ring (%u rings, all owned by live processes)",
                  p->name + 1, p->h->n_rings);
}

void ring_release_own(recmg_pool *p)
{
    int32_t me = (int32_t)p->pid;
    atomic_compare_exchange_strong(&p->ring->owner, &me, 0);
    p->ring = NULL;
    p->ring_index = -1;
    p->ring_mark = 0;
}

/* A run of records begun at the ring's head: its room is what the daemon has freed (the snapshot
 * taken here; the daemon only frees more). */
ringrun ring_begin(recmg_pool *p)
{
    shm_ring *r = p->ring;
    if (!r) return (ringrun){.room = 0};
    uint64_t cap = p->h->ring_records;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t used = head - tail; /* the daemon writes tail: more than cap is a corrupted pair */
    ringrun rr = {.head = head, .room = used <= cap ? cap - used : 0};
    if (p->ring_mark && rr.room) {
        /* the handle's change of owner first (its pid the key): the run's records come after it. Until a
         * run publishes it, the next run writes it again in the same place */
        ring_records(r)[head & (cap - 1)] = ((uint64_t)RECMG_REC_OWNER << 62) | (uint64_t)(uint32_t)p->pid;
        rr.head++;
        rr.room--;
        rr.mark = 1;
    }
    return rr;
}

/* How many of n records from position at of run rr its room holds. */
static uint64_t run_fits(const ringrun *rr, uint64_t at, uint64_t n)
{
    return at >= rr->room ? 0 : (n < rr->room - at ? n : rr->room - at);
}

/* Writes n records (type, table, rows[i]) or, with rows == NULL, records of key 0 (boundaries) at
 * positions at, at + 1, ... of run rr, as many as its room holds; not visible to the daemon until
 * ring_publish. Threads may write disjoint positions of one run at once. */
void ring_write(recmg_pool *p, const ringrun *rr, uint64_t at, uint32_t table, const int64_t *rows, uint64_t n,
                unsigned type)
{
    uint64_t k = p->ring ? run_fits(rr, at, n) : 0;
    if (k == 0) return;
    uint64_t cap = p->h->ring_records;
    uint64_t *rec = ring_records(p->ring);
    uint64_t mask = cap - 1;
    uint64_t hi = ((uint64_t)type << 62) | ((uint64_t)table << RECMG_ROW_BITS);
    /* the k records as (at most) two contiguous runs: no masking per record, and a loop the
     * compiler vectorises */
    uint64_t first = (rr->head + at) & mask;
    uint64_t k1 = cap - first < k ? cap - first : k;
    uint64_t *d = rec + first;
    if (rows) {
        for (uint64_t i = 0; i < k1; i++) d[i] = hi | (uint64_t)rows[i];
        for (uint64_t i = k1; i < k; i++) rec[i - k1] = hi | (uint64_t)rows[i];
    } else {
        for (uint64_t i = 0; i < k1; i++) d[i] = hi;
        for (uint64_t i = k1; i < k; i++) rec[i - k1] = hi;
    }
}

/* Records [at, at + n) of run rr, written by ring_write, are table's (type): counts what the run's room
 * dropped of them. Returns how many of them fit. */
uint64_t ring_count_drops(recmg_pool *p, const ringrun *rr, uint64_t at, uint32_t table, uint64_t n, unsigned type)
{
    shm_ring *r = p->ring;
    if (!r) return 0;
    uint64_t kept = run_fits(rr, at, n);
    if (kept < n) {
        atomic_fetch_add_explicit(&r->c.ring_drops, n - kept, memory_order_relaxed);
        if (table < p->h->n_tables && type == RECMG_REC_LOOKUP)
            atomic_fetch_add_explicit(&p->stab[table].c.ring_drops, n - kept, memory_order_relaxed);
    }
    return kept;
}

/* Hands the first n records of run rr (at most its room) to the daemon. The caller's own writes, and
 * those of threads it has synchronised with, are visible to it before the new head. */
void ring_publish(recmg_pool *p, const ringrun *rr, uint64_t n)
{
    n = run_fits(rr, 0, n);
    if (p->ring && (n || rr->mark)) {
        atomic_store_explicit(&p->ring->head, rr->head + n, memory_order_release);
        if (rr->mark) p->ring_mark = 0;
    }
}

/* Appends n records (type, table, rows[i]) or, with rows == NULL, n records of key 0 (boundaries);
 * what does not fit is dropped and counted. (A handle's change of owner goes before them: ring_begin.) */
void ring_append(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, unsigned type)
{
    if (!p->ring || n == 0) return;
    ringrun rr = ring_begin(p);
    ring_write(p, &rr, 0, table, rows, n, type);
    ring_publish(p, &rr, ring_count_drops(p, &rr, 0, table, n, type));
}

int ring_forked_error(recmg_pool *p)
{
    return rc_set(p, RECMG_EBUSY, "this handle of pool '%s' was inherited across fork(); attach the pool again in the child",
                  p->name + 1);
}

int recmg_end_batch(recmg_pool *p)
{
    if (!p) return RECMG_EINVAL;
    if (p->ring && getpid() != p->pid) return ring_forked_error(p);
    pthread_mutex_lock(&p->lock);
    ring_append(p, 0, NULL, 1, RECMG_REC_BATCH_END);
    pthread_mutex_unlock(&p->lock);
    return RECMG_OK;
}

int recmg_hint(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n)
{
    if (!p) return RECMG_EINVAL;
    if (n && !rows) return null_arg(p, "recmg_hint: rows is NULL");
    if (p->ring && getpid() != p->pid) return ring_forked_error(p);
    if (table >= p->h->n_tables)
        return rc_set(p, RECMG_ERANGE, "table %u out of range (pool has %u tables)", table, p->h->n_tables);
    uint64_t nr = p->tables[table].rows;
    for (uint64_t i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= nr)
            return rc_set(p, RECMG_ERANGE, "row id %lld out of range for table %u (%llu rows)", (long long)rows[i],
                          table, (unsigned long long)nr);
    pthread_mutex_lock(&p->lock);
    ring_append(p, table, rows, n, RECMG_REC_HINT);
    pthread_mutex_unlock(&p->lock);
    return RECMG_OK;
}

static int ring_check(recmg_pool *p, uint32_t i)
{
    if (i >= p->h->n_rings)
        return rc_set(p, RECMG_ERANGE, "ring %u out of range (pool has %u rings)", i, p->h->n_rings);
    return RECMG_OK;
}

static void ring_state_fill(recmg_pool *p, uint32_t i, recmg_ring_state *o)
{
    shm_ring *r = ring_at(p, i);
    /* the count first (acquire: the owner_head its claim stored comes with it), then the rest; a count
     * that moved meanwhile (a claim while this look was taken) means the pid and owner_head may be the
     * next claim's: looked at again, a few times at most (apps are not trusted to stop claiming) */
    uint64_t from, head, tail;
    for (int again = 0;; again++) {
        o->claims = atomic_load_explicit(&r->claims, memory_order_acquire);
        o->pid = atomic_load_explicit(&r->owner, memory_order_acquire);
        from = atomic_load_explicit(&r->owner_head, memory_order_relaxed);
        head = atomic_load_explicit(&r->head, memory_order_acquire);
        tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        if (again == 3 || atomic_load_explicit(&r->claims, memory_order_acquire) == o->claims) break;
    }
    o->waiting = head - tail <= p->h->ring_records ? head - tail : 0; /* a corrupted pair: nothing to drain */
    uint64_t before = from - tail; /* (free-running: a claim behind the tail wraps past waiting) */
    o->before_claim = before <= o->waiting ? before : 0;
    o->drops = atomic_load_explicit(&r->c.ring_drops, memory_order_relaxed);
    o->capacity = p->h->ring_records;
}

int recmg_get_ring_info(recmg_pool *p, uint32_t i, recmg_ring_info *o)
{
    if (!p) return RECMG_EINVAL;
    if (!o) return null_arg(p, "recmg_get_ring_info: info is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    int rc = ring_check(p, i);
    if (rc) return rc;
    recmg_ring_state st;
    ring_state_fill(p, i, &st);
    o->pid = st.pid;
    o->waiting = st.waiting;
    o->drops = st.drops;
    o->capacity = st.capacity;
    return (int)intact_after(p, RECMG_OK);
}

int64_t recmg_get_rings(recmg_pool *p, uint32_t first, recmg_ring_state *out, uint64_t n)
{
    if (!p) return RECMG_EINVAL;
    if (n && !out) return null_arg(p, "recmg_get_rings: out is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    uint32_t total = p->h->n_rings;
    if (first > total)
        return rc_set(p, RECMG_ERANGE, "ring %u out of range (pool has %u rings)", first, total);
    uint64_t k = total - first < n ? total - first : n;
    for (uint64_t j = 0; j < k; j++) ring_state_fill(p, first + (uint32_t)j, out + j);
    return intact_after(p, (int64_t)k);
}

int64_t recmg_drain_ring(recmg_pool *p, uint32_t i, uint64_t *out, uint64_t max)
{
    if (!p) return RECMG_EINVAL;
    if (max && !out) return null_arg(p, "recmg_drain_ring: out is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    int rc = ring_check(p, i);
    if (rc) return rc;
    shm_ring *r = ring_at(p, i);
    uint64_t cap = p->h->ring_records, mask = cap - 1;
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t n = head - tail;
    if (n > cap) /* a corrupted pair; resynchronise rather than read garbage */
        n = 0, tail = head;
    if (n > max) n = max;
    const uint64_t *rec = ring_records(r);
    uint64_t first = tail & mask;
    uint64_t k1 = cap - first < n ? cap - first : n;
    if (k1) memcpy(out, rec + first, k1 * 8);
    if (n - k1) memcpy(out + k1, rec, (n - k1) * 8);
    atomic_store_explicit(&r->tail, tail + n, memory_order_release);
    return intact_after(p, (int64_t)n);
}

int recmg_release_ring(recmg_pool *p, uint32_t i)
{
    if (!p) return RECMG_EINVAL;
    int irc = shm_intact(p);
    if (irc) return irc;
    int rc = ring_check(p, i);
    if (rc) return rc;
    shm_ring *r = ring_at(p, i);
    if (r == p->ring) /* freed, it would go to the next app while this handle still logs into it */
        return rc_set(p, RECMG_EBUSY, "ring %u is this handle's own (it goes back when the handle closes)", i);
    int32_t cur = atomic_load_explicit(&r->owner, memory_order_relaxed);
    if (cur != 0 && pid_alive(cur) && cur != (int32_t)p->pid)
        return rc_set(p, RECMG_EBUSY, "ring %u is owned by live process %d", i, cur);
    /* this process's pid: another handle's of this process (or of the process this one forked from),
     * unless the ring's start time says a dead owner's pid was reused */
    if (cur != 0 && cur == (int32_t)p->pid && p->start &&
        atomic_load_explicit(&r->owner_start, memory_order_relaxed) == p->start)
        return rc_set(p, RECMG_EBUSY, "ring %u is held by another handle of process %d (it goes back when that "
                      "handle closes)", i, cur);
    atomic_compare_exchange_strong(&r->owner, &cur, 0);
    return (int)intact_after(p, RECMG_OK);
}

int recmg_table_counters(recmg_pool *p, uint32_t t, recmg_counters *c)
{
    if (!p) return RECMG_EINVAL;
    if (!c) return null_arg(p, "recmg_table_counters: c is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    if (t >= p->h->n_tables)
        return rc_set(p, RECMG_ERANGE, "table %u out of range (pool has %u tables)", t, p->h->n_tables);
    counters_read(&p->stab[t].c, c);
    return (int)intact_after(p, RECMG_OK);
}

int recmg_ring_counters(recmg_pool *p, uint32_t i, recmg_counters *c)
{
    if (!p) return RECMG_EINVAL;
    if (!c) return null_arg(p, "recmg_ring_counters: c is NULL");
    int irc = shm_intact(p);
    if (irc) return irc;
    int rc = ring_check(p, i);
    if (rc) return rc;
    counters_read(&ring_at(p, i)->c, c);
    return (int)intact_after(p, RECMG_OK);
}

int recmg_reset_counters(recmg_pool *p)
{
    if (!p) return RECMG_EINVAL;
    int irc = shm_intact(p);
    if (irc) return irc;
    for (uint32_t t = 0; t < p->h->n_tables; t++) counters_zero(&p->stab[t].c);
    for (uint32_t i = 0; i < p->h->n_rings; i++) counters_zero(&ring_at(p, i)->c);
    return (int)intact_after(p, RECMG_OK);
}
