/* learned: RecMG's policy step in C (see learned.h; recmgd/models/policies.py is the reference). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cachemodel.h"
#include "hazard.h"
#include "internal.h"
#include "learned.h"
#include "once.h"
#include "runs.h"

#define GOLDEN 0x9E3779B97F4A7C15ULL
#define N_CF 3 /* candidate features: log votes, min offset / depth, log trigger age */
#define NEW_BONUS 1e-4 /* a new row's keep score is raised by this (residents win exact ties) */
/* keys sampled for the plan's threshold: about 4 sqrt(residents), within these bounds. The threshold
 * is the sample's rank 2 x over x S / n + 8, so the residents that pass it are about 8 n / S more than
 * twice those needed: each costs an append and a share of the selection, each sampled key about as much
 * as a few of them, so S near 4 sqrt(n) spends least (100,000 residents: 1,264 sampled, ~630 more) */
#define LP_SAMPLE_MIN 256
#define LP_SAMPLE_MAX 4096
#define LP_AHEAD 8     /* loops over a step's rows prefetch what the row this many ahead needs */
#define LP_GONE_AHEAD 16 /* ... and over lists of scattered rows (those the sweep lets go, a plan's) */
#define LP_SWEEP_AHEAD 48 /* ... and the sweep itself, over ids in order (little work a row: further ahead) */
#define LP_ONCE_TURNS 16 /* the once table's clock turns this many times a window */
/* a plan that lists every resident of a set larger than this lets its candidate buffer go after (16 bytes
 * a resident: 16 MB at 10^6 slots, touched through; the plans between such ones write a few of them) */
#define LP_SEL_KEEP ((int64_t)1 << 16)

/* row flags */
#define F_RES 1  /* resident (the policy's view) */
#define F_SH0 2  /* in the guard's LRU shadow */
#define F_SH1 4  /* in the guard's model-order shadow */
#define F_FREE 8 /* not the step's row: its history dropped by the recency window (the id waits in the key
                  * map's free list, or is the mirror's alone in a shared map), or an id of a shared map
                  * the mirror mapped and the step never took */
#define F_PFU 16 /* prefetched by this policy, not read yet (the prefetcher's accuracy) */
/* marks within one call (set and cleared by it): read in this step or announced; a prefetch candidate;
 * listed among the past steps' rows (or, for lp_early_victims, being read) */
#define F_MREAD 32
#define F_MCAND 64
#define F_MPAST 128

#define NEW_TIE ((int64_t)1 << 62) /* a new row's tie: this + its index among the step's new rows */

/* a candidate of a plan (and of the prefetcher's and early victims' choices): its key and tie as one
 * 128-bit number, compared unsigned: (key, tie) order, lowest first */
typedef struct {
    uint64_t hi; /* the key's bits, mapped so that unsigned order is the doubles' order (cand_of) */
    uint64_t lo; /* tie: residents and prefetch candidates their id; new rows NEW_TIE + index */
} lp_cand;

static inline lp_cand cand_of(double key, int64_t tie)
{
    double k = key + 0.0; /* -0 becomes +0: keys equal as doubles get equal bits */
    uint64_t u;
    memcpy(&u, &k, sizeof(u));
    u = (u >> 63) ? ~u : u | ((uint64_t)1 << 63);
    return (lp_cand){u, (uint64_t)tie};
}

typedef struct { /* a set of resident ids with O(1) add and remove */
    int32_t *ids;
    int16_t *cl;      /* beside each id, what its keep score needs: class, stamp (st_pack), level (the */
    int32_t *st;      /* plan scans these in order, not the per-row arrays at random); the level only */
    float *lv;        /* while the keep order may be the level's (NULL otherwise: lp_policy.lv_on) */
    int64_t n, cap;
    int64_t capacity; /* slots */
    int32_t *pos;     /* the cache: per row, its index in ids */
    int32_t *pkey, *pval; /* the shadows (few rows): id -> index in ids, open addressing (-1: empty) */
    int64_t pn, pmask;
    uint8_t flag;
    int k;            /* 0: the cache, 1: the LRU shadow, 2: the model-order shadow */
} lp_set;

typedef struct {
    int32_t dim, hidden, queries, slots;
    int64_t n_model;
    const float *emb; /* borrowed: the caller's array (lp_set_prefetch_net) */
    float *f1w, *f1b, *f2w, *f2b, *tab, *c1w, *c1b, *c2w, *c2b, *p1w, *p1b, *p2w;
    float p2b, temp;
} pfnet;

struct lp_policy {
    lp_params prm;
    sc_idmap *map;
    sc_idmap *model_map;
    const cm_net *cnet;
    pfnet *pf;
    cm_lut *lut;
    double *table;
    int64_t n_classes;
    double *p_edges, *nu_edges;
    int32_t n_p, n_nu;
    int p_sorted, nu_sorted; /* the edges ascend (then counted without branches) */
    int simd; /* the plan's filter in AVX2 (lp_set_simd) */
    int lv_on; /* the sets keep levels: the keep order may be the level's (lp_set_hazard, before any
                * row is in a set, turns it off for the hazard order) */

    /* per row (indexed by the key map's id) */
    int64_t n_rows, cap_rows;
    uint8_t *flags;
    int32_t *rs;      /* its history record (>= 0; the record holds the last use), or -1: never used, or
                       * -2 - (s - rs_base): used once, at step s: such a row keeps no record, for its record
                       * is then a function of that step alone (rec_fill rebuilds it exactly); rec_of,
                       * last_of. Every once-used row's s is at least rs_base, and no offset exceeds rs_span
                       * (at most 2^29): rs_rebase moves the base, giving the rows used once before the new
                       * base their records */
    int64_t rs_base, rs_span;
    int32_t *lastpos; /* the ring slot of the row's last stream position (-1: none; stale once the slot
                       * holds another row); only with a budget to prefetch: NULL otherwise, the stream
                       * unused */
    /* the history records (the caching model's view over them: cm_* take record indices) */
    void *row_mem;
    cm_rows view;
    int64_t n_recs, cap_recs; /* records handed out so far (live and free), room */
    int32_t *free_recs;
    int64_t n_free_recs, cap_free_recs;
    cm_row tmp_row; /* a once-used row's record, rebuilt to be read */
    lp_set sets[3]; /* the cache, the LRU shadow, the model shadow */

    /* step state */
    int64_t t;
    double unit;
    int64_t seen_rows, seen_steps;
    int64_t pf_idle;
    /* the prefetcher's accuracy (feedback-directed throttling): decaying counts of its prefetches read
     * (pf_u) and of all its outcomes (pf_t), in units of 2^LP_PF_SCALE_SHIFT; the outcomes since the last
     * update; totals */
    int64_t pf_u, pf_t, pend_u, pend_x;
    int pf_throttled;
    int64_t pf_useful, pf_useless, pf_throttled_steps, pf_asked;
    double psel, psel_max;
    int guard_on, guard_shift;
    int recency_only;
    int64_t lru_misses, model_misses, lru_steps;
    int64_t stamp_only; /* uses that renewed only the row's stamp (not scored: see lp_step) */
    int64_t sweep, forgotten; /* the recency window's sweep cursor (an id); histories dropped */
    int32_t *gone;            /* scratch: the rows a sweep lets go (and a step's new rows, map_keys) */
    int64_t cap_gone;
    /* the rows used once that keep no id (once.h): with a recency window and no stream (no budget to
     * prefetch), the window's sweep moves a once-used row that is in none of the sets here; offsets from
     * rs_base. `moved`: rows moved there so far; `back`: rows whose use came back from it */
    sc_once once;
    int64_t moved, back;

    /* the stream ring: positions s_n - ring .. s_n - 1 in slots pos & s_mask (allocated with lastpos) */
    int32_t *s_ids;
    int64_t s_n, s_mask;
    sc_runs runs; /* the steps of the ring's positions (runs.h) */
    /* the last past_steps steps' ids */
    int32_t *recent;
    int64_t *recent_n; /* past_steps counts; recent holds past_steps x recent_cap */
    int64_t recent_cap, recent_head, recent_len;

    /* scratch (grown as needed) */
    int32_t *ids;
    int64_t *ids64, *tab64; /* the step's rows' record indices, and their tables */
    float *out, *p32, *feats;
    int32_t *cand, *tmp, *gids, *gat;
    float *gp;
    uint8_t *gmiss, *isnew;
    uint8_t *stale;  /* the step's rows (by place): 1 = not scored, the use renews only the stamp */
    int64_t *ids64s; /* the record indices of those rows */
    lp_cand *sel;
    double smp[LP_SAMPLE_MAX]; /* the plan's sampled keys and their places */
    int64_t pick[LP_SAMPLE_MAX];
    int64_t cap_step, cap_cand, cap_tmp, cap_sel, cap_vote, cap_minoff, cap_minage;
    int32_t *vote, *minoff;
    int32_t *hkey, *hval; /* the prefetcher's candidates: id -> place (open addressing, -1 empty) */
    int64_t hcap;
    int64_t *minage;
    int32_t *adm, *newv;
    int32_t *scl;  /* the step's rows (by place): class */
    float *slv;    /* ... and keep level */
    int32_t *ncl;  /* rows offered to a plan (parallel to its new rows): class, stamp, level; kept */
    double *nst;
    float *nlv;
    uint8_t *nkeep;
    int64_t cap_new;
    /* lookahead: the ids of the announced keys known so far (lp_announce), for the next lp_step only */
    int32_t *ann;
    int64_t n_ann, cap_ann;

    lp_decision dec;
    int64_t cap_dec;
};

/* the row's history record, or -1 (it keeps none: never used, or used once) */
static inline int32_t rec_of(const lp_policy *p, int32_t id) { return p->rs[id] >= 0 ? p->rs[id] : -1; }

/* the step of a once-used row's use from its rs value (v <= -2) */
static inline int64_t once_step(const lp_policy *p, int32_t v) { return p->rs_base + (-2 - (int64_t)v); }

/* a record's step (an offset from rs_base, the view's base), or -1 for CM_NEVER */
static inline int64_t rec_step(const lp_policy *p, int32_t s) { return s == CM_NEVER ? -1 : p->rs_base + s; }

/* the step of the row's last use (-1: none yet) */
static inline int64_t last_of(const lp_policy *p, int32_t id)
{
    int32_t v = p->rs[id];
    return v >= 0 ? rec_step(p, p->view.row[v].last) : v == -1 ? -1 : once_step(p, v);
}

/* the step of the row's first use (-1: none yet) */
static inline int64_t row_first(const lp_policy *p, int32_t id)
{
    int32_t v = p->rs[id];
    return v >= 0 ? rec_step(p, p->view.row[v].first) : v == -1 ? -1 : once_step(p, v);
}

/* ---------------------------------------------------------------------------- small helpers */
static int grow_buf(void **ptr, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap)
        return SC_OK;
    int64_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*ptr, (size_t)nc * elem);
    if (!q)
        return SC_ENOMEM;
    *ptr = q;
    *cap = nc;
    return SC_OK;
}

/* after a plan that wrote n candidates: a buffer written through over a large set goes back to the system
 * (allocated again, untouched, by the next plan that needs it) */
static void sel_release(lp_policy *p, int64_t n)
{
    if (n > LP_SEL_KEEP) {
        free(p->sel);
        p->sel = NULL;
        p->cap_sel = 0;
    }
}

/* room for cap elements (the new room left as it comes: grow_rows sets entries up as ids reach them) */
static int resize_arr(void **ptr, int64_t cap, size_t elem)
{
    void *q = realloc(*ptr, (size_t)cap * elem);
    if (!q)
        return SC_ENOMEM;
    *ptr = q;
    return SC_OK;
}

/* how many of the class edges e[0..n) lie at or below x before the first one above it (the class index
 * along that axis): when the edges ascend, that is how many lie at or below x, counted without branches */
static inline int32_t edges_passed(const double *e, int32_t n, int sorted, double x)
{
    int32_t a = 0;
    if (sorted) {
        for (int32_t i = 0; i < n; i++)
            a += e[i] <= x;
        return a;
    }
    while (a < n && e[a] <= x)
        a++;
    return a;
}

