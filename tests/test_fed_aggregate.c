/* mop_aggregator: every strategy on a hand-computed case plus properties
 * (identical updates, permutation invariance, bounded influence of one
 * outlier, trimmed mean with 0 trim = mean, DARE with drop 0 = task
 * arithmetic), server-optimizer state across rounds against the formulas
 * written out here in double, and every rejected input.
 *
 * Tolerances: results are floats computed from double sums, so values of
 * order 1 match hand-computed doubles to 1e-6 (TOL); permutations change only
 * the order of double sums (1e-6 as well). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"
#include "libmop/mop_fed.h"

#define TOL 1e-6

/* ---- helpers ------------------------------------------------------------- */

/* An update with one tensor "w" of @p len floats. */
static mop_update *upd(int32_t kind, uint64_t client, double n, const float *x, int64_t len)
{
    mop_update *u = NULL;
    assert_int_equal(mop_update_create(kind, 3, client, n, &u), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "w", x, 1, &len), MOP_OK);
    return u;
}

static mop_aggregator *agg_of(int32_t strategy, void (*tweak)(mop_aggregator_params *))
{
    mop_aggregator_params p;
    mop_aggregator_params_init(&p);
    p.strategy = strategy;
    if (tweak)
        tweak(&p);
    mop_aggregator *a = NULL;
    assert_int_equal(mop_aggregator_create(&p, &a), MOP_OK);
    return a;
}

/* Add @p n single-tensor deltas (rows of @p x, len each, weights w or 1),
 * finish against global @p g, write the next values to @p out. */
static void round_with(mop_aggregator *a, const float *x, const double *w, const uint64_t *ids,
                       int32_t n, int64_t len, const float *g, float *out)
{
    for (int32_t i = 0; i < n; i++) {
        mop_update *u = upd(MOP_UPDATE_DELTA, ids ? ids[i] : (uint64_t)i, w ? w[i] : 1.0,
                            x + (size_t)i * len, len);
        assert_int_equal(mop_aggregator_add(a, u), MOP_OK);
        mop_update_free(u);
    }
    assert_int_equal(mop_aggregator_count(a), n);
    mop_update *glob = upd(MOP_UPDATE_FULL, 0, 0.0, g, len), *next = NULL;
    assert_int_equal(mop_aggregator_finish(a, glob, &next), MOP_OK);
    assert_int_equal(mop_aggregator_count(a), 0);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(next, -1, "w", &ti), MOP_OK);
    assert_int_equal(ti.size, len);
    memcpy(out, ti.data, (size_t)len * sizeof *out);
    mop_update_header h = {.struct_size = sizeof h};
    assert_int_equal(mop_update_get_header(next, &h), MOP_OK);
    assert_int_equal(h.kind, MOP_UPDATE_FULL);
    assert_int_equal(h.round, 4); /* global's round (3, from upd()) + 1 */
    mop_update_free(glob);
    mop_update_free(next);
}

static void one_round(int32_t strategy, void (*tweak)(mop_aggregator_params *), const float *x,
                      const double *w, int32_t n, int64_t len, const float *g, float *out)
{
    mop_aggregator *a = agg_of(strategy, tweak);
    round_with(a, x, w, NULL, n, len, g, out);
    mop_aggregator_free(a);
}

static void assert_near(const float *got, const double *want, int64_t n, double tol)
{
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol))
            fail_msg("entry %lld: got %.9g, expected %.9g (tol %g)", (long long)i, (double)got[i],
                     want[i], tol);
}

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static int setup(void **state)
{
    *state = (void *)(intptr_t)mop_alloc_live();
    return 0;
}

static int teardown(void **state)
{
    long before = (long)(intptr_t)*state;
    if (mop_alloc_live() != before)
        fail_msg("leak: %ld live allocations before, %ld after", before, mop_alloc_live());
    return 0;
}

static void lr_half(mop_aggregator_params *p) { p->server_lr = 0.5f; }

/* ---- FedAvg family ------------------------------------------------------- */

static void test_fedavg_hand(void **state)
{
    (void)state;
    /* Δ̄ = (1·[1,2] + 2·[4,−2] + 3·[−1,0]) / 6 = [1, −1/3] */
    const float x[3 * 2] = {1, 2, 4, -2, -1, 0}, g[2] = {10, 20};
    const double w[3] = {1, 2, 3};
    float out[2];
    one_round(MOP_AGG_FEDAVG, NULL, x, w, 3, 2, g, out);
    assert_near(out, (double[]){11.0, 20.0 - 1.0 / 3.0}, 2, 2e-6);
    one_round(MOP_AGG_FEDAVG, lr_half, x, w, 3, 2, g, out);
    assert_near(out, (double[]){10.5, 20.0 - 1.0 / 6.0}, 2, 2e-6);
}

static void test_fedavg_full_updates_become_deltas(void **state)
{
    (void)state;
    /* global [1, 1]; A sends FULL [3, 3] (Δ = [2, 2], n = 1), B DELTA [1, −1] (n = 3)
     * Δ̄ = (1·[2,2] + 3·[1,−1]) / 4 = [1.25, −0.25] */
    const float g[2] = {1, 1}, fa[2] = {3, 3}, db[2] = {1, -1};
    mop_aggregator *a = agg_of(MOP_AGG_FEDAVG, NULL);
    mop_update *ua = upd(MOP_UPDATE_FULL, 1, 1.0, fa, 2), *ub = upd(MOP_UPDATE_DELTA, 2, 3.0, db, 2);
    assert_int_equal(mop_aggregator_add(a, ua), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, ub), MOP_OK);
    mop_update *glob = upd(MOP_UPDATE_FULL, 0, 0.0, g, 2), *next = NULL;
    assert_int_equal(mop_aggregator_finish(a, glob, &next), MOP_OK);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(next, 0, NULL, &ti), MOP_OK);
    assert_near(ti.data, (double[]){2.25, 0.75}, 2, TOL);
    mop_update_header h = {.struct_size = sizeof h};
    assert_int_equal(mop_update_get_header(next, &h), MOP_OK);
    assert_true(h.n_samples == 4.0);
    mop_update_free(next);
    /* the same with a robust rule (buffered path): median of [2,2],[1,−1] = [1.5, 0.5] */
    mop_aggregator *m = agg_of(MOP_AGG_MEDIAN, NULL);
    assert_int_equal(mop_aggregator_add(m, ua), MOP_OK);
    assert_int_equal(mop_aggregator_add(m, ub), MOP_OK);
    assert_int_equal(mop_aggregator_finish(m, glob, &next), MOP_OK);
    assert_int_equal(mop_update_get_tensor(next, 0, NULL, &ti), MOP_OK);
    assert_near(ti.data, (double[]){2.5, 1.5}, 2, TOL);
    mop_update_free(next);
    mop_update_free(glob);
    mop_update_free(ua);
    mop_update_free(ub);
    mop_aggregator_free(a);
    mop_aggregator_free(m);
}

