/* Dense F32 weight kernels (weight_dense.c, weight_dense_avx2.c) and CPU
 * dispatch (cpu.c).
 *
 * Every product is compared with a double-precision loop written here:
 *   matvec    y (rows)      = W · x
 *   matmul    Y (n, rows)   = X (n, cols) · Wᵀ
 *   matmul_t  dX (n, cols) += dY (n, rows) · W
 * Tolerance, per output element: |got − ref| ≤ eps·sqrt(K)·S + (eps/2)·|ref|
 * with eps = 1.2e-7 (float), K the length of the sum and S = Σ|terms| (plus
 * |dX₀| for matmul_t): float rounding of a K-term sum in any order grows like
 * eps·sqrt(K)·S on random data (worst case eps·K·S), plus the final rounding
 * of the result. Every path passes with half this constant; a missing term
 * (~0.25·|terms| on average) is far outside it. Each case runs with no pool and
 * pools of 1, 2 and 3 threads, on the AVX2 path (when the CPU has it) and on
 * the portable path forced by MOP_CPU=generic. Shapes are odd on purpose
 * (1x1, 3x5, 17x33, 64x576, 191x577) and n in {1, 2, 3, 7, 65, 128} crosses
 * every tile remainder and the switch to OpenBLAS at n = 64. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu.h"
#include "model.h"
#include "threadpool.h"
#include "weight_dense.h"

#ifndef TOL_C
#define TOL_C 1.2e-7
#endif
#define SENTINEL 12345.0f
#define GUARD 16 /* floats after each output, must stay SENTINEL */

static const int64_t shapes[][2] = {{1, 1}, {3, 5}, {17, 33}, {64, 576}, {191, 577}};
static const int64_t batch[] = {1, 2, 3, 7, 65, 128};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))
#define N_BATCH ((int)(sizeof batch / sizeof batch[0]))

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static float *rand_floats(int64_t count)
{
    float *p = malloc((size_t)(count + GUARD) * sizeof *p);
    assert_non_null(p);
    for (int64_t i = 0; i < count; i++)
        p[i] = frand();
    for (int i = 0; i < GUARD; i++)
        p[count + i] = SENTINEL;
    return p;
}

/* ref (n, rows) and scale S (n, rows) of Y = X · Wᵀ in double. */
static void ref_nt(double *ref, double *scale, const float *X, const float *W, int64_t n,
                   int64_t rows, int64_t cols)
{
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < cols; k++) {
                double p = (double)X[t * cols + k] * (double)W[r * cols + k];
                s += p;
                a += fabs(p);
            }
            ref[t * rows + r] = s;
            scale[t * rows + r] = a;
        }
}

/* ref (n, cols) and scale of dX0 + dY · W in double. */
static void ref_tn(double *ref, double *scale, const float *dX0, const float *dY,
                   const float *W, int64_t n, int64_t rows, int64_t cols)
{
    for (int64_t t = 0; t < n; t++)
        for (int64_t c = 0; c < cols; c++) {
            double s = dX0[t * cols + c], a = fabs(s);
            for (int64_t r = 0; r < rows; r++) {
                double p = (double)dY[t * rows + r] * (double)W[r * cols + c];
                s += p;
                a += fabs(p);
            }
            ref[t * cols + c] = s;
            scale[t * cols + c] = a;
        }
}

static double tol_c = TOL_C;
static double tolerance(double ref, double scale, int64_t k_len)
{
    return tol_c * sqrt((double)k_len) * scale + 6e-8 * fabs(ref) + 1e-30;
}

static void check_close(const char *what, const float *got, const double *ref,
                        const double *scale, int64_t count, int64_t k_len)
{
    for (int64_t i = 0; i < count; i++) {
        double tol = tolerance(ref[i], scale[i], k_len);
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= tol)) {
            print_error("%s: element %lld = %.9g, reference %.9g, |err| %.3g > tol %.3g\n",
                        what, (long long)i, (double)got[i], ref[i], err, tol);
            fail();
        }
    }
    for (int i = 0; i < GUARD; i++)
        if (got[count + i] != SENTINEL) {
            print_error("%s: wrote past the end (guard %d)\n", what, i);
            fail();
        }
}

/* The paths to test on this machine: AVX2 (if present) and generic. */
static int paths(cpu_level out[2])
{
    int k = 0;
    if (cpu_detected() == CPU_AVX2)
        out[k++] = CPU_AVX2;
    out[k++] = CPU_GENERIC;
    return k;
}

