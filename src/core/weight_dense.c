/* Dense F32 weight: W (rows, cols) row-major, borrowed from the model.
 *
 *   matvec    y (rows)     = W · x             own kernels (AVX2 or C)
 *   matmul    Y (n, rows)  = X (n, cols) · Wᵀ  own kernels for n < 64,
 *                                              OpenBLAS sgemm per thread above
 *   matmul_t  dX (n, cols) += dY (n, rows) · W  own kernels for n < 8,
 *                                              OpenBLAS sgemm per thread above
 *
 * dense_linear_multi (weight_dense.h) runs several products of one input
 * (q/k/v, gate/up) as a single pool job with the same kernels.
 *
 * Work is split over the caller's pool in contiguous blocks (rows of W for
 * matvec/matmul, columns of dX for matmul_t); every thread writes a disjoint
 * part of the output. The own kernels fix the summation order per output
 * element, so their results are bitwise the same for every pool size (decode
 * is reproducible across n_threads); the OpenBLAS path may differ in the
 * last bits between pool sizes. The thread policy and the numbers behind it
 * are in docs/PERFORMANCE.md, "Dense kernels". */
#include <pthread.h>

#include <cblas.h>

#include "cpu.h"
#include "model.h"
#include "weight_dense.h"

/* Below this many multiply-adds a job runs on the caller: waking the pool
 * costs more than it saves (measured, docs/PERFORMANCE.md). */
#define DENSE_MIN_PARALLEL_MACS (256 * 1024)
/* From this batch size on, OpenBLAS's packed sgemm beats the unpacked own
 * kernel (which reads W once per 3 tokens from cache); below it OpenBLAS's
 * packing overhead dominates (n = 1..4 is 3-8x slower than the own kernel). */
#define DENSE_BLAS_MIN_N 64
/* The same switch for matmul_t: the own outer-product kernel is the weaker
 * one (no packing, W walked with a stride), OpenBLAS wins from n ≈ 8. */
#define DENSE_BLAS_MIN_N_T 8
/* Rows per scheduling unit: 16 floats = one cache line of y, so threads never
 * share a line of the output (and AVX2 tiles of 8 / 4 rows stay whole). */
#define DENSE_ROW_UNIT 16

/* ---- portable kernel ------------------------------------------------------ */

/* Eight partial sums in a fixed order: the inner loop is vectorised at
 * baseline x86-64 (SSE2) without -ffast-math. */
static float dense_dot(const float *a, const float *b, int64_t n)
{
    float s[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[k + j] * b[k + j];
    float tail = 0.0f;
    for (; k < n; k++)
        tail += a[k] * b[k];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

void dense_nt_generic(float *Y, int64_t ldy, const float *X, const float *W, int64_t n,
                      int64_t r0, int64_t r1, int64_t cols)
{
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = r0; r < r1; r++)
            Y[t * ldy + r] = dense_dot(X + t * cols, W + r * cols, cols);
}

/* Rows of W in order for each token: every dX element sums its terms in
 * the order r = 0, 1, ...; the inner loop over columns vectorises. */
void dense_tn_generic(float *dX, const float *dY, const float *W, int64_t n, int64_t rows,
                      int64_t c0, int64_t c1, int64_t cols)
{
    for (int64_t t = 0; t < n; t++) {
        float *dx = dX + t * cols;
        for (int64_t r = 0; r < rows; r++) {
            const float a = dY[t * rows + r];
            const float *w = W + r * cols;
            for (int64_t c = c0; c < c1; c++)
                dx[c] += a * w[c];
        }
    }
}

dense_nt_fn dense_nt_kernel(void)
{
    return cpu_current() == CPU_AVX2 ? dense_nt_avx2 : dense_nt_generic;
}

dense_tn_fn dense_tn_kernel(void)
{
    return cpu_current() == CPU_AVX2 ? dense_tn_avx2 : dense_tn_generic;
}

/* ---- pool glue ------------------------------------------------------------ */

typedef struct nt_job {
    dense_nt_fn fn;
    float *Y;       /* (n, rows) */
    const float *X; /* (n, cols) */
    const float *W; /* (rows, cols) */
    int64_t n, rows, cols;
} nt_job;

static void nt_job_run(void *arg, int ith, int nth)
{
    const nt_job *j = arg;
    int64_t units = (j->rows + DENSE_ROW_UNIT - 1) / DENSE_ROW_UNIT, lo, hi;
    mop_split_range(units, ith, nth, &lo, &hi);
    int64_t r0 = lo * DENSE_ROW_UNIT, r1 = MOP_MIN(hi * DENSE_ROW_UNIT, j->rows);
    if (r0 < r1)
        j->fn(j->Y, j->rows, j->X, j->W, j->n, r0, r1, j->cols);
}

static void dense_nt(const mop_weight *w, float *Y, const float *X, int64_t n, mop_pool *pool)
{
    nt_job j = {dense_nt_kernel(), Y, X, w->data, n, w->rows, w->cols};
    if (w->rows * w->cols * n < DENSE_MIN_PARALLEL_MACS)
        pool = NULL;
    mop_pool_run(pool, nt_job_run, &j);
}

/* ---- OpenBLAS ------------------------------------------------------------- */

/* Every BLAS call libmop makes runs on one OpenBLAS thread; parallelism comes
 * from the caller's pool. OpenBLAS's thread count is process-global, so this
 * sets it to 1 once, on the first BLAS call (docs/PERFORMANCE.md). */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void)
{
    openblas_set_num_threads(1);
}