static void test_fedavgm_two_rounds(void **state)
{
    (void)state;
    /* μ = 0.9, η = 1: round 1 Δ̄ = [1, 2] → v = [1, 2], x = g + v;
     * round 2 Δ̄ = [−1, 0.5] → v = 0.9·[1,2] + [−1,0.5] = [−0.1, 2.3], x += v */
    mop_aggregator *a = agg_of(MOP_AGG_FEDAVGM, NULL);
    const float g0[2] = {0, 10}, d1[2] = {1, 2}, d2[2] = {-1, 0.5f};
    float x1[2], x2[2];
    round_with(a, d1, NULL, NULL, 1, 2, g0, x1);
    assert_near(x1, (double[]){1, 12}, 2, TOL);
    round_with(a, d2, NULL, NULL, 1, 2, x1, x2);
    assert_near(x2, (double[]){0.9, 14.3}, 2, 2e-6);
    mop_aggregator_free(a);
}

static void adaptive_params(mop_aggregator_params *p)
{
    p->server_lr = 0.1f;
    p->beta1 = 0.9f;
    p->beta2 = 0.99f;
    p->tau = 1e-3f;
}

/* Two rounds of FedAdam / FedYogi / FedAdagrad against Reddi et al. Alg. 2,
 * written out in double (v starts at τ², m at 0, no bias correction). */
static void adaptive_two_rounds(int32_t strategy)
{
    const double eta = 0.1, b1 = 0.9, b2 = 0.99, tau = (double)1e-3f;
    const float g0[3] = {1, -2, 0.5f};
    const float d[2][3] = {{0.3f, -0.2f, 0.0f}, {-0.1f, -0.4f, 0.05f}};
    double x[3], m[3] = {0, 0, 0}, v[3];
    for (int i = 0; i < 3; i++)
        x[i] = g0[i], v[i] = tau * tau;
    mop_aggregator *a = agg_of(strategy, adaptive_params);
    float cur[3], nxt[3];
    memcpy(cur, g0, sizeof cur);
    for (int r = 0; r < 2; r++) {
        /* two clients whose weighted mean is d[r]: d ± e with equal n */
        float two[6];
        for (int i = 0; i < 3; i++)
            two[i] = d[r][i] + 0.25f, two[3 + i] = d[r][i] - 0.25f;
        round_with(a, two, NULL, NULL, 2, 3, cur, nxt);
        for (int i = 0; i < 3; i++) {
            double dl = ((double)two[i] + (double)two[3 + i]) / 2.0, d2 = dl * dl;
            m[i] = b1 * m[i] + (1 - b1) * dl;
            if (strategy == MOP_AGG_FEDADAM)
                v[i] = b2 * v[i] + (1 - b2) * d2;
            else if (strategy == MOP_AGG_FEDYOGI)
                v[i] = v[i] - (1 - b2) * d2 * (v[i] - d2 > 0 ? 1 : (v[i] - d2 < 0 ? -1 : 0));
            else
                v[i] = v[i] + d2;
            x[i] = (double)cur[i] + eta * m[i] / (sqrt(v[i]) + tau);
        }
        assert_near(nxt, x, 3, TOL);
        memcpy(cur, nxt, sizeof cur);
    }
    mop_aggregator_free(a);
}

static void test_fedadam_two_rounds(void **state)
{
    (void)state;
    adaptive_two_rounds(MOP_AGG_FEDADAM);
    /* round 1 by hand: m = 0.1·0.3 = 0.03, v = 0.99·1e-6 + 0.01·0.09 ≈ 9.0099e-4,
     * step = 0.1·0.03 / (0.0300165 + 0.001) ≈ 0.0967227 */
    mop_aggregator *a = agg_of(MOP_AGG_FEDADAM, adaptive_params);
    const float d[1] = {0.3f}, g[1] = {0};
    float out[1];
    round_with(a, d, NULL, NULL, 1, 1, g, out);
    double v = 0.99 * 1e-6 + 0.01 * 0.09;
    assert_float_equal(out[0], 0.1 * 0.03 / (sqrt(v) + 1e-3), 1e-6);
    assert_float_equal(out[0], 0.0967227, 1e-6);
    mop_aggregator_free(a);
}

static void test_fedyogi_two_rounds(void **state)
{
    (void)state;
    adaptive_two_rounds(MOP_AGG_FEDYOGI);
}

static void test_fedadagrad_two_rounds(void **state)
{
    (void)state;
    adaptive_two_rounds(MOP_AGG_FEDADAGRAD);
}

static void test_defaults(void **state)
{
    (void)state;
    mop_aggregator_params p;
    mop_aggregator_params_init(&p);
    assert_int_equal(p.struct_size, sizeof p);
    assert_int_equal(p.strategy, MOP_AGG_FEDAVG);
    assert_true(p.server_lr == 1.0f && p.momentum == 0.9f);
    assert_true(p.beta1 == 0.9f && p.beta2 == 0.99f && p.tau == 1e-3f); /* Reddi et al. */
    assert_true(p.trim_ratio == 0.1f && p.krum_f == 1 && p.multi_krum_m == 0);
    assert_true(p.ties_density == 0.2f && p.dare_drop == 0.9f);
    assert_true(p.crumbs_top == 0.01f && p.crumbs_bottom == 0.09f && p.merge_lambda == 0.0f);
    mop_aggregator *a = NULL;
    assert_int_equal(mop_aggregator_create(NULL, &a), MOP_OK);
    mop_aggregator_free(a);
    mop_aggregator_free(NULL);
}

/* ---- robust rules -------------------------------------------------------- */

static void test_median_hand(void **state)
{
    (void)state;
    /* odd: [1, 100, 3, −7, 2] → 2; even (first four): [1, 100, 3, −7] → (1 + 3)/2 = 2 */
    const float x[5 * 2] = {1, -1, 100, -100, 3, -3, -7, 7, 2, -2}, g[2] = {0, 0};
    float out[2];
    one_round(MOP_AGG_MEDIAN, NULL, x, NULL, 5, 2, g, out);
    assert_near(out, (double[]){2, -2}, 2, 0);
    one_round(MOP_AGG_MEDIAN, NULL, x, NULL, 4, 2, g, out);
    assert_near(out, (double[]){2, -2}, 2, 0);
}

static void trim20(mop_aggregator_params *p) { p->trim_ratio = 0.2f; }
static void trim0(mop_aggregator_params *p) { p->trim_ratio = 0.0f; }

