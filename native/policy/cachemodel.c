/* cachemodel: per-row history features and the caching MLP of RecMG, one step's rows per call.
 *
 * The arithmetic follows recmgd/models/features.py (RowHistory.features/update) and nets.NumpyCacheNet
 * operation by operation, in the same precisions (float32, except the decayed counters and the age,
 * which numpy computes in float64), so the two paths agree to float rounding; the records they write
 * (the decayed counters rounded to float, then to binary16) are the same bits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cachemodel.h"
#include "simcore.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CM_HAVE_AVX2 1
#else
#define CM_HAVE_AVX2 0
#endif

/* The MLP with the hidden width padded to a multiple of CM_PAD (zero weights: the padded units stay 0),
 * so the inner loops run in fixed blocks: CM_BLOCK floats the compiler vectorises (SSE2), or, where the
 * CPU has AVX2 and FMA, four 8-float registers at a time (mlp_avx2). */
#define CM_BLOCK 8
#define CM_PAD 32

struct cm_net {
    int32_t hidden;  /* padded width */
    int32_t n_table_slots;
    int32_t simd;    /* use mlp_avx2 */
    int32_t has_simd;
    size_t n_data;   /* floats in data */
    float *w1;  /* CM_N_FEATURES x hidden */
    float *tb;  /* n_table_slots x hidden */
    float *w2;  /* hidden x hidden */
    float *b2;  /* hidden */
    float *w3t; /* CM_N_OUT x hidden (transposed) */
    float b3[CM_N_OUT];
    float data[];
};

cm_net *cm_net_new(int32_t hidden, int32_t n_table_slots, const float *w1, const float *tb, const float *w2,
                   const float *b2, const float *w3, const float *b3)
{
    if (hidden <= 0 || hidden > CM_MAX_HIDDEN || n_table_slots <= 0 || n_table_slots > 1 << 20 || !w1 ||
        !tb || !w2 || !b2 || !w3 || !b3)
        return NULL;
    size_t h = (size_t)hidden;
    size_t hp = (h + CM_PAD - 1) / CM_PAD * CM_PAD;
    size_t total = CM_N_FEATURES * hp + (size_t)n_table_slots * hp + hp * hp + hp + CM_N_OUT * hp;
    cm_net *net = calloc(1, sizeof(*net) + total * sizeof(float));
    if (!net)
        return NULL;
    net->hidden = (int32_t)hp;
    net->n_table_slots = n_table_slots;
    net->n_data = total;
#if CM_HAVE_AVX2
    __builtin_cpu_init();
    net->has_simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    net->simd = net->has_simd;
    float *p = net->data;
    net->w1 = p, p += CM_N_FEATURES * hp;
    net->tb = p, p += (size_t)n_table_slots * hp;
    net->w2 = p, p += hp * hp;
    net->b2 = p, p += hp;
    net->w3t = p;
    for (size_t i = 0; i < CM_N_FEATURES; i++)
        memcpy(net->w1 + i * hp, w1 + i * h, h * sizeof(float));
    for (size_t i = 0; i < (size_t)n_table_slots; i++)
        memcpy(net->tb + i * hp, tb + i * h, h * sizeof(float));
    for (size_t i = 0; i < h; i++)
        memcpy(net->w2 + i * hp, w2 + i * h, h * sizeof(float));
    memcpy(net->b2, b2, h * sizeof(float));
    for (size_t i = 0; i < h; i++)
        for (size_t k = 0; k < CM_N_OUT; k++)
            net->w3t[k * hp + i] = w3[i * CM_N_OUT + k];
    memcpy(net->b3, b3, CM_N_OUT * sizeof(float));
    return net;
}

void cm_net_free(cm_net *net)
{
    free(net);
}

int cm_net_simd(cm_net *net, int on)
{
    if (on >= 0)
        net->simd = on && net->has_simd;
    return net->simd;
}

/* the fast (float)log1p(x) of a double x >= 0 (lut_log1p): log(1 + x) = k ln 2 + log c_i + log1p(r), with
 * 1 + x = 2^k m, c_i = 1 + i / LOG_BINS the left edge of m's bin, r = (m - c_i) / c_i in [0, 1 / LOG_BINS) */
