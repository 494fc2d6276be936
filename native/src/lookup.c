/* lookup.c - the app's path: embedding bags over the fast tier with slow-tier fallback.
 *
 * A hit is read lock-free through the seqlock of its index entry's group (Boehm's reader, writer.c
 * has the argument): pass 1 reads the version (acquire; odd: not a hit) and then the entry (the slot,
 * or -1); pass 2 copies the row as relaxed atomic 64-bit words, then an acquire fence, then the
 * version again. The same version: the copy is the row. Anything else: the row is read from the slow
 * tier, which is the truth. A hit reads its index entry once (pass 1), the row, and a version line that
 * the cache keeps. The slow tier is read under the same versions (write_rows writes a row in a window
 * of its group's version): a miss of a memory tier is checked after its row like a hit, and its bag
 * redone on the safe path if the version changed, where the row is copied whole (slow_copy_whole, which
 * waits for one row's write, never for a dead or stopped writer); an SSD tier's reads are checked after
 * each batch (read_slow_whole). Only a reader of a group being written waits, for a row's write.
 *
 * Pass 1 resolves every id (range check, version and index -> slot, first-appearance dedup); on an
 * SSD slow tier the distinct missing rows are then read in one I/O batch (and the rows evicted during
 * it in another); pass 2 accumulates the bags in id order (the same order as
 * torch.nn.functional.embedding_bag), and on an SSD tier redoes after one more batch the bags whose
 * rows were evicted during it. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define PF_DIST 16 /* pass 2: rows prefetched this many ids ahead */
/* pass 1: index entries and their versions prefetched this many ids ahead. Pass 1 does little per id,
 * so its loads need to start further ahead than the rows' (64 against 32: BENCHMARKS.md, "One index
 * read a hit"). */
#define PF_INDEX 64
#define MAX_THREADS 256 /* lookup threads a handle may have (recmg_set_threads) */
/* SSD tier: times the hits are checked again after a batch of reads (bag_one) */
#define RECHECKS 4

#if defined(__x86_64__)
#include <immintrin.h>
/* The relaxed atomic word loads of words_load, put together four at a time in a vector register and
 * stored 32 bytes at once, so that the accumulation's 32-byte loads of tmp are forwarded from the
 * stores instead of stalling on eight-byte pieces. tmp is 32-byte aligned, nwords rounded up to 4
 * (slots are 64-byte multiples, so the extra words exist). */
__attribute__((target("avx2"))) static void words_load_avx2(uint64_t *tmp, const uint8_t *src, uint32_t nwords)
{
    const _Atomic uint64_t *s = (const _Atomic uint64_t *)(const void *)src;
    for (uint32_t i = 0; i < nwords; i += 4) {
        long long a = (long long)atomic_load_explicit(&s[i], memory_order_relaxed);
        long long b = (long long)atomic_load_explicit(&s[i + 1], memory_order_relaxed);
        long long c = (long long)atomic_load_explicit(&s[i + 2], memory_order_relaxed);
        long long d = (long long)atomic_load_explicit(&s[i + 3], memory_order_relaxed);
        _mm256_store_si256((__m256i *)(void *)(tmp + i), _mm256_set_epi64x(d, c, b, a));
    }
}
#endif

/* Seqlock read of slot s into tmp; 1 if tmp holds the row whose entry pass 1 read as s after reading
 * its version v1 from ver: the version unchanged after the copy (see writer.c for why that is exact). */
static inline int slot_read(const recmg_pool *p, int32_t s, const _Atomic uint32_t *ver, uint32_t v1, uint64_t *tmp,
                            uint32_t nwords)
{
#if defined(__x86_64__)
    if (p->vec_copy)
        words_load_avx2(tmp, slot_ptr(p, (uint64_t)s), (nwords + 3) & ~3u);
    else
#endif
        words_load(tmp, slot_ptr(p, (uint64_t)s), nwords);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(ver, memory_order_relaxed) == v1;
}

/* Times a hit whose version changed after pass 1 is resolved again before it goes to the slow tier. */
#define REREADS 4

/* A hit whose version changed after pass 1 (a writer changed some entry of its group: often another
 * row's): the row resolved again, as a reader with no pass 1 would (version, entry, copy, version), up
 * to REREADS times, so that a writer busy with the group's other rows does not send it to the slow
 * tier. A window is a few stores long, so a version seen odd is read again at once; one left odd by a
 * dead writer costs REREADS loads and the slow tier. 1 if tmp holds the row whose entry is ix. */
static int slot_reread(const recmg_pool *p, const _Atomic int32_t *ix, const _Atomic uint32_t *ver, uint64_t *tmp,
                       uint32_t nwords)
{
    for (int k = 0; k < REREADS; k++) {
        const uint32_t v = atomic_load_explicit(ver, memory_order_acquire);
        if (v & 1u) continue;
        const int32_t s = atomic_load_explicit(ix, memory_order_relaxed);
        if (!slot_ok(p, s)) return 0; /* evicted meanwhile: a miss */
        if (slot_read(p, s, ver, v, tmp, nwords)) return 1;
    }
    return 0;
}

/* Row r of a memory slow tier (at src) into dst, whole: one copy under its group's version, and
 * read_row_whole if a write_rows of the group met it. */
static inline void slow_copy_whole(recmg_pool *p, uint32_t table, int64_t r, const _Atomic uint32_t *ver,
                                   const uint8_t *src, uint8_t *dst, uint32_t rb)
{
    const uint32_t v = atomic_load_explicit(ver, memory_order_acquire);
    if (!(v & 1u)) {
        memcpy(dst, src, rb);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(ver, memory_order_relaxed) == v) return;
    }
    uint64_t read = 0;
    (void)read_row_whole(p, table, r, dst, &read); /* (a memory copy: no error) */
}

/* (*maps)[table], a zeroed bitmap of the table's rows, allocated on first use; 0 or -1 (out of memory). */
static int row_bitmap(const recmg_pool *p, uint64_t ***maps, uint32_t table)
{
    if (!*maps && !(*maps = calloc(p->h->n_tables, sizeof **maps))) return -1;
    if (!(*maps)[table] && !((*maps)[table] = calloc((p->tables[table].rows + 63) / 64, sizeof(uint64_t))))
        return -1;
    return 0;
}

static int scratch(recmg_pool *p, lscratch *ls, uint32_t table, uint64_t n, int ssd)
{
    if (grow((void **)&ls->slot, &ls->slot_cap, n ? n : 1, sizeof *ls->slot) != 0) goto oom;
    if (grow((void **)&ls->ver, &ls->ver_cap, n ? n : 1, sizeof *ls->ver) != 0) goto oom;
    if (grow((void **)&ls->urow, &ls->urow_cap, n ? n : 1, sizeof *ls->urow) != 0) goto oom;
    if (row_bitmap(p, &ls->seen, table) != 0) goto oom;
    if (ssd && hash_prepare(p, n) != 0) goto oom;
    return RECMG_OK;
oom:
    return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for a lookup of %llu ids",
                  (unsigned long long)n);
}

