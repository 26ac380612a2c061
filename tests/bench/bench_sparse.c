/* Packed sparse weights against libmop's dense F32 on SmolLM2-135M's linear
 * layers. Not a test: prints the table of docs/PERFORMANCE.md, "Sparse
 * kernels".
 *
 *   build-x/tests/bench/bench_sparse [threads=2] [layers=30] [patterns]
 *
 * `patterns` (optional) is a comma-separated list of pattern names to run,
 * e.g. "2:4,blocked 90%"; all of them by default.
 *
 * One layer is q 576x576, k 192x576, v 192x576, o 576x576, gate 1536x576,
 * up 1536x576, down 576x1536; `layers` distinct copies (random values, so
 * 30 layers = 425 MB of F32 stream from DRAM as in the real model). For each
 * pattern the same matrices are pruned (N:M: the n largest |w| per group;
 * unstructured: random positions) and packed, then timed:
 *   (a) batch 1: matvec through all layers (one decoded token), and batch
 *       128: matmul Y = X·Wᵀ with n = 128 (prefill / training forward);
 *   (b) matmul_t dX += dY·W with n = 128 (backward), dense vs sparse.
 * Every time is the best of 5 repetitions; the dense F32 numbers are taken in
 * the same run. bytes/w is the packed size over rows·cols (F32 dense = 4). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"
#include "model.h"
#include "sparse/sparse.h"
#include "threadpool.h"

#define N_BATCH 128

static const int64_t shapes[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                     {1536, 576}, {1536, 576}, {576, 1536}};

typedef struct pattern {
    const char *name;
    int n, m;
    double zeros;
    int32_t fmt;
} pattern;
static const pattern patterns[] = {
    {"2:4", 2, 4, 0.5, 0},          {"4:8", 4, 8, 0.5, 0},
    {"3:4", 3, 4, 0.25, 0},         {"7:8", 7, 8, 0.125, 0},
    {"1:4", 1, 4, 0.75, 0},         {"bitmask 0%", 0, 0, 0.0, SPARSE_BITMASK},
    {"bitmask 50%", 0, 0, 0.5, SPARSE_BITMASK},   {"bitmask 75%", 0, 0, 0.75, SPARSE_BITMASK},
    {"bitmask 90%", 0, 0, 0.9, SPARSE_BITMASK},   {"bitmask 99%", 0, 0, 0.99, SPARSE_BITMASK},
    {"blocked 0%", 0, 0, 0.0, SPARSE_BLOCKED},    {"blocked 50%", 0, 0, 0.5, SPARSE_BLOCKED},
    {"blocked 75%", 0, 0, 0.75, SPARSE_BLOCKED},  {"blocked 90%", 0, 0, 0.9, SPARSE_BLOCKED},
    {"blocked 99%", 0, 0, 0.99, SPARSE_BLOCKED},
};
#define N_PATTERNS ((int)(sizeof patterns / sizeof patterns[0]))

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x243F6A8885A308D3ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 53);
}

typedef struct set {
    mop_weight *w; /* layers × 7 */
    int count;
} set;

typedef enum { OP_MATVEC, OP_MATMUL, OP_MATMUL_T } op_kind;

typedef struct run_ctx {
    set *s;
    op_kind op;
    mop_pool *pool;
    float *X, *Y; /* (N_BATCH, 1536) each */
} run_ctx;

static void run_once(run_ctx *c)
{
    for (int i = 0; i < c->s->count; i++) {
        const mop_weight *w = &c->s->w[i];
        if (c->op == OP_MATVEC)
            w->ops->matvec(w, c->Y, c->X, c->pool);
        else if (c->op == OP_MATMUL)
            w->ops->matmul(w, c->Y, c->X, N_BATCH, c->pool);
        else
            w->ops->matmul_t(w, c->Y, c->X, N_BATCH, c->pool);
    }
}

