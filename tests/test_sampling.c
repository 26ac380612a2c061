/* Sampler: greedy, top-k, top-p, temperature statistics, seeding, errors. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

static const float L5[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
#define ARGMAX5 1
#define DRAWS 20000

static mop_sampler *make(float temperature, int32_t top_k, float top_p, uint64_t seed)
{
    mop_sampler_params p;
    mop_sampler_params_init(&p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.seed = seed;
    mop_sampler *s = NULL;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_OK);
    assert_non_null(s);
    return s;
}

static void frequencies(mop_sampler *s, const float *logits, int32_t n, double *freq)
{
    for (int32_t i = 0; i < n; i++)
        freq[i] = 0.0;
    for (int d = 0; d < DRAWS; d++) {
        int32_t tok = -1;
        assert_int_equal(mop_sampler_sample(s, logits, n, &tok), MOP_OK);
        assert_true(tok >= 0 && tok < n);
        freq[tok] += 1.0 / DRAWS;
    }
}

/* softmax(logits / T) restricted to `keep` (1 = kept), in double. */
static void expected(const float *logits, int32_t n, double T, const int *keep, double *p)
{
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        p[i] = keep[i] ? exp(logits[i] / T) : 0.0;
        sum += p[i];
    }
    for (int32_t i = 0; i < n; i++)
        p[i] /= sum;
}

static void test_greedy_and_degenerate_filters_pick_argmax(void **state)
{
    (void)state;
    mop_sampler *greedy = make(0.0f, 0, 1.0f, 1);
    mop_sampler *k1 = make(1.0f, 1, 1.0f, 2);
    mop_sampler *ptiny = make(1.0f, 0, 1e-6f, 3);
    for (int rep = 0; rep < 200; rep++) {
        int32_t a = -1, b = -1, c = -1;
        assert_int_equal(mop_sampler_sample(greedy, L5, 5, &a), MOP_OK);
        assert_int_equal(mop_sampler_sample(k1, L5, 5, &b), MOP_OK);
        assert_int_equal(mop_sampler_sample(ptiny, L5, 5, &c), MOP_OK);
        assert_int_equal(a, ARGMAX5);
        assert_int_equal(b, ARGMAX5);
        assert_int_equal(c, ARGMAX5);
    }
    /* a large vocabulary with the maximum at the end */
    enum { V = 50000 };
    static float big[V];
    for (int i = 0; i < V; i++)
        big[i] = (float)sin(i * 0.37) * 3.0f;
    big[V - 1] = 10.0f;
    int32_t a = -1, b = -1;
    assert_int_equal(mop_sampler_sample(greedy, big, V, &a), MOP_OK);
    assert_int_equal(mop_sampler_sample(k1, big, V, &b), MOP_OK);
    assert_int_equal(a, V - 1);
    assert_int_equal(b, V - 1);
    mop_sampler_free(greedy);
    mop_sampler_free(k1);
    mop_sampler_free(ptiny);
}

static void test_temperature_frequencies_match_softmax(void **state)
{
    (void)state;
    const int all[5] = {1, 1, 1, 1, 1};
    const float temps[3] = {1.0f, 0.7f, 1.8f};
    for (int ti = 0; ti < 3; ti++) {
        mop_sampler *s = make(temps[ti], 0, 1.0f, 1234 + (uint64_t)ti);
        double f[5], p[5];
        frequencies(s, L5, 5, f);
        expected(L5, 5, temps[ti], all, p);
        for (int i = 0; i < 5; i++)
            assert_true(fabs(f[i] - p[i]) <= 0.01);
        mop_sampler_free(s);
    }
}