static int ascending(const double *e, int32_t n)
{
    for (int32_t i = 1; i < n; i++)
        if (!(e[i - 1] <= e[i]))
            return 0;
    return 1;
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* A stamp in a set (a step, or half a step off one for a prefetch) as half steps from rs_base, an int32:
 * exact within 2^30 steps of the base (LP_RS_SPAN is 2^29), a stamp further behind reads as that far
 * (rs_rebase shifts them with the base); st_unpack gives the very double back */
static inline int32_t st_pack(const lp_policy *p, double st)
{
    double h = (st - (double)p->rs_base) * 2.0;
    return h <= (double)INT32_MIN ? INT32_MIN : h >= (double)INT32_MAX ? INT32_MAX : (int32_t)h;
}

static inline double st_unpack(const lp_policy *p, int32_t h) { return (double)p->rs_base + (double)h * 0.5; }

/* the largest packed stamp whose stamp is at most x; INT32_MIN - 1 when there is none */
static inline int64_t st_floor(const lp_policy *p, double x)
{
    if (!(x >= st_unpack(p, INT32_MIN)))
        return (int64_t)INT32_MIN - 1; /* below every stamp (or NaN) */
    if (x >= st_unpack(p, INT32_MAX))
        return INT32_MAX;
    double h = floor((x - (double)p->rs_base) * 2.0); /* then exact, whatever the rounding */
    int64_t c = h < (double)INT32_MIN ? INT32_MIN : h > (double)INT32_MAX ? INT32_MAX : (int64_t)h;
    while (c > INT32_MIN && st_unpack(p, (int32_t)c) > x)
        c--;
    while (c < INT32_MAX && st_unpack(p, (int32_t)(c + 1)) <= x)
        c++;
    return c;
}

/* a set's level at place i (0 where the sets keep none: the keep order never reads it then) */
static inline float lv_at(const lp_set *s, int64_t i) { return s->lv ? s->lv[i] : 0.0f; }

/* what a row's keep score in set s's order reads, beside it in the set: the cache keeps the row's class,
 * stamp and level as of its last use (or prefetch); the LRU shadow its last use; the model shadow its
 * last use with the class and level of then. The rows' per-row state holds none of them (they live only
 * here, and for the step's rows in the step's scratch). */
static inline void set_vals(const lp_policy *p, const lp_set *s, int32_t id, int64_t at, int32_t cl, double st,
                            float lv)
{
    if (s->k == 0) {
        s->cl[at] = (int16_t)cl, s->st[at] = st_pack(p, st);
    } else if (s->k == 1) {
        s->cl[at] = 0, s->st[at] = st_pack(p, (double)last_of(p, id)), lv = 0.0f;
    } else {
        s->cl[at] = (int16_t)cl, s->st[at] = st_pack(p, (double)last_of(p, id));
    }
    if (s->lv)
        s->lv[at] = lv;
}

/* the shadows' place maps: linear probing, backward-shift deletion, load at most 1/2 */
static int32_t pm_get(const lp_set *s, int32_t id)
{
    uint64_t h = mix64((uint64_t)id) & (uint64_t)s->pmask;
    while (s->pkey[h] != id)
        h = (h + 1) & (uint64_t)s->pmask;
    return s->pval[h];
}

static void pm_put_new(lp_set *s, int32_t id, int32_t at)
{
    uint64_t h = mix64((uint64_t)id) & (uint64_t)s->pmask;
    while (s->pkey[h] >= 0)
        h = (h + 1) & (uint64_t)s->pmask;
    s->pkey[h] = id, s->pval[h] = at;
    s->pn++;
}

static void pm_update(lp_set *s, int32_t id, int32_t at)
{
    uint64_t h = mix64((uint64_t)id) & (uint64_t)s->pmask;
    while (s->pkey[h] != id)
        h = (h + 1) & (uint64_t)s->pmask;
    s->pval[h] = at;
}

static void pm_del(lp_set *s, int32_t id)
{
    uint64_t m = (uint64_t)s->pmask, i = mix64((uint64_t)id) & m;
    while (s->pkey[i] != id)
        i = (i + 1) & m;
    for (uint64_t j = i;;) {
        j = (j + 1) & m;
        if (s->pkey[j] < 0)
            break;
        uint64_t home = mix64((uint64_t)s->pkey[j]) & m;
        if (i <= j ? (home > i && home <= j) : (home > i || home <= j))
            continue;
        s->pkey[i] = s->pkey[j], s->pval[i] = s->pval[j];
        i = j;
    }
    s->pkey[i] = -1;
    s->pn--;
}

static int pm_reserve(lp_set *s, int64_t n)
{
    if (s->pkey && 2 * n <= s->pmask + 1)
        return SC_OK;
    int64_t size = s->pkey ? s->pmask + 1 : 64;
    while (2 * n > size)
        size *= 2;
    int32_t *k = malloc((size_t)size * sizeof(int32_t)), *v = malloc((size_t)size * sizeof(int32_t));
    if (!k || !v) {
        free(k), free(v);
        return SC_ENOMEM;
    }
    memset(k, 0xff, (size_t)size * sizeof(int32_t));
    int32_t *ok = s->pkey, *ov = s->pval;
    int64_t osize = ok ? s->pmask + 1 : 0;
    s->pkey = k, s->pval = v, s->pmask = size - 1, s->pn = 0;
    for (int64_t i = 0; i < osize; i++)
        if (ok[i] >= 0)
            pm_put_new(s, ok[i], ov[i]);
    free(ok), free(ov);
    return SC_OK;
}

static inline int32_t set_pos(const lp_set *s, int32_t id) { return s->pos ? s->pos[id] : pm_get(s, id); }

static int set_add(lp_policy *p, lp_set *s, int32_t id, int32_t cl, double st, float lv)
{
    if (p->flags[id] & s->flag)
        return SC_OK;
    if (s->n + 1 > s->cap) {
        int64_t c = s->cap;
        if (grow_buf((void **)&s->ids, &c, s->n + 1, sizeof(int32_t)) != SC_OK)
            return SC_ENOMEM;
        int16_t *cl = realloc(s->cl, (size_t)c * sizeof(int16_t));
        if (cl)
            s->cl = cl;
        int32_t *st = realloc(s->st, (size_t)c * sizeof(int32_t));
        if (st)
            s->st = st;
        float *lv = p->lv_on ? realloc(s->lv, (size_t)c * sizeof(float)) : NULL;
        if (lv)
            s->lv = lv;
        if (!cl || !st || (p->lv_on && !lv))
            return SC_ENOMEM;
        s->cap = c;
    }
    if (s->k == 0) {
        s->pos[id] = (int32_t)s->n;
    } else {
        if (pm_reserve(s, s->pn + 1) != SC_OK)
            return SC_ENOMEM;
        pm_put_new(s, id, (int32_t)s->n);
    }
    s->ids[s->n] = id;
    set_vals(p, s, id, s->n, cl, st, lv);
    s->n++;
    p->flags[id] |= s->flag;
    return SC_OK;
}

static void set_del(lp_policy *p, lp_set *s, int32_t id)
{
    if (!(p->flags[id] & s->flag))
        return;
    int32_t at = set_pos(s, id);
    int64_t e = --s->n;
    int32_t last = s->ids[e];
    s->ids[at] = last, s->cl[at] = s->cl[e], s->st[at] = s->st[e];
    if (s->lv)
        s->lv[at] = s->lv[e];
    if (s->k == 0) {
        s->pos[last] = at;
    } else {
        pm_update(s, last, at);
        pm_del(s, id);
    }
    p->flags[id] &= (uint8_t)~s->flag;
}

/* the row was used: its keep-score inputs (class cl, stamp st, level lv) beside it in every set that
 * holds it */
static inline void sets_refresh(lp_policy *p, int32_t id, int32_t cl, double st, float lv)
{
    for (int k = 0; k < 3; k++)
        if (p->flags[id] & p->sets[k].flag)
            set_vals(p, &p->sets[k], id, set_pos(&p->sets[k], id), cl, st, lv);
}

/* ---------------------------------------------------------------------------- lifecycle */
lp_policy *lp_new(const lp_params *prm)
{
    if (!prm || prm->capacity < 1 || prm->levels < 1 || prm->depth < 1 || prm->past_steps < 1 ||
        prm->guard_sample < 1 || (prm->guard_sample & (prm->guard_sample - 1)) || prm->row_bits < 1 ||
        prm->row_bits > 62 || prm->stream_ring < 2 || (prm->stream_ring & (prm->stream_ring - 1)) ||
        prm->stream_ring > ((int64_t)1 << 31) ||
        prm->prefetch_budget < 0 || prm->prefetch_probe < 1 || prm->history_window < 0 ||
        !(prm->prefetch_min_accuracy >= 0.0 && prm->prefetch_min_accuracy <= 1.0) ||
        prm->prefetch_throttled_probe < 1 ||
        (prm->history_window > 0 && prm->history_window <= prm->past_steps))
        return NULL;
    lp_policy *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->prm = *prm;
    p->map = sc_idmap_new();
    p->lut = cm_lut_new();
    p->recent_n = calloc((size_t)prm->past_steps, sizeof(int64_t));
    if (!p->map || !p->lut || !p->recent_n ||
        sc_idmap_set_load(p->map, SC_IDMAP_DAEMON_LOAD) != SC_OK) {
        lp_free(p);
        return NULL;
    }
    p->s_mask = prm->stream_ring - 1;
    p->lv_on = 1;
    p->rs_span = LP_RS_SPAN;
    p->view.n_table_slots = 1;
    static const double half_lives[CM_N_HALF_LIVES] = {4.0, 64.0, 1024.0};
    for (int k = 0; k < CM_N_HALF_LIVES; k++) /* as RowHistory._decay_rate: float32 ln 2 / half-life */
        p->view.rate[k] = (double)((float)log(2.0) / (float)half_lives[k]);
    cm_lut_set_rates(p->lut, p->view.rate);
    p->view.lut = p->lut;
    for (int k = 0; k < 3; k++)
        p->sets[k].flag = (uint8_t)(1 << k), p->sets[k].k = k;
    p->sets[0].capacity = prm->capacity;
    p->guard_shift = prm->capacity >= (int64_t)prm->guard_sample * prm->guard_min_rows
                         ? 64 - (32 - __builtin_clz((unsigned)prm->guard_sample)) + 1
                         : 64;
    int64_t scap = p->guard_shift == 64 ? prm->capacity : prm->capacity / prm->guard_sample;
    p->sets[1].capacity = p->sets[2].capacity = scap;
    p->psel_max = fmax(64.0, scap / 8.0);
    p->guard_on = prm->guard && prm->use_cache_model;
    lp_set_simd(p, 1);
    lp_set_horizon(p, prm->horizon);
    return p;
}

void lp_set_horizon(lp_policy *p, double horizon)
{
    p->prm.horizon = horizon;
    double cap = (double)(p->prm.capacity > 1 ? p->prm.capacity : 1);
    p->unit = horizon * cap / fmax(p->prm.step_len, 1.0) / (double)(p->prm.levels - 1 > 1 ? p->prm.levels - 1 : 1);
}

static void pf_free(pfnet *w)
{
    if (!w)
        return;
    float *a[] = {w->f1w, w->f1b, w->f2w, w->f2b, w->tab, w->c1w, w->c1b, w->c2w, w->c2b,
                  w->p1w, w->p1b, w->p2w}; /* not emb: borrowed */
    for (size_t i = 0; i < sizeof(a) / sizeof(a[0]); i++)
        free(a[i]);
    free(w);
}

void lp_free(lp_policy *p)
{
    if (!p)
        return;
    sc_idmap_free(p->map);
    sc_idmap_free(p->model_map);
    pf_free(p->pf);
    cm_lut_free(p->lut);
    free(p->table), free(p->p_edges), free(p->nu_edges);
    free(p->row_mem), free(p->flags), free(p->rs), free(p->lastpos), free(p->free_recs);
    for (int k = 0; k < 3; k++)
        free(p->sets[k].ids), free(p->sets[k].pos), free(p->sets[k].pkey), free(p->sets[k].pval), free(p->sets[k].cl), free(p->sets[k].st), free(p->sets[k].lv);
    sc_runs_free(&p->runs);
    sc_once_free(&p->once);
    free(p->s_ids), free(p->recent), free(p->recent_n);
    free(p->ids), free(p->ids64), free(p->tab64), free(p->out), free(p->p32), free(p->feats);
    free(p->cand), free(p->tmp), free(p->gids), free(p->gp), free(p->gmiss), free(p->isnew), free(p->stale), free(p->ids64s), free(p->sel), free(p->vote), free(p->minoff), free(p->minage);
    free(p->hkey), free(p->hval), free(p->gone);
    free(p->ann);
    free(p->adm), free(p->newv), free(p->scl), free(p->slv);
    free(p->ncl), free(p->nst), free(p->nlv), free(p->nkeep);
    free(p->dec.evict), free(p->dec.admit), free(p->dec.prefetch);
    free(p);
}

int lp_set_cache_net(lp_policy *p, const struct cm_net *net, int32_t n_table_slots)
{
    if (n_table_slots < 1)
        return SC_EARG;
    p->cnet = net;
    p->view.n_table_slots = n_table_slots;
    return SC_OK;
}

int lp_set_hazard(lp_policy *p, const double *table, int64_t n_classes, const double *p_edges, int32_t n_p,
                  const double *nu_edges, int32_t n_nu)
{
    if (n_classes < 1 || n_classes > INT16_MAX || n_p < 0 || n_nu < 0 ||
        (int64_t)(n_p + 1) * (n_nu + 1) != n_classes) /* a set keeps a class in an int16 */
        return SC_EARG;
    double *t = malloc((size_t)n_classes * HZ_AGE_BUCKETS * sizeof(double));
    double *pe = malloc((size_t)(n_p + 1) * sizeof(double));
    double *ne = malloc((size_t)(n_nu + 1) * sizeof(double));
    if (!t || !pe || !ne) {
        free(t), free(pe), free(ne);
        return SC_ENOMEM;
    }
    memcpy(t, table, (size_t)n_classes * HZ_AGE_BUCKETS * sizeof(double));
    if (n_p)
        memcpy(pe, p_edges, (size_t)n_p * sizeof(double));
    if (n_nu)
        memcpy(ne, nu_edges, (size_t)n_nu * sizeof(double));
    free(p->table), free(p->p_edges), free(p->nu_edges);
    p->table = t, p->p_edges = pe, p->nu_edges = ne;
    p->n_classes = n_classes, p->n_p = n_p, p->n_nu = n_nu;
    /* in the hazard order no keep score reads a level from now on (the guard's LRU order reads the stamp
     * alone): the sets keep none, unless some row is in them already */
    if (p->prm.order == LP_ORDER_HAZARD && !p->sets[0].n && !p->sets[1].n && !p->sets[2].n) {
        p->lv_on = 0;
        for (int k = 0; k < 3; k++) {
            free(p->sets[k].lv);
            p->sets[k].lv = NULL;
        }
    }
    p->p_sorted = ascending(pe, n_p), p->nu_sorted = ascending(ne, n_nu);
    return SC_OK;
}

static float *copy_f(const float *src, size_t n)
{
    float *d = malloc((n ? n : 1) * sizeof(float));
    if (d && n)
        memcpy(d, src, n * sizeof(float));
    return d;
}

int lp_set_prefetch_net(lp_policy *p, const lp_pfnet *w)
{
    if (!w || w->dim < 1 || w->dim > LP_MAX_DIM || w->hidden < 1 || w->hidden > LP_MAX_HIDDEN ||
        w->queries < 1 || w->queries * w->dim > LP_MAX_QUERY_FLOATS || w->n_table_slots < 1 || w->n_model < 0)
        return SC_EARG;
    pfnet *n = calloc(1, sizeof(*n));
    if (!n)
        return SC_ENOMEM;
    size_t d = (size_t)w->dim, h = (size_t)w->hidden, q = (size_t)w->queries;
    n->dim = w->dim, n->hidden = w->hidden, n->queries = w->queries, n->slots = w->n_table_slots;
    n->n_model = w->n_model, n->p2b = w->p2b, n->temp = w->temp;
    n->emb = w->emb; /* the one large array: borrowed, not copied (the caller keeps it) */
    n->f1w = copy_f(w->f1w, CM_N_FEATURES * h), n->f1b = copy_f(w->f1b, h);
    n->f2w = copy_f(w->f2w, h * d), n->f2b = copy_f(w->f2b, d);
    n->tab = copy_f(w->tab, (size_t)w->n_table_slots * d);
    n->c1w = copy_f(w->c1w, 2 * d * h), n->c1b = copy_f(w->c1b, h);
    n->c2w = copy_f(w->c2w, h * q * d), n->c2b = copy_f(w->c2b, q * d);
    n->p1w = copy_f(w->p1w, (CM_N_FEATURES + N_CF) * h), n->p1b = copy_f(w->p1b, h);
    n->p2w = copy_f(w->p2w, h);
    sc_idmap *mm = sc_idmap_new();
    int ok = n->emb && n->f1w && n->f1b && n->f2w && n->f2b && n->tab && n->c1w && n->c1b && n->c2w &&
             n->c2b && n->p1w && n->p1b && n->p2w && mm;
    for (int64_t i = 0; ok && i < w->n_model; i++)
        ok = sc_idmap_get(mm, w->model_keys[i]) >= 0;
    if (!ok) {
        pf_free(n);
        sc_idmap_free(mm);
        return SC_ENOMEM;
    }
    /* the stream (its ring and a row's last position) only with a budget to prefetch (fixed at lp_new) */
    if (!p->lastpos && p->prm.prefetch_budget > 0) {
        int32_t *ring = malloc((size_t)(p->s_mask + 1) * sizeof(int32_t));
        if (!ring || resize_arr((void **)&p->lastpos, p->cap_rows ? p->cap_rows : 1, 4)) {
            free(ring);
            pf_free(n);
            sc_idmap_free(mm);
            return SC_ENOMEM;
        }
        memset(p->lastpos, 0xff, (size_t)p->n_rows * 4); /* the rows seen so far: no stream position yet */
        p->s_ids = ring;
    }
    pf_free(p->pf);
    sc_idmap_free(p->model_map);
    p->pf = n;
    p->model_map = mm;
    return SC_OK;
}

/* ---------------------------------------------------------------------------- rows */
/* room for ids below need, and the ids from n_rows up to need set up as free (row_init takes an id); the
 * room past need is left untouched (its pages are not resident until ids reach them) */
static int grow_rows(lp_policy *p, int64_t need)
{
    if (need > p->cap_rows) {
        /* grown by a quarter (the recency window keeps the rows near a plateau: doubling would leave up
         * to half the room unused for good) */
        int64_t cap = p->cap_rows ? p->cap_rows : 1024;
        while (cap < need)
            cap += cap / 4 + 1024;
        if (resize_arr((void **)&p->flags, cap, 1) || (p->lastpos && resize_arr((void **)&p->lastpos, cap, 4)) ||
            resize_arr((void **)&p->rs, cap, 4) || resize_arr((void **)&p->sets[0].pos, cap, 4))
            return SC_ENOMEM;
        p->cap_rows = cap;
    }
    int64_t a = p->n_rows, k = need - a;
    if (k > 0) {
        memset(p->flags + a, F_FREE, (size_t)k);
        if (p->lastpos)
            memset(p->lastpos + a, 0xff, (size_t)k * 4);
        memset(p->rs + a, 0xff, (size_t)k * 4);
        memset(p->sets[0].pos + a, 0, (size_t)k * 4);
    }
    return SC_OK;
}

/* a free history record's index (the pool grown by a quarter when none is free), or -1 */
static int32_t rec_alloc(lp_policy *p)
{
    if (p->n_free_recs)
        return p->free_recs[--p->n_free_recs];
    if (p->n_recs == p->cap_recs) {
        int64_t old = p->cap_recs, cap = (old + old / 4 + 1024) & ~(int64_t)7; /* whole lines */
        void *mem = aligned_alloc(64, (size_t)cap * sizeof(cm_row)); /* eight records in three lines */
        if (!mem)
            return -1;
        if (old)
            memcpy(mem, p->row_mem, (size_t)old * sizeof(cm_row));
        free(p->row_mem);
        p->row_mem = mem;
        p->view.row = mem;
        p->view.cap = cap;
        p->cap_recs = cap;
    }
    return (int32_t)p->n_recs++;
}

static int rec_free(lp_policy *p, int32_t r)
{
    if (grow_buf((void **)&p->free_recs, &p->cap_free_recs, p->n_free_recs + 1, sizeof(int32_t)) != SC_OK)
        return SC_ENOMEM;
    p->free_recs[p->n_free_recs++] = r;
    return SC_OK;
}

/* into *r: the record of a row that has none: never used (last -1), or used once, at step last, rebuilt
 * by the very update that wrote it then (a record holds no key or table: any row's is the same) */
static int rec_fill_step(lp_policy *p, int64_t last, cm_row *r)
{
    memset(r, 0, sizeof(*r));
    r->last = r->first = CM_NEVER;
    if (last < 0)
        return SC_OK;
    cm_rows one = p->view;
    int64_t zero = 0;
    one.row = r, one.cap = 1;
    return cm_update(&one, &zero, 1, last);
}

/* into *r: the record of row id as it has none (rec_fill_step) */
static int rec_fill(lp_policy *p, int32_t id, cm_row *r)
{
    return rec_fill_step(p, last_of(p, id), r);
}

/* give row id (no record yet) a record of its own: never used (last -1), or used once, at step last */
static int rec_give(lp_policy *p, int32_t id, int64_t last)
{
    int32_t r = rec_alloc(p);
    if (r < 0)
        return SC_ENOMEM;
    int rc = rec_fill_step(p, last, p->view.row + r);
    if (rc)
        return rc;
    p->rs[id] = r;
    return SC_OK;
}

/* Step b is more than rs_span steps past the base of the once-used rows' offsets: move the base to b -
 * rs_span / 2. A row used once before the new base gets its record first (rec_fill, as its next use would),
 * then the others' offsets are rewritten. A failure in the first pass leaves every row valid under the old
 * base; the next step tries again. Once in 2^28 steps by default (each pass reads every row once). */
static int rs_rebase(lp_policy *p, int64_t b)
{
    int64_t base = b - p->rs_span / 2;
    for (int64_t id = 0; id < p->n_rows; id++) {
        int32_t v = p->rs[id];
        int rc;
        if (v <= -2 && once_step(p, v) < base &&
            (rc = rec_give(p, (int32_t)id, once_step(p, v))))
            return rc;
    }
    for (int64_t id = 0; id < p->n_rows; id++) {
        int32_t v = p->rs[id];
        if (v <= -2)
            p->rs[id] = (int32_t)(-2 - (once_step(p, v) - base));
    }
    /* the records' steps too (records of free rows alike); a use more than 2^31 steps behind the new base
     * reads as that far behind */
    int64_t d = base - p->rs_base;
    for (int64_t r = 0; r < p->n_recs; r++) {
        cm_row *w = p->view.row + r;
        if (w->last != CM_NEVER) {
            w->last = (int32_t)(w->last - d > CM_NEVER ? w->last - d : CM_NEVER + 1);
            w->first = (int32_t)(w->first - d > CM_NEVER ? w->first - d : CM_NEVER + 1);
        }
    }
    p->view.base = base;
    for (int k = 0; k < 3; k++) { /* the sets' stamps (half steps) */
        lp_set *s = &p->sets[k];
        for (int64_t i = 0; i < s->n; i++)
            s->st[i] = s->st[i] - 2 * d > INT32_MIN ? (int32_t)(s->st[i] - 2 * d) : INT32_MIN;
    }
    /* the once table's offsets may lie behind the base (negative): shifted; an entry that no longer fits
     * an int32 goes (2^31 steps past its use: out of any window) */
    p->forgotten += sc_once_shift(&p->once, base - p->rs_base);
    p->rs_base = base;
    return SC_OK;
}

int lp_set_rs_span(lp_policy *p, int64_t steps)
{
    if (steps < 2 || steps > LP_RS_SPAN)
        return SC_EARG;
    p->rs_span = steps;
    return SC_OK;
}

/* a new row's state: never used, no record */
static void row_init(lp_policy *p, int32_t id)
{
    p->flags[id] = 0;
    if (p->lastpos)
        p->lastpos[id] = -1;
    p->rs[id] = -1;
}

/* the caching model's features of row id as of now into f (any row: a once-used one's record rebuilt) */
static int row_features(lp_policy *p, int32_t id, int64_t now, float *f)
{
    int64_t at = rec_of(p, id);
    if (at >= 0)
        return cm_features(&p->view, &at, 1, now, f);
    int rc = rec_fill(p, id, &p->tmp_row);
    if (rc)
        return rc;
    cm_rows one = p->view;
    one.row = &p->tmp_row, one.cap = 1, at = 0;
    return cm_features(&one, &at, 1, now, f);
}

/* a row new to the step (no id before, or its id the mirror's alone) whose one use is in the once table:
 * its entry taken out; used at a step within the window, the row gets that use back (as rs, or as a
 * record when the step lies behind rs_base), else it stays never used */
static int once_back(lp_policy *p, int32_t id, int64_t key, int64_t b)
{
    int32_t off = sc_once_take(&p->once, key);
    if (off == SC_ONCE_NONE)
        return SC_OK;
    int64_t s = p->rs_base + off;
    if (p->prm.history_window > 0 && s < b - p->prm.history_window) { /* out of the window: forgotten */
        p->forgotten++;
        return SC_OK;
    }
    p->back++;
    if (off >= 0) {
        p->rs[id] = (int32_t)(-2 - off); /* off <= b - rs_base <= rs_span */
        return SC_OK;
    }
    return rec_give(p, id, s);
}

/* dense ids of keys, new rows set up (and a row's use taken back from the once table) at step b */
static int map_keys(lp_policy *p, const int64_t *keys, int64_t n, int32_t *ids, int64_t b)
{
    uint8_t *is_new = p->isnew;
    if (sc_idmap_get_new_many(p->map, keys, n, ids, is_new) != SC_OK)
        return SC_ENOMEM;
    int64_t top = -1;
    for (int64_t i = 0; i < n; i++)
        top = ids[i] > top ? ids[i] : top;
    if (top >= p->n_rows) {
        if (grow_rows(p, top + 1) != SC_OK)
            return SC_ENOMEM;
        p->n_rows = top + 1;
    }
    for (int64_t i = 0; i < n; i++)
        if (is_new[i])
            row_init(p, ids[i]);
    if (!p->once.n)
        return SC_OK;
    /* the new rows (in order; the sweep's scratch is free now), their once table slots asked ahead */
    if (grow_buf((void **)&p->gone, &p->cap_gone, n, sizeof(int32_t)) != SC_OK)
        return SC_ENOMEM;
    int64_t nn = 0;
    for (int64_t i = 0; i < n; i++)
        if (is_new[i])
            p->gone[nn++] = (int32_t)i;
    for (int64_t j = 0; j < nn; j++) {
        if (j + LP_GONE_AHEAD < nn)
            sc_once_prefetch(&p->once, keys[p->gone[j + LP_GONE_AHEAD]]);
        int32_t i = p->gone[j];
        int rc = once_back(p, ids[i], keys[i], b);
        if (rc)
            return rc;
    }
    return SC_OK;
}

/* The recency window: look at the next `budget` ids (a clock over all ids) and drop the history and id of
 * each row that is in none of the sets (cache, shadows) and was last used more than history_window steps
 * before step b (so no past step names it; the stream ring may: prefetch skips a follower that is free or
 * whose id a row first used after the ring entry holds now). Called at the end
 * of a step with a budget of twice the step's rows, so a row outlives the window by at most about
 * ids / (2 x rows a step) steps and the ids stay bounded by the rows in the window plus the sets.
 * Without a stream (no budget to prefetch: nothing else names an id across steps) a row in none of the
 * sets that was used once, within the window, moves to the once table and gives its id back: 12 bytes
 * there instead of its key map entry and per-row state. The once table's next `budget` slots drop the
 * uses older than the window the same way. */
static int forget_old(lp_policy *p, int64_t b, int64_t budget)
{
    int64_t w = p->prm.history_window;
    if (w <= 0 || p->n_rows == 0)
        return SC_OK;
    /* the once table: a whole turn every LP_ONCE_TURNS-th of the window */
    p->forgotten += sc_once_expire(&p->once, b - w - p->rs_base, sc_once_turn(&p->once, w / LP_ONCE_TURNS));
    int move = !p->lastpos; /* no stream that names ids: once-used rows may give theirs back */
    if (budget > p->n_rows)
        budget = p->n_rows;
    if (grow_buf((void **)&p->gone, &p->cap_gone, budget, sizeof(int32_t)) != SC_OK)
        return SC_ENOMEM;
    /* first the rows that go, in id order: id (its use to the once table) or -1 - id (forgotten) */
    int64_t ng = 0, n_rows = p->n_rows, id = p->sweep % n_rows; /* no division a row: ids wrap by compare */
    int64_t a = id + LP_SWEEP_AHEAD < n_rows ? id + LP_SWEEP_AHEAD : (id + LP_SWEEP_AHEAD) % n_rows;
    for (int64_t k = 0; k < budget; k++, id = id + 1 < n_rows ? id + 1 : 0, a = a + 1 < n_rows ? a + 1 : 0) {
        if (k + LP_SWEEP_AHEAD < budget) { /* the record of a row that far on that may go (ids in order) */
            if (!(p->flags[a] & (F_RES | F_SH0 | F_SH1 | F_FREE)) && p->rs[a] >= 0)
                CM_PREFETCH_ROW(p->view.row + p->rs[a]);
        }
        if (p->flags[id] & (F_RES | F_SH0 | F_SH1 | F_FREE))
            continue;
        int32_t v = p->rs[id];
        if (last_of(p, (int32_t)id) < b - w)
            p->gone[ng++] = (int32_t)(-1 - id);
        else if (move && (v <= -2 || (v >= 0 && p->view.row[v].count == 1)))
            p->gone[ng++] = (int32_t)id; /* used once, within the window (a record only when the base moved past it) */
    }
    p->sweep = id;
    /* then a moved row's use goes to the once table (its slot asked for LP_GONE_AHEAD rows ahead), a
     * forgotten row's record is freed, and the ids all go back to the key map in one call (which asks
     * for their slots ahead), in the order found */
    for (int64_t j = 0; j < ng; j++) {
        if (j + LP_GONE_AHEAD < ng && p->gone[j + LP_GONE_AHEAD] >= 0)
            sc_once_prefetch_slot(&p->once, sc_idmap_key_of(p->map, p->gone[j + LP_GONE_AHEAD]));
        int32_t id = p->gone[j];
        int rc;
        if (id >= 0) {
            int32_t v = p->rs[id]; /* the use's offset from rs_base: within the window, so above -2^31 */
            int64_t off = v <= -2 ? -2 - v : p->view.row[v].last;
            rc = sc_once_put(&p->once, sc_idmap_key_of(p->map, id), (int32_t)off);
            if (rc == SC_OK && v >= 0)
                rc = rec_free(p, v);
        } else {
            id = -1 - id;
            rc = rec_of(p, id) >= 0 ? rec_free(p, rec_of(p, id)) : SC_OK;
        }
        if (rc) { /* the rows before this one are gone; it and those after keep their ids for now */
            int rr = sc_idmap_release(p->map, p->gone, j);
            return rr ? rr : rc;
        }
        if (p->gone[j] >= 0) {
            p->moved++;
        } else {
            p->forgotten++;
            p->gone[j] = id;
        }
        p->rs[id] = -1;
        p->flags[id] = F_FREE;
    }
    return sc_idmap_release(p->map, p->gone, ng); /* freed, or the mirror's alone in a shared map */
}

/* ---------------------------------------------------------------------------- keep scores and plans */
static inline double hazard_key(const lp_policy *p, int32_t cls, double stamp, double now, double den)
{
    return p->table[(int64_t)cls * HZ_AGE_BUCKETS + hz_age_bucket(now - stamp)] + stamp / den;
}

/* how set k's keep score is computed now: the stamp alone (LRU order: the LRU shadow, and the cache while
 * the guard holds it in LRU order), the hazard table's, or the keep level's */
enum { KO_RECENCY, KO_HAZARD, KO_LEVEL };
static inline int keep_order(const lp_policy *p, int k)
{
    if (k == 1 || (k == 0 && p->recency_only))
        return KO_RECENCY;
    return p->prm.order == LP_ORDER_HAZARD && p->table ? KO_HAZARD : KO_LEVEL;
}

/* the keep score in set k's order (k 0: the cache, 1: LRU, 2: the model's) of a row of class cl, stamp
 * st, level lv */
static inline double keep_key(const lp_policy *p, int k, int32_t cl, double st, float lv, double now,
                              double den)
{
    int o = keep_order(p, k);
    if (o == KO_RECENCY)
        return st;
    if (o == KO_HAZARD)
        return hazard_key(p, cl, st, now, den);
    return (double)lv + st;
}

static inline int cand_lt(const lp_cand *a, const lp_cand *b)
{
    unsigned __int128 x = ((unsigned __int128)a->hi << 64) | a->lo;
    unsigned __int128 y = ((unsigned __int128)b->hi << 64) | b->lo;
    return x < y;
}

/* c[lo..hi] around the pivot c[pv] (candidates are distinct): the smaller ones first, then the pivot,
 * then the larger; the pivot's place. Branch-free (Lomuto with an unconditional swap). */
static int64_t partition(lp_cand *c, int64_t lo, int64_t hi, int64_t pv)
{
    lp_cand t = c[pv];
    c[pv] = c[hi];
    c[hi] = t;
    const lp_cand p = t;
    int64_t st = lo;
    for (int64_t i = lo; i < hi; i++) {
        lp_cand x = c[i];
        int lt = cand_lt(&x, &p);
        c[i] = c[st];
        c[st] = x;
        st += lt;
    }
    c[hi] = c[st];
    c[st] = p;
    return st;
}

/* put the k smallest of c[0..n) first (any order) */
static void select_k(lp_cand *c, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    uint64_t rng = 0x2545F4914F6CDD1DULL;
    while (lo < hi) {
        rng = mix64(rng + 1);
        int64_t at = partition(c, lo, hi, lo + (int64_t)(rng % (uint64_t)(hi - lo + 1)));
        if (at > k - 1)
            hi = at - 1;
        else if (at < k - 1)
            lo = at + 1;
        else
            break;
    }
}

/* sort c[0..n) by cand_lt (a total order: ties are unique) */
static void sort_cand(lp_cand *c, int64_t n)
{
    while (n > 16) {
        int64_t m = n / 2, z = n - 1, med; /* median of three as the pivot */
        if (cand_lt(&c[0], &c[m]))
            med = cand_lt(&c[m], &c[z]) ? m : cand_lt(&c[0], &c[z]) ? z : 0;
        else
            med = cand_lt(&c[0], &c[z]) ? 0 : cand_lt(&c[m], &c[z]) ? z : m;
        int64_t at = partition(c, 0, n - 1, med);
        /* [0, at) and (at, n) are left: recurse into the smaller, loop on the larger */
        if (at < n - 1 - at) {
            sort_cand(c, at);
            c += at + 1, n -= at + 1;
        } else {
            sort_cand(c + at + 1, n - at - 1);
            n = at;
        }
    }
    for (int64_t i = 1; i < n; i++) {
        lp_cand x = c[i];
        int64_t j = i;
        while (j > 0 && cand_lt(&x, &c[j - 1])) {
            c[j] = c[j - 1];
            j--;
        }
        c[j] = x;
    }
}

/* the value of rank r (0: the smallest) among x[0..n) (reordered) */
static double nth_dbl(double *x, int n, int r)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        double pv = x[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (x[i] < pv)
                i++;
            while (pv < x[j])
                j--;
            if (i <= j) {
                double t = x[i];
                x[i++] = x[j];
                x[j--] = t;
            }
        }
        if (r <= j)
            hi = j;
        else if (r >= i)
            lo = i;
        else
            break;
    }
    return x[r];
}

