/* Differential privacy: clipping, Gaussian noise, and the RDP accountant.
 *
 * RDP reference values:
 *  - q = 1 (no subsampling): RDP(α) = α/(2σ²) exactly (Mironov 2017, Prop. 7).
 *  - α = 2 closed form: A_2 = (1−q)² + 2q(1−q) + q²e^{1/σ²} = 1 + q²(e^{1/σ²} − 1),
 *    RDP(2) = log A_2 (binomial expansion, Mironov, Talwar & Zhang 2019, Sec. 3.3).
 *  - Published: TF-Privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy.py
 *    docstring: "--N=60000 --batch_size=256 --noise_multiplier=1.12 --epochs=60
 *    --delta=1e-5 ... satisfies (2.92, 1e-5)-DP" (q = 256/60000,
 *    steps = ceil(60·60000/256) = 14063, classic conversion, orders
 *    1.1..10.9 and 12..63). Tolerance 1%.
 *  - Opacus 1.4.0 (opacus/accountants/analysis/rdp.py, compute_rdp), run on this
 *    machine on 2024 sources: σ = 1.1, same q and steps: classic conversion
 *    ε = 3.0084 (order 8.8); get_privacy_spent (Balle et al. 2020 conversion)
 *    ε = 2.5967 (order 8.1); σ = 1.12: Balle ε = 2.5187. Tolerance 1%.
 *    (tests/python/test_rdp.py compares against Opacus live when installed.)
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fed/privacy.h"
#include "internal.h"
#include "libmop/mop_fed.h"

static mop_update *make_update(void)
{
    mop_update *u = NULL;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 7, 10.0, &u), MOP_OK);
    return u;
}

static float *tensor(mop_update *u, const char *name, int64_t *size)
{
    mop_update_tensor_info info = {.struct_size = sizeof info};
    assert_int_equal(mop_update_get_tensor(u, -1, name, &info), MOP_OK);
    if (size)
        *size = info.size;
    return info.data;
}

/* ---- clipping ---- */

static void test_clip_hand_computed(void **state)
{
    (void)state;
    mop_update *u = make_update();
    const float a[3] = {3, 4, 0}, b[3] = {0, 0, 12}, g[2] = {100, 100};
    int64_t d3 = 3, d2 = 2;
    assert_int_equal(mop_update_add_tensor(u, "a", a, 1, &d3), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "gate.usage", g, 1, &d2), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "b", b, 1, &d3), MOP_OK);
    float before = -1;
    /* ‖(3,4,0,0,0,12)‖ = 13; gate.usage excluded. Bound above: untouched. */
    assert_int_equal(mop_update_clip(u, 20.0f, &before), MOP_OK);
    assert_true(before == 13.0f);
    assert_memory_equal(tensor(u, "a", NULL), a, sizeof a);
    /* C = 6.5: factor exactly 1/2. */
    assert_int_equal(mop_update_clip(u, 6.5f, &before), MOP_OK);
    assert_true(before == 13.0f);
    const float *ca = tensor(u, "a", NULL), *cb = tensor(u, "b", NULL), *cg = tensor(u, "gate.usage", NULL);
    assert_true(ca[0] == 1.5f && ca[1] == 2.0f && ca[2] == 0.0f);
    assert_true(cb[0] == 0.0f && cb[1] == 0.0f && cb[2] == 6.0f);
    assert_true(cg[0] == 100.0f && cg[1] == 100.0f);
    assert_int_equal(mop_update_clip(u, 1.0f, NULL), MOP_OK); /* norm_before optional */
    mop_update_free(u);
}

static void test_clip_random(void **state)
{
    (void)state;
    enum { N = 10007 };
    float *x = malloc(N * sizeof *x);
    srand(3);
    double ss = 0;
    for (int i = 0; i < N; i++) {
        x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        ss += (double)x[i] * x[i];
    }
    mop_update *u = make_update();
    int64_t n = N;
    assert_int_equal(mop_update_add_tensor(u, "w", x, 1, &n), MOP_OK);
    float before;
    assert_int_equal(mop_update_clip(u, 0.75f, &before), MOP_OK);
    assert_true(fabs(before - sqrt(ss)) <= 1e-6 * sqrt(ss));
    const float *y = tensor(u, "w", NULL);
    double ss2 = 0, f = 0.75 / sqrt(ss);
    for (int i = 0; i < N; i++) {
        ss2 += (double)y[i] * y[i];
        assert_true(fabs(y[i] - f * x[i]) <= 1e-6 * fabs(x[i]) + 1e-12); /* one common factor */
    }
    assert_true(sqrt(ss2) <= 0.75);               /* never above the bound */
    assert_true(sqrt(ss2) >= 0.75 * (1 - 1e-6));  /* and at it up to rounding */
    mop_update_free(u);
    free(x);
}