static void test_top_k_and_top_p_renormalise(void **state)
{
    (void)state;
    double f[5], p[5];
    /* top_k = 2 keeps ids 1 (2.0) and 4 (1.5) */
    mop_sampler *s = make(1.0f, 2, 1.0f, 7);
    frequencies(s, L5, 5, f);
    const int keep_k2[5] = {0, 1, 0, 0, 1};
    expected(L5, 5, 1.0, keep_k2, p);
    for (int i = 0; i < 5; i++)
        assert_true(fabs(f[i] - p[i]) <= 0.01);
    mop_sampler_free(s);

    /* softmax(L5) sorted: 0.445 (id1), 0.270 (id4), 0.164 (id0), ... ; top_p = 0.6
     * needs ids 1 and 4 (0.715 >= 0.6); top_p = 0.8 also needs id 0 (0.879). */
    const int all[5] = {1, 1, 1, 1, 1};
    expected(L5, 5, 1.0, all, p);
    assert_true(p[1] < 0.6 && p[1] + p[4] >= 0.6 && p[1] + p[4] < 0.8);
    s = make(1.0f, 0, 0.6f, 8);
    frequencies(s, L5, 5, f);
    expected(L5, 5, 1.0, keep_k2, p);
    for (int i = 0; i < 5; i++)
        assert_true(fabs(f[i] - p[i]) <= 0.01);
    mop_sampler_free(s);

    s = make(1.0f, 0, 0.8f, 9);
    frequencies(s, L5, 5, f);
    const int keep3[5] = {1, 1, 0, 0, 1};
    expected(L5, 5, 1.0, keep3, p);
    for (int i = 0; i < 5; i++)
        assert_true(fabs(f[i] - p[i]) <= 0.01);
    mop_sampler_free(s);
}

static void test_seed_determines_the_sequence(void **state)
{
    (void)state;
    mop_sampler *a = make(1.0f, 0, 1.0f, 99), *b = make(1.0f, 0, 1.0f, 99);
    mop_sampler *c = make(1.0f, 0, 1.0f, 100);
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        int32_t ta, tb, tc;
        assert_int_equal(mop_sampler_sample(a, L5, 5, &ta), MOP_OK);
        assert_int_equal(mop_sampler_sample(b, L5, 5, &tb), MOP_OK);
        assert_int_equal(mop_sampler_sample(c, L5, 5, &tc), MOP_OK);
        assert_int_equal(ta, tb);
        differ += ta != tc;
    }
    assert_true(differ > 0);
    mop_sampler_free(a);
    mop_sampler_free(b);
    mop_sampler_free(c);
}

static void test_invalid_params_and_inputs(void **state)
{
    (void)state;
    mop_sampler *s = NULL;
    mop_sampler_params p;
    mop_sampler_params_init(&p);
    assert_true(p.temperature == 0.8f && p.top_k == 40 && p.top_p == 0.95f && p.seed == 42);
    p.temperature = -0.1f;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    p.temperature = NAN;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    mop_sampler_params_init(&p);
    p.top_k = -1;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    mop_sampler_params_init(&p);
    p.top_p = 0.0f;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    p.top_p = 1.5f;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    p.top_p = NAN;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    mop_sampler_params_init(&p);
    p.struct_size = 0;
    assert_int_equal(mop_sampler_create(&p, &s), MOP_E_INVALID_ARG);
    assert_int_equal(mop_sampler_create(NULL, &s), MOP_E_INVALID_ARG);
    assert_null(s);

    mop_sampler_params_init(&p);
    assert_int_equal(mop_sampler_create(&p, &s), MOP_OK);
    int32_t tok = -7;
    float bad[5] = {1.0f, 2.0f, NAN, 0.0f, 0.0f};
    assert_int_equal(mop_sampler_sample(s, bad, 5, &tok), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "NaN"));
    assert_int_equal(mop_sampler_sample(s, L5, 0, &tok), MOP_E_INVALID_ARG);
    assert_int_equal(mop_sampler_sample(s, NULL, 5, &tok), MOP_E_INVALID_ARG);
    assert_int_equal(mop_sampler_sample(s, L5, 5, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(tok, -7);
    mop_sampler_free(s);

    /* greedy also rejects NaN */
    s = make(0.0f, 0, 1.0f, 1);
    assert_int_equal(mop_sampler_sample(s, bad, 5, &tok), MOP_E_INVALID_ARG);
    mop_sampler_free(s);
    mop_sampler_free(NULL);
    assert_int_equal(mop_alloc_live(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_degenerate_filters_pick_argmax),
        cmocka_unit_test(test_temperature_frequencies_match_softmax),
        cmocka_unit_test(test_top_k_and_top_p_renormalise),
        cmocka_unit_test(test_seed_determines_the_sequence),
        cmocka_unit_test(test_invalid_params_and_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