/* set k's residents whose keep score is at most thr, as candidates (key, tie = id) into out, in set
 * order; the count */
static int64_t filter_scalar(const lp_policy *p, int k, const lp_set *s, double now, double den, double thr,
                             lp_cand *out)
{
    int64_t nr = 0;
    for (int64_t i = 0; i < s->n; i++) {
        double key = keep_key(p, k, s->cl[i], st_unpack(p, s->st[i]), lv_at(s, i), now, den);
        if (key <= thr)
            out[nr++] = cand_of(key, s->ids[i]);
    }
    return nr;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LP_HAVE_AVX2 1
/* the hazard keys of four rows (stamps st, classes cl): hz_age_bucket from the same bits, the same table
 * entry, the same division and sum as hazard_key */
__attribute__((target("avx2"))) static inline __m256d hazard4(const double *table, const int16_t *cl, __m256d st,
                                                             __m256d vnow, __m256d vden, __m256d one,
                                                             __m256i mant, __m256i sq, __m256i bias,
                                                             __m256i top, __m256i lsb, __m256i width)
{
    __m256d age = _mm256_sub_pd(vnow, st);
    __m256i u = _mm256_castpd_si256(age);
    __m256i b = _mm256_slli_epi64(_mm256_sub_epi64(_mm256_srli_epi64(u, 52), bias), 1);
    b = _mm256_add_epi64(b, _mm256_and_si256(_mm256_cmpgt_epi64(_mm256_and_si256(u, mant), sq), lsb));
    b = _mm256_andnot_si256(_mm256_castpd_si256(_mm256_cmp_pd(age, one, _CMP_NGE_UQ)), b); /* age < 1 */
    b = _mm256_blendv_epi8(b, top, _mm256_cmpgt_epi64(b, top));
    __m256i c = _mm256_cvtepi16_epi64(_mm_loadl_epi64((const __m128i *)cl));
    __m256i at = _mm256_add_epi64(_mm256_mul_epu32(c, width), b);
    return _mm256_add_pd(_mm256_i64gather_pd(table, at, 8), _mm256_div_pd(st, vden));
}

/* filter_scalar four rows at a time in keep order o: the same doubles (in the hazard order the bucket from
 * the same bits as hz_age_bucket, the same table entry, the same division and sum) */
__attribute__((target("avx2"))) static int64_t filter_avx2(const lp_policy *p, int o, const lp_set *s,
                                                          double now, double den, double thr, lp_cand *out)
{
    const double *table = p->table;
    const __m256d vnow = _mm256_set1_pd(now), vden = _mm256_set1_pd(den), vthr = _mm256_set1_pd(thr);
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256i mant = _mm256_set1_epi64x((long long)HZ_MANT_MASK);
    const __m256i sq = _mm256_set1_epi64x((long long)HZ_SQRT2_MANT - 1);
    const __m256i bias = _mm256_set1_epi64x(1023), top = _mm256_set1_epi64x(HZ_AGE_BUCKETS - 1);
    const __m256i lsb = _mm256_set1_epi64x(1), width = _mm256_set1_epi64x(HZ_AGE_BUCKETS);
    const __m256d vbase = _mm256_set1_pd((double)p->rs_base), half = _mm256_set1_pd(0.5);
    int64_t nr = 0, i = 0, n4 = s->n & ~(int64_t)3;
    /* one loop per order (the order's arithmetic on st + i gives key), each appending the rows <= thr */
#define LP_FILTER_LOOP(KEY)                                                                        \
    for (; i < n4; i += 4) {                                                                       \
        __m256d st = _mm256_add_pd(vbase, _mm256_mul_pd(half, _mm256_cvtepi32_pd(                    \
                         _mm_loadu_si128((const __m128i *)(s->st + i))))); /* st_unpack */            \
        __m256d key = (KEY);                                                                       \
        int mk = _mm256_movemask_pd(_mm256_cmp_pd(key, vthr, _CMP_LE_OQ));                         \
        if (mk) {                                                                                  \
            double kv[4];                                                                          \
            _mm256_storeu_pd(kv, key);                                                             \
            while (mk) {                                                                           \
                int j = __builtin_ctz((unsigned)mk);                                               \
                mk &= mk - 1;                                                                      \
                out[nr++] = cand_of(kv[j], i + j); /* the place: its id below */                    \
            }                                                                                      \
        }                                                                                          \
    }
    if (o == KO_RECENCY) { /* the key is the stamp: packed stamps up to the threshold's, eight at a time */
        int64_t sp = st_floor(p, thr);
        const __m256i vsp = _mm256_set1_epi32((int32_t)(sp < INT32_MIN ? INT32_MIN : sp));
        int64_t n8 = s->n & ~(int64_t)7;
        if (sp < INT32_MIN) /* no stamp is that low */
            i = n8;
        for (; i < n8; i += 8) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(s->st + i));
            int mk = ~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, vsp))) & 0xff;
            while (mk) {
                int j = __builtin_ctz((unsigned)mk);
                mk &= mk - 1;
                out[nr++] = cand_of(st_unpack(p, s->st[i + j]), i + j);
            }
        }
    } else if (o == KO_LEVEL) {
        LP_FILTER_LOOP(_mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(s->lv + i)), st))
    } else {
        LP_FILTER_LOOP(hazard4(table, s->cl + i, st, vnow, vden, one, mant, sq, bias, top, lsb, width))
    }
