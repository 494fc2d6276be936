/* The simulator's driver: the truth about residency, the counters, and the whole-trace loop. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sc_driver {
    sc_idmap *map;
    int64_t capacity;
    int64_t n_alloc, n_res;
    uint8_t *res;  /* resident */
    uint8_t *pf;   /* prefetched, unread: 1 issued while warming, 2 issued while scored */
    uint8_t *seen; /* read before (for the floor) */
    uint8_t *hit;  /* scratch for sc_driver_run */
    int64_t hit_cap;
    sc_counters c;
};

static int drv_grow(sc_driver *d, int64_t need)
{
    if (need <= d->n_alloc)
        return SC_OK;
    int64_t n = d->n_alloc ? d->n_alloc : 1024;
    while (n < need)
        n *= 2;
    uint8_t **arrs[3] = {&d->res, &d->pf, &d->seen};
    for (int i = 0; i < 3; i++) {
        uint8_t *nv = realloc(*arrs[i], (size_t)n);
        if (!nv)
            return SC_ENOMEM;
        memset(nv + d->n_alloc, 0, (size_t)(n - d->n_alloc));
        *arrs[i] = nv;
    }
    d->n_alloc = n;
    return SC_OK;
}

sc_driver *sc_driver_new(sc_idmap *map, int64_t capacity)
{
    if (!map || capacity < 1)
        return NULL;
    sc_driver *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->map = map;
    d->capacity = capacity;
    if (drv_grow(d, sc_idmap_size(map) > 0 ? sc_idmap_size(map) : 1024) != SC_OK) {
        sc_driver_free(d);
        return NULL;
    }
    return d;
}

void sc_driver_free(sc_driver *d)
{
    if (!d)
        return;
    free(d->res);
    free(d->pf);
    free(d->seen);
    free(d->hit);
    free(d);
}

const sc_counters *sc_driver_counters(const sc_driver *d) { return &d->c; }

int64_t sc_driver_resident(const sc_driver *d) { return d->n_res; }

int sc_driver_observe(sc_driver *d, const int32_t *ids, int64_t n, uint8_t *hit, int scored)
{
    int64_t nids = sc_idmap_size(d->map);
    int rc = drv_grow(d, nids);
    if (rc != SC_OK)
        return rc;
    int64_t unseen = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= nids)
            return SC_EBADID;
        uint8_t h = d->res[id];
        hit[i] = h;
        if (scored) {
            d->c.lookups++;
            if (h)
                d->c.hits++;
            else
                d->c.on_demand++;
            if (!d->seen[id]) {
                d->c.floor++;
                unseen++;
            }
        }
        d->seen[id] = 1;
        if (h && d->pf[id]) {
            if (scored && d->pf[id] == 2)
                d->c.prefetch_useful++;
            d->pf[id] = 0;
        }
    }
    if (scored) {
        d->c.steps++;
        /* no policy serves a row never seen before, nor more rows than the tier holds */
        int64_t over = n - d->capacity;
        d->c.bound += unseen > over ? unseen : over;
    }
    return SC_OK;
}

int sc_driver_apply(sc_driver *d, const sc_decision *dec, int scored)
{
    int64_t nids = sc_idmap_size(d->map);
    int rc = drv_grow(d, nids);
    if (rc != SC_OK)
        return rc;
    for (int64_t i = 0; i < dec->n_evict; i++) {
        int32_t id = dec->evict[i];
        if (id < 0 || id >= nids)
            return SC_EBADID;
        if (d->res[id]) {
            d->res[id] = 0;
            d->pf[id] = 0;
            d->n_res--;
        }
    }
    for (int64_t i = 0; i < dec->n_admit; i++) {
        int32_t id = dec->admit[i];
        if (id < 0 || id >= nids)
            return SC_EBADID;
        if (!d->res[id]) {
            d->res[id] = 1;
            d->n_res++;
        }
    }
    for (int64_t i = 0; i < dec->n_prefetch; i++) {
        int32_t id = dec->prefetch[i];
        if (id < 0 || id >= nids)
            return SC_EBADID;
        if (!d->res[id]) {
            d->res[id] = 1;
            d->pf[id] = scored ? 2 : 1;
            d->n_res++;
            if (scored)
                d->c.prefetch_issued++;
        }
    }
    return d->n_res > d->capacity ? SC_EOVERFLOW : SC_OK;
}

int sc_driver_run(sc_driver *d, sc_policy *p, const int32_t *ids, const int64_t *offsets,
                  int64_t n_steps, int scored, uint8_t *miss)
{
    int64_t base = offsets[0];
    for (int64_t s = 0; s < n_steps; s++) {
        int64_t lo = offsets[s], n = offsets[s + 1] - lo;
        if (n > d->hit_cap) {
            int64_t nc = n > 1024 ? n : 1024;
            uint8_t *nh = realloc(d->hit, (size_t)nc);
            if (!nh)
                return SC_ENOMEM;
            d->hit = nh;
            d->hit_cap = nc;
        }
        int rc = sc_driver_observe(d, ids + lo, n, d->hit, scored);
        if (rc != SC_OK)
            return rc;
        if (miss)
            for (int64_t i = 0; i < n; i++)
                miss[lo - base + i] = !d->hit[i];
        if ((rc = sc_policy_step(p, ids + lo, d->hit, n)) != SC_OK)
            return rc;
        if ((rc = sc_driver_apply(d, sc_policy_decision(p), scored)) != SC_OK)
            return rc;
    }
    return SC_OK;
}
