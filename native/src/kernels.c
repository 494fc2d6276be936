/* kernels.c - row accumulation (sum/weighted sum with FMA like fbgemm, max), float16 conversion.
 * AVX2+FMA+F16C versions are chosen at attach time when the CPU has them. */
#include "internal.h"

#include <math.h>

static inline float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void f16_to_f32_row(float *dst, const uint16_t *src, uint32_t dim)
{
    for (uint32_t j = 0; j < dim; j++) dst[j] = half_to_float(src[j]);
}

static void acc32_generic(float *out, const void *row, float w, uint32_t dim)
{
    const float *r = row;
    if (w == 1.0f)
        for (uint32_t j = 0; j < dim; j++) out[j] += r[j];
    else
        for (uint32_t j = 0; j < dim; j++) out[j] = fmaf(w, r[j], out[j]);
}

static void acc16_generic(float *out, const void *row, float w, uint32_t dim)
{
    const uint16_t *r = row;
    if (w == 1.0f)
        for (uint32_t j = 0; j < dim; j++) out[j] += half_to_float(r[j]);
    else
        for (uint32_t j = 0; j < dim; j++) out[j] = fmaf(w, half_to_float(r[j]), out[j]);
}

static void max32_generic(float *out, const void *row, uint32_t dim)
{
    const float *r = row;
    for (uint32_t j = 0; j < dim; j++)
        if (r[j] > out[j]) out[j] = r[j];
}

static void max16_generic(float *out, const void *row, uint32_t dim)
{
    const uint16_t *r = row;
    for (uint32_t j = 0; j < dim; j++) {
        float v = half_to_float(r[j]);
        if (v > out[j]) out[j] = v;
    }
}

/* Fused accumulation from a fast-tier slot that a writer may be changing: the row is read only
 * through relaxed atomic 64-bit loads (no data race under the C11 model); the caller checks the
 * seqlock afterwards and redoes the bag if the row changed. Reads whole words, up to the padded
 * slot size. */
static void facc32_generic(float *out, const void *row, float w, uint32_t dim)
{
    const _Atomic uint64_t *s = row;
    for (uint32_t j = 0; j < dim; j += 2) {
        uint64_t x = atomic_load_explicit(&s[j / 2], memory_order_relaxed);
        float f[2];
        memcpy(f, &x, 8);
        out[j] = w == 1.0f ? out[j] + f[0] : fmaf(w, f[0], out[j]);
        if (j + 1 < dim) out[j + 1] = w == 1.0f ? out[j + 1] + f[1] : fmaf(w, f[1], out[j + 1]);
    }
}

