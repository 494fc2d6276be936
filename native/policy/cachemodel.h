/* cachemodel: RecMG's caching model at inference, in C (recmgd/models/fastinfer.py is the bridge).
 *
 * The per-row history (recmgd.models.features.RowHistory) stays in the caller's arrays; cm_rows only
 * points at them, so the numpy reference path and this one read and write the very same state. A step's
 * rows are featurised (FEATURE_VERSION 1: the column order of features.FEATURE_NAMES) and scored by the
 * caching MLP (13 -> hidden -> hidden -> 2, ReLU) one row at a time, single-threaded, no allocation.
 * Functions return SC_OK or a negative SC_E* code (simcore.h).
 */
#ifndef RECMG_CACHEMODEL_H
#define RECMG_CACHEMODEL_H

#include <stdint.h>

#define CM_FEATURE_VERSION 1
#define CM_N_GAPS 4
#define CM_N_HALF_LIVES 3
#define CM_N_FEATURES 13 /* is_new, log_gap, log_count, log_age, 4 gaps, 3 decays, log_mean_gap, gap/mean */
#define CM_N_OUT 2
#define CM_MAX_HIDDEN 256

/* One row's history: features.ROW_DTYPE, field for field (a 24-byte record). Steps are kept as int32
 * offsets from the view's base (cm_rows.base; CM_NEVER: no use yet). The sum of the gaps is last - first.
 * The previous gaps are kept as steps (at most CM_GAP_MAX: a longer gap reads as that) and their log1p
 * taken when read. The decayed counters are IEEE binary16 (numpy's float16: the update computes in double,
 * rounds to float, then to half, to nearest even). The count is exact up to CM_COUNT_MAX uses; the use
 * past it halves it and brings the first use forward to halve the age, so the mean gap (last - first) /
 * (count - 1) stays about what it was. A row's table is not in its record: the caller hands the tables of
 * the rows it scores to cm_score. */
#define CM_NEVER (-2147483648) /* INT32_MIN, spelled so that the cffi cdef reads it */
#define CM_GAP_MAX 65535
#define CM_COUNT_MAX 65535
typedef struct {
    int32_t last;                  /* step of last use - base, CM_NEVER = never */
    int32_t first;                 /* step of first use - base */
    uint16_t count;                /* uses (at most CM_COUNT_MAX) */
    uint16_t dec[CM_N_HALF_LIVES]; /* decayed use counters, binary16 bits */
    uint16_t gaps[CM_N_GAPS];      /* the previous gaps (steps, at most CM_GAP_MAX), most recent first */
} cm_row;

/* ask for a record's lines (a 24-byte record lies across two lines in three places of eight; a macro on one
 * line: the cffi cdef drops # lines, not function bodies) */
#define CM_PREFETCH_ROW(row) (__builtin_prefetch(row), __builtin_prefetch((const char *)(row) + sizeof(cm_row) - 1))

/* A view of a RowHistory's records; the caller owns the memory. */
typedef struct {
    cm_row *row;     /* cap records */
    int64_t cap;     /* ids must be in [0, cap) */
    int64_t base;    /* the step a record's offset 0 stands for */
    int32_t n_table_slots; /* table embeddings; a row's slot is its table mod this (non-negative) */
    int32_t reserved;
    double rate[CM_N_HALF_LIVES]; /* decay per step: ln 2 / half-life */
    const struct cm_lut *lut;     /* optional (NULL: computed): log1p of small integers */
} cm_rows;

/* log1pf(i) and (float)log1p((double)i) for i < CM_LUT_N, computed by the very functions the features
 * use, so a lookup gives the same bits as the call it replaces (gaps, counts and ages are integers);
 * after cm_lut_set_rates, also the decayed counters' factors exp(-i rate[k]) at integer gaps i, which
 * views with exactly those rates look up. */
#define CM_LUT_N 4096
typedef struct cm_lut cm_lut;
cm_lut *cm_lut_new(void);
void cm_lut_free(cm_lut *lut);
/* rate: CM_N_HALF_LIVES decay rates (a view's rate) */
void cm_lut_set_rates(cm_lut *lut, const double *rate);
/* out[i] = (float)log1p(x[i]) for x[i] >= 0 the way the features compute it (lut: the table's fast way,
 * bit for bit libm's; NULL: libm) */
void cm_log1p(const cm_lut *lut, const double *x, int64_t n, float *out);

typedef struct cm_net cm_net;
/* A copy of the caching MLP's weights: w1 (CM_N_FEATURES x hidden, the feature scale folded in),
 * tb (n_table_slots x hidden, the table embedding plus lin1's bias), w2 (hidden x hidden), b2 (hidden),
 * w3 (hidden x CM_N_OUT), b3 (CM_N_OUT); all row-major float32. NULL on a bad size or out of memory. */
cm_net *cm_net_new(int32_t hidden, int32_t n_table_slots, const float *w1, const float *tb, const float *w2,
                   const float *b2, const float *w3, const float *b3);
void cm_net_free(cm_net *net);
/* on = 1: the AVX2/FMA forward pass where the CPU has it (the default), 0: the portable one, -1: ask;
 * returns whether the AVX2 pass is in use (the two differ by float rounding only) */
int cm_net_simd(cm_net *net, int on);

/* feats (n x CM_N_FEATURES) of rows ids as of step now (before its use); now and the steps of uses must
 * lie within int32 of the view's base (SC_EARG otherwise) */
int cm_features(const cm_rows *r, const int64_t *ids, int64_t n, int64_t now, float *feats);
/* record one use at step now of each (distinct) row */
int cm_update(cm_rows *r, const int64_t *ids, int64_t n, int64_t now);
/* out (n x CM_N_OUT): keep logit and predicted log1p(steps to next use) of rows ids, of tables tables[0..n)
 * (the rows' table ids, key >> row bits), as of step now; feats (n x CM_N_FEATURES) gets their features
 * when not NULL; then, when update is non-zero, records the use of each (distinct) row at step now as
 * cm_update does */
int cm_score(const cm_net *net, cm_rows *r, const int64_t *ids, const int64_t *tables, int64_t n, int64_t now,
             int update, float *out, float *feats);

#endif
