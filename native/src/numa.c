/* numa.c - bind the slow tier to a NUMA node (mbind) and query/move its pages (move_pages), through
 * raw syscalls so that no libnuma is needed. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MPOL_BIND_ 2
#define MPOL_MF_STRICT_ (1 << 0)
#define MPOL_MF_MOVE_ (1 << 1)
#define MAX_NODES 1024
#define MASK_WORDS (MAX_NODES / (8 * sizeof(unsigned long)))
#define MOVE_BUSY_RETRIES 8 /* further move_pages calls for pages whose status is -EBUSY (1 ms, 2 ms, ... apart) */

int numa_node_valid(int node)
{
    if (node < 0 || node >= MAX_NODES) return 0;
    char path[64];
    snprintf(path, sizeof path, "/sys/devices/system/node/node%d", node);
    struct stat st;
    return stat(path, &st) == 0;
}

int numa_bind_region(recmg_pool *p, void *addr, size_t len, int node)
{
    if (len == 0) return RECMG_OK;
    unsigned long mask[MASK_WORDS];
    memset(mask, 0, sizeof mask);
    mask[(unsigned)node / (8 * sizeof(unsigned long))] |= 1UL << ((unsigned)node % (8 * sizeof(unsigned long)));
    if (syscall(SYS_mbind, addr, len, MPOL_BIND_, mask, (unsigned long)MAX_NODES + 1, MPOL_MF_STRICT_ | MPOL_MF_MOVE_) != 0)
        return rc_set(p, RECMG_ESYS, "mbind of the slow tier (%zu bytes) to NUMA node %d: %s", len, node,
                      strerror(errno));
    return RECMG_OK;
}

static int table_rows_check(recmg_pool *p, uint32_t table)
{
    if (table >= p->h->n_tables)
        return rc_set(p, RECMG_ERANGE, "table %u out of range (pool has %u tables)", table, p->h->n_tables);
    if (!p->slow)
        return rc_set(p, RECMG_EINVAL, "pool '%s' has an ssd slow tier: it has no pages to place", p->name + 1);
    return RECMG_OK;
}

static int slow_nodes_mapped(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, int32_t *nodes)
{
    if (!p) return RECMG_EINVAL;
    if (n && (!rows || !nodes)) return null_arg(p, "recmg_slow_nodes: rows or nodes is NULL");
    int rc = table_rows_check(p, table);
    if (rc) return rc;
    const tabdesc *t = &p->tables[table];
    void **pages = reallocarray(NULL, n ? n : 1, sizeof *pages);
    int *status = reallocarray(NULL, n ? n : 1, sizeof *status);
    if (!pages || !status) {
        free(pages);
        free(status);
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu page queries", (unsigned long long)n);
    }
    for (uint64_t i = 0; i < n; i++) {
        if (rows[i] < 0 || (uint64_t)rows[i] >= t->rows) {
            free(pages);
            free(status);
            return rc_set(p, RECMG_ERANGE, "row id %lld out of range for table %u (%llu rows)", (long long)rows[i],
                          table, (unsigned long long)t->rows);
        }
        uintptr_t a = (uintptr_t)(p->slow + t->slow_off + (uint64_t)rows[i] * t->row_bytes);
        pages[i] = (void *)(a & ~(uintptr_t)(RECMG_PAGE - 1));
    }
    long r = n ? syscall(SYS_move_pages, 0, (unsigned long)n, pages, NULL, status, 0) : 0;
    if (r < 0) {
        int e = errno;
        free(pages);
        free(status);
        return rc_set(p, RECMG_ESYS, "move_pages (query): %s", strerror(e));
    }
    for (uint64_t i = 0; i < n; i++) nodes[i] = status[i];
    free(pages);
    free(status);
    return RECMG_OK;
}

