/* hazard: eviction scores of the age-aware order (see hazard.h). */
#include <math.h>

#include "hazard.h"
#include "internal.h"

int hz_scores(const int64_t *ids, int64_t n, const int64_t *cls, const double *stamp, int64_t n_rows,
              const double *table, int64_t n_classes, double now, double *out)
{
    double den = fabs(now) + 2.0;
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0 || id >= n_rows)
            return SC_EBADID;
        int64_t c = cls[id];
        if (c < 0 || c >= n_classes)
            return SC_EARG;
        double s = stamp[id];
        out[i] = table[c * HZ_AGE_BUCKETS + hz_age_bucket(now - s)] + s / den;
    }
    return SC_OK;
}