static void test_clip_invalid(void **state)
{
    (void)state;
    mop_update *u = make_update();
    assert_int_equal(mop_update_clip(NULL, 1.0f, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_clip(u, 0.0f, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_clip(u, -1.0f, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_clip(u, NAN, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_clip(u, INFINITY, NULL), MOP_E_INVALID_ARG);
    float before = -1;
    assert_int_equal(mop_update_clip(u, 1.0f, &before), MOP_OK); /* empty update: norm 0 */
    assert_true(before == 0.0f);
    mop_update_free(u);
}

/* ---- noise ---- */

enum { NN = 100000 };

static mop_update *zeros_update(void)
{
    mop_update *u = make_update();
    float *z = calloc(NN, sizeof *z);
    int64_t n = NN, two = 2;
    const float g[2] = {0.25f, 0.75f};
    assert_int_equal(mop_update_add_tensor(u, "w", z, 1, &n), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "gate.usage", g, 1, &two), MOP_OK);
    free(z);
    return u;
}

static void test_noise_moments(void **state)
{
    (void)state;
    mop_update *u = zeros_update();
    assert_int_equal(mop_update_add_noise(u, 0.5f, 42), MOP_OK);
    const float *w = tensor(u, "w", NULL);
    double s = 0, s2 = 0, s4 = 0;
    int in1 = 0;
    for (int i = 0; i < NN; i++) {
        double z = w[i] / 0.5;
        s += z, s2 += z * z, s4 += z * z * z * z;
        in1 += fabs(z) < 1.0;
    }
    double mean = s / NN, var = s2 / NN - mean * mean;
    print_message("noise: mean %.5f std %.5f (target 1) E z^4 %.4f P(|z|<1) %.4f\n", mean,
                  sqrt(var), s4 / NN, in1 / (double)NN);
    /* 100k draws: SE(mean) = 0.003, SE(std) = 0.0022 (relative). */
    assert_true(fabs(mean) < 0.015);
    assert_true(fabs(sqrt(var) - 1.0) < 0.02);     /* std within 2% */
    assert_true(fabs(s4 / NN - 3.0) < 0.1);        /* Gaussian kurtosis (SE 0.015) */
    assert_true(fabs(in1 / (double)NN - 0.682689) < 0.01); /* P(|z| < 1) */
    const float *g = tensor(u, "gate.usage", NULL);
    assert_true(g[0] == 0.25f && g[1] == 0.75f);   /* never noised */
    mop_update_free(u);
}

static void test_noise_seeded(void **state)
{
    (void)state;
    mop_update *a = zeros_update(), *b = zeros_update(), *c = zeros_update(),
               *d = zeros_update(), *e = zeros_update();
    assert_int_equal(mop_update_add_noise(a, 1.0f, 7), MOP_OK);
    assert_int_equal(mop_update_add_noise(b, 1.0f, 7), MOP_OK);
    assert_int_equal(mop_update_add_noise(c, 1.0f, 8), MOP_OK);
    assert_int_equal(mop_update_add_noise(d, 1.0f, 0), MOP_OK); /* CSPRNG key */
    assert_int_equal(mop_update_add_noise(e, 1.0f, 0), MOP_OK);
    assert_memory_equal(tensor(a, "w", NULL), tensor(b, "w", NULL), NN * sizeof(float));
    assert_memory_not_equal(tensor(a, "w", NULL), tensor(c, "w", NULL), NN * sizeof(float));
    assert_memory_not_equal(tensor(d, "w", NULL), tensor(e, "w", NULL), NN * sizeof(float));
    /* std = 0: a no-op; invalid std rejected */
    float w0 = tensor(a, "w", NULL)[0];
    assert_int_equal(mop_update_add_noise(a, 0.0f, 1), MOP_OK);
    assert_true(tensor(a, "w", NULL)[0] == w0);
    assert_int_equal(mop_update_add_noise(a, -1.0f, 1), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_noise(a, NAN, 1), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_noise(NULL, 1.0f, 1), MOP_E_INVALID_ARG);
    mop_update_free(a);
    mop_update_free(b);
    mop_update_free(c);
    mop_update_free(d);
    mop_update_free(e);
}

/* ---- RDP ---- */

static void test_rdp_exact(void **state)
{
    (void)state;
    double r;
    const double alphas[] = {1.5, 2, 3.5, 32, 256};
    for (size_t k = 0; k < sizeof alphas / sizeof alphas[0]; k++) {
        assert_int_equal(mop_rdp_sampled_gaussian(2.0, 1.0, alphas[k], &r), MOP_OK);
        assert_true(r == alphas[k] / 8.0); /* q = 1: α/(2σ²) */
    }
    /* α = 2 closed form, through the integer and the fractional series. */
    const double qs[] = {0.001, 0.01, 0.1, 0.5}, sig[] = {0.7, 1.1, 4.0};
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 3; j++) {
            double q = qs[i], s = sig[j];
            double ref = log1p(q * q * expm1(1.0 / (s * s)));
            assert_int_equal(mop_rdp_sampled_gaussian(s, q, 2.0, &r), MOP_OK);
            /* log-space sums: absolute error ~1e-16 in log A */
            assert_true(fabs(r - ref) <= 1e-14 + 1e-12 * ref);
            assert_true(fabs(rdp_log_a_frac(q, s, 2.0) - ref) <= 1e-14 + 1e-9 * ref);
        }
    /* The two series agree at integer orders, and the fractional one is continuous. */
    const int64_t ints[] = {3, 8, 32, 63};
    for (size_t k = 0; k < 4; k++) {
        double li = rdp_log_a_int(0.01, 1.1, ints[k]);
        double lf = rdp_log_a_frac(0.01, 1.1, (double)ints[k]);
        double lc = rdp_log_a_frac(0.01, 1.1, (double)ints[k] + 1e-7);
        assert_true(fabs(li - lf) <= 1e-9 * fabs(li));
        assert_true(fabs(lc - li) <= 1e-5 * fabs(li));
    }
    assert_int_equal(mop_rdp_sampled_gaussian(1.0, 0.0, 4.0, &r), MOP_OK);
    assert_true(r == 0.0);
}

static void test_rdp_published(void **state)
{
    (void)state;
    double q = 256.0 / 60000.0, eps, order;
    int64_t steps = 14063; /* ceil(60 · 60000 / 256) */
    assert_int_equal(mop_rdp_epsilon(1.12, q, steps, 1e-5, &eps, &order), MOP_OK);
    print_message("TF-Privacy case z=1.12: eps %.4f (published 2.92) at order %.2f\n", eps, order);
    assert_true(fabs(eps - 2.92) <= 0.01 * 2.92);
    assert_int_equal(mop_rdp_epsilon(1.1, q, steps, 1e-5, &eps, &order), MOP_OK);
    print_message("z=1.1 classic: eps %.4f (Opacus 1.4.0: 3.0084) at order %.2f\n", eps, order);
    assert_true(fabs(eps - 3.0084) <= 0.01 * 3.0084);

    mop_rdp_params p;
    mop_rdp_params_init(&p);
    p.conversion = MOP_RDP_CONVERSION_BALLE2020;
    mop_rdp_accountant *acc = NULL;
    assert_int_equal(mop_rdp_accountant_create(&p, &acc), MOP_OK);
    assert_int_equal(mop_rdp_accountant_add(acc, 1.1, q, 7000), MOP_OK);
    assert_int_equal(mop_rdp_accountant_add(acc, 1.1, q, steps - 7000), MOP_OK);
    assert_int_equal(mop_rdp_accountant_epsilon(acc, 1e-5, &eps, &order), MOP_OK);
    print_message("z=1.1 Balle 2020: eps %.4f (Opacus 1.4.0: 2.5967) at order %.2f\n", eps, order);
    assert_true(fabs(eps - 2.5967) <= 0.01 * 2.5967);
    mop_rdp_accountant_free(acc);

    /* The accountant with the classic conversion equals the one-shot call. */
    double e1, e2;
    assert_int_equal(mop_rdp_accountant_create(NULL, &acc), MOP_OK);
    assert_int_equal(mop_rdp_accountant_epsilon(acc, 1e-5, &e1, NULL), MOP_OK);
    assert_true(e1 == 0.0); /* nothing spent */
    assert_int_equal(mop_rdp_accountant_add(acc, 1.12, q, steps), MOP_OK);
    assert_int_equal(mop_rdp_accountant_epsilon(acc, 1e-5, &e1, NULL), MOP_OK);
    assert_int_equal(mop_rdp_epsilon(1.12, q, steps, 1e-5, &e2, NULL), MOP_OK);
    assert_true(e1 == e2);
    mop_rdp_accountant_free(acc);

    /* Monotone: more noise → less ε; more steps → more ε; q = 1 at one step
     * is the Gaussian mechanism: min_α α/(2σ²) + log(1/δ)/(α−1). */
    double lo, hi;
    assert_int_equal(mop_rdp_epsilon(2.0, q, steps, 1e-5, &lo, NULL), MOP_OK);
    assert_int_equal(mop_rdp_epsilon(1.12, q, 2 * steps, 1e-5, &hi, NULL), MOP_OK);
    assert_true(lo < e2 && e2 < hi);
    assert_int_equal(mop_rdp_epsilon(1.12, q, 0, 1e-5, &eps, NULL), MOP_OK);
    assert_true(eps == 0.0);
}

static void test_rdp_invalid(void **state)
{
    (void)state;
    double r, eps;
    assert_int_equal(mop_rdp_sampled_gaussian(0.0, 0.1, 2, &r), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_sampled_gaussian(NAN, 0.1, 2, &r), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_sampled_gaussian(1.0, 1.5, 2, &r), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_sampled_gaussian(1.0, -0.1, 2, &r), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_sampled_gaussian(1.0, 0.1, 1.0, &r), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_sampled_gaussian(1.0, 0.1, 2, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_epsilon(1.0, 0.1, -1, 1e-5, &eps, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_epsilon(1.0, 0.1, 10, 0.0, &eps, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_epsilon(1.0, 0.1, 10, 1.0, &eps, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_epsilon(1.0, 0.1, 10, 1e-5, NULL, NULL), MOP_E_INVALID_ARG);
    mop_rdp_params p;
    mop_rdp_params_init(&p);
    mop_rdp_accountant *acc = NULL;
    p.conversion = 7;
    assert_int_equal(mop_rdp_accountant_create(&p, &acc), MOP_E_INVALID_ARG);
    const double bad[] = {2.0, 1.0};
    mop_rdp_params_init(&p);
    p.orders = bad;
    p.n_orders = 2;
    assert_int_equal(mop_rdp_accountant_create(&p, &acc), MOP_E_INVALID_ARG);
    p.n_orders = 1; /* just α = 2 */
    assert_int_equal(mop_rdp_accountant_create(&p, &acc), MOP_OK);
    assert_int_equal(mop_rdp_accountant_add(acc, 1.0, 0.1, -5), MOP_E_INVALID_ARG);
    assert_int_equal(mop_rdp_accountant_add(acc, 1.0, 1.0, 3), MOP_OK);
    double order;
    assert_int_equal(mop_rdp_accountant_epsilon(acc, 1e-5, &eps, &order), MOP_OK);
    assert_true(order == 2.0);
    assert_true(fabs(eps - (3 * 2.0 / 2.0 + log(1e5))) < 1e-12); /* 3 steps × α/(2σ²) + log(1/δ)/(α−1) */
    mop_rdp_accountant_free(acc);
    mop_rdp_accountant_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_hand_computed), cmocka_unit_test(test_clip_random),
        cmocka_unit_test(test_clip_invalid),       cmocka_unit_test(test_noise_moments),
        cmocka_unit_test(test_noise_seeded),       cmocka_unit_test(test_rdp_exact),
        cmocka_unit_test(test_rdp_published),      cmocka_unit_test(test_rdp_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