static int check_args(const recmg_pool *p, char *err, const recmg_bag_args *a)
{
    if (a->table >= p->h->n_tables)
        return rc_buf(err, RECMG_ERRLEN, RECMG_ERANGE, "table %u out of range (pool has %u tables)", a->table, p->h->n_tables);
    if (a->mode != RECMG_SUM && a->mode != RECMG_MEAN && a->mode != RECMG_MAX)
        return rc_buf(err, RECMG_ERRLEN, RECMG_EINVAL, "unknown mode code %d (sum, mean or max)", a->mode);
    if (a->weights && a->mode != RECMG_SUM)
        return rc_buf(err, RECMG_ERRLEN, RECMG_EINVAL, "per-sample weights are only supported with mode 'sum'");
    if ((a->n_ids && !a->ids) || !a->offsets || (a->n_bags && !a->out))
        return rc_buf(err, RECMG_ERRLEN, RECMG_EINVAL, "NULL ids, offsets or output");
    if (a->out_stride && a->out_stride < p->tables[a->table].dim)
        return rc_buf(err, RECMG_ERRLEN, RECMG_EINVAL, "out_stride %llu is less than table %u's dim (%u)",
                      (unsigned long long)a->out_stride, a->table, p->tables[a->table].dim);
    if (a->offsets[0] != 0 || (uint64_t)a->offsets[a->n_bags] != a->n_ids)
        return rc_buf(err, RECMG_ERRLEN, RECMG_EINVAL, "offsets must start at 0 and end at the number of ids (%llu)",
                      (unsigned long long)a->n_ids);
    for (uint64_t b = 0; b < a->n_bags; b++)
        if (a->offsets[b + 1] < a->offsets[b])
            return rc_buf(err, RECMG_ERRLEN, RECMG_EINVAL, "offsets must not decrease (offsets[%llu] = %lld > offsets[%llu] = %lld)",
                          (unsigned long long)b, (long long)a->offsets[b], (unsigned long long)b + 1,
                          (long long)a->offsets[b + 1]);
    return RECMG_OK;
}

/* ---- specialised all-in-registers bag kernels: float32, sum/mean, dim 16/32/64/128, AVX2+FMA or
 * AVX-512F (the loop is in bag_fast.h) ---- */
typedef struct bagctx {
    const recmg_pool *p;
    const int32_t *slot;
    const uint32_t *ver; /* per id: its entry's version in pass 1 */
    const int64_t *ids, *offsets;
    const float *weights;
    float *out;
    uint64_t ostride; /* floats from one bag's output to the next */
    const uint8_t *slow, *mbuf;
    uint64_t efirst; /* the table's first index entry */
    uint64_t base, iend; /* slot[] and ver[] hold ids [base, iend) */
    size_t mstride;
    uint32_t rb, pf_lines;
    int mean;
} bagctx;

#if defined(__x86_64__)
/* One vector load of a slot that a writer may be changing, as a volatile access: a single vmovdqu
 * (32 bytes) or vmovdqu64 (64) that the compiler neither splits, merges, elides nor moves across the
 * acquire load of the version before it or the acquire fence after it (GCC orders volatile accesses
 * with atomics and fences). x86 reads each aligned 8-byte word of it atomically; a row that changed
 * meanwhile, torn or not, fails the version re-check and is never used. This replaces relaxed 64-bit
 * atomic loads put together with vmovq/vpinsrq/vinserti128 (7 instructions per 32 bytes, the largest
 * per-row cost of the hit path) by one load. */
static inline __attribute__((always_inline, target("avx2"))) __m256 slot_load8(const uint8_t *q)
{
    return _mm256_castsi256_ps(*(const volatile __m256i_u *)(const volatile void *)q);
}

static inline __attribute__((always_inline, target("avx512f"))) __m512 slot_load16(const uint8_t *q)
{
    return _mm512_castsi512_ps(*(const volatile __m512i_u *)(const volatile void *)q);
}

/* The same for float16 rows: 8 or 16 halves in one volatile 16- or 32-byte load, then widened (exact). */
static inline __attribute__((always_inline, target("avx2,f16c"))) __m256 slot_load8h(const uint8_t *q)
{
    return _mm256_cvtph_ps(*(const volatile __m128i_u *)(const volatile void *)q);
}

static inline __attribute__((always_inline, target("avx512f"))) __m512 slot_load16h(const uint8_t *q)
{
    return _mm512_cvtph_ps(*(const volatile __m256i_u *)(const volatile void *)q);
}

/* The bag loop once per instruction set and element type (bag_fast.h has it and says what these
 * name). AVX-512F reads a 64-float row in four loads and four FMAs instead of eight of each: the same
 * memory, half the instructions, which shows when the rows come from the caches (BENCHMARKS.md,
 * "Skewed ids"). float16 rows are widened as they are loaded, as kernels.c's float16 loops do. */
#define BF_VEC __m256
#define BF_LANES 8
#define BF_ISA(op) _mm256_##op

#define BF_NAME bag_fast_body_avx2
#define BF_TARGET "avx2,fma"
#define BF_ESIZE 4
#define BF_ROW_LOAD(q) _mm256_loadu_ps((const float *)(const void *)(q))
#define BF_SLOT_LOAD(q) slot_load8(q)
#include "bag_fast.h"

#define BF_NAME bag_fast_body_avx2_f16
#define BF_TARGET "avx2,fma,f16c"
#define BF_ESIZE 2
#define BF_ROW_LOAD(q) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(q)))
#define BF_SLOT_LOAD(q) slot_load8h(q)
#include "bag_fast.h"

#undef BF_VEC
#undef BF_LANES
#undef BF_ISA

#define BF_VEC __m512
#define BF_LANES 16
#define BF_ISA(op) _mm512_##op

#define BF_NAME bag_fast_body_avx512
#define BF_TARGET "avx512f"
#define BF_ESIZE 4
#define BF_ROW_LOAD(q) _mm512_loadu_ps((const float *)(const void *)(q))
#define BF_SLOT_LOAD(q) slot_load16(q)
#include "bag_fast.h"

#define BF_NAME bag_fast_body_avx512_f16
#define BF_TARGET "avx512f"
#define BF_ESIZE 2
#define BF_ROW_LOAD(q) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(q)))
#define BF_SLOT_LOAD(q) slot_load16h(q)
#include "bag_fast.h"

#undef BF_VEC
#undef BF_LANES
#undef BF_ISA

/* The kernels with the dim fixed, so that the loops over a row unroll. */
#define BAG_FAST(NAME, BODY, TARGET, D)                                                               \
    __attribute__((target(TARGET))) static int NAME##_##D(const bagctx *c, uint64_t b, uint64_t *hits) \
    {                                                                                                 \
        return BODY(c, b, hits, D);                                                                   \
    }
#define BAG_FAST_DIMS(NAME, BODY, TARGET)                                                            \
    BAG_FAST(NAME, BODY, TARGET, 16) BAG_FAST(NAME, BODY, TARGET, 32) BAG_FAST(NAME, BODY, TARGET, 64) \
    BAG_FAST(NAME, BODY, TARGET, 128)
BAG_FAST_DIMS(bag_fast, bag_fast_body_avx2, "avx2,fma")
BAG_FAST_DIMS(bag_fast_f16, bag_fast_body_avx2_f16, "avx2,fma,f16c")
BAG_FAST(bag_fast512, bag_fast_body_avx512, "avx512f", 64)
BAG_FAST(bag_fast512, bag_fast_body_avx512, "avx512f", 128)
BAG_FAST(bag_fast512_f16, bag_fast_body_avx512_f16, "avx512f", 64)
BAG_FAST(bag_fast512_f16, bag_fast_body_avx512_f16, "avx512f", 128)
#endif

typedef int (*bag_fast_fn)(const bagctx *c, uint64_t b, uint64_t *hits);

/* The generic loops' software prefetch: the row (slot or memory slow tier) of the id PF_DIST ahead of
 * id i. */
/* A mean bag's sum divided by its length, as torch divides (a multiply by 1 / n is off by an ulp). */
static inline void mean_of(float *out, int64_t n, uint32_t dim)
{
    const float fn = (float)n;
    for (uint32_t j = 0; j < dim; j++) out[j] /= fn;
}