#undef LP_FILTER_LOOP
    int k = s->k;
    for (; i < s->n; i++) {
        double key = keep_key(p, k, s->cl[i], st_unpack(p, s->st[i]), lv_at(s, i), now, den);
        if (key <= thr)
            out[nr++] = cand_of(key, i);
    }
    /* the ties from places to ids: the passing rows' ids lie scattered over the set, so they are read
     * here, asked for some ahead, rather than one miss at a time in the loops above */
    for (int64_t r = 0; r < nr; r++) {
        if (r + LP_GONE_AHEAD < nr)
            __builtin_prefetch(s->ids + out[r + LP_GONE_AHEAD].lo);
        out[r].lo = (uint64_t)s->ids[out[r].lo];
    }
    return nr;
}
#else
#define LP_HAVE_AVX2 0
#endif

int lp_set_simd(lp_policy *p, int on)
{
#if LP_HAVE_AVX2
    p->simd = on && __builtin_cpu_supports("avx2");
#else
    (void)on;
    p->simd = 0;
#endif
    return p->simd;
}

static int64_t filter(const lp_policy *p, int k, const lp_set *s, double now, double den, double thr,
                      lp_cand *out)
{
#if LP_HAVE_AVX2
    if (p->simd)
        return filter_avx2(p, keep_order(p, k), s, now, den, thr, out);
#endif
    return filter_scalar(p, k, s, now, den, thr, out);
}

