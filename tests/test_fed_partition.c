/* Partitioners: the paper's skewed split (sizes exactly as documented in
 * mop_fed.h: s = floor(c / (ratio + N − 1)) per small part, the rest in the
 * big one), IID, Dirichlet(alpha) at both extremes, determinism per seed,
 * and the gamma sampler's first two moments. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fed/fed.h"
#include "internal.h"
#include "libmop/mop_fed.h"

enum { MAXC = 16, MAXT = 16 };

/* counts[t][c]: examples of category index t given to client c */
static void tally(const int32_t *task, const int32_t *labels, int n_labels, const int32_t *client_of,
                  int64_t n, int32_t n_clients, int64_t counts[MAXT][MAXC])
{
    memset(counts, 0, sizeof(int64_t) * MAXT * MAXC);
    for (int64_t i = 0; i < n; i++) {
        int t = 0;
        while (t < n_labels && labels[t] != task[i])
            t++;
        assert_true(t < n_labels);
        assert_true(client_of[i] >= 0 && client_of[i] < n_clients);
        counts[t][client_of[i]]++;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_skewed_sizes_follow_the_rule(void **state)
{
    (void)state;
    /* categories with odd labels and sizes 100, 57, 40, 18; N = 4, ratio 15:
     * ratio + N − 1 = 18 → small parts 5, 3, 2, 1; big parts 85, 48, 34, 15 */
    const int32_t labels[4] = {-5, 7, 1000, 3};
    const int64_t sizes[4] = {100, 57, 40, 18}, small[4] = {5, 3, 2, 1}, big[4] = {85, 48, 34, 15};
    int64_t n = 0;
    for (int t = 0; t < 4; t++)
        n += sizes[t];
    int32_t *task = malloc((size_t)n * sizeof *task), *client = malloc((size_t)n * sizeof *client);
    /* interleaved order, so grouping is exercised */
    int64_t left[4] = {100, 57, 40, 18}, k = 0;
    while (k < n)
        for (int t = 0; t < 4; t++)
            if (left[t]-- > 0)
                task[k++] = labels[t];
    assert_int_equal(mop_partition_skewed(task, n, 4, 15.0f, 42, client), MOP_OK);
    int64_t counts[MAXT][MAXC];
    tally(task, labels, 4, client, n, 4, counts);
    for (int t = 0; t < 4; t++) {
        int64_t c[4];
        memcpy(c, counts[t], sizeof c);
        qsort(c, 4, sizeof *c, cmp_i64);
        assert_int_equal(c[0], small[t]);
        assert_int_equal(c[1], small[t]);
        assert_int_equal(c[2], small[t]);
        assert_int_equal(c[3], big[t]);
        /* the documented bound: big − ratio·small in [0, ratio + N − 1) */
        assert_true(big[t] - 15 * small[t] >= 0 && big[t] - 15 * small[t] < 18);
    }
    /* determinism per seed, and another seed gives another split */
    int32_t *again = malloc((size_t)n * sizeof *again);
    assert_int_equal(mop_partition_skewed(task, n, 4, 15.0f, 42, again), MOP_OK);
    assert_memory_equal(client, again, (size_t)n * sizeof *client);
    assert_int_equal(mop_partition_skewed(task, n, 4, 15.0f, 43, again), MOP_OK);
    assert_true(memcmp(client, again, (size_t)n * sizeof *client) != 0);
    free(again);
    free(task);
    free(client);
}

static void test_skewed_paper_setting(void **state)
{
    (void)state;
    /* 5000 examples, 8 categories of 625, 8 clients, ratio 15:
     * ratio + N − 1 = 22 → small 28, big 625 − 7·28 = 429 (= 15·28 + 9) */
    enum { N = 5000, T = 8, C = 8 };
    int32_t *task = malloc(N * sizeof *task), *client = malloc(N * sizeof *client);
    int32_t labels[T];
    for (int t = 0; t < T; t++)
        labels[t] = t;
    for (int i = 0; i < N; i++)
        task[i] = (int32_t)((i * 7) % T);
    assert_int_equal(mop_partition_skewed(task, N, C, 15.0f, 2024, client), MOP_OK);
    int64_t counts[MAXT][MAXC];
    tally(task, labels, T, client, N, C, counts);
    int big_owner[T], distinct = 0;
    for (int t = 0; t < T; t++) {
        int n_big = 0;
        for (int c = 0; c < C; c++) {
            assert_true(counts[t][c] == 28 || counts[t][c] == 429); /* every client gets every task */
            if (counts[t][c] == 429)
                big_owner[t] = c, n_big++;
        }
        assert_int_equal(n_big, 1);
    }
    /* the big parts are dealt at random, not always to the same client */
    for (int t = 0; t < T; t++) {
        int seen = 0;
        for (int u = 0; u < t; u++)
            seen |= big_owner[u] == big_owner[t];
        distinct += !seen;
    }
    assert_true(distinct >= 2);
    free(task);
    free(client);
}

static void test_skewed_rejects(void **state)
{
    (void)state;
    int32_t task[20] = {0}, client[20];
    for (int i = 0; i < 20; i++)
        client[i] = -1;
    /* 20 examples cannot give 4 clients parts of a 18-unit split: 15 + 3 = 18 <= 20 is fine,
     * but 5 clients need 19 and 8 need 22 */
    assert_int_equal(mop_partition_skewed(task, 20, 8, 15.0f, 1, client), MOP_E_RANGE);
    for (int i = 0; i < 20; i++)
        assert_int_equal(client[i], -1); /* untouched */
    assert_int_equal(mop_partition_skewed(task, 20, 4, 15.0f, 1, client), MOP_OK);
    assert_int_equal(mop_partition_skewed(task, 20, 4, 0.5f, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_skewed(task, 20, 4, NAN, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_skewed(task, 20, 0, 15.0f, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_skewed(task, 0, 4, 15.0f, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_skewed(NULL, 20, 4, 15.0f, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_skewed(task, 20, 4, 15.0f, 1, NULL), MOP_E_INVALID_ARG);
    /* ratio 1 is an equal split */
    assert_int_equal(mop_partition_skewed(task, 20, 4, 1.0f, 1, client), MOP_OK);
    int cnt[4] = {0};
    for (int i = 0; i < 20; i++)
        cnt[client[i]]++;
    for (int c = 0; c < 4; c++)
        assert_int_equal(cnt[c], 5);
}

static void test_iid(void **state)
{
    (void)state;
    enum { N = 1003, C = 7 };
    int32_t a[N], b[N];
    assert_int_equal(mop_partition_iid(N, C, 5, a), MOP_OK);
    int cnt[C] = {0};
    for (int i = 0; i < N; i++) {
        assert_true(a[i] >= 0 && a[i] < C);
        cnt[a[i]]++;
    }
    for (int c = 0; c < C; c++)
        assert_true(cnt[c] == N / C || cnt[c] == N / C + 1);
    assert_int_equal(mop_partition_iid(N, C, 5, b), MOP_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(mop_partition_iid(N, C, 6, b), MOP_OK);
    assert_true(memcmp(a, b, sizeof a) != 0);
    /* not the identity deal: consecutive examples are not all round-robin */
    int rr = 0;
    for (int i = 0; i < N; i++)
        rr += a[i] == i % C;
    assert_true(rr < N / 2);
    assert_int_equal(mop_partition_iid(N, 0, 5, a), MOP_E_INVALID_ARG);
}

static void test_dirichlet_extremes(void **state)
{
    (void)state;
    enum { PER = 1000, T = 3, C = 4, N = PER * T };
    int32_t *task = malloc(N * sizeof *task), *client = malloc(N * sizeof *client),
            *again = malloc(N * sizeof *again);
    const int32_t labels[T] = {0, 1, 2};
    for (int i = 0; i < N; i++)
        task[i] = i % T;
    int64_t counts[MAXT][MAXC];

    /* huge alpha ≈ IID: p_j has std sqrt((1/C)(1 − 1/C) / (C·alpha + 1)) ≈ 0.0022,
     * i.e. 2.2 examples of 1000; allow 15 (~7 std) around 250 */
    assert_int_equal(mop_partition_dirichlet(task, N, C, 1e4f, 9, client), MOP_OK);
    tally(task, labels, T, client, N, C, counts);
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++)
            if (llabs(counts[t][c] - PER / C) > 15)
                fail_msg("alpha 1e4: task %d client %d got %lld of %d", t, c, (long long)counts[t][c], PER);

    /* tiny alpha: each category almost entirely on one client. With alpha =
     * 1e-4, log G_j ≈ −Exp(1)/alpha, so two clients share a category only when
     * two exponential draws fall within ~3e-4 of each other: about 0.1% of
     * categories (measured at 1% for alpha = 1e-3). The seed is fixed, so the
     * test is deterministic; the bound only says why 0.95 is a fair threshold. */
    assert_int_equal(mop_partition_dirichlet(task, N, C, 1e-4f, 9, client), MOP_OK);
    tally(task, labels, T, client, N, C, counts);
    for (int t = 0; t < T; t++) {
        int64_t mx = 0, sum = 0;
        for (int c = 0; c < C; c++) {
            mx = counts[t][c] > mx ? counts[t][c] : mx;
            sum += counts[t][c];
        }
        assert_int_equal(sum, PER);
        if (mx < 0.95 * PER)
            fail_msg("alpha 1e-4: task %d has at most %lld of %d on one client", t, (long long)mx, PER);
    }

    /* determinism */
    assert_int_equal(mop_partition_dirichlet(task, N, C, 0.5f, 11, client), MOP_OK);
    assert_int_equal(mop_partition_dirichlet(task, N, C, 0.5f, 11, again), MOP_OK);
    assert_memory_equal(client, again, N * sizeof *client);
    assert_int_equal(mop_partition_dirichlet(task, N, C, 0.5f, 12, again), MOP_OK);
    assert_true(memcmp(client, again, N * sizeof *client) != 0);

    assert_int_equal(mop_partition_dirichlet(task, N, C, 0.0f, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_dirichlet(task, N, C, -1.0f, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_dirichlet(task, N, C, INFINITY, 1, client), MOP_E_INVALID_ARG);
    assert_int_equal(mop_partition_dirichlet(NULL, N, C, 1.0f, 1, client), MOP_E_INVALID_ARG);
    free(task);
    free(client);
    free(again);
}

/* Gamma(a, 1) has mean a and variance a. 40000 draws: the sample mean has
 * std sqrt(a / 40000) (0.0035 for a = 0.5, 0.0079 for a = 2.5); allow 6 std.
 * The variance estimate: std ≈ sqrt((μ4 − σ⁴)/n) with μ4 = 3a² + 6a → 6 std. */
static void test_gamma_sampler_moments(void **state)
{
    (void)state;
    const double alphas[3] = {0.05, 0.5, 2.5};
    for (int k = 0; k < 3; k++) {
        double a = alphas[k], s = 0, s2 = 0;
        const int n = 40000;
        fed_rng r;
        mop_rng_seed(&r, 1234 + (uint64_t)k);
        for (int i = 0; i < n; i++) {
            double x = exp(fed_rng_log_gamma(&r, a));
            s += x;
            s2 += x * x;
        }
        double mean = s / n, var = s2 / n - mean * mean;
        double mean_tol = 6 * sqrt(a / n), var_tol = 6 * sqrt((3 * a * a + 6 * a) / n);
        if (fabs(mean - a) > mean_tol || fabs(var - a) > var_tol)
            fail_msg("Gamma(%g): mean %g (tol %g), var %g (tol %g)", a, mean, mean_tol, var, var_tol);
    }
    /* tiny alpha stays finite in the log domain */
    fed_rng r;
    mop_rng_seed(&r, 1);
    for (int i = 0; i < 1000; i++)
        assert_true(isfinite(fed_rng_log_gamma(&r, 1e-4)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_skewed_sizes_follow_the_rule),
        cmocka_unit_test(test_skewed_paper_setting),
        cmocka_unit_test(test_skewed_rejects),
        cmocka_unit_test(test_iid),
        cmocka_unit_test(test_dirichlet_extremes),
        cmocka_unit_test(test_gamma_sampler_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
