/*
 * cycle_stress - create / lookup / destroy cycles over librecmg, for sanitizer builds.
 *
 *   cycle_stress CYCLES [THREADS [FILL [SLOW]]]      SLOW: dram (default) or ssd:PATH
 *
 * Each cycle creates a pool (1000 x 16 float32, 100 slots, 1024-record ring, or 3 tables of
 * which one is dim 20 and one dim 64 every third cycle; float16 every sixth), optionally attaches
 * a second handle as the daemon and fills and evicts between lookups (FILL=1), does 3 lookups of
 * 1000 ids (1, 10 and 250 ids per bag, so that threaded calls split a table's bags), a multi-table
 * call, a batch boundary, then closes both handles (the daemon's before or after the app's,
 * alternately) and destroys the pool. THREADS > 1 turns on the lookup worker threads, and every 4th
 * cycle changes the thread count between lookups. Checks each bag against the slow tier's values.
 * Exits 0 when every cycle passed; built with -fsanitize=address,undefined (or thread) by `make -C native
 * sanitize` it reports any heap error in close/destroy or a race with the workers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recmg.h"

#define ROWS 1000
#define IDS 1000

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static float value(uint32_t t, int64_t r, uint32_t c) { return (float)((t * 7 + (uint64_t)r * 3 + c) % 64) / 8.0f; }

static int fail(long cycle, const char *what, const char *msg)
{
    fprintf(stderr, "cycle_stress: cycle %ld: %s: %s\n", cycle, what, msg);
    return 1;
}

static int write_table(recmg_pool *p, uint32_t t, const recmg_table_spec *s, int f16)
{
    size_t esz = f16 ? 2 : 4;
    uint8_t *v = malloc((size_t)s->rows * s->dim * esz);
    int64_t *rows = malloc(s->rows * sizeof *rows);
    if (!v || !rows) {
        free(v);
        free(rows);
        return RECMG_ENOMEM;
    }
    for (uint64_t r = 0; r < s->rows; r++) {
        rows[r] = (int64_t)r;
        for (uint32_t c = 0; c < s->dim; c++) {
            float f = value(t, (int64_t)r, c);
            if (f16) { /* f is k/8 with k < 64: exact in half precision */
                uint16_t h = 0;
                if (f != 0.0f) {
                    int e = 0;
                    float m = f;
                    while (m >= 2.0f) m /= 2.0f, e++;
                    while (m < 1.0f) m *= 2.0f, e--;
                    h = (uint16_t)(((uint32_t)(e + 15) << 10) | (uint32_t)((m - 1.0f) * 1024.0f));
                }
                memcpy(v + ((size_t)r * s->dim + c) * 2, &h, 2);
            } else {
                memcpy(v + ((size_t)r * s->dim + c) * 4, &f, 4);
            }
        }
    }
    int rc = recmg_write_rows(p, t, rows, s->rows, v);
    free(v);
    free(rows);
    return rc;
}