static int64_t move_slow_rows_mapped(recmg_pool *p, uint32_t table, uint64_t first, uint64_t count, int node)
{
    if (!p) return RECMG_EINVAL;
    int rc = table_rows_check(p, table);
    if (rc) return rc;
    const tabdesc *t = &p->tables[table];
    if (first > t->rows || count > t->rows - first)
        return rc_set(p, RECMG_ERANGE, "rows [%llu, %llu) out of range for table %u (%llu rows)",
                      (unsigned long long)first, (unsigned long long)(first + count), table,
                      (unsigned long long)t->rows);
    if (!numa_node_valid(node)) return rc_set(p, RECMG_EINVAL, "NUMA node %d does not exist on this machine", node);
    if (count == 0) return 0;
    uintptr_t a0 = (uintptr_t)(p->slow + t->slow_off + first * t->row_bytes) & ~(uintptr_t)(RECMG_PAGE - 1);
    uintptr_t a1 = (uintptr_t)(p->slow + t->slow_off + (first + count) * t->row_bytes);
    uint64_t np = (a1 - a0 + RECMG_PAGE - 1) / RECMG_PAGE;
    void **pages = reallocarray(NULL, np, sizeof *pages);
    int *nodes = reallocarray(NULL, np, sizeof *nodes);
    int *status = reallocarray(NULL, np, sizeof *status);
    if (!pages || !nodes || !status) {
        free(pages);
        free(nodes);
        free(status);
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu page moves", (unsigned long long)np);
    }
    for (uint64_t i = 0; i < np; i++) {
        pages[i] = (void *)(a0 + i * RECMG_PAGE);
        nodes[i] = node;
    }
    long r = syscall(SYS_move_pages, 0, (unsigned long)np, pages, nodes, status, MPOL_MF_MOVE_);
    int e = errno;
    int64_t moved = 0;
    /* The call may return 0 while a page's status is -EBUSY (a page in a per-CPU LRU batch, locked or
     * under writeback for a moment): read every page's status and ask again for the busy ones, which
     * go to the front of pages[] (nodes[] is the target node throughout). */
    uint64_t nb = 0;
    int slept = 1;
    if (r >= 0)
        for (uint64_t i = 0; i < np; i++) {
            if (status[i] == node) moved++;
            else if (status[i] == -EBUSY) pages[nb++] = pages[i];
        }
    for (int round = 1; r >= 0 && nb > 0 && round <= MOVE_BUSY_RETRIES; round++) {
        struct timespec ts = {0, round * 1000000L};
        if (nanosleep(&ts, NULL) != 0 && errno != EINTR) {
            e = errno;
            r = -1;
            slept = 0;
            break;
        }
        r = syscall(SYS_move_pages, 0, (unsigned long)nb, pages, nodes, status, MPOL_MF_MOVE_);
        e = errno;
        uint64_t still = 0;
        if (r >= 0)
            for (uint64_t i = 0; i < nb; i++) {
                if (status[i] == node) moved++;
                else if (status[i] == -EBUSY) pages[still++] = pages[i];
            }
        nb = still;
    }
    free(pages);
    free(nodes);
    free(status);
    if (!slept) return rc_set(p, RECMG_ESYS, "nanosleep before a move_pages retry: %s", strerror(e));
    if (r < 0) return rc_set(p, RECMG_ESYS, "move_pages to node %d: %s", node, strerror(e));
    return moved;
}

/* ---- page mode: whole pages of a table's slow tier (page indices within the table's region) ---- */

#define MPOL_MF_MOVE_ALL_ (1 << 2)

static int64_t slow_pages_mapped(recmg_pool *p, uint32_t table)
{
    if (!p) return RECMG_EINVAL;
    int rc = table_rows_check(p, table);
    if (rc) return rc;
    const tabdesc *t = &p->tables[table];
    return (int64_t)((t->rows * (uint64_t)t->row_bytes + RECMG_PAGE - 1) / RECMG_PAGE);
}

/* Check a page list and fill the page addresses; each page is read once first, so that it is mapped
 * in this process (move_pages reports -ENOENT for a page this process has not mapped). */