static inline void prefetch_ahead(const bagctx *c, uint64_t i)
{
    if (i + PF_DIST >= c->iend) return;
    int32_t ps = c->slot[i + PF_DIST - c->base];
    const uint8_t *sp;
    if (ps >= 0) {
        sp = slot_ptr(c->p, (uint64_t)ps);
    } else if (c->slow) {
        sp = c->slow + (uint64_t)c->ids[i + PF_DIST] * c->rb;
    } else {
        return;
    }
    for (uint32_t l = 0; l < c->pf_lines; l++) __builtin_prefetch(sp + 64 * l, 0, 1);
}

/* The fused bag kernel of a table's rows (float32 or float16, sum or mean): AVX-512F at dim 64 and 128,
 * where it reads a row in half the instructions (at 16 and 32 it was no faster: BENCHMARKS.md, "Skewed
 * ids"), AVX2 at 16, 32, 64 and 128 (float16 also needs F16C), else none (the generic loops). The kind
 * ("avx512f", "avx2" or "generic") through *kind when kind is not NULL. */
static bag_fast_fn pick_fast(const recmg_pool *p, uint32_t dim, int f16, int mode, const char **kind)
{
    bag_fast_fn f = NULL;
    const char *k = "generic";
#if defined(__x86_64__)
    const int d = dim == 16 ? 0 : dim == 32 ? 1 : dim == 64 ? 2 : dim == 128 ? 3 : -1;
    static const bag_fast_fn avx2[2][4] = {{bag_fast_16, bag_fast_32, bag_fast_64, bag_fast_128},
                                           {bag_fast_f16_16, bag_fast_f16_32, bag_fast_f16_64, bag_fast_f16_128}};
    static const bag_fast_fn avx512[2][4] = {{NULL, NULL, bag_fast512_64, bag_fast512_128},
                                             {NULL, NULL, bag_fast512_f16_64, bag_fast512_f16_128}};
    if (p->vec_copy && mode != RECMG_MAX && d >= 0 && (!f16 || p->vec_f16)) {
        if (p->vec512 && avx512[f16 != 0][d]) {
            f = avx512[f16 != 0][d];
            k = "avx512f";
        } else {
            f = avx2[f16 != 0][d];
            k = "avx2";
        }
    }
#else
    (void)p, (void)dim, (void)f16, (void)mode;
#endif
    if (kind) *kind = k;
    return f;
}

const char *recmg_lookup_kernel(const recmg_pool *p, uint32_t table)
{
    if (!p || table >= p->h->n_tables) return "";
    const tabdesc *t = &p->tables[table];
    const char *kind;
    pick_fast(p, t->dim, t->dtype == RECMG_F16, RECMG_SUM, &kind);
    return kind;
}

/* A piece of work: bags [b0, b1) of one argument (part < 0; uniq: also count its distinct rows), or
 * (part >= 0) counting the distinct rows of a split argument whose ids fall in part `part` of
 * `nparts` equal ranges of the table's rows. */
typedef struct work {
    const recmg_bag_args *a;
    uint64_t b0, b1;
    int uniq;
    int part, nparts;
    int mark; /* a chunk of a split argument: set its rows' bits in this thread's bitmap of the table,
               * left set, and add its missing rows to the thread's list of the table (mrows); join
               * items count the union of the threads' bitmaps and lists, and clear the bitmaps */
    int join; /* (with part, nparts) count and clear words range `part` of `nparts` of the threads'
               * bitmaps of the argument's table, once its `need` marking chunks are done */
    uint32_t need;
    _Atomic uint32_t *done; /* a marking chunk: counts itself done here; a join item: waits for need */
    uint8_t *by; /* the argument's n_threads flags: a marking chunk sets its thread's (before done), and
                  * the join items read only those threads' bitmaps and lists */
    const ringrun *rr; /* bags: the call's run of ring records, where this item's ids go, from position at */
    uint64_t at;
} work;

/* The bits set in w[0, n): with the POPCNT instruction where the CPU has it (the library is built for
 * any x86-64, where __builtin_popcountll is a call into libgcc a word). Not target_clones: its ifunc
 * resolver runs before ThreadSanitizer's runtime is up, and the TSan build crashes. */
static inline __attribute__((always_inline)) uint64_t popcount_loop(const uint64_t *w, uint64_t n)
{
    uint64_t c = 0;
    for (uint64_t i = 0; i < n; i++) c += (uint64_t)__builtin_popcountll(w[i]);
    return c;
}

__attribute__((target("popcnt"))) static uint64_t popcount_words_hw(const uint64_t *w, uint64_t n)
{
    return popcount_loop(w, n);
}

static uint64_t popcount_words(const uint64_t *w, uint64_t n)
{
    return __builtin_cpu_supports("popcnt") ? popcount_words_hw(w, n) : popcount_loop(w, n);
}

/* The distinct rows among those of rows[0, n) in [lo, lo + span), each of whose bits in `set` is set:
 * each is counted once, its bit cleared when it is. */
static uint64_t count_listed(uint64_t *set, const int64_t *rows, uint64_t n, uint64_t lo, uint64_t span)
{
    uint64_t c = 0;
    for (uint64_t k = 0; k < n; k++) {
        const uint64_t r = (uint64_t)rows[k];
        if (r - lo >= span) continue;
        const uint64_t bit = UINT64_C(1) << (r & 63), w = set[r >> 6];
        c += (w & bit) != 0;
        set[r >> 6] = w & ~bit;
    }
    return c;
}

/* The number of SSD-tier row r among the call's distinct missing rows (p->m_rows, *m of them so far),
 * given to it if it has none yet; -1 when out of memory. */
static int32_t miss_number(recmg_pool *p, int64_t r, uint64_t *m)
{
    const int32_t k = hash_get_or_put(p, r, (int32_t)*m);
    if (k >= 0) return k;
    if (grow((void **)&p->m_rows, &p->m_cap, *m + 1, sizeof *p->m_rows) != 0) return -1;
    p->m_rows[*m] = r;
    return (int32_t)(*m)++;
}

/* After a batch of SSD reads: each hit among ids[0, n) whose group's version changed since pass 1
 * read it is resolved again as pass 1 does (version, then entry): still resident, it keeps its
 * (maybe new) slot; evicted, it becomes a miss numbered after the rows already read. A version odd
 * now (a writer inside the group) is left to pass 2's rereads. 0, or -1 when out of memory. */
static int recheck_hits(recmg_pool *p, const int64_t *ids, uint64_t n, const _Atomic int32_t *index, uint64_t efirst,
                        int32_t *slot, uint32_t *sver, uint64_t *m)
{
    for (uint64_t i = 0; i < n; i++) {
        if (slot[i] < 0) continue;
        const int64_t r = ids[i];
        const uint32_t v = atomic_load_explicit(entry_version(p, efirst + (uint64_t)r), memory_order_acquire);
        if (v == sver[i] || (v & 1u)) continue;
        const int32_t s = atomic_load_explicit(&index[r], memory_order_relaxed);
        sver[i] = v;
        if (slot_ok(p, s)) {
            slot[i] = s;
            continue;
        }
        const int32_t k = miss_number(p, r, m);
        if (k < 0) return -1;
        slot[i] = -2 - k;
    }
    return 0;
}

