/* Open-addressing hash map from int64 keys to dense int32 ids (first come, first numbered). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* a slot holds the key beside its id, so a probe reads one cache line */
typedef struct {
    int64_t key;
    int64_t id; /* -1: empty */
} sc_slot;

/* batched lookups prefetch the slot of the key this many ahead */
#define SC_IDMAP_AHEAD 8

struct sc_idmap {
    sc_slot *slot;
    uint64_t size; /* slots (a multiple of four: whole cache lines) */
    int64_t *keys; /* id -> key */
    int64_t n, cap_keys; /* n: ids handed out so far (live ones and free ones) */
    int32_t *free_ids;   /* ids of deleted keys, handed out again first */
    int64_t n_free, cap_free;
    int64_t load_pct;    /* the slots grow before live keys pass this share of them */
};

/* a key's home slot: the hash scaled to the table (any size, not only powers of two) */
static inline uint64_t home(const sc_idmap *m, int64_t key)
{
    return (uint64_t)(((unsigned __int128)mix64((uint64_t)key) * m->size) >> 64);
}

static inline uint64_t nxt(const sc_idmap *m, uint64_t h) { return h + 1 == m->size ? 0 : h + 1; }

static int alloc_slots(sc_idmap *m, uint64_t size)
{
    size = (size + 3) & ~(uint64_t)3;
    m->slot = aligned_alloc(64, size * sizeof(sc_slot)); /* four slots a cache line */
    if (!m->slot)
        return SC_ENOMEM;
    memset(m->slot, 0xff, size * sizeof(sc_slot));
    m->size = size;
    return SC_OK;
}

sc_idmap *sc_idmap_new(void)
{
    sc_idmap *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->cap_keys = 1024;
    m->load_pct = 50;
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
    free(m->slot);
    free(m->keys);
    free(m->free_ids);
    free(m);
}

int64_t sc_idmap_size(const sc_idmap *m) { return m->n; }

/* more slots: doubled for maps at half load (the simulator's), grown by a quarter for fuller ones (the
 * daemon's, which hold about the tier's rows for long: doubling would leave up to 5/8 empty) */
static int rehash(sc_idmap *m)
{
    sc_slot *old = m->slot;
    uint64_t osize = m->size;
    if (alloc_slots(m, m->load_pct <= 50 ? osize * 2 : osize + osize / 4) != SC_OK) {
        m->slot = old;
        m->size = osize;
        return SC_ENOMEM;
    }
    for (uint64_t i = 0; i < osize; i++) {
        if (i + SC_IDMAP_AHEAD < osize && old[i + SC_IDMAP_AHEAD].id >= 0)
            __builtin_prefetch(&m->slot[home(m, old[i + SC_IDMAP_AHEAD].key)], 1);
        if (old[i].id < 0)
            continue;
        uint64_t h = home(m, old[i].key);
        while (m->slot[h].id >= 0)
            h = nxt(m, h);
        m->slot[h] = old[i];
    }
    free(old);
    return SC_OK;
}

static inline int32_t find_one(const sc_idmap *m, int64_t key)
{
    uint64_t h = home(m, key);
    for (;;) {
        const sc_slot *s = &m->slot[h];
        if (s->id < 0 || s->key == key)
            return (int32_t)s->id;
        h = nxt(m, h);
    }
}

static inline void prefetch_slot(const sc_idmap *m, int64_t key)
{
    __builtin_prefetch(&m->slot[home(m, key)]);
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
    uint64_t h = home(m, key);
    for (;;) {
        const sc_slot *s = &m->slot[h];
        if (s->id < 0)
            break;
        if (s->key == key)
            return (int32_t)s->id;
        h = nxt(m, h);
    }
    if (m->n >= INT32_MAX - 1 && !m->n_free)
        return -1;
    if ((uint64_t)(m->n - m->n_free + 1) * 100 > m->size * (uint64_t)m->load_pct) {
        if (rehash(m) != SC_OK)
            return -1;
        h = home(m, key);
        while (m->slot[h].id >= 0)
            h = nxt(m, h);
    }
    *is_new = 1;
    int32_t id;
    if (m->n_free) {
        id = m->free_ids[--m->n_free];
    } else {
        if (m->n == m->cap_keys) {
            int64_t nc = m->cap_keys + m->cap_keys / 2;
            int64_t *nk = realloc(m->keys, (size_t)nc * sizeof(int64_t));
            if (!nk)
                return -1;
            m->keys = nk;
            m->cap_keys = nc;
        }
        id = (int32_t)m->n++;
    }
    m->keys[id] = key;
    m->slot[h] = (sc_slot){key, id};
    return id;
}

int sc_idmap_get_new_many(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids, uint8_t *is_new)
{
    for (int64_t i = 0; i < n && i < SC_IDMAP_AHEAD; i++)
        prefetch_slot(m, keys[i]);
    for (int64_t i = 0; i < n; i++) {
        if (i + SC_IDMAP_AHEAD < n)
            prefetch_slot(m, keys[i + SC_IDMAP_AHEAD]);
        int nw;
        int32_t id = sc_idmap_get_new(m, keys[i], &nw);
        if (id < 0)
            return SC_ENOMEM;
        ids[i] = id;
        is_new[i] = (uint8_t)nw;
    }
    return SC_OK;
}

