/* The allocator setting of a long-lived process that holds the policies' state (the daemon).
 *
 * glibc serves a large request from a mapping of its own only above the mmap threshold, and by default
 * raises that threshold to the size of every such mapping freed. The policies' arrays and key maps grow
 * by reallocation; after the first free the threshold has risen past them, so each growth copies into
 * the heap and leaves the old copy there as a hole that cannot be trimmed (the heap shrinks only from
 * its top). In the daemon that was ~30 MB of a 1% tier's ~60 MB of state at 10^8 rows. A fixed
 * threshold stops the adjustment: every request above it is a mapping of its own, which realloc grows
 * in place or by mremap (no copy), and free gives back at once.
 */
#define _GNU_SOURCE
#include <malloc.h>

#include "simcore.h"

int sc_map_large_allocations(int64_t threshold)
{
    if (threshold < 4096 || threshold > (int64_t)32 << 20)
        return SC_EARG;
#ifdef __GLIBC__
    /* setting either threshold turns off glibc's adjustment of both; an allocator put in glibc's place
     * (LD_PRELOAD of jemalloc or tcmalloc, AddressSanitizer) refuses mallopt: its own policy stands */
    return mallopt(M_MMAP_THRESHOLD, (int)threshold) == 1 && mallopt(M_TRIM_THRESHOLD, (int)threshold) == 1;
#else
    return 0; /* another C library: its own allocator's policy stands */
#endif
}