static int bag_one(recmg_pool *p, lscratch *ls, const work *wk, bagres *res)
{
    int rc;
    const recmg_bag_args *a = wk->a;
    const tabdesc *t = &p->tables[a->table];
    const uint64_t i0 = (uint64_t)a->offsets[wk->b0], iend = (uint64_t)a->offsets[wk->b1];
    const uint64_t n = iend - i0, rows = t->rows;
    const int uniq = wk->uniq, mark = wk->mark;
    const int64_t *ids = a->ids;
    const uint32_t dim = t->dim, rb = t->row_bytes, nwords = (rb + 7) / 8;
    const uint64_t ostride = a->out_stride ? a->out_stride : dim;
    const int f16 = t->dtype == RECMG_F16;
    _Atomic int32_t *index = p->index + t->index_first;
    const _Atomic uint32_t *vers = p->vers;
    const uint64_t efirst = t->index_first;
    const uint8_t *slow = p->slow ? p->slow + t->slow_off : NULL;

    rc = scratch(p, ls, a->table, n, slow == NULL);
    if (rc) return rc;
    /* distinct rows over a memory slow tier with a bitmap no larger than the ids: bits set per id
     * (branch-free, no list) and counted by popcount after pass 1, as a split argument's chunks do;
     * the ids that missed are listed (urow, branch-free too: a miss is rare, so a bitmap of them would
     * be mostly zeros to count and clear), and their distinct rows counted from that list */
    const uint64_t words = (rows + 63) / 64;
    const int pop = uniq && slow && words <= n;
    int32_t *slot = ls->slot;
    uint32_t *sver = ls->ver;
    uint64_t *seen = ls->seen[a->table];
    int64_t *urow = ls->urow;

    /* pass 1: range, version and index -> slot, distinct rows (seen bits), distinct SSD misses (hash) */
    uint64_t nu = 0, umiss = 0, m = 0, nmiss = 0;
    for (uint64_t i = i0; i < iend; i++) {
        if (i + PF_INDEX < iend && (uint64_t)ids[i + PF_INDEX] < rows) {
            __builtin_prefetch(&vers[version_index(efirst + (uint64_t)ids[i + PF_INDEX])], 0, 3);
            __builtin_prefetch(&index[ids[i + PF_INDEX]], 0, 3);
        }
        int64_t r = ids[i];
        if ((uint64_t)r >= rows) {
            for (uint64_t k = 0; k < nu; k++) seen[urow[k] >> 6] &= ~(UINT64_C(1) << (urow[k] & 63));
            if (pop) memset(seen, 0, words * sizeof *seen);
            return rc_buf(ls->err, sizeof ls->err, RECMG_ERANGE, "row id %lld out of range for table %u (%llu rows)",
                          (long long)r, a->table, (unsigned long long)rows);
        }
        /* the version before the entry (acquire): pass 2 checks it again after the row's copy; odd (a
         * writer is changing the group's entries) reads the row as a miss */
        const uint32_t v = atomic_load_explicit(&vers[version_index(efirst + (uint64_t)r)], memory_order_acquire);
        int32_t s = atomic_load_explicit(&index[r], memory_order_relaxed);
        /* a miss too: a slot number not of this pool (the index is shared memory) */
        s = !(v & 1u) && slot_ok(p, s) ? s : -1;
        sver[i - i0] = v;
        int fresh = 0;
        if (mark || pop) {
            seen[r >> 6] |= UINT64_C(1) << (r & 63);
            urow[nmiss] = r;
            nmiss += s < 0;
        } else if (uniq) {
            uint64_t bit = UINT64_C(1) << (r & 63), w = seen[r >> 6];
            fresh = !(w & bit);
            if (fresh) {
                seen[r >> 6] = w | bit;
                urow[nu++] = r;
            }
        }
        if (s < 0) {
            umiss += fresh;
            if (!slow) {
                const int32_t k = miss_number(p, r, &m);
                if (k < 0) {
                    for (uint64_t q = 0; q < nu; q++) seen[urow[q] >> 6] &= ~(UINT64_C(1) << (urow[q] & 63));
                    return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                                  (unsigned long long)m);
                }
                s = -2 - k;
            }
        }
        slot[i - i0] = s;
    }
    for (uint64_t k = 0; k < nu; k++) seen[urow[k] >> 6] &= ~(UINT64_C(1) << (urow[k] & 63));
    if (pop) {
        nu += popcount_words(seen, words);
        umiss = count_listed(seen, urow, nmiss, 0, rows);
        memset(seen, 0, words * sizeof *seen);
    }
    if (mark && nmiss) { /* the join items count them */
        if (!ls->mrows && !(ls->mrows = calloc(p->h->n_tables, sizeof *ls->mrows)))
            return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                          (unsigned long long)nmiss);
        rowvec *mv = &ls->mrows[a->table];
        if (grow((void **)&mv->v, &mv->cap, mv->n + nmiss, sizeof *mv->v) != 0)
            return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                          (unsigned long long)nmiss);
        memcpy(mv->v + mv->n, urow, nmiss * sizeof *urow);
        mv->n += nmiss;
    }

    /* SSD: the distinct missing rows in one batch */
    uint64_t slow_bytes = 0, on_demand = slow ? umiss : m;
    size_t mstride = (rb + 63) / 64 * 64;
    uint8_t *mbuf = NULL;
    if (m) {
        if (!(mbuf = rows_buf(p, m, 0, mstride)))
            return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                          (unsigned long long)m);
        rc = read_slow_whole(p, a->table, p->m_rows, m, mbuf, mstride, &slow_bytes);
        if (rc) return err_copy(p, rc, ls->err, sizeof ls->err);
        fault_stop("RECMG_FAULT_STOP_AFTER_SLOW_READ");
        /* The batch took a disk's time, long enough for a writer to evict rows that pass 1 found
         * resident; pass 2 would read each use of such a row alone. */
        for (int round = 0; round < RECHECKS; round++) {
            const uint64_t m1 = m;
            if (recheck_hits(p, ids + i0, n, index, efirst, slot, sver, &m) != 0)
                return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                              (unsigned long long)m);
            if (m == m1) break;
            if (!(mbuf = rows_buf(p, m, m1, mstride)))
                return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                              (unsigned long long)m);
            rc = read_slow_whole(p, a->table, p->m_rows + m1, m - m1, mbuf + m1 * mstride, mstride, &slow_bytes);
            if (rc) return err_copy(p, rc, ls->err, sizeof ls->err);
            on_demand = m;
        }
    }

    /* pass 2: accumulate in id order */
    uint64_t tmp[RECMG_PAGE / 8 + 8] __attribute__((aligned(64)));
    uint64_t *tw = tmp;
    uint64_t *heap = NULL;
    if (nwords > RECMG_PAGE / 8) {
        heap = aligned_alloc(64, ((size_t)nwords * 8 + 63) / 64 * 64);
        if (!heap) return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for a row");
        tw = heap;
    }
    acc_fn acc = f16 ? p->acc16 : p->acc32;
    max_fn mx = f16 ? p->max16 : p->max32;
    uint64_t hits = 0;
    const uint32_t pf_lines = rb > 512 ? 8 : (rb + 63) / 64;
    /* fused: hits are accumulated straight from the slot (atomic word loads into vector registers)
     * and checked afterwards; a bag that lost a race with the writer is redone on the safe path below,
     * which copies each row, checks it, and falls back to the slow tier. */
    const acc_fn facc = a->mode == RECMG_MAX ? NULL : (f16 ? p->facc16 : p->facc32);
    const bag_fast_fn fast = pick_fast(p, dim, f16, a->mode, NULL);
    const bagctx ctx = {.p = p, .slot = slot, .ver = sver, .ids = ids, .offsets = a->offsets, .weights = a->weights,
                        .out = a->out, .ostride = ostride, .slow = slow, .mbuf = mbuf, .efirst = efirst,
                        .base = i0, .iend = iend, .mstride = mstride,
                        .rb = rb, .pf_lines = pf_lines, .mean = a->mode == RECMG_MEAN};
    if (p->fault_pass2) fault_stop("RECMG_FAULT_STOP_BEFORE_PASS2");
    /* On an SSD tier a bag with a hit whose row was evicted during pass 2 waits (`later`): its ids are
     * resolved again (recheck_hits: its evicted rows numbered among the call's misses), and after the
     * other bags the new rows are read in one batch and the waiting bags done again (round 1), where a
     * row evicted once more is read alone as the last resort. */
    uint64_t *later = NULL, nlater = 0, m_read = m;
    size_t later_cap = 0;
    for (int round = 0; round < 2; round++) {
        const int defer = round == 0 && !slow;
        const uint64_t nb = round == 0 ? wk->b1 - wk->b0 : nlater;
        for (uint64_t q = 0; q < nb; q++) {
            const uint64_t b = round == 0 ? wk->b0 + q : later[q];
            if (round == 0 && fast && fast(&ctx, b, &hits) == 0) continue;
            float *out = a->out + b * ostride;
            int64_t o0 = a->offsets[b], o1 = a->offsets[b + 1];
            if (facc) {
                memset(out, 0, (size_t)dim * sizeof *out);
                uint64_t h = 0;
                int64_t i = o0;
                for (; i < o1; i++) {
                    prefetch_ahead(&ctx, (uint64_t)i);
                    int32_t s = slot[i - i0];
                    float w = a->weights ? a->weights[i] : 1.0f;
                    if (s >= 0) {
                        facc(out, slot_ptr(p, (uint64_t)s), w, dim);
                        atomic_thread_fence(memory_order_acquire);
                        if (atomic_load_explicit(entry_version(p, efirst + (uint64_t)ids[i]), memory_order_relaxed) !=
                            sver[i - i0])
                            break;
                        h++;
                    } else if (slow) { /* checked like a hit: write_rows writes a row in a window */
                        if (sver[i - i0] & 1u) break;
                        acc(out, slow + (uint64_t)ids[i] * rb, w, dim);
                        atomic_thread_fence(memory_order_acquire);
                        if (atomic_load_explicit(entry_version(p, efirst + (uint64_t)ids[i]), memory_order_relaxed) !=
                            sver[i - i0])
                            break;
                    } else {
                        acc(out, mbuf + (size_t)(-2 - s) * mstride, w, dim);
                    }
                }
                if (i == o1) {
                    hits += h;
                    if (a->mode == RECMG_MEAN && o1 > o0) mean_of(out, o1 - o0, dim);
                    continue;
                }
            }
            /* a memory tier's missing row is used in place under its group's version, checked after
             * its use: a write_rows met, and the bag is done again with its missing rows copied whole */
            int copy_misses = 0;
            const uint64_t on_demand0 = on_demand, slow_bytes0 = slow_bytes;
        redo:
            if (a->mode == RECMG_MAX)
                for (uint32_t j = 0; j < dim; j++) out[j] = -INFINITY;
            else
                memset(out, 0, (size_t)dim * sizeof *out);
            uint64_t hb = 0;
            for (int64_t i = o0; i < o1; i++) {
                prefetch_ahead(&ctx, (uint64_t)i);
                int64_t r = ids[i];
                int32_t s = slot[i - i0];
                const void *row;
                const _Atomic uint32_t *ver = entry_version(p, efirst + (uint64_t)r);
                uint32_t in_place = 1; /* even: row is the slow tier's, read under this version */
                if (s >= 0 &&
                    (slot_read(p, s, ver, sver[i - i0], tw, nwords) || slot_reread(p, &index[r], ver, tw, nwords))) {
                    row = tw;
                    hb++;
                } else if (slow) {
                    if (s >= 0) { /* lost a race with the writer: the slow tier is the truth */
                        on_demand++;
                        slow_bytes += rb;
                    }
                    in_place = copy_misses ? 1u : atomic_load_explicit(ver, memory_order_acquire);
                    if (in_place & 1u) {
                        slow_copy_whole(p, a->table, r, ver, slow + (uint64_t)r * rb, (uint8_t *)tw, rb);
                        row = tw;
                    } else {
                        row = slow + (uint64_t)r * rb;
                    }
                } else if (s < 0) {
                    row = mbuf + (size_t)(-2 - s) * mstride;
                } else {
                    if (defer) { /* the bag's ids resolved again (this one is a miss now): it waits */
                        if (grow((void **)&later, &later_cap, nlater + 1, sizeof *later) != 0 ||
                            recheck_hits(p, ids + o0, (uint64_t)(o1 - o0), index, efirst, slot + (o0 - (int64_t)i0),
                                         sver + (o0 - (int64_t)i0), &m) != 0) {
                            free(heap);
                            free(later);
                            return rc_buf(ls->err, sizeof ls->err, RECMG_ENOMEM, "out of memory for %llu missing rows",
                                          (unsigned long long)m);
                        }
                        later[nlater++] = b;
                        goto next;
                    }
                    rc = read_slow_whole(p, a->table, &ids[i], 1, (uint8_t *)tw, rb, &slow_bytes);
                    if (rc) {
                        free(heap);
                        free(later);
                        return err_copy(p, rc, ls->err, sizeof ls->err);
                    }
                    on_demand++;
                    row = tw;
                }
                if (a->mode == RECMG_MAX && i == o0) /* torch's max starts from the first row (a NaN there stays) */
                    f16 ? f16_to_f32_row(out, row, dim) : (void)memcpy(out, row, (size_t)dim * sizeof *out);
                else if (a->mode == RECMG_MAX)
                    mx(out, row, dim);
                else
                    acc(out, row, a->weights ? a->weights[i] : 1.0f, dim);
                if (!(in_place & 1u)) {
                    atomic_thread_fence(memory_order_acquire);
                    if (atomic_load_explicit(ver, memory_order_relaxed) != in_place) {
                        copy_misses = 1;
                        on_demand = on_demand0;
                        slow_bytes = slow_bytes0;
                        goto redo;
                    }
                }
            }
            hits += hb;
            if (a->mode == RECMG_MEAN && o1 > o0) {
                mean_of(out, o1 - o0, dim);
            } else if (a->mode == RECMG_MAX && o1 == o0) {
                memset(out, 0, (size_t)dim * sizeof *out);
            }
        next:;
        }
        if (!nlater) break;
        if (m > m_read) { /* the waiting bags' rows that no batch has read yet */
            mbuf = rows_buf(p, m, m_read, mstride); /* (ctx.mbuf is round 0's: round 1 takes no fast kernel) */
            rc = mbuf ? read_slow_whole(p, a->table, p->m_rows + m_read, m - m_read, mbuf + m_read * mstride, mstride,
                                       &slow_bytes)
                      : rc_set(p, RECMG_ENOMEM, "out of memory for %llu missing rows", (unsigned long long)m);
            if (rc) {
                free(heap);
                free(later);
                return err_copy(p, rc, ls->err, sizeof ls->err);
            }
            on_demand += m - m_read;
            m_read = m;
        }
    }
    free(later);
    free(heap);
    if (slow) slow_bytes += umiss * rb;
    /* the ids' records at their place in the call's run (the caller publishes the run in argument
     * order): the copy is spread over the threads like the lookups */
    if (wk->rr) ring_write(p, wk->rr, wk->at, a->table, ids + i0, n, RECMG_REC_LOOKUP);

    res->unique = nu;
    res->hits = hits;
    res->on_demand = on_demand;
    res->slow_bytes = slow_bytes;
    return RECMG_OK;
}

