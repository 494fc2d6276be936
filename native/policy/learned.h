/* learned: the whole step of RecMG's learned policies in C, one call a step.
 *
 * recmgd/models/policies.py (LearnedPolicy) is the reference this follows step for step; the bridge is
 * recmgd/models/native_step.py. One lp_step call takes a step's deduplicated keys and whether each was
 * resident, and does everything the policy does: key -> dense id, the rows' history features and the
 * caching model's scores (cachemodel.c), their hazard class, the guard's two shadow caches, admission,
 * the prefetching model's candidates and scores, and the eviction plan; the decision is then in
 * lp_decision (keys, not ids). Eviction order: the lowest keep score first, ties broken by the dense id
 * (residents) before the step's new rows (in the order they are offered), so decisions are deterministic.
 * Ids are first come, first numbered, until a recency window gives some back (rows it forgets, and rows
 * used once that move to the once table, once.h): a row that comes back may get another id, so with a
 * window the ties can go otherwise than in the Python step, which keeps every row.
 * Functions return SC_OK or a negative SC_E* code (simcore.h), constructors NULL.
 */
#ifndef RECMG_LEARNED_H
#define RECMG_LEARNED_H

#include <stdint.h>

#include "simcore.h"

#define LP_ORDER_LEVEL 0
#define LP_ORDER_HAZARD 1
/* the prefetching model's largest shapes (fixed buffers): representation width, hidden units,
 * queries x width */
#define LP_MAX_DIM 64
#define LP_MAX_HIDDEN 256
#define LP_MAX_QUERY_FLOATS 1024

typedef struct {
    int64_t capacity;
    int32_t use_cache_model;  /* score rows with the caching model (lp_set_cache_net) */
    int32_t order;            /* LP_ORDER_LEVEL or LP_ORDER_HAZARD (lp_set_hazard) */
    int32_t levels;           /* keep levels of the keep-probability */
    int32_t guard;            /* the two shadow caches (with the caching model only) */
    int32_t guard_sample;     /* shadows watch one row in this many (a power of two) ... */
    int32_t guard_min_rows;   /* ... on tiers of at least guard_sample x this */
    int32_t prefetch_budget;  /* rows a step the prefetching model may propose (0: off) */
    int32_t prefetch_probe;   /* after prefetch_idle idle steps, asked every prefetch_probe-th step */
    int32_t prefetch_idle;
    int32_t depth;            /* stream followers a trigger proposes */
    int32_t past_steps;       /* steps in the prefetching model's past context */
    int32_t window;           /* prefetch lookahead (steps), kept for the record */
    int32_t step_len_known;   /* step_len is the checkpoint's mean rows a step (else: running mean) */
    int32_t row_bits;         /* a key's table is key >> row_bits */
    double horizon;           /* cache turnovers the top keep level is worth */
    double step_len;
    double bypass;            /* a missed row below this keep-probability is not admitted when full */
    double prefetch_threshold;
    int64_t stream_ring;      /* stream positions kept for candidates (a power of two, <= 2^31) */
    int64_t history_window;   /* steps: a row neither resident (nor in a guard shadow or the stream ring)
                               * nor used in this many steps loses its history and id (0: kept forever;
                               * else more than past_steps); with no budget to prefetch, a row used once
                               * keeps its key and step in the once table instead of an id meanwhile */
    double prefetch_min_accuracy; /* feedback-directed throttling: while fewer than this share of the
                               * prefetches lately were read before their eviction (a decaying count,
                               * once LP_PF_MIN_OUTCOMES outcomes are in), the prefetcher is asked only
                               * every prefetch_throttled_probe-th step (0: never throttled for accuracy) */
    int32_t prefetch_throttled_probe;
} lp_params;

/* outcomes of prefetches (read, or evicted unread) the accuracy needs before it can throttle; the counts
 * decay by 1/2^LP_PF_DECAY_SHIFT a step and are kept in units of 2^LP_PF_SCALE_SHIFT (integers: the
 * Python step, recmgd.models.policies, computes the very same numbers) */
#define LP_PF_MIN_OUTCOMES 32
#define LP_PF_DECAY_SHIFT 6
#define LP_PF_SCALE_SHIFT 10

/* The prefetching model's inference weights (recmgd.models.nets.NumpyPrefetchNet), row-major float32:
 * emb (n_model + 1) x dim (the last row: unknown), f1w N_FEATURES x hidden, f1b hidden, f2w hidden x dim,
 * f2b dim, tab n_table_slots x dim, c1w 2dim x hidden, c1b hidden, c2w hidden x (queries dim), c2b
 * queries dim, p1w (N_FEATURES + 3) x hidden, p1b hidden, p2w hidden; model_keys the n_model keys the
 * embeddings belong to. lp_set_prefetch_net copies all but emb, the one array that grows with the model's
 * rows: emb is borrowed and must stay valid, unchanged, until lp_free or the next lp_set_prefetch_net. */
typedef struct {
    int32_t dim, hidden, queries, n_table_slots;
    int64_t n_model;
    const int64_t *model_keys;
    const float *emb, *f1w, *f1b, *f2w, *f2b, *tab, *c1w, *c1b, *c2w, *c2b, *p1w, *p1b, *p2w;
    float p2b, temp;
} lp_pfnet;

typedef struct {
    int64_t *evict;
    int64_t *admit;
    int64_t *prefetch;
    int64_t n_evict;
    int64_t n_admit;
    int64_t n_prefetch;
} lp_decision;

