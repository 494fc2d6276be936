/* simcore internals: the policy object, per-id arrays, lists and the indexed heap. */
#ifndef RECMG_SIMCORE_INTERNAL_H
#define RECMG_SIMCORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hazard.h"
#include "simcore.h"

/* A 64-bit mixer (splitmix64's finaliser): hash slots of the id map, the step dedup and the prefetch tables.
 * A bijection (each step is: the multipliers are odd), which the once table relies on. */
#define MIX64_M1 0xbf58476d1ce4e5b9ULL
#define MIX64_M2 0x94d049bb133111ebULL
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= MIX64_M1;
    x ^= x >> 27;
    x *= MIX64_M2;
    x ^= x >> 31;
    return x;
}

/* the hazard order's age bucket: min(floor(2 log2 max(a, 1)), HZ_AGE_BUCKETS - 1), from a's bits: a = 1.f 2^E,
 * so 2 log2 a = 2E + 2 log2 1.f, and that second term is 1 or more exactly when 1.f >= sqrt 2 (as
 * recmgd.models.hazard.age_bucket decides it: frexp's m = 1.f / 2 against the double sqrt(0.5), which is
 * exactly half the double sqrt(2)); learned.c's AVX2 plan filter computes the same from the same bits */
#define HZ_SQRT2_MANT 0x6A09E667F3BCDULL /* the mantissa bits of the double sqrt(2) */
#define HZ_MANT_MASK 0xFFFFFFFFFFFFFULL
static inline int64_t hz_age_bucket(double age)
{
    if (!(age >= 1.0))
        return 0;
    uint64_t u;
    memcpy(&u, &age, sizeof(u));
    int64_t b = 2 * ((int64_t)(u >> 52) - 1023) + ((u & HZ_MANT_MASK) >= HZ_SQRT2_MANT);
    return b < HZ_AGE_BUCKETS - 1 ? b : HZ_AGE_BUCKETS - 1;
}

int32_t sc_idmap_get(sc_idmap *m, int64_t key);
int64_t sc_idmap_key_of(const sc_idmap *m, int32_t id);
/* get or add one key for SC_HOLDER_POLICY, *is_new = 1 when it was added (a deleted key's id is handed
   out again first) or, on a shared map, when the policy did not hold it yet */
int32_t sc_idmap_get_new(sc_idmap *m, int64_t key, int *is_new);
/* sc_idmap_get_new of keys[0..n) in order into ids and is_new, the slots of later keys prefetched; SC_ENOMEM */
int sc_idmap_get_new_many(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids, uint8_t *is_new);
/* ask for the line of key's home slot (a caller that will look key up soon) */
void sc_idmap_prefetch(const sc_idmap *m, int64_t key);
/* forget one key (nothing when it is not mapped); its id goes to the free list; SC_ENOMEM */
int sc_idmap_del(sc_idmap *m, int64_t key);

enum sc_kind { K_LRU, K_LFU, K_S3FIFO, K_OPT, K_OPT_BYPASS, K_STMS, K_DOMINO, K_BINGO };

#define SC_NOLIST 255
#define SC_MAX_ARRAYS 24

typedef struct {
    void **ptr;
    size_t elem;
    int fill; /* byte each new element is filled with */
} sc_array;

typedef struct {
    int32_t head, tail; /* head: most recent */
    int64_t size;
} sc_list;

typedef struct {
    int32_t *v;
    int64_t n, cap;
} sc_vec;

typedef struct {
    uint64_t tag; /* region key + 1, 0 = empty */
    int64_t trigger;
    uint64_t footprint;
} sc_at_entry;

typedef struct {
    uint64_t tag; /* event + 1, 0 = empty */
    uint64_t footprint;
} sc_pht_entry;

/* a step's marks of an id: inserted in this step; evicted in this step; already in the decision */
#define SC_MK_INS 1
#define SC_MK_EV 2
#define SC_MK_OUT 4

struct sc_policy {
    enum sc_kind kind;
    sc_idmap *map;
    int64_t capacity;
    sc_params prm;
    int64_t stamp; /* step counter, from 1 */