static void use_path(cpu_level p)
{
    cpu_force_generic(p == CPU_GENERIC);
    assert_int_equal(cpu_current(), p);
}

typedef struct pools {
    mop_pool *p[4]; /* NULL, 1, 2, 3 threads */
} pools;

static void pools_make(pools *ps)
{
    ps->p[0] = NULL;
    for (int i = 1; i < 4; i++)
        assert_int_equal(mop_pool_create(i, &ps->p[i]), MOP_OK);
}

static void pools_free(pools *ps)
{
    for (int i = 1; i < 4; i++)
        mop_pool_free(ps->p[i]);
}

static void test_matvec_and_matmul_match_reference(void **state)
{
    (void)state;
    pools ps;
    pools_make(&ps);
    cpu_level pl[2];
    int n_paths = paths(pl);
    char what[128];
    for (int s = 0; s < N_SHAPES; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *W = rand_floats(rows * cols);
        mop_weight w;
        mop_weight_dense_init(&w, W, rows, cols);
        for (int b = 0; b < N_BATCH; b++) {
            int64_t n = batch[b];
            float *X = rand_floats(n * cols);
            float *Y = rand_floats(n * rows);
            double *ref = malloc((size_t)(n * rows) * sizeof *ref);
            double *scale = malloc((size_t)(n * rows) * sizeof *scale);
            ref_nt(ref, scale, X, W, n, rows, cols);
            for (int p = 0; p < n_paths; p++) {
                use_path(pl[p]);
                for (int q = 0; q < 4; q++) {
                    for (int64_t i = 0; i < n * rows; i++)
                        Y[i] = NAN;
                    w.ops->matmul(&w, Y, X, n, ps.p[q]);
                    snprintf(what, sizeof what, "matmul %lldx%lld n=%lld %s pool %d",
                             (long long)rows, (long long)cols, (long long)n,
                             cpu_level_name(pl[p]), q);
                    check_close(what, Y, ref, scale, n * rows, cols);
                    if (n == 1) {
                        for (int64_t i = 0; i < rows; i++)
                            Y[i] = NAN;
                        w.ops->matvec(&w, Y, X, ps.p[q]);
                        snprintf(what, sizeof what, "matvec %lldx%lld %s pool %d",
                                 (long long)rows, (long long)cols, cpu_level_name(pl[p]), q);
                        Y[rows] = SENTINEL;
                        check_close(what, Y, ref, scale, rows, cols);
                    }
                }
            }
            free(X), free(Y), free(ref), free(scale);
        }
        free(W);
    }
    cpu_force_generic(-1);
    pools_free(&ps);
}

static void test_matmul_t_accumulates_and_matches_reference(void **state)
{
    (void)state;
    pools ps;
    pools_make(&ps);
    cpu_level pl[2];
    int n_paths = paths(pl);
    char what[128];
    for (int s = 0; s < N_SHAPES; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *W = rand_floats(rows * cols);
        mop_weight w;
        mop_weight_dense_init(&w, W, rows, cols);
        for (int b = 0; b < N_BATCH; b++) {
            int64_t n = batch[b];
            float *dY = rand_floats(n * rows);
            float *dX0 = rand_floats(n * cols); /* pre-filled: must be added to */
            float *dX = rand_floats(n * cols);
            double *ref = malloc((size_t)(n * cols) * sizeof *ref);
            double *scale = malloc((size_t)(n * cols) * sizeof *scale);
            ref_tn(ref, scale, dX0, dY, W, n, rows, cols);
            for (int p = 0; p < n_paths; p++) {
                use_path(pl[p]);
                for (int q = 0; q < 4; q++) {
                    memcpy(dX, dX0, (size_t)(n * cols) * sizeof *dX);
                    w.ops->matmul_t(&w, dX, dY, n, ps.p[q]);
                    snprintf(what, sizeof what, "matmul_t %lldx%lld n=%lld %s pool %d",
                             (long long)rows, (long long)cols, (long long)n,
                             cpu_level_name(pl[p]), q);
                    check_close(what, dX, ref, scale, n * cols, rows + 1);
                }
            }
            free(dY), free(dX0), free(dX), free(ref), free(scale);
        }
        free(W);
    }
    cpu_force_generic(-1);
    pools_free(&ps);
}

/* Decode must not depend on the thread count: each row's sum is formed in the
 * same order whatever block of rows a thread gets. */
