/* Random check of the stream ring's runs (native/policy/runs.h) against a per-position reference, built
 * with AddressSanitizer and UndefinedBehaviorSanitizer by tests/test_models_native_step.py:
 *
 *     runs_check STEPS SEED RING
 *
 * Steps add 0 to 3 x RING positions each, in phases of max(500, RING / 4) steps (empty steps, steps that
 * wrap the ring on their own, long stretches of one-position steps that make the runs outgrow their
 * first allocation while the oldest is mid-array); after each step, every position still in the ring
 * (the last RING) gets its step from sc_runs_find, and a forward walk over them (as the prefetcher walks
 * a trigger's followers) agrees; the runs kept stay within the steps the ring spanned when the last run
 * was added, plus that one.
 * Prints "runs_check: ok ..." and exits 0, or names the step and exits 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "runs.h"
#include "xorshift.h"

int main(int argc, char **argv)
{
    if (argc != 4)
        return fprintf(stderr, "usage: runs_check STEPS SEED RING\n"), 2;
    int64_t steps = strtoll(argv[1], NULL, 10), ring = strtoll(argv[3], NULL, 10);
    uint64_t s = strtoull(argv[2], NULL, 10) * 2 + 1;
    if (steps < 1 || ring < 1)
        return fprintf(stderr, "runs_check: STEPS and RING must be >= 1\n"), 2;
    int64_t cap = 1024, n = 0, max_runs = 0, before = 0; /* ref[pos] = the step that added pos */
    int64_t *ref = malloc((size_t)cap * sizeof(int64_t));
    sc_runs r = {0};
    if (!ref)
        return 2;
    for (int64_t b = 0; b < steps; b++) {
        int64_t phase = (b / (ring / 4 > 500 ? ring / 4 : 500)) % 3, add;
        if (phase == 0)
            add = (int64_t)(next(&s) % 4 == 0 ? 0 : next(&s) % (uint64_t)(ring / 4 + 2));
        else if (phase == 1)
            add = (int64_t)(next(&s) % 2); /* one-position steps: many runs in the ring */
        else
            add = (int64_t)(next(&s) % 16 ? next(&s) % 8 : next(&s) % (uint64_t)(3 * ring + 1)); /* a step
                                                                          may wrap the ring on its own */
        if (add) /* the ring's oldest position when the last run was added */
            before = n > ring ? n - ring : 0;
        if (add && sc_runs_push(&r, b, n, ring) != SC_OK)
            return fprintf(stderr, "runs_check: out of memory\n"), 2;
        if (n + add > cap) {
            while (n + add > cap)
                cap *= 2;
            int64_t *nr = realloc(ref, (size_t)cap * sizeof(int64_t));
            if (!nr)
                return 2;
            ref = nr;
        }
        for (int64_t i = 0; i < add; i++)
            ref[n++] = b;
        int64_t lo = n > ring ? n - ring : 0;
        if (n == 0)
            continue;
        if (r.n < 1 || sc_runs_start(&r, 0) > lo)
            return printf("runs_check: step %" PRId64 ": the oldest run starts after the ring\n", b), 1;
        int64_t k = sc_runs_find(&r, lo);
        for (int64_t pos = lo; pos < n; pos++) {
            while (sc_runs_start(&r, k + 1) <= pos)
                k++;
            if (sc_runs_step(&r, k) != ref[pos])
                return printf("runs_check: step %" PRId64 ": the walk gives position %" PRId64 " step %" PRId64
                              ", not %" PRId64 "\n", b, pos, sc_runs_step(&r, k), ref[pos]), 1;
            if ((pos - lo) % 7 == 0 && sc_runs_step(&r, sc_runs_find(&r, pos)) != ref[pos])
                return printf("runs_check: step %" PRId64 ": find gives position %" PRId64 " a wrong step\n",
                              b, pos), 1;
        }
        /* runs leave when a step is added: no more than the steps the ring spanned then, and b's */
        int64_t spanned = ref[n - 1] - ref[before] + 1;
        if (r.n > spanned + 1)
            return printf("runs_check: step %" PRId64 ": %" PRId64 " runs for %" PRId64 " steps\n", b, r.n,
                          spanned), 1;
        if (r.n > max_runs)
            max_runs = r.n;
    }
    printf("runs_check: ok %" PRId64 " steps, %" PRId64 " positions, at most %" PRId64 " runs\n", steps, n,
           max_runs);
    sc_runs_free(&r);
    free(ref);
    return 0;
}
