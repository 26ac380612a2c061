/* Dense F32 kernels on SmolLM2-135M's shapes: matvec (decode) and matmul /
 * matmul_t (prefill, training) at 1 and 2 threads, against OpenBLAS called
 * directly. Not a test: prints a table for docs/PERFORMANCE.md.
 *
 *   build-x/tests/bench/bench_kernels [max_threads=2] [n=128]
 *
 * Every time is the best of 5 repetitions (the machine may be shared;
 * the minimum is the least disturbed run). Variants for matmul:
 *   libmop      mop_weight_dense_ops.matmul with a pool of nth threads
 *   blas-1call  openblas_set_num_threads(nth); one cblas_sgemm        (a)
 *   blas-slice  OpenBLAS at 1 thread; each pool thread one sgemm on a
 *               block of W's rows                                      (b)
 *   blas-dflt   one cblas_sgemm with OpenBLAS's default thread count,
 *               the reference for the ratio column */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "cpu.h"
#include "model.h"
#include "threadpool.h"
#include "weight_dense.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef void (*bench_fn)(void *ctx);

/* Best seconds per call: reps chosen to take ~10 ms, best of 5 such runs. */
static double best_time(bench_fn fn, void *ctx)
{
    fn(ctx);
    double t0 = now();
    fn(ctx);
    double one = now() - t0;
    int reps = one > 0.01 ? 1 : (int)(0.01 / (one > 1e-7 ? one : 1e-7)) + 1;
    double best = 1e30;
    for (int k = 0; k < 5; k++) {
        t0 = now();
        for (int i = 0; i < reps; i++)
            fn(ctx);
        double t = (now() - t0) / reps;
        if (t < best)
            best = t;
    }
    return best;
}

typedef struct bench_ctx {
    mop_weight w;
    mop_pool *pool;
    int nth;
    int64_t n;
    float *X, *Y, *dX, *dY;
} bench_ctx;

static void run_matvec(void *p)
{
    bench_ctx *c = p;
    c->w.ops->matvec(&c->w, c->Y, c->X, c->pool);
}

static void run_matmul(void *p)
{
    bench_ctx *c = p;
    c->w.ops->matmul(&c->w, c->Y, c->X, c->n, c->pool);
}

static void run_matmul_t(void *p)
{
    bench_ctx *c = p;
    c->w.ops->matmul_t(&c->w, c->dX, c->dY, c->n, c->pool);
}

/* One sgemm: Y (n, rows) = X (n, cols) · Wᵀ with OpenBLAS's current threads. */
static void run_blas_1call(void *p)
{
    bench_ctx *c = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->n, (int)c->w.rows,
                (int)c->w.cols, 1.0f, c->X, (int)c->w.cols, c->w.data, (int)c->w.cols, 0.0f,
                c->Y, (int)c->w.rows);
}

static void run_blas_t_1call(void *p)
{
    bench_ctx *c = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->n, (int)c->w.cols,
                (int)c->w.rows, 1.0f, c->dY, (int)c->w.rows, c->w.data, (int)c->w.cols, 1.0f,
                c->dX, (int)c->w.cols);
}

static void slice_job(void *p, int ith, int nth)
{
    bench_ctx *c = p;
    int64_t r0, r1;
    mop_split_range(c->w.rows, ith, nth, &r0, &r1);
    if (r0 < r1)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->n, (int)(r1 - r0),
                    (int)c->w.cols, 1.0f, c->X, (int)c->w.cols, c->w.data + r0 * c->w.cols,
                    (int)c->w.cols, 0.0f, c->Y + r0, (int)c->w.rows);
}

static void run_blas_slice(void *p)
{
    bench_ctx *c = p;
    mop_pool_run(c->pool, slice_job, c);
}

/* The own NT kernel (weight_dense.h) on the pool, whatever libmop routes to. */
static void own_job(void *p, int ith, int nth)
{
    bench_ctx *c = p;
    int64_t r0, r1;
    mop_split_range(c->w.rows, ith, nth, &r0, &r1);
    if (r0 < r1)
        dense_nt_kernel()(c->Y, c->w.rows, c->X, c->w.data, c->n, r0, r1, c->w.cols);
}

static void run_own_nt(void *p)
{
    bench_ctx *c = p;
    mop_pool_run(c->pool, own_job, c);
}

