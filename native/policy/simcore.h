/* simcore: the C core of recmg's classical policies and of the simulator's driver.
 *
 * One policy, two drivers: a policy's step function (sc_policy_step) is the same code whether the
 * daemon calls it one step at a time through the Python Policy object, or the simulator runs a whole
 * trace through sc_driver_run. Keys (int64, table << 40 | row) are remapped to dense int32 ids by an
 * sc_idmap, so policy state is plain arrays indexed by id. Every function that can fail returns an
 * SC_E* code (negative) or NULL.
 */
#ifndef RECMG_SIMCORE_H
#define RECMG_SIMCORE_H

#include <stdint.h>

#define SC_OK 0
#define SC_ENOMEM (-1)
#define SC_EOVERFLOW (-2) /* a decision would leave more resident rows than the capacity */
#define SC_EFUTURE (-3)   /* OPT driven through steps other than the future it was given */
#define SC_EBADID (-4)    /* an id outside the id map */
#define SC_EARG (-5)      /* a bad argument */

/* ---- key -> dense id map ---- */
typedef struct sc_idmap sc_idmap;
sc_idmap *sc_idmap_new(void);
void sc_idmap_free(sc_idmap *m);
int64_t sc_idmap_size(const sc_idmap *m);
/* ids[i] = id of keys[i], adding unknown keys; SC_OK or SC_ENOMEM */
int sc_idmap_map(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids);
/* ids[i] = id of keys[i] or -1 when unknown */
void sc_idmap_find(const sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids);
/* keys[i] = key of ids[i] (ids must be valid) */
void sc_idmap_keys(const sc_idmap *m, const int32_t *ids, int64_t n, int64_t *keys);
/* keys mapped now (ids handed out less the freed ones) */
int64_t sc_idmap_live(const sc_idmap *m);
/* bytes the map holds allocated (its slots, id -> key array and free list) */
int64_t sc_idmap_bytes(const sc_idmap *m);
/* the share of slots (percent, 25..90; default 50) live keys may fill before the slots double: a map
   of many long-lived keys (the daemon's) trades a few more probes for fewer bytes; SC_OK or SC_EARG */
int sc_idmap_set_load(sc_idmap *m, int32_t percent);
/* the load of the daemon's maps (the learned step's, the mover's and a classical policy's given back ids) */
#define SC_IDMAP_DAEMON_LOAD 75
/* forget the keys of ids[0..n) (their ids go to the free list, handed out again first); an id whose key
   is no longer mapped to it (freed already) is skipped, so a repeat is harmless; SC_OK, SC_ENOMEM, or
   SC_EBADID (an id outside 0 .. size - 1: nothing after it is freed) */
int sc_idmap_release(sc_idmap *m, const int32_t *ids, int64_t n);

/* A map shared by two holders (the daemon's mover and a policy that steps on the loop thread: a classical
   one that gives ids back, or the learned step, lp_share_key_map): each id carries its holders' bits, and is freed only when the last holder lets it
   go. sc_idmap_map, sc_idmap_release and a policy's own mapping act for SC_HOLDER_POLICY; a key freed
   by sc_idmap_del is freed for both. On a map that is not shared the holder is checked and ignored. */
#define SC_HOLDER_POLICY 1
#define SC_HOLDER_MOVER 2
/* make an empty map shared (one byte an id); SC_OK, SC_ENOMEM, or SC_EARG (keys mapped already, or
   shared already) */
int sc_idmap_set_shared(sc_idmap *m);
/* as sc_idmap_map, the ids then held by `holder` too; SC_OK, SC_ENOMEM or SC_EARG (a bad holder) */
int sc_idmap_map_as(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids, int32_t holder);
/* `holder` lets ids[0..n) go (one it does not hold is skipped); an id no holder holds is freed as by
   sc_idmap_release; SC_OK, SC_ENOMEM, SC_EBADID or SC_EARG */
int sc_idmap_release_as(sc_idmap *m, const int32_t *ids, int64_t n, int32_t holder);
/* ids `holder` holds now (sc_idmap_live when the map is not shared); SC_EARG for a bad holder */
int64_t sc_idmap_held(const sc_idmap *m, int32_t holder);

/* ---- the process's allocator ---- */
/* serve every request of at least `threshold` bytes (4 KiB .. 32 MiB) from a mapping of its own and stop
   glibc from raising that threshold as it frees (see alloc.c): growth by realloc leaves no holes and
   freed state goes back to the system at once; process-wide, for the daemon; 1 (set), 0 (the allocator
   is not glibc's, or refused: nothing changed) or SC_EARG */
int sc_map_large_allocations(int64_t threshold);

/* ---- policies ---- */
typedef struct {
    int32_t prefetch_budget; /* rows per step a prefetcher may bring in */
    int32_t region;          /* Bingo: rows per region (1..64) */
    int32_t degree;          /* STMS/Domino: rows followed per trigger (<= budget) */
    int32_t reserved;
    uint64_t seed;
} sc_params;

typedef struct {
    int32_t *evict;
    int32_t *admit;
    int32_t *prefetch;
    int64_t n_evict;
    int64_t n_admit;
    int64_t n_prefetch;
} sc_decision;