static void test_trimmed_mean_hand(void **state)
{
    (void)state;
    /* n = 5, ratio 0.2 → drop 1 each end: [1, 100, 3, −7, 2] → mean(1, 2, 3) = 2 */
    const float x[5] = {1, 100, 3, -7, 2}, g[1] = {0.5f};
    float out[1];
    one_round(MOP_AGG_TRIMMED_MEAN, trim20, x, NULL, 5, 1, g, out);
    assert_float_equal(out[0], 2.5, TOL);
    /* default ratio 0.1 with n = 5 drops floor(0.5) = 0: the plain mean 99/5 */
    one_round(MOP_AGG_TRIMMED_MEAN, NULL, x, NULL, 5, 1, g, out);
    assert_float_equal(out[0], 0.5 + 99.0 / 5, 1e-5);
}

static void test_trimmed_mean_zero_is_mean(void **state)
{
    (void)state;
    enum { N = 6, L = 16 };
    float x[N * L], g[L], a[L], b[L];
    for (int i = 0; i < N * L; i++)
        x[i] = frand();
    for (int i = 0; i < L; i++)
        g[i] = frand();
    one_round(MOP_AGG_TRIMMED_MEAN, trim0, x, NULL, N, L, g, a);
    one_round(MOP_AGG_FEDAVG, NULL, x, NULL, N, L, g, b); /* equal n_samples */
    for (int i = 0; i < L; i++)
        assert_float_equal(a[i], b[i], TOL);
}

/* Four honest clients near [1, 1] and one Byzantine [100, −100], f = 1.
 * Scores (sum of the n − f − 2 = 2 nearest squared distances):
 *   a=[1,1]: 0.0025 + 0.02 = 0.0225   b=[1.1,0.9]: 0.02 + 0.0325 = 0.0525
 *   c=[0.9,1.1]: 0.0125 + 0.02 = 0.0325   d=[1,1.05]: 0.0025 + 0.0125 = 0.015
 * Krum picks d; Multi-Krum m = 3 averages d, a, c; m = 0 → n − f = 4 honest. */
static const float krum_x[5 * 2] = {1, 1, 1.1f, 0.9f, 100, -100, 0.9f, 1.1f, 1, 1.05f};

static void m3(mop_aggregator_params *p) { p->multi_krum_m = 3; }

static void test_krum_hand(void **state)
{
    (void)state;
    const float g[2] = {0, 0};
    float out[2];
    one_round(MOP_AGG_KRUM, NULL, krum_x, NULL, 5, 2, g, out);
    assert_true(out[0] == 1.0f && out[1] == 1.05f);
    one_round(MOP_AGG_MULTI_KRUM, m3, krum_x, NULL, 5, 2, g, out);
    assert_near(out, (double[]){(1.0 + (double)0.9f + 1.0) / 3, ((double)1.05f + 1.0 + (double)1.1f) / 3},
                2, TOL);
    one_round(MOP_AGG_MULTI_KRUM, NULL, krum_x, NULL, 5, 2, g, out);
    assert_near(out, (double[]){(1.0 + (double)1.1f + (double)0.9f + 1.0) / 4,
                                (1.0 + (double)0.9f + (double)1.1f + (double)1.05f) / 4},
                2, TOL);
}

static void test_bounded_influence(void **state)
{
    (void)state;
    /* 7 honest clients in [0.4, 0.6] and one sending 1e6 */
    enum { N = 8, L = 8 };
    float x[N * L], g[L] = {0}, out[L];
    for (int i = 0; i < N * L; i++)
        x[i] = 0.5f + 0.1f * frand();
    for (int j = 0; j < L; j++)
        x[3 * L + j] = 1e6f;
    const int32_t rules[4] = {MOP_AGG_MEDIAN, MOP_AGG_TRIMMED_MEAN, MOP_AGG_KRUM, MOP_AGG_MULTI_KRUM};
    for (int r = 0; r < 4; r++) {
        one_round(rules[r], trim20, x, NULL, N, L, g, out); /* trim 0.2·8 → 1 each end */
        for (int j = 0; j < L; j++)
            if (!(out[j] >= 0.4f && out[j] <= 0.6f))
                fail_msg("rule %d coordinate %d moved to %g by one outlier", rules[r], j, (double)out[j]);
    }
    /* Krum returns one of the honest updates exactly */
    one_round(MOP_AGG_KRUM, NULL, x, NULL, N, L, g, out);
    int found = 0;
    for (int i = 0; i < N; i++)
        found |= i != 3 && memcmp(out, x + i * L, sizeof out) == 0;
    assert_true(found);
    /* while FedAvg is dragged to ~1.25e5 */
    one_round(MOP_AGG_FEDAVG, NULL, x, NULL, N, L, g, out);
    assert_true(out[0] > 1e5f);
}

/* ---- merging ------------------------------------------------------------- */

static void lam1(mop_aggregator_params *p) { p->merge_lambda = 1.0f; }

static void test_task_arithmetic_hand(void **state)
{
    (void)state;
    const float x[3 * 2] = {1, 2, 3, 4, -1, 0.5f}, g[2] = {1, 1};
    float out[2];
    one_round(MOP_AGG_TASK_ARITHMETIC, lam1, x, NULL, 3, 2, g, out); /* g + Σ */
    assert_near(out, (double[]){4, 7.5}, 2, TOL);
    one_round(MOP_AGG_TASK_ARITHMETIC, NULL, x, NULL, 3, 2, g, out); /* λ = 1/3 */
    assert_near(out, (double[]){1 + 1.0, 1 + 6.5 / 3}, 2, TOL);
}

static void half_density(mop_aggregator_params *p)
{
    p->ties_density = 0.5f;
}

static void test_ties_hand(void **state)
{
    (void)state;
    /* density 0.5 keeps the top 2 of 4 by magnitude (ties: lower index):
     *   c1 [ 3, −1, 0.5, 2  ] → [ 3,  0,  0, 2]
     *   c2 [−1, −4, 1,  0.2 ] → [−1, −4,  0, 0]   (|−1| = |1|: index 0 wins)
     *   c3 [ 2,  1, −3, −0.1] → [ 2,  0, −3, 0]
     * elected signs of the sums [4, −4, −3, 2]: + − − +
     * disjoint means: [(3 + 2)/2, −4, −3, 2] */
    const float x[3 * 4] = {3, -1, 0.5f, 2, -1, -4, 1, 0.2f, 2, 1, -3, -0.1f}, g[4] = {0, 0, 0, 0};
    float out[4];
    one_round(MOP_AGG_TIES, half_density, x, NULL, 3, 4, g, out);
    assert_near(out, (double[]){2.5, -4, -3, 2}, 4, 0);
    /* default density 0.2: round(0.8) = 1 kept per client: c1 3 @0, c2 −4 @1, c3 −3 @2 */
    one_round(MOP_AGG_TIES, lam1, x, NULL, 3, 4, g, out);
    assert_near(out, (double[]){3, -4, -3, 0}, 4, 0);
}

