/* Prefetchers on LRU, at row granularity with the table id standing in for the PC:
 * STMS (global miss history + index: stream what followed the last occurrence of the miss),
 * Domino (the same history, indexed by the last two triggers, falling back to one) and
 * Bingo (footprints of regions of R consecutive rows of a table, keyed by the trigger event:
 * table+row first, table+offset second). A trigger is a miss or the first read of a prefetched row. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ROW_BITS 40
#define ROW_MASK ((((int64_t)1) << ROW_BITS) - 1)

static uint64_t pow2_at_least(uint64_t x, uint64_t lo, uint64_t hi)
{
    uint64_t n = lo;
    while (n < x && n < hi)
        n <<= 1;
    return n;
}

int sc_prefetch_init(sc_policy *p)
{
    int rc = SC_OK;
    if (p->prm.prefetch_budget < 0)
        return SC_EARG;
    if (p->prm.degree <= 0 || p->prm.degree > p->prm.prefetch_budget)
        p->prm.degree = p->prm.prefetch_budget;
    rc |= sc_register(p, &p->pfd, 1, 0);
    rc |= sc_register(p, &p->cand_stamp, 8, 0);
    if (p->kind == K_STMS || p->kind == K_DOMINO) {
        uint64_t h = pow2_at_least((uint64_t)p->capacity * 4, 4096, (uint64_t)1 << 26);
        p->hist = malloc(h * sizeof(int32_t));
        p->hmask = h - 1;
        rc |= sc_register(p, &p->last, 8, 0);
        if (!p->hist)
            return SC_ENOMEM;
        if (p->kind == K_DOMINO) {
            uint64_t ps = h * 2;
            p->pair_key = malloc(ps * sizeof(int64_t));
            p->pair_pos = malloc(ps * sizeof(int64_t));
            if (!p->pair_key || !p->pair_pos)
                return SC_ENOMEM;
            memset(p->pair_key, 0xff, ps * sizeof(int64_t));
            p->pmask = ps - 1;
        }
    }
    if (p->kind == K_BINGO) {
        if (p->prm.region < 1 || p->prm.region > 64)
            return SC_EARG;
        uint64_t a = pow2_at_least((uint64_t)p->capacity / 8, 256, (uint64_t)1 << 16);
        uint64_t t = pow2_at_least((uint64_t)p->capacity, 4096, (uint64_t)1 << 22);
        p->at = calloc(a, sizeof(sc_at_entry));
        p->pht_long = calloc(t, sizeof(sc_pht_entry));
        p->pht_short = calloc(t, sizeof(sc_pht_entry));
        if (!p->at || !p->pht_long || !p->pht_short)
            return SC_ENOMEM;
        p->at_mask = a - 1;
        p->pht_mask = t - 1;
    }
    return rc;
}

void sc_prefetch_free(sc_policy *p)
{
    free(p->cand.v);
    free(p->trig.v);
    free(p->hist);
    free(p->pair_key);
    free(p->pair_pos);
    free(p->at);
    free(p->pht_long);
    free(p->pht_short);
}

static inline int add_cand(sc_policy *p, int32_t id)
{
    if (p->cand.n >= p->prm.prefetch_budget || p->res[id] || p->cand_stamp[id] == p->stamp)
        return SC_OK;
    p->cand_stamp[id] = p->stamp;
    return sc_vec_push(&p->cand, id);
}

/* follow the history after position q (where the trigger last occurred) */
static int follow(sc_policy *p, int64_t q)
{
    for (int64_t k = 1; k <= p->prm.degree; k++) {
        int64_t pos = q + k;
        if (pos >= p->hpos_w || p->cand.n >= p->prm.prefetch_budget)
            break;
        int rc = add_cand(p, p->hist[(uint64_t)pos & p->hmask]);
        if (rc != SC_OK)
            return rc;
    }
    return SC_OK;
}

static inline int in_history(const sc_policy *p, int64_t q, int32_t id)
{
    return q >= 0 && q < p->hpos_w && q >= p->hpos_w - (int64_t)(p->hmask + 1) &&
           p->hist[(uint64_t)q & p->hmask] == id;
}

int sc_prefetch_holds(const sc_policy *p, int32_t id)
{
    /* STMS: its last trigger still in the history (follow() may stream it, last[] finds it) */
    return p->last && in_history(p, p->last[id] - 1, id);
}

