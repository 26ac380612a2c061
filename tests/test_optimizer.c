/* AdamW optimizer: updates against a double-precision reference written out
 * here, hand-computed first steps, clipping, gradient scaling, decoupled
 * weight decay, the warmup + cosine schedule, and every rejected input.
 * (tests/python/test_optimizer.py compares 20 steps with torch.optim.AdamW.) */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"
#include "libmop/mop_gate.h"

#define TOL 1e-6 /* float32 update vs double reference, absolute on values of order 1 */

static mop_optimizer *make(const mop_adamw_params *p, size_t n)
{
    mop_optimizer *o = NULL;
    assert_int_equal(mop_optimizer_create(n, p, &o), MOP_OK);
    assert_non_null(o);
    return o;
}

static mop_adamw_params plain(float lr, float wd, float eps, float clip)
{
    mop_adamw_params p;
    mop_adamw_params_init(&p);
    p.lr = lr;
    p.weight_decay = wd;
    p.eps = eps;
    p.clip_norm = clip;
    return p;
}

static void test_defaults_match_the_header(void **state)
{
    (void)state;
    mop_adamw_params p;
    mop_adamw_params_init(&p);
    assert_int_equal(p.struct_size, sizeof p);
    assert_float_equal(p.lr, 3e-3f, 0.0f);
    assert_float_equal(p.beta1, 0.9f, 0.0f);
    assert_float_equal(p.beta2, 0.999f, 0.0f);
    assert_float_equal(p.eps, 1e-8f, 0.0f);
    assert_float_equal(p.weight_decay, 0.01f, 0.0f);
    assert_float_equal(p.clip_norm, 1.0f, 0.0f);
    assert_int_equal(p.warmup_steps, 0);
    assert_int_equal(p.total_steps, 0);
    assert_float_equal(p.min_lr_ratio, 0.1f, 0.0f);
}

/* Three steps on 5 parameters against AdamW written in double, in the form
 * "decay the weights, then take the Adam step" (same values as the
 * library's single expression, computed a different way). */
static void test_three_steps_match_double_reference(void **state)
{
    (void)state;
    enum { N = 5, STEPS = 3 };
    const double lr = 0.05, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    const float p0[N] = {0.5f, -1.25f, 2.0f, 0.0f, -0.1f};
    const float g[STEPS][N] = {{0.3f, -0.2f, 0.0f, 1.5f, -4.0f},
                               {-0.1f, -0.4f, 0.25f, 1.0f, 2.0f},
                               {0.2f, 0.05f, -0.5f, -0.75f, 0.01f}};

    mop_adamw_params p = plain((float)lr, (float)wd, (float)eps, 0.0f);
    mop_optimizer *o = make(&p, N);
    float x[N];
    memcpy(x, p0, sizeof x);

    double ref[N], m[N] = {0}, v[N] = {0};
    for (int i = 0; i < N; i++)
        ref[i] = p0[i];
    for (int t = 1; t <= STEPS; t++) {
        float lr_used = -1.0f, norm = -1.0f;
        assert_int_equal(mop_optimizer_step(o, x, g[t - 1], N, 1.0f, &lr_used, &norm), MOP_OK);
        double sq = 0.0;
        for (int i = 0; i < N; i++) {
            double gi = g[t - 1][i];
            sq += gi * gi;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            double mhat = m[i] / (1.0 - pow(b1, t));
            double vhat = v[i] / (1.0 - pow(b2, t));
            ref[i] *= 1.0 - lr * wd;
            ref[i] -= lr * mhat / (sqrt(vhat) + eps);
        }
        assert_float_equal(lr_used, lr, 1e-9);
        assert_float_equal(norm, sqrt(sq), 1e-6);
        for (int i = 0; i < N; i++)
            assert_float_equal(x[i], ref[i], TOL);
    }
    /* first step by hand: m̂ = g, v̂ = g², so p1 = p0 − lr·(g/(|g|+ε) + wd·p0):
     * parameter 0 moves by −0.05·(1 + 0.05) = −0.0525 from 0.5; parameter 2
     * (zero gradient) only decays: 2 − 0.05·0.1·2 = 1.99. */
    float y[N];
    memcpy(y, p0, sizeof y);
    mop_optimizer *o2 = make(&p, N);
    assert_int_equal(mop_optimizer_step(o2, y, g[0], N, 1.0f, NULL, NULL), MOP_OK);
    assert_float_equal(y[0], 0.5 - 0.05 * (0.3 / (0.3 + 1e-8) + 0.1 * 0.5), TOL);
    assert_float_equal(y[0], 0.4475, 1e-6);
    assert_float_equal(y[2], 1.99, 1e-6);
    assert_float_equal(y[4], -0.1 - 0.05 * (-1.0 + 0.1 * -0.1), 1e-6); /* -0.0495 */
    mop_optimizer_free(o2);
    mop_optimizer_free(o);
}

