/*
 * api_bounds - the public API at the edges of its arithmetic, for sanitizer builds.
 *
 *   api_bounds NAME_PREFIX DIR     (pools /dev/shm/NAME_PREFIX-*, slow-tier files in DIR)
 *
 * Each probe passes arguments whose sizes wrap 64-bit arithmetic if nothing checks them, or uses a
 * handle as an app that forks would: a layout of tables whose rows add up past 2^64 bytes, a lookup
 * whose offsets claim 2^62 or 3 * 2^61 ids (the scratch buffers and the slow tier's hash would be
 * sized to a wrapped product), page and node queries of 2^62 entries, a child forked with a handle on
 * the SSD tier reading through io_uring, an app handle releasing its own ring (or another handle of the
 * process, or a forked child, releasing it), calls given NULL pointers (each says so, by name), and two
 * threads' refused calls on one handle at once (`threads`: that probe alone, for the ThreadSanitizer
 * build, `make -C native build/api_bounds_tsan`). Each must give an
 * error code (or, for the fork, correct rows in both processes) and leave the handle usable; built
 * with -fsanitize=address,undefined (`make -C native build/api_bounds_asan`), any heap error or
 * overflow is a report. Prints "PROBE: ok" per probe and exits 0 when all passed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "recmg.h"

#define ROWS 64
#define DIM 8

static int failed;

static void report(const char *probe, const char *fmt, int rc, const char *msg)
{
    if (fmt) {
        fprintf(stderr, "api_bounds: %s: ", probe);
        fprintf(stderr, fmt, rc);
        fprintf(stderr, " (%s)\n", msg ? msg : "");
        failed = 1;
    } else {
        printf("%s: ok\n", probe);
    }
}

static recmg_pool *make_pool(const char *name, int ssd, const char *path)
{
    static const recmg_table_spec spec[1] = {{ROWS, DIM}};
    recmg_create_opts o = {.n_tables = 1, .tables = spec, .n_slots = 16, .dtype = RECMG_F32,
                           .slow_kind = ssd ? RECMG_SLOW_SSD : RECMG_SLOW_DRAM, .slow_path = path,
                           .ring_records = 1024, .n_rings = 4, .role = RECMG_ROLE_APP};
    recmg_pool *p = NULL;
    char err[256];
    recmg_destroy(name, err, sizeof err);
    if (path) unlink(path);
    if (recmg_create(name, &o, &p, err, sizeof err) != RECMG_OK) {
        fprintf(stderr, "api_bounds: create %s: %s\n", name, err);
        exit(2);
    }
    float v[ROWS * DIM];
    int64_t rows[ROWS];
    for (int r = 0; r < ROWS; r++) {
        rows[r] = r;
        for (int c = 0; c < DIM; c++) v[r * DIM + c] = (float)(r * 10 + c);
    }
    if (recmg_write_rows(p, 0, rows, ROWS, v) != RECMG_OK) {
        fprintf(stderr, "api_bounds: write_rows: %s\n", recmg_errmsg(p));
        exit(2);
    }
    return p;
}

/* One bag of rows 3 and 5: 0 when its sum is right. */
static int lookup_ok(recmg_pool *p)
{
    const int64_t ids[2] = {3, 5}, off[2] = {0, 2};
    float out[DIM];
    if (recmg_embedding_bag(p, 0, ids, 2, off, 1, RECMG_SUM, NULL, out) != RECMG_OK) return -1;
    for (int c = 0; c < DIM; c++)
        if (out[c] != (float)(30 + c + 50 + c)) return -1;
    return 0;
}

static void probe_layout(const char *name)
{
    recmg_table_spec spec[64];
    for (int t = 0; t < 64; t++) spec[t] = (recmg_table_spec){UINT64_C(1) << 40, t == 63 ? 65471u : 65536u};
    recmg_create_opts o = {.n_tables = 64, .tables = spec, .n_slots = 16, .dtype = RECMG_F32};
    uint64_t meta = 0, tb = 0, total = 0;
    int rc = recmg_layout_size(&o, &meta, &tb, &total);
    report("layout-size", rc == RECMG_EINVAL ? NULL : "rc %d, want EINVAL", rc, "");
    recmg_pool *p = NULL;
    char err[256] = "";
    rc = recmg_create(name, &o, &p, err, sizeof err);
    report("layout-create", rc == RECMG_EINVAL && strstr(err, "too large") ? NULL : "rc %d, want EINVAL", rc, err);
    if (p) recmg_close(p);
    recmg_destroy(name, err, sizeof err); /* (an object sized to a wrapped layout, if create made one) */
}

