/* The once-used rows: key -> the step of the row's one use, for rows that keep no id in the key map.
 *
 * RecMG's C step (learned.c) gives a row an id, per-row state and, once it is used twice, a history
 * record. Most rows in its recency window are used once and then neither resident nor watched by the
 * guard: all they need is their key and the step of that use (their record is a function of the two).
 * At no budget to prefetch the step moves such rows here (12 bytes an entry, at most 9/10 full) and
 * gives their ids back; a row's next use takes its entry out again. The step is an int32 offset from
 * the caller's base (learned.c's rs_base), shifted when the base moves (sc_once_shift).
 * Open addressing with linear probing in Robin Hood order (a miss ends early) and backward-shift deletion
 * (no tombstones). An entry keeps the key's mix64 (a bijection of 64-bit keys, so it stands for the key),
 * whose top half scaled to the table is the home slot: the probes and moves, which need the home of every
 * entry they pass, read it from the entry without mixing again. Checked against a reference under AddressSanitizer by
 * tests/once_check.c (run by tests/test_models_native_step.py). */
#ifndef RECMG_ONCE_H
#define RECMG_ONCE_H

#include <stdint.h>

#include "internal.h"

#define SC_ONCE_NONE INT32_MIN /* an empty slot's offset, and sc_once_take's "absent" */

typedef struct {
    uint32_t mlo, mhi; /* the key's mix64, split so that an entry is 12 bytes, 4-aligned */
    int32_t off;       /* the step's offset from the caller's base; SC_ONCE_NONE: empty */
} sc_once_ent;

typedef struct {
    sc_once_ent *ent;
    uint64_t size;  /* slots (0: none yet) */
    int64_t n;      /* entries */
    uint64_t sweep; /* sc_once_expire's cursor */
} sc_once;

void sc_once_free(sc_once *t);
/* key's step offset (off > SC_ONCE_NONE), replacing any it had; SC_OK or SC_ENOMEM (the table unchanged) */
int sc_once_put(sc_once *t, int64_t key, int32_t off);
/* key's offset, its entry removed; SC_ONCE_NONE when it has none */
int32_t sc_once_take(sc_once *t, int64_t key);
/* the home slot of a key whose mix64 is mixed: its top half scaled to the table (size > 0) */
static inline uint64_t sc_once_home_mixed(uint64_t size, uint64_t mixed) { return ((mixed >> 32) * size) >> 32; }
/* key's home slot */
static inline uint64_t sc_once_home(uint64_t size, int64_t key)
{
    return sc_once_home_mixed(size, mix64((uint64_t)key));
}

/* ask for the line of key's home slot (a batched caller, some keys ahead): sc_once_prefetch when the table
 * has entries (a take), sc_once_prefetch_slot when it has slots (a put) */
static inline void sc_once_prefetch(const sc_once *t, int64_t key)
{
    if (t->n)
        __builtin_prefetch(&t->ent[sc_once_home(t->size, key)]);
}

static inline void sc_once_prefetch_slot(const sc_once *t, int64_t key)
{
    if (t->size)
        __builtin_prefetch(&t->ent[sc_once_home(t->size, key)], 1);
}
/* look at the next `budget` slots (a clock over the table) and remove the entries whose offset is below
 * min_off; how many were removed. A caller that wants each entry looked at every `steps` calls asks for
 * sc_once_turn(t, steps) slots a call. */
int64_t sc_once_expire(sc_once *t, int64_t min_off, int64_t budget);
/* the base moved forward by delta steps: every offset less delta; an entry whose offset would fall out
 * of int32 is removed (it is older than any window by then); how many were removed */
int64_t sc_once_shift(sc_once *t, int64_t delta);
/* slots a call for a whole turn in `steps` calls (at least 64) */
static inline int64_t sc_once_turn(const sc_once *t, int64_t steps)
{
    return (int64_t)t->size / (steps > 1 ? steps : 1) + 64;
}
/* bytes allocated */
int64_t sc_once_bytes(const sc_once *t);

#endif