/* delete the slot at i (its id to the free list); SC_ENOMEM */
static int del_at(sc_idmap *m, uint64_t i)
{
    if (m->n_free == m->cap_free) {
        int64_t nc = m->cap_free ? m->cap_free * 2 : 1024;
        int32_t *f = realloc(m->free_ids, (size_t)nc * sizeof(int32_t));
        if (!f)
            return SC_ENOMEM;
        m->free_ids = f;
        m->cap_free = nc;
    }
    m->free_ids[m->n_free++] = (int32_t)m->slot[i].id;
    /* backward-shift deletion: move later keys of the probe run into the hole, so no tombstones */
    uint64_t j = i;
    for (;;) {
        j = nxt(m, j);
        if (m->slot[j].id < 0)
            break;
        uint64_t hj = home(m, m->slot[j].key);
        /* j's key may move to i only when its home is not in (i, j] (cyclically) */
        int in_between = i <= j ? (hj > i && hj <= j) : (hj > i || hj <= j);
        if (in_between)
            continue;
        m->slot[i] = m->slot[j];
        i = j;
    }
    m->slot[i].id = -1;
    return SC_OK;
}

/* the slot holding key, or -1 when it is not mapped */
static inline int64_t slot_of(const sc_idmap *m, int64_t key)
{
    uint64_t i = home(m, key);
    for (;;) {
        if (m->slot[i].id < 0)
            return -1;
        if (m->slot[i].key == key)
            return (int64_t)i;
        i = nxt(m, i);
    }
}

int sc_idmap_del(sc_idmap *m, int64_t key)
{
    int64_t i = slot_of(m, key);
    return i < 0 ? SC_OK : del_at(m, (uint64_t)i); /* not mapped: nothing to do */
}

int64_t sc_idmap_live(const sc_idmap *m) { return m->n - m->n_free; }

int sc_idmap_set_load(sc_idmap *m, int32_t percent)
{
    if (percent < 25 || percent > 90)
        return SC_EARG;
    m->load_pct = percent;
    return SC_OK;
}

int64_t sc_idmap_bytes(const sc_idmap *m)
{
    return (int64_t)(m->size * sizeof(sc_slot)) + m->cap_keys * (int64_t)sizeof(int64_t) +
           m->cap_free * (int64_t)sizeof(int32_t) + (int64_t)sizeof(*m);
}

int sc_idmap_map(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids)
{
    for (int64_t i = 0; i < n && i < SC_IDMAP_AHEAD; i++)
        prefetch_slot(m, keys[i]);
    for (int64_t i = 0; i < n; i++) {
        if (i + SC_IDMAP_AHEAD < n)
            prefetch_slot(m, keys[i + SC_IDMAP_AHEAD]);
        int32_t id = sc_idmap_get(m, keys[i]);
        if (id < 0)
            return SC_ENOMEM;
        ids[i] = id;
    }
    return SC_OK;
}

void sc_idmap_find(const sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids)
{
    for (int64_t i = 0; i < n && i < SC_IDMAP_AHEAD; i++)
        prefetch_slot(m, keys[i]);
    for (int64_t i = 0; i < n; i++) {
        if (i + SC_IDMAP_AHEAD < n)
            prefetch_slot(m, keys[i + SC_IDMAP_AHEAD]);
        ids[i] = find_one(m, keys[i]);
    }
}

void sc_idmap_keys(const sc_idmap *m, const int32_t *ids, int64_t n, int64_t *keys)
{
    for (int64_t i = 0; i < n; i++)
        keys[i] = m->keys[ids[i]];
}

int64_t sc_idmap_key_of(const sc_idmap *m, int32_t id) { return m->keys[id]; }

int sc_idmap_release(sc_idmap *m, const int32_t *ids, int64_t n)
{
    /* two stages ahead: an id's key (a random read), then the key's slot */
    for (int64_t i = 0; i < n; i++) {
        if (i + 2 * SC_IDMAP_AHEAD < n && ids[i + 2 * SC_IDMAP_AHEAD] >= 0 && ids[i + 2 * SC_IDMAP_AHEAD] < m->n)
            __builtin_prefetch(&m->keys[ids[i + 2 * SC_IDMAP_AHEAD]]);
        if (i + SC_IDMAP_AHEAD < n && ids[i + SC_IDMAP_AHEAD] >= 0 && ids[i + SC_IDMAP_AHEAD] < m->n)
            prefetch_slot(m, m->keys[ids[i + SC_IDMAP_AHEAD]]);
        int32_t id = ids[i];
        if (id < 0 || id >= m->n)
            return SC_EBADID;
        int64_t at = slot_of(m, m->keys[id]);
        if (at < 0 || m->slot[at].id != id)
            continue; /* freed already (its key gone, or mapped again under another id) */
        int rc = del_at(m, (uint64_t)at);
        if (rc != SC_OK)
            return rc;
    }
    return SC_OK;
}