/* dX += dY · W on the pool: own kernel vs OpenBLAS (1 thread) per column block. */
static int tn_use_blas;
static void tn_job(void *p, int ith, int nth)
{
    bench_ctx *c = p;
    int64_t c0, c1;
    mop_split_range(c->w.cols, ith, nth, &c0, &c1);
    if (c0 >= c1)
        return;
    if (!tn_use_blas)
        dense_tn_kernel()(c->dX, c->dY, c->w.data, c->n, c->w.rows, c0, c1, c->w.cols);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->n, (int)(c1 - c0),
                    (int)c->w.rows, 1.0f, c->dY, (int)c->w.rows, c->w.data + c0,
                    (int)c->w.cols, 1.0f, c->dX + c0, (int)c->w.cols);
}

static void run_tn(void *p)
{
    bench_ctx *c = p;
    mop_pool_run(c->pool, tn_job, c);
}

/* Small n as n separate matvecs. */
static void run_n_matvecs(void *p)
{
    bench_ctx *c = p;
    for (int64_t t = 0; t < c->n; t++)
        c->w.ops->matvec(&c->w, c->Y + t * c->w.rows, c->X + t * c->w.cols, c->pool);
}

/* The decode step right after a prefill: does a finished OpenBLAS call leave
 * threads spinning that slow our pool's matvec? */
