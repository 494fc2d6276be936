/* hazard: the eviction scores of the learned caching policy's age-aware order, in C.
 *
 * recmgd/models/hazard.py estimates a table of P(a row is used again soon | its class at its last use,
 * the steps since); recmgd/models/policies.py (_Residency, order "hazard") scores every resident row by it
 * each step before choosing whom to evict. This is that scoring, operation for operation the numpy
 * expression it replaces, so both give the same doubles and the same evictions.
 */
#ifndef RECMG_HAZARD_H
#define RECMG_HAZARD_H

#include <stdint.h>

#define HZ_AGE_BUCKETS 40

/* out[i] = table[cls[ids[i]] * HZ_AGE_BUCKETS + bucket(now - stamp[ids[i]])] + stamp[ids[i]] / (|now| + 2)
 * with bucket(a) = min(floor(2 log2 max(a, 1)), HZ_AGE_BUCKETS - 1); cls and stamp hold n_rows entries,
 * table n_classes rows of HZ_AGE_BUCKETS. SC_OK; SC_EBADID when an id is outside [0, n_rows), SC_EARG
 * when a class is outside [0, n_classes) (out is then incomplete). */
int hz_scores(const int64_t *ids, int64_t n, const int64_t *cls, const double *stamp, int64_t n_rows,
              const double *table, int64_t n_classes, double now, double *out);

#endif