#define LOG_BINS 128
#define LOG_BIN_SHIFT 45 /* 52 mantissa bits, the top 7 pick the bin */

struct cm_lut {
    double inv[LOG_BINS];  /* 1 / c_i, rounded */
    double logc[LOG_BINS]; /* log c_i */
    float f[CM_LUT_N]; /* log1pf(i) */
    float d[CM_LUT_N]; /* (float)log1p((double)i) */
    int32_t has_rates;
    double rate[CM_N_HALF_LIVES];
    double ex[CM_N_HALF_LIVES][CM_LUT_N]; /* exp(-(double)(float)i * rate[k]), as row_features has it */
};

cm_lut *cm_lut_new(void)
{
    cm_lut *lut = malloc(sizeof(*lut));
    if (!lut)
        return NULL;
    for (int i = 0; i < CM_LUT_N; i++) {
        lut->f[i] = log1pf((float)i);
        lut->d[i] = (float)log1p((double)i);
    }
    for (int i = 0; i < LOG_BINS; i++) {
        lut->inv[i] = 1.0 / (1.0 + (double)i / LOG_BINS);
        lut->logc[i] = log(1.0 + (double)i / LOG_BINS);
    }
    lut->has_rates = 0;
    return lut;
}

void cm_lut_set_rates(cm_lut *lut, const double *rate)
{
    for (int k = 0; k < CM_N_HALF_LIVES; k++) {
        lut->rate[k] = rate[k];
        for (int i = 0; i < CM_LUT_N; i++)
            lut->ex[k][i] = exp(-(double)(float)i * rate[k]);
    }
    lut->has_rates = 1;
}

/* the decay factors of view r's rates, or NULL when its table has none or other ones */
static const double *decay_lut(const cm_rows *r)
{
    const cm_lut *lut = r->lut;
    if (!lut || !lut->has_rates)
        return NULL;
    for (int k = 0; k < CM_N_HALF_LIVES; k++)
        if (memcmp(&lut->rate[k], &r->rate[k], sizeof(double)) != 0)
            return NULL;
    return &lut->ex[0][0];
}

void cm_lut_free(cm_lut *lut)
{
    free(lut);
}

/* (float)log1p(x) for a double x >= 0, bit for bit, in a fraction of libm's time. The sum below is
 * log1p(x) within 2^-50 of it, relative: its terms are positive (c / u aside, below 2^-53 of the sum);
 * m - c_i is exact (both in [1, 2)), so r is within 2^-52 of (m - c_i) / c_i; the series of log1p(r)
 * stops at r^7, whose rest is below r^7 / 8 <= 2^-52 of log1p(r); c is 1 + x's rounding error, exactly,
 * and log1p(c / u) is c / u within 2^-106. libm's log1p is within 2^-52 of log1p(x). So when y (1 -+
 * 2^-45) round to the same float, so do libm's result and y: that float is returned; else (a few calls
 * in 10^7) libm is asked. tests/test_models_fastinfer.py checks it against libm where floats round. */
