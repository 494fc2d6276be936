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
 *
 *     idmap_check OPS SEED LOAD_PERCENT shared
 *
 * checks a shared map (sc_idmap_set_shared) the same way, with two holders that map keys and let ids go
 * at random: a key keeps its id while either holder holds it, map_as gives a new key a free id first,
 * release_as of an id the holder does not hold (repeated, or never taken) changes nothing, an id is
 * freed when its last holder lets go, and sc_idmap_held counts each holder's ids.
 * Prints "idmap_check: ok ..." and exits 0, or names the operation and exits 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "xorshift.h"

#define SPACE 4096

/* the reference: key index -> id (-1: not mapped), id -> key index + 1 (0: free) */
typedef struct {
    int32_t ref[SPACE];
    int64_t owner[SPACE * 2];
    int64_t live, hi, reused, dels;
} refmap;

static int fail(int64_t op, const char *what, int64_t key)
{
    printf("idmap_check: op %" PRId64 ": %s (key %" PRId64 ")\n", op, what, key);
    return 1;
}

static int64_t key_of_index(int64_t k)
{
    return (int64_t)((uint64_t)k * 0x9E3779B97F4A7C15ULL >> 4) ^ (k << 40); /* spread, signed */
}

static refmap *ref_new(void)
{
    refmap *r = calloc(1, sizeof(*r));
    if (r)
        for (int i = 0; i < SPACE; i++)
            r->ref[i] = -1;
    return r;
}

/* key index k, not mapped, got id: it must be free, and a freed one while any wait; NULL or what is wrong */
static const char *ref_take(refmap *r, int64_t k, int32_t id, int64_t free_before)
{
    if (r->owner[id])
        return "a new key got a live id";
    if (id < r->hi)
        r->reused++;
    else if (free_before > 0)
        return "a fresh id while freed ones wait";
    else
        r->hi = id + 1;
    r->ref[k] = id;
    r->owner[id] = k + 1;
    r->live++;
    return NULL;
}

/* the map forgot key index k */
static void ref_drop(refmap *r, int64_t k)
{
    r->owner[r->ref[k]] = 0;
    r->ref[k] = -1;
    r->live--, r->dels++;
}

/* the whole map against the reference: find and key_of; NULL or what is wrong (its key in *key) */
static const char *ref_compare(const refmap *r, const sc_idmap *m, int64_t *key)
{
    for (int64_t j = 0; j < SPACE; j++) {
        int64_t kj = key_of_index(j);
        int32_t got;
        sc_idmap_find(m, &kj, 1, &got);
        *key = kj;
        if (got != r->ref[j])
            return "find disagrees";
        if (got >= 0 && sc_idmap_key_of(m, got) != kj)
            return "key_of disagrees";
    }
    return NULL;
}

