/* The once-used rows' table (once.h). */
#include "once.h"

#include <stdlib.h>

/* the table grows by a quarter before its entries pass 9/10 of the slots (Robin Hood order keeps the probes
 * short that full) */
#define ONCE_LOAD_NUM 9
#define ONCE_LOAD_DEN 10
#define ONCE_MIN_SLOTS 1024
/* a removed-by-sc_once_shift mark (not a valid offset: sc_once_put takes offsets above it) */
#define ONCE_DEAD (INT32_MIN + 1)

/* an entry's mixed key (mix64 of the key: a bijection, so it tells keys apart as the key would) */
static inline uint64_t mixed_of(const sc_once_ent *e) { return ((uint64_t)e->mhi << 32) | e->mlo; }

static inline uint64_t home_of(uint64_t size, uint64_t mixed) { return sc_once_home_mixed(size, mixed); }

static inline uint64_t nxt(const sc_once *t, uint64_t h) { return h + 1 == t->size ? 0 : h + 1; }

/* how far slot h lies past home (cyclically) */
static inline uint64_t dist(const sc_once *t, uint64_t h, uint64_t home)
{
    return h >= home ? h - home : h + t->size - home;
}

/* the distance of the entry in slot h from its home */
static inline uint64_t dist_at(const sc_once *t, uint64_t h)
{
    return dist(t, h, home_of(t->size, mixed_of(&t->ent[h])));
}

void sc_once_free(sc_once *t)
{
    free(t->ent);
    *t = (sc_once){0};
}

/* Robin Hood order: along a probe run an entry never lies nearer its home than the one before it lies to
 * its own, less one (an insertion passes over the entries as far from home as it is, or farther, and takes
 * the place of the first one nearer, which moves on; a deletion shifts the run's later entries back). So a
 * key is absent as soon as the probe meets an empty slot or an entry nearer its home than the probe is to
 * the key's: a miss (most takes: the step's rows new to it) looks at a few slots even 9/10 full. */

/* the slot holding the mixed key mx (halves lo, hi); or, when absent (*found 0), the slot where it belongs
 * (size > 0) */
static uint64_t probe(const sc_once *t, uint64_t mx, uint32_t lo, uint32_t hi, int *found)
{
    uint64_t h = home_of(t->size, mx);
    for (uint64_t d = 0;; d++, h = nxt(t, h)) {
        const sc_once_ent *e = &t->ent[h];
        if (e->off == SC_ONCE_NONE || (e->mlo == lo && e->mhi == hi)) {
            *found = e->off != SC_ONCE_NONE;
            return h;
        }
        if (dist_at(t, h) < d) {
            *found = 0;
            return h;
        }
    }
}

/* put e (not in the table) into slot h, where it belongs at distance d from its home; the entries it
 * displaces move on in Robin Hood order (a free slot exists) */
static void place(sc_once *t, uint64_t h, uint64_t d, sc_once_ent e)
{
    for (;; h = nxt(t, h), d++) {
        if (t->ent[h].off == SC_ONCE_NONE) {
            t->ent[h] = e;
            return;
        }
        uint64_t dh = dist_at(t, h);
        if (dh < d) {
            sc_once_ent x = t->ent[h];
            t->ent[h] = e;
            e = x;
            d = dh;
        }
    }
}

static int grow(sc_once *t)
{
    uint64_t size = t->size ? t->size + t->size / 4 : ONCE_MIN_SLOTS;
    sc_once_ent *e = malloc(size * sizeof(*e));
    if (!e)
        return SC_ENOMEM;
    for (uint64_t i = 0; i < size; i++)
        e[i].off = SC_ONCE_NONE;
    sc_once old = *t;
    t->ent = e;
    t->size = size;
    t->sweep = 0;
    for (uint64_t i = 0; i < old.size; i++)
        if (old.ent[i].off != SC_ONCE_NONE)
            place(t, home_of(size, mixed_of(&old.ent[i])), 0, old.ent[i]);
    free(old.ent);
    return SC_OK;
}