typedef struct nt_blas_job {
    float *Y;       /* (n, rows) */
    const float *X; /* (n, cols) */
    const float *W; /* (rows, cols) */
    int64_t n, rows, cols;
} nt_blas_job;

static void nt_blas_job_run(void *arg, int ith, int nth)
{
    const nt_blas_job *j = arg;
    int64_t units = (j->rows + DENSE_ROW_UNIT - 1) / DENSE_ROW_UNIT, lo, hi;
    mop_split_range(units, ith, nth, &lo, &hi);
    int64_t r0 = lo * DENSE_ROW_UNIT, r1 = MOP_MIN(hi * DENSE_ROW_UNIT, j->rows);
    if (r0 >= r1)
        return;
    /* Y[:, r0:r1] = X · W[r0:r1, :]ᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->n, (int)(r1 - r0),
                (int)j->cols, 1.0f, j->X, (int)j->cols, j->W + r0 * j->cols, (int)j->cols,
                0.0f, j->Y + r0, (int)j->rows);
}

typedef struct tn_job {
    dense_tn_fn fn;  /* own kernel, or NULL for OpenBLAS */
    float *dX;       /* (n, cols), accumulated */
    const float *dY; /* (n, rows) */
    const float *W;  /* (rows, cols) */
    int64_t n, rows, cols;
} tn_job;

static void tn_job_run(void *arg, int ith, int nth)
{
    const tn_job *j = arg;
    int64_t units = (j->cols + DENSE_ROW_UNIT - 1) / DENSE_ROW_UNIT, lo, hi;
    mop_split_range(units, ith, nth, &lo, &hi);
    int64_t c0 = lo * DENSE_ROW_UNIT, c1 = MOP_MIN(hi * DENSE_ROW_UNIT, j->cols);
    if (c0 >= c1)
        return;
    if (j->fn) {
        j->fn(j->dX, j->dY, j->W, j->n, j->rows, c0, c1, j->cols);
        return;
    }
    /* dX[:, c0:c1] += dY · W[:, c0:c1] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)j->n, (int)(c1 - c0),
                (int)j->rows, 1.0f, j->dY, (int)j->rows, j->W + c0, (int)j->cols, 1.0f,
                j->dX + c0, (int)j->cols);
}

/* ---- several weights, one input, one pool job ------------------------------ */

typedef struct multi_job {
    dense_nt_fn fn;             /* own kernel, or NULL for OpenBLAS */
    const mop_weight *const *w; /* (n_w) dense, all with `cols` columns */
    float *const *Y;            /* (n_w) -> (n, w[i]->rows) */
    const float *X;             /* (n, cols) */
    int64_t n, cols, units;     /* units: Σ_i ceil(rows_i / DENSE_ROW_UNIT) */
    int n_w;
} multi_job;

/* Thread ith takes a contiguous range of the row units of all weights laid
 * end to end, so the split balances the total, whatever the shapes. */
static void multi_job_run(void *arg, int ith, int nth)
{
    const multi_job *j = arg;
    int64_t lo, hi, base = 0;
    mop_split_range(j->units, ith, nth, &lo, &hi);
    for (int i = 0; i < j->n_w && lo < hi; i++) {
        const mop_weight *w = j->w[i];
        int64_t u = (w->rows + DENSE_ROW_UNIT - 1) / DENSE_ROW_UNIT;
        int64_t a = MOP_MAX(lo, base), b = MOP_MIN(hi, base + u);
        if (a < b) {
            int64_t r0 = (a - base) * DENSE_ROW_UNIT, r1 = MOP_MIN((b - base) * DENSE_ROW_UNIT, w->rows);
            if (j->fn)
                j->fn(j->Y[i], w->rows, j->X, w->data, j->n, r0, r1, j->cols);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->n, (int)(r1 - r0),
                            (int)j->cols, 1.0f, j->X, (int)j->cols, w->data + r0 * j->cols,
                            (int)j->cols, 0.0f, j->Y[i] + r0, (int)w->rows);
        }
        base += u;
    }
}

