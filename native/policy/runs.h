/* The steps of a stream ring's positions, one entry a step instead of one a position.
 *
 * A ring of `ring` positions (RecMG's stream ring, learned.c) gets each step's positions at its end, in
 * order. Every step that adds positions is one run: its step and its first position. A position's step is
 * its run's, found by binary search (sc_runs_find), and a walk over consecutive positions moves forward
 * from run to run (sc_runs_start of the next). A run leaves once none of its positions is in the ring
 * (sc_runs_push drops them), so the runs are about the steps the ring spans, 16 bytes each.
 * Checked against a per-position reference under AddressSanitizer by tests/runs_check.c (run by tests/test_models_native_step.py). */
#ifndef RECMG_RUNS_H
#define RECMG_RUNS_H

#include <stdint.h>
#include <stdlib.h>

#include "simcore.h"

typedef struct {
    int64_t *step, *start; /* a ring of runs: head the oldest's place, n of them, cap a power of two */
    int64_t head, n, cap;
} sc_runs;

static inline void sc_runs_free(sc_runs *r)
{
    free(r->step), free(r->start);
    *r = (sc_runs){0};
}

/* the k-th run's step and first position, from the oldest (k < n; sc_runs_start gives INT64_MAX past the
 * newest, so a forward walk stops there) */
static inline int64_t sc_runs_step(const sc_runs *r, int64_t k) { return r->step[(r->head + k) & (r->cap - 1)]; }

static inline int64_t sc_runs_start(const sc_runs *r, int64_t k)
{
    return k < r->n ? r->start[(r->head + k) & (r->cap - 1)] : INT64_MAX;
}

/* the run holding position pos: the last one that starts at or before it (pos must be in the ring, so
 * at or after the oldest run's start) */
static inline int64_t sc_runs_find(const sc_runs *r, int64_t pos)
{
    int64_t lo = 0, hi = r->n - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (sc_runs_start(r, mid) <= pos)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* step b adds positions from `start` on (`start` is where the ring's end is now; the ring holds `ring`
 * positions): the runs whose positions have all left the ring by now leave, and b's run is added;
 * SC_OK or SC_ENOMEM (nothing changed then) */
static inline int sc_runs_push(sc_runs *r, int64_t b, int64_t start, int64_t ring)
{
    while (r->n > 1 && sc_runs_start(r, 1) <= start - ring)
        r->head = (r->head + 1) & (r->cap - 1), r->n--;
    if (r->n == r->cap) {
        int64_t nc = r->cap ? 2 * r->cap : 1024;
        int64_t *st = malloc((size_t)nc * sizeof(int64_t)), *sa = malloc((size_t)nc * sizeof(int64_t));
        if (!st || !sa) {
            free(st), free(sa);
            return SC_ENOMEM;
        }
        for (int64_t k = 0; k < r->n; k++)
            st[k] = sc_runs_step(r, k), sa[k] = sc_runs_start(r, k);
        free(r->step), free(r->start);
        r->step = st, r->start = sa;
        r->head = 0, r->cap = nc;
    }
    int64_t at = (r->head + r->n) & (r->cap - 1);
    r->step[at] = b, r->start[at] = start;
    r->n++;
    return SC_OK;
}

/* bytes the runs hold allocated */
static inline int64_t sc_runs_bytes(const sc_runs *r) { return r->cap * 16; }

#endif
