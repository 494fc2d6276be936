/* Caching policies: LRU, LFU, S3-FIFO and Belady OPT (demand and bypass). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define P31 ((int64_t)0x7fffffff)

int sc_cache_init(sc_policy *p)
{
    int rc = SC_OK;
    p->lists[0] = p->lists[1] = (sc_list){-1, -1, 0};
    rc |= sc_register(p, &p->prv, 4, 0xff);
    rc |= sc_register(p, &p->nxt, 4, 0xff);
    rc |= sc_register(p, &p->qid, 1, SC_NOLIST);
    if (p->kind == K_LFU || p->kind == K_OPT || p->kind == K_OPT_BYPASS) {
        rc |= sc_register(p, &p->hpos, 4, 0xff);
        rc |= sc_register(p, &p->hkey, 8, 0);
    }
    if (p->kind == K_LFU)
        rc |= sc_register(p, &p->count, 8, 0);
    if (p->kind == K_S3FIFO) {
        rc |= sc_register(p, &p->freq, 1, 0);
        rc |= sc_register(p, &p->ghost, 8, 0);
        p->small_cap = p->capacity / 10 > 0 ? p->capacity / 10 : 1;
        p->ghost_cap = p->capacity - p->small_cap > 0 ? p->capacity - p->small_cap : 1;
    }
    return rc;
}

int sc_cache_holds(const sc_policy *p, int32_t id)
{
    /* S3-FIFO: in the ghost (as sc_cache_insert reads it); LRU, Bingo: nothing once out */
    return p->kind == K_S3FIFO && p->ghost[id] > 0 && p->gseq - p->ghost[id] < p->ghost_cap;
}

/* S3-FIFO: the ring that says which id leaves the ghost as each new one enters it */
int sc_cache_set_release(sc_policy *p)
{
    if (p->kind != K_S3FIFO || p->gring)
        return SC_OK;
    p->gring = malloc((size_t)p->ghost_cap * sizeof(int32_t));
    if (!p->gring)
        return SC_ENOMEM;
    memset(p->gring, 0xff, (size_t)p->ghost_cap * sizeof(int32_t));
    return SC_OK;
}

void sc_cache_forget(sc_policy *p, int32_t id)
{
    sc_list_remove(p, id);
    if (p->hpos)
        sc_heap_remove(p, id);
}

static inline int64_t lfu_key(sc_policy *p, int32_t id)
{
    int64_t t = p->stamp < ((int64_t)1 << 36) ? p->stamp : ((int64_t)1 << 36) - 1;
    return (p->count[id] << 36) | t;
}

/* S3-FIFO (Yang et al., SOSP'23): small FIFO S (10%), main FIFO M with reinsertion, ghost of S. */
static int32_t s3fifo_victim(sc_policy *p)
{
    for (;;) {
        sc_list *S = &p->lists[0], *M = &p->lists[1];
        if (S->size > 0 && (S->size >= p->small_cap || M->size == 0)) {
            int32_t t = S->tail;
            sc_list_remove(p, t);
            if (p->freq[t] > 0) { /* read again while in S: promote */
                p->freq[t] = 0;
                sc_list_push_head(p, 1, t);
                continue;
            }
            p->ghost[t] = ++p->gseq;
            if (p->release) {
                /* the id given sequence gseq - ghost_cap leaves the ghost now */
                int32_t *slot = &p->gring[p->gseq % p->ghost_cap];
                if (*slot >= 0 && sc_maybe_free(p, *slot) != SC_OK)
                    return -1;
                *slot = t;
            }
            return t;
        }
        int32_t t = M->tail;
        sc_list_remove(p, t);
        if (p->freq[t] > 0) {
            p->freq[t]--;
            sc_list_push_head(p, 1, t);
            continue;
        }
        return t;
    }
}

/* pick and unlink the victim of a demand policy (or of the LRU under a prefetcher) */
int32_t sc_cache_victim(sc_policy *p)
{
    int32_t v;
    switch (p->kind) {
    case K_LFU:
        v = sc_heap_pop(p);
        break;
    case K_S3FIFO:
        v = s3fifo_victim(p);
        break;
    default:
        v = p->lists[0].tail;
        sc_list_remove(p, v);
    }
    return v;
}

int sc_cache_touch(sc_policy *p, int32_t id)
{
    switch (p->kind) {
    case K_LFU:
        p->count[id]++;
        sc_heap_update(p, id, lfu_key(p, id));
        break;
    case K_S3FIFO:
        if (p->freq[id] < 3)
            p->freq[id]++;
        break;
    default:
        sc_list_remove(p, id);
        sc_list_push_head(p, 0, id);
    }
    return SC_OK;
}