/* Distinct rows (and distinct missing rows) of a split argument among the ids in one range of row
 * values: the ranges are counted by different threads at once, each in its own bitmap. */
static int unique_part(recmg_pool *p, lscratch *ls, const work *wk, bagres *res)
{
    const recmg_bag_args *a = wk->a;
    const tabdesc *t = &p->tables[a->table];
    int rc = scratch(p, ls, a->table, a->n_ids, 0);
    if (rc) return rc;
    uint64_t *seen = ls->seen[a->table];
    int64_t *urow = ls->urow;
    _Atomic int32_t *index = p->index + t->index_first;
    const uint64_t lo = t->rows * (uint64_t)wk->part / (uint64_t)wk->nparts;
    const uint64_t span = t->rows * (uint64_t)(wk->part + 1) / (uint64_t)wk->nparts - lo;
    uint64_t nu = 0, umiss = 0;
    /* branch-free: half the ids are another range's, which a branch would mispredict */
    for (uint64_t i = 0; i < a->n_ids; i++) {
        uint64_t r = (uint64_t)a->ids[i];
        const uint64_t in = r - lo < span; /* else another range's, or out of range (the bag work reports it) */
        r = in ? r : lo;
        const uint64_t bit = UINT64_C(1) << (r & 63), w = seen[r >> 6];
        const uint64_t fresh = in & !(w & bit);
        seen[r >> 6] = w | (bit & (UINT64_C(0) - in));
        urow[nu] = (int64_t)r;
        nu += fresh;
    }
    /* the index entries of the distinct rows, with their loads started early */
    for (uint64_t k = 0; k < nu; k++) {
        if (k + 2 * PF_DIST < nu) __builtin_prefetch(&index[urow[k + 2 * PF_DIST]], 0, 0);
        umiss += atomic_load_explicit(&index[urow[k]], memory_order_relaxed) < 0;
        seen[urow[k] >> 6] &= ~(UINT64_C(1) << (urow[k] & 63));
    }
    res->unique = nu;
    res->on_demand = umiss;
    res->slow_bytes = umiss * t->row_bytes;
    return RECMG_OK;
}