/* Fit new[0..m) (not resident; their keep-score inputs in p->ncl, p->nst, p->nlv) into set k: the lowest
 * keep scores among the residents and the new rows go; *n_ev evicted ids (lowest first) land in p->tmp,
 * and p->nkeep[i] says whether new row i stays. Then applies the plan to the set. */
static int plan(lp_policy *p, int k, const int32_t *newv, int64_t m, double now, int32_t **ev_out,
                int64_t *n_ev)
{
    lp_set *s = &p->sets[k];
    *n_ev = 0;
    for (int64_t i = 0; i < m; i++)
        p->nkeep[i] = 1;
    int64_t over = s->n + m - s->capacity;
    if (over > 0) {
        int64_t tot = s->n + m;
        if (grow_buf((void **)&p->sel, &p->cap_sel, tot, sizeof(lp_cand)) != SC_OK)
            return SC_ENOMEM;
        double den = fabs(now) + 2.0;
        /* only residents with a key up to a threshold can be among the `over` lowest: a threshold from a
         * sample of the keys (about twice the quantile needed), checked after, so the result is exact */
        double thr = INFINITY;
        int64_t nr = 0;
        if (s->n >= 8 * LP_SAMPLE_MIN && over * 4 < s->n) {
            int64_t ns = 4 * (int64_t)sqrt((double)s->n);
            ns = ns < LP_SAMPLE_MIN ? LP_SAMPLE_MIN : ns > LP_SAMPLE_MAX ? LP_SAMPLE_MAX : ns;
            double *smp = p->smp;
            int64_t *pick = p->pick;
            for (int64_t j = 0; j < ns; j++) { /* the sampled places, their entries asked for at once */
                pick[j] = (int64_t)(mix64((uint64_t)(p->t * LP_SAMPLE_MAX + j)) % (uint64_t)s->n);
                __builtin_prefetch(s->st + pick[j]), __builtin_prefetch(s->cl + pick[j]);
            }
            for (int64_t j = 0; j < ns; j++)
                smp[j] = keep_key(p, k, s->cl[pick[j]], st_unpack(p, s->st[pick[j]]), lv_at(s, pick[j]), now, den);
            int64_t at = 2 * over * ns / s->n + 8;
            thr = nth_dbl(smp, (int)ns, (int)(at < ns ? at : ns - 1));
            nr = filter(p, k, s, now, den, thr, p->sel);
            if (nr < over)
                nr = 0, thr = INFINITY; /* the sample misled: every resident */
        }
        int every = thr == INFINITY;
        if (every)
            nr = filter(p, k, s, now, den, thr, p->sel);
        tot = nr + m;
        for (int64_t i = 0; i < m; i++) {
            int32_t id = newv[i];
            double st = k == 0 ? p->nst[i] : (double)last_of(p, id);
            int32_t cl = k == 1 ? 0 : p->ncl[i];
            float lv = k == 1 ? 0.0f : p->nlv[i];
            p->sel[nr + i] = cand_of(keep_key(p, k, cl, st, lv, now, den) + NEW_BONUS, NEW_TIE + i);
        }
        if (over < tot)
            select_k(p->sel, tot, over);
        else
            over = tot;
        sort_cand(p->sel, over);
        if (grow_buf((void **)&p->tmp, &p->cap_tmp, over, sizeof(int32_t)) != SC_OK)
            return SC_ENOMEM;
        for (int64_t i = 0; i < over; i++) {
            uint64_t tie = p->sel[i].lo;
            if (tie >= (uint64_t)NEW_TIE)
                p->nkeep[tie - (uint64_t)NEW_TIE] = 0;
            else
                p->tmp[(*n_ev)++] = (int32_t)tie;
        }
        if (every)
            sel_release(p, tot);
        for (int64_t i = 0; i < *n_ev; i++)
            set_del(p, s, p->tmp[i]);
    }
    for (int64_t i = 0; i < m; i++)
        if (p->nkeep[i] && set_add(p, s, newv[i], p->ncl[i], p->nst[i], p->nlv[i]) != SC_OK)
            return SC_ENOMEM;
    if (ev_out)
        *ev_out = p->tmp;
    return SC_OK;
}

/* ---------------------------------------------------------------------------- the guard */
/* whether the guard watches row id (its hash sample; every row on small tiers) */
static inline int in_sample(const lp_policy *p, int32_t id)
{
    return p->guard_shift == 64 || (((uint64_t)id * GOLDEN) >> p->guard_shift) == 0;
}

static int admit_rows(const lp_policy *p, const uint8_t *missed, const float *pr, int64_t n, int64_t free_slots,
                      int32_t *out, int64_t *n_out, int32_t *scratch);

static int guard_step(lp_policy *p, int64_t n, const uint8_t *hit, int64_t b)
{
    const int32_t *ids = p->ids;
    int64_t m = 0;
    /* the sampled rows (all on small tiers) */
    int32_t *sids = p->gids, *sat = p->gat; /* their ids and places in the step */
    float *sp = p->gp; /* their keep probabilities */
    uint8_t *smiss = p->gmiss;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (!in_sample(p, id))
            continue;
        sids[m] = id;
        sat[m] = (int32_t)i;
        sp[m] = p->p32[i];
        smiss[m] = 0;
        m++;
    }
    (void)hit;
    if (!m)
        return SC_OK;
    int64_t misses[2];
    for (int k = 1; k <= 2; k++) {
        lp_set *s = &p->sets[k];
        int64_t nm = 0, na = 0;
        for (int64_t i = 0; i < m; i++) {
            smiss[i] = !(p->flags[sids[i]] & s->flag);
            nm += smiss[i];
        }
        misses[k - 1] = nm;
        int32_t *adm = p->adm, *at = (int32_t *)p->feats; /* places among the sampled rows (feats: scratch) */
        if (k == 2) {
            int rc = admit_rows(p, smiss, sp, m, s->capacity - s->n, at, &na, p->newv);
            if (rc)
                return rc;
        } else {
            for (int64_t i = 0; i < m; i++)
                if (smiss[i])
                    at[na++] = (int32_t)i;
        }
        for (int64_t j = 0; j < na; j++) { /* the model shadow keeps the class and level of this use */
            int32_t i = sat[at[j]];
            adm[j] = sids[at[j]];
            p->ncl[j] = p->scl[i], p->nst[j] = (double)b, p->nlv[j] = p->slv[i];
        }
        int64_t n_ev;
        int rc = plan(p, k, adm, na, (double)(b + 1), NULL, &n_ev);
        if (rc)
            return rc;
    }
    p->lru_misses += misses[0];
    p->model_misses += misses[1];
    p->psel = fmin(fmax(p->psel + (double)(misses[1] - misses[0]), -p->psel_max), p->psel_max);
    p->recency_only = p->psel > 0;
    p->lru_steps += p->recency_only;
    return SC_OK;
}