static void full_density(mop_aggregator_params *p) { p->ties_density = 1.0f; }

static void test_ties_no_trim(void **state)
{
    (void)state;
    const float x[3 * 4] = {3, -1, 0.5f, 2, -1, -4, 1, 0.2f, 2, 1, -3, -0.1f}, g[4] = {0, 0, 0, 0};
    float out[4];
    one_round(MOP_AGG_TIES, full_density, x, NULL, 3, 4, g, out);
    /* sums: [4, −4, −1.5, 2.1] → signs + − − +;
     * means: [(3+2)/2, (−1−4)/2, −3, (2+0.2)/2] */
    assert_near(out, (double[]){2.5, -2.5, -3, ((double)2 + (double)0.2f) / 2}, 4, TOL);
}

static void dare30(mop_aggregator_params *p)
{
    p->dare_drop = 0.3f;
    p->merge_lambda = 1.0f;
    p->seed = 77;
}

static void test_dare_kept_fraction_and_rescale(void **state)
{
    (void)state;
    enum { L = 20000 };
    float *x = malloc(L * sizeof *x), *g = calloc(L, sizeof *g), *out = malloc(L * sizeof *out),
          *out2 = malloc(L * sizeof *out2);
    for (int i = 0; i < L; i++)
        x[i] = 1.0f + (float)(i % 13);
    one_round(MOP_AGG_DARE, dare30, x, NULL, 1, L, g, out);
    int kept = 0;
    for (int i = 0; i < L; i++) {
        if (out[i] != 0.0f) {
            kept++;
            assert_float_equal(out[i], x[i] / 0.7, 1e-5 * x[i]); /* rescaled by 1/(1 − p) */
        }
    }
    /* kept ~ Binomial(L, 0.7): std 0.0032 of the fraction; 0.015 is 4.6 std */
    assert_true(fabs((double)kept / L - 0.7) < 0.015);
    /* same seed, same mask; another seed, another mask */
    one_round(MOP_AGG_DARE, dare30, x, NULL, 1, L, g, out2);
    assert_memory_equal(out, out2, L * sizeof *out);
    mop_aggregator_params p;
    mop_aggregator_params_init(&p);
    p.strategy = MOP_AGG_DARE;
    dare30(&p);
    p.seed = 78;
    mop_aggregator *a = NULL;
    assert_int_equal(mop_aggregator_create(&p, &a), MOP_OK);
    round_with(a, x, NULL, NULL, 1, L, g, out2);
    assert_true(memcmp(out, out2, L * sizeof *out) != 0);
    mop_aggregator_free(a);
    free(x);
    free(g);
    free(out);
    free(out2);
}

static void dare0(mop_aggregator_params *p) { p->dare_drop = 0.0f; }

static void test_dare_drop_zero_is_task_arithmetic(void **state)
{
    (void)state;
    enum { N = 5, L = 32 };
    float x[N * L], g[L], a[L], b[L];
    for (int i = 0; i < N * L; i++)
        x[i] = frand();
    for (int i = 0; i < L; i++)
        g[i] = frand();
    one_round(MOP_AGG_DARE, dare0, x, NULL, N, L, g, a);
    one_round(MOP_AGG_TASK_ARITHMETIC, NULL, x, NULL, N, L, g, b);
    assert_memory_equal(a, b, sizeof a);
}

static void crumbs(mop_aggregator_params *p)
{
    p->crumbs_top = 0.1f;
    p->crumbs_bottom = 0.3f;
    p->merge_lambda = 1.0f;
}

static void test_breadcrumbs_masks(void **state)
{
    (void)state;
    /* 10 values, distinct magnitudes: top 0.1 → drop the largest (|−10|),
     * bottom 0.3 → drop the 3 smallest (0.1, −0.2, 0.3) */
    const float x[10] = {5, -10, 0.1f, 7, -0.2f, 2, 0.3f, -4, 6, 1}, g[10] = {0};
    float out[10];
    one_round(MOP_AGG_BREADCRUMBS, crumbs, x, NULL, 1, 10, g, out);
    assert_near(out, (double[]){5, 0, 0, 7, 0, 2, 0, -4, 6, 1}, 10, 0);

    /* masks are per tensor: two tensors of 10, each loses its own extremes */
    mop_aggregator_params p;
    mop_aggregator_params_init(&p);
    p.strategy = MOP_AGG_BREADCRUMBS;
    crumbs(&p);
    mop_aggregator *a = NULL;
    assert_int_equal(mop_aggregator_create(&p, &a), MOP_OK);
    float y[10];
    for (int i = 0; i < 10; i++)
        y[i] = 100.0f * x[i];
    mop_update *u = NULL, *glob = NULL, *next = NULL;
    const int64_t d10 = 10;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 1, 1.0, &u), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "small", x, 1, &d10), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "big", y, 1, &d10), MOP_OK);
    assert_int_equal(mop_update_create(MOP_UPDATE_FULL, 0, 0, 0.0, &glob), MOP_OK);
    assert_int_equal(mop_update_add_tensor(glob, "big", g, 1, &d10), MOP_OK);
    assert_int_equal(mop_update_add_tensor(glob, "small", g, 1, &d10), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, u), MOP_OK);
    assert_int_equal(mop_aggregator_finish(a, glob, &next), MOP_OK);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(next, -1, "small", &ti), MOP_OK);
    assert_near(ti.data, (double[]){5, 0, 0, 7, 0, 2, 0, -4, 6, 1}, 10, 0);
    assert_int_equal(mop_update_get_tensor(next, -1, "big", &ti), MOP_OK);
    assert_near(ti.data, (double[]){500, 0, 0, 700, 0, 200, 0, -400, 600, 100}, 10, 0);
    mop_update_free(u);
    mop_update_free(glob);
    mop_update_free(next);
    mop_aggregator_free(a);
}

/* ---- MoP-aware ----------------------------------------------------------- */

static mop_update *mop_upd(uint64_t id, double n, const float *experts, const float *b2,
                           const float *usage)
{
    mop_update *u = NULL;
    const int64_t de[3] = {3, 1, 2}, dk[1] = {3};
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, id, n, &u), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "experts", experts, 3, de), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "gate.b2", b2, 1, dk), MOP_OK);
    if (usage)
        assert_int_equal(mop_update_add_tensor(u, "gate.usage", usage, 1, dk), MOP_OK);
    return u;
}