static double best_time(run_ctx *c)
{
    run_once(c);
    double best = 1e30;
    for (int k = 0; k < 5; k++) {
        double t0 = now();
        run_once(c);
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    return best;
}

/* dst = src pruned to the pattern. */
static void prune(float *dst, const float *src, int64_t rows, int64_t cols, const pattern *pt)
{
    memcpy(dst, src, (size_t)(rows * cols) * sizeof *dst);
    if (pt->n == 0) {
        for (int64_t i = 0; i < rows * cols; i++)
            if (urand() < pt->zeros)
                dst[i] = 0.0f;
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < cols; g += pt->m) {
            float *w = dst + r * cols + g;
            int64_t width = MOP_MIN(pt->m, cols - g);
            for (int64_t drop = width - pt->n; drop > 0; drop--) {
                int64_t small = -1;
                for (int64_t c = 0; c < width; c++)
                    if (w[c] != 0.0f && (small < 0 || fabsf(w[c]) < fabsf(w[small])))
                        small = c;
                w[small] = 0.0f;
            }
        }
}

/* 1 when name is one of the comma-separated entries of list (NULL: all). */
static int selected(const char *list, const char *name)
{
    if (!list)
        return 1;
    const size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static uint64_t set_bytes(const set *s)
{
    uint64_t b = 0;
    for (int i = 0; i < s->count; i++)
        b += s->w[i].ops->bytes(&s->w[i]);
    return b;
}

int main(int argc, char **argv)
{
    int nth = argc > 1 ? atoi(argv[1]) : 2;
    int layers = argc > 2 ? atoi(argv[2]) : 30;
    const char *only = argc > 3 ? argv[3] : NULL;
    if (nth < 1 || layers < 1)
        return 1;
    mop_pool *pool;
    if (mop_pool_create(nth, &pool) != MOP_OK)
        return 1;
    const int count = layers * 7;
    float **dense = calloc((size_t)count, sizeof *dense);
    set ds = {calloc((size_t)count, sizeof(mop_weight)), count};
    set ss = {calloc((size_t)count, sizeof(mop_weight)), count};
    float *X = malloc((size_t)N_BATCH * 1536 * sizeof *X), *Y = malloc((size_t)N_BATCH * 1536 * sizeof *Y);
    float *tmp = malloc((size_t)1536 * 576 * sizeof *tmp);
    if (!dense || !ds.w || !ss.w || !X || !Y || !tmp)
        return 1;
    for (int64_t i = 0; i < (int64_t)N_BATCH * 1536; i++)
        X[i] = (float)(urand() * 2 - 1), Y[i] = 0.0f;
    uint64_t weights = 0;
    for (int i = 0; i < count; i++) {
        const int64_t rows = shapes[i % 7][0], cols = shapes[i % 7][1];
        dense[i] = malloc((size_t)(rows * cols) * sizeof(float));
        if (!dense[i])
            return 1;
        for (int64_t k = 0; k < rows * cols; k++)
            dense[i][k] = (float)(urand() * 2 - 1);
        mop_weight_dense_init(&ds.w[i], dense[i], rows, cols);
        weights += (uint64_t)(rows * cols);
    }
    const double scale = 30.0 / layers; /* times reported for 30 layers */
    printf("sparse vs dense F32, SmolLM2-135M linear layers (7 per layer), %d distinct layers "
           "(times scaled to 30), %d threads, cpu path %s\n",
           layers, nth, cpu_level_name(cpu_current()));
    run_ctx c = {&ds, OP_MATVEC, pool, X, Y};
    const double d1 = best_time(&c) * scale;
    c.op = OP_MATMUL;
    const double d128 = best_time(&c) * scale;
    c.op = OP_MATMUL_T;
    const double dT = best_time(&c) * scale;
    const double dbytes = (double)set_bytes(&ds) * scale;
    printf("\n(a) forward: batch 1 = matvec per token, batch 128 = matmul (ms for 128 tokens)\n");
    printf("%-12s %7s %9s %9s %7s %6s %10s %7s %8s\n", "pattern", "bytes/w", "MB/token", "b1 ms",
           "x dense", "GB/s", "b128 ms", "x dense", "MB/tok128");
    printf("%-12s %7.3f %9.1f %9.2f %7.2f %6.1f %10.1f %7.2f %8.2f\n", "dense F32", 4.0,
           dbytes / 1e6, d1 * 1e3, 1.0, dbytes / d1 / 1e9, d128 * 1e3, 1.0,
           dbytes / N_BATCH / 1e6);
    double t75[N_PATTERNS] = {0};
    for (int p = 0; p < N_PATTERNS; p++) {
        const pattern *pt = &patterns[p];
        if (!selected(only, pt->name))
            continue;
        for (int i = 0; i < count; i++) {
            const int64_t rows = shapes[i % 7][0], cols = shapes[i % 7][1];
            prune(tmp, dense[i], rows, cols, pt);
            mop_status st = pt->n ? sparse_pack_nm(&ss.w[i], tmp, rows, cols, pt->n, pt->m)
                                  : sparse_pack_unstructured(&ss.w[i], tmp, rows, cols, pt->fmt);
            if (st != MOP_OK) {
                fprintf(stderr, "pack %s: %s\n", pt->name, mop_last_error());
                return 1;
            }
        }
        c.s = &ss;
        c.op = OP_MATVEC;
        const double s1 = best_time(&c) * scale;
        c.op = OP_MATMUL;
        const double s128 = best_time(&c) * scale;
        if (pt->zeros == 0.75 || pt->zeros == 0.5) {
            c.op = OP_MATMUL_T;
            t75[p] = best_time(&c) * scale;
        }
        const double sbytes = (double)set_bytes(&ss) * scale;
        printf("%-12s %7.3f %9.1f %9.2f %7.2f %6.1f %10.1f %7.2f %8.2f\n", pt->name,
               sbytes / scale / (double)weights, sbytes / 1e6, s1 * 1e3, d1 / s1, sbytes / s1 / 1e9,
               s128 * 1e3, d128 / s128, sbytes / N_BATCH / 1e6);
        fflush(stdout);
        for (int i = 0; i < count; i++)
            ss.w[i].ops->release(&ss.w[i]);
    }
    printf("\n(b) backward dX += dY·W, n = 128 (ms for 30 layers)\n");
    printf("%-12s %9s %7s\n", "pattern", "ms", "x dense");
    printf("%-12s %9.1f %7.2f\n", "dense F32", dT * 1e3, 1.0);
    for (int p = 0; p < N_PATTERNS; p++)
        if (t75[p] > 0)
            printf("%-12s %9.1f %7.2f\n", patterns[p].name, t75[p] * 1e3, dT / t75[p]);
    for (int i = 0; i < count; i++)
        free(dense[i]);
    free(dense), free(ds.w), free(ss.w), free(X), free(Y), free(tmp);
    mop_pool_free(pool);
    return 0;
}
