/* The policy object: creation, per-id arrays, the net decision of a step, lists and the heap. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int sc_vec_push(sc_vec *v, int32_t x)
{
    if (v->n == v->cap) {
        int64_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *nv = realloc(v->v, (size_t)nc * sizeof(int32_t));
        if (!nv)
            return SC_ENOMEM;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = x;
    return SC_OK;
}

int sc_register(sc_policy *p, void *ptr, size_t elem, int fill)
{
    if (p->n_arrays == SC_MAX_ARRAYS)
        return SC_EARG;
    p->arrays[p->n_arrays++] = (sc_array){(void **)ptr, elem, fill};
    return SC_OK;
}

/* make every per-id array hold at least `need` ids */
int sc_grow(sc_policy *p, int64_t need)
{
    if (need <= p->n_alloc)
        return SC_OK;
    int64_t n = p->n_alloc ? p->n_alloc : 1024;
    while (n < need)
        n *= 2;
    for (int i = 0; i < p->n_arrays; i++) {
        sc_array *a = &p->arrays[i];
        void *nv = realloc(*a->ptr, (size_t)n * a->elem);
        if (!nv)
            return SC_ENOMEM;
        memset((char *)nv + (size_t)p->n_alloc * a->elem, a->fill, (size_t)(n - p->n_alloc) * a->elem);
        *a->ptr = nv;
    }
    p->n_alloc = n;
    return SC_OK;
}

sc_policy *sc_policy_new(const char *kind, sc_idmap *map, int64_t capacity, const sc_params *params)
{
    static const struct {
        const char *name;
        enum sc_kind kind;
    } kinds[] = {{"lru", K_LRU},         {"lfu", K_LFU},   {"s3fifo", K_S3FIFO},
                 {"opt", K_OPT},         {"opt-bypass", K_OPT_BYPASS},
                 {"stms", K_STMS},       {"domino", K_DOMINO}, {"bingo", K_BINGO}};
    if (!kind || !map || capacity < 1 || !params)
        return NULL;
    int found = -1;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcmp(kinds[i].name, kind) == 0)
            found = (int)i;
    if (found < 0)
        return NULL;
    sc_policy *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->kind = kinds[found].kind;
    p->map = map;
    p->capacity = capacity;
    p->prm = *params;
    p->prev_trig = -1;
    int rc = SC_OK;
    rc |= sc_register(p, &p->res, 1, 0);
    rc |= sc_register(p, &p->mk, 1, 0);
    if (rc == SC_OK)
        rc = sc_cache_init(p);
    if (rc == SC_OK && (p->kind == K_STMS || p->kind == K_DOMINO || p->kind == K_BINGO))
        rc = sc_prefetch_init(p);
    if (rc == SC_OK)
        rc = sc_grow(p, sc_idmap_size(map) > 0 ? sc_idmap_size(map) : 1024);
    if (rc != SC_OK) {
        sc_policy_free(p);
        return NULL;
    }
    return p;
}

void sc_policy_free(sc_policy *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_arrays; i++)
        free(*p->arrays[i].ptr);
    free(p->ev.v);
    free(p->ad.v);
    free(p->pf.v);
    free(p->freed.v);
    free(p->marked.v);
    free(p->gring);
    free(p->heap);
    free(p->fut_ids);
    free(p->fut_off);
    free(p->prio);
    sc_prefetch_free(p);
    free(p);
}

/* set mark m of id for this step (its first mark lists it, so the next step clears them) */
static int mark(sc_policy *p, int32_t id, uint8_t m)
{
    if (!p->mk[id] && sc_vec_push(&p->marked, id) != SC_OK)
        return SC_ENOMEM;
    p->mk[id] |= m;
    return SC_OK;
}

int sc_base_insert(sc_policy *p, int32_t id, int prefetch)
{
    p->res[id] = 1;
    p->n_res++;
    int rc = mark(p, id, SC_MK_INS);
    return rc != SC_OK ? rc : sc_vec_push(prefetch ? &p->pf : &p->ad, id);
}

int sc_base_evict(sc_policy *p, int32_t id)
{
    p->res[id] = 0;
    p->n_res--;
    int rc = sc_maybe_free(p, id);
    if (rc != SC_OK)
        return rc;
    if (p->mk[id] & SC_MK_INS)
        return SC_OK; /* inserted in this very step: the insertion is dropped instead */
    rc = mark(p, id, SC_MK_EV);
    return rc != SC_OK ? rc : sc_vec_push(&p->ev, id);
}

