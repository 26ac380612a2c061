/* AdamW over a flat float buffer, with global-norm clipping and a
 * warmup + cosine learning-rate schedule.
 *
 * One step t (1-based) with learning rate lr_t = mop_optimizer_lr_at(t - 1):
 *
 *   g  = grad_scale · grad
 *   g *= min(1, clip_norm / ||g||)             (when clip_norm > 0)
 *   m  = β1·m + (1 − β1)·g
 *   v  = β2·v + (1 − β2)·g²
 *   m̂  = m / (1 − β1^t),  v̂ = v / (1 − β2^t)
 *   p -= lr_t · (m̂ / (√v̂ + ε) + wd·p)          (decoupled weight decay)
 *
 * Schedule at 0-based step s, warmup W, total S, peak lr, floor lr_min =
 * min_lr_ratio·lr:
 *
 *   s < W:            lr · (s + 1) / W         (linear from 0; the first step is not wasted)
 *   S = 0:            lr                       (constant after warmup)
 *   W <= s < S:       lr_min + (lr − lr_min) · (1 + cos(π (s − W) / (S − W))) / 2
 *   s >= S:           lr_min
 */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "libmop/mop_gate.h"

struct mop_optimizer {
    mop_adamw_params p;
    size_t n;
    int64_t step; /* updates done so far */
    float *m;     /* (n) first moment */
    float *v;     /* (n) second moment */
};

/* 0.1.0 had min_lr_ratio last; any prefix was accepted before the rule in
 * mop_version.h and stays so */
#define ADAMW_PARAMS_MIN MOP_SIZE_THROUGH(mop_adamw_params, struct_size)

static void adamw_defaults(mop_adamw_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->lr = 3e-3f;
    d->beta1 = 0.9f;
    d->beta2 = 0.999f;
    d->eps = 1e-8f;
    d->weight_decay = 0.01f;
    d->clip_norm = 1.0f;
    d->warmup_steps = 0;
    d->total_steps = 0;
    d->min_lr_ratio = 0.1f;
}

MOP_DEFINE_PARAMS_INIT(adamw, ADAMW_PARAMS_MIN)

/* The first invalid field of @p p, reported with its value. */
static mop_status check_params(const mop_adamw_params *p)
{
    /* written as !(ok) so that NaN fails every check */
    if (!(p->lr >= 0.0f && isfinite(p->lr)))
        return mop_fail(MOP_E_INVALID_ARG, "adamw: lr must be finite and >= 0, got %g",
                        (double)p->lr);
    if (!(p->beta1 >= 0.0f && p->beta1 < 1.0f))
        return mop_fail(MOP_E_INVALID_ARG, "adamw: beta1 must be in [0, 1), got %g",
                        (double)p->beta1);
    if (!(p->beta2 >= 0.0f && p->beta2 < 1.0f))
        return mop_fail(MOP_E_INVALID_ARG, "adamw: beta2 must be in [0, 1), got %g",
                        (double)p->beta2);
    if (!(p->eps > 0.0f && isfinite(p->eps)))
        return mop_fail(MOP_E_INVALID_ARG, "adamw: eps must be finite and > 0, got %g",
                        (double)p->eps);
    if (!(p->weight_decay >= 0.0f && isfinite(p->weight_decay)))
        return mop_fail(MOP_E_INVALID_ARG, "adamw: weight_decay must be finite and >= 0, got %g",
                        (double)p->weight_decay);
    if (!(p->clip_norm >= 0.0f && isfinite(p->clip_norm)))
        return mop_fail(MOP_E_INVALID_ARG,
                        "adamw: clip_norm must be finite and >= 0 (0 = off), got %g",
                        (double)p->clip_norm);
    if (p->warmup_steps < 0)
        return mop_fail(MOP_E_INVALID_ARG, "adamw: warmup_steps must be >= 0, got %d",
                        (int)p->warmup_steps);
    if (p->total_steps < 0)
        return mop_fail(MOP_E_INVALID_ARG, "adamw: total_steps must be >= 0 (0 = constant), got %d",
                        (int)p->total_steps);
    if (p->total_steps > 0 && p->total_steps < p->warmup_steps)
        return mop_fail(MOP_E_INVALID_ARG,
                        "adamw: total_steps %d is shorter than warmup_steps %d",
                        (int)p->total_steps, (int)p->warmup_steps);
    if (!(p->min_lr_ratio >= 0.0f && p->min_lr_ratio <= 1.0f))
        return mop_fail(MOP_E_INVALID_ARG, "adamw: min_lr_ratio must be in [0, 1], got %g",
                        (double)p->min_lr_ratio);
    return MOP_OK;
}