static int page_addrs(recmg_pool *p, uint32_t table, const int64_t *pages, uint64_t n, void **addrs)
{
    const tabdesc *t = &p->tables[table];
    uint64_t np = (t->rows * (uint64_t)t->row_bytes + RECMG_PAGE - 1) / RECMG_PAGE;
    for (uint64_t i = 0; i < n; i++) {
        if (pages[i] < 0 || (uint64_t)pages[i] >= np)
            return rc_set(p, RECMG_ERANGE, "page %lld out of range for table %u (%llu slow-tier pages)",
                          (long long)pages[i], table, (unsigned long long)np);
        const volatile uint8_t *a = p->slow + t->slow_off + (uint64_t)pages[i] * RECMG_PAGE;
        (void)*a;
        addrs[i] = (void *)(uintptr_t)a;
    }
    return RECMG_OK;
}

static int slow_page_nodes_mapped(recmg_pool *p, uint32_t table, const int64_t *pages, uint64_t n, int32_t *nodes)
{
    if (!p) return RECMG_EINVAL;
    if (n && (!pages || !nodes)) return null_arg(p, "recmg_slow_page_nodes: pages or nodes is NULL");
    int rc = table_rows_check(p, table);
    if (rc || n == 0) return rc;
    void **addrs = reallocarray(NULL, n, sizeof *addrs);
    int *status = reallocarray(NULL, n, sizeof *status);
    if (!addrs || !status) {
        free(addrs);
        free(status);
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu page queries", (unsigned long long)n);
    }
    rc = page_addrs(p, table, pages, n, addrs);
    if (rc == RECMG_OK) {
        if (syscall(SYS_move_pages, 0, (unsigned long)n, addrs, NULL, status, 0) < 0)
            rc = rc_set(p, RECMG_ESYS, "move_pages (query of %llu pages of table %u): %s",
                        (unsigned long long)n, table, strerror(errno));
        else
            for (uint64_t i = 0; i < n; i++) nodes[i] = status[i];
    }
    free(addrs);
    free(status);
    return rc;
}

static int64_t move_slow_pages_mapped(recmg_pool *p, uint32_t table, const int64_t *pages, uint64_t n, int node,
                                      uint32_t flags, int busy_retries, int32_t *status, recmg_move_stats *stats)
{
    if (!p) return RECMG_EINVAL;
    if (n && (!pages || !status)) return null_arg(p, "recmg_move_slow_pages: pages or status is NULL");
    if (stats) memset(stats, 0, sizeof *stats);
    int rc = table_rows_check(p, table);
    if (rc) return rc;
    if (flags & ~(uint32_t)(RECMG_MOVE_ALL | RECMG_MOVE_STRICT))
        return rc_set(p, RECMG_EINVAL, "unknown move flags 0x%x", flags);
    if (busy_retries < 0)
        return rc_set(p, RECMG_EINVAL, "busy_retries must be >= 0, got %d", busy_retries);
    if (!numa_node_valid(node)) return rc_set(p, RECMG_EINVAL, "NUMA node %d does not exist on this machine", node);
    int sys_flags = (flags & RECMG_MOVE_ALL) ? MPOL_MF_MOVE_ALL_ : MPOL_MF_MOVE_;
    if (stats) stats->move_all = (flags & RECMG_MOVE_ALL) ? 1 : 0;
    if (n == 0) return 0;
    void **addrs = reallocarray(NULL, n, sizeof *addrs);
    int *nodes = reallocarray(NULL, n, sizeof *nodes);
    int *st = reallocarray(NULL, n, sizeof *st);
    uint64_t *idx = reallocarray(NULL, n, sizeof *idx); /* position in the caller's list of each page asked for */
    uint64_t m = n, calls = 0, retried = 0;
    int64_t moved = 0;
    if (!addrs || !nodes || !st || !idx) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for %llu page moves", (unsigned long long)n);
        goto out;
    }
    rc = page_addrs(p, table, pages, n, addrs);
    if (rc) goto out;
    for (uint64_t i = 0; i < n; i++) {
        nodes[i] = node;
        idx[i] = i;
    }
    for (int round = 0;; round++) {
        long r = syscall(SYS_move_pages, 0, (unsigned long)m, addrs, nodes, st, sys_flags);
        calls++;
        if (r < 0) {
            int e = errno;
            if (e == EPERM && sys_flags == MPOL_MF_MOVE_ALL_ && !(flags & RECMG_MOVE_STRICT)) {
                /* no CAP_SYS_NICE: move what this process maps alone; pages the app maps too get -EACCES */
                sys_flags = MPOL_MF_MOVE_;
                if (stats) stats->move_all = 0;
                round--;
                continue;
            }
            rc = rc_set(p, RECMG_ESYS, "move_pages of %llu pages of table %u to node %d%s: %s",
                        (unsigned long long)m, table, node,
                        e == EPERM && sys_flags == MPOL_MF_MOVE_ALL_ ? " (MPOL_MF_MOVE_ALL needs CAP_SYS_NICE)" : "",
                        strerror(e));
            goto out;
        }
        /* r > 0 counts pages not moved; the per-page status says which and why (read it all: a page
         * may be -EBUSY even when r == 0) */
        uint64_t busy = 0;
        for (uint64_t k = 0; k < m; k++) {
            status[idx[k]] = st[k];
            if (st[k] == -EBUSY) {
                addrs[busy] = addrs[k];
                idx[busy] = idx[k];
                busy++;
            }
        }
        if (busy == 0 || round >= busy_retries) break;
        retried += busy;
        m = busy;
        /* -EBUSY: the page is locked, under writeback or in a per-CPU LRU batch for a moment */
        struct timespec ts = {0, (round + 1) * 1000000L};
        if (nanosleep(&ts, NULL) != 0 && errno != EINTR) {
            rc = rc_set(p, RECMG_ESYS, "nanosleep before a move_pages retry: %s", strerror(errno));
            goto out;
        }
    }
    for (uint64_t i = 0; i < n; i++)
        if (status[i] == node) moved++;