static inline float lut_log1p(const cm_lut *lut, double x)
{
    double u = 1.0 + x;
    double c = x > 1.0 ? 1.0 - (u - x) : x - (u - 1.0); /* exact (Fast2Sum, the larger first) */
    uint64_t b;
    memcpy(&b, &u, sizeof(b));
    int k = (int)(b >> 52) - 1023;
    int i = (int)((b >> LOG_BIN_SHIFT) & (LOG_BINS - 1));
    uint64_t mb = (b & 0xFFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
    double m;
    memcpy(&m, &mb, sizeof(m));
    double r = (m - (1.0 + (double)i / LOG_BINS)) * lut->inv[i];
    double pr = 1.0 / 5 + r * (-1.0 / 6 + r * (1.0 / 7));
    pr = r * (1.0 + r * (-1.0 / 2 + r * (1.0 / 3 + r * (-1.0 / 4 + r * pr))));
    double y = ((double)k * 0.69314718055994530942 + lut->logc[i]) + (pr + c / u);
    float f = (float)y;
    if ((float)(y * (1.0 - 0x1p-45)) != f || (float)(y * (1.0 + 0x1p-45)) != f)
        return (float)log1p(x);
    return f;
}

/* (float)log1p(x), x >= 0: the table's way when there is one */
static inline float float_log1p(const cm_lut *lut, double x)
{
    return lut ? lut_log1p(lut, x) : (float)log1p(x);
}

void cm_log1p(const cm_lut *lut, const double *x, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = float_log1p(lut, x[i]);
}

/* log1pf(x) for x = (float)k, k an integer */
static inline float log1pf_int(const cm_lut *lut, int64_t k, float x)
{
    return lut && k >= 0 && k < CM_LUT_N ? lut->f[k] : log1pf(x);
}

static int check_ids(const cm_rows *r, const int64_t *ids, int64_t n)
{
    if (!r || !r->row || n < 0 || (n > 0 && !ids))
        return SC_EARG;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= r->cap)
            return SC_EBADID;
    return SC_OK;
}

/* now as an offset from the view's base (a record's step), or SC_EARG out of int32 */
static int offset_of(const cm_rows *r, int64_t now, int64_t *off)
{
    int64_t o = now - r->base;
    if (o <= CM_NEVER || o > INT32_MAX)
        return SC_EARG;
    *off = o;
    return SC_OK;
}

/* log1pf of a gap kept in a record (an integer up to CM_GAP_MAX) */
static inline float log1pf_gap(const cm_lut *lut, uint16_t g)
{
    return log1pf_int(lut, g, (float)g);
}

/* float -> binary16 bits, rounded to nearest even (numpy's float32 -> float16 cast, bit for bit) */
static inline uint16_t half_of(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) /* infinity, NaN */
        return (uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (x >= 0x477ff000u) /* 65520 and above round to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (x < 0x38800000u) { /* below 2^-14: a subnormal half, or 0 */
        float a, t;
        memcpy(&a, &x, sizeof(a));
        t = a + 0.5f; /* 0.5's ulp is 2^-24, the subnormals' step: the addition rounds a to it, to even */
        uint32_t b;
        memcpy(&b, &t, sizeof(b));
        return (uint16_t)(sign | (b - 0x3f000000u));
    }
    x -= 0x38000000u;                 /* the exponent's bias 127 -> 15 */
    x += 0x0fffu + ((x >> 13) & 1u); /* round the 13 bits dropped to nearest, ties to even (a carry
                                       * into the exponent is the right result) */
    return (uint16_t)(sign | (x >> 13));
}

/* binary16 bits -> float (exact) */
static inline float float_of_half(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float f = (float)m * 0x1p-24f;
        return sign ? -f : f;
    }
    x = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    float f;
    memcpy(&f, &x, sizeof(f));
    return f;
}

/* features.py RowHistory.features for one row at step now (an offset from the view's base); prod[k] (when
 * not NULL) gets dec[k] * exp(-gap * rate[k]), which the row's update at the same step reuses */
