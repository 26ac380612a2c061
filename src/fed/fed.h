/* Internal view of the fed module: the update object, the PRNG shared by
 * the partitioners and DARE, and the reduction rules called by the
 * aggregator. Nothing here is exported. */
#ifndef MOP_FED_INTERNAL_H
#define MOP_FED_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "libmop/mop_fed.h"
#include "rng.h"

#define FED_MAX_NAME 255        /* bytes of a tensor name or metadata key */
#define FED_MAX_META_VALUE 65535 /* bytes of a metadata value */
#define FED_MAX_TENSORS 65536
#define FED_MAX_META 4096
#define FED_MAX_DIMS 4
#define FED_USAGE_NAME "gate.usage"

typedef struct fed_tensor {
    char *name;
    float *data;                 /* (size) */
    int64_t size;                /* product of dims */
    int32_t n_dims;
    int64_t dims[FED_MAX_DIMS];
} fed_tensor;

struct mop_update {
    int32_t kind;
    int64_t round;
    uint64_t client_id;
    double n_samples;
    int32_t n_tensors, cap_tensors;
    fed_tensor *tensors;
    /* open-addressing hash index over tensor names: each slot holds a tensor
     * index + 1 (0 = empty); index_cap is a power of two >= 2 * n_tensors */
    int32_t *index;
    size_t index_cap;
    int32_t n_meta, cap_meta;
    char **meta_key;
    char **meta_value;
};

/* update.c */
const fed_tensor *fed_update_find(const mop_update *u, const char *name);
/* 1 if s[0..len) is valid UTF-8 without NUL bytes. */
int fed_utf8_ok(const char *s, size_t len);
/* Append a tensor whose data is moved in (owned by the update on success). */
mop_status fed_update_add_owned(mop_update *u, const char *name, float *data, int32_t n_dims,
                                const int64_t *dims);

/* ---- PRNG: core's xoshiro256** (rng.h), plus the distributions fed draws ---- */
typedef mop_rng fed_rng;

/* uniform integer in [0, bound), bound >= 1, unbiased */
uint64_t fed_rng_below(fed_rng *r, uint64_t bound);
/* standard normal (Marsaglia polar method) */
double fed_rng_normal(fed_rng *r);
/* log of a Gamma(alpha, 1) draw, alpha > 0 (Marsaglia–Tsang; for alpha < 1 the
 * boost G(a) = G(a + 1)·U^(1/a), kept in the log domain so tiny alpha cannot
 * underflow to 0). */
double fed_rng_log_gamma(fed_rng *r, double alpha);
/* Fisher–Yates shuffle of idx[0..n). */
void fed_shuffle_i64(fed_rng *r, int64_t *idx, int64_t n);

/* ---- reduction rules over buffered deltas ----
 * deltas[i] is client i's flat delta (total floats); out (total) doubles. */

/* robust.c */
void fed_median(double *out, float *const *deltas, int32_t n, size_t total, float *scratch);
void fed_trimmed_mean(double *out, float *const *deltas, int32_t n, size_t total, int32_t k,
                      float *scratch);
/* Krum scores (n): sum of squared distances to the n − f − 2 nearest others.
 * dist: (n, n) scratch, sorted: (n) scratch. */
void fed_krum_scores(double *scores, float *const *deltas, int32_t n, size_t total, int32_t f,
                     double *dist, double *sorted);
/* Mean of the m best-scored deltas (m = 1: Krum). order: (n) scratch. */
void fed_multi_krum(double *out, float *const *deltas, const double *scores, int32_t n,
                    size_t total, int32_t m, int32_t *order);

/* merge.c. The mask helpers edit a delta in place. */
void fed_ties_trim(float *delta, size_t total, float density, int64_t *order);
void fed_ties_merge(double *out, float *const *deltas, int32_t n, size_t total, double lambda);
void fed_dare_mask(float *delta, size_t total, float drop, fed_rng *r);
void fed_breadcrumbs_mask(float *delta, size_t size, float top, float bottom, int64_t *order);
void fed_sum_scaled(double *out, float *const *deltas, int32_t n, size_t total, double lambda);

/* Indices 0..n−1 ordered by |x| descending, ties by index ascending. @p order
 * must hold 2n int64: it doubles as the (|x|, index) pairs being sorted. */
void fed_order_by_magnitude(int64_t *order, const float *x, size_t n);

/* fedavg_family.c: server optimizer step, next = global + step(delta). */
typedef struct fed_server_state {
    double *m;  /* (total) first moment / FedAvgM velocity */
    double *v;  /* (total) second moment */
    int64_t steps;
} fed_server_state;

void fed_server_step(float *next, const float *global, const double *delta, size_t total,
                     const mop_aggregator_params *p, fed_server_state *st);

/* mop_aware.c: client weight of row k of "experts" and of other tensors. */
double fed_mop_aware_row_weight(double n_samples, const float *usage, int64_t k);

#endif