out:
    if (stats) {
        stats->calls = calls;
        stats->requested = n;
        stats->moved = (uint64_t)moved;
        stats->busy_retries = retried;
    }
    free(addrs);
    free(nodes);
    free(st);
    free(idx);
    return rc ? rc : moved;
}

/* The public calls: each reads the pool's mapping (the slow tier's pages), so a daemon handle checks
 * the object first and reports a mapping lost during the call (busguard) at its end. */
int recmg_slow_nodes(recmg_pool *p, uint32_t table, const int64_t *rows, uint64_t n, int32_t *nodes)
{
    int irc = p ? shm_intact(p) : RECMG_EINVAL;
    return irc ? irc : (int)intact_after(p, slow_nodes_mapped(p, table, rows, n, nodes));
}

int64_t recmg_move_slow_rows(recmg_pool *p, uint32_t table, uint64_t first, uint64_t count, int node)
{
    int irc = p ? shm_intact(p) : RECMG_EINVAL;
    return irc ? irc : intact_after(p, move_slow_rows_mapped(p, table, first, count, node));
}

int64_t recmg_slow_pages(recmg_pool *p, uint32_t table)
{
    int irc = p ? shm_intact(p) : RECMG_EINVAL;
    return irc ? irc : intact_after(p, slow_pages_mapped(p, table));
}

int recmg_slow_page_nodes(recmg_pool *p, uint32_t table, const int64_t *pages, uint64_t n, int32_t *nodes)
{
    int irc = p ? shm_intact(p) : RECMG_EINVAL;
    return irc ? irc : (int)intact_after(p, slow_page_nodes_mapped(p, table, pages, n, nodes));
}

int64_t recmg_move_slow_pages(recmg_pool *p, uint32_t table, const int64_t *pages, uint64_t n, int node,
                              uint32_t flags, int busy_retries, int32_t *status, recmg_move_stats *stats)
{
    int irc = p ? shm_intact(p) : RECMG_EINVAL;
    return irc ? irc : intact_after(p, move_slow_pages_mapped(p, table, pages, n, node, flags, busy_retries, status,
                                                                stats));
}
