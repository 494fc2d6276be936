/* Fuzz loop for the step builder (native/policy/dedup.c), built with AddressSanitizer and
 * UndefinedBehaviorSanitizer by tests/test_trace_fuzz.py:
 *
 *     dedup_fuzz CASES SEED
 *
 * Every case allocates keys, bounds and both outputs at exactly the sizes the contract names, so any
 * read or write past them is a sanitizer report. Bounds are valid cuts of the keys, or valid cuts with
 * one value corrupted (negative, past the keys, decreasing, INT64_MIN/MAX), or random words. A case
 * must return SC_EARG exactly when the bounds are invalid, and otherwise the steps a quadratic
 * reference deduplication gives. Prints "dedup_fuzz: ok ..." and exits 0, or names the case and exits 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simcore.h"
#include "xorshift.h"

static int64_t below(uint64_t *s, int64_t n)
{
    return n > 0 ? (int64_t)(next(s) % (uint64_t)n) : 0;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int valid_bounds(const int64_t *b, int64_t n_steps, int64_t n_keys)
{
    if (b[0] < 0 || b[n_steps] > n_keys)
        return 0;
    for (int64_t s = 0; s < n_steps; s++)
        if (b[s + 1] < b[s])
            return 0;
    return 1;
}

/* the reference: per step, each key whose value did not occur earlier in the step, in order */
static int64_t reference(const int64_t *keys, const int64_t *b, int64_t n_steps, int64_t *out, int64_t *offs)
{
    int64_t o = 0;
    offs[0] = 0;
    for (int64_t s = 0; s < n_steps; s++) {
        for (int64_t i = b[s]; i < b[s + 1]; i++) {
            int dup = 0;
            for (int64_t j = b[s]; j < i && !dup; j++)
                dup = keys[j] == keys[i];
            if (!dup)
                out[o++] = keys[i];
        }
        offs[s + 1] = o;
    }
    return o;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CASES SEED\n", argv[0]);
        return 2;
    }
    long cases = strtol(argv[1], NULL, 10);
    uint64_t st = strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
    static const int64_t edge[] = {INT64_MIN, INT64_MIN + 1, -2, -1, INT64_MAX, INT64_MAX - 1, (int64_t)1 << 56,
                                   ((int64_t)1 << 56) + 1, (int64_t)1 << 62};
    long accepted = 0, refused = 0;
    for (long c = 0; c < cases; c++) {
        int64_t n_keys = below(&st, 48);
        int64_t n_steps = below(&st, 12);
        int64_t *keys = malloc((size_t)n_keys * sizeof *keys);
        int64_t *bounds = malloc((size_t)(n_steps + 1) * sizeof *bounds);
        int64_t *out = malloc((size_t)n_keys * sizeof *out);
        int64_t *offs = malloc((size_t)(n_steps + 1) * sizeof *offs);
        int64_t *ref = malloc((size_t)n_keys * sizeof *ref);
        int64_t *ref_offs = malloc((size_t)(n_steps + 1) * sizeof *ref_offs);
        if ((n_keys && (!keys || !out || !ref)) || !bounds || !offs || !ref_offs) {
            fprintf(stderr, "dedup_fuzz: out of memory\n");
            return 1;
        }
        int64_t range = 1 + below(&st, 8);
        for (int64_t i = 0; i < n_keys; i++)
            keys[i] = below(&st, 4) ? below(&st, range) : (int64_t)next(&st);
        int mode = (int)below(&st, 3);
        for (int64_t s = 0; s <= n_steps; s++)
            bounds[s] = mode == 2 ? (below(&st, 2) ? (int64_t)next(&st) : below(&st, n_keys + 3) - 1)
                                  : below(&st, n_keys + 1);
        if (mode != 2)
            qsort(bounds, (size_t)(n_steps + 1), sizeof *bounds, cmp64);
        if (mode == 1) /* one value corrupted */
            bounds[below(&st, n_steps + 1)] = below(&st, 2) ? edge[below(&st, sizeof edge / sizeof *edge)]
                                                           : below(&st, n_keys + 5) - 2;
        int ok = valid_bounds(bounds, n_steps, n_keys);
        int64_t rc = sc_dedup_steps(keys, n_keys, bounds, n_steps, out, offs);
        if (!ok) {
            if (rc != SC_EARG) {
                fprintf(stderr, "dedup_fuzz: case %ld: invalid bounds accepted (rc %" PRId64 ")\n", c, rc);
                return 1;
            }
            refused++;
        } else {
            int64_t want = reference(keys, bounds, n_steps, ref, ref_offs);
            if (rc != want || memcmp(out, ref, (size_t)want * sizeof *out) != 0 ||
                memcmp(offs, ref_offs, (size_t)(n_steps + 1) * sizeof *offs) != 0) {
                fprintf(stderr, "dedup_fuzz: case %ld: %" PRId64 " keys, want %" PRId64 " (or wrong keys)\n", c,
                        rc, want);
                return 1;
            }
            accepted++;
        }
        free(keys);
        free(bounds);
        free(out);
        free(offs);
        free(ref);
        free(ref_offs);
    }
    printf("dedup_fuzz: ok %ld cases, %ld accepted, %ld refused\n", cases, accepted, refused);
    return 0;
}