/* the missed rows the caching model admits (their places i in out): keep-probability >= bypass, and while
 * there is room the best of the others (by probability, ties in step order) */
static int admit_rows(const lp_policy *p, const uint8_t *missed, const float *pr, int64_t n, int64_t free_slots,
                      int32_t *out, int64_t *n_out, int32_t *scratch)
{
    int64_t na = 0, nr = 0;
    uint8_t *take = (uint8_t *)scratch; /* n bytes; scratch has room for n int32 */
    for (int64_t i = 0; i < n; i++) {
        take[i] = missed[i] && pr[i] >= (float)p->prm.bypass;
        nr += missed[i] && !take[i];
    }
    if (free_slots > 0 && nr > 0) {
        /* pick the free_slots best of the bypassed: repeated selection (few rows a step) */
        int64_t left = free_slots < nr ? free_slots : nr;
        while (left-- > 0) {
            int64_t best = -1;
            for (int64_t i = 0; i < n; i++)
                if (missed[i] && !take[i] && (best < 0 || pr[i] > pr[best]))
                    best = i;
            take[best] = 2;
        }
    }
    for (int64_t i = 0; i < n; i++)
        if (take[i])
            out[na++] = (int32_t)i;
    *n_out = na;
    return SC_OK;
}

/* ---------------------------------------------------------------------------- the prefetcher */
/* the prefetching model's dense layers: an AVX2/FMA clone where the CPU has it (rounding differs from
 * the portable one by float contraction only) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LP_HOT __attribute__((target_clones("avx2", "default"), optimize("O3")))
#else
#define LP_HOT
#endif

/* the prefetching model's embedding row of row id: its key's place in the model's vocabulary, or the last
 * row (unknown); looked up when asked (the prefetcher runs on few steps), not kept per row */
static int32_t model_id(const lp_policy *p, int32_t id)
{
    int64_t key = sc_idmap_key_of(p->map, id);
    int32_t m = -1;
    sc_idmap_find(p->model_map, &key, 1, &m);
    return m >= 0 ? m : (int32_t)p->pf->n_model;
}

LP_HOT static void rep(const pfnet *w, int32_t mid, const float *f, int64_t table, float *r)
{
    float h[LP_MAX_HIDDEN];
    int H = w->hidden, D = w->dim;
    for (int j = 0; j < H; j++)
        h[j] = w->f1b[j];
    for (int i = 0; i < CM_N_FEATURES; i++) {
        float x = f[i];
        const float *wi = w->f1w + (size_t)i * H;
        for (int j = 0; j < H; j++)
            h[j] += x * wi[j];
    }
    int64_t t = table % w->slots;
    if (t < 0)
        t += w->slots;
    const float *e = w->emb + (size_t)mid * D, *tb = w->tab + (size_t)t * D;
    for (int j = 0; j < D; j++)
        r[j] = w->f2b[j];
    for (int i = 0; i < H; i++) {
        float x = h[i] > 0.0f ? h[i] : 0.0f;
        const float *wi = w->f2w + (size_t)i * D;
        for (int j = 0; j < D; j++)
            r[j] += x * wi[j];
    }
    float ss = 0.0f;
    for (int j = 0; j < D; j++) {
        r[j] = e[j] + r[j] + tb[j];
        ss += r[j] * r[j];
    }
    float nr = sqrtf(ss);
    if (nr < 1e-6f)
        nr = 1e-6f;
    for (int j = 0; j < D; j++)
        r[j] /= nr;
}

/* the prior head: relu(f @ p1w + p1b) . p2w + p2b over the history and candidate features f */
LP_HOT static float prior(const pfnet *w, const float *f)
{
    int H = w->hidden;
    float h[LP_MAX_HIDDEN];
    for (int j = 0; j < H; j++)
        h[j] = w->p1b[j];
    for (int i = 0; i < CM_N_FEATURES + N_CF; i++) {
        float x = f[i];
        const float *wi = w->p1w + (size_t)i * H;
        for (int j = 0; j < H; j++)
            h[j] += x * wi[j];
    }
    float pr = w->p2b;
    for (int j = 0; j < H; j++)
        if (h[j] > 0.0f)
            pr += h[j] * w->p2w[j];
    return pr;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* mean representation of rows ids[0..n) as of now into out (dim) */
static int mean_rep(lp_policy *p, const int32_t *ids, int64_t n, int64_t now, float *out)
{
    const pfnet *w = p->pf;
    float f[CM_N_FEATURES], r[LP_MAX_DIM];
    for (int j = 0; j < w->dim; j++)
        out[j] = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        int rc = row_features(p, id, now, f);
        if (rc)
            return rc;
        rep(w, model_id(p, id), f, sc_idmap_key_of(p->map, id) >> p->prm.row_bits, r);
        for (int j = 0; j < w->dim; j++)
            out[j] += r[j];
    }
    for (int j = 0; j < w->dim; j++)
        out[j] /= (float)(n ? n : 1);
    return SC_OK;
}

/* the prefetcher's accuracy, once a step before it is asked: the outcomes since the last step (prefetched
 * rows read now, or evicted unread by the last plan) join the decaying counts, and the prefetcher is
 * throttled while too few were read (FDP's idea: a prefetcher that is mostly wrong costs slow-tier reads
 * and evicts better rows) */
static void pf_account(lp_policy *p)
{
    p->pf_useful += p->pend_u;
    p->pf_useless += p->pend_x;
    p->pf_u = p->pf_u - (p->pf_u >> LP_PF_DECAY_SHIFT) + (p->pend_u << LP_PF_SCALE_SHIFT);
    p->pf_t = p->pf_t - (p->pf_t >> LP_PF_DECAY_SHIFT) + ((p->pend_u + p->pend_x) << LP_PF_SCALE_SHIFT);
    p->pend_u = p->pend_x = 0;
    /* throttled once enough outcomes are in and too few were read; it stays so (the counts decay alike,
     * and only a probe's outcomes move their ratio) until the probes' prefetches are read often enough */
    double acc = p->prm.prefetch_min_accuracy;
    int64_t enough = (int64_t)LP_PF_MIN_OUTCOMES << LP_PF_SCALE_SHIFT;
    p->pf_throttled = acc > 0.0 && (p->pf_throttled || p->pf_t >= enough) && (double)p->pf_u < acc * (double)p->pf_t;
    p->pf_throttled_steps += p->pf_throttled;
}

static int grow_hash(lp_policy *p, int64_t cap)
{
    int32_t *k = realloc(p->hkey, (size_t)cap * sizeof(int32_t));
    if (!k)
        return SC_ENOMEM;
    p->hkey = k;
    int32_t *v = realloc(p->hval, (size_t)cap * sizeof(int32_t));
    if (!v)
        return SC_ENOMEM;
    p->hval = v;
    p->hcap = cap;
    return SC_OK;
}

/* candidates proposed by the stream for this step's rows and then for the n_ann announced rows not among
 * them (p->ann: what followed them last time is what comes after the window), never a row read or
 * announced; scored; the chosen (best first, at most prefetch_budget) land in p->newv[*n_pf ...] after
 * the m admissions already there */
