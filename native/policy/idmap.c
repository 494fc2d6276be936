/* Open-addressing hash map from int64 keys to dense int32 ids (first come, first numbered). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sc_idmap {
    int64_t *slot_key;
    int32_t *slot_id; /* -1: empty */
    uint64_t mask;
    int64_t *keys; /* id -> key */
    int64_t n, cap_keys; /* n: ids handed out so far (live ones and free ones) */
    int32_t *free_ids;   /* ids of deleted keys, handed out again first */
    int64_t n_free, cap_free;
};

static int alloc_slots(sc_idmap *m, uint64_t size)
{
    m->slot_key = malloc(size * sizeof(int64_t));
    m->slot_id = malloc(size * sizeof(int32_t));
    if (!m->slot_key || !m->slot_id)
        return SC_ENOMEM;
    memset(m->slot_id, 0xff, size * sizeof(int32_t));
    m->mask = size - 1;
    return SC_OK;
}

sc_idmap *sc_idmap_new(void)
{
    sc_idmap *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->cap_keys = 1024;
    m->keys = malloc((size_t)m->cap_keys * sizeof(int64_t));
    if (!m->keys || alloc_slots(m, 2048) != SC_OK) {
        sc_idmap_free(m);
        return NULL;
    }
    return m;
}

void sc_idmap_free(sc_idmap *m)
{
    if (!m)
        return;
    free(m->slot_key);
    free(m->slot_id);
    free(m->keys);
    free(m->free_ids);
    free(m);
}

int64_t sc_idmap_size(const sc_idmap *m) { return m->n; }

static int rehash(sc_idmap *m)
{
    int64_t *ok = m->slot_key;
    int32_t *oi = m->slot_id;
    uint64_t osize = m->mask + 1;
    if (alloc_slots(m, osize * 2) != SC_OK) {
        free(m->slot_key);
        free(m->slot_id);
        m->slot_key = ok;
        m->slot_id = oi;
        m->mask = osize - 1;
        return SC_ENOMEM;
    }
    for (uint64_t i = 0; i < osize; i++) {
        if (oi[i] < 0)
            continue;
        uint64_t h = mix64((uint64_t)ok[i]) & m->mask;
        while (m->slot_id[h] >= 0)
            h = (h + 1) & m->mask;
        m->slot_key[h] = ok[i];
        m->slot_id[h] = oi[i];
    }
    free(ok);
    free(oi);
    return SC_OK;
}

static inline int32_t find_one(const sc_idmap *m, int64_t key)
{
    uint64_t h = mix64((uint64_t)key) & m->mask;
    for (;;) {
        int32_t id = m->slot_id[h];
        if (id < 0 || m->slot_key[h] == key)
            return id;
        h = (h + 1) & m->mask;
    }
}

/* get or add one key; -1 on ENOMEM (internal API shared with the policies) */
int32_t sc_idmap_get(sc_idmap *m, int64_t key)
{
    int is_new;
    return sc_idmap_get_new(m, key, &is_new);
}

int32_t sc_idmap_get_new(sc_idmap *m, int64_t key, int *is_new)
{
    *is_new = 0;
    uint64_t h = mix64((uint64_t)key) & m->mask;
    for (;;) {
        int32_t id = m->slot_id[h];
        if (id < 0)
            break;
        if (m->slot_key[h] == key)
            return id;
        h = (h + 1) & m->mask;
    }
    if (m->n >= INT32_MAX - 1 && !m->n_free)
        return -1;
    if ((uint64_t)(m->n - m->n_free + 1) * 2 > m->mask + 1) {
        if (rehash(m) != SC_OK)
            return -1;
        h = mix64((uint64_t)key) & m->mask;
        while (m->slot_id[h] >= 0)
            h = (h + 1) & m->mask;
    }
    *is_new = 1;
    if (m->n_free) {
        int32_t id = m->free_ids[--m->n_free];
        m->keys[id] = key;
        m->slot_key[h] = key;
        m->slot_id[h] = id;
        return id;
    }
    if (m->n == m->cap_keys) {
        int64_t nc = m->cap_keys * 2;
        int64_t *nk = realloc(m->keys, (size_t)nc * sizeof(int64_t));
        if (!nk)
            return -1;
        m->keys = nk;
        m->cap_keys = nc;
    }
    int32_t id = (int32_t)m->n++;
    m->keys[id] = key;
    m->slot_key[h] = key;
    m->slot_id[h] = id;
    return id;
}

int sc_idmap_del(sc_idmap *m, int64_t key)
{
    uint64_t i = mix64((uint64_t)key) & m->mask;
    for (;;) {
        if (m->slot_id[i] < 0)
            return SC_OK; /* not mapped */
        if (m->slot_key[i] == key)
            break;
        i = (i + 1) & m->mask;
    }
    if (m->n_free == m->cap_free) {
        int64_t nc = m->cap_free ? m->cap_free * 2 : 1024;
        int32_t *f = realloc(m->free_ids, (size_t)nc * sizeof(int32_t));
        if (!f)
            return SC_ENOMEM;
        m->free_ids = f;
        m->cap_free = nc;
    }
    m->free_ids[m->n_free++] = m->slot_id[i];
    /* backward-shift deletion: move later keys of the probe run into the hole, so no tombstones */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (m->slot_id[j] < 0)
            break;
        uint64_t home = mix64((uint64_t)m->slot_key[j]) & m->mask;
        /* j's key may move to i only when its home is not in (i, j] (cyclically) */
        int in_between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (in_between)
            continue;
        m->slot_key[i] = m->slot_key[j];
        m->slot_id[i] = m->slot_id[j];
        i = j;
    }
    m->slot_id[i] = -1;
    return SC_OK;
}

int64_t sc_idmap_live(const sc_idmap *m) { return m->n - m->n_free; }

int sc_idmap_map(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t id = sc_idmap_get(m, keys[i]);
        if (id < 0)
            return SC_ENOMEM;
        ids[i] = id;
    }
    return SC_OK;
}

void sc_idmap_find(const sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids)
{
    for (int64_t i = 0; i < n; i++)
        ids[i] = find_one(m, keys[i]);
}

void sc_idmap_keys(const sc_idmap *m, const int32_t *ids, int64_t n, int64_t *keys)
{
    for (int64_t i = 0; i < n; i++)
        keys[i] = m->keys[ids[i]];
}

int64_t sc_idmap_key_of(const sc_idmap *m, int32_t id) { return m->keys[id]; }