static int temporal_trigger(sc_policy *p, int32_t id)
{
    int rc = SC_OK;
    int64_t q = -1;
    uint64_t slot = 0;
    int64_t pk = -1;
    if (p->kind == K_DOMINO && p->prev_trig >= 0) {
        pk = (int64_t)(((uint64_t)(uint32_t)p->prev_trig << 32) | (uint32_t)id);
        slot = mix64((uint64_t)pk) & p->pmask;
        if (p->pair_key[slot] == pk) {
            int64_t c = p->pair_pos[slot];
            if (in_history(p, c, id) && c > 0 &&
                p->hist[(uint64_t)(c - 1) & p->hmask] == p->prev_trig)
                q = c;
        }
    }
    if (q < 0 && in_history(p, p->last[id] - 1, id))
        q = p->last[id] - 1;
    if (q >= 0 && p->prm.prefetch_budget > 0)
        rc = follow(p, q);
    int64_t pos = p->hpos_w;
    if (p->release && pos > (int64_t)p->hmask) {
        /* the trigger written here before leaves the history: its id may go when it was its last one */
        int32_t old = p->hist[(uint64_t)pos & p->hmask];
        int frc = p->last[old] - 1 == pos - (int64_t)(p->hmask + 1) ? sc_maybe_free(p, old) : SC_OK;
        if (frc != SC_OK)
            return frc;
    }
    p->hpos_w++;
    p->hist[(uint64_t)pos & p->hmask] = id;
    p->last[id] = pos + 1;
    if (pk >= 0) {
        p->pair_key[slot] = pk;
        p->pair_pos[slot] = pos;
    }
    p->prev_trig = id;
    return rc;
}

static void bingo_commit(sc_policy *p, const sc_at_entry *e, int R)
{
    int64_t trig = e->trigger;
    int64_t short_ev = ((trig >> ROW_BITS) << 8) | ((trig & ROW_MASK) % R);
    sc_pht_entry *l = &p->pht_long[mix64((uint64_t)trig) & p->pht_mask];
    l->tag = (uint64_t)trig + 1;
    l->footprint = e->footprint;
    sc_pht_entry *s = &p->pht_short[mix64((uint64_t)short_ev ^ 0x5bd1e995ULL) & p->pht_mask];
    s->tag = (uint64_t)short_ev + 1;
    s->footprint = e->footprint;
}

static int bingo_access(sc_policy *p, int32_t id)
{
    int R = p->prm.region;
    int64_t key = sc_idmap_key_of(p->map, id);
    int64_t table = key >> ROW_BITS, row = key & ROW_MASK;
    int64_t base = row - row % R;
    int off = (int)(row % R);
    uint64_t region = ((uint64_t)table << ROW_BITS) | (uint64_t)(row / R);
    sc_at_entry *e = &p->at[mix64(region) & p->at_mask];
    if (e->tag == region + 1) {
        e->footprint |= (uint64_t)1 << off;
        return SC_OK;
    }
    if (e->tag != 0)
        bingo_commit(p, e, R);
    e->tag = region + 1;
    e->trigger = key;
    e->footprint = (uint64_t)1 << off;
    if (p->prm.prefetch_budget == 0)
        return SC_OK;
    uint64_t fp = 0;
    sc_pht_entry *l = &p->pht_long[mix64((uint64_t)key) & p->pht_mask];
    if (l->tag == (uint64_t)key + 1) {
        fp = l->footprint;
    } else {
        int64_t short_ev = (table << 8) | off;
        sc_pht_entry *s = &p->pht_short[mix64((uint64_t)short_ev ^ 0x5bd1e995ULL) & p->pht_mask];
        if (s->tag == (uint64_t)short_ev + 1)
            fp = s->footprint;
    }
    fp &= ~((uint64_t)1 << off);
    while (fp && p->cand.n < p->prm.prefetch_budget) {
        int b = __builtin_ctzll(fp);
        fp &= fp - 1;
        int32_t c = sc_idmap_get(p->map, (table << ROW_BITS) | (base + b));
        if (c < 0)
            return SC_ENOMEM;
        int rc = sc_grow(p, sc_idmap_size(p->map));
        if (rc == SC_OK)
            rc = add_cand(p, c);
        if (rc != SC_OK)
            return rc;
    }
    return SC_OK;
}

int sc_prefetch_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n)
{
    int rc;
    p->cand.n = 0;
    p->trig.n = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        int was_prefetched = p->pfd[id];
        p->pfd[id] = 0;
        rc = p->res[id] ? sc_cache_touch(p, id) : sc_cache_insert(p, id, 0);
        if (rc != SC_OK)
            return rc;
        if ((!hit[i] || was_prefetched) && (rc = sc_vec_push(&p->trig, id)) != SC_OK)
            return rc;
    }
    for (int64_t i = 0; i < p->trig.n; i++) {
        rc = p->kind == K_BINGO ? SC_OK : temporal_trigger(p, p->trig.v[i]);
        if (rc != SC_OK)
            return rc;
    }
    if (p->kind == K_BINGO)
        for (int64_t i = 0; i < n; i++)
            if ((rc = bingo_access(p, ids[i])) != SC_OK)
                return rc;
    for (int64_t i = 0; i < p->cand.n; i++) {
        int32_t c = p->cand.v[i];
        if (p->res[c])
            continue;
        if ((rc = sc_cache_insert(p, c, 1)) != SC_OK)
            return rc;
        p->pfd[c] = 1;
    }
    return SC_OK;
}
