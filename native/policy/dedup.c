/* Step building: deduplicate the keys of every step, keeping first appearances in order.
 *
 * Everything the caller passes is checked before anything is written: the bounds must be
 * nondecreasing and inside keys[0 .. n_keys), so out_keys (room for n_keys) and out_offsets
 * (n_steps + 1) are never overrun, whatever a trace file held. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* the longest step the hash table is sized for: 2 * longest slots of 16 bytes stay far below SIZE_MAX */
#define DEDUP_MAX_STEP ((int64_t)1 << 56)

int64_t sc_dedup_steps(const int64_t *keys, int64_t n_keys, const int64_t *bounds, int64_t n_steps,
                       int64_t *out_keys, int64_t *out_offsets)
{
    if (n_keys < 0 || n_steps < 0 || !bounds || !out_offsets || (n_keys > 0 && (!keys || !out_keys)))
        return SC_EARG;
    if (bounds[0] < 0 || bounds[n_steps] > n_keys)
        return SC_EARG;
    int64_t longest = 0;
    for (int64_t s = 0; s < n_steps; s++) {
        if (bounds[s + 1] < bounds[s] || bounds[s + 1] > n_keys)
            return SC_EARG;
        if (bounds[s + 1] - bounds[s] > longest)
            longest = bounds[s + 1] - bounds[s];
    }
    if (longest > DEDUP_MAX_STEP)
        return SC_EARG;
    uint64_t size = 16;
    while (size < (uint64_t)longest * 2)
        size <<= 1;
    int64_t *slot_key = malloc(size * sizeof(int64_t));
    int64_t *slot_stamp = malloc(size * sizeof(int64_t));
    if (!slot_key || !slot_stamp) {
        free(slot_key);
        free(slot_stamp);
        return SC_ENOMEM;
    }
    memset(slot_stamp, 0xff, size * sizeof(int64_t));
    uint64_t mask = size - 1;
    int64_t o = 0;
    out_offsets[0] = 0;
    for (int64_t s = 0; s < n_steps; s++) {
        for (int64_t i = bounds[s]; i < bounds[s + 1]; i++) {
            int64_t k = keys[i];
            uint64_t h = mix64((uint64_t)k) & mask;
            for (;;) {
                if (slot_stamp[h] != s) {
                    slot_stamp[h] = s;
                    slot_key[h] = k;
                    out_keys[o++] = k;
                    break;
                }
                if (slot_key[h] == k)
                    break;
                h = (h + 1) & mask;
            }
        }
        out_offsets[s + 1] = o;
    }
    free(slot_key);
    free(slot_stamp);
    return o;
}

int64_t sc_first_mask(const int64_t *keys, int64_t n, uint8_t *keep)
{
    if (n < 0 || n > DEDUP_MAX_STEP || (n > 0 && (!keys || !keep)))
        return SC_EARG;
    uint64_t size = 16;
    while (size < (uint64_t)n * 2)
        size <<= 1;
    int64_t *slot = malloc(size * sizeof(int64_t));
    if (!slot)
        return SC_ENOMEM;
    memset(slot, 0xff, size * sizeof(int64_t)); /* -1: empty (keys are >= 0) */
    uint64_t mask = size - 1;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = keys[i];
        if (k < 0) {
            free(slot);
            return SC_EARG;
        }
        uint64_t h = mix64((uint64_t)k) & mask;
        for (;;) {
            if (slot[h] < 0) {
                slot[h] = k;
                keep[i] = 1;
                kept++;
                break;
            }
            if (slot[h] == k) {
                keep[i] = 0;
                break;
            }
            h = (h + 1) & mask;
        }
    }
    free(slot);
    return kept;
}