static void probe_wrapped_ids(recmg_pool *p, const char *probe, uint64_t n_ids)
{
    const int64_t ids[4] = {1, 2, 3, -1};
    const int64_t off[2] = {0, (int64_t)n_ids};
    float out[DIM];
    int rc = recmg_embedding_bag(p, 0, ids, n_ids, off, 1, RECMG_SUM, NULL, out);
    if (rc != RECMG_ENOMEM) return report(probe, "rc %d, want ENOMEM", rc, recmg_errmsg(p));
    report(probe, lookup_ok(p) ? "rc %d, and then a lookup went wrong" : NULL, rc, recmg_errmsg(p));
}

static void probe_numa(recmg_pool *p)
{
    const int64_t rows[8] = {0, 8, 16, 24, 32, 40, 48, -1};
    int32_t nodes[8], status[8];
    const uint64_t n = UINT64_C(1) << 62;
    int rc = recmg_slow_nodes(p, 0, rows, n, nodes);
    report("slow-nodes", rc == RECMG_ENOMEM ? NULL : "rc %d, want ENOMEM", rc, recmg_errmsg(p));
    rc = recmg_slow_page_nodes(p, 0, rows, n, nodes);
    report("slow-page-nodes", rc == RECMG_ENOMEM ? NULL : "rc %d, want ENOMEM", rc, recmg_errmsg(p));
    rc = (int)recmg_move_slow_pages(p, 0, rows, n, 0, 0, 0, status, NULL);
    report("move-slow-pages", rc == RECMG_ENOMEM ? NULL : "rc %d, want ENOMEM", rc, recmg_errmsg(p));
}

/* A child forked with an SSD-tier handle whose parent has read through io_uring reads rows of its
 * own, and afterwards the parent's reads and lookups are still right. */
