/* Open-addressing hash map from int64 keys to dense int32 ids (first come, first numbered). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A slot is 8 bytes: the top 32 bits of the key's hash (its tag) beside its id. The key itself lives
 * once, in keys[id]: a probe compares tags and reads keys[id] only on a tag match (one in 2^32 for a
 * key that is not the one looked up). The home slot is the tag scaled to the table, so moving a slot
 * (growth, deletion) needs only its tag. Slots grow to at most 2^32 (ids are int32 anyway). */
typedef struct {
    uint32_t tag;
    int32_t id; /* -1: empty */
} sc_slot;

#define SC_IDMAP_MAX_SLOTS ((uint64_t)1 << 32)

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
    uint8_t *held;       /* a shared map (sc_idmap_set_shared): id -> its holders' bits; NULL otherwise */
    int64_t n_held[2];   /* ids each holder (SC_HOLDER_POLICY, SC_HOLDER_MOVER) holds */
};

static inline int holder_ok(int32_t holder) { return holder == SC_HOLDER_POLICY || holder == SC_HOLDER_MOVER; }

/* holder takes id (a shared map) */
static inline void hold(sc_idmap *m, int32_t id, int32_t holder)
{
    if (m->held && !(m->held[id] & holder)) {
        m->held[id] |= (uint8_t)holder;
        m->n_held[holder >> 1]++;
    }
}

static inline uint32_t tag_of(int64_t key) { return (uint32_t)(mix64((uint64_t)key) >> 32); }

/* a tag's home slot: the tag scaled to the table (any size, not only powers of two) */
static inline uint64_t home_of(const sc_idmap *m, uint32_t tag) { return ((uint64_t)tag * m->size) >> 32; }

static inline uint64_t home(const sc_idmap *m, int64_t key) { return home_of(m, tag_of(key)); }

static inline uint64_t nxt(const sc_idmap *m, uint64_t h) { return h + 1 == m->size ? 0 : h + 1; }

static int alloc_slots(sc_idmap *m, uint64_t size)
{
    size = (size + 7) & ~(uint64_t)7;
    if (size > SC_IDMAP_MAX_SLOTS)
        return SC_ENOMEM;
    m->slot = aligned_alloc(64, size * sizeof(sc_slot)); /* eight slots a cache line */
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
    free(m->held);
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
            __builtin_prefetch(&m->slot[home_of(m, old[i + SC_IDMAP_AHEAD].tag)], 1);
        if (old[i].id < 0)
            continue;
        uint64_t h = home_of(m, old[i].tag);
        while (m->slot[h].id >= 0)
            h = nxt(m, h);
        m->slot[h] = old[i];
    }
    free(old);
    return SC_OK;
}

/* the slot holding key, or -1 when it is not mapped */
static inline int64_t slot_of(const sc_idmap *m, int64_t key)
{
    uint32_t tag = tag_of(key);
    uint64_t h = home_of(m, tag);
    for (;;) {
        const sc_slot *s = &m->slot[h];
        if (s->id < 0)
            return -1;
        if (s->tag == tag && m->keys[s->id] == key)
            return (int64_t)h;
        h = nxt(m, h);
    }
}

static inline int32_t find_one(const sc_idmap *m, int64_t key)
{
    int64_t at = slot_of(m, key);
    return at < 0 ? -1 : m->slot[at].id;
}

static inline void prefetch_slot(const sc_idmap *m, int64_t key)
{
    __builtin_prefetch(&m->slot[home(m, key)]);
}

void sc_idmap_prefetch(const sc_idmap *m, int64_t key) { prefetch_slot(m, key); }

/* the second stage of a batched lookup: the key of the id in the home slot, when its tag matches (the
 * home slot's line was prefetched SC_IDMAP_AHEAD keys earlier) */