/* With a large ε Adam is no longer scale-invariant, so clipping shows in the
 * first update: Δ = −lr·g/(|g| + ε) with g the clipped gradient. */
static void test_global_norm_clipping(void **state)
{
    (void)state;
    const float g[2] = {3.0f, 4.0f}; /* norm 5 */
    float norm;

    /* clipped to norm 1: g = (0.6, 0.8) */
    mop_adamw_params p = plain(1.0f, 0.0f, 1.0f, 1.0f);
    mop_optimizer *o = make(&p, 2);
    float x[2] = {0.0f, 0.0f};
    assert_int_equal(mop_optimizer_step(o, x, g, 2, 1.0f, NULL, &norm), MOP_OK);
    assert_float_equal(norm, 5.0, 1e-6); /* reported before clipping */
    assert_float_equal(x[0], -0.6 / 1.6, 1e-6);
    assert_float_equal(x[1], -0.8 / 1.8, 1e-6);
    mop_optimizer_free(o);

    /* clipping off */
    p.clip_norm = 0.0f;
    o = make(&p, 2);
    x[0] = x[1] = 0.0f;
    assert_int_equal(mop_optimizer_step(o, x, g, 2, 1.0f, NULL, &norm), MOP_OK);
    assert_float_equal(x[0], -3.0 / 4.0, 1e-6);
    assert_float_equal(x[1], -4.0 / 5.0, 1e-6);
    mop_optimizer_free(o);

    /* a norm below the threshold is left alone */
    p.clip_norm = 10.0f;
    o = make(&p, 2);
    x[0] = x[1] = 0.0f;
    assert_int_equal(mop_optimizer_step(o, x, g, 2, 1.0f, NULL, &norm), MOP_OK);
    assert_float_equal(x[0], -3.0 / 4.0, 1e-6);
    mop_optimizer_free(o);
}

/* grad_scale multiplies before clipping and before the norm is reported. */
static void test_grad_scale(void **state)
{
    (void)state;
    const float g[2] = {3.0f, 4.0f};
    float norm;
    mop_adamw_params p = plain(1.0f, 0.0f, 1.0f, 0.0f);
    mop_optimizer *o = make(&p, 2);
    float x[2] = {0.0f, 0.0f};
    assert_int_equal(mop_optimizer_step(o, x, g, 2, 0.25f, NULL, &norm), MOP_OK);
    assert_float_equal(norm, 1.25, 1e-6);
    assert_float_equal(x[0], -0.75 / 1.75, 1e-6);
    assert_float_equal(x[1], -1.0 / 2.0, 1e-6);
    mop_optimizer_free(o);

    /* scale 0.1 brings norm 5 to 0.5, under clip 1: no clipping */
    p.clip_norm = 1.0f;
    o = make(&p, 2);
    x[0] = x[1] = 0.0f;
    assert_int_equal(mop_optimizer_step(o, x, g, 2, 0.1f, NULL, &norm), MOP_OK);
    assert_float_equal(norm, 0.5, 1e-6);
    assert_float_equal(x[0], -0.3 / 1.3, 1e-6);
    mop_optimizer_free(o);

    /* scale 2 brings it to 10, clipped back to 1 */
    o = make(&p, 2);
    x[0] = x[1] = 0.0f;
    assert_int_equal(mop_optimizer_step(o, x, g, 2, 2.0f, NULL, &norm), MOP_OK);
    assert_float_equal(norm, 10.0, 1e-5);
    assert_float_equal(x[0], -0.6 / 1.6, 1e-6);
    mop_optimizer_free(o);
}

/* A zero gradient still shrinks the weights by (1 − lr·wd) per step. */
static void test_weight_decay_is_decoupled(void **state)
{
    (void)state;
    mop_adamw_params p = plain(0.1f, 0.5f, 1e-8f, 1.0f);
    mop_optimizer *o = make(&p, 3);
    float x[3] = {2.0f, -4.0f, 0.0f};
    const float zero[3] = {0.0f, 0.0f, 0.0f};
    assert_int_equal(mop_optimizer_step(o, x, zero, 3, 1.0f, NULL, NULL), MOP_OK);
    assert_float_equal(x[0], 1.9, 1e-6);
    assert_float_equal(x[1], -3.8, 1e-6);
    assert_float_equal(x[2], 0.0, 0.0);
    assert_int_equal(mop_optimizer_step(o, x, zero, 3, 1.0f, NULL, NULL), MOP_OK);
    assert_float_equal(x[0], 1.805, 1e-6);
    mop_optimizer_free(o);

    /* and the decay does not enter the moments: with wd the Adam part of a
     * step equals the Adam part without wd (the difference is exactly lr·wd·p) */
    const float g[1] = {0.7f};
    mop_adamw_params q = plain(0.1f, 0.0f, 1e-8f, 0.0f);
    mop_optimizer *a = make(&q, 1);
    q.weight_decay = 0.5f;
    mop_optimizer *b = make(&q, 1);
    float xa[1] = {3.0f}, xb[1] = {3.0f};
    for (int s = 0; s < 3; s++) {
        float before = xb[0];
        float adam_a = xa[0];
        assert_int_equal(mop_optimizer_step(a, xa, g, 1, 1.0f, NULL, NULL), MOP_OK);
        assert_int_equal(mop_optimizer_step(b, xb, g, 1, 1.0f, NULL, NULL), MOP_OK);
        double adam_step = (double)xa[0] - adam_a;
        assert_float_equal(xb[0], before + adam_step - 0.1 * 0.5 * before, 1e-6);
    }
    mop_optimizer_free(a);
    mop_optimizer_free(b);
}