static void row_features(const cm_rows *restrict r, const double *restrict ex, int64_t id, int64_t now,
                         float *restrict f, double *restrict prod)
{
    const cm_row *row = r->row + id;
    const cm_lut *lut = r->lut;
    int64_t last = row->last;
    int seen = last != CM_NEVER;
    int64_t igap = seen ? now - last : 0;
    float gap = (float)igap;
    float count = (float)row->count;
    float lgap = log1pf_int(lut, igap, gap);
    f[0] = seen ? 0.0f : 1.0f;
    f[1] = lgap;
    int64_t icount = count >= 0.0f && count < (float)CM_LUT_N ? (int64_t)count : -1;
    f[2] = (float)icount == count ? log1pf_int(lut, icount, count) : log1pf(count);
    if (seen) {
        int64_t age = now - row->first;
        f[3] = lut && age >= 0 && age < CM_LUT_N ? lut->d[age] : float_log1p(lut, (double)age);
    } else {
        f[3] = 0.0f;
    }
    for (int k = 0; k < CM_N_GAPS; k++)
        f[4 + k] = log1pf_gap(lut, row->gaps[k]);
    const uint16_t *d = row->dec;
    for (int k = 0; k < CM_N_HALF_LIVES; k++) {
        /* a new row (gap 0) or an empty counter: exp(-0) = 1, log1p(0) = 0, exactly; ex: exp's results
         * at integer gaps, looked up */
        double x = (double)float_of_half(d[k]);
        if (gap > 0.0f && d[k] != 0)
            x *= ex && igap < CM_LUT_N ? ex[k * CM_LUT_N + igap] : exp(-(double)gap * r->rate[k]);
        f[4 + CM_N_GAPS + k] = x == 0.0 ? (float)x : float_log1p(lut, x); /* log1p(0) is 0 */
        if (prod)
            prod[k] = x;
    }
    float lmean = 0.0f, over = 0.0f;
    if (count > 1.0f) {
        /* the sum of the gaps is last - first (in float, as the float sum of integer gaps it replaced) */
        float ngaps = count - 1.0f > 1.0f ? count - 1.0f : 1.0f;
        lmean = log1pf((float)(last - row->first) / ngaps);
        over = lgap - lmean;
    }
    f[4 + CM_N_GAPS + CM_N_HALF_LIVES] = lmean;
    f[5 + CM_N_GAPS + CM_N_HALF_LIVES] = over;
}

/* features.py RowHistory.update for one row at step now (an offset from the view's base); prod as
 * row_features computed it at this step, or NULL */
static void row_update(cm_rows *restrict r, int64_t id, int64_t now, const double *prod)
{
    cm_row *row = r->row + id;
    int64_t last = row->last;
    int seen = last != CM_NEVER;
    int64_t igap = seen ? now - last : 0;
    float gap = (float)igap;
    if (seen) {
        uint16_t *g = row->gaps;
        for (int k = CM_N_GAPS - 1; k > 0; k--)
            g[k] = g[k - 1];
        g[0] = (uint16_t)(igap < CM_GAP_MAX ? igap : CM_GAP_MAX);
    }
    uint16_t *d = row->dec;
    for (int k = 0; k < CM_N_HALF_LIVES; k++) {
        double x0 = (double)float_of_half(d[k]);
        double x = prod ? prod[k] : (gap > 0.0f && d[k] != 0 ? x0 * exp(-(double)gap * r->rate[k]) : x0);
        d[k] = half_of((float)(x + 1.0));
    }
    if (!seen)
        row->first = (int32_t)now;
    if (row->count < CM_COUNT_MAX) {
        row->count++;
    } else { /* halved, the age with it: the mean gap stays about what it was */
        row->count = (CM_COUNT_MAX + 1) / 2;
        row->first = (int32_t)(now - (now - (int64_t)row->first) / 2);
    }
    row->last = (int32_t)now;
}

/* the records of rows ids towards the cache before they are read */
static void prefetch_rows(const cm_rows *r, const int64_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        CM_PREFETCH_ROW(r->row + ids[i]);
}

int cm_features(const cm_rows *r, const int64_t *ids, int64_t n, int64_t now, float *feats)
{
    int rc = check_ids(r, ids, n);
    if (rc != SC_OK)
        return rc;
    if (n > 0 && !feats)
        return SC_EARG;
    int64_t at;
    if ((rc = offset_of(r, now, &at)))
        return rc;
    prefetch_rows(r, ids, n);
    const double *ex = decay_lut(r);
    for (int64_t i = 0; i < n; i++)
        row_features(r, ex, ids[i], at, feats + i * CM_N_FEATURES, NULL);
    return SC_OK;
}

int cm_update(cm_rows *r, const int64_t *ids, int64_t n, int64_t now)
{
    int rc = check_ids(r, ids, n);
    if (rc != SC_OK)
        return rc;
    int64_t at;
    if ((rc = offset_of(r, now, &at)))
        return rc;
    prefetch_rows(r, ids, n);
    for (int64_t i = 0; i < n; i++)
        row_update(r, ids[i], at, NULL);
    return SC_OK;
}