static void test_matvec_bitwise_independent_of_pool_size(void **state)
{
    (void)state;
    pools ps;
    pools_make(&ps);
    cpu_level pl[2];
    int n_paths = paths(pl);
    int64_t rows = 191, cols = 577;
    float *W = rand_floats(rows * cols), *x = rand_floats(cols);
    float *y0 = rand_floats(rows), *y = rand_floats(rows);
    mop_weight w;
    mop_weight_dense_init(&w, W, rows, cols);
    for (int p = 0; p < n_paths; p++) {
        use_path(pl[p]);
        w.ops->matvec(&w, y0, x, NULL);
        for (int q = 1; q < 4; q++) {
            w.ops->matvec(&w, y, x, ps.p[q]);
            assert_memory_equal(y, y0, (size_t)rows * sizeof *y);
        }
        /* matmul with n = 3 (own kernel): token t equals matvec of X[t] */
        float *X = rand_floats(3 * cols), *Y = rand_floats(3 * rows);
        memcpy(X + cols, x, (size_t)cols * sizeof *x);
        w.ops->matmul(&w, Y, X, 3, ps.p[2]);
        assert_memory_equal(Y + rows, y0, (size_t)rows * sizeof *y);
        free(X), free(Y);
    }
    cpu_force_generic(-1);
    free(W), free(x), free(y0), free(y);
    pools_free(&ps);
}

/* Two threads, each with its own 2-thread pool, share one W (a model shared
 * by threads) and run all three ops concurrently, small n and BLAS n. */
typedef struct conc_arg {
    const mop_weight *w;
    const float *X, *dY, *dX0;
    const double *ref_y, *scale_y, *ref_dx, *scale_dx;
    int64_t n;
    int failures;
} conc_arg;

static int count_bad(const float *got, const double *ref, const double *scale, int64_t count,
                     int64_t k_len)
{
    int bad = 0;
    for (int64_t i = 0; i < count; i++)
        bad += !(fabs((double)got[i] - ref[i]) <= tolerance(ref[i], scale[i], k_len));
    return bad;
}

static void *conc_main(void *p)
{
    conc_arg *a = p;
    const mop_weight *w = a->w;
    mop_pool *pool = NULL;
    if (mop_pool_create(2, &pool) != MOP_OK) {
        a->failures = -1;
        return NULL;
    }
    float *Y = malloc((size_t)(a->n * w->rows) * sizeof *Y);
    float *dX = malloc((size_t)(a->n * w->cols) * sizeof *dX);
    for (int it = 0; it < 20; it++) {
        w->ops->matmul(w, Y, a->X, a->n, pool);
        a->failures += count_bad(Y, a->ref_y, a->scale_y, a->n * w->rows, w->cols);
        memcpy(dX, a->dX0, (size_t)(a->n * w->cols) * sizeof *dX);
        w->ops->matmul_t(w, dX, a->dY, a->n, pool);
        a->failures += count_bad(dX, a->ref_dx, a->scale_dx, a->n * w->cols, w->rows + 1);
        w->ops->matvec(w, Y, a->X, pool);
        a->failures += count_bad(Y, a->ref_y, a->scale_y, w->rows, w->cols);
    }
    free(Y), free(dX);
    mop_pool_free(pool);
    return NULL;
}

static void test_two_threads_two_pools_share_one_weight(void **state)
{
    (void)state;
    cpu_force_generic(-1);
    int64_t rows = 191, cols = 577;
    float *W = rand_floats(rows * cols);
    mop_weight w;
    mop_weight_dense_init(&w, W, rows, cols);
    const int64_t ns[2] = {7, 128};
    conc_arg args[2];
    float *bufs[2][3];
    double *refs[2][4];
    for (int i = 0; i < 2; i++) {
        int64_t n = ns[i];
        bufs[i][0] = rand_floats(n * cols);
        bufs[i][1] = rand_floats(n * rows);
        bufs[i][2] = rand_floats(n * cols);
        refs[i][0] = malloc((size_t)(n * rows) * sizeof(double));
        refs[i][1] = malloc((size_t)(n * rows) * sizeof(double));
        refs[i][2] = malloc((size_t)(n * cols) * sizeof(double));
        refs[i][3] = malloc((size_t)(n * cols) * sizeof(double));
        ref_nt(refs[i][0], refs[i][1], bufs[i][0], W, n, rows, cols);
        ref_tn(refs[i][2], refs[i][3], bufs[i][2], bufs[i][1], W, n, rows, cols);
        args[i] = (conc_arg){&w,         bufs[i][0], bufs[i][1], bufs[i][2], refs[i][0],
                             refs[i][1], refs[i][2], refs[i][3], n,          0};
    }
    /* both threads run the same two batch sizes, in opposite order */
    for (int round = 0; round < 2; round++) {
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_create(&th[i], NULL, conc_main, &args[(i + round) % 2]), 0);
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(args[i].failures, 0);
        for (int k = 0; k < 3; k++)
            free(bufs[i][k]);
        for (int k = 0; k < 4; k++)
            free(refs[i][k]);
    }
    free(W);
}

