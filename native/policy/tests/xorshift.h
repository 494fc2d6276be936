/* The random stream of the C reference checks and fuzzers (idmap_check.c, runs_check.c, dedup_fuzz.c):
 * xorshift64*, its state in the caller. */
#ifndef RECMG_XORSHIFT_H
#define RECMG_XORSHIFT_H

#include <stdint.h>

static inline uint64_t next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#endif