/* the shared map: two holders (bits 1 and 2) against the reference and each key's holders */
static int check_shared(sc_idmap *m, int64_t ops, uint64_t s)
{
    if (sc_idmap_set_shared(m) != SC_OK)
        return fail(0, "set_shared failed", 0);
    refmap *r = ref_new();
    uint8_t refh[SPACE] = {0};
    if (!r)
        return fprintf(stderr, "idmap_check: out of memory\n"), 2;
    int64_t n_held[3] = {0, 0, 0}, kept = 0;
    for (int64_t op = 0; op < ops; op++) {
        int64_t k = (int64_t)(next(&s) % SPACE);
        int64_t key = key_of_index(k);
        const char *bad;
        int32_t h = (int32_t)(next(&s) % 2) + 1;
        int grow = (op / 20000) % 2 == 0;
        if ((int)(next(&s) % 100) < (grow ? 30 : 70)) {
            /* h lets the key's id go, twice over (the repeat is skipped), or an id it never took */
            int32_t id = r->ref[k] >= 0 ? r->ref[k] : (r->hi ? (int32_t)(next(&s) % (uint64_t)r->hi) : -1);
            if (id < 0)
                continue;
            int32_t twice[2] = {id, id};
            if (sc_idmap_release_as(m, twice, 2, h) != SC_OK)
                return fail(op, "release_as failed", key);
            int64_t kk = r->owner[id] - 1;
            if (kk >= 0 && (refh[kk] & h)) {
                refh[kk] &= (uint8_t)~h;
                n_held[h]--;
                if (!refh[kk])
                    ref_drop(r, kk);
                else
                    kept++;
            }
        } else {
            int32_t id = -1;
            int64_t free_before = r->hi - r->live;
            if (sc_idmap_map_as(m, &key, 1, &id, h) != SC_OK)
                return fail(op, "map_as failed", key);
            if (id < 0 || id >= SPACE * 2)
                return fail(op, "map_as gave a bad id", key);
            if (r->ref[k] >= 0 && id != r->ref[k])
                return fail(op, "map_as of a held key changed its id", key);
            if (r->ref[k] < 0 && (bad = ref_take(r, k, id, free_before)))
                return fail(op, bad, key);
            if (!(refh[k] & h))
                refh[k] |= (uint8_t)h, n_held[h]++;
        }
        if (sc_idmap_live(m) != r->live || sc_idmap_held(m, 1) != n_held[1] || sc_idmap_held(m, 2) != n_held[2])
            return fail(op, "live or held count", key);
        if (op % 97 == 0 && (bad = ref_compare(r, m, &key)))
            return fail(op, bad, key);
    }
    if (sc_idmap_map_as(m, &(int64_t){1}, 1, &(int32_t){0}, 3) != SC_EARG || sc_idmap_held(m, 0) != SC_EARG ||
        sc_idmap_set_shared(m) != SC_EARG)
        return fail(ops, "a bad holder or a second set_shared not refused", 0);
    printf("idmap_check: ok %" PRId64 " ops, %" PRId64 " deletions, %" PRId64 " ids reused, %" PRId64
           " kept by the other holder\n", ops, r->dels, r->reused, kept);
    free(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5 || (argc == 5 && strcmp(argv[4], "shared") != 0))
        return fprintf(stderr, "usage: idmap_check OPS SEED [LOAD_PERCENT [shared]]\n"), 2;
    int64_t ops = strtoll(argv[1], NULL, 10);
    uint64_t s = strtoull(argv[2], NULL, 10) * 2 + 1;
    sc_idmap *m = sc_idmap_new();
    if (m && argc >= 4 && sc_idmap_set_load(m, (int32_t)strtol(argv[3], NULL, 10)) != SC_OK)
        return fprintf(stderr, "idmap_check: bad load %s\n", argv[3]), 2;
    if (m && argc == 5) {
        int rc = check_shared(m, ops, s);
        sc_idmap_free(m);
        return rc;
    }
    refmap *r = ref_new();
    if (!m || !r)
        return fprintf(stderr, "idmap_check: out of memory\n"), 2;
    for (int64_t op = 0; op < ops; op++) {
        int64_t k = (int64_t)(next(&s) % SPACE);
        int64_t key = key_of_index(k);
        const char *bad;
        /* phases: grow to most of the space, shrink to a few, grow again */
        int grow = (op / 20000) % 2 == 0;
        int do_del = (int)(next(&s) % 100) < (grow ? 30 : 70);
        if (do_del) {
            if (r->ref[k] >= 0 && next(&s) % 2) {
                /* by id (sc_idmap_release), twice over: the repeat finds the id freed and skips it */
                int32_t twice[2] = {r->ref[k], r->ref[k]};
                if (sc_idmap_release(m, twice, 2) != SC_OK)
                    return fail(op, "release failed", key);
            } else if (sc_idmap_del(m, key) != SC_OK) {
                return fail(op, "del failed", key);
            }
            if (r->ref[k] >= 0)
                ref_drop(r, k);
        } else {
            int is_new = -1;
            int64_t free_before = r->hi - r->live;
            int32_t id = sc_idmap_get_new(m, key, &is_new);
            if (id < 0 || id >= SPACE * 2)
                return fail(op, "get gave a bad id", key);
            if (r->ref[k] >= 0 && (is_new || id != r->ref[k]))
                return fail(op, "get of a mapped key changed its id", key);
            if (r->ref[k] < 0 && !is_new)
                return fail(op, "a new key not said new", key);
            if (r->ref[k] < 0 && (bad = ref_take(r, k, id, free_before)))
                return fail(op, bad, key);
        }
        if (sc_idmap_live(m) != r->live)
            return fail(op, "live count", key);
        if (op % 101 == 0 && r->hi > 0) { /* releasing a free or an out-of-range id changes nothing */
            int32_t any = (int32_t)(next(&s) % (uint64_t)r->hi);
            if (!r->owner[any] && sc_idmap_release(m, &any, 1) != SC_OK)
                return fail(op, "release of a free id failed", key);
            int32_t outside[2] = {-1, (int32_t)sc_idmap_size(m)};
            if (sc_idmap_release(m, &outside[0], 1) != SC_EBADID || sc_idmap_release(m, &outside[1], 1) != SC_EBADID)
                return fail(op, "release of an id outside the map not refused", key);
            if (sc_idmap_live(m) != r->live)
                return fail(op, "live count after releases", key);
        }
        if (op % 97 == 0 && (bad = ref_compare(r, m, &key)))
            return fail(op, bad, key);
    }
    sc_idmap_free(m);
    printf("idmap_check: ok %" PRId64 " ops, %" PRId64 " deletions, %" PRId64 " ids reused\n", ops, r->dels,
           r->reused);
    free(r);
    return 0;
}
