/* Random check of the once-used rows' table (native/policy/once.h) against a reference, built with
 * AddressSanitizer and UndefinedBehaviorSanitizer by tests/test_models_native_step.py:
 *
 *     once_check OPS SEED
 *
 * Keys come from a universe of 6,000 (spread over all 64 bits, negative ones too); the reference is an
 * array of each key's offset. Operations: put (a new key, or one already in), take (the offset, or
 * SC_ONCE_NONE, as the reference says), expire (a clock over part of the table: entries below the bound
 * may go, none at or above it), shift (every offset less a delta; those that would leave int32 go).
 * Every 500 operations the whole table is scanned: each entry is a reference entry with its offset and is
 * reachable from its home slot (no empty slot between), every reference entry not marked "may be gone"
 * is there, and the count is right; then a full turn of expire at the lowest bound marked removes every
 * marked entry. The table grows to thousands of entries and shrinks back, in phases.
 * Prints "once_check: ok OPS ops, N expired, M shifted out" and exits 0, or names the operation and
 * exits 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "once.h"
#include "xorshift.h"

#define U 6000
#define GOLD 0x9E3779B97F4A7C15ULL

static int64_t key_of_u(int64_t u) { return (int64_t)((uint64_t)u * GOLD); }

/* x * y = 1 mod 2^64 (x odd), by Newton's iteration */
static uint64_t inverse(uint64_t x)
{
    uint64_t y = x;
    for (int i = 0; i < 6; i++)
        y *= 2 - x * y;
    return y;
}

/* x from mix64(x): each step of it undone, last first */
static uint64_t unmix64(uint64_t x)
{
    x ^= (x >> 31) ^ (x >> 62);
    x *= inverse(MIX64_M2);
    x ^= (x >> 27) ^ (x >> 54);
    x *= inverse(MIX64_M1);
    x ^= (x >> 30) ^ (x >> 60);
    return x;
}

#define FAIL(...) return fprintf(stderr, "once_check: op %" PRId64 ": ", op), fprintf(stderr, __VA_ARGS__), 1