static void probe_fork(recmg_pool *p)
{
    const int64_t rows[2] = {7, 9};
    float out[2 * DIM];
    int rc = recmg_read_rows(p, 0, rows, 2, out);
    if (rc != RECMG_OK) return report("fork-ssd", "parent read rc %d", rc, recmg_errmsg(p));
    recmg_pool_info info;
    if (recmg_info(p, &info) != RECMG_OK) return report("fork-ssd", "info rc %d", -1, recmg_errmsg(p));
    printf("fork-ssd: the parent reads with %s\n", info.io_backend);
    fflush(stdout); /* (not printed twice by the child) */
    pid_t pid = fork();
    if (pid < 0) return report("fork-ssd", "fork failed (%d)", -1, "");
    if (pid == 0) {
        for (int k = 0; k < 4; k++) {
            memset(out, 0, sizeof out);
            if (recmg_read_rows(p, 0, rows, 2, out) != RECMG_OK || out[0] != 70.0f || out[DIM] != 90.0f) _exit(3);
        }
        _exit(0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return report("fork-ssd", "the child's reads went wrong (status %d)", st, "");
    for (int k = 0; k < 4; k++) {
        memset(out, 0, sizeof out);
        rc = recmg_read_rows(p, 0, rows, 2, out);
        if (rc != RECMG_OK || out[0] != 70.0f || out[DIM] != 90.0f)
            return report("fork-ssd", "parent read after the child: rc %d or wrong rows", rc, recmg_errmsg(p));
    }
    report("fork-ssd", lookup_ok(p) ? "rc %d: a lookup after the child went wrong" : NULL, 0, recmg_errmsg(p));
}

static void probe_release_own(recmg_pool *p)
{
    recmg_pool_info info;
    if (recmg_info(p, &info) != RECMG_OK || info.ring_index < 0)
        return report("release-own-ring", "no ring (%d)", info.ring_index, recmg_errmsg(p));
    int rc = recmg_release_ring(p, (uint32_t)info.ring_index);
    report("release-own-ring", rc == RECMG_EBUSY ? NULL : "rc %d, want EBUSY", rc, recmg_errmsg(p));
}

/* Another handle of this process (app or daemon), or a child forked with this one, releasing this
 * handle's live ring: refused (two producers would share it). */
static void probe_release_sibling(recmg_pool *p, const char *name)
{
    recmg_pool_info info;
    char err[256];
    if (recmg_info(p, &info) != RECMG_OK || info.ring_index < 0)
        return report("release-sibling-ring", "no ring (%d)", info.ring_index, recmg_errmsg(p));
    recmg_pool *q = NULL, *d = NULL;
    if (recmg_attach(name, RECMG_ROLE_APP, 0, &q, err, sizeof err) != RECMG_OK ||
        recmg_attach(name, RECMG_ROLE_DAEMON, 0, &d, err, sizeof err) != RECMG_OK) {
        recmg_close(q);
        return report("release-sibling-ring", "attach rc %d", -1, err);
    }
    const uint32_t ring = (uint32_t)info.ring_index;
    int rq = recmg_release_ring(q, ring), rd = recmg_release_ring(d, ring);
    int rchild = -1;
    pid_t pid = fork();
    if (pid == 0) _exit(recmg_release_ring(q, ring) == RECMG_EBUSY ? 0 : 1);
    int st = 0;
    if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st)) rchild = WEXITSTATUS(st);
    recmg_ring_info ri;
    const int owned = recmg_get_ring_info(d, ring, &ri) == RECMG_OK && ri.pid == (int32_t)getpid();
    recmg_close(q);
    recmg_close(d);
    if (rq != RECMG_EBUSY || rd != RECMG_EBUSY || rchild != 0 || !owned) {
        fprintf(stderr, "api_bounds: release-sibling-ring: app %d, daemon %d, forked child %d, still owned %d\n", rq,
                rd, rchild, owned);
        failed = 1;
        return;
    }
    report("release-sibling-ring", NULL, 0, NULL);
}

/* A call refused for a NULL pointer argument says so (the handle's message was another call's), and
 * draining into no buffer, with room for none, is no undefined memcpy. */
static void probe_null_args(recmg_pool *p, const char *name)
{
    char err[256];
    recmg_pool *d = NULL;
    if (recmg_attach(name, RECMG_ROLE_DAEMON, 0, &d, err, sizeof err) != RECMG_OK)
        return report("null-args", "attach rc %d", -1, err);
    const char *fn[] = {"recmg_info", "recmg_get_table_info", "recmg_embedding_bags", "recmg_hint",
                        "recmg_get_ring_info", "recmg_drain_ring", "recmg_table_counters", "recmg_ring_counters",
                        "recmg_fill_keys", "recmg_evict_keys", "recmg_resident_keys", "recmg_read_rows",
                        "recmg_write_rows_ex", "recmg_slow_nodes"};
    const int n = (int)(sizeof fn / sizeof fn[0]);
    for (int k = 0; k < n; k++) {
        (void)recmg_hint(p, 4000000u, NULL, 0); /* (another message first) */
        (void)recmg_hint(d, 4000000u, NULL, 0);
        recmg_pool *h = p;
        int rc;
        switch (k) {
        case 0: rc = recmg_info(h, NULL); break;
        case 1: rc = recmg_get_table_info(h, 0, NULL); break;
        case 2: rc = recmg_embedding_bags(h, 1, NULL); break;
        case 3: rc = recmg_hint(h, 0, NULL, 1); break;
        case 4: rc = recmg_get_ring_info(h = d, 0, NULL); break;
        case 5: rc = (int)recmg_drain_ring(h = d, 0, NULL, 4); break;
        case 6: rc = recmg_table_counters(h, 0, NULL); break;
        case 7: rc = recmg_ring_counters(h = d, 0, NULL); break;
        case 8: rc = (int)recmg_fill_keys(h = d, NULL, 1); break;
        case 9: rc = (int)recmg_evict_keys(h = d, NULL, 1); break;
        case 10: rc = (int)recmg_resident_keys(h = d, NULL, 1); break;
        case 11: rc = recmg_read_rows(h, 0, NULL, 1, NULL); break;
        case 12: rc = recmg_write_rows_ex(h, 0, NULL, 1, NULL, NULL); break;
        default: rc = recmg_slow_nodes(h, 0, NULL, 1, NULL); break;
        }
        const char *msg = recmg_errmsg(h);
        if (rc != RECMG_EINVAL || strncmp(msg, fn[k], strlen(fn[k])) != 0 || !strstr(msg, "NULL")) {
            fprintf(stderr, "api_bounds: null-args: %s gave %d (%s)\n", fn[k], rc, msg);
            failed = 1;
        }
    }
    int64_t drained = recmg_drain_ring(d, 0, NULL, 0);
    if (drained != 0) {
        fprintf(stderr, "api_bounds: null-args: draining into no buffer gave %lld\n", (long long)drained);
        failed = 1;
    }
    recmg_close(d);
    if (!failed) report("null-args", NULL, 0, NULL);
}