/* bring id in (evicting as needed) */
int sc_cache_insert(sc_policy *p, int32_t id, int prefetch)
{
    int rc;
    while (p->n_res >= p->capacity) {
        int32_t v = sc_cache_victim(p);
        if (v < 0)
            return SC_ENOMEM;
        rc = sc_base_evict(p, v);
        if (rc != SC_OK)
            return rc;
    }
    switch (p->kind) {
    case K_LFU:
        p->count[id]++;
        rc = sc_heap_push(p, id, lfu_key(p, id));
        if (rc != SC_OK)
            return rc;
        break;
    case K_S3FIFO: {
        int64_t g = p->ghost[id];
        p->freq[id] = 0;
        p->ghost[id] = 0;
        sc_list_push_head(p, (g > 0 && p->gseq - g < p->ghost_cap) ? 1 : 0, id);
        break;
    }
    default:
        sc_list_push_head(p, 0, id);
    }
    return sc_base_insert(p, id, prefetch);
}

int sc_cache_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n)
{
    (void)hit;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        int rc = p->res[id] ? sc_cache_touch(p, id) : sc_cache_insert(p, id, 0);
        if (rc != SC_OK)
            return rc;
    }
    return SC_OK;
}

/* ---- Belady OPT ----
 * Eviction priority of a resident row: next use (farther first), then use after next (nearer first).
 * The heap is a min-heap, so the key is the negated priority. */
static inline int64_t opt_key(int64_t prio) { return -prio; }

int sc_opt_set_future(sc_policy *p, const int32_t *ids, const int64_t *offsets, int64_t n_steps)
{
    if (n_steps < 0 || n_steps >= P31)
        return SC_EARG;
    int64_t base = offsets[0], n = offsets[n_steps] - base, nids = sc_idmap_size(p->map);
    size_t nn = (size_t)(n > 0 ? n : 1);
    free(p->fut_ids);
    free(p->fut_off);
    free(p->prio);
    p->fut_ids = malloc(nn * sizeof(int32_t));
    p->fut_off = malloc((size_t)(n_steps + 1) * sizeof(int64_t));
    p->prio = malloc(nn * sizeof(int64_t));
    int64_t *lastocc = malloc((size_t)(nids > 0 ? nids : 1) * sizeof(int64_t));
    int32_t *use = malloc(nn * sizeof(int32_t));
    int32_t *stp = malloc(nn * sizeof(int32_t));
    int rc = SC_OK;
    if (!p->fut_ids || !p->fut_off || !p->prio || !lastocc || !use || !stp) {
        rc = SC_ENOMEM;
        goto out;
    }
    memcpy(p->fut_ids, ids + base, (size_t)n * sizeof(int32_t));
    for (int64_t s = 0; s <= n_steps; s++)
        p->fut_off[s] = offsets[s] - base;
    memset(lastocc, 0xff, (size_t)nids * sizeof(int64_t));
    for (int64_t s = n_steps - 1; s >= 0; s--) {
        for (int64_t j = p->fut_off[s + 1] - 1; j >= p->fut_off[s]; j--) {
            int32_t id = p->fut_ids[j];
            if (id < 0 || id >= nids) {
                rc = SC_EBADID;
                goto out;
            }
            int64_t nx = lastocc[id];
            int64_t u = nx >= 0 ? stp[nx] : P31;
            int64_t after = nx >= 0 ? use[nx] : P31;
            stp[j] = (int32_t)s;
            use[j] = (int32_t)u;
            p->prio[j] = (u << 31) | (P31 - after);
            lastocc[id] = j;
        }
    }
    p->fut_steps = n_steps;
    p->cursor = 0;
out:
    free(lastocc);
    free(use);
    free(stp);
    return rc;
}

int sc_opt_step(sc_policy *p, const int32_t *ids, int64_t n)
{
    if (!p->fut_off || p->cursor >= p->fut_steps)
        return SC_EFUTURE;
    int64_t lo = p->fut_off[p->cursor], hi = p->fut_off[p->cursor + 1];
    if (hi - lo != n || memcmp(ids, p->fut_ids + lo, (size_t)n * sizeof(int32_t)) != 0)
        return SC_EFUTURE;
    p->cursor++;
    int rc;
    p->trig.n = 0; /* indices of the missed rows */
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (p->res[id])
            sc_heap_update(p, id, opt_key(p->prio[lo + i]));
        else if ((rc = sc_vec_push(&p->trig, (int32_t)i)) != SC_OK)
            return rc;
    }
    int64_t n_missed = p->trig.n;
    for (int64_t k = 0; k < n_missed; k++) {
        int64_t i = p->trig.v[k];
        int32_t id = ids[i];
        /* demand: the missed row comes in, evicting the farthest next use among the others
         * (which may be a row admitted earlier in this step: then neither is fetched) */
        if (p->kind == K_OPT && p->n_res >= p->capacity)
            if ((rc = sc_base_evict(p, sc_heap_pop(p))) != SC_OK)
                return rc;
        if ((rc = sc_heap_push(p, id, opt_key(p->prio[lo + i]))) != SC_OK)
            return rc;
        if ((rc = sc_base_insert(p, id, 0)) != SC_OK)
            return rc;
    }
    while (p->n_res > p->capacity)
        if ((rc = sc_base_evict(p, sc_heap_pop(p))) != SC_OK)
            return rc;
    return SC_OK;
}