static void test_mop_aware_hand(void **state)
{
    (void)state;
    /* K = 3, P = 1, d = 2. Client 1: n = 1, usage [0.9, 0.1, 0]; client 2:
     * n = 3, usage [0.2, 0.8, 0]. Expert weights n·u:
     *   row 0: 0.9 and 0.6 → (0.9·1 + 0.6·0) / 1.5 = 0.6 (and 0.9·2 + 0)/1.5 = 1.2
     *   row 1: 0.1 and 2.4 → (0.1·1 + 2.4·2) / 2.5 = 1.96 (and (0.1·−1 + 0)/2.5 = −0.04)
     *   row 2: nobody used it → unchanged
     * gate.b2 by n: ([1, 0, 2]·1 + [−1, 4, 2]·3) / 4 = [−0.5, 3, 2] */
    const float e1[6] = {1, 2, 1, -1, 5, 5}, e2[6] = {0, 0, 2, 0, -5, 7};
    const float b1[3] = {1, 0, 2}, b2[3] = {-1, 4, 2};
    const float u1[3] = {0.9f, 0.1f, 0}, u2[3] = {0.2f, 0.8f, 0};
    mop_aggregator *a = agg_of(MOP_AGG_MOP_AWARE, NULL);
    mop_update *c1 = mop_upd(1, 1.0, e1, b1, u1), *c2 = mop_upd(2, 3.0, e2, b2, u2);
    assert_int_equal(mop_aggregator_add(a, c1), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, c2), MOP_OK);
    const float ge[6] = {10, 10, 10, 10, 10, 10}, gb[3] = {0, 0, 0};
    const int64_t de[3] = {3, 1, 2}, dk[1] = {3};
    mop_update *glob = NULL, *next = NULL;
    assert_int_equal(mop_update_create(MOP_UPDATE_FULL, 5, 0, 0.0, &glob), MOP_OK);
    assert_int_equal(mop_update_add_tensor(glob, "experts", ge, 3, de), MOP_OK);
    assert_int_equal(mop_update_add_tensor(glob, "gate.b2", gb, 1, dk), MOP_OK);
    assert_int_equal(mop_aggregator_finish(a, glob, &next), MOP_OK);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(next, -1, "experts", &ti), MOP_OK);
    /* the weights as the library sees them (usage stored as float) */
    const double w00 = (double)0.9f * 1, w01 = (double)0.2f * 3, w10 = (double)0.1f * 1,
                 w11 = (double)0.8f * 3;
    assert_near(ti.data,
                (double[]){10 + (w00 * 1 + w01 * 0) / (w00 + w01), 10 + (w00 * 2 + w01 * 0) / (w00 + w01),
                           10 + (w10 * 1 + w11 * 2) / (w10 + w11), 10 + (w10 * -1 + w11 * 0) / (w10 + w11),
                           10, 10},
                6, 2e-6);
    /* the same numbers, rounded as in the comment above */
    assert_float_equal(ti.data[0], 10.6, 1e-5);
    assert_float_equal(ti.data[1], 11.2, 1e-5);
    assert_float_equal(ti.data[2], 11.96, 1e-5);
    assert_float_equal(ti.data[3], 9.96, 1e-5);
    assert_int_equal(mop_update_get_tensor(next, -1, "gate.b2", &ti), MOP_OK);
    assert_near(ti.data, (double[]){-0.5, 3, 2}, 3, TOL);
    assert_int_equal(mop_update_get_tensor(next, -1, "gate.usage", &ti), MOP_E_RANGE);
    mop_update_free(next);

    /* without gate.usage, or with a negative one: rejected, round unchanged */
    mop_update *nu = mop_upd(3, 1.0, e1, b1, NULL);
    assert_int_equal(mop_aggregator_add(a, c1), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, nu), MOP_E_SHAPE);
    const float neg[3] = {0.5f, -0.1f, 0};
    mop_update *ng = mop_upd(4, 1.0, e1, b1, neg);
    assert_int_equal(mop_aggregator_add(a, ng), MOP_E_INVALID_ARG);
    assert_int_equal(mop_aggregator_count(a), 1);
    mop_update_free(nu);
    mop_update_free(ng);

    /* a MoP-aware aggregator needs "experts" (K, P, d) */
    mop_aggregator *b = agg_of(MOP_AGG_MOP_AWARE, NULL);
    const float w[2] = {1, 2};
    mop_update *plain = upd(MOP_UPDATE_DELTA, 1, 1.0, w, 2);
    assert_int_equal(mop_aggregator_add(b, plain), MOP_E_SHAPE);
    mop_update_free(plain);
    mop_aggregator_free(b);

    mop_update_free(glob);
    mop_update_free(c1);
    mop_update_free(c2);
    mop_aggregator_free(a);
}

static void test_mop_aware_uniform_usage_is_fedavg(void **state)
{
    (void)state;
    /* with the same usage for every client, MoP-aware = FedAvg */
    const float u[3] = {0.3f, 0.3f, 0.4f};
    float e[3][6], b[3][3];
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < 6; i++)
            e[c][i] = frand();
        for (int i = 0; i < 3; i++)
            b[c][i] = frand();
    }
    const double n[3] = {1, 5, 2};
    mop_aggregator *ma = agg_of(MOP_AGG_MOP_AWARE, NULL), *fa = agg_of(MOP_AGG_FEDAVG, NULL);
    for (int c = 0; c < 3; c++) {
        mop_update *x = mop_upd((uint64_t)c, n[c], e[c], b[c], u);
        assert_int_equal(mop_aggregator_add(ma, x), MOP_OK);
        assert_int_equal(mop_aggregator_add(fa, x), MOP_OK); /* FedAvg ignores gate.usage */
        mop_update_free(x);
    }
    const float ge[6] = {0}, gb[3] = {0};
    mop_update *glob = NULL, *n1 = NULL, *n2 = NULL;
    const int64_t de[3] = {3, 1, 2}, dk[1] = {3};
    assert_int_equal(mop_update_create(MOP_UPDATE_FULL, 0, 0, 0.0, &glob), MOP_OK);
    assert_int_equal(mop_update_add_tensor(glob, "experts", ge, 3, de), MOP_OK);
    assert_int_equal(mop_update_add_tensor(glob, "gate.b2", gb, 1, dk), MOP_OK);
    assert_int_equal(mop_aggregator_finish(ma, glob, &n1), MOP_OK);
    assert_int_equal(mop_aggregator_finish(fa, glob, &n2), MOP_OK);
    for (int32_t t = 0; t < 2; t++) {
        mop_update_tensor_info i1 = {.struct_size = sizeof i1}, i2 = {.struct_size = sizeof i2};
        assert_int_equal(mop_update_get_tensor(n1, t, NULL, &i1), MOP_OK);
        assert_int_equal(mop_update_get_tensor(n2, t, NULL, &i2), MOP_OK);
        for (int64_t j = 0; j < i1.size; j++)
            assert_float_equal(i1.data[j], i2.data[j], TOL);
    }
    mop_update_free(glob);
    mop_update_free(n1);
    mop_update_free(n2);
    mop_aggregator_free(ma);
    mop_aggregator_free(fa);
}

