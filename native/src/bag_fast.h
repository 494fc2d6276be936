/* bag_fast.h - lookup.c's fused bag loop for one vector width and element type. lookup.c includes it
 * once per instruction set and element type, with these defined. The instruction set's:
 *   BF_VEC, BF_LANES    the float vector type and its floats (__m256 and 8, __m512 and 16)
 *   BF_ISA(op)          the intrinsic named op (_mm256_##op, _mm512_##op)
 * and for each inclusion (undefined again at the end of this file):
 *   BF_NAME             the function's name
 *   BF_TARGET           its target attribute ("avx2,fma", "avx2,fma,f16c", "avx512f")
 *   BF_ESIZE            bytes of a stored element (4: float32 rows, 2: float16)
 *   BF_ROW_LOAD(q)      BF_LANES elements at byte address q of a row no writer changes, as floats
 *   BF_SLOT_LOAD(q)     the same from a slot that a writer may be changing: one volatile load
 * No include guard: it is meant to be included more than once.
 *
 * Bag b of a bagctx, its sum kept in vector registers: a hit is accumulated straight from its slot
 * and checked with its group's seqlock version after the row (writer.c has the argument), a miss is
 * read from the memory slow tier (checked the same way: write_rows writes a row in a window of its
 * group's version) or the call's buffer of rows read whole from the SSD. Returns 0, or -1 if a
 * row lost a race with the writer (nothing was written then; the caller redoes the bag on the safe
 * path). The same additions in the same order as the generic path, so the results are bit-identical
 * whatever the width. Without per-sample weights a row is added (vaddps), as FBGEMM's kernels do: the
 * same bits as an FMA by 1, and on CPUs that lower their clock for 512-bit multiplies (Intel's
 * Skylake-SP and Cascade Lake) adds keep the lighter frequency level. */
/* acc += the row at byte address BASE, read with LOAD: times the id's weight (an FMA) with per-sample
 * weights, else added */
#define BF_ACCUMULATE(LOAD, BASE)                                                                   \
    do {                                                                                            \
        if (weights) {                                                                              \
            _Pragma("GCC unroll 16") for (uint32_t k = 0; k < D / BF_LANES; k++) acc[k] =           \
                BF_ISA(fmadd_ps)(vw, LOAD((BASE) + BF_ESIZE * BF_LANES * k), acc[k]);               \
        } else {                                                                                    \
            _Pragma("GCC unroll 16") for (uint32_t k = 0; k < D / BF_LANES; k++) acc[k] =           \
                BF_ISA(add_ps)(acc[k], LOAD((BASE) + BF_ESIZE * BF_LANES * k));                     \
        }                                                                                           \
    } while (0)

static inline __attribute__((always_inline, target(BF_TARGET))) int BF_NAME(const bagctx *c, uint64_t b,
                                                                            uint64_t *hits, const uint32_t D)
{
    BF_VEC acc[128 / BF_LANES];
#pragma GCC unroll 16
    for (uint32_t k = 0; k < D / BF_LANES; k++) acc[k] = BF_ISA(setzero_ps)();
    /* everything the loop needs in locals: the acquire loads and fences below make the compiler
     * reload anything reached through a pointer on every row */
    const int64_t o0 = c->offsets[b], o1 = c->offsets[b + 1];
    const uint8_t *const slots = c->p->slots;
    const uint64_t stride = c->p->h->slot_stride;
    const _Atomic uint32_t *const vers = c->p->vers;
    const uint64_t efirst = c->efirst;
    const int32_t *const slot = c->slot - c->base;
    const uint32_t *const sver = c->ver - c->base;
    const int64_t *const ids = c->ids;
    const float *const weights = c->weights;
    const uint8_t *const slow = c->slow, *const mbuf = c->mbuf;
    const size_t mstride = c->mstride;
    const uint64_t rb = c->rb;
    const int64_t pf_end = (int64_t)c->iend - PF_DIST;
    uint64_t h = 0;
    for (int64_t i = o0; i < o1; i++) {
        if (i < pf_end) {
            int32_t ps = slot[i + PF_DIST];
            const uint8_t *sp;
            if (ps >= 0) {
                sp = slots + (uint64_t)ps * stride;
            } else {
                sp = slow ? slow + (uint64_t)ids[i + PF_DIST] * rb : NULL;
            }
            if (sp)
#pragma GCC unroll 8
                for (uint32_t l = 0; l < (D * BF_ESIZE + 63) / 64; l++) __builtin_prefetch(sp + 64 * l, 0, 3);
        }
        const int32_t s = slot[i];
        const BF_VEC vw = BF_ISA(set1_ps)(weights ? weights[i] : 1.0f);
        if (s >= 0) {
            const uint8_t *q = slots + (uint64_t)s * stride;
            BF_ACCUMULATE(BF_SLOT_LOAD, q);
            atomic_thread_fence(memory_order_acquire);
            const _Atomic uint32_t *ver = &vers[version_index(efirst + (uint64_t)ids[i])];
            if (atomic_load_explicit(ver, memory_order_relaxed) != sver[i]) return -1;
            h++;
        } else if (slow) {
            /* a memory slow tier's row, checked like a hit's: write_rows writes it in an odd window */
            if (sver[i] & 1u) return -1;
            BF_ACCUMULATE(BF_ROW_LOAD, slow + (uint64_t)ids[i] * rb);
            atomic_thread_fence(memory_order_acquire);
            const _Atomic uint32_t *ver = &vers[version_index(efirst + (uint64_t)ids[i])];
            if (atomic_load_explicit(ver, memory_order_relaxed) != sver[i]) return -1;
        } else {
            BF_ACCUMULATE(BF_ROW_LOAD, mbuf + (size_t)(-2 - s) * mstride);
        }
    }
    float *out = c->out + b * c->ostride;
    if (c->mean && o1 > o0) {
        const BF_VEC n = BF_ISA(set1_ps)((float)(o1 - o0)); /* sum / n, as torch (not sum * (1 / n)) */
#pragma GCC unroll 16
        for (uint32_t k = 0; k < D / BF_LANES; k++) acc[k] = BF_ISA(div_ps)(acc[k], n);
    }
#pragma GCC unroll 16
    for (uint32_t k = 0; k < D / BF_LANES; k++) BF_ISA(storeu_ps)(out + BF_LANES * k, acc[k]);
    *hits += h;
    return 0;
}

#undef BF_ACCUMULATE
#undef BF_NAME
#undef BF_TARGET
#undef BF_ESIZE
#undef BF_ROW_LOAD
#undef BF_SLOT_LOAD