static int prefetch(lp_policy *p, int64_t n, int64_t n_ann, int64_t b, int64_t m, int64_t *n_pf)
{
    const pfnet *w = p->pf;
    *n_pf = 0;
    if (!w || p->prm.prefetch_budget <= 0 || p->prm.capacity <= 0)
        return SC_OK;
    if ((p->pf_throttled && b % p->prm.prefetch_throttled_probe) ||
        (p->pf_idle >= p->prm.prefetch_idle && b % p->prm.prefetch_probe)) {
        p->pf_idle++;
        return SC_OK;
    }
    p->pf_asked++;
    const int32_t *ids = p->ids;
    int64_t now = b + 1, depth = p->prm.depth;
    /* the triggers: this step's rows, then the announced rows not among them (p->tmp, reused below) */
    if (grow_buf((void **)&p->tmp, &p->cap_tmp, n + n_ann + 1, sizeof(int32_t)) != SC_OK)
        return SC_ENOMEM;
    for (int64_t i = 0; i < n; i++)
        p->flags[ids[i]] |= F_MREAD;
    int32_t *trig = p->tmp;
    int64_t nt = n;
    if (n) /* ids is NULL before the first step with rows */
        memcpy(trig, ids, (size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n_ann; i++)
        if (!(p->flags[p->ann[i]] & F_MREAD)) {
            p->flags[p->ann[i]] |= F_MREAD;
            trig[nt++] = p->ann[i];
        }
    int64_t nc = 0, need = nt * depth;
    int64_t hc = 64;
    while (hc < 2 * need)
        hc *= 2;
    if (grow_buf((void **)&p->cand, &p->cap_cand, need + 1, sizeof(int32_t)) != SC_OK ||
        grow_buf((void **)&p->vote, &p->cap_vote, need + 1, sizeof(int32_t)) != SC_OK ||
        grow_buf((void **)&p->minoff, &p->cap_minoff, need + 1, sizeof(int32_t)) != SC_OK ||
        grow_buf((void **)&p->minage, &p->cap_minage, need + 1, sizeof(int64_t)) != SC_OK ||
        (hc > p->hcap && grow_hash(p, hc) != SC_OK)) {
        for (int64_t i = 0; i < nt; i++)
            p->flags[trig[i]] &= (uint8_t)~F_MREAD;
        return SC_ENOMEM;
    }
    memset(p->hkey, 0xff, (size_t)hc * sizeof(int32_t));
    uint64_t hmask = (uint64_t)hc - 1;
    for (int64_t i = 0; i < nt; i++) {
        int32_t sl = p->lastpos[trig[i]];
        if (sl < 0 || p->s_ids[sl] != trig[i])
            continue; /* never in the stream, or its last position is overwritten (older than the ring) */
        int64_t pos = p->s_n - 1 - (int64_t)((uint64_t)(p->s_n - 1 - sl) & (uint64_t)p->s_mask);
        int64_t k = sc_runs_find(&p->runs, pos); /* the runs of pos and of its followers, walked forward */
        int64_t age = now - sc_runs_step(&p->runs, k);
        for (int64_t o = 1; o <= depth; o++) {
            int64_t q = pos + o;
            if (q >= p->s_n)
                break;
            while (sc_runs_start(&p->runs, k + 1) <= q)
                k++;
            int32_t c = p->s_ids[q & p->s_mask];
            /* a follower the recency window dropped since (its id free or another row's now) */
            if ((p->flags[c] & F_FREE) || row_first(p, c) > sc_runs_step(&p->runs, k))
                continue;
            if (p->flags[c] & F_MCAND) {
                uint64_t h = mix64((uint64_t)c) & hmask;
                while (p->hkey[h] != c)
                    h = (h + 1) & hmask;
                int32_t s = p->hval[h];
                p->vote[s]++;
                if (o < p->minoff[s])
                    p->minoff[s] = (int32_t)o;
                if (age < p->minage[s])
                    p->minage[s] = age;
                continue;
            }
            if (p->flags[c] & F_MREAD)
                continue; /* read in this step, or announced */
            p->flags[c] |= F_MCAND;
            uint64_t h = mix64((uint64_t)c) & hmask;
            while (p->hkey[h] >= 0)
                h = (h + 1) & hmask;
            p->hkey[h] = c, p->hval[h] = (int32_t)nc;
            p->cand[nc] = c;
            p->vote[nc] = 1;
            p->minoff[nc] = (int32_t)o;
            p->minage[nc] = age;
            nc++;
        }
    }
    for (int64_t i = 0; i < nt; i++) /* the marks go (p->tmp, the triggers, is reused below) */
        p->flags[trig[i]] &= (uint8_t)~F_MREAD;
    for (int64_t i = 0; i < nc; i++)
        p->flags[p->cand[i]] &= (uint8_t)~F_MCAND;
    /* rows read in this step were skipped above (they are not candidates), and so are residents */
    int64_t k = 0;
    for (int64_t i = 0; i < nc; i++) {
        int32_t c = p->cand[i];
        if (p->flags[c] & F_RES)
            continue;
        p->cand[k] = c;
        p->vote[k] = p->vote[i], p->minoff[k] = p->minoff[i], p->minage[k] = p->minage[i];
        k++;
    }
    nc = k;
    if (!nc) {
        p->pf_idle++;
        return SC_OK;
    }
    /* the context: this step's rows and the distinct rows of the past steps, in id order */
    float now_r[LP_MAX_DIM], past_r[LP_MAX_DIM];
    int rc = mean_rep(p, ids, n, now, now_r);
    if (rc)
        return rc;
    int64_t np_ = 0;
    int32_t *past = p->tmp;
    for (int64_t s = 0; s < p->recent_len; s++) {
        int64_t at = (p->recent_head + p->prm.past_steps - 1 - s) % p->prm.past_steps;
        const int32_t *r = p->recent + at * p->recent_cap;
        for (int64_t i = 0; i < p->recent_n[at]; i++)
            if (!(p->flags[r[i]] & F_MPAST)) {
                if (grow_buf((void **)&p->tmp, &p->cap_tmp, np_ + 1, sizeof(int32_t)) != SC_OK) {
                    for (int64_t j = 0; j < np_; j++)
                        p->flags[past[j]] &= (uint8_t)~F_MPAST;
                    return SC_ENOMEM;
                }
                past = p->tmp;
                p->flags[r[i]] |= F_MPAST;
                past[np_++] = r[i];
            }
    }
    for (int64_t i = 0; i < np_; i++)
        p->flags[past[i]] &= (uint8_t)~F_MPAST;
    if (np_) {
        qsort(past, (size_t)np_, sizeof(int32_t), cmp_i32);
        rc = mean_rep(p, past, np_, now, past_r);
    } else {
        rc = mean_rep(p, ids, n, now, past_r);
    }
    if (rc)
        return rc;
    int H = w->hidden, D = w->dim, Q = w->queries;
    float h[LP_MAX_HIDDEN], qv[LP_MAX_QUERY_FLOATS];
    for (int j = 0; j < H; j++) {
        float a = w->c1b[j];
        for (int i = 0; i < D; i++)
            a += now_r[i] * w->c1w[(size_t)i * H + j];
        for (int i = 0; i < D; i++)
            a += past_r[i] * w->c1w[(size_t)(D + i) * H + j];
        h[j] = a > 0.0f ? a : 0.0f;
    }
    for (int j = 0; j < Q * D; j++) {
        float a = w->c2b[j];
        for (int i = 0; i < H; i++)
            a += h[i] * w->c2w[(size_t)i * Q * D + j];
        qv[j] = a;
    }
    for (int q = 0; q < Q; q++) {
        float ss = 0.0f;
        for (int j = 0; j < D; j++)
            ss += qv[q * D + j] * qv[q * D + j];
        float nr = sqrtf(ss);
        if (nr < 1e-6f)
            nr = 1e-6f;
        for (int j = 0; j < D; j++)
            qv[q * D + j] /= nr;
    }
    /* score the candidates; keep those over the threshold in sel (key = -score, tie = id) */
    if (grow_buf((void **)&p->sel, &p->cap_sel, nc, sizeof(lp_cand)) != SC_OK)
        return SC_ENOMEM;
    int64_t ns = 0;
    for (int64_t i = 0; i < nc; i++) {
        int32_t id = p->cand[i];
        float f[CM_N_FEATURES + N_CF], r[LP_MAX_DIM];
        rc = row_features(p, id, now, f);
        if (rc)
            return rc;
        f[CM_N_FEATURES] = (float)log1p((double)p->vote[i]);
        f[CM_N_FEATURES + 1] = (float)((double)p->minoff[i] / (double)depth);
        f[CM_N_FEATURES + 2] = (float)log1p((double)p->minage[i]);
        rep(w, model_id(p, id), f, sc_idmap_key_of(p->map, id) >> p->prm.row_bits, r);
        float sim = -INFINITY;
        for (int q = 0; q < Q; q++) {
            float d = 0.0f;
            for (int j = 0; j < D; j++)
                d += r[j] * qv[q * D + j];
            if (d > sim)
                sim = d;
        }
        float s = w->temp * sim + prior(w, f);
        if (s > (float)p->prm.prefetch_threshold)
            p->sel[ns++] = cand_of(-(double)s, id);
    }
    if (!ns) {
        p->pf_idle++;
        return SC_OK;
    }
    int64_t take = ns < p->prm.prefetch_budget ? ns : p->prm.prefetch_budget;
    if (take < ns)
        select_k(p->sel, ns, take);
    sort_cand(p->sel, take);
    for (int64_t i = 0; i < take; i++)
        p->newv[m + i] = (int32_t)p->sel[i].lo;
    *n_pf = take;
    p->pf_idle = 0;
    return SC_OK;
}

/* ---------------------------------------------------------------------------- the step */
static int grow_step(lp_policy *p, int64_t n)
{
    int64_t c = p->cap_step;
    if (n <= c)
        return SC_OK;
    int64_t nc = c ? c : 256;
    while (nc < n)
        nc *= 2;
    void **bufs[] = {(void **)&p->ids, (void **)&p->ids64, (void **)&p->out, (void **)&p->p32,
                     (void **)&p->feats, (void **)&p->adm, (void **)&p->gids, (void **)&p->gp,
                     (void **)&p->gmiss, (void **)&p->isnew, (void **)&p->gat, (void **)&p->scl,
                     (void **)&p->slv, (void **)&p->tab64, (void **)&p->stale, (void **)&p->ids64s};
    size_t el[] = {4, 8, 8, 4, 4, 4, 4, 4, 1, 1, 4, 4, 4, 8, 1, 8};
    for (size_t i = 0; i < sizeof(el) / sizeof(el[0]); i++) {
        void *q = realloc(*bufs[i], (size_t)nc * el[i]);
        if (!q)
            return SC_ENOMEM;
        *bufs[i] = q;
    }
    p->cap_step = nc;
    int64_t need = nc + p->prm.prefetch_budget + 1, cn = p->cap_new;
    if (need > cn) {
        void **nb[] = {(void **)&p->newv, (void **)&p->ncl, (void **)&p->nst, (void **)&p->nlv,
                       (void **)&p->nkeep};
        size_t ne[] = {4, 4, 8, 4, 1};
        for (size_t i = 0; i < sizeof(ne) / sizeof(ne[0]); i++) {
            void *q = realloc(*nb[i], (size_t)need * ne[i]);
            if (!q)
                return SC_ENOMEM;
            *nb[i] = q;
        }
        p->cap_new = need;
    }
    return SC_OK;
}

static int push_keys(lp_policy *p, int64_t **dst, int64_t *cnt, const int32_t *ids, int64_t n)
{
    (void)p;
    for (int64_t i = 0; i < n; i++)
        (*dst)[(*cnt)++] = sc_idmap_key_of(p->map, ids[i]);
    return SC_OK;
}

int lp_step(lp_policy *p, const int64_t *keys, const uint8_t *hit, int64_t n)
{
    if (n < 0 || (n > 0 && (!keys || !hit)))
        return SC_EARG;
    int rc = grow_step(p, n);
    if (rc)
        return rc;
    p->dec.n_evict = p->dec.n_admit = p->dec.n_prefetch = 0;
    int64_t n_ann = p->n_ann;
    p->n_ann = 0;
    int64_t b = p->t;
    if (b - p->rs_base > p->rs_span && (rc = rs_rebase(p, b)))
        return rc;
    p->t++;
    int32_t *ids = p->ids;
    if ((rc = map_keys(p, keys, n, ids, b)))
        return rc;
    lp_set *res = &p->sets[0];
    int scored = p->prm.use_cache_model && p->cnet && n;
    /* while the guard holds the cache in LRU order (as of the last step), the model's scores of a row read
     * where the policy held it resident are read by no one (the order is the stamps, no admission asks
     * them, the guard's shadows only see their sample): such a row outside the sample is not scored, its
     * use renews its stamp and its record, and its class and level stay those of its last scored use */
    int lazy = scored && p->guard_on && p->recency_only;
    uint8_t *stale = p->stale;
    for (int64_t i = 0; i < n; i++) {
        if (i + LP_AHEAD < n) /* the row's flags now, its record index in the next loop (random ids) */
            __builtin_prefetch(p->flags + ids[i + LP_AHEAD]), __builtin_prefetch(p->rs + ids[i + LP_AHEAD]);
        if (p->flags[ids[i]] & F_PFU) { /* a prefetch's outcome: read while resident, or gone already */
            p->flags[ids[i]] &= (uint8_t)~F_PFU;
            p->pend_u += hit[i] != 0;
        }
        stale[i] = (uint8_t)(lazy && hit[i] && (p->flags[ids[i]] & res->flag) && !in_sample(p, ids[i]));
        if (hit[i]) /* its keep-score inputs come with the refresh below, before any plan reads them */
            rc = set_add(p, res, ids[i], 0, (double)b, 0.0f);
        else
            set_del(p, res, ids[i]);
        if (rc)
            return rc;
    }
    if (!p->prm.step_len_known && n) {
        p->seen_rows += n;
        p->seen_steps++;
        p->prm.step_len = (double)p->seen_rows / (double)p->seen_steps;
        lp_set_horizon(p, p->prm.horizon);
    }
    /* the rows used for the first time (their places among the step's rows, in the sweep's scratch, which
     * is free until the step's end): they keep no record after it (rec_fill rebuilds it) */
    if (grow_buf((void **)&p->gone, &p->cap_gone, n, sizeof(int32_t)) != SC_OK)
        return SC_ENOMEM;
    int64_t n_first = 0, nsc = 0, nst = 0; /* rows scored, rows not */
    for (int64_t i = 0; i < n; i++) { /* the step's rows' records (rebuilt for rows that kept none) */
        if (i + LP_AHEAD < n && p->rs[ids[i + LP_AHEAD]] >= 0)
            CM_PREFETCH_ROW(p->view.row + p->rs[ids[i + LP_AHEAD]]);
        int32_t id = ids[i];
        /* from the row's once-used step (or none), then the record's */
        if (p->rs[id] == -1)
            p->gone[n_first++] = (int32_t)i;
        if (p->rs[id] < 0 && (rc = rec_give(p, id, last_of(p, id))))
            return rc;
        if (stale[i]) {
            p->ids64s[nst++] = p->rs[id];
        } else {
            p->ids64[nsc] = p->rs[id];
            p->tab64[nsc++] = keys[i] >> p->prm.row_bits;
        }
    }
    p->stamp_only += nst;
    if (scored) {
        if ((rc = cm_score(p->cnet, &p->view, p->ids64, p->tab64, nsc, b, 1, p->out, NULL)) ||
            (nst && (rc = cm_update(&p->view, p->ids64s, nst, b))))
            return rc;
        int L = p->prm.levels;
        float unit = (float)p->unit;
        for (int64_t i = 0, j = 0; i < n; i++) {
            if (stale[i]) { /* read by no one: the refresh below keeps the row's class and level */
                p->p32[i] = 1.0f, p->slv[i] = 0.0f, p->scl[i] = 0;
                continue;
            }
            float lo = p->out[2 * j], nu = p->out[2 * j + 1];
            j++;
            float pr = sigmoidf(lo);
            p->p32[i] = pr;
            float lv = floorf(pr * (float)L);
            if (lv > (float)(L - 1))
                lv = (float)(L - 1);
            p->slv[i] = lv * unit;
            int32_t c = 0;
            if (p->table) {
                double pd = 1.0 / (1.0 + exp(-(double)lo));
                int32_t a = edges_passed(p->p_edges, p->n_p, p->p_sorted, pd);
                int32_t bq = edges_passed(p->nu_edges, p->n_nu, p->nu_sorted, (double)nu);
                c = a * (p->n_nu + 1) + bq;
            }
            p->scl[i] = c;
        }
    } else if (n) {
        if ((rc = cm_update(&p->view, p->ids64, n, b)))
            return rc;
        for (int64_t i = 0; i < n; i++) {
            p->p32[i] = 1.0f;
            p->slv[i] = 0.0f;
            p->scl[i] = 0;
        }
    }
    for (int64_t i = 0; i < n; i++) {
        /* the rows' places in the cache's set and then their entries there, ahead (random ids) */
        if (i + 2 * LP_AHEAD < n)
            __builtin_prefetch(res->pos + ids[i + 2 * LP_AHEAD]), __builtin_prefetch(p->flags + ids[i + 2 * LP_AHEAD]);
        if (i + LP_AHEAD < n) {
            int32_t f = ids[i + LP_AHEAD];
            if (p->flags[f] & res->flag) {
                int32_t at = res->pos[f];
                __builtin_prefetch(res->cl + at, 1), __builtin_prefetch(res->st + at, 1);
                if (res->lv)
                    __builtin_prefetch(res->lv + at, 1);
            }
        }
        if (stale[i]) { /* in the cache only (outside the guard's sample): its stamp, nothing else */
            int64_t at = set_pos(res, ids[i]);
            set_vals(p, res, ids[i], at, res->cl[at], (double)b, res->lv ? res->lv[at] : 0.0f);
        } else {
            sets_refresh(p, ids[i], p->scl[i], (double)b, p->slv[i]);
        }
    }
    if (p->guard_on && n && (rc = guard_step(p, n, hit, b)))
        return rc;
    /* admissions */
    uint8_t *missed = (uint8_t *)p->feats;
    int64_t na = 0;
    for (int64_t i = 0; i < n; i++)
        missed[i] = !hit[i];
    int32_t *at = p->adm; /* the admitted rows' places in the step */
    if (p->prm.use_cache_model && !p->recency_only) {
        if ((rc = admit_rows(p, missed, p->p32, n, res->capacity - res->n, at, &na, p->newv)))
            return rc;
    } else {
        for (int64_t i = 0; i < n; i++)
            if (missed[i])
                at[na++] = (int32_t)i;
    }
    for (int64_t j = 0; j < na; j++) {
        int32_t i = at[j];
        p->newv[j] = ids[i];
        p->ncl[j] = p->scl[i], p->nst[j] = (double)b, p->nlv[j] = p->slv[i];
    }
    pf_account(p);
    int64_t npf = 0;
    if ((rc = prefetch(p, n, n_ann, b, na, &npf)))
        return rc;
    for (int64_t i = na; i < na + npf; i++) {
        p->ncl[i] = 0;
        p->nlv[i] = 0.0f;
        p->nst[i] = p->prm.use_cache_model ? (double)b - 0.5 : (double)b + 0.5;
    }
    int64_t nnew = na + npf, n_ev = 0;
    int32_t *ev = NULL;
    if ((rc = plan(p, 0, p->newv, nnew, (double)(b + 1), &ev, &n_ev)))
        return rc;
    /* the decision */
    int64_t need = n_ev > nnew ? n_ev : nnew;
    if (need > p->cap_dec) {
        int64_t c = need * 2;
        int64_t *e = realloc(p->dec.evict, (size_t)c * 8), *a, *f;
        if (!e)
            return SC_ENOMEM;
        p->dec.evict = e;
        if (!(a = realloc(p->dec.admit, (size_t)c * 8)))
            return SC_ENOMEM;
        p->dec.admit = a;
        if (!(f = realloc(p->dec.prefetch, (size_t)c * 8)))
            return SC_ENOMEM;
        p->dec.prefetch = f;
        p->cap_dec = c;
    }
    push_keys(p, &p->dec.evict, &p->dec.n_evict, ev, n_ev);
    for (int64_t i = 0; i < n_ev; i++)
        if (p->flags[ev[i]] & F_PFU) { /* a prefetch evicted unread */
            p->flags[ev[i]] &= (uint8_t)~F_PFU;
            p->pend_x++;
        }
    for (int64_t i = 0; i < nnew; i++) {
        int32_t id = p->newv[i];
        if (!p->nkeep[i])
            continue;
        if (i < na) {
            p->dec.admit[p->dec.n_admit++] = sc_idmap_key_of(p->map, id);
        } else {
            p->dec.prefetch[p->dec.n_prefetch++] = sc_idmap_key_of(p->map, id);
            p->flags[id] |= F_PFU;
        }
    }
    /* the prefetcher's history: the past steps and the stream */
    if (p->pf && p->prm.prefetch_budget > 0) {
        if (n > p->recent_cap) {
            int64_t nc = n * 2;
            int32_t *r = malloc((size_t)(nc * p->prm.past_steps) * sizeof(int32_t));
            if (!r)
                return SC_ENOMEM;
            for (int64_t s = 0; s < p->prm.past_steps; s++)
                if (p->recent_n[s])
                    memcpy(r + s * nc, p->recent + s * p->recent_cap, (size_t)p->recent_n[s] * 4);
            free(p->recent);
            p->recent = r;
            p->recent_cap = nc;
        }
        int64_t at = p->recent_head;
        if (n)
            memcpy(p->recent + at * p->recent_cap, ids, (size_t)n * 4);
        p->recent_n[at] = n;
        p->recent_head = (at + 1) % p->prm.past_steps;
        if (p->recent_len < p->prm.past_steps)
            p->recent_len++;
        if (n && (rc = sc_runs_push(&p->runs, b, p->s_n, p->s_mask + 1)))
            return rc;
        for (int64_t i = 0; i < n; i++) {
            int64_t q = p->s_n++;
            p->s_ids[q & p->s_mask] = ids[i];
            p->lastpos[ids[i]] = (int32_t)(q & p->s_mask);
        }
    }
    /* rows used for the first time (the records made for them have a use: this step's) keep no record:
     * their use's step is offset b - rs_base, within rs_span */
    for (int64_t j = 0; j < n_first; j++) {
        int32_t id = ids[p->gone[j]];
        if ((rc = rec_free(p, p->rs[id])))
            return rc;
        p->rs[id] = (int32_t)(-2 - (b - p->rs_base));
    }
    return forget_old(p, b, 2 * n + 64);
}

const lp_decision *lp_decision_of(const lp_policy *p) { return &p->dec; }

int lp_share_key_map(lp_policy *p) { return sc_idmap_set_shared(p->map); }

sc_idmap *lp_key_map(lp_policy *p) { return p->map; }

/* the step's id of a key, or -1: not mapped, or (a shared map) mapped for the mirror alone */
static inline int32_t own_id(const lp_policy *p, int64_t key)
{
    int32_t id;
    sc_idmap_find(p->map, &key, 1, &id);
    return id >= 0 && id < p->n_rows && !(p->flags[id] & F_FREE) ? id : -1;
}

int lp_announce(lp_policy *p, const int64_t *keys, int64_t n)
{
    if (n < 0 || (n > 0 && !keys))
        return SC_EARG;
    p->n_ann = 0;
    if (grow_buf((void **)&p->ann, &p->cap_ann, n + 1, sizeof(int32_t)) != SC_OK)
        return SC_ENOMEM;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = own_id(p, keys[i]);
        if (id >= 0)
            p->ann[p->n_ann++] = id;
    }
    return SC_OK;
}

