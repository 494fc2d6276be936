/* Random check of the key -> id map's deletion and id reuse (native/policy/idmap.c), built with
 * AddressSanitizer and UndefinedBehaviorSanitizer by tests/test_models_native_step.py:
 *
 *     idmap_check OPS SEED
 *
 * Keys come from a small space (so probe runs collide, wrap around the table and rehash) and every
 * operation is checked against a direct-indexed reference: get gives a mapped key its id, a new key an
 * id no live key holds (a freed one first, while any are free) and says it is new; del forgets the key
 * and nothing else (by key, or by id through sc_idmap_release, repeated: the repeat is skipped; a free
 * or out-of-range id is refused or skipped); find, key_of and the live count agree with the reference
 * after every operation.
 * Prints "idmap_check: ok ..." and exits 0, or names the operation and exits 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

#define SPACE 4096

static uint64_t next(uint64_t *s)
{
    uint64_t x = *s; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static int fail(int64_t op, const char *what, int64_t key)
{
    printf("idmap_check: op %" PRId64 ": %s (key %" PRId64 ")\n", op, what, key);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return fprintf(stderr, "usage: idmap_check OPS SEED [LOAD_PERCENT]\n"), 2;
    int64_t ops = strtoll(argv[1], NULL, 10);
    uint64_t s = strtoull(argv[2], NULL, 10) * 2 + 1;
    sc_idmap *m = sc_idmap_new();
    if (m && argc == 4 && sc_idmap_set_load(m, (int32_t)strtol(argv[3], NULL, 10)) != SC_OK)
        return fprintf(stderr, "idmap_check: bad load %s\n", argv[3]), 2;
    int32_t ref[SPACE]; /* key index -> id, -1: not mapped */
    int64_t *owner = calloc((size_t)SPACE * 2, sizeof(int64_t)); /* id -> key index + 1, 0: free */
    if (!m || !owner)
        return fprintf(stderr, "idmap_check: out of memory\n"), 2;
    for (int i = 0; i < SPACE; i++)
        ref[i] = -1;
    int64_t live = 0, dels = 0, reused = 0, hi = 0;
    for (int64_t op = 0; op < ops; op++) {
        int64_t k = (int64_t)(next(&s) % SPACE);
        int64_t key = (int64_t)((uint64_t)k * 0x9E3779B97F4A7C15ULL >> 4) ^ (k << 40); /* spread, signed */
        /* phases: grow to most of the space, shrink to a few, grow again */
        int grow = (op / 20000) % 2 == 0;
        int do_del = (int)(next(&s) % 100) < (grow ? 30 : 70);
        if (do_del) {
            if (ref[k] >= 0 && next(&s) % 2) {
                /* by id (sc_idmap_release), twice over: the repeat finds the id freed and skips it */
                int32_t twice[2] = {ref[k], ref[k]};
                if (sc_idmap_release(m, twice, 2) != SC_OK)
                    return fail(op, "release failed", key);
            } else if (sc_idmap_del(m, key) != SC_OK) {
                return fail(op, "del failed", key);
            }
            if (ref[k] >= 0) {
                owner[ref[k]] = 0;
                ref[k] = -1;
                live--, dels++;
            }
        } else {
            int is_new = -1;
            int64_t free_before = hi - live;
            int32_t id = sc_idmap_get_new(m, key, &is_new);
            if (id < 0 || id >= SPACE * 2)
                return fail(op, "get gave a bad id", key);
            if (ref[k] >= 0) {
                if (is_new || id != ref[k])
                    return fail(op, "get of a mapped key changed its id", key);
            } else {
                if (!is_new || owner[id])
                    return fail(op, "a new key got a live id", key);
                if (id < hi)
                    reused++;
                else if (free_before > 0)
                    return fail(op, "a fresh id while freed ones wait", key);
                else
                    hi = id + 1;
                ref[k] = id;
                owner[id] = k + 1;
                live++;
            }
        }
        if (sc_idmap_live(m) != live)
            return fail(op, "live count", key);
        if (op % 101 == 0 && hi > 0) { /* releasing a free or an out-of-range id changes nothing */
            int32_t any = (int32_t)(next(&s) % (uint64_t)hi);
            if (!owner[any] && sc_idmap_release(m, &any, 1) != SC_OK)
                return fail(op, "release of a free id failed", key);
            int32_t bad[2] = {-1, (int32_t)sc_idmap_size(m)};
            if (sc_idmap_release(m, &bad[0], 1) != SC_EBADID || sc_idmap_release(m, &bad[1], 1) != SC_EBADID)
                return fail(op, "release of an id outside the map not refused", key);
            if (sc_idmap_live(m) != live)
                return fail(op, "live count after releases", key);
        }
        if (op % 97 == 0) { /* the whole map against the reference */
            for (int64_t j = 0; j < SPACE; j++) {
                int64_t kj = (int64_t)((uint64_t)j * 0x9E3779B97F4A7C15ULL >> 4) ^ (j << 40);
                int32_t got;
                sc_idmap_find(m, &kj, 1, &got);
                if (got != ref[j])
                    return fail(op, "find disagrees", kj);
                if (got >= 0 && sc_idmap_key_of(m, got) != kj)
                    return fail(op, "key_of disagrees", kj);
            }
        }
    }
    sc_idmap_free(m);
    free(owner);
    printf("idmap_check: ok %" PRId64 " ops, %" PRId64 " deletions, %" PRId64 " ids reused\n", ops, dels, reused);
    return 0;
}