int main(int argc, char **argv)
{
    if (argc != 3)
        return fprintf(stderr, "usage: once_check OPS SEED\n"), 2;
    int64_t ops = strtoll(argv[1], NULL, 10);
    uint64_t s = strtoull(argv[2], NULL, 10) * 2 + 1;
    uint64_t inv = inverse(GOLD); /* to tell a table key's u */
    static int64_t ref[U];   /* the key's offset, or NONE */
    static uint8_t maybe[U]; /* below a bound an expire was given: may be gone */
    static uint8_t seen[U];
    for (int u = 0; u < U; u++)
        ref[u] = SC_ONCE_NONE, maybe[u] = 0;
    sc_once t = {0};
    int64_t expired = 0, shifted = 0, lo = 0, hi = 1000; /* offsets put lie in [lo, hi) */
    for (int64_t op = 0; op < ops; op++) {
        int phase = (int)((op / 20000) % 3); /* 0: mostly puts, 1: mixed, 2: mostly takes */
        int64_t u = (int64_t)(next(&s) % U), key = key_of_u(u);
        uint64_t r = next(&s) % 100;
        int put = phase == 0 ? r < 70 : phase == 1 ? r < 45 : r < 15;
        if (put) {
            int32_t off = (int32_t)(lo + (int64_t)(next(&s) % (uint64_t)(hi - lo)));
            if (sc_once_put(&t, key, off) != SC_OK)
                FAIL("put failed\n");
            ref[u] = off, maybe[u] = 0;
        } else if (r < 92) {
            int32_t got = sc_once_take(&t, key);
            if (maybe[u]) { /* gone, or still there with its offset */
                if (got != SC_ONCE_NONE && got != ref[u])
                    FAIL("take of a marked key gave %d, not %" PRId64 "\n", got, ref[u]);
            } else if (got != ref[u]) {
                FAIL("take gave %d, not %" PRId64 "\n", got, ref[u]);
            }
            ref[u] = SC_ONCE_NONE, maybe[u] = 0;
        } else if (r < 98) { /* a partial clock turn below a bound within the offsets */
            int64_t bound = lo + (int64_t)(next(&s) % (uint64_t)(hi - lo + 1));
            int64_t before = t.n;
            int64_t gone = sc_once_expire(&t, bound, (int64_t)(next(&s) % 2000));
            if (gone != before - t.n)
                FAIL("expire said %" PRId64 " went, the count fell by %" PRId64 "\n", gone, before - t.n);
            expired += gone;
            for (int v = 0; v < U; v++)
                if (ref[v] != SC_ONCE_NONE && ref[v] < bound)
                    maybe[v] = 1;
        } else { /* the base moves: mostly a little, now and then far (entries leave int32) */
            int64_t delta = next(&s) % 8 ? (int64_t)(next(&s) % 200) : (int64_t)INT32_MAX;
            int64_t before = t.n;
            int64_t out = sc_once_shift(&t, delta);
            if (out != before - t.n)
                FAIL("shift said %" PRId64 " went, the count fell by %" PRId64 "\n", out, before - t.n);
            int64_t sure = 0, all = 0; /* entries that leave: those surely there, and all */
            for (int v = 0; v < U; v++) {
                if (ref[v] == SC_ONCE_NONE)
                    continue;
                if (ref[v] - delta <= INT32_MIN + 1) {
                    sure += !maybe[v], all++;
                    ref[v] = SC_ONCE_NONE, maybe[v] = 0;
                } else {
                    ref[v] -= delta;
                }
            }
            if (out < sure || out > all)
                FAIL("shift took %" PRId64 " out, not between %" PRId64 " and %" PRId64 "\n", out, sure, all);
            shifted += out;
            lo -= delta, hi -= delta;
            if (lo < INT32_MIN / 2) /* the next offsets near 0 again */
                lo = 0, hi = 1000;
        }
        if (op % 500 == 499) { /* the whole table against the reference */
            int64_t found = 0;
            for (int v = 0; v < U; v++)
                seen[v] = 0;
            for (uint64_t i = 0; i < t.size; i++) {
                const sc_once_ent *e = &t.ent[i];
                if (e->off == SC_ONCE_NONE)
                    continue;
                int64_t k = (int64_t)unmix64(((uint64_t)e->mhi << 32) | e->mlo); /* an entry keeps the mix */
                int64_t v = (int64_t)((uint64_t)k * inv);
                if (v < 0 || v >= U || ref[v] != e->off)
                    FAIL("slot %" PRIu64 " holds a key or offset the reference does not\n", i);
                for (uint64_t h = sc_once_home(t.size, k); h != i; h = h + 1 == t.size ? 0 : h + 1)
                    if (t.ent[h].off == SC_ONCE_NONE)
                        FAIL("slot %" PRIu64 ": an empty slot between its home and it\n", i);
                seen[v] = 1;
                found++;
            }
            if (found != t.n)
                FAIL("%" PRId64 " entries found, the count says %" PRId64 "\n", found, t.n);
            int64_t lowest = INT64_MAX;
            for (int v = 0; v < U; v++) {
                if (ref[v] == SC_ONCE_NONE)
                    continue;
                if (!seen[v] && !maybe[v])
                    FAIL("key %d is missing\n", v);
                if (!seen[v])
                    ref[v] = SC_ONCE_NONE, maybe[v] = 0; /* expired */
                else if (maybe[v] && ref[v] < lowest)
                    lowest = ref[v];
            }
            if (lowest != INT64_MAX && next(&s) % 2) { /* a full turn removes every marked entry below */
                int64_t gone = sc_once_expire(&t, lowest + 1, (int64_t)t.size + t.n);
                expired += gone;
                for (int v = 0; v < U; v++) {
                    if (ref[v] == SC_ONCE_NONE || ref[v] > lowest)
                        continue;
                    if (sc_once_take(&t, key_of_u(v)) != SC_ONCE_NONE)
                        FAIL("key %d (offset %" PRId64 ") outlived a full turn below %" PRId64 "\n", v, ref[v],
                             lowest + 1);
                    ref[v] = SC_ONCE_NONE, maybe[v] = 0;
                }
            }
        }
    }
    printf("once_check: ok %" PRId64 " ops, %" PRId64 " expired, %" PRId64 " shifted out\n", ops, expired, shifted);
    sc_once_free(&t);
    return 0;
}