/* net decision: evictions of rows resident at the start that stay out; insertions that stay in */
static void finish_step(sc_policy *p)
{
    int64_t k = 0;
    for (int64_t i = 0; i < p->ev.n; i++) {
        int32_t id = p->ev.v[i];
        if (!p->res[id])
            p->ev.v[k++] = id;
    }
    p->ev.n = k;
    sc_vec *ins[2] = {&p->ad, &p->pf};
    for (int j = 0; j < 2; j++) {
        sc_vec *v = ins[j];
        k = 0;
        for (int64_t i = 0; i < v->n; i++) {
            int32_t id = v->v[i];
            if (p->res[id] && !(p->mk[id] & (SC_MK_EV | SC_MK_OUT))) {
                p->mk[id] |= SC_MK_OUT; /* listed already: inserted in this step */
                v->v[k++] = id;
            }
        }
        v->n = k;
    }
    p->dec = (sc_decision){p->ev.v, p->ad.v, p->pf.v, p->ev.n, p->ad.n, p->pf.n};
}

int sc_policy_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n)
{
    int rc = sc_grow(p, sc_idmap_size(p->map));
    if (rc != SC_OK)
        return rc;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= sc_idmap_size(p->map))
            return SC_EBADID;
    p->stamp++;
    for (int64_t i = 0; i < p->marked.n; i++) /* the last step's marks (and any set between steps) go */
        p->mk[p->marked.v[i]] = 0;
    p->marked.n = 0;
    p->ev.n = p->ad.n = p->pf.n = 0;
    switch (p->kind) {
    case K_OPT:
    case K_OPT_BYPASS:
        rc = sc_opt_step(p, ids, n);
        break;
    case K_STMS:
    case K_DOMINO:
    case K_BINGO:
        rc = sc_prefetch_step(p, ids, hit, n);
        break;
    default:
        rc = sc_cache_step(p, ids, hit, n);
    }
    if (rc != SC_OK)
        return rc;
    finish_step(p);
    return SC_OK;
}

const sc_decision *sc_policy_decision(const sc_policy *p) { return &p->dec; }

int64_t sc_policy_resident(const sc_policy *p) { return p->n_res; }

int sc_policy_rejected(sc_policy *p, const int32_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= p->n_alloc)
            return SC_EBADID;
        if (!p->res[id])
            continue;
        sc_cache_forget(p, id);
        p->res[id] = 0;
        p->n_res--;
        if (p->pfd)
            p->pfd[id] = 0;
        int rc = sc_maybe_free(p, id);
        if (rc != SC_OK)
            return rc;
    }
    return SC_OK;
}

/* ---- giving ids back ---- */

/* kinds whose state for a row not resident is bounded by design: LRU and Bingo keep none (Bingo's
 * tables are keyed by keys, not ids), S3-FIFO keeps its ghost (capacity - capacity / 10 entries) and STMS
 * its history (a ring of 4 x capacity triggers, at most 2^26). The others keep every id: LFU counts every
 * row ever seen, OPT numbers the whole future, and Domino's pair table is hashed by id, so numbering the
 * rows otherwise would change which pairs collide (and its decisions). */
static int kind_releases(enum sc_kind k)
{
    return k == K_LRU || k == K_S3FIFO || k == K_STMS || k == K_BINGO;
}

/* whether id holds any state: resident, or in a structure that outlives residency */
static int holds_state(const sc_policy *p, int32_t id)
{
    if (p->res[id])
        return 1;
    if (p->kind == K_STMS)
        return sc_prefetch_holds(p, id);
    return sc_cache_holds(p, id);
}

int sc_policy_set_release(sc_policy *p, int on)
{
    p->freed.n = 0;
    p->release = 0;
    if (!on || !kind_releases(p->kind))
        return 0;
    int rc = sc_cache_set_release(p);
    if (rc != SC_OK)
        return rc;
    p->release = 1;
    return 1;
}

int sc_policy_release(sc_policy *p)
{
    if (!p->release || !p->freed.n)
        return SC_OK;
    sc_vec *f = &p->freed;
    int64_t k = 0;
    for (int64_t i = 0; i < f->n; i++) {
        int32_t id = f->v[i];
        if (id < 0 || id >= p->n_alloc)
            return SC_EBADID;
        if (holds_state(p, id))
            continue;
        /* the id's entries as those of an id never seen: whoever gets it next starts afresh (a repeat
           of an id resets it twice, and the map skips it the second time) */
        for (int a = 0; a < p->n_arrays; a++) {
            const sc_array *arr = &p->arrays[a];
            memset((char *)*arr->ptr + (size_t)id * arr->elem, arr->fill, arr->elem);
        }
        f->v[k++] = id;
    }
    f->n = k; /* on a failure below, a retry releases what is left (the freed ones are skipped) */
    int rc = sc_idmap_release(p->map, f->v, k);
    if (rc == SC_OK)
        f->n = 0;
    return rc;
}