/* ---- properties over all rules ------------------------------------------- */

static void perm_params(mop_aggregator_params *p)
{
    p->krum_f = 1;
    p->trim_ratio = 0.2f;
    p->dare_drop = 0.5f;
    p->ties_density = 0.5f;
    p->crumbs_top = 0.1f;
    p->crumbs_bottom = 0.2f;
}

static void test_permutation_invariance(void **state)
{
    (void)state;
    enum { N = 7, L = 24 };
    float x[N * L], xp[N * L], g[L], a[L], b[L];
    double w[N], wp[N];
    uint64_t ids[N], idp[N];
    for (int i = 0; i < N * L; i++)
        x[i] = frand();
    for (int i = 0; i < L; i++)
        g[i] = frand();
    const int perm[N] = {4, 0, 6, 2, 5, 1, 3};
    for (int i = 0; i < N; i++)
        w[i] = 1.0 + i, ids[i] = 100 + (uint64_t)i;
    for (int i = 0; i < N; i++) {
        wp[i] = w[perm[i]], idp[i] = ids[perm[i]];
        memcpy(xp + i * L, x + perm[i] * L, L * sizeof *x);
    }
    const int32_t rules[] = {MOP_AGG_FEDAVG, MOP_AGG_FEDAVGM, MOP_AGG_FEDADAM, MOP_AGG_FEDYOGI,
                             MOP_AGG_FEDADAGRAD, MOP_AGG_MEDIAN, MOP_AGG_TRIMMED_MEAN, MOP_AGG_KRUM,
                             MOP_AGG_MULTI_KRUM, MOP_AGG_TASK_ARITHMETIC, MOP_AGG_TIES, MOP_AGG_DARE,
                             MOP_AGG_BREADCRUMBS};
    for (size_t r = 0; r < sizeof rules / sizeof *rules; r++) {
        mop_aggregator *pa = agg_of(rules[r], perm_params), *pb = agg_of(rules[r], perm_params);
        round_with(pa, x, w, ids, N, L, g, a);
        round_with(pb, xp, wp, idp, N, L, g, b);
        for (int i = 0; i < L; i++)
            if (fabsf(a[i] - b[i]) > TOL)
                fail_msg("rule %d: entry %d %.9g vs %.9g after permuting clients", rules[r], i,
                         (double)a[i], (double)b[i]);
        mop_aggregator_free(pa);
        mop_aggregator_free(pb);
    }
}

static void test_identical_updates_give_that_update(void **state)
{
    (void)state;
    /* every averaging or robust rule maps n copies of Δ to g + Δ */
    enum { N = 5, L = 12 };
    float x[N * L], g[L], out[L];
    double want[L];
    for (int i = 0; i < L; i++) {
        x[i] = frand();
        g[i] = frand();
        want[i] = (double)g[i] + (double)x[i];
    }
    for (int c = 1; c < N; c++)
        memcpy(x + c * L, x, L * sizeof *x);
    const double w[N] = {1, 2, 3, 4, 5};
    const int32_t rules[] = {MOP_AGG_FEDAVG, MOP_AGG_MEDIAN, MOP_AGG_TRIMMED_MEAN, MOP_AGG_KRUM,
                             MOP_AGG_MULTI_KRUM, MOP_AGG_TASK_ARITHMETIC, MOP_AGG_TIES};
    for (size_t r = 0; r < sizeof rules / sizeof *rules; r++) {
        one_round(rules[r], full_density, x, w, N, L, g, out);
        assert_near(out, want, L, TOL);
    }
}

/* ---- errors -------------------------------------------------------------- */

static void test_rejects_bad_params(void **state)
{
    (void)state;
    mop_aggregator *a = NULL;
    mop_aggregator_params p;
#define BAD(field, value)                                                      \
    mop_aggregator_params_init(&p);                                       \
    p.field = value;                                                           \
    assert_int_equal(mop_aggregator_create(&p, &a), MOP_E_INVALID_ARG);        \
    assert_null(a);
    BAD(struct_size, 8);
    BAD(strategy, 14);
    BAD(strategy, -1);
    BAD(server_lr, 0.0f);
    BAD(server_lr, NAN);
    BAD(momentum, 1.0f);
    BAD(beta1, -0.1f);
    BAD(beta2, 1.0f);
    BAD(tau, 0.0f);
    BAD(trim_ratio, 0.5f);
    BAD(krum_f, -1);
    BAD(multi_krum_m, -2);
    BAD(ties_density, 0.0f);
    BAD(ties_density, 1.5f);
    BAD(dare_drop, 1.0f);
    BAD(crumbs_top, NAN);
    BAD(crumbs_bottom, 0.995f);
    BAD(merge_lambda, -1.0f);
    BAD(merge_lambda, INFINITY);
#undef BAD
    assert_int_equal(mop_aggregator_create(NULL, NULL), MOP_E_INVALID_ARG);
}