static void test_warmup_and_cosine_schedule(void **state)
{
    (void)state;
    mop_adamw_params p = plain(1.0f, 0.0f, 1e-8f, 0.0f);
    p.warmup_steps = 4;
    p.total_steps = 12;
    p.min_lr_ratio = 0.1f;
    mop_optimizer *o = make(&p, 1);
    assert_float_equal(mop_optimizer_lr_at(o, 0), 0.25, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 1), 0.50, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 3), 1.00, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 4), 1.00, 1e-7);           /* cosine starts at the peak */
    assert_float_equal(mop_optimizer_lr_at(o, 8), 0.55, 1e-6);           /* halfway: (1 + 0.1) / 2 */
    assert_float_equal(mop_optimizer_lr_at(o, 10), 0.1 + 0.45 * (1.0 - sqrt(0.5)), 1e-6);
    assert_float_equal(mop_optimizer_lr_at(o, 12), 0.1, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 1000), 0.1, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, -1), 0.0, 0.0);
    assert_float_equal(mop_optimizer_lr_at(NULL, 3), 0.0, 0.0);

    /* the steps report the schedule, step k using lr_at(k) */
    float x[1] = {0.0f}, g[1] = {1.0f};
    for (int k = 0; k < 14; k++) {
        float lr_used = -1.0f;
        assert_int_equal(mop_optimizer_step(o, x, g, 1, 1.0f, &lr_used, NULL), MOP_OK);
        assert_float_equal(lr_used, mop_optimizer_lr_at(o, k), 0.0);
    }
    mop_optimizer_free(o);

    /* total_steps = 0: constant after warmup */
    p.warmup_steps = 2;
    p.total_steps = 0;
    o = make(&p, 1);
    assert_float_equal(mop_optimizer_lr_at(o, 0), 0.5, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 1), 1.0, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 100000), 1.0, 1e-7);
    mop_optimizer_free(o);

    /* no warmup, cosine from step 0 */
    p.warmup_steps = 0;
    p.total_steps = 4;
    p.min_lr_ratio = 0.0f;
    o = make(&p, 1);
    assert_float_equal(mop_optimizer_lr_at(o, 0), 1.0, 1e-7);
    assert_float_equal(mop_optimizer_lr_at(o, 1), 0.5 * (1.0 + sqrt(0.5)), 1e-6);
    assert_float_equal(mop_optimizer_lr_at(o, 2), 0.5, 1e-6);
    assert_float_equal(mop_optimizer_lr_at(o, 4), 0.0, 1e-7);
    mop_optimizer_free(o);
}