typedef struct sc_policy sc_policy;
/* kind: "lru" "lfu" "s3fifo" "opt" "opt-bypass" "stms" "domino" "bingo"; NULL on a bad kind */
sc_policy *sc_policy_new(const char *kind, sc_idmap *map, int64_t capacity, const sc_params *params);
void sc_policy_free(sc_policy *p);
/* one step: ids deduplicated, hit[i] = resident when read; the decision is then in sc_policy_decision */
int sc_policy_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n);
const sc_decision *sc_policy_decision(const sc_policy *p);
/* the driver did not insert these ids: forget them */
int sc_policy_rejected(sc_policy *p, const int32_t *ids, int64_t n);
/* OPT: the whole sequence of steps it will be driven through */
int sc_policy_set_future(sc_policy *p, const int32_t *ids, const int64_t *offsets, int64_t n_steps);
int64_t sc_policy_resident(const sc_policy *p);
/* Giving ids back, for a driver that runs the policy only step by step (the daemon): with it on, the
   policy gathers the ids of rows it may hold no state for (evicted, rejected, out of its ghost or its
   history) and sc_policy_release forgets every one that holds none (its per-id entries reset to those
   of an id never seen, its key freed in the map, its id handed out again first), so the map and the
   per-id arrays follow the rows the policy holds, not every row ever seen. Decisions are the same with
   it on or off, given hits that are the policy's own residency (as the daemon and sc_driver_run show
   it: a row STMS or Bingo evicted unread keeps its "prefetched" mark only with it off, read only if
   such a row is shown as a hit). Only where nothing else keeps ids of the map across steps: never with sc_driver_run,
   sc_driver_run_lookahead or sc_policy_set_future (they refuse such a policy: SC_EARG), which number
   a whole trace up front. Turn it on before the first step. Returns 1 when on and the kind gives ids
   back (lru, s3fifo, stms, bingo), 0 when off or the kind keeps every id it saw (lfu: counts of every
   row; opt, opt-bypass: the future; domino: its pair table is hashed by id), or SC_ENOMEM. */
int sc_policy_set_release(sc_policy *p, int on);
/* forget the rows gathered since the last call that hold no state (see sc_policy_set_release); call it
   between steps, before the next step's keys are mapped, when no id of the last step is kept any more;
   SC_OK (nothing to do when off), SC_ENOMEM */
int sc_policy_release(sc_policy *p);
/* bytes the policy holds allocated (per-id arrays, tables, buffers; not its id map) */
int64_t sc_policy_bytes(const sc_policy *p);

/* ---- the simulator's driver ---- */
typedef struct {
    int64_t steps;
    int64_t lookups;
    int64_t hits;
    int64_t on_demand;
    int64_t prefetch_issued;
    int64_t prefetch_useful;
    int64_t floor;
    /* sum over steps of max(rows never seen before, rows - capacity): fewer on-demand fetches than
       this are impossible for any policy, prefetching or not, whatever its budget */
    int64_t bound;
} sc_counters;

typedef struct sc_driver sc_driver;
sc_driver *sc_driver_new(sc_idmap *map, int64_t capacity);
void sc_driver_free(sc_driver *d);
/* hit[i] = resident when read; counts into the counters when scored */
int sc_driver_observe(sc_driver *d, const int32_t *ids, int64_t n, uint8_t *hit, int scored);
/* evictions, then admissions, then prefetches; SC_EOVERFLOW when over capacity after */
int sc_driver_apply(sc_driver *d, const sc_decision *dec, int scored);
/* observe -> policy step -> apply for n_steps steps; miss (optional) gets !hit per occurrence */
int sc_driver_run(sc_driver *d, sc_policy *p, const int32_t *ids, const int64_t *offsets,
                  int64_t n_steps, int scored, uint8_t *miss);
const sc_counters *sc_driver_counters(const sc_driver *d);
int64_t sc_driver_resident(const sc_driver *d);

/* ---- lookahead (recmgd/sim/lookahead.py states the rules; this loop follows them exactly) ---- */
typedef struct {
    int64_t lookahead_fills;  /* announced rows fetched ahead */
    int64_t lookahead_useful; /* of those, read when their step ran */
    int64_t first_use_ahead;  /* first uses that were hits */
    int64_t pin_refused;      /* evictions of announced rows refused */
} sc_la_counters;
/* the whole trace's steps (the window looks ahead), steps from split on scored: each step observed,
   the policy's step, its decision applied with the next `lookahead` steps' rows pinned and filled
   within `budget` rows a step (then the policy's prefetches within what is left), victims least
   recently used first; counts into the driver's counters and *la. Use a fresh driver. */
int sc_driver_run_lookahead(sc_driver *d, sc_policy *p, const int32_t *ids, const int64_t *offsets,
                            int64_t n_steps, int64_t split, int64_t lookahead, int64_t budget,
                            sc_la_counters *la);

/* ---- step building ----
 * keys[bounds[s] .. bounds[s+1]) are step s (keys holds n_keys); writes each step's distinct keys,
 * first appearances in order, to out_keys (room for n_keys) and n_steps + 1 offsets; returns the
 * number of keys written, SC_ENOMEM, or SC_EARG (nothing written) when the bounds are not
 * nondecreasing within 0 .. n_keys. bounds index keys directly. */
/* keep[i] = 1 when keys[i] is the first appearance of its value in keys[0..n), else 0 (keys must be >= 0);
   returns how many are kept, SC_ENOMEM, or SC_EARG (a negative key or n: keep is then undefined) */
int64_t sc_first_mask(const int64_t *keys, int64_t n, uint8_t *keep);

int64_t sc_dedup_steps(const int64_t *keys, int64_t n_keys, const int64_t *bounds, int64_t n_steps,
                       int64_t *out_keys, int64_t *out_offsets);

#endif
