/*
 * api_bounds - the public API at the edges of its arithmetic, for sanitizer builds.
 *
 *   api_bounds NAME_PREFIX DIR     (pools /dev/shm/NAME_PREFIX-*, slow-tier files in DIR)
 *
 * Each probe passes arguments whose sizes wrap 64-bit arithmetic if nothing checks them, or uses a
 * handle as an app that forks would: a layout of tables whose rows add up past 2^64 bytes, a lookup
 * whose offsets claim 2^62 or 3 * 2^61 ids (the scratch buffers and the slow tier's hash would be
 * sized to a wrapped product), page and node queries of 2^62 entries, a child forked with a handle on
 * the SSD tier reading through io_uring, an app handle releasing its own ring. Each must give an
 * error code (or, for the fork, correct rows in both processes) and leave the handle usable; built
 * with -fsanitize=address,undefined (`make -C native build/api_bounds_asan`), any heap error or
 * overflow is a report. Prints "PROBE: ok" per probe and exits 0 when all passed.
 */
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

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: api_bounds NAME_PREFIX DIR\n");
        return 2;
    }
    char huge[128], dram[128], ssd[128], path[1024];
    snprintf(huge, sizeof huge, "%s-huge", argv[1]);
    snprintf(dram, sizeof dram, "%s-dram", argv[1]);
    snprintf(ssd, sizeof ssd, "%s-ssd", argv[1]);
    snprintf(path, sizeof path, "%s/api-bounds.bin", argv[2]);
    char err[256];

    probe_layout(huge);
    recmg_pool *p = make_pool(dram, 0, NULL);
    probe_wrapped_ids(p, "ids-2^62-fresh", UINT64_C(1) << 62); /* (no scratch yet) */
    probe_wrapped_ids(p, "ids-2^62-grown", UINT64_C(1) << 62); /* (scratch from the lookup before) */
    probe_numa(p);
    probe_release_own(p);
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