/* ---- worker threads (memory slow tiers): tables, and large tables' bags, spread over threads ---- */

/* A call's items, claimed one at a time by whichever threads come. A claim carries the job's tag (the
 * low 32 bits of the workers' gen that published it; 0 for a call without workers), so a worker late
 * for a job (descheduled while the others did it) claims nothing of it, nor of the next job until it
 * has seen that job's gen; and the caller waits for its items to be done (finished), not for every
 * worker to come by: a worker that the kernel has not run yet holds up no call. items and res are read
 * only after a claim, while the job is live. */
typedef struct job {
    _Atomic uint64_t next; /* tag << 32 | the next item to claim */
    _Atomic uint64_t nitems;
    _Atomic uint64_t finished; /* items done (release: their results and ring records) */
    const work *items;
    bagres *res;
} job;

typedef struct workers {
    int n; /* worker threads (the caller works too) */
    pthread_t *th;
    /* A job is published by storing gen (seq_cst). Idle workers spin on gen for a while (a wake through
     * the futex costs tens of microseconds and more in a VM, per call), then sleep on cv_job, counted
     * in sleepers; the caller takes the mutex and broadcasts only when someone sleeps. */
    pthread_mutex_t mu;
    pthread_cond_t cv_job;
    _Atomic uint64_t gen;
    _Atomic int sleepers;
    _Atomic int stop;
    job jb;
    char *hold; /* RECMG_FAULT_HOLD_WORKER when the workers started: while that path exists, the first
                 * worker, having seen a job, waits before it claims (tests: a late worker holds up no
                 * call) */
    recmg_pool *p;
} workers;

typedef struct wstart {
    workers *w;
    int id;
} wstart;

static inline void cpu_relax(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

/* A join item: distinct rows and distinct misses of a split argument in one range of its table's
 * bitmap words, from the bitmaps and miss lists of the threads that ran its chunks (which are done
 * first). The union is spread over the threads like the chunks, so that no thread counts a whole
 * table's bitmaps alone after every call; the bitmaps are read once, cleared as they are, the first
 * marking thread's left holding the union for the misses' count until the end. */
static void join_part(recmg_pool *p, const work *wk, bagres *res)
{
    for (unsigned k = 1; atomic_load_explicit(wk->done, memory_order_acquire) < wk->need; k++) {
        cpu_relax();
        if (k % 256 == 0) sched_yield();
    }
    const uint32_t tb = wk->a->table;
    const uint64_t words = (p->tables[tb].rows + 63) / 64;
    const uint64_t w0 = words * (uint64_t)wk->part / (uint64_t)wk->nparts;
    const uint64_t w1 = words * (uint64_t)(wk->part + 1) / (uint64_t)wk->nparts;
    uint64_t *maps[MAX_THREADS];
    int nm = 0;
    for (int q = 0; q < p->n_threads; q++) /* a marking thread's bitmap exists: the caller made it */
        if (wk->by[q]) maps[nm++] = p->ls[q].seen[tb];
    uint64_t u = 0, um = 0;
    if (nm == 0) goto counted; /* every chunk failed before it marked (out of memory) */
    uint64_t *uni = maps[0];
    for (uint64_t w = w0; w < w1; w++) {
        uint64_t sw = uni[w];
        for (int j = 1; j < nm; j++) {
            sw |= maps[j][w];
            maps[j][w] = 0;
        }
        uni[w] = sw;
    }
    u = popcount_words(uni + w0, w1 - w0);
    /* the listed misses in this range of rows, each distinct row counted once (its union bit cleared) */
    const uint64_t lo = w0 * 64, span = (w1 - w0) * 64;
    for (int q = 0; q < p->n_threads; q++)
        if (wk->by[q] && p->ls[q].mrows)
            um += count_listed(uni, p->ls[q].mrows[tb].v, p->ls[q].mrows[tb].n, lo, span);
    memset(uni + w0, 0, (w1 - w0) * sizeof *uni);
counted:
    res->unique = u;
    res->on_demand = um;
    res->slow_bytes = um * p->tables[tb].row_bytes;
}

/* Item k of job `tag`, or -1 when the job has no item left or is not (any longer) the one in jb. */
static int64_t claim(job *jb, uint32_t tag)
{
    uint64_t v = atomic_load_explicit(&jb->next, memory_order_acquire);
    for (;;) {
        const uint64_t k = v & UINT32_MAX;
        if ((uint32_t)(v >> 32) != tag || k >= atomic_load_explicit(&jb->nitems, memory_order_relaxed)) return -1;
        if (atomic_compare_exchange_weak_explicit(&jb->next, &v, v + 1, memory_order_acquire, memory_order_acquire))
            return (int64_t)k;
    }
}

/* Claims items of job `tag` in order until none is left. Join items come after every other item of
 * the job, so a join item waits only for chunks that other threads are already running. */
static void run_items(recmg_pool *p, lscratch *ls, job *jb, uint32_t tag)
{
    for (int64_t k; (k = claim(jb, tag)) >= 0;) {
        const work *wk = &jb->items[k];
        bagres *res = &jb->res[k];
        if (wk->join) {
            join_part(p, wk, res);
        } else {
            if (wk->mark) wk->by[ls - p->ls] = 1;
            res->rc = wk->part >= 0 ? unique_part(p, ls, wk, res) : bag_one(p, ls, wk, res);
            if (res->rc) snprintf(res->err, sizeof res->err, "%s", ls->err);
            if (wk->mark) atomic_fetch_add_explicit(wk->done, 1, memory_order_release);
        }
        atomic_fetch_add_explicit(&jb->finished, 1, memory_order_release);
    }
}

/* How long an idle worker polls for the next job before it sleeps. Waking a sleeping thread costs
 * tens of microseconds on bare metal and up to milliseconds in a VM whose idle vCPU halted, more than
 * a whole table's lookup, so a worker polls through the gaps between an app's calls (as OpenMP's
 * threads do), and sleeps only when the app has stopped calling. */
#define SPIN_US 2000u

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *worker_main(void *arg)
{
    wstart st = *(wstart *)arg;
    free(arg);
    workers *w = st.w;
    lscratch *ls = &w->p->ls[st.id];
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = atomic_load(&w->gen);
        uint64_t t0 = 0;
        for (unsigned k = 1; g == seen && !atomic_load_explicit(&w->stop, memory_order_relaxed); k++) {
            cpu_relax();
            g = atomic_load(&w->gen);
            if (k % 64 == 0) {
                uint64_t t = mono_us();
                if (!t0) t0 = t;
                else if (t - t0 > SPIN_US) break;
            }
            if (k % 256 == 0) sched_yield(); /* a thread with work waits for this core: let it run */
        }
        if (g == seen) {
            pthread_mutex_lock(&w->mu);
            atomic_fetch_add(&w->sleepers, 1);
            while ((g = atomic_load(&w->gen)) == seen && !atomic_load(&w->stop)) pthread_cond_wait(&w->cv_job, &w->mu);
            atomic_fetch_sub(&w->sleepers, 1);
            pthread_mutex_unlock(&w->mu);
        }
        if (atomic_load(&w->stop)) break;
        seen = g;
        if (w->hold && st.id == 1)
            while (access(w->hold, F_OK) == 0 && !atomic_load(&w->stop)) usleep(1000);
        run_items(w->p, ls, &w->jb, (uint32_t)g);
    }
    return NULL;
}