typedef struct {
    int64_t lru_misses;    /* the guard's LRU shadow */
    int64_t model_misses;  /* the guard's model-order shadow */
    int64_t lru_steps;     /* steps the real cache spent in LRU order */
    int64_t lru_order;     /* 1 while the real cache is held in LRU order (after the last step), else 0 */
    int64_t stamp_only;    /* uses not scored (read resident while in LRU order, outside the guard's sample) */
    int64_t rows;          /* rows with a history now */
    int64_t records;       /* ... of which used more than once (a full record; the others keep 12 bytes) */
    int64_t once_rows;     /* ... of which used once and kept in the once table, with no id (once.h) */
    int64_t moved;         /* rows moved to the once table so far */
    int64_t back;          /* ... and read again within the window, their use given back */
    int64_t forgotten;     /* histories dropped by the recency window so far */
    int64_t resident;      /* rows the policy believes resident */
    int64_t bytes;         /* memory held by the policy's state (its key map included; allocated) */
    int64_t map_bytes;     /* ... of which the key map */
    int64_t row_bytes;     /* ... the per-row arrays (flags, last use, record index, stream slot, place) */
    int64_t record_bytes;  /* ... the history records */
    int64_t ring_bytes;    /* ... the stream ring */
    int64_t once_bytes;    /* ... the once table */
    int64_t pf_useful;     /* prefetched rows read before their eviction */
    int64_t pf_useless;    /* prefetched rows the plan evicted unread */
    int64_t pf_throttled;  /* steps the prefetcher was throttled for accuracy */
    int64_t pf_asked;      /* steps the prefetcher ran (its cost) */
    int64_t plan_bytes;    /* the plan's candidate buffer, allocated (not in bytes: a plan touches the part it
                            * writes; one that lists every resident of a large set lets it go after) */
} lp_stats;

/* what the rows that hold an id are (lp_get_census): resident (and of those, with a history record), in a
 * guard shadow only (with a record), and the others: with a record (used more than once within the
 * window), used once (waiting for the window's sweep), never used */
typedef struct {
    int64_t ids;
    int64_t resident, resident_records;
    int64_t shadow_only, shadow_records;
    int64_t other_records, other_once, other_never;
} lp_census;

typedef struct lp_policy lp_policy;
struct cm_net;
lp_policy *lp_new(const lp_params *prm);
void lp_free(lp_policy *p);
/* the caching model (not copied: it must outlive the policy); NULL: none */
int lp_set_cache_net(lp_policy *p, const struct cm_net *net, int32_t n_table_slots);
/* the hazard order: table (n_classes x HZ_AGE_BUCKETS, already quantised), class edges of the keep
 * probability (n_p) and of the predicted log1p reuse distance (n_nu); copied */
int lp_set_hazard(lp_policy *p, const double *table, int64_t n_classes, const double *p_edges, int32_t n_p,
                  const double *nu_edges, int32_t n_nu);
int lp_set_prefetch_net(lp_policy *p, const lp_pfnet *w);
/* lookahead: the keys announced for the next steps (deduplicated, nearest step first), for the next
 * lp_step only: those with a history seed the prefetcher's candidates (what followed them last time) */
int lp_announce(lp_policy *p, const int64_t *keys, int64_t n);
/* one step: keys deduplicated, hit[i] = resident when read */
int lp_step(lp_policy *p, const int64_t *keys, const uint8_t *hit, int64_t n);
const lp_decision *lp_decision_of(const lp_policy *p);
/* make the step's key map shared (sc_idmap_set_shared), before its first step: the daemon's mirror then
 * keeps its rows in it too (lp_key_map; holder SC_HOLDER_MOVER, on the thread that steps), and a row the
 * step forgets stays mapped while the mirror holds it; SC_OK, SC_ENOMEM or SC_EARG (keys mapped already) */
int lp_share_key_map(lp_policy *p);
/* the step's key map, for the mirror that shares it (valid until lp_free) */
sc_idmap *lp_key_map(lp_policy *p);
/* the driver did not insert (or evicted itself) these keys: no longer resident */
int lp_rejected(lp_policy *p, const int64_t *keys, int64_t n);
/* up to n resident keys with the lowest keep score as of the last step, lowest first, none of them in
 * reading (m keys); returns how many were written to out, or a negative SC_E* */
int64_t lp_early_victims(lp_policy *p, int64_t n, const int64_t *reading, int64_t m, int64_t *out);
/* out[i] = 1 when keys[i] is resident in the policy's view */
void lp_resident_of(const lp_policy *p, const int64_t *keys, int64_t n, uint8_t *out);
void lp_get_stats(const lp_policy *p, lp_stats *out);
/* the census of the rows with an id: one pass over every id (for tools and tests, not for each step) */
void lp_get_census(const lp_policy *p, lp_census *out);
/* horizon (and the keep-level unit with it) between runs, for tuning */
void lp_set_horizon(lp_policy *p, double horizon);
/* the eviction plan's filter of the residents in AVX2 when on and the CPU has it (the default), else
 * portable C; both give the same decisions. Returns whether AVX2 is used now. */
int lp_set_simd(lp_policy *p, int on);
/* A row used once keeps the step of its use as an int32 offset from a base that moves once the steps
 * pass the base by more than this span (LP_RS_SPAN, the default and the most); a row used once before
 * the new base gets its full record then, so decisions do not depend on the span. A smaller span
 * (at least 2) moves the base more often: for tests. SC_EARG out of range. */
#define LP_RS_SPAN 536870912 /* 2^29 (the sets keep stamps as int32 half steps from the base) */
int lp_set_rs_span(lp_policy *p, int64_t steps);

#endif
