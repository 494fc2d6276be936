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
    if (p->release)
        return SC_EARG; /* it would free ids the trace's numbering still holds */
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

/* ---- lookahead ----
 * The rules are recmgd/sim/lookahead.py's (LookaheadDriver), for a policy that names no victims of its
 * own: residency FREE / OWNED (the policy's) / HELD (fetched ahead, or an announced row whose eviction
 * was refused); victims are OWNED rows, least recently read or filled first, never pinned (announced
 * for a step still to run) nor read in the current step. d->res holds the state, d->pf the policy's
 * unread prefetches; the rest lives in this struct for one run. */
enum { LA_FREE = 0, LA_OWNED = 1, LA_HELD = 2 };

typedef struct {
    int64_t n;          /* ids the arrays cover */
    uint8_t *la;        /* fetched ahead, unread: 1 warming, 2 scored */
    int32_t *pins;      /* steps of the window announcing the id */
    int32_t *prv, *nxt; /* recency list of resident ids (head: most recent) */
    uint8_t *inl;       /* in the list */
    int64_t *mark;      /* dedupe stamps */
    int64_t *instep;    /* the step that last read the id */
    int32_t head, tail;
    int64_t token;
    int32_t *held; /* ids made HELD (some stale) */
    int64_t n_held, cap_held;
    int32_t *ann, *taken, *rej; /* scratch: the window, victims taken, rejected ids */
    int64_t cap_ann, n_taken, cap_taken, n_rej, cap_rej;
    uint8_t *phit; /* the policy's view of a step: owned */
    int64_t cap_phit;
} la_state;

static void la_free(la_state *s)
{
    free(s->la);
    free(s->pins);
    free(s->prv);
    free(s->nxt);
    free(s->inl);
    free(s->mark);
    free(s->instep);
    free(s->held);
    free(s->ann);
    free(s->taken);
    free(s->rej);
    free(s->phit);
}

static int grow_buf(void **buf, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap)
        return SC_OK;
    int64_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    void *nv = realloc(*buf, (size_t)n * elem);
    if (!nv)
        return SC_ENOMEM;
    *buf = nv;
    *cap = n;
    return SC_OK;
}

static int la_grow(la_state *s, sc_driver *d, int64_t need)
{
    int rc = drv_grow(d, need);
    if (rc != SC_OK || need <= s->n)
        return rc;
    int64_t n = s->n ? s->n : 1024;
    while (n < need)
        n *= 2;
    struct {
        void **p;
        size_t elem;
        int fill;
    } arrs[] = {{(void **)&s->la, 1, 0},       {(void **)&s->pins, 4, 0}, {(void **)&s->prv, 4, 0xff},
                {(void **)&s->nxt, 4, 0xff},   {(void **)&s->inl, 1, 0},  {(void **)&s->mark, 8, 0},
                {(void **)&s->instep, 8, 0xff}};
    for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++) {
        void *nv = realloc(*arrs[i].p, (size_t)n * arrs[i].elem);
        if (!nv)
            return SC_ENOMEM;
        memset((char *)nv + (size_t)s->n * arrs[i].elem, arrs[i].fill, (size_t)(n - s->n) * arrs[i].elem);
        *arrs[i].p = nv;
    }
    s->n = n;
    return SC_OK;
}

static void lst_remove(la_state *s, int32_t id)
{
    if (!s->inl[id])
        return;
    int32_t a = s->prv[id], b = s->nxt[id];
    if (a >= 0)
        s->nxt[a] = b;
    else
        s->head = b;
    if (b >= 0)
        s->prv[b] = a;
    else
        s->tail = a;
    s->inl[id] = 0;
}

static void lst_touch(la_state *s, int32_t id)
{
    lst_remove(s, id);
    s->prv[id] = -1;
    s->nxt[id] = s->head;
    if (s->head >= 0)
        s->prv[s->head] = id;
    else
        s->tail = id;
    s->head = id;
    s->inl[id] = 1;
}

static void la_release(sc_driver *d, la_state *s, int32_t id)
{
    d->res[id] = LA_FREE;
    d->pf[id] = 0;
    s->la[id] = 0;
    d->n_res--;
    lst_remove(s, id);
}

/* room for one insertion: a victim when the tier is full; 0 when none may go */
static int la_room(sc_driver *d, la_state *s, int64_t step, int *rc)
{
    if (d->n_res < d->capacity)
        return 1;
    for (int32_t v = s->tail; v >= 0; v = s->prv[v]) {
        if (d->res[v] != LA_OWNED || s->pins[v] > 0 || s->instep[v] == step)
            continue;
        la_release(d, s, v);
        if ((*rc = grow_buf((void **)&s->taken, &s->cap_taken, s->n_taken + 1, 4)) != SC_OK)
            return 0;
        s->taken[s->n_taken++] = v;
        return 1;
    }
    return 0;
}

