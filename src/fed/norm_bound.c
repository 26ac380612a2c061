/* Norm bounding of client updates before aggregation: clip or reject each
 * update whose L2 norm exceeds a bound, the bound fixed or a multiple of the
 * round's median norm (Sun et al. 2019, "Can you really backdoor federated
 * learning?": norm clipping as a defence; the median-relative bound as in
 * adaptive clipping without DP).
 *
 *   ‖Δ_i‖ = sqrt(Σ_t Σ_j Δ_i,t[j]²)   (all tensors but "gate.usage", double)
 *   B     = min(max_norm, k · median_i ‖Δ_i‖)   (the terms that are enabled)
 *   clip:   Δ_i ← Δ_i · min(1, B / ‖Δ_i‖)
 *   reject: keep_i = ‖Δ_i‖ <= B
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fed.h"
#include "internal.h"

#define NORM_BOUND_PARAMS_MIN MOP_SIZE_THROUGH(mop_norm_bound_params, median_multiple)

static void norm_bound_defaults(mop_norm_bound_params *p)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->mode = MOP_NORM_BOUND_CLIP;
    p->max_norm = 0.0f;
    p->median_multiple = 0.0f;
}

MOP_DEFINE_PARAMS_INIT_SIZED(norm_bound, NORM_BOUND_PARAMS_MIN)

static double nb_norm(const mop_update *u)
{
    double ss = 0.0;
    for (int32_t t = 0; t < u->n_tensors; t++) {
        const fed_tensor *ft = &u->tensors[t];
        if (strcmp(ft->name, FED_USAGE_NAME) == 0)
            continue;
        for (int64_t i = 0; i < ft->size; i++)
            ss += (double)ft->data[i] * (double)ft->data[i];
    }
    return sqrt(ss);
}

static int nb_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

mop_status mop_update_norm_bound(mop_update *const *updates, int32_t n,
                                 const mop_norm_bound_params *params, uint8_t *keep,
                                 float *norms, float *bound)
{
    static const char *fn = "mop_update_norm_bound";
    MOP_CHECK_ARG(updates != NULL);
    MOP_CHECK_ARG(params != NULL);
    if (n < 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n must be >= 1, got %d", fn, (int)n);
    mop_norm_bound_params p;
    norm_bound_defaults(&p);
    MOP_READ_STRUCT(fn, &p, params, NORM_BOUND_PARAMS_MIN);
    if (p.mode != MOP_NORM_BOUND_CLIP && p.mode != MOP_NORM_BOUND_REJECT)
        return mop_fail(MOP_E_INVALID_ARG, "%s: mode must be MOP_NORM_BOUND_CLIP (0) or "
                        "MOP_NORM_BOUND_REJECT (1), got %d", fn, (int)p.mode);
    if (!(isfinite(p.max_norm) && p.max_norm >= 0.0f))
        return mop_fail(MOP_E_INVALID_ARG, "%s: max_norm must be finite and >= 0, got %g", fn,
                        (double)p.max_norm);
    if (!(isfinite(p.median_multiple) && p.median_multiple >= 0.0f))
        return mop_fail(MOP_E_INVALID_ARG, "%s: median_multiple must be finite and >= 0, got %g",
                        fn, (double)p.median_multiple);
    if (p.max_norm == 0.0f && p.median_multiple == 0.0f)
        return mop_fail(MOP_E_INVALID_ARG, "%s: no bound: set max_norm > 0, median_multiple > 0, "
                        "or both", fn);
    for (int32_t i = 0; i < n; i++) {
        if (!updates[i])
            return mop_fail(MOP_E_INVALID_ARG, "%s: updates[%d] is NULL", fn, (int)i);
        if (updates[i]->kind != MOP_UPDATE_DELTA)
            return mop_fail(MOP_E_INVALID_ARG, "%s: updates[%d] is not a DELTA (the norm of "
                            "FULL values is not the size of a step)", fn, (int)i);
        for (int32_t k = 0; k < i; k++)
            if (updates[k] == updates[i])
                return mop_fail(MOP_E_INVALID_ARG, "%s: updates[%d] and updates[%d] are the "
                                "same update", fn, (int)k, (int)i);
    }
    double *nrm = mop_alloc((size_t)n * 2 * sizeof(double));
    if (!nrm)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    double *sorted = nrm + n;
    for (int32_t i = 0; i < n; i++)
        sorted[i] = nrm[i] = nb_norm(updates[i]);
    double b = INFINITY;
    if (p.max_norm > 0.0f)
        b = (double)p.max_norm;
    if (p.median_multiple > 0.0f) {
        qsort(sorted, (size_t)n, sizeof *sorted, nb_cmp);
        /* even n: the mean of the two middle values, as MOP_AGG_MEDIAN */
        double med = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
        b = MOP_MIN(b, (double)p.median_multiple * med);
    }
    /* Everything validated: now edit. */
    for (int32_t i = 0; i < n; i++) {
        int ok = nrm[i] <= b;
        if (p.mode == MOP_NORM_BOUND_CLIP && !ok) {
            mop_update *u = updates[i];
            if ((float)b > 0.0f) {
                mop_status s = mop_update_clip(u, (float)b, NULL);
                if (s != MOP_OK) { /* cannot happen: b is finite and > 0 */
                    mop_free(nrm);
                    return s;
                }
            } else {
                for (int32_t t = 0; t < u->n_tensors; t++)
                    if (strcmp(u->tensors[t].name, FED_USAGE_NAME) != 0)
                        memset(u->tensors[t].data, 0, (size_t)u->tensors[t].size * sizeof(float));
            }
            ok = 1;
        }
        if (keep)
            keep[i] = (uint8_t)ok;
        if (norms)
            norms[i] = (float)nrm[i];
    }
    if (bound)
        *bound = (float)b;
    mop_free(nrm);
    return MOP_OK;
}