static void test_invalid_params(void **state)
{
    (void)state;
    mop_optimizer *o = NULL;
    mop_adamw_params good;
    mop_adamw_params_init(&good);
    assert_int_equal(mop_optimizer_create(4, NULL, &o), MOP_E_INVALID_ARG);
    assert_int_equal(mop_optimizer_create(4, &good, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_optimizer_create(0, &good, &o), MOP_E_INVALID_ARG);
    assert_null(o);

    mop_adamw_params p;
#define EXPECT_BAD(field, value)                                                       \
    do {                                                                               \
        p = good;                                                                      \
        p.field = value;                                                               \
        assert_int_equal(mop_optimizer_create(4, &p, &o), MOP_E_INVALID_ARG);          \
        assert_null(o);                                                                \
        assert_non_null(strstr(mop_last_error(), #field));                            \
    } while (0)
    EXPECT_BAD(lr, -1e-3f);
    EXPECT_BAD(lr, NAN);
    EXPECT_BAD(beta1, 1.0f);
    EXPECT_BAD(beta1, -0.1f);
    EXPECT_BAD(beta2, 1.0f);
    EXPECT_BAD(beta2, NAN);
    EXPECT_BAD(eps, 0.0f);
    EXPECT_BAD(eps, -1e-8f);
    EXPECT_BAD(weight_decay, -0.01f);
    EXPECT_BAD(clip_norm, -1.0f);
    EXPECT_BAD(clip_norm, INFINITY);
    EXPECT_BAD(warmup_steps, -1);
    EXPECT_BAD(total_steps, -5);
    EXPECT_BAD(min_lr_ratio, 1.5f);
    EXPECT_BAD(min_lr_ratio, -0.1f);
    EXPECT_BAD(struct_size, 0);
    EXPECT_BAD(struct_size, sizeof(mop_adamw_params) + 4);
#undef EXPECT_BAD
    p = good;
    p.warmup_steps = 10;
    p.total_steps = 5; /* decays before the warmup ends */
    assert_int_equal(mop_optimizer_create(4, &p, &o), MOP_E_INVALID_ARG);
    assert_null(o);

    /* a shorter struct from an older header gets defaults for the rest */
    p = good;
    p.struct_size = offsetof(mop_adamw_params, weight_decay);
    p.lr = 0.5f;
    assert_int_equal(mop_optimizer_create(4, &p, &o), MOP_OK);
    assert_float_equal(mop_optimizer_lr_at(o, 0), 0.5, 0.0);
    mop_optimizer_free(o);
    mop_optimizer_free(NULL);

    /* step arguments */
    o = make(&good, 4);
    float x[4] = {0}, g[4] = {0};
    assert_int_equal(mop_optimizer_step(NULL, x, g, 4, 1.0f, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_optimizer_step(o, NULL, g, 4, 1.0f, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_optimizer_step(o, x, NULL, 4, 1.0f, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_optimizer_step(o, x, g, 3, 1.0f, NULL, NULL), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "created for 4"));
    assert_int_equal(mop_optimizer_step(o, x, g, 4, NAN, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_optimizer_step(o, x, g, 4, -1.0f, NULL, NULL), MOP_E_INVALID_ARG);
    mop_optimizer_free(o);
}

/* A NaN or Inf gradient is rejected with nothing updated: parameters, moments
 * and the step count stay as they were. */
static void test_nonfinite_gradient_rejected(void **state)
{
    (void)state;
    mop_adamw_params p = plain(0.1f, 0.1f, 1e-8f, 1.0f);
    p.warmup_steps = 3;
    const float g_ok[3] = {0.5f, -0.25f, 1.0f};
    const float g_nan[3] = {0.5f, NAN, 1.0f};
    const float g_inf[3] = {-INFINITY, 0.0f, 1.0f};

    mop_optimizer *o = make(&p, 3), *ref = make(&p, 3);
    float x[3] = {1.0f, 2.0f, 3.0f}, y[3] = {1.0f, 2.0f, 3.0f};
    assert_int_equal(mop_optimizer_step(o, x, g_ok, 3, 1.0f, NULL, NULL), MOP_OK);
    assert_int_equal(mop_optimizer_step(ref, y, g_ok, 3, 1.0f, NULL, NULL), MOP_OK);

    float before[3];
    memcpy(before, x, sizeof x);
    float lr_used = -7.0f, norm = -7.0f;
    assert_int_equal(mop_optimizer_step(o, x, g_nan, 3, 1.0f, &lr_used, &norm),
                     MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "gradient 1 of 3"));
    assert_int_equal(mop_optimizer_step(o, x, g_inf, 3, 1.0f, NULL, NULL), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "gradient 0 of 3"));
    assert_memory_equal(x, before, sizeof x);
    assert_float_equal(lr_used, -7.0f, 0.0f); /* outputs untouched */
    assert_float_equal(norm, -7.0f, 0.0f);

    /* the next good step is the same as on an optimizer that never saw the bad ones */
    assert_int_equal(mop_optimizer_step(o, x, g_ok, 3, 1.0f, &lr_used, NULL), MOP_OK);
    assert_int_equal(mop_optimizer_step(ref, y, g_ok, 3, 1.0f, NULL, NULL), MOP_OK);
    assert_memory_equal(x, y, sizeof x);
    assert_float_equal(lr_used, mop_optimizer_lr_at(o, 1), 0.0);
    mop_optimizer_free(o);
    mop_optimizer_free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_the_header),
        cmocka_unit_test(test_three_steps_match_double_reference),
        cmocka_unit_test(test_global_norm_clipping),
        cmocka_unit_test(test_grad_scale),
        cmocka_unit_test(test_weight_decay_is_decoupled),
        cmocka_unit_test(test_warmup_and_cosine_schedule),
        cmocka_unit_test(test_invalid_params),
        cmocka_unit_test(test_nonfinite_gradient_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
