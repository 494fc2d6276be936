/* page_moves.c - the page-mode calls of librecmg from C (tests/test_daemon_pages.py builds and runs it,
 * also under the fake_move_pages.c shim): page counts, a node query, a move with per-page status and
 * bounded -EBUSY retries, the error paths. Prints one line of counts and "ok", or what went wrong. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "recmg.h"

#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "page_moves: line %d: ", __LINE__);                                           \
            fprintf(stderr, __VA_ARGS__);                                                                  \
            fprintf(stderr, "\n");                                                                         \
            return 1;                                                                                      \
        }                                                                                                  \
    } while (0)

static int run(recmg_pool *p, const char *pool_name, int busy_retries, const char *ssd_path)
{
    CHECK(recmg_slow_pages(p, 0) == 256, "table 0: %lld pages, expected 256", (long long)recmg_slow_pages(p, 0));
    CHECK(recmg_slow_pages(p, 1) == 98, "table 1: %lld pages, expected 98", (long long)recmg_slow_pages(p, 1));
    CHECK(recmg_slow_pages(p, 2) == RECMG_ERANGE, "table 2 is out of range");
    enum { N = 64 };
    int64_t pages[N];
    int32_t nodes[N], status[N];
    for (int i = 0; i < N; i++) pages[i] = 3 * i;
    CHECK(recmg_slow_page_nodes(p, 0, pages, N, nodes) == RECMG_OK, "query: %s", recmg_errmsg(p));
    for (int i = 0; i < N; i++) CHECK(nodes[i] == 0, "page %lld on node %d", (long long)pages[i], nodes[i]);
    recmg_move_stats st;
    int64_t moved = recmg_move_slow_pages(p, 0, pages, N, 0, RECMG_MOVE_ALL, busy_retries, status, &st);
    CHECK(moved >= 0, "move: %s", recmg_errmsg(p));
    int busy = 0, other = 0, on_node = 0;
    for (int i = 0; i < N; i++) {
        if (status[i] == 0)
            on_node++;
        else if (status[i] == -EBUSY)
            busy++;
        else
            other++;
    }
    CHECK(on_node == moved && (uint64_t)moved == st.moved, "moved %lld, stats %llu, statuses on node %d",
          (long long)moved, (unsigned long long)st.moved, on_node);
    CHECK(st.requested == N, "requested %llu", (unsigned long long)st.requested);
    printf("calls=%llu requested=%llu moved=%lld busy_retries=%llu move_all=%d busy=%d other=%d\n",
           (unsigned long long)st.calls, (unsigned long long)st.requested, (long long)moved,
           (unsigned long long)st.busy_retries, st.move_all, busy, other);
    /* error paths: each names the problem in the pool's error string */
    int64_t bad = 256;
    CHECK(recmg_move_slow_pages(p, 0, &bad, 1, 0, RECMG_MOVE_ALL, 0, status, &st) == RECMG_ERANGE &&
              strstr(recmg_errmsg(p), "page 256 out of range"),
          "page 256: %s", recmg_errmsg(p));
    CHECK(recmg_move_slow_pages(p, 0, pages, 1, 4000, RECMG_MOVE_ALL, 0, status, &st) == RECMG_EINVAL &&
              strstr(recmg_errmsg(p), "NUMA node 4000 does not exist"),
          "node 4000: %s", recmg_errmsg(p));
    CHECK(recmg_move_slow_pages(p, 0, pages, 1, 0, 0x80, 0, status, &st) == RECMG_EINVAL, "flags 0x80");
    CHECK(recmg_move_slow_pages(p, 0, pages, 1, 0, 0, -1, status, &st) == RECMG_EINVAL, "busy_retries -1");
    CHECK(recmg_move_slow_pages(p, 0, pages, 0, 0, RECMG_MOVE_ALL, 0, NULL, &st) == 0 && st.calls == 0,
          "an empty list makes no call");
    /* an SSD slow tier has no pages */
    recmg_table_spec spec = {10, 4};
    recmg_create_opts o;
    memset(&o, 0, sizeof o);
    o.n_tables = 1;
    o.tables = &spec;
    o.n_slots = 1;
    o.slow_kind = RECMG_SLOW_SSD;
    o.slow_path = ssd_path;
    o.role = RECMG_ROLE_DAEMON;
    char err[256], name[300];
    snprintf(name, sizeof name, "%s-ssd", pool_name);
    recmg_pool *s = NULL;
    CHECK(recmg_create(name, &o, &s, err, sizeof err) == RECMG_OK, "ssd pool: %s", err);
    int64_t rc = recmg_slow_pages(s, 0);
    int ok = rc == RECMG_EINVAL && strstr(recmg_errmsg(s), "ssd slow tier");
    int64_t rc2 = recmg_move_slow_pages(s, 0, pages, 1, 0, RECMG_MOVE_ALL, 0, status, &st);
    ok = ok && rc2 == RECMG_EINVAL;
    recmg_close(s);
    recmg_destroy(name, err, sizeof err);
    CHECK(ok, "ssd pool: slow_pages %lld, move %lld (%s)", (long long)rc, (long long)rc2, err);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: page_moves POOL_NAME BUSY_RETRIES SSD_FILE\n");
        return 2;
    }
    recmg_table_spec specs[2] = {{4096, 64}, {1000, 100}}; /* 256 B rows: 256 pages; 400 B rows: 98 pages */
    recmg_create_opts o;
    memset(&o, 0, sizeof o);
    o.n_tables = 2;
    o.tables = specs;
    o.n_slots = 16;
    o.slow_kind = RECMG_SLOW_NUMA;
    o.numa_node = 0;
    o.role = RECMG_ROLE_DAEMON;
    char err[256];
    recmg_pool *p = NULL;
    if (recmg_create(argv[1], &o, &p, err, sizeof err) != RECMG_OK) {
        fprintf(stderr, "page_moves: create: %s\n", err);
        return 1;
    }
    int rc = run(p, argv[1], atoi(argv[2]), argv[3]);
    recmg_close(p);
    recmg_destroy(argv[1], err, sizeof err);
    if (rc == 0) printf("ok\n");
    return rc;
}