/* h[0..n) = relu(b[0..n) + x[0..m) @ w) (w m x n, row-major; n a multiple of CM_BLOCK): a block of
 * CM_BLOCK outputs at a time, accumulated in registers */
static void affine_relu(const float *restrict x, int m, const float *restrict w, const float *restrict b,
                        int n, float *restrict h)
{
    for (int jb = 0; jb < n; jb += CM_BLOCK) {
        float acc[CM_BLOCK];
        for (int j = 0; j < CM_BLOCK; j++)
            acc[j] = b[jb + j];
        for (int i = 0; i < m; i++) {
            float xi = x[i];
            const float *restrict wi = w + (size_t)i * (size_t)n + jb;
            for (int j = 0; j < CM_BLOCK; j++)
                acc[j] += xi * wi[j];
        }
        for (int j = 0; j < CM_BLOCK; j++)
            h[jb + j] = acc[j] > 0.0f ? acc[j] : 0.0f;
    }
}

/* b + x . w over n (a multiple of CM_BLOCK) */
static float dot(const float *restrict x, const float *restrict w, int n, float b)
{
    float acc[CM_BLOCK] = {0};
    for (int ib = 0; ib < n; ib += CM_BLOCK)
        for (int j = 0; j < CM_BLOCK; j++)
            acc[j] += x[ib + j] * w[ib + j];
    float s = 0.0f;
    for (int j = 0; j < CM_BLOCK; j++)
        s += acc[j];
    return s + b;
}

/* out[CM_N_OUT] of features f, tb the row's table embedding (plus lin1's bias) */
static void mlp_generic(const cm_net *restrict net, const float *restrict f, const float *restrict tb,
                        float *restrict out)
{
    int hd = net->hidden;
    float h1[CM_MAX_HIDDEN], h2[CM_MAX_HIDDEN];
    affine_relu(f, CM_N_FEATURES, net->w1, tb, hd, h1);
    affine_relu(h1, hd, net->w2, net->b2, hd, h2);
    for (int k = 0; k < CM_N_OUT; k++)
        out[k] = dot(h2, net->w3t + (size_t)k * (size_t)hd, hd, net->b3[k]);
}

#if CM_HAVE_AVX2
#define CM_AVX2 __attribute__((target("avx2,fma")))

/* h = relu(b + x @ w), 32 outputs (four registers) at a time; n a multiple of CM_PAD. Even and odd
 * inputs go to separate accumulators (eight FMA chains, half as long), summed at the end. */
CM_AVX2 static inline void affine_relu_avx2(const float *restrict x, int m, const float *restrict w,
                                            const float *restrict b, int n, float *restrict h)
{
    const __m256 zero = _mm256_setzero_ps();
    for (int jb = 0; jb < n; jb += CM_PAD) {
        __m256 a0 = _mm256_loadu_ps(b + jb), a1 = _mm256_loadu_ps(b + jb + 8);
        __m256 a2 = _mm256_loadu_ps(b + jb + 16), a3 = _mm256_loadu_ps(b + jb + 24);
        __m256 c0 = zero, c1 = zero, c2 = zero, c3 = zero;
        int i = 0;
        for (; i + 1 < m; i += 2) {
            __m256 xi = _mm256_set1_ps(x[i]), xj = _mm256_set1_ps(x[i + 1]);
            const float *wi = w + (size_t)i * (size_t)n + jb, *wj = wi + n;
            a0 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi), a0);
            a1 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi + 8), a1);
            a2 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi + 16), a2);
            a3 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi + 24), a3);
            c0 = _mm256_fmadd_ps(xj, _mm256_loadu_ps(wj), c0);
            c1 = _mm256_fmadd_ps(xj, _mm256_loadu_ps(wj + 8), c1);
            c2 = _mm256_fmadd_ps(xj, _mm256_loadu_ps(wj + 16), c2);
            c3 = _mm256_fmadd_ps(xj, _mm256_loadu_ps(wj + 24), c3);
        }
        if (i < m) {
            __m256 xi = _mm256_set1_ps(x[i]);
            const float *wi = w + (size_t)i * (size_t)n + jb;
            a0 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi), a0);
            a1 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi + 8), a1);
            a2 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi + 16), a2);
            a3 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wi + 24), a3);
        }
        _mm256_storeu_ps(h + jb, _mm256_max_ps(_mm256_add_ps(a0, c0), zero));
        _mm256_storeu_ps(h + jb + 8, _mm256_max_ps(_mm256_add_ps(a1, c1), zero));
        _mm256_storeu_ps(h + jb + 16, _mm256_max_ps(_mm256_add_ps(a2, c2), zero));
        _mm256_storeu_ps(h + jb + 24, _mm256_max_ps(_mm256_add_ps(a3, c3), zero));
    }
}