static int la_reject(la_state *s, int32_t id)
{
    int rc = grow_buf((void **)&s->rej, &s->cap_rej, s->n_rej + 1, 4);
    if (rc == SC_OK)
        s->rej[s->n_rej++] = id;
    return rc;
}

static int la_held(la_state *s, int32_t id)
{
    int rc = grow_buf((void **)&s->held, &s->cap_held, s->n_held + 1, 4);
    if (rc == SC_OK)
        s->held[s->n_held++] = id;
    return rc;
}

static void la_pin(la_state *s, const int32_t *ids, const int64_t *offsets, int64_t step, int32_t delta)
{
    for (int64_t i = offsets[step]; i < offsets[step + 1]; i++)
        s->pins[ids[i]] += delta;
}

/* one step's decision (module doc of recmgd/sim/lookahead.py, _apply) */
/* The policy's admissions (prefetch = 0) or prefetches (prefetch = 1) of one step, each distinct id once:
 * a held row becomes the policy's own; a free row is inserted while there is room (a victim may go) and,
 * for prefetches, while *left (-1: no limit) allows; the others are refused. */
static int la_take(sc_driver *d, la_state *s, const int32_t *ids, int64_t n, int64_t nids, int64_t step,
                   int prefetch, int scored, int64_t *left)
{
    const int64_t tok = ++s->token;
    int rc = SC_OK;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= nids)
            return SC_EBADID;
        if (s->mark[id] == tok)
            continue;
        s->mark[id] = tok;
        if (d->res[id] == LA_OWNED)
            continue;
        if (d->res[id] == LA_HELD) {
            d->res[id] = LA_OWNED;
            continue;
        }
        if ((prefetch && *left == 0) || !la_room(d, s, step, &rc)) {
            if (rc != SC_OK || (rc = la_reject(s, id)) != SC_OK)
                return rc;
            continue;
        }
        d->res[id] = LA_OWNED;
        d->n_res++;
        lst_touch(s, id);
        if (!prefetch)
            continue;
        d->pf[id] = scored ? 2 : 1;
        if (*left > 0)
            (*left)--;
        if (scored)
            d->c.prefetch_issued++;
    }
    return SC_OK;
}

static int la_apply(sc_driver *d, sc_policy *p, la_state *s, const sc_decision *dec, int64_t n_ann,
                    int64_t lookahead, int64_t budget, int scored, int64_t step, sc_la_counters *la)
{
    int rc = SC_OK;
    int64_t nids = sc_idmap_size(d->map);
    if ((rc = la_grow(s, d, nids)) != SC_OK)
        return rc;
    s->n_taken = s->n_rej = 0;
    /* the policy's evictions; an announced row stays, held for its step */
    int64_t tok = ++s->token;
    for (int64_t i = 0; i < dec->n_evict; i++) {
        int32_t id = dec->evict[i];
        if (id < 0 || id >= nids)
            return SC_EBADID;
        if (s->mark[id] == tok || d->res[id] != LA_OWNED)
            continue;
        s->mark[id] = tok;
        if (s->pins[id] > 0) {
            d->res[id] = LA_HELD;
            if ((rc = la_held(s, id)) != SC_OK)
                return rc;
            if (scored)
                la->pin_refused++;
        } else {
            la_release(d, s, id);
        }
    }
    /* admissions */
    int64_t left = -1;
    if ((rc = la_take(d, s, dec->admit, dec->n_admit, nids, step, 0, scored, &left)) != SC_OK)
        return rc;
    if (lookahead) {
        /* rows held for steps that have run, and not taken over: released */
        int64_t k = 0;
        for (int64_t i = 0; i < s->n_held; i++) {
            int32_t id = s->held[i];
            if (d->res[id] != LA_HELD)
                continue;
            if (s->pins[id] == 0)
                la_release(d, s, id);
            else
                s->held[k++] = id;
        }
        s->n_held = k;
        /* the announced rows, nearest step first, within the budget */
        left = budget;
        for (int64_t i = 0; i < n_ann; i++) {
            int32_t id = s->ann[i];
            if (d->res[id] != LA_FREE)
                continue;
            if (left == 0 || !la_room(d, s, step, &rc)) {
                if (rc != SC_OK)
                    return rc;
                break;
            }
            d->res[id] = LA_HELD;
            s->la[id] = scored ? 2 : 1;
            d->n_res++;
            lst_touch(s, id);
            if ((rc = la_held(s, id)) != SC_OK)
                return rc;
            left--;
            if (scored)
                la->lookahead_fills++;
        }
    }
    /* the policy's prefetches, within what is left of the budget */
    if ((rc = la_take(d, s, dec->prefetch, dec->n_prefetch, nids, step, 1, scored, &left)) != SC_OK)
        return rc;
    if (s->n_taken && (rc = sc_policy_rejected(p, s->taken, s->n_taken)) != SC_OK)
        return rc;
    if (s->n_rej && (rc = sc_policy_rejected(p, s->rej, s->n_rej)) != SC_OK)
        return rc;
    return d->n_res > d->capacity ? SC_EOVERFLOW : SC_OK;
}