int sc_once_put(sc_once *t, int64_t key, int32_t off)
{
    if (off <= ONCE_DEAD)
        return SC_EARG;
    if ((uint64_t)(t->n + 1) * ONCE_LOAD_DEN > t->size * ONCE_LOAD_NUM && grow(t) != SC_OK)
        return SC_ENOMEM;
    uint64_t mx = mix64((uint64_t)key);
    uint32_t lo = (uint32_t)mx, hi = (uint32_t)(mx >> 32);
    int found;
    uint64_t h = probe(t, mx, lo, hi, &found);
    if (found) {
        t->ent[h].off = off;
        return SC_OK;
    }
    place(t, h, dist(t, h, home_of(t->size, mx)), (sc_once_ent){lo, hi, off});
    t->n++;
    return SC_OK;
}

/* empty slot i, shifting the later entries of its probe run (those not at their home) back by one */
static void del_at(sc_once *t, uint64_t i)
{
    for (uint64_t j = nxt(t, i); t->ent[j].off != SC_ONCE_NONE && dist_at(t, j) > 0; j = nxt(t, j)) {
        t->ent[i] = t->ent[j];
        i = j;
    }
    t->ent[i].off = SC_ONCE_NONE;
    t->n--;
}

int32_t sc_once_take(sc_once *t, int64_t key)
{
    if (!t->n)
        return SC_ONCE_NONE;
    int found;
    uint64_t mx = mix64((uint64_t)key);
    uint64_t h = probe(t, mx, (uint32_t)mx, (uint32_t)(mx >> 32), &found);
    if (!found)
        return SC_ONCE_NONE;
    int32_t off = t->ent[h].off;
    del_at(t, h);
    return off;
}

/* remove the entries below min_off among the next `budget` slots from the cursor (a slot whose entry
 * goes is looked at again: a later entry may have moved into it); how many went */
static int64_t sweep(sc_once *t, int64_t min_off, int64_t budget)
{
    int64_t gone = 0;
    uint64_t i = t->sweep;
    /* an entry goes when SC_ONCE_NONE < off < min_off: one unsigned comparison */
    uint32_t below = (uint32_t)(min_off - (int64_t)SC_ONCE_NONE - 1);
    for (int64_t k = 0; k < budget; k++) {
        if ((uint32_t)((int64_t)t->ent[i].off - (int64_t)SC_ONCE_NONE - 1) < below) {
            del_at(t, i);
            gone++;
            if (!t->n)
                break;
            continue;
        }
        i = nxt(t, i);
    }
    t->sweep = i;
    return gone;
}

int64_t sc_once_expire(sc_once *t, int64_t min_off, int64_t budget)
{
    if (!t->n || min_off <= ONCE_DEAD)
        return 0;
    if (min_off > (int64_t)INT32_MAX + 1)
        min_off = (int64_t)INT32_MAX + 1; /* every offset is below: all go */
    return sweep(t, min_off, budget);
}

int64_t sc_once_shift(sc_once *t, int64_t delta)
{
    if (!t->n || delta == 0)
        return 0;
    int64_t dead = 0;
    for (uint64_t i = 0; i < t->size; i++) {
        if (t->ent[i].off == SC_ONCE_NONE)
            continue;
        int64_t off = (int64_t)t->ent[i].off - delta;
        if (off <= ONCE_DEAD || off > INT32_MAX) {
            t->ent[i].off = ONCE_DEAD;
            dead++;
        } else {
            t->ent[i].off = (int32_t)off;
        }
    }
    if (!dead)
        return 0;
    /* one whole turn removing the marks (a removal looks at its slot again, so none is missed) */
    t->sweep = 0;
    return sweep(t, ONCE_DEAD + 1, (int64_t)t->size + dead);
}

int64_t sc_once_bytes(const sc_once *t) { return (int64_t)(t->size * sizeof(sc_once_ent)); }