static void facc16_generic(float *out, const void *row, float w, uint32_t dim)
{
    const _Atomic uint64_t *s = row;
    for (uint32_t j = 0; j < dim; j += 4) {
        uint64_t x = atomic_load_explicit(&s[j / 4], memory_order_relaxed);
        uint16_t hv[4];
        memcpy(hv, &x, 8);
        for (uint32_t q = 0; q < 4 && j + q < dim; q++) {
            float f = half_to_float(hv[q]);
            out[j + q] = w == 1.0f ? out[j + q] + f : fmaf(w, f, out[j + q]);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static void facc32_avx2(float *out, const void *row, float w, uint32_t dim)
{
    const _Atomic uint64_t *s = row;
    __m256 vw = _mm256_set1_ps(w);
    uint32_t j = 0;
    for (; j + 8 <= dim; j += 8) {
        const _Atomic uint64_t *q = s + j / 2;
        __m256i v = _mm256_set_epi64x((long long)atomic_load_explicit(&q[3], memory_order_relaxed),
                                      (long long)atomic_load_explicit(&q[2], memory_order_relaxed),
                                      (long long)atomic_load_explicit(&q[1], memory_order_relaxed),
                                      (long long)atomic_load_explicit(&q[0], memory_order_relaxed));
        __m256 o = _mm256_loadu_ps(out + j);
        o = w == 1.0f ? _mm256_add_ps(o, _mm256_castsi256_ps(v)) : _mm256_fmadd_ps(vw, _mm256_castsi256_ps(v), o);
        _mm256_storeu_ps(out + j, o);
    }
    if (j < dim) facc32_generic(out + j, s + j / 2, w, dim - j);
}

__attribute__((target("avx2,fma,f16c"))) static void facc16_avx2(float *out, const void *row, float w, uint32_t dim)
{
    const _Atomic uint64_t *s = row;
    __m256 vw = _mm256_set1_ps(w);
    uint32_t j = 0;
    for (; j + 8 <= dim; j += 8) {
        const _Atomic uint64_t *q = s + j / 4;
        __m128i h = _mm_set_epi64x((long long)atomic_load_explicit(&q[1], memory_order_relaxed),
                                   (long long)atomic_load_explicit(&q[0], memory_order_relaxed));
        __m256 v = _mm256_cvtph_ps(h);
        __m256 o = _mm256_loadu_ps(out + j);
        o = w == 1.0f ? _mm256_add_ps(o, v) : _mm256_fmadd_ps(vw, v, o);
        _mm256_storeu_ps(out + j, o);
    }
    if (j < dim) facc16_generic(out + j, s + j / 4, w, dim - j);
}

__attribute__((target("avx2,fma"))) static void acc32_avx2(float *out, const void *row, float w, uint32_t dim)
{
    const float *r = row;
    uint32_t j = 0;
    if (w == 1.0f) {
        for (; j + 8 <= dim; j += 8)
            _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), _mm256_loadu_ps(r + j)));
        for (; j < dim; j++) out[j] += r[j];
    } else {
        __m256 vw = _mm256_set1_ps(w);
        for (; j + 8 <= dim; j += 8)
            _mm256_storeu_ps(out + j, _mm256_fmadd_ps(vw, _mm256_loadu_ps(r + j), _mm256_loadu_ps(out + j)));
        for (; j < dim; j++) out[j] = fmaf(w, r[j], out[j]);
    }
}

__attribute__((target("avx2,fma,f16c"))) static void acc16_avx2(float *out, const void *row, float w, uint32_t dim)
{
    const uint16_t *r = row;
    uint32_t j = 0;
    __m256 vw = _mm256_set1_ps(w);
    for (; j + 8 <= dim; j += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(r + j)));
        __m256 o = _mm256_loadu_ps(out + j);
        _mm256_storeu_ps(out + j, w == 1.0f ? _mm256_add_ps(o, v) : _mm256_fmadd_ps(vw, v, o));
    }
    for (; j < dim; j++) out[j] = w == 1.0f ? out[j] + half_to_float(r[j]) : fmaf(w, half_to_float(r[j]), out[j]);
}

__attribute__((target("avx2"))) static void max32_avx2(float *out, const void *row, uint32_t dim)
{
    const float *r = row;
    uint32_t j = 0;
    for (; j + 8 <= dim; j += 8) /* max(row, out) keeps out where row is not greater, like the scalar loop */
        _mm256_storeu_ps(out + j, _mm256_max_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(out + j)));
    for (; j < dim; j++)
        if (r[j] > out[j]) out[j] = r[j];
}
#endif

void kernels_select(recmg_pool *p)
{
    p->acc32 = acc32_generic;
    p->acc16 = acc16_generic;
    p->max32 = max32_generic;
    p->max16 = max16_generic;
    p->facc32 = facc32_generic;
    p->facc16 = facc16_generic;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        p->acc32 = acc32_avx2;
        p->max32 = max32_avx2;
        p->vec_copy = 1;
        p->facc32 = facc32_avx2;
        if (__builtin_cpu_supports("f16c")) {
            p->acc16 = acc16_avx2;
            p->facc16 = facc16_avx2;
            p->vec_f16 = 1;
        }
        /* as FBGEMM's CPU kernels do where the CPU has it; RECMG_NO_AVX512=1 keeps the AVX2 ones (a CPU
         * that lowers its clock for 512-bit work, or a test of both) */
        p->vec512 = __builtin_cpu_supports("avx512f") && !env_flag("RECMG_NO_AVX512");
    }
#endif
}