int64_t sc_policy_bytes(const sc_policy *p)
{
    int64_t b = (int64_t)sizeof(*p);
    for (int a = 0; a < p->n_arrays; a++)
        b += p->n_alloc * (int64_t)p->arrays[a].elem;
    const sc_vec *v[] = {&p->ev, &p->ad, &p->pf, &p->freed, &p->cand, &p->trig};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        b += v[i]->cap * (int64_t)sizeof(int32_t);
    b += p->heap_cap * (int64_t)sizeof(int32_t);
    if (p->gring)
        b += p->ghost_cap * (int64_t)sizeof(int32_t);
    if (p->fut_off) {
        int64_t n = p->fut_off[p->fut_steps];
        b += n * (int64_t)(sizeof(int32_t) + sizeof(int64_t)) + (p->fut_steps + 1) * (int64_t)sizeof(int64_t);
    }
    if (p->hist)
        b += (int64_t)(p->hmask + 1) * (int64_t)sizeof(int32_t);
    if (p->pair_key)
        b += (int64_t)(p->pmask + 1) * 2 * (int64_t)sizeof(int64_t);
    if (p->at)
        b += (int64_t)(p->at_mask + 1) * (int64_t)sizeof(sc_at_entry) +
             (int64_t)(p->pht_mask + 1) * 2 * (int64_t)sizeof(sc_pht_entry);
    return b;
}

int sc_policy_set_future(sc_policy *p, const int32_t *ids, const int64_t *offsets, int64_t n_steps)
{
    if (p->release)
        return SC_EARG; /* a future is numbered up front: its ids must never be given back */
    if (p->kind != K_OPT && p->kind != K_OPT_BYPASS)
        return SC_OK;
    int rc = sc_grow(p, sc_idmap_size(p->map));
    if (rc != SC_OK)
        return rc;
    return sc_opt_set_future(p, ids, offsets, n_steps);
}

/* ---- doubly linked lists over ids (an id is in at most one list) ---- */
void sc_list_push_head(sc_policy *p, int l, int32_t id)
{
    sc_list *L = &p->lists[l];
    p->qid[id] = (uint8_t)l;
    p->prv[id] = -1;
    p->nxt[id] = L->head;
    if (L->head >= 0)
        p->prv[L->head] = id;
    else
        L->tail = id;
    L->head = id;
    L->size++;
}

void sc_list_remove(sc_policy *p, int32_t id)
{
    if (p->qid[id] == SC_NOLIST)
        return;
    sc_list *L = &p->lists[p->qid[id]];
    int32_t a = p->prv[id], b = p->nxt[id];
    if (a >= 0)
        p->nxt[a] = b;
    else
        L->head = b;
    if (b >= 0)
        p->prv[b] = a;
    else
        L->tail = a;
    L->size--;
    p->qid[id] = SC_NOLIST;
}

/* ---- indexed binary min-heap on hkey[id] ---- */
static inline void heap_set(sc_policy *p, int64_t i, int32_t id)
{
    p->heap[i] = id;
    p->hpos[id] = (int32_t)i;
}

static void heap_up(sc_policy *p, int64_t i)
{
    int32_t id = p->heap[i];
    int64_t k = p->hkey[id];
    while (i > 0) {
        int64_t par = (i - 1) >> 1;
        int32_t pid = p->heap[par];
        if (p->hkey[pid] <= k)
            break;
        heap_set(p, i, pid);
        i = par;
    }
    heap_set(p, i, id);
}

static void heap_down(sc_policy *p, int64_t i)
{
    int32_t id = p->heap[i];
    int64_t k = p->hkey[id];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= p->heap_n)
            break;
        if (c + 1 < p->heap_n && p->hkey[p->heap[c + 1]] < p->hkey[p->heap[c]])
            c++;
        if (p->hkey[p->heap[c]] >= k)
            break;
        heap_set(p, i, p->heap[c]);
        i = c;
    }
    heap_set(p, i, id);
}

int sc_heap_push(sc_policy *p, int32_t id, int64_t key)
{
    if (p->heap_n == p->heap_cap) {
        int64_t nc = p->heap_cap ? p->heap_cap * 2 : 1024;
        int32_t *nh = realloc(p->heap, (size_t)nc * sizeof(int32_t));
        if (!nh)
            return SC_ENOMEM;
        p->heap = nh;
        p->heap_cap = nc;
    }
    p->hkey[id] = key;
    heap_set(p, p->heap_n++, id);
    heap_up(p, p->heap_n - 1);
    return SC_OK;
}

int32_t sc_heap_pop(sc_policy *p)
{
    int32_t top = p->heap[0];
    p->hpos[top] = -1;
    if (--p->heap_n > 0) {
        heap_set(p, 0, p->heap[p->heap_n]);
        heap_down(p, 0);
    }
    return top;
}

void sc_heap_remove(sc_policy *p, int32_t id)
{
    int64_t i = p->hpos[id];
    if (i < 0)
        return;
    p->hpos[id] = -1;
    if (--p->heap_n == i)
        return;
    int32_t x = p->heap[p->heap_n];
    heap_set(p, i, x);
    heap_up(p, i);
    if (p->hpos[x] == i)
        heap_down(p, i);
}

void sc_heap_update(sc_policy *p, int32_t id, int64_t key)
{
    int64_t old = p->hkey[id];
    p->hkey[id] = key;
    if (key < old)
        heap_up(p, p->hpos[id]);
    else
        heap_down(p, p->hpos[id]);
}