static inline void prefetch_key(const sc_idmap *m, int64_t key)
{
    uint32_t tag = tag_of(key);
    const sc_slot *s = &m->slot[home_of(m, tag)];
    if (s->id >= 0 && s->tag == tag)
        __builtin_prefetch(&m->keys[s->id]);
}

/* both stages for keys[i]: the slot of the key 2 x AHEAD on, the key of the one AHEAD on */
static inline void prefetch_ahead(const sc_idmap *m, const int64_t *keys, int64_t i, int64_t n)
{
    if (i + 2 * SC_IDMAP_AHEAD < n)
        prefetch_slot(m, keys[i + 2 * SC_IDMAP_AHEAD]);
    if (i + SC_IDMAP_AHEAD < n)
        prefetch_key(m, keys[i + SC_IDMAP_AHEAD]);
}

static inline void prefetch_first(const sc_idmap *m, const int64_t *keys, int64_t n)
{
    for (int64_t i = 0; i < n && i < 2 * SC_IDMAP_AHEAD; i++)
        prefetch_slot(m, keys[i]);
}

/* get or add one key; -1 on ENOMEM (internal API shared with the policies) */
int32_t sc_idmap_get(sc_idmap *m, int64_t key)
{
    int is_new;
    return sc_idmap_get_new(m, key, &is_new);
}

static int32_t get_as(sc_idmap *m, int64_t key, int *is_new, int32_t holder);

int32_t sc_idmap_get_new(sc_idmap *m, int64_t key, int *is_new)
{
    return get_as(m, key, is_new, SC_HOLDER_POLICY);
}

static int32_t get_as(sc_idmap *m, int64_t key, int *is_new, int32_t holder)
{
    *is_new = 0;
    uint32_t tag = tag_of(key);
    uint64_t h = home_of(m, tag);
    for (;;) {
        const sc_slot *s = &m->slot[h];
        if (s->id < 0)
            break;
        if (s->tag == tag && m->keys[s->id] == key) {
            if (m->held && !(m->held[s->id] & holder))
                *is_new = 1; /* new to this holder: the other one mapped it, or kept it when it let go */
            hold(m, s->id, holder);
            return s->id;
        }
        h = nxt(m, h);
    }
    if (m->n >= INT32_MAX - 1 && !m->n_free)
        return -1;
    if ((uint64_t)(m->n - m->n_free + 1) * 100 > m->size * (uint64_t)m->load_pct) {
        if (rehash(m) != SC_OK)
            return -1;
        h = home_of(m, tag);
        while (m->slot[h].id >= 0)
            h = nxt(m, h);
    }
    *is_new = 1;
    int32_t id;
    if (m->n_free) {
        id = m->free_ids[--m->n_free];
    } else {
        if (m->n == m->cap_keys) {
            /* by half (the simulator's maps), by a quarter (the fuller daemon's: as their slots) */
            int64_t nc = m->cap_keys + (m->load_pct <= 50 ? m->cap_keys / 2 : m->cap_keys / 4);
            int64_t *nk = realloc(m->keys, (size_t)nc * sizeof(int64_t));
            if (!nk)
                return -1;
            m->keys = nk;
            if (m->held) {
                uint8_t *nh = realloc(m->held, (size_t)nc);
                if (!nh)
                    return -1;
                memset(nh + m->cap_keys, 0, (size_t)(nc - m->cap_keys));
                m->held = nh;
            }
            m->cap_keys = nc;
        }
        id = (int32_t)m->n++;
    }
    m->keys[id] = key;
    m->slot[h] = (sc_slot){tag, id};
    hold(m, id, holder);
    return id;
}

