/* Model-merging rules applied to client deltas ("task vectors"):
 * task arithmetic (Ilharco et al. 2023), TIES (Yadav et al. 2023), DARE
 * (Yu et al. 2024) and model breadcrumbs (Davari & Belilovsky 2023).
 * The mask helpers edit one delta in place; the merges reduce n deltas. */
#include <math.h>
#include <stdlib.h>

#include "fed.h"

/* qsort has no context argument: sort (|x|, index) pairs instead. */
typedef struct mag_idx {
    float mag;
    int64_t idx;
} mag_idx;

static int cmp_mag_desc(const void *a, const void *b)
{
    const mag_idx *x = a, *y = b;
    if (x->mag != y->mag)
        return x->mag < y->mag ? 1 : -1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* order: (n) int64 scratch with room for n mag_idx pairs (16 bytes each);
 * the caller allocates 2n int64. */
void fed_order_by_magnitude(int64_t *order, const float *x, size_t n)
{
    mag_idx *pairs = (mag_idx *)order;
    for (size_t i = 0; i < n; i++)
        pairs[i] = (mag_idx){fabsf(x[i]), (int64_t)i};
    qsort(pairs, n, sizeof *pairs, cmp_mag_desc);
    for (size_t i = 0; i < n; i++) /* in place: pairs[i] spans order[2i..2i+1] */
        order[i] = pairs[i].idx;
}

/* Number of entries kept for a fraction of n: round half up. */
static size_t frac_count(double frac, size_t n)
{
    double k = floor(frac * (double)n + 0.5);
    return k <= 0 ? 0 : (k >= (double)n ? n : (size_t)k);
}

/* TIES step 1: keep the round(density·total) largest magnitudes, zero the rest. */
void fed_ties_trim(float *delta, size_t total, float density, int64_t *order)
{
    size_t keep = frac_count(density, total);
    fed_order_by_magnitude(order, delta, total);
    for (size_t i = keep; i < total; i++)
        delta[order[i]] = 0.0f;
}

/* TIES steps 2 and 3 on trimmed deltas: elected sign γ_p = sign(Σ_i Δ_ip);
 * out_p = λ · mean of the Δ_ip whose sign is γ_p (0 if none). */
void fed_ties_merge(double *out, float *const *deltas, int32_t n, size_t total, double lambda)
{
    for (size_t p = 0; p < total; p++) {
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += deltas[i][p];
        double s = 0.0;
        int32_t c = 0;
        for (int32_t i = 0; i < n; i++) {
            float d = deltas[i][p];
            if ((sum > 0.0 && d > 0.0f) || (sum < 0.0 && d < 0.0f)) {
                s += d;
                c++;
            }
        }
        out[p] = c ? lambda * s / c : 0.0;
    }
}

/* DARE: each entry dropped with probability p, survivors scaled by 1/(1 − p). */
void fed_dare_mask(float *delta, size_t total, float drop, fed_rng *r)
{
    float scale = 1.0f / (1.0f - drop);
    for (size_t i = 0; i < total; i++)
        delta[i] = mop_rng_uniform(r) < (double)drop ? 0.0f : delta[i] * scale;
}

/* Breadcrumbs on one tensor: zero the round(top·size) largest and the
 * round(bottom·size) smallest magnitudes. order: 2·size int64 scratch. */
void fed_breadcrumbs_mask(float *delta, size_t size, float top, float bottom, int64_t *order)
{
    size_t n_top = frac_count(top, size), n_bot = frac_count(bottom, size);
    fed_order_by_magnitude(order, delta, size);
    for (size_t i = 0; i < n_top && i < size; i++)
        delta[order[i]] = 0.0f;
    for (size_t i = 0; i < n_bot && i < size; i++)
        delta[order[size - 1 - i]] = 0.0f;
}

/* Task arithmetic: out = λ Σ_i Δ_i. */
void fed_sum_scaled(double *out, float *const *deltas, int32_t n, size_t total, double lambda)
{
    for (size_t p = 0; p < total; p++) {
        double s = 0.0;
        for (int32_t i = 0; i < n; i++)
            s += deltas[i][p];
        out[p] = lambda * s;
    }
}
