"""cffi API-mode builder of ``recmgd._simcore``: the C core of the classical policies and the simulator,
and the caching model's inference (cachemodel.c, bridged by recmgd/models/fastinfer.py).

Built by setup.py (``cffi_modules=["recmgd/_build_simcore.py:ffibuilder"]``) or in place with
``python recmgd/_build_simcore.py`` from the repository root. C sources: ``native/policy/``.
"""

from __future__ import annotations

import os

from cffi import FFI

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SRC_DIR = "native/policy"
_SOURCES = ["idmap.c", "policy.c", "cache.c", "prefetch.c", "driver.c", "dedup.c", "cachemodel.c"]

CDEF = """
#define SC_OK 0
#define SC_ENOMEM -1
#define SC_EOVERFLOW -2
#define SC_EFUTURE -3
#define SC_EBADID -4
#define SC_EARG -5

typedef struct sc_idmap sc_idmap;
sc_idmap *sc_idmap_new(void);
void sc_idmap_free(sc_idmap *m);
int64_t sc_idmap_size(const sc_idmap *m);
int sc_idmap_map(sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids);
void sc_idmap_find(const sc_idmap *m, const int64_t *keys, int64_t n, int32_t *ids);
void sc_idmap_keys(const sc_idmap *m, const int32_t *ids, int64_t n, int64_t *keys);

typedef struct {
    int32_t prefetch_budget;
    int32_t region;
    int32_t degree;
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
sc_policy *sc_policy_new(const char *kind, sc_idmap *map, int64_t capacity, const sc_params *params);
void sc_policy_free(sc_policy *p);
int sc_policy_step(sc_policy *p, const int32_t *ids, const uint8_t *hit, int64_t n);
const sc_decision *sc_policy_decision(const sc_policy *p);
int sc_policy_rejected(sc_policy *p, const int32_t *ids, int64_t n);
int sc_policy_set_future(sc_policy *p, const int32_t *ids, const int64_t *offsets, int64_t n_steps);
int64_t sc_policy_resident(const sc_policy *p);

typedef struct {
    int64_t steps;
    int64_t lookups;
    int64_t hits;
    int64_t on_demand;
    int64_t prefetch_issued;
    int64_t prefetch_useful;
    int64_t floor;
} sc_counters;

typedef struct sc_driver sc_driver;
sc_driver *sc_driver_new(sc_idmap *map, int64_t capacity);
void sc_driver_free(sc_driver *d);
int sc_driver_observe(sc_driver *d, const int32_t *ids, int64_t n, uint8_t *hit, int scored);
int sc_driver_apply(sc_driver *d, const sc_decision *dec, int scored);
int sc_driver_run(sc_driver *d, sc_policy *p, const int32_t *ids, const int64_t *offsets,
                  int64_t n_steps, int scored, uint8_t *miss);
const sc_counters *sc_driver_counters(const sc_driver *d);
int64_t sc_driver_resident(const sc_driver *d);

int64_t sc_dedup_steps(const int64_t *keys, const int64_t *bounds, int64_t n_steps, int64_t *out_keys,
                       int64_t *out_offsets);

#define CM_FEATURE_VERSION 1
#define CM_N_GAPS 4
#define CM_N_HALF_LIVES 3
#define CM_N_FEATURES 13
#define CM_N_OUT 2
#define CM_MAX_HIDDEN 256

typedef struct {
    int64_t last;
    int64_t first;
    int64_t table;
    float count;
    float gapsum;
    float gaps[4];
    float dec[3];
    float pad;
} cm_row;

typedef struct {
    cm_row *row;
    int64_t cap;
    int32_t n_table_slots;
    int32_t reserved;
    double rate[3];
    const struct cm_lut *lut;
} cm_rows;

#define CM_LUT_N 4096
typedef struct cm_lut cm_lut;
cm_lut *cm_lut_new(void);
void cm_lut_free(cm_lut *lut);

typedef struct cm_net cm_net;
cm_net *cm_net_new(int32_t hidden, int32_t n_table_slots, const float *w1, const float *tb, const float *w2,
                   const float *b2, const float *w3, const float *b3);
void cm_net_free(cm_net *net);
int cm_net_simd(cm_net *net, int on);
int cm_features(const cm_rows *r, const int64_t *ids, int64_t n, int64_t now, float *feats);
int cm_update(cm_rows *r, const int64_t *ids, int64_t n, int64_t now);
int cm_score(const cm_net *net, cm_rows *r, const int64_t *ids, int64_t n, int64_t now, int update,
             float *out, float *feats);
"""



def make_builder(root: str = "") -> FFI:
    """The FFI builder; ``root`` prefixes the C paths (empty: relative to the repository root)."""
    src = os.path.join(root, _SRC_DIR) if root else _SRC_DIR
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "recmgd._simcore",
        '#include "simcore.h"\n#include "cachemodel.h"',
        sources=[f"{src}/{name}" for name in _SOURCES],
        include_dirs=[src],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import shutil

    built = make_builder(_ROOT).compile(tmpdir=os.path.join(_ROOT, "build", "simcore"), verbose=False)
    shutil.copy2(built, os.path.join(_ROOT, "recmgd", os.path.basename(built)))