int sc_idmap_get_new_many(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids, uint8_t *is_new)
{
    prefetch_first(m, keys, n);
    for (int64_t i = 0; i < n; i++) {
        prefetch_ahead(m, keys, i, n);
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
    int32_t id = m->slot[i].id;
    m->free_ids[m->n_free++] = id;
    if (m->held) { /* sc_idmap_del frees a key whoever holds it */
        for (int32_t b = SC_HOLDER_POLICY; b <= SC_HOLDER_MOVER; b <<= 1)
            m->n_held[b >> 1] -= (m->held[id] & b) != 0;
        m->held[id] = 0;
    }
    /* backward-shift deletion: move later keys of the probe run into the hole, so no tombstones */
    uint64_t j = i;
    for (;;) {
        j = nxt(m, j);
        if (m->slot[j].id < 0)
            break;
        uint64_t hj = home_of(m, m->slot[j].tag);
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
    return (int64_t)(m->size * sizeof(sc_slot)) + m->cap_keys * (int64_t)(sizeof(int64_t) + (m->held != NULL)) +
           m->cap_free * (int64_t)sizeof(int32_t) + (int64_t)sizeof(*m);
}

int sc_idmap_map(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids)
{
    return sc_idmap_map_as(m, keys, n, ids, SC_HOLDER_POLICY);
}

int sc_idmap_map_as(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids, int32_t holder)
{
    if (!holder_ok(holder))
        return SC_EARG;
    prefetch_first(m, keys, n);
    for (int64_t i = 0; i < n; i++) {
        prefetch_ahead(m, keys, i, n);
        int is_new;
        int32_t id = get_as(m, keys[i], &is_new, holder);
        if (id < 0)
            return SC_ENOMEM;
        ids[i] = id;
    }
    return SC_OK;
}

void sc_idmap_find(const sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids)
{
    prefetch_first(m, keys, n);
    for (int64_t i = 0; i < n; i++) {
        prefetch_ahead(m, keys, i, n);
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
    return sc_idmap_release_as(m, ids, n, SC_HOLDER_POLICY);
}

int sc_idmap_set_shared(sc_idmap *m)
{
    if (m->n || m->held)
        return SC_EARG;
    m->held = calloc((size_t)m->cap_keys, 1);
    return m->held ? SC_OK : SC_ENOMEM;
}

int64_t sc_idmap_held(const sc_idmap *m, int32_t holder)
{
    if (!holder_ok(holder))
        return SC_EARG;
    return m->held ? m->n_held[holder >> 1] : sc_idmap_live(m);
}

int sc_idmap_release_as(sc_idmap *m, const int32_t *ids, int64_t n, int32_t holder)
{
    if (!holder_ok(holder))
        return SC_EARG;
    /* two stages ahead: an id's key (a random read), then the key's slot */
    for (int64_t i = 0; i < n; i++) {
        if (i + 2 * SC_IDMAP_AHEAD < n && ids[i + 2 * SC_IDMAP_AHEAD] >= 0 && ids[i + 2 * SC_IDMAP_AHEAD] < m->n)
            __builtin_prefetch(&m->keys[ids[i + 2 * SC_IDMAP_AHEAD]]);
        if (i + SC_IDMAP_AHEAD < n && ids[i + SC_IDMAP_AHEAD] >= 0 && ids[i + SC_IDMAP_AHEAD] < m->n)
            prefetch_slot(m, m->keys[ids[i + SC_IDMAP_AHEAD]]);
        int32_t id = ids[i];
        if (id < 0 || id >= m->n)
            return SC_EBADID;
        if (m->held) {
            if (!(m->held[id] & holder))
                continue; /* not this holder's (freed, or let go already) */
            if (m->held[id] & ~holder) { /* the other holder keeps it */
                m->held[id] &= (uint8_t)~holder;
                m->n_held[holder >> 1]--;
                continue;
            }
            /* the last holder: freed below (del_at clears the bits, so a failure leaves them for a retry) */
        }
        int64_t at = slot_of(m, m->keys[id]);
        if (at < 0 || m->slot[at].id != id)
            continue; /* freed already (its key gone, or mapped again under another id) */
        int rc = del_at(m, (uint64_t)at);
        if (rc != SC_OK)
            return rc;
    }
    return SC_OK;
}