    /* per-id arrays */
    sc_array arrays[SC_MAX_ARRAYS];
    int n_arrays;
    int64_t n_alloc;
    uint8_t *res;
    uint8_t *mk; /* this step's marks (SC_MK_*), cleared at the next step's start through `marked` */
    int64_t n_res;
    sc_vec marked; /* ids with a mark set since the step began */

    /* decision */
    sc_vec ev, ad, pf;
    sc_decision dec;

    /* giving ids back (sc_policy_set_release): ids that may hold no state, checked by sc_policy_release */
    int release;
    sc_vec freed;

    /* lists (LRU, S3-FIFO small/main) */
    int32_t *prv, *nxt;
    uint8_t *qid;
    sc_list lists[2];

    /* indexed min-heap (LFU, OPT) */
    int32_t *heap;
    int64_t heap_n, heap_cap;
    int32_t *hpos;
    int64_t *hkey;

    /* LFU */
    int64_t *count;
    /* S3-FIFO */
    uint8_t *freq;
    int64_t *ghost;
    int64_t gseq, ghost_cap, small_cap;
    int32_t *gring; /* with release: the id given ghost sequence g at gring[g % ghost_cap] (-1: none) */

    /* OPT */
    int32_t *fut_ids;
    int64_t *fut_off;
    int64_t *prio; /* per occurrence */
    int64_t fut_steps, cursor;

    /* prefetchers */
    uint8_t *pfd;           /* prefetched, not read yet (policy's view) */
    int64_t *cand_stamp;    /* candidate already chosen this step */
    sc_vec cand, trig;
    int32_t *hist;
    uint64_t hmask;
    int64_t hpos_w;         /* next history write position */
    int64_t *last;          /* STMS: id -> last history position + 1 */
    int64_t *pair_key, *pair_pos;
    uint64_t pmask;
    int32_t prev_trig;
    /* Bingo */
    sc_at_entry *at;
    uint64_t at_mask;
    sc_pht_entry *pht_long, *pht_short;
    uint64_t pht_mask;
};

int sc_vec_push(sc_vec *v, int32_t x);
int sc_grow(sc_policy *p, int64_t need);
int sc_register(sc_policy *p, void *ptr, size_t elem, int fill);

/* with release on: id may hold no state any more (sc_policy_release checks it); SC_ENOMEM */
static inline int sc_maybe_free(sc_policy *p, int32_t id)
{
    return p->release ? sc_vec_push(&p->freed, id) : SC_OK;
}

/* base residency bookkeeping: record the net decision */
int sc_base_insert(sc_policy *p, int32_t id, int prefetch);
int sc_base_evict(sc_policy *p, int32_t id);

/* lists */
void sc_list_push_head(sc_policy *p, int l, int32_t id);
void sc_list_remove(sc_policy *p, int32_t id);

/* heap */
int sc_heap_push(sc_policy *p, int32_t id, int64_t key);
int32_t sc_heap_pop(sc_policy *p);
void sc_heap_remove(sc_policy *p, int32_t id);
void sc_heap_update(sc_policy *p, int32_t id, int64_t key);

/* kinds */
int sc_cache_init(sc_policy *p);
/* the victim, unlinked; -1 on SC_ENOMEM */
int32_t sc_cache_victim(sc_policy *p);
int sc_cache_touch(sc_policy *p, int32_t id);
int sc_cache_insert(sc_policy *p, int32_t id, int prefetch);
int sc_cache_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n);
void sc_cache_forget(sc_policy *p, int32_t id);
/* state a non-resident id still holds: S3-FIFO's ghost (LRU: none); the prefetchers': STMS's history */
int sc_cache_holds(const sc_policy *p, int32_t id);
int sc_cache_set_release(sc_policy *p);
int sc_prefetch_holds(const sc_policy *p, int32_t id);
int sc_opt_step(sc_policy *p, const int32_t *ids, int64_t n);
int sc_opt_set_future(sc_policy *p, const int32_t *ids, const int64_t *offsets, int64_t n_steps);
int sc_prefetch_init(sc_policy *p);
int sc_prefetch_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n);
void sc_prefetch_free(sc_policy *p);

#endif
