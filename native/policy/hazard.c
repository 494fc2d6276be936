/* hazard: eviction scores of the age-aware order (see hazard.h). */
#include <math.h>

#include "hazard.h"
#include "simcore.h"

static int64_t age_bucket(double age, double half_sqrt2)
{
    /* age = m 2^e, m in [0.5, 1): 2 log2 age = 2 (e - 1) + 2 log2 (2m), and that second term is 1 or
       more exactly when m >= sqrt(1/2) (recmgd.models.hazard.age_bucket, the same way) */
    int e;
    double m = frexp(age < 1.0 ? 1.0 : age, &e);
    int64_t b = 2 * (int64_t)(e - 1) + (m >= half_sqrt2 ? 1 : 0);
    return b < HZ_AGE_BUCKETS - 1 ? b : HZ_AGE_BUCKETS - 1;
}

int hz_scores(const int64_t *ids, int64_t n, const int64_t *cls, const double *stamp, int64_t n_rows,
              const double *table, int64_t n_classes, double now, double *out)
{
    double den = fabs(now) + 2.0;
    double half_sqrt2 = sqrt(0.5); /* correctly rounded, as numpy's */
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0 || id >= n_rows)
            return SC_EBADID;
        int64_t c = cls[id];
        if (c < 0 || c >= n_classes)
            return SC_EARG;
        double s = stamp[id];
        out[i] = table[c * HZ_AGE_BUCKETS + age_bucket(now - s, half_sqrt2)] + s / den;
    }
    return SC_OK;
}
