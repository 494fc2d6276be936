/*
 * dlrm_example - a small C "DLRM app" over librecmg.
 *
 *   dlrm_example [POOL_NAME [SLOW]]      SLOW: dram (default), numa:N or ssd:PATH
 *
 * Creates a pool of 4 tables (or attaches if it exists), writes rows whose values encode
 * (table, row, column), attaches a second handle as the daemon and fills part of the fast tier,
 * looks up bags (sum, mean, weighted) through the app handle, checks every output against the
 * expected value, drains the app's access ring and checks its records, then destroys the pool.
 * Prints one summary line; exits 0 when every check passed.
 *
 * With ssd:PATH the slow-tier file PATH stays behind after the run (recmg_destroy removes the pool,
 * not its file), and create never overwrites a file: run it again on the same PATH after `rm PATH`,
 * or give another PATH.
 *
 * `make -C native` builds it as native/build/dlrm_example (static librecmg). Built on its own, it
 * needs -lm for itself (fmaf), as any app that uses libm does:
 *   cc dlrm_example.c $(pkg-config --cflags --libs recmg) -lm      (after `make install`)
 *   cc native/examples/dlrm_example.c -Inative/include -Lnative/build -lrecmg -lm
 *                                     (from the repository; run with LD_LIBRARY_PATH=native/build)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recmg.h"

#define N_TABLES 4
#define ROWS 5000
#define DIM 32
#define BAGS 256
#define POOLING 8

static float value(uint32_t t, int64_t r, uint32_t c) { return (float)(t * 100000 + r) + (float)c / 64.0f; }

static int fail(const char *what, const char *msg)
{
    fprintf(stderr, "dlrm_example: %s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv)
{
    char name[128];
    if (argc > 1)
        snprintf(name, sizeof name, "%s", argv[1]);
    else
        snprintf(name, sizeof name, "dlrm_example_%d", (int)getpid());
    const char *slow = argc > 2 ? argv[2] : "dram";
    char err[512];

    recmg_table_spec specs[N_TABLES];
    for (int t = 0; t < N_TABLES; t++) specs[t] = (recmg_table_spec){.rows = ROWS, .dim = DIM};
    recmg_create_opts o = {.n_tables = N_TABLES, .tables = specs, .n_slots = N_TABLES * ROWS / 4,
                           .dtype = RECMG_F32, .slow_kind = RECMG_SLOW_DRAM, .role = RECMG_ROLE_APP};
    if (strncmp(slow, "ssd:", 4) == 0) {
        o.slow_kind = RECMG_SLOW_SSD;
        o.slow_path = slow + 4;
    } else if (strncmp(slow, "numa:", 5) == 0) {
        o.slow_kind = RECMG_SLOW_NUMA;
        o.numa_node = atoi(slow + 5);
    } else if (strcmp(slow, "dram") != 0) {
        return fail("arguments", "SLOW must be dram, numa:N or ssd:PATH");
    }

    recmg_pool *app = NULL, *daemon = NULL;
    int rc = recmg_create(name, &o, &app, err, sizeof err);
    if (rc == RECMG_EEXIST) {
        /* RECMG_EEXIST is also an existing slow-tier file (never overwritten): attach only to a pool
         * that exists, and keep create's message when there is none */
        char aerr[512];
        rc = recmg_attach(name, RECMG_ROLE_APP, 0, &app, aerr, sizeof aerr);
        if (rc == RECMG_ENOENT) return fail("create", err);
        if (rc) {
            fprintf(stderr, "dlrm_example: create: %s; attach: %s\n", err, aerr);
            return 1;
        }
    }
    if (rc) return fail("create", err);

    /* the slow tier: values that encode (table, row, column) */
    static float rowbuf[ROWS * DIM];
    static int64_t rows[ROWS];
    for (int64_t r = 0; r < ROWS; r++) rows[r] = r;
    for (uint32_t t = 0; t < N_TABLES; t++) {
        for (int64_t r = 0; r < ROWS; r++)
            for (uint32_t c = 0; c < DIM; c++) rowbuf[r * DIM + c] = value(t, r, c);
        if (recmg_write_rows(app, t, rows, ROWS, rowbuf)) return fail("write_rows", recmg_errmsg(app));
    }

    /* the daemon fills every other row of each table until the fast tier is full */
    rc = recmg_attach(name, RECMG_ROLE_DAEMON, 0, &daemon, err, sizeof err);
    if (rc) return fail("attach daemon", err);
    static int64_t keys[N_TABLES * ROWS];
    uint64_t nk = 0;
    for (uint32_t t = 0; t < N_TABLES; t++)
        for (int64_t r = 0; r < ROWS; r += 4) keys[nk++] = RECMG_KEY(t, r);
    int64_t filled = recmg_fill_keys(daemon, keys, nk);
    if (filled < 0) return fail("fill", recmg_errmsg(daemon));

    /* lookups: BAGS bags of POOLING ids per table, three modes */
    static int64_t ids[BAGS * POOLING], offsets[BAGS + 1];
    static float weights[BAGS * POOLING], out[BAGS * DIM];
    uint64_t seed = 88172645463325252ull, bad = 0, checked = 0;
    for (uint32_t t = 0; t < N_TABLES; t++) {
        for (int b = 0; b <= BAGS; b++) offsets[b] = (int64_t)b * POOLING;
        for (int i = 0; i < BAGS * POOLING; i++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            ids[i] = (int64_t)(seed % ROWS);
            weights[i] = (float)(i % 3);
        }
        for (int mode = RECMG_SUM; mode <= RECMG_MEAN + 1; mode++) {
            const float *w = mode == RECMG_MEAN + 1 ? weights : NULL;
            int m = mode == RECMG_MEAN + 1 ? RECMG_SUM : mode;
            if (recmg_embedding_bag(app, t, ids, BAGS * POOLING, offsets, BAGS, m, w, out))
                return fail("embedding_bag", recmg_errmsg(app));
            for (int b = 0; b < BAGS; b++)
                for (uint32_t c = 0; c < DIM; c++) {
                    /* the same float operations in the same order: the result must be exact */
                    float want = 0;
                    for (int i = b * POOLING; i < (b + 1) * POOLING; i++)
                        want = w ? fmaf(w[i], value(t, ids[i], c), want) : want + value(t, ids[i], c);
                    if (m == RECMG_MEAN) want *= 1.0f / POOLING;
                    if (out[b * DIM + c] != want) bad++;
                    checked++;
                }
        }
    }
    recmg_end_batch(app);

    /* an out-of-range id is an error, and the pool stays usable */
    int64_t wrong = ROWS;
    int64_t off2[2] = {0, 1};
    if (recmg_embedding_bag(app, 0, &wrong, 1, off2, 1, RECMG_SUM, NULL, out) != RECMG_ERANGE)
        return fail("range check", "an out-of-range id was accepted");

    /* the app's ring: lookups in order, then the batch boundary */
    recmg_pool_info info;
    recmg_info(app, &info);
    static uint64_t rec[1 << 16];
    int64_t n = recmg_drain_ring(daemon, (uint32_t)info.ring_index, rec, 1 << 16);
    if (n < 0) return fail("drain", recmg_errmsg(daemon));
    uint64_t want_records = (uint64_t)N_TABLES * 3 * BAGS * POOLING + 1;
    int ring_ok = (uint64_t)n == want_records && RECMG_REC_TYPE(rec[n - 1]) == RECMG_REC_BATCH_END;
    /* the last call's records are the last table's ids, in order */
    uint64_t base = want_records - 1 - BAGS * POOLING;
    for (int i = 0; ring_ok && i < BAGS * POOLING; i++)
        ring_ok = RECMG_REC_TYPE(rec[base + i]) == RECMG_REC_LOOKUP &&
                  RECMG_REC_KEY(rec[base + i]) == RECMG_KEY(N_TABLES - 1, ids[i]);
    recmg_counters c;
    recmg_ring_counters(daemon, (uint32_t)info.ring_index, &c);

    printf("dlrm_example: pool %s slow=%s filled=%lld checked=%llu wrong=%llu ring_records=%lld ring_ok=%d "
           "lookups=%llu hits=%llu on_demand=%llu\n",
           name, slow, (long long)filled, (unsigned long long)checked, (unsigned long long)bad, (long long)n, ring_ok,
           (unsigned long long)c.lookups, (unsigned long long)c.hits, (unsigned long long)c.on_demand);
    recmg_close(daemon);
    recmg_close(app);
    recmg_destroy(name, err, sizeof err);
    return bad == 0 && ring_ok && c.hits > 0 && c.on_demand > 0 ? 0 : 1;
}
