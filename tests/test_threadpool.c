/* Fork-join pool (threadpool.c): every thread index runs exactly once per
 * job, jobs of any size are split exactly, argument errors have their codes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "threadpool.h"

typedef struct count_arg {
    atomic_int runs[16];
    atomic_int bad_nth;
    int expect_nth;
} count_arg;

static void count_fn(void *p, int ith, int nth)
{
    count_arg *a = p;
    if (nth != a->expect_nth || ith < 0 || ith >= nth)
        atomic_fetch_add(&a->bad_nth, 1);
    else
        atomic_fetch_add(&a->runs[ith], 1);
}

static void test_each_index_runs_once_per_job(void **state)
{
    (void)state;
    for (int n = 1; n <= 8; n++) {
        mop_pool *pool = NULL;
        assert_int_equal(mop_pool_create(n, &pool), MOP_OK);
        assert_int_equal(mop_pool_size(pool), n);
        count_arg a;
        memset(&a, 0, sizeof a);
        a.expect_nth = n;
        const int jobs = 50;
        for (int j = 0; j < jobs; j++)
            mop_pool_run(pool, count_fn, &a);
        assert_int_equal(atomic_load(&a.bad_nth), 0);
        for (int i = 0; i < 16; i++)
            assert_int_equal(atomic_load(&a.runs[i]), i < n ? jobs : 0);
        mop_pool_free(pool);
    }
}

static void test_null_pool_runs_on_caller(void **state)
{
    (void)state;
    count_arg a;
    memset(&a, 0, sizeof a);
    a.expect_nth = 1;
    mop_pool_run(NULL, count_fn, &a);
    assert_int_equal(atomic_load(&a.runs[0]), 1);
    assert_int_equal(atomic_load(&a.bad_nth), 0);
    assert_int_equal(mop_pool_size(NULL), 1);
    mop_pool_free(NULL);
}

/* A pool job covering [0, n) through mop_split_range marks each element. */
typedef struct cover_arg {
    atomic_int *hits;
    int64_t n;
} cover_arg;

static void cover_fn(void *p, int ith, int nth)
{
    cover_arg *a = p;
    int64_t lo, hi;
    mop_split_range(a->n, ith, nth, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        atomic_fetch_add(&a->hits[i], 1);
}

static void test_split_range_partitions_exactly(void **state)
{
    (void)state;
    for (int nth = 1; nth <= 8; nth++)
        for (int64_t n = 0; n <= 40; n++) {
            int64_t prev_hi = 0, min_len = n, max_len = 0;
            for (int ith = 0; ith < nth; ith++) {
                int64_t lo, hi;
                mop_split_range(n, ith, nth, &lo, &hi);
                assert_int_equal(lo, prev_hi); /* contiguous, in order */
                assert_true(hi >= lo);
                min_len = hi - lo < min_len ? hi - lo : min_len;
                max_len = hi - lo > max_len ? hi - lo : max_len;
                prev_hi = hi;
            }
            assert_int_equal(prev_hi, n);
            assert_true(max_len - min_len <= 1);
        }
    /* and through real pools, sizes smaller and larger than the pool */
    atomic_int hits[100];
    for (int nth = 1; nth <= 8; nth++) {
        mop_pool *pool = NULL;
        assert_int_equal(mop_pool_create(nth, &pool), MOP_OK);
        const int64_t sizes[] = {0, 1, 3, 7, 8, 9, 100};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            for (int i = 0; i < 100; i++)
                atomic_init(&hits[i], 0);
            cover_arg a = {hits, sizes[s]};
            mop_pool_run(pool, cover_fn, &a);
            for (int64_t i = 0; i < 100; i++)
                assert_int_equal(atomic_load(&hits[i]), i < sizes[s] ? 1 : 0);
        }
        mop_pool_free(pool);
    }
}

/* The hand-off spins, then sleeps (threadpool.c). Plain (non-atomic) data
 * written by the caller before a job must be seen by every worker, and what
 * workers write must be seen by the caller after the job, on both paths:
 * back-to-back jobs (spinning) and jobs far apart or slow (blocking). */
typedef struct handoff_arg {
    int64_t value;          /* set by the caller before each job */
    int64_t sum[8];         /* per thread: Σ value over the jobs it ran */
    int slow_ith;           /* this thread sleeps inside the job; -1 = none */
} handoff_arg;

static void sleep_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static void handoff_fn(void *p, int ith, int nth)
{
    handoff_arg *a = p;
    (void)nth;
    if (ith == a->slow_ith)
        sleep_us(300); /* longer than the spin budget: the caller must block */
    a->sum[ith] += a->value;
}

static void test_handoff_spin_and_sleep_paths(void **state)
{
    (void)state;
    for (int n = 2; n <= 3; n++) {
        mop_pool *pool = NULL;
        assert_int_equal(mop_pool_create(n, &pool), MOP_OK);
        handoff_arg a;
        memset(&a, 0, sizeof a);
        a.slow_ith = -1;
        int64_t expect = 0;
        for (int j = 0; j < 3000; j++) { /* back to back */
            a.value = j + 1;
            expect += j + 1;
            mop_pool_run(pool, handoff_fn, &a);
            assert_int_equal(a.sum[n - 1], expect);
        }
        for (int j = 0; j < 6; j++) { /* workers asleep, then slow workers */
            sleep_us(j % 2 ? 1000 : 200);
            a.slow_ith = j >= 3 ? n - 1 : -1;
            a.value = 1000 + j;
            expect += 1000 + j;
            mop_pool_run(pool, handoff_fn, &a);
            for (int i = 0; i < n; i++)
                assert_int_equal(a.sum[i], expect);
        }
        mop_pool_free(pool);
    }
}

static void test_create_arguments(void **state)
{
    (void)state;
    mop_pool *pool = NULL;
    assert_int_equal(mop_pool_create(2, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_pool_create(257, &pool), MOP_E_RANGE);
    assert_null(pool);
    assert_int_equal(mop_pool_create(0, &pool), MOP_OK); /* all cores */
    assert_int_equal(mop_pool_size(pool), mop_cpu_count());
    assert_true(mop_cpu_count() >= 1);
    mop_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_index_runs_once_per_job),
        cmocka_unit_test(test_null_pool_runs_on_caller),
        cmocka_unit_test(test_split_range_partitions_exactly),
        cmocka_unit_test(test_handoff_spin_and_sleep_paths),
        cmocka_unit_test(test_create_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