static void test_rejects_mismatched_updates(void **state)
{
    (void)state;
    const float x[4] = {1, 2, 3, 4};
    mop_aggregator *a = agg_of(MOP_AGG_FEDAVG, NULL);
    mop_update *u2 = upd(MOP_UPDATE_DELTA, 1, 1.0, x, 2), *u3 = upd(MOP_UPDATE_DELTA, 2, 1.0, x, 3);
    assert_int_equal(mop_aggregator_add(a, u2), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, u3), MOP_E_SHAPE); /* (3) vs (2) */
    assert_non_null(strstr(mop_last_error(), "w"));
    /* same size, other shape: (2, 1) vs (2) */
    mop_update *r = NULL, *extra = NULL, *other = NULL;
    const int64_t d21[2] = {2, 1}, d2 = 2;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 3, 1.0, &r), MOP_OK);
    assert_int_equal(mop_update_add_tensor(r, "w", x, 2, d21), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, r), MOP_E_SHAPE);
    /* an extra tensor; another name */
    extra = upd(MOP_UPDATE_DELTA, 4, 1.0, x, 2);
    assert_int_equal(mop_update_add_tensor(extra, "v", x, 1, &d2), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, extra), MOP_E_SHAPE);
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 5, 1.0, &other), MOP_OK);
    assert_int_equal(mop_update_add_tensor(other, "v", x, 1, &d2), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, other), MOP_E_SHAPE);
    assert_int_equal(mop_aggregator_add(a, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_aggregator_count(a), 1);

    /* global: missing tensor / other shape / not FULL → nothing lost, retry works */
    mop_update *next = NULL;
    assert_int_equal(mop_aggregator_finish(a, other, &next), MOP_E_INVALID_ARG); /* DELTA */
    mop_update *g3 = upd(MOP_UPDATE_FULL, 0, 0.0, x, 3), *gv = NULL, *g2 = upd(MOP_UPDATE_FULL, 0, 0.0, x, 2);
    assert_int_equal(mop_update_create(MOP_UPDATE_FULL, 0, 0, 0.0, &gv), MOP_OK);
    assert_int_equal(mop_update_add_tensor(gv, "v", x, 1, &d2), MOP_OK);
    assert_int_equal(mop_aggregator_finish(a, g3, &next), MOP_E_SHAPE);
    assert_int_equal(mop_aggregator_finish(a, gv, &next), MOP_E_SHAPE);
    assert_null(next);
    assert_int_equal(mop_aggregator_count(a), 1);
    assert_int_equal(mop_aggregator_finish(a, g2, &next), MOP_OK);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(next, 0, NULL, &ti), MOP_OK);
    assert_near(ti.data, (double[]){2, 4}, 2, 0);
    mop_update_free(next);
    next = NULL;
    /* the next round starts empty; the layout stays */
    assert_int_equal(mop_aggregator_finish(a, g2, &next), MOP_E_STATE);
    assert_int_equal(mop_aggregator_add(a, u3), MOP_E_SHAPE);

    /* all-zero sample counts cannot be averaged */
    mop_update *z = upd(MOP_UPDATE_DELTA, 9, 0.0, x, 2);
    assert_int_equal(mop_aggregator_add(a, z), MOP_OK);
    assert_int_equal(mop_aggregator_finish(a, g2, &next), MOP_E_STATE);

    /* Krum with f = 1 needs 5 updates */
    mop_aggregator *k = agg_of(MOP_AGG_KRUM, NULL);
    for (int i = 0; i < 4; i++)
        assert_int_equal(mop_aggregator_add(k, u2), MOP_OK);
    assert_int_equal(mop_aggregator_finish(k, g2, &next), MOP_E_STATE);
    assert_int_equal(mop_aggregator_add(k, u2), MOP_OK);
    assert_int_equal(mop_aggregator_finish(k, g2, &next), MOP_OK);
    mop_update_free(next);

    mop_update_free(z);
    mop_update_free(g2);
    mop_update_free(g3);
    mop_update_free(gv);
    mop_update_free(u2);
    mop_update_free(u3);
    mop_update_free(r);
    mop_update_free(extra);
    mop_update_free(other);
    mop_aggregator_free(a);
    mop_aggregator_free(k);
}

static void test_global_tensors_not_aggregated_are_copied(void **state)
{
    (void)state;
    const float x[2] = {1, 1}, g[2] = {5, 6}, keep[3] = {7, 8, 9};
    mop_aggregator *a = agg_of(MOP_AGG_FEDAVG, NULL);
    mop_update *u = upd(MOP_UPDATE_DELTA, 1, 2.0, x, 2), *glob = upd(MOP_UPDATE_FULL, 4, 0.0, g, 2),
               *next = NULL;
    const int64_t d3 = 3;
    assert_int_equal(mop_update_add_tensor(glob, "frozen", keep, 1, &d3), MOP_OK);
    assert_int_equal(mop_aggregator_add(a, u), MOP_OK);
    assert_int_equal(mop_aggregator_finish(a, glob, &next), MOP_OK);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(next, -1, "frozen", &ti), MOP_OK);
    assert_memory_equal(ti.data, keep, sizeof keep);
    mop_update_header h = {.struct_size = sizeof h};
    assert_int_equal(mop_update_get_header(next, &h), MOP_OK);
    assert_true(h.round == 4 && h.n_samples == 2.0 && h.kind == MOP_UPDATE_FULL);
    mop_update_free(u);
    mop_update_free(glob);
    mop_update_free(next);
    mop_aggregator_free(a);
}

/* ---- norm bounding --------------------------------------------------------- */

/* Four deltas of norms 5, 1, 2, 13 (3-4-0, 0-0-1, 0-2-0, 5-12-0) plus a
 * "gate.usage" tensor that must neither count nor change. Median of
 * {1, 2, 5, 13} = 3.5. */
static void nb_make(mop_update **u)
{
    static const float x[4][3] = {{3, 4, 0}, {0, 0, 1}, {0, 2, 0}, {5, 12, 0}};
    const float usage[2] = {100.0f, 200.0f};
    const int64_t two = 2;
    for (int i = 0; i < 4; i++) {
        u[i] = upd(MOP_UPDATE_DELTA, (uint64_t)i, 1.0, x[i], 3);
        assert_int_equal(mop_update_add_tensor(u[i], "gate.usage", usage, 1, &two), MOP_OK);
    }
}

static const float *nb_w(mop_update *u)
{
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(u, -1, "w", &ti), MOP_OK);
    mop_update_tensor_info gi = {.struct_size = sizeof gi};
    assert_int_equal(mop_update_get_tensor(u, -1, "gate.usage", &gi), MOP_OK);
    assert_true(gi.data[0] == 100.0f && gi.data[1] == 200.0f);
    return ti.data;
}

static void test_norm_bound_clip_fixed(void **state)
{
    (void)state;
    mop_update *u[4];
    nb_make(u);
    mop_norm_bound_params p;
    assert_int_equal(mop_norm_bound_params_init(&p), MOP_OK);
    assert_int_equal(p.struct_size, sizeof p);
    assert_int_equal(p.mode, MOP_NORM_BOUND_CLIP);
    p.max_norm = 2.5f;
    uint8_t keep[4];
    float norms[4], bound = 0.0f;
    assert_int_equal(mop_update_norm_bound(u, 4, &p, keep, norms, &bound), MOP_OK);
    assert_true(bound == 2.5f);
    const float want_norm[4] = {5, 1, 2, 13};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(keep[i], 1);
        assert_float_equal(norms[i], want_norm[i], 1e-6);
    }
    /* 3-4-0 -> x 0.5 = 1.5-2-0; 5-12-0 -> x 2.5/13; the others unchanged (bit for bit) */
    const float *w0 = nb_w(u[0]), *w1 = nb_w(u[1]), *w2 = nb_w(u[2]), *w3 = nb_w(u[3]);
    assert_float_equal(w0[0], 1.5, 1e-6);
    assert_float_equal(w0[1], 2.0, 1e-6);
    assert_true(w1[2] == 1.0f && w2[1] == 2.0f);
    assert_float_equal(w3[0], 5.0 * 2.5 / 13.0, 1e-6);
    assert_float_equal(w3[1], 12.0 * 2.5 / 13.0, 1e-6);
    double n3 = sqrt((double)w3[0] * w3[0] + (double)w3[1] * w3[1]);
    assert_true(n3 <= 2.5);
    for (int i = 0; i < 4; i++)
        mop_update_free(u[i]);
}