/* Publishes a job (or stop) to the workers. */
static void workers_kick(workers *w)
{
    atomic_fetch_add(&w->gen, 1);
    if (atomic_load(&w->sleepers) > 0) {
        pthread_mutex_lock(&w->mu);
        pthread_cond_broadcast(&w->cv_job);
        pthread_mutex_unlock(&w->mu);
    }
}

static void scratch_free(recmg_pool *p, lscratch *ls)
{
    free(ls->slot);
    free(ls->ver);
    free(ls->urow);
    if (ls->seen)
        for (uint32_t t = 0; t < p->h->n_tables; t++) free(ls->seen[t]);
    free(ls->seen);
    if (ls->mrows)
        for (uint32_t t = 0; t < p->h->n_tables; t++) free(ls->mrows[t].v);
    free(ls->mrows);
}

void lookup_free(recmg_pool *p)
{
    workers *w = p->wk;
    if (w && getpid() == p->pid) { /* a forked child has no worker threads to join */
        atomic_store(&w->stop, 1);
        workers_kick(w);
        for (int i = 0; i < w->n; i++) pthread_join(w->th[i], NULL);
    }
    if (w) {
        free(w->th);
        free(w->hold);
        free(w);
    }
    p->wk = NULL;
    if (p->ls)
        for (int i = 0; i < p->n_threads; i++) scratch_free(p, &p->ls[i]);
    free(p->ls);
    p->ls = NULL;
}

/* Starts the workers (n_threads - 1 of them); on failure lookups stay single-threaded. */
static void workers_start(recmg_pool *p)
{
    workers *w = calloc(1, sizeof *w);
    if (!w) return;
    w->th = calloc((size_t)p->n_threads, sizeof *w->th);
    if (!w->th) {
        free(w);
        return;
    }
    w->p = p;
    const char *hold = getenv("RECMG_FAULT_HOLD_WORKER");
    if (hold && hold[0] && !(w->hold = strdup(hold))) {
        free(w->th);
        free(w);
        return;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv_job, NULL);
    for (int i = 1; i < p->n_threads; i++) {
        wstart *st = malloc(sizeof *st);
        if (!st) break;
        *st = (wstart){.w = w, .id = i};
        if (pthread_create(&w->th[w->n], NULL, worker_main, st) != 0) {
            free(st);
            break;
        }
        w->n++;
    }
    p->wk = w;
}

int recmg_set_threads(recmg_pool *p, int n)
{
    if (!p || n < 1 || n > MAX_THREADS)
        return p ? rc_set(p, RECMG_EINVAL, "threads must be 1..%d, got %d", MAX_THREADS, n) : RECMG_EINVAL;
    pthread_mutex_lock(&p->lock);
    lookup_free(p);
    p->n_threads = n;
    pthread_mutex_unlock(&p->lock);
    return RECMG_OK;
}

static void account(recmg_pool *p, const recmg_bag_args *a, const bagres *r)
{
    shm_counters *tc = &p->stab[a->table].c;
    atomic_fetch_add_explicit(&tc->lookups, a->n_ids, memory_order_relaxed);
    atomic_fetch_add_explicit(&tc->unique, r->unique, memory_order_relaxed);
    atomic_fetch_add_explicit(&tc->hits, r->hits, memory_order_relaxed);
    atomic_fetch_add_explicit(&tc->on_demand, r->on_demand, memory_order_relaxed);
    atomic_fetch_add_explicit(&tc->slow_bytes, r->slow_bytes, memory_order_relaxed);
    if (p->ring) {
        shm_counters *pc = &p->ring->c;
        atomic_fetch_add_explicit(&pc->lookups, a->n_ids, memory_order_relaxed);
        atomic_fetch_add_explicit(&pc->unique, r->unique, memory_order_relaxed);
        atomic_fetch_add_explicit(&pc->hits, r->hits, memory_order_relaxed);
        atomic_fetch_add_explicit(&pc->on_demand, r->on_demand, memory_order_relaxed);
        atomic_fetch_add_explicit(&pc->slow_bytes, r->slow_bytes, memory_order_relaxed);
    }
}

#define MIN_CHUNK_BAGS 64

/* Chunks of bags each of n arguments is split into, for t threads (at most, by MIN_CHUNK_BAGS). A
 * call with at most t arguments is split into some 8t chunks, which every thread shares. With more
 * arguments, the fewest chunks an argument that keep the threads busy for 90% of the last round
 * (26 tables on 16 threads: 3 each, 78 chunks in 5 rounds, where 26 whole tables take 2 rounds with
 * 6 threads idle in the second): each split argument's distinct rows are counted from the bitmaps
 * of the threads that ran its chunks, so fewer chunks read fewer bitmaps. */
static uint32_t chunks_per_arg(uint32_t n, uint32_t t)
{
    if (t < 2 || n == 0) return 1;
    if (n <= t) return (8 * t + n - 1) / n;
    uint32_t c = 1;
    for (; c < 8; c++) {
        const uint64_t items = (uint64_t)n * c, rounds = (items + t - 1) / t;
        if (10 * items >= 9 * rounds * t) break;
    }
    return c;
}