typedef struct errjob {
    recmg_pool *p;
    int64_t row;
    int bad;
} errjob;

static void *err_thread(void *arg)
{
    errjob *j = arg;
    float out[DIM];
    const int64_t offsets[2] = {0, 1};
    for (int k = 0; k < 2000; k++) {
        if (recmg_read_rows(j->p, 0, &j->row, 1, out) != RECMG_ERANGE) j->bad++;
        if (recmg_hint(j->p, 4000000u + (uint32_t)j->row, NULL, 0) != RECMG_ERANGE) j->bad++;
        /* (an id out of range: found by the lookup itself, under the handle's lock) */
        if (recmg_embedding_bag(j->p, 0, &j->row, 1, offsets, 1, RECMG_SUM, NULL, out) != RECMG_ERANGE) j->bad++;
    }
    return NULL;
}

/* Two threads' refused calls on one handle at once (their argument checks run before the handle's
 * lock): each message is written whole (a ThreadSanitizer build reports a race where it is not). */
static void probe_error_threads(recmg_pool *p)
{
    pthread_t t[2];
    errjob j[2] = {{p, ROWS + 5, 0}, {p, ROWS + 9, 0}};
    for (int k = 0; k < 2; k++)
        if (pthread_create(&t[k], NULL, err_thread, &j[k]) != 0) return report("error-threads", "thread %d", k, "");
    for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
    report("error-threads", j[0].bad + j[1].bad ? "%d calls not refused" : NULL, j[0].bad + j[1].bad, "");
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "threads") == 0)) {
        fprintf(stderr, "usage: api_bounds NAME_PREFIX DIR [threads]\n");
        return 2;
    }
    char huge[128], dram[128], ssd[128], path[1024];
    snprintf(huge, sizeof huge, "%s-huge", argv[1]);
    snprintf(dram, sizeof dram, "%s-dram", argv[1]);
    snprintf(ssd, sizeof ssd, "%s-ssd", argv[1]);
    snprintf(path, sizeof path, "%s/api-bounds.bin", argv[2]);
    char err[256];

    if (argc == 4) { /* (the ThreadSanitizer build: the threaded probe alone) */
        recmg_pool *p = make_pool(dram, 0, NULL);
        probe_error_threads(p);
        recmg_close(p);
        recmg_destroy(dram, err, sizeof err);
        return failed;
    }
    probe_layout(huge);
    recmg_pool *p = make_pool(dram, 0, NULL);
    probe_wrapped_ids(p, "ids-2^62-fresh", UINT64_C(1) << 62); /* (no scratch yet) */
    probe_wrapped_ids(p, "ids-2^62-grown", UINT64_C(1) << 62); /* (scratch from the lookup before) */
    probe_numa(p);
    probe_release_own(p);
    probe_release_sibling(p, dram);
    probe_null_args(p, dram);
    probe_error_threads(p);
    recmg_close(p);
    recmg_destroy(dram, err, sizeof err);

    p = make_pool(ssd, 1, path);
    probe_wrapped_ids(p, "ssd-ids-3*2^61", UINT64_C(3) << 61);
    probe_fork(p);
    recmg_close(p);
    recmg_destroy(ssd, err, sizeof err);
    unlink(path);
    return failed;
}