static int check_bags(uint32_t t, const recmg_table_spec *s, const int64_t *ids, const int64_t *off, uint64_t nb,
                      const float *out)
{
    for (uint64_t b = 0; b < nb; b++)
        for (uint32_t c = 0; c < s->dim; c++) {
            float e = 0.0f;
            for (int64_t i = off[b]; i < off[b + 1]; i++) e += value(t, ids[i], c);
            float d = out[b * s->dim + c] - e;
            if (d > 1e-3f || d < -1e-3f) return 1;
        }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: cycle_stress CYCLES [THREADS [FILL [SLOW]]]\n");
        return 2;
    }
    long cycles = strtol(argv[1], NULL, 10);
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    int fill = argc > 3 ? atoi(argv[3]) : 0;
    const char *slow = argc > 4 ? argv[4] : "dram";
    char err[512];
    int64_t *ids = malloc(IDS * sizeof *ids);
    int64_t *off = malloc((IDS + 1) * sizeof *off);
    float *out = malloc((size_t)IDS * 64 * sizeof *out);
    float *outs[3];
    for (int k = 0; k < 3; k++) outs[k] = malloc((size_t)IDS * 64 * sizeof(float));
    int64_t keys[64];
    int64_t res[128];
    if (!ids || !off || !out || !outs[0] || !outs[1] || !outs[2]) return fail(-1, "malloc", "out of memory");
    rng_state ^= (uint64_t)getpid() << 20;

    for (long cy = 0; cy < cycles; cy++) {
        char name[96];
        snprintf(name, sizeof name, "cycle_stress_%d_%ld", (int)getpid(), cy);
        int multi = cy % 3 == 2;
        recmg_table_spec specs[3] = {{ROWS, 16}, {ROWS * 3, 20}, {500, 64}};
        recmg_create_opts o = {.n_tables = multi ? 3 : 1, .tables = specs, .n_slots = 100, .dtype = RECMG_F32,
                               .slow_kind = RECMG_SLOW_DRAM, .ring_records = 1024, .role = RECMG_ROLE_APP};
        if (cy % 6 == 5) o.dtype = RECMG_F16;
        if (strncmp(slow, "ssd:", 4) == 0) {
            o.slow_kind = RECMG_SLOW_SSD;
            o.slow_path = slow + 4;
        }
        recmg_pool *app = NULL, *daemon = NULL;
        int rc = recmg_create(name, &o, &app, err, sizeof err);
        if (rc) return fail(cy, "create", err);
        if (threads > 1 && recmg_set_threads(app, threads) != 0) return fail(cy, "set_threads", recmg_errmsg(app));
        if (fill) {
            rc = recmg_attach(name, RECMG_ROLE_DAEMON, 0, &daemon, err, sizeof err);
            if (rc) return fail(cy, "attach", err);
        }
        for (uint32_t t = 0; t < o.n_tables; t++) {
            rc = write_table(fill ? daemon : app, t, &specs[t], o.dtype == RECMG_F16);
            if (rc) return fail(cy, "write_rows", recmg_errmsg(fill ? daemon : app));
        }
        static const uint64_t per_bag[3] = {1, 10, 250};
        for (int k = 0; k < 3; k++) {
            for (int i = 0; i < IDS; i++) ids[i] = (int64_t)(rnd() % ROWS);
            uint64_t nb = IDS / per_bag[k];
            for (uint64_t b = 0; b <= nb; b++) off[b] = (int64_t)(b * per_bag[k]);
            rc = recmg_embedding_bag(app, 0, ids, IDS, off, nb, RECMG_SUM, NULL, out);
            if (rc) return fail(cy, "embedding_bag", recmg_errmsg(app));
            if (check_bags(0, &specs[0], ids, off, nb, out)) return fail(cy, "embedding_bag", "wrong result");
            if (daemon) {
                for (int j = 0; j < 64; j++) keys[j] = RECMG_KEY(0, (int64_t)(rnd() % ROWS));
                int64_t free_slots = recmg_free_slots(daemon);
                if (free_slots < 0) return fail(cy, "free_slots", recmg_errmsg(daemon));
                if (free_slots < 64) {
                    int64_t n = recmg_resident_keys(daemon, res, 128);
                    if (n < 0) return fail(cy, "resident_keys", recmg_errmsg(daemon));
                    if (recmg_evict_keys(daemon, res, (uint64_t)(n < 128 ? n : 128)) < 0)
                        return fail(cy, "evict_keys", recmg_errmsg(daemon));
                }
                if (recmg_fill_keys(daemon, keys, 64) < 0) return fail(cy, "fill_keys", recmg_errmsg(daemon));
            }
            if (threads > 1 && cy % 4 == 3 && recmg_set_threads(app, k == 1 ? 1 : threads) != 0)
                return fail(cy, "set_threads", recmg_errmsg(app));
        }
        if (multi) {
            recmg_bag_args a[3];
            for (int i = 0; i < IDS; i++) ids[i] = (int64_t)(rnd() % 500);
            for (uint64_t b = 0; b <= IDS / 4; b++) off[b] = (int64_t)(b * 4);
            for (uint32_t t = 0; t < 3; t++)
                a[t] = (recmg_bag_args){.table = t, .mode = RECMG_SUM, .ids = ids, .n_ids = IDS, .offsets = off,
                                        .n_bags = IDS / 4, .weights = NULL, .out = outs[t]};
            rc = recmg_embedding_bags(app, 3, a);
            if (rc) return fail(cy, "embedding_bags", recmg_errmsg(app));
            for (uint32_t t = 0; t < 3; t++)
                if (check_bags(t, &specs[t], ids, off, IDS / 4, outs[t]))
                    return fail(cy, "embedding_bags", "wrong result");
        }
        if (recmg_end_batch(app) != 0) return fail(cy, "end_batch", recmg_errmsg(app));
        if (daemon && cy % 2) recmg_close(daemon), daemon = NULL;
        recmg_close(app);
        rc = recmg_destroy(name, err, sizeof err);
        if (rc) return fail(cy, "destroy", err);
        recmg_close(daemon);
        /* the file outlives the pool (create never overwrites one): the next cycle makes a new one */
        if (o.slow_path && unlink(o.slow_path) != 0) return fail(cy, "unlink", o.slow_path);
    }
    free(ids);
    free(off);
    free(out);
    for (int k = 0; k < 3; k++) free(outs[k]);
    printf("cycle_stress: %ld cycles, threads=%d fill=%d slow=%s: ok\n", cycles, threads, fill, slow);
    return 0;
}