int lp_rejected(lp_policy *p, const int64_t *keys, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t id = own_id(p, keys[i]);
        if (id >= 0) {
            set_del(p, &p->sets[0], id);
            p->flags[id] &= (uint8_t)~F_PFU; /* not inserted (or evicted by the driver): no outcome */
        }
    }
    return SC_OK;
}

int64_t lp_early_victims(lp_policy *p, int64_t n, const int64_t *reading, int64_t m, int64_t *out)
{
    lp_set *s = &p->sets[0];
    if (n <= 0 || s->n == 0)
        return 0;
    if (grow_buf((void **)&p->sel, &p->cap_sel, s->n, sizeof(lp_cand)) != SC_OK)
        return SC_ENOMEM;
    for (int64_t i = 0; i < m; i++) {
        int32_t id = own_id(p, reading[i]);
        if (id >= 0)
            p->flags[id] |= F_MPAST;
    }
    double now = (double)p->t, den = fabs(now) + 2.0;
    int64_t k = 0;
    for (int64_t i = 0; i < s->n; i++) {
        int32_t id = s->ids[i];
        if (p->flags[id] & F_MPAST)
            continue;
        p->sel[k++] = cand_of(keep_key(p, 0, s->cl[i], st_unpack(p, s->st[i]), lv_at(s, i), now, den), id);
    }
    for (int64_t i = 0; i < m; i++) { /* the marks go */
        int32_t id = own_id(p, reading[i]);
        if (id >= 0)
            p->flags[id] &= (uint8_t)~F_MPAST;
    }
    int64_t take = n < k ? n : k;
    if (take < k)
        select_k(p->sel, k, take);
    sort_cand(p->sel, take);
    for (int64_t i = 0; i < take; i++)
        out[i] = sc_idmap_key_of(p->map, (int32_t)p->sel[i].lo);
    sel_release(p, k);
    return take;
}

void lp_resident_of(const lp_policy *p, const int64_t *keys, int64_t n, uint8_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t id = own_id(p, keys[i]);
        out[i] = id >= 0 && (p->flags[id] & F_RES);
    }
}

void lp_get_census(const lp_policy *p, lp_census *out)
{
    memset(out, 0, sizeof(*out));
    for (int64_t id = 0; id < p->n_rows; id++) {
        uint8_t f = p->flags[id];
        if (f & F_FREE)
            continue;
        int32_t v = p->rs[id];
        out->ids++;
        if (f & F_RES) {
            out->resident++;
            out->resident_records += v >= 0;
        } else if (f & (F_SH0 | F_SH1)) {
            out->shadow_only++;
            out->shadow_records += v >= 0;
        } else {
            out->other_records += v >= 0;
            out->other_once += v <= -2;
            out->other_never += v == -1;
        }
    }
}

void lp_get_stats(const lp_policy *p, lp_stats *out)
{
    out->lru_misses = p->lru_misses;
    out->model_misses = p->model_misses;
    out->lru_steps = p->lru_steps;
    out->lru_order = p->recency_only;
    out->stamp_only = p->stamp_only;
    out->rows = sc_idmap_held(p->map, SC_HOLDER_POLICY) + p->once.n;
    out->once_rows = p->once.n;
    out->moved = p->moved;
    out->back = p->back;
    out->records = p->n_recs - p->n_free_recs;
    out->forgotten = p->forgotten;
    out->resident = p->sets[0].n;
    out->pf_useful = p->pf_useful;
    out->pf_useless = p->pf_useless;
    out->pf_throttled = p->pf_throttled_steps;
    out->pf_asked = p->pf_asked;
    /* flags, record index or once-used step, last stream slot (with a prefetcher), place in the cache;
     * the records apart */
    int64_t per_row = 1 + 4 + (p->lastpos ? 4 : 0) + 4;
    int64_t per_slot = 4 + 2 + 4 + (p->lv_on ? 4 : 0); /* id, class, stamp, level */
    out->map_bytes = sc_idmap_bytes(p->map);
    out->row_bytes = p->cap_rows * per_row;
    out->record_bytes = p->cap_recs * (int64_t)sizeof(cm_row) + p->cap_free_recs * 4;
    out->ring_bytes = (p->s_ids ? (p->s_mask + 1) * 4 : 0) + sc_runs_bytes(&p->runs);
    out->once_bytes = sc_once_bytes(&p->once);
    out->plan_bytes = p->cap_sel * (int64_t)sizeof(lp_cand);
    int64_t bytes = out->map_bytes + out->row_bytes + out->record_bytes + out->ring_bytes + out->once_bytes +
                    p->hcap * 8;
    for (int k = 0; k < 3; k++)
        bytes += per_slot * p->sets[k].cap + (p->sets[k].pkey ? (p->sets[k].pmask + 1) * 8 : 0);
    out->bytes = bytes;
}