mop_status mop_optimizer_create(size_t n_params, const mop_adamw_params *params,
                                mop_optimizer **out)
{
    MOP_CHECK_ARG(params);
    MOP_CHECK_ARG(out);
    MOP_CHECK_ARG(n_params > 0);
    mop_adamw_params p;
    adamw_defaults(&p);
    MOP_READ_STRUCT("mop_optimizer_create", &p, params, ADAMW_PARAMS_MIN);
    MOP_TRY(check_params(&p));

    mop_optimizer *o = mop_calloc(1, sizeof *o);
    if (!o)
        return mop_fail(MOP_E_NOMEM, "mop_optimizer_create: out of memory");
    o->m = mop_calloc(n_params, sizeof(float));
    o->v = mop_calloc(n_params, sizeof(float));
    if (!o->m || !o->v) {
        mop_optimizer_free(o);
        return mop_fail(MOP_E_NOMEM, "mop_optimizer_create: out of memory for %zu moments",
                        n_params);
    }
    o->p = p;
    o->n = n_params;
    *out = o;
    return MOP_OK;
}

void mop_optimizer_free(mop_optimizer *opt)
{
    if (!opt)
        return;
    mop_free(opt->m);
    mop_free(opt->v);
    mop_free(opt);
}

float mop_optimizer_lr_at(const mop_optimizer *opt, int64_t step)
{
    if (!opt || step < 0)
        return 0.0f;
    const mop_adamw_params *p = &opt->p;
    double lr = p->lr;
    int64_t W = p->warmup_steps, S = p->total_steps;
    if (step < W)
        return (float)(lr * (double)(step + 1) / (double)W);
    if (S == 0)
        return (float)lr;
    double lr_min = lr * p->min_lr_ratio;
    if (step >= S)
        return (float)lr_min;
    double progress = (double)(step - W) / (double)(S - W);
    return (float)(lr_min + (lr - lr_min) * 0.5 * (1.0 + cos(M_PI * progress)));
}

mop_status mop_optimizer_step(mop_optimizer *opt, float *params, const float *grads, size_t n,
                              float grad_scale, float *lr_used, float *grad_norm)
{
    MOP_CHECK_ARG(opt);
    MOP_CHECK_ARG(params);
    MOP_CHECK_ARG(grads);
    if (n != opt->n)
        return mop_fail(MOP_E_INVALID_ARG,
                        "mop_optimizer_step: n = %zu but the optimizer was created for %zu",
                        n, opt->n);
    if (!(isfinite(grad_scale) && grad_scale >= 0.0f))
        return mop_fail(MOP_E_INVALID_ARG,
                        "mop_optimizer_step: grad_scale must be finite and >= 0, got %g",
                        (double)grad_scale);

    /* global norm of the scaled gradient; a NaN/Inf anywhere makes it non-finite */
    double sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        double g = (double)grads[i] * grad_scale;
        sq += g * g;
    }
    if (!isfinite(sq)) {
        for (size_t i = 0; i < n; i++)
            if (!isfinite(grads[i]))
                return mop_fail(MOP_E_INVALID_ARG,
                                "mop_optimizer_step: gradient %zu of %zu is %g; nothing updated",
                                i, n, (double)grads[i]);
        return mop_fail(MOP_E_INVALID_ARG,
                        "mop_optimizer_step: gradient norm overflows; nothing updated");
    }
    double norm = sqrt(sq);
    double scale = grad_scale;
    if (opt->p.clip_norm > 0.0f && norm > opt->p.clip_norm)
        scale *= opt->p.clip_norm / norm;

    const mop_adamw_params *p = &opt->p;
    double lr = mop_optimizer_lr_at(opt, opt->step);
    double t = (double)(opt->step + 1);
    double bc1 = 1.0 - pow(p->beta1, t);
    double bc2 = 1.0 - pow(p->beta2, t);
    float b1 = p->beta1, b2 = p->beta2;
    float step_size = (float)(lr / bc1);     /* lr · m̂ / m */
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)); /* √v̂ / √v */
    float eps = p->eps;
    float decay = (float)(lr * p->weight_decay);

    for (size_t i = 0; i < n; i++) {
        float g = (float)(grads[i] * scale);
        float m = b1 * opt->m[i] + (1.0f - b1) * g;
        float v = b2 * opt->v[i] + (1.0f - b2) * g * g;
        opt->m[i] = m;
        opt->v[i] = v;
        float denom = sqrtf(v) * inv_sqrt_bc2 + eps;
        params[i] -= step_size * m / denom + decay * params[i];
    }
    opt->step++;
    if (lr_used)
        *lr_used = (float)lr;
    if (grad_norm)
        *grad_norm = (float)norm;
    return MOP_OK;
}