int recmg_embedding_bags(recmg_pool *p, uint32_t n, const recmg_bag_args *args)
{
    if (!p) return RECMG_EINVAL;
    if (n && !args) return null_arg(p, "recmg_embedding_bags: args is NULL");
    if (p->ring && getpid() != p->pid) return ring_forked_error(p);
    for (uint32_t k = 0; k < n; k++) {
        char why[RECMG_ERRLEN];
        int rc = check_args(p, why, &args[k]);
        if (rc) return rc_set(p, rc, "%s", why);
    }
    pthread_mutex_lock(&p->lock);
    int rc = RECMG_OK;
    work *items = NULL;
    bagres *res = NULL, *argres = NULL;
    uint32_t *first = NULL;
    uint64_t *at = NULL;
    uint8_t *marked = NULL, *by = NULL;
    _Atomic uint32_t *done = NULL;
    if (!p->ls && !(p->ls = calloc((size_t)p->n_threads, sizeof *p->ls))) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for lookup scratch");
        goto out;
    }
    /* threads only for memory slow tiers (the SSD path shares one io_uring), and never in a forked
     * child that inherited this handle */
    int parallel = p->n_threads > 1 && p->slow && getpid() == p->pid;
    if (parallel && !p->wk) workers_start(p);
    parallel = parallel && p->wk && p->wk->n > 0;
    /* the work items: one per argument, or (few arguments, many bags) a split of its bags */
    uint64_t nitems = 0;
    const uint32_t split_to = parallel ? chunks_per_arg(n, (uint32_t)p->n_threads) : 1u;
    first = calloc((size_t)n + 1, sizeof *first);
    argres = calloc(n ? n : 1, sizeof *argres);
    at = calloc((size_t)n + 1, sizeof *at);
    if (!first || !argres || !at) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for %u lookups", n);
        goto out;
    }
    /* A split argument: its chunks of bags, and its distinct rows counted either by join items (its
     * chunks mark their threads' bitmaps of its table and list their misses, the join items count and
     * clear the union, a range of bitmap words each), or, when the bitmap is larger than its ids or
     * another argument of the call has the same table, by n_threads items that each scan its ids for
     * one range of row values. Join items go after all other items. */
    const int nparts = p->n_threads;
    marked = calloc(n ? n : 1, 1);
    done = calloc(n ? n : 1, sizeof *done);
    by = calloc((size_t)(n ? n : 1) * (size_t)nparts, 1);
    if (!marked || !done || !by) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for %u lookups", n);
        goto out;
    }
    uint64_t njoin = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t c = args[k].n_bags / MIN_CHUNK_BAGS;
        c = c < split_to ? c : split_to;
        first[k] = (uint32_t)nitems;
        if (c > 1) {
            const uint32_t tb = args[k].table;
            int alone = (p->tables[tb].rows + 63) / 64 <= args[k].n_ids;
            for (uint32_t q = 0; q < n && alone; q++) alone = q == k || args[q].table != tb;
            for (int q = 0; q < nparts && alone; q++)
                if (row_bitmap(p, &p->ls[q].seen, tb) != 0) {
                    rc = rc_set(p, RECMG_ENOMEM, "out of memory for %u lookups", n);
                    goto out;
                }
            marked[k] = (uint8_t)alone;
            njoin += alone ? (uint64_t)nparts : 0;
        }
        nitems += c > 1 ? (marked[k] ? 0 : (uint64_t)nparts) + c : 1;
    }
    first[n] = (uint32_t)nitems;
    /* the arguments' ids go to the ring in argument order, one run for the call: argument k's from
     * position at[k] */
    for (uint32_t k = 0; k < n; k++) at[k + 1] = at[k] + args[k].n_ids;
    const ringrun rr = ring_begin(p);
    const uint64_t nbase = nitems;
    nitems += njoin;
    items = calloc(nitems ? nitems : 1, sizeof *items);
    res = calloc(nitems ? nitems : 1, sizeof *res);
    if (!items || !res) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory for %u lookups", n);
        goto out;
    }
    work *jt = items + nbase;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t c = first[k + 1] - first[k], nb = args[k].n_bags;
        work *it = items + first[k];
        if (c == 1) {
            it[0] = (work){.a = &args[k], .b0 = 0, .b1 = nb, .uniq = 1, .part = -1, .rr = &rr, .at = at[k]};
            continue;
        }
        if (!marked[k]) {
            for (int q = 0; q < nparts; q++) *it++ = (work){.a = &args[k], .part = q, .nparts = nparts};
            c -= (uint64_t)nparts;
        } else {
            for (int q = 0; q < nparts; q++)
                *jt++ = (work){.a = &args[k], .part = q, .nparts = nparts, .join = 1, .need = (uint32_t)c,
                               .done = &done[k], .by = by + (size_t)k * (size_t)nparts};
        }
        for (uint64_t q = 0; q < c; q++) {
            const uint64_t b0 = nb * q / c;
            *it++ = (work){.a = &args[k], .b0 = b0, .b1 = nb * (q + 1) / c, .uniq = 0, .part = -1,
                           .mark = marked[k], .done = &done[k], .by = by + (size_t)k * (size_t)nparts, .rr = &rr,
                           .at = at[k] + (uint64_t)args[k].offsets[b0]};
        }
    }
    if (parallel) {
        workers *w = p->wk;
        job *jb = &w->jb;
        /* the previous job's items were all done, so no thread reads these until the tag below */
        jb->items = items;
        jb->res = res;
        atomic_store_explicit(&jb->nitems, nitems, memory_order_relaxed);
        atomic_store_explicit(&jb->finished, 0, memory_order_relaxed);
        const uint32_t tag = (uint32_t)(atomic_load_explicit(&w->gen, memory_order_relaxed) + 1);
        atomic_store_explicit(&jb->next, (uint64_t)tag << 32, memory_order_release);
        workers_kick(w); /* gen + 1: the tag */
        run_items(p, &p->ls[0], jb, tag);
        /* the other threads are on the job's last items: poll, yielding the CPU now and then */
        for (unsigned k = 1; atomic_load_explicit(&jb->finished, memory_order_acquire) < nitems; k++) {
            cpu_relax();
            if (k % 256 == 0) sched_yield();
        }
    } else {
        job jb = {.nitems = nitems, .items = items, .res = res};
        run_items(p, &p->ls[0], &jb, 0);
    }
    for (uint32_t k = 0; k < n; k++) /* the join items have counted the marking threads' miss lists */
        for (int q = 0; q < nparts && marked[k]; q++)
            if (by[(size_t)k * (size_t)nparts + (size_t)q] && p->ls[q].mrows) p->ls[q].mrows[args[k].table].n = 0;
    for (uint64_t q = nbase; q < nitems; q++) { /* the join items' counts */
        bagres *t = &argres[items[q].a - args];
        t->unique += res[q].unique;
        t->on_demand += res[q].on_demand;
        t->slow_bytes += res[q].slow_bytes;
    }
    /* in argument order: the first failure is the error; what came before it is logged and counted */
    uint64_t logged = 0;
    for (uint32_t k = 0; k < n && rc == RECMG_OK; k++) {
        bagres *t = &argres[k];
        for (uint32_t q = first[k]; q < first[k + 1] && !t->rc; q++) {
            if (res[q].rc) {
                t->rc = res[q].rc;
                snprintf(t->err, sizeof t->err, "%s", res[q].err);
                break;
            }
            t->unique += res[q].unique;
            t->hits += res[q].hits;
            t->on_demand += res[q].on_demand;
            t->slow_bytes += res[q].slow_bytes;
        }
        if (t->rc) {
            rc = rc_set(p, t->rc, "%s", t->err);
        } else {
            account(p, &args[k], t);
            ring_count_drops(p, &rr, at[k], args[k].table, args[k].n_ids, RECMG_REC_LOOKUP);
            logged = at[k + 1];
        }
    }
    /* the workers' records are visible here (each item's count in finished released them) */
    ring_publish(p, &rr, logged);
out:
    pthread_mutex_unlock(&p->lock);
    free(items);
    free(res);
    free(argres);
    free(first);
    free(at);
    free(marked);
    free(by);
    free((void *)done);
    return rc;
}

int recmg_embedding_bag(recmg_pool *p, uint32_t table, const int64_t *ids, uint64_t n_ids, const int64_t *offsets,
                        uint64_t n_bags, int mode, const float *weights, float *out)
{
    recmg_bag_args a = {.table = table, .mode = mode, .ids = ids, .n_ids = n_ids, .offsets = offsets,
                        .n_bags = n_bags, .weights = weights, .out = out};
    return recmg_embedding_bags(p, 1, &a);
}