int dense_linear_multi(const mop_weight *const *w, float *const *Y, int n_w, const float *X,
                       int64_t n, mop_pool *pool)
{
    if (n_w < 1 || n <= 0)
        return 0;
    int64_t units = 0, macs = 0;
    for (int i = 0; i < n_w; i++) {
        if (w[i]->ops != &mop_weight_dense_ops || w[i]->cols != w[0]->cols)
            return 0;
        units += (w[i]->rows + DENSE_ROW_UNIT - 1) / DENSE_ROW_UNIT;
        macs += w[i]->rows * w[i]->cols * n;
    }
    multi_job j = {dense_nt_kernel(), w, Y, X, n, w[0]->cols, units, n_w};
    if (n >= DENSE_BLAS_MIN_N) {
        pthread_once(&blas_once, blas_single_thread);
        j.fn = NULL;
    }
    mop_pool_run(macs < DENSE_MIN_PARALLEL_MACS ? NULL : pool, multi_job_run, &j);
    return 1;
}

/* ---- the ops -------------------------------------------------------------- */

static void dense_matvec(const mop_weight *w, float *y, const float *x, mop_pool *pool)
{
    dense_nt(w, y, x, 1, pool);
}

static void dense_matmul(const mop_weight *w, float *Y, const float *X, int64_t n,
                         mop_pool *pool)
{
    if (n <= 0)
        return;
    if (n < DENSE_BLAS_MIN_N) {
        dense_nt(w, Y, X, n, pool);
        return;
    }
    pthread_once(&blas_once, blas_single_thread);
    nt_blas_job j = {Y, X, w->data, n, w->rows, w->cols};
    mop_pool_run(pool, nt_blas_job_run, &j);
}

static void dense_matmul_t(const mop_weight *w, float *dX, const float *dY, int64_t n,
                           mop_pool *pool)
{
    if (n <= 0)
        return;
    tn_job j = {NULL, dX, dY, w->data, n, w->rows, w->cols};
    if (n < DENSE_BLAS_MIN_N_T)
        j.fn = dense_tn_kernel();
    else
        pthread_once(&blas_once, blas_single_thread);
    if (w->rows * w->cols * n < DENSE_MIN_PARALLEL_MACS)
        pool = NULL;
    mop_pool_run(pool, tn_job_run, &j);
}

static uint64_t dense_bytes(const mop_weight *w)
{
    return (uint64_t)w->rows * (uint64_t)w->cols * sizeof(float);
}

static void dense_to_dense(const mop_weight *w, float *out)
{
    const float *src = w->data;
    int64_t count = w->rows * w->cols;
    for (int64_t i = 0; i < count; i++)
        out[i] = src[i];
}

const mop_weight_ops mop_weight_dense_ops = {
    .format = "f32",
    .matvec = dense_matvec,
    .matmul = dense_matmul,
    .matmul_t = dense_matmul_t,
    .bytes = dense_bytes,
    .to_dense = dense_to_dense,
    .release = NULL,
    .linear_multi = dense_linear_multi,
};

void mop_weight_dense_init(mop_weight *w, const float *data, int64_t rows, int64_t cols)
{
    w->ops = &mop_weight_dense_ops;
    w->rows = rows;
    w->cols = cols;
    w->data = data;
    w->impl = NULL;
}