int sc_driver_run_lookahead(sc_driver *d, sc_policy *p, const int32_t *ids, const int64_t *offsets,
                            int64_t n_steps, int64_t split, int64_t lookahead, int64_t budget,
                            sc_la_counters *la)
{
    if (!d || !p || !ids || !offsets || !la || n_steps < 0 || lookahead < 0 || budget < 0 || p->release)
        return SC_EARG;
    la_state s;
    memset(&s, 0, sizeof(s));
    s.head = s.tail = -1;
    int rc = la_grow(&s, d, sc_idmap_size(d->map));
    for (int64_t b = 0; rc == SC_OK && b < n_steps; b++) {
        int scored = b >= split;
        int64_t lo = offsets[b], n = offsets[b + 1] - lo;
        const int32_t *st = ids + lo;
        int64_t nids = sc_idmap_size(d->map);
        if ((rc = la_grow(&s, d, nids)) != SC_OK ||
            (rc = grow_buf((void **)&s.phit, &s.cap_phit, n > 0 ? n : 1, 1)) != SC_OK)
            break;
        /* observe */
        int64_t unseen = 0;
        for (int64_t i = 0; i < n; i++) {
            int32_t id = st[i];
            if (id < 0 || id >= nids) {
                rc = SC_EBADID;
                break;
            }
            int res = d->res[id] != LA_FREE;
            if (scored) {
                d->c.lookups++;
                if (res)
                    d->c.hits++;
                else
                    d->c.on_demand++;
                if (!d->seen[id]) {
                    d->c.floor++;
                    unseen++;
                    if (res)
                        la->first_use_ahead++;
                }
                if (res && d->pf[id] == 2)
                    d->c.prefetch_useful++;
                if (res && s.la[id] == 2)
                    la->lookahead_useful++;
            }
            d->seen[id] = 1;
            if (res) {
                d->pf[id] = 0;
                s.la[id] = 0;
                lst_touch(&s, id);
            }
            s.instep[id] = b;
            s.phit[i] = d->res[id] == LA_OWNED;
        }
        if (rc != SC_OK)
            break;
        if (scored) {
            d->c.steps++;
            int64_t over = n - d->capacity;
            d->c.bound += unseen > over ? unseen : over;
        }
        /* the window moves: step b has run, step b + L is announced */
        int64_t n_ann = 0;
        if (lookahead) {
            if (b >= 1)
                la_pin(&s, ids, offsets, b, -1);
            if (b == 0) {
                for (int64_t w = 1; w <= lookahead && w < n_steps; w++)
                    la_pin(&s, ids, offsets, w, 1);
            } else if (b + lookahead < n_steps) {
                la_pin(&s, ids, offsets, b + lookahead, 1);
            }
            int64_t hi = b + lookahead < n_steps - 1 ? b + lookahead : n_steps - 1;
            int64_t tok = ++s.token;
            if (hi > b &&
                (rc = grow_buf((void **)&s.ann, &s.cap_ann, offsets[hi + 1] - offsets[b + 1], 4)) != SC_OK)
                break;
            for (int64_t i = hi > b ? offsets[b + 1] : 0; hi > b && i < offsets[hi + 1]; i++) {
                int32_t id = ids[i];
                if (s.mark[id] == tok)
                    continue;
                s.mark[id] = tok;
                s.ann[n_ann++] = id;
            }
        }
        if ((rc = sc_policy_step(p, st, s.phit, n)) != SC_OK)
            break;
        rc = la_apply(d, p, &s, sc_policy_decision(p), n_ann, lookahead, budget, scored, b, la);
    }
    la_free(&s);
    return rc;
}