static void test_bytes_to_dense_and_init(void **state)
{
    (void)state;
    int64_t rows = 17, cols = 33;
    float *W = rand_floats(rows * cols), *out = rand_floats(rows * cols);
    mop_weight w;
    memset(&w, 0xff, sizeof w);
    mop_weight_dense_init(&w, W, rows, cols);
    assert_ptr_equal(w.ops, &mop_weight_dense_ops);
    assert_string_equal(w.ops->format, "f32");
    assert_int_equal(w.rows, rows);
    assert_int_equal(w.cols, cols);
    assert_ptr_equal(w.data, W);
    assert_null(w.impl);
    assert_null(w.ops->release);
    assert_int_equal(w.ops->bytes(&w), 17 * 33 * 4);
    w.ops->to_dense(&w, out);
    assert_memory_equal(out, W, (size_t)(rows * cols) * sizeof *W);
    assert_true(out[rows * cols] == SENTINEL);
    /* n = 0 writes nothing */
    w.ops->matmul(&w, out, W, 0, NULL);
    w.ops->matmul_t(&w, out, W, 0, NULL);
    assert_memory_equal(out, W, (size_t)(rows * cols) * sizeof *W);
    free(W), free(out);
}

static void test_cpu_dispatch_and_env_override(void **state)
{
    (void)state;
    cpu_level hw = cpu_detected();
    if (hw == CPU_AVX2) {
        assert_true(__builtin_cpu_supports("avx2"));
        assert_true(__builtin_cpu_supports("fma"));
    }
    assert_string_equal(cpu_level_name(CPU_GENERIC), "generic");
    assert_string_equal(cpu_level_name(CPU_AVX2), "avx2");

    assert_int_equal(setenv("MOP_CPU", "generic", 1), 0);
    cpu_force_generic(-1);
    assert_int_equal(cpu_current(), CPU_GENERIC);
    assert_ptr_equal(dense_nt_kernel(), dense_nt_generic);
    cpu_force_generic(0); /* ignores the environment */
    assert_int_equal(cpu_current(), hw);
    assert_int_equal(unsetenv("MOP_CPU"), 0);
    cpu_force_generic(-1);
    assert_int_equal(cpu_current(), hw);
    assert_ptr_equal(dense_nt_kernel(), hw == CPU_AVX2 ? dense_nt_avx2 : dense_nt_generic);
    cpu_force_generic(1);
    assert_int_equal(cpu_current(), CPU_GENERIC);
    cpu_force_generic(-1);
}

/* A hand-computed case: W = [[1 2 3], [4 5 6]], x = [1 -1 2]. */
static void test_hand_computed(void **state)
{
    (void)state;
    float W[6] = {1, 2, 3, 4, 5, 6};
    float x[3] = {1, -1, 2}, y[2];
    float dY[2] = {1, -2}, dX[3] = {10, 20, 30};
    mop_weight w;
    mop_weight_dense_init(&w, W, 2, 3);
    cpu_level pl[2];
    int n_paths = paths(pl);
    for (int p = 0; p < n_paths; p++) {
        use_path(pl[p]);
        w.ops->matvec(&w, y, x, NULL);
        assert_true(y[0] == 5.0f && y[1] == 11.0f);
        dX[0] = 10, dX[1] = 20, dX[2] = 30;
        w.ops->matmul_t(&w, dX, dY, 1, NULL); /* += [1-8, 2-10, 3-12] */
        assert_true(dX[0] == 3.0f && dX[1] == 12.0f && dX[2] == 21.0f);
    }
    cpu_force_generic(-1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_dispatch_and_env_override),
        cmocka_unit_test(test_hand_computed),
        cmocka_unit_test(test_bytes_to_dense_and_init),
        cmocka_unit_test(test_matvec_and_matmul_match_reference),
        cmocka_unit_test(test_matmul_t_accumulates_and_matches_reference),
        cmocka_unit_test(test_matvec_bitwise_independent_of_pool_size),
        cmocka_unit_test(test_two_threads_two_pools_share_one_weight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