static bench_ctx *seq_gemm_ctx, *seq_mv_ctx;
static bench_fn seq_gemm_fn;
static double run_gemm_then_matvec(void)
{
    seq_gemm_fn(seq_gemm_ctx);
    double t0 = now();
    run_matvec(seq_mv_ctx);
    return now() - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *rand_buf(int64_t count)
{
    float *p = malloc((size_t)count * sizeof *p);
    for (int64_t i = 0; i < count; i++)
        p[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    return p;
}

int main(int argc, char **argv)
{
    int max_threads = argc > 1 ? atoi(argv[1]) : 2;
    int64_t n_tok = argc > 2 ? atoll(argv[2]) : 128;
    const int blas_default = openblas_get_num_threads();
    static const int64_t shapes[][2] = {
        {576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    printf("cpu path: %s; OpenBLAS %s, default threads %d; n = %lld tokens\n",
           cpu_level_name(cpu_current()), openblas_get_config(), blas_default,
           (long long)n_tok);
    FILE *la = fopen("/proc/loadavg", "r");
    char load[64] = "?";
    if (la) {
        if (!fgets(load, sizeof load, la))
            load[0] = 0;
        fclose(la);
    }
    printf("load average at start: %s", load);

    for (int nth = 1; nth <= max_threads; nth++) {
        mop_pool *pool = NULL;
        if (mop_pool_create(nth, &pool) != MOP_OK)
            return 1;
        printf("\n== %d thread%s ==\n", nth, nth > 1 ? "s" : "");
        printf("%-11s %-11s %10s %9s %8s %12s\n", "op", "shape", "us/call", "GFLOP/s", "GB/s",
               "us, all-pool");
        for (int s = 0; s < n_shapes; s++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1];
            bench_ctx c = {.pool = pool, .nth = nth, .n = 1};
            float *W = rand_buf(rows * cols);
            mop_weight_dense_init(&c.w, W, rows, cols);
            c.X = rand_buf(cols);
            c.Y = rand_buf(rows);
            double t = best_time(run_matvec, &c);
            double t_pool = best_time(run_own_nt, &c); /* ignores the small-job cutoff */
            printf("%-11s %5lldx%-5lld %10.1f %9.2f %8.2f %12.1f\n", "matvec", (long long)rows,
                   (long long)cols, t * 1e6, 2.0 * rows * cols / t * 1e-9,
                   4.0 * rows * cols / t * 1e-9, t_pool * 1e6);
            free(W), free(c.X), free(c.Y);
        }
        printf("\n%-11s %-11s %10s %9s %8s\n", "matmul", "shape", "us/call", "GFLOP/s",
               "/dflt");
        for (int s = 0; s < n_shapes; s++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1];
            bench_ctx c = {.pool = pool, .nth = nth, .n = n_tok};
            float *W = rand_buf(rows * cols);
            mop_weight_dense_init(&c.w, W, rows, cols);
            c.X = rand_buf(n_tok * cols);
            c.Y = rand_buf(n_tok * rows);
            c.dY = rand_buf(n_tok * rows);
            c.dX = rand_buf(n_tok * cols);
            double flops = 2.0 * (double)n_tok * rows * cols;

            openblas_set_num_threads(blas_default);
            double t_dflt = best_time(run_blas_1call, &c);
            double t_t_dflt = best_time(run_blas_t_1call, &c);
            openblas_set_num_threads(nth);
            double t_a = best_time(run_blas_1call, &c);
            openblas_set_num_threads(1);
            double t_b = best_time(run_blas_slice, &c);
            double t_lib = best_time(run_matmul, &c);
            double t_t_lib = best_time(run_matmul_t, &c);
            char shape[32];
            snprintf(shape, sizeof shape, "%lldx%lld", (long long)rows, (long long)cols);
            struct {
                const char *name;
                double t, ref;
            } row[] = {{"libmop", t_lib, t_dflt},      {"blas-1call", t_a, t_dflt},
                       {"blas-slice", t_b, t_dflt},    {"blas-dflt", t_dflt, t_dflt},
                       {"libmop_t", t_t_lib, t_t_dflt}, {"blas-dflt_t", t_t_dflt, t_t_dflt}};
            for (size_t i = 0; i < sizeof row / sizeof row[0]; i++)
                printf("%-11s %-11s %10.1f %9.2f %8.2f\n", row[i].name, shape, row[i].t * 1e6,
                       flops / row[i].t * 1e-9, row[i].ref / row[i].t);
            free(W), free(c.X), free(c.Y), free(c.dX), free(c.dY);
        }

        /* Batch-size sweep: where does OpenBLAS overtake the own kernel? */
        printf("\n%-11s %-11s %9s %9s %9s %9s %9s %9s  (us/call)\n", "n sweep", "shape",
               "own-nt", "blas-slc", "n*matvec", "libmop", "own-tn", "blas-tn");
        static const int64_t sweep[] = {1, 2, 4, 8, 16, 32, 64, 128};
        for (int s = 0; s < 3; s++) {
            int64_t rows = s == 1 ? 1536 : 576, cols = s == 2 ? 1536 : 576;
            for (size_t i = 0; i < sizeof sweep / sizeof sweep[0]; i++) {
                int64_t n = sweep[i];
                bench_ctx c = {.pool = pool, .nth = nth, .n = n};
                float *W = rand_buf(rows * cols);
                mop_weight_dense_init(&c.w, W, rows, cols);
                c.X = rand_buf(n * cols);
                c.Y = rand_buf(n * rows);
                c.dY = rand_buf(n * rows);
                c.dX = rand_buf(n * cols);
                openblas_set_num_threads(1);
                tn_use_blas = 0;
                double t_own_tn = best_time(run_tn, &c);
                tn_use_blas = 1;
                double t_blas_tn = best_time(run_tn, &c);
                double t_own = best_time(run_own_nt, &c);
                double t_sl = best_time(run_blas_slice, &c);
                double t_mv = n <= 4 ? best_time(run_n_matvecs, &c) : 0.0;
                double t_lib = best_time(run_matmul, &c);
                printf("n=%-9lld %5lldx%-5lld %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n",
                       (long long)n, (long long)rows, (long long)cols, t_own * 1e6, t_sl * 1e6,
                       t_mv * 1e6, t_lib * 1e6, t_own_tn * 1e6, t_blas_tn * 1e6);
                free(W), free(c.X), free(c.Y), free(c.dY), free(c.dX);
            }
        }

        if (nth > 1) {
            /* Interference: pool matvec (1536x576) right after a 1536x576 n=128
             * product done by OpenBLAS with nth threads vs by libmop. */
            bench_ctx g = {.pool = pool, .nth = nth, .n = n_tok};
            float *W = rand_buf(1536 * 576);
            mop_weight_dense_init(&g.w, W, 1536, 576);
            g.X = rand_buf(n_tok * 576);
            g.Y = rand_buf(n_tok * 1536);
            bench_ctx v = {.pool = pool, .nth = nth, .n = 1};
            mop_weight_dense_init(&v.w, W, 1536, 576);
            v.X = g.X;
            v.Y = g.Y;
            double t_alone = best_time(run_matvec, &v);
            seq_gemm_ctx = &g, seq_mv_ctx = &v;
            const char *names[] = {"after blas-1call", "after libmop"};
            bench_fn fns[] = {run_blas_1call, run_matmul};
            printf("\nmatvec 1536x576 alone: %.1f us (best)\n", t_alone * 1e6);
            for (int i = 0; i < 2; i++) {
                openblas_set_num_threads(i == 0 ? nth : 1);
                seq_gemm_fn = fns[i];
                enum { REPS = 100 };
                double ts[REPS];
                for (int k = 0; k < REPS; k++)
                    ts[k] = run_gemm_then_matvec();
                qsort(ts, REPS, sizeof ts[0], cmp_double);
                printf("matvec 1536x576 %s: min %.1f us, median %.1f us (%d runs)\n", names[i],
                       ts[0] * 1e6, ts[REPS / 2] * 1e6, (int)REPS);
            }
            openblas_set_num_threads(1);
            free(W), free(g.X), free(g.Y);
        }
        mop_pool_free(pool);
    }
    return 0;
}