CM_AVX2 static void mlp_avx2(const cm_net *restrict net, const float *restrict f, const float *restrict tb,
                             float *restrict out)
{
    int hd = net->hidden;
    float h1[CM_MAX_HIDDEN], h2[CM_MAX_HIDDEN];
    affine_relu_avx2(f, CM_N_FEATURES, net->w1, tb, hd, h1);
    affine_relu_avx2(h1, hd, net->w2, net->b2, hd, h2);
    for (int k = 0; k < CM_N_OUT; k++) {
        const float *w = net->w3t + (size_t)k * (size_t)hd;
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(h2 + i), _mm256_loadu_ps(w + i), acc);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        out[k] = _mm_cvtss_f32(s) + net->b3[k];
    }
}
#endif

/* cm_score's memo of the forward pass of never-used rows, by table slot (direct-mapped, CM_FRESH ways) */
#define CM_FRESH 64
typedef struct {
    int64_t t; /* table slot, -1: empty */
    float f[CM_N_FEATURES];
    float out[CM_N_OUT];
} cm_fresh;

int cm_score(const cm_net *net, cm_rows *r, const int64_t *ids, const int64_t *tables, int64_t n, int64_t now,
             int update, float *out, float *feats)
{
    if (!net || (n > 0 && (!out || !tables)))
        return SC_EARG;
    int rc = check_ids(r, ids, n);
    if (rc != SC_OK)
        return rc;
    int64_t at;
    if ((rc = offset_of(r, now, &at)))
        return rc;
    if (r->n_table_slots != net->n_table_slots)
        return SC_EARG;
    int hd = net->hidden;
    int64_t slots = net->n_table_slots;
    float f[CM_N_FEATURES];
    double prod[CM_N_HALF_LIVES];
    cm_fresh fresh[CM_FRESH];
    for (int k = 0; k < CM_FRESH; k++)
        fresh[k].t = -1;
    prefetch_rows(r, ids, n);
    const double *ex = decay_lut(r);
    /* between steps the caller's own work (key -> id maps) pushes the weights out of the near caches:
     * ask for all of them (~10 KB at hidden 32) at once rather than miss by miss */
    if (n > 0)
        for (size_t o = 0; o < net->n_data; o += 64 / sizeof(float))
            __builtin_prefetch(net->data + o);
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        row_features(r, ex, id, at, f, prod);
        if (feats)
            memcpy(feats + i * CM_N_FEATURES, f, sizeof(f));
        int64_t t = tables[i] % slots;
        if (t < 0)
            t += slots;
        float *o = out + i * CM_N_OUT;
        /* rows never used have the same features: the forward pass of the first one of a table slot
         * serves the others in this call (the feature bits checked equal, so the output is the same) */
        cm_fresh *fr = f[0] == 1.0f ? &fresh[t % CM_FRESH] : NULL;
        if (fr && fr->t == t && memcmp(fr->f, f, sizeof(f)) == 0) {
            memcpy(o, fr->out, sizeof(fr->out));
        } else {
#if CM_HAVE_AVX2
            if (net->simd)
                mlp_avx2(net, f, net->tb + t * hd, o);
            else
#endif
                mlp_generic(net, f, net->tb + t * hd, o);
            if (fr) {
                fr->t = t;
                memcpy(fr->f, f, sizeof(f));
                memcpy(fr->out, o, sizeof(fr->out));
            }
        }
        /* ids are distinct: this row's update touches no other row's features */
        if (update)
            row_update(r, id, at, prod);
    }
    return SC_OK;
}