static void test_norm_bound_reject_median(void **state)
{
    (void)state;
    mop_update *u[4];
    nb_make(u);
    mop_norm_bound_params p;
    assert_int_equal(mop_norm_bound_params_init(&p), MOP_OK);
    p.mode = MOP_NORM_BOUND_REJECT;
    p.median_multiple = 2.0f; /* 2 x 3.5 = 7: only the 13 goes */
    uint8_t keep[4];
    float bound = 0.0f;
    assert_int_equal(mop_update_norm_bound(u, 4, &p, keep, NULL, &bound), MOP_OK);
    assert_float_equal(bound, 7.0, 1e-6);
    assert_true(keep[0] == 1 && keep[1] == 1 && keep[2] == 1 && keep[3] == 0);
    assert_true(nb_w(u[3])[1] == 12.0f); /* rejected: unchanged */
    /* both bounds: the smaller (max_norm 4 < 7) applies */
    p.max_norm = 4.0f;
    assert_int_equal(mop_update_norm_bound(u, 4, &p, keep, NULL, &bound), MOP_OK);
    assert_true(bound == 4.0f);
    assert_true(keep[0] == 0 && keep[1] == 1 && keep[2] == 1 && keep[3] == 0);
    /* odd count: median of {1, 2, 5} = 2, x 1 = 2 -> clip 5 to 2 */
    p.mode = MOP_NORM_BOUND_CLIP;
    p.max_norm = 0.0f;
    p.median_multiple = 1.0f;
    assert_int_equal(mop_update_norm_bound(u, 3, &p, keep, NULL, &bound), MOP_OK);
    assert_float_equal(bound, 2.0, 1e-6);
    assert_float_equal(nb_w(u[0])[0], 1.2, 1e-6);
    assert_float_equal(nb_w(u[0])[1], 1.6, 1e-6);
    for (int i = 0; i < 4; i++)
        mop_update_free(u[i]);
}

static void test_norm_bound_zero_median(void **state)
{
    (void)state;
    const float z[3] = {0, 0, 0}, x[3] = {1, 1, 1};
    mop_update *u[3] = {upd(MOP_UPDATE_DELTA, 0, 1, z, 3), upd(MOP_UPDATE_DELTA, 1, 1, z, 3),
                        upd(MOP_UPDATE_DELTA, 2, 1, x, 3)};
    mop_norm_bound_params p;
    assert_int_equal(mop_norm_bound_params_init(&p), MOP_OK);
    p.median_multiple = 3.0f; /* bound 0: the nonzero one is zeroed */
    uint8_t keep[3];
    float bound = -1.0f;
    assert_int_equal(mop_update_norm_bound(u, 3, &p, keep, NULL, &bound), MOP_OK);
    assert_true(bound == 0.0f && keep[2] == 1);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(u[2], -1, "w", &ti), MOP_OK);
    assert_true(ti.data[0] == 0.0f && ti.data[2] == 0.0f);
    for (int i = 0; i < 3; i++)
        mop_update_free(u[i]);
}

static void test_norm_bound_rejects_bad_args(void **state)
{
    (void)state;
    mop_update *u[4];
    nb_make(u);
    const float x[3] = {1, 2, 3};
    mop_update *full = upd(MOP_UPDATE_FULL, 9, 1.0, x, 3);
    mop_norm_bound_params p;
    assert_int_equal(mop_norm_bound_params_init_sized(NULL, sizeof p), MOP_E_INVALID_ARG);
    assert_int_equal(mop_norm_bound_params_init(&p), MOP_OK);
    assert_int_equal(mop_update_norm_bound(u, 4, &p, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "no bound"));
    p.max_norm = 1.0f;
    assert_int_equal(mop_update_norm_bound(NULL, 4, &p, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_norm_bound(u, 0, &p, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_norm_bound(u, 4, NULL, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    mop_update *dup[2] = {u[0], u[0]};
    assert_int_equal(mop_update_norm_bound(dup, 2, &p, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "same update"));
    mop_update *withnull[2] = {u[0], NULL};
    assert_int_equal(mop_update_norm_bound(withnull, 2, &p, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    mop_update *withfull[2] = {u[0], full};
    assert_int_equal(mop_update_norm_bound(withfull, 2, &p, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "DELTA"));
    mop_norm_bound_params q = p;
    q.mode = 7;
    assert_int_equal(mop_update_norm_bound(u, 4, &q, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    q = p;
    q.max_norm = -1.0f;
    assert_int_equal(mop_update_norm_bound(u, 4, &q, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    q = p;
    q.median_multiple = NAN;
    assert_int_equal(mop_update_norm_bound(u, 4, &q, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    q = p;
    q.struct_size = sizeof q + 4;
    assert_int_equal(mop_update_norm_bound(u, 4, &q, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    /* nothing changed by the failed calls; a short struct_size (only mode) keeps the defaults */
    assert_true(nb_w(u[3])[1] == 12.0f);
    q = p;
    q.struct_size = offsetof(mop_norm_bound_params, max_norm);
    assert_int_equal(mop_update_norm_bound(u, 4, &q, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    for (int i = 0; i < 4; i++)
        mop_update_free(u[i]);
    mop_update_free(full);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_fedavg_hand),
        T(test_fedavg_full_updates_become_deltas),
        T(test_fedavgm_two_rounds),
        T(test_fedadam_two_rounds),
        T(test_fedyogi_two_rounds),
        T(test_fedadagrad_two_rounds),
        T(test_median_hand),
        T(test_trimmed_mean_hand),
        T(test_trimmed_mean_zero_is_mean),
        T(test_krum_hand),
        T(test_bounded_influence),
        T(test_task_arithmetic_hand),
        T(test_ties_hand),
        T(test_ties_no_trim),
        T(test_dare_kept_fraction_and_rescale),
        T(test_dare_drop_zero_is_task_arithmetic),
        T(test_breadcrumbs_masks),
        T(test_mop_aware_hand),
        T(test_mop_aware_uniform_usage_is_fedavg),
        T(test_permutation_invariance),
        T(test_identical_updates_give_that_update),
        T(test_rejects_bad_params),
        T(test_rejects_mismatched_updates),
        T(test_global_tensors_not_aggregated_are_copied),
        T(test_norm_bound_clip_fixed),
        T(test_norm_bound_reject_median),
        T(test_norm_bound_zero_median),
        T(test_norm_bound_rejects_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
