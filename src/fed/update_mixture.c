/* Between mixtures and updates, through the public mixture API only (fed
 * never reaches into gate internals): mop_mixture_tensor_get_info() names the
 * views of the flat buffer from mop_mixture_data(). */
#include <math.h>
#include <string.h>

#include "fed.h"
#include "internal.h"

static mop_status mixture_info(mop_mixture *m, int32_t i, mop_mixture_tensor_info *info)
{
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    return mop_mixture_tensor_get_info(m, i, info);
}

static int same_dims(int32_t na, const int64_t *a, int32_t nb, const int64_t *b)
{
    if (na != nb)
        return 0;
    for (int32_t d = 0; d < na; d++)
        if (a[d] != b[d])
            return 0;
    return 1;
}

mop_status mop_update_from_mixture(mop_mixture *m, mop_mixture *base, int64_t round,
                                   uint64_t client_id, double n_samples, const float *gate_usage,
                                   mop_update **out)
{
    MOP_CHECK_ARG(m != NULL);
    MOP_CHECK_ARG(out != NULL);
    const int32_t nt = mop_mixture_tensor_count(m);
    if (nt < 1)
        return mop_fail(MOP_E_INVALID_ARG, "mop_update_from_mixture: the mixture has no tensors");
    float *pm = NULL, *pb = NULL;
    size_t nm = 0, nb = 0;
    MOP_TRY(mop_mixture_data(m, &pm, NULL, &nm));
    if (base) {
        MOP_TRY(mop_mixture_data(base, &pb, NULL, &nb));
        if (mop_mixture_tensor_count(base) != nt || nb != nm)
            return mop_fail(MOP_E_SHAPE, "mop_update_from_mixture: base has %d tensors / %zu floats, the mixture %d / %zu",
                            (int)mop_mixture_tensor_count(base), nb, (int)nt, nm);
    }
    mop_update *u = NULL;
    MOP_TRY(mop_update_create(base ? MOP_UPDATE_DELTA : MOP_UPDATE_FULL, round, client_id, n_samples, &u));
    mop_status s = MOP_OK;
    float *tmp = NULL;
    int64_t K = 0;
    for (int32_t i = 0; i < nt && s == MOP_OK; i++) {
        mop_mixture_tensor_info ti, tb;
        s = mixture_info(m, i, &ti);
        if (s != MOP_OK)
            break;
        if (ti.offset + ti.size > nm) {
            s = mop_fail(MOP_E_INTERNAL, "mop_update_from_mixture: tensor %s beyond the flat buffer", ti.name);
            break;
        }
        if (strcmp(ti.name, "experts") == 0)
            K = ti.dims[0];
        const float *src = pm + ti.offset;
        if (base) {
            s = mixture_info(base, i, &tb);
            if (s != MOP_OK)
                break;
            if (strcmp(ti.name, tb.name) != 0 || !same_dims(ti.n_dims, ti.dims, tb.n_dims, tb.dims) ||
                tb.offset + tb.size > nb) {
                s = mop_fail(MOP_E_SHAPE, "mop_update_from_mixture: tensor %d is %s in the mixture and %s in base, or shapes differ",
                             (int)i, ti.name, tb.name);
                break;
            }
            mop_free(tmp);
            tmp = mop_alloc(ti.size * sizeof *tmp);
            if (!tmp) {
                s = mop_fail(MOP_E_NOMEM, "mop_update_from_mixture: out of memory");
                break;
            }
            for (size_t j = 0; j < ti.size; j++)
                tmp[j] = pm[ti.offset + j] - pb[tb.offset + j];
            src = tmp;
        }
        s = mop_update_add_tensor(u, ti.name, src, ti.n_dims, ti.dims);
    }
    mop_free(tmp);
    if (s == MOP_OK && gate_usage) {
        /* the caller gives the K routed experts' usage; the always-on shared
         * groups after them (rows K.. of "experts") are used fully: 1 */
        mop_mixture_params mp;
        memset(&mp, 0, sizeof mp);
        mp.struct_size = sizeof mp;
        s = mop_mixture_get_params(m, &mp);
        float *usage = NULL;
        if (s == MOP_OK && (K < 1 || K != (int64_t)mp.n_experts + mp.n_shared))
            s = mop_fail(MOP_E_INVALID_ARG, "mop_update_from_mixture: gate_usage given but the mixture's experts tensor has %lld rows for %d experts + %d shared groups",
                         (long long)K, (int)mp.n_experts, (int)mp.n_shared);
        for (int64_t k = 0; k < mp.n_experts && s == MOP_OK; k++)
            if (!(gate_usage[k] >= 0.0f && isfinite(gate_usage[k])))
                s = mop_fail(MOP_E_INVALID_ARG, "mop_update_from_mixture: gate_usage[%lld] = %g (must be finite and >= 0)",
                             (long long)k, (double)gate_usage[k]);
        if (s == MOP_OK && !(usage = mop_alloc((size_t)K * sizeof *usage)))
            s = mop_fail(MOP_E_NOMEM, "mop_update_from_mixture: out of memory");
        if (s == MOP_OK) {
            for (int64_t k = 0; k < K; k++)
                usage[k] = k < mp.n_experts ? gate_usage[k] : 1.0f;
            s = mop_update_add_tensor(u, FED_USAGE_NAME, usage, 1, &K);
        }
        mop_free(usage);
    }
    if (s != MOP_OK) {
        mop_update_free(u);
        return s;
    }
    *out = u;
    return MOP_OK;
}

mop_status mop_update_apply(const mop_update *u, mop_mixture *m, float scale)
{
    MOP_CHECK_ARG(u != NULL);
    MOP_CHECK_ARG(m != NULL);
    if (!isfinite(scale))
        return mop_fail(MOP_E_INVALID_ARG, "mop_update_apply: scale must be finite, got %g", (double)scale);
    float *pm = NULL;
    size_t nm = 0;
    MOP_TRY(mop_mixture_data(m, &pm, NULL, &nm));
    const int32_t nt = mop_mixture_tensor_count(m);
    /* check everything before changing anything */
    for (int32_t i = 0; i < u->n_tensors; i++) {
        const fed_tensor *t = &u->tensors[i];
        if (strcmp(t->name, FED_USAGE_NAME) == 0)
            continue;
        int32_t j = 0;
        mop_mixture_tensor_info ti;
        for (; j < nt; j++) {
            MOP_TRY(mixture_info(m, j, &ti));
            if (strcmp(ti.name, t->name) == 0)
                break;
        }
        if (j == nt)
            return mop_fail(MOP_E_SHAPE, "mop_update_apply: the mixture has no tensor %s", t->name);
        if (!same_dims(ti.n_dims, ti.dims, t->n_dims, t->dims) || ti.offset + ti.size > nm)
            return mop_fail(MOP_E_SHAPE, "mop_update_apply: tensor %s: shape differs from the mixture's", t->name);
    }
    for (int32_t i = 0; i < u->n_tensors; i++) {
        const fed_tensor *t = &u->tensors[i];
        if (strcmp(t->name, FED_USAGE_NAME) == 0)
            continue;
        mop_mixture_tensor_info ti;
        for (int32_t j = 0; j < nt; j++) {
            MOP_TRY(mixture_info(m, j, &ti));
            if (strcmp(ti.name, t->name) == 0)
                break;
        }
        float *dst = pm + ti.offset;
        if (u->kind == MOP_UPDATE_FULL)
            memcpy(dst, t->data, ti.size * sizeof *dst);
        else
            for (size_t k = 0; k < ti.size; k++)
                dst[k] += scale * t->data[k];
    }
    return MOP_OK;
}
