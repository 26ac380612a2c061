/* SparseGPT (Frantar & Alistarh, 2023): one-shot pruning of a linear layer
 * W (rows, cols) that keeps its outputs on calibration inputs X close, by
 * the Optimal Brain Surgeon update applied column by column.
 *
 * With H = XᵀX + λ·I (λ = damp · mean diag H) and U the upper Cholesky
 * factor of H⁻¹ (H⁻¹ = UᵀU), columns are visited left to right. Removing
 * w = W[r, j] costs w² / U_jj² and is compensated on the remaining columns
 * of the row by
 *
 *     W[r, k] -= (w / U_jj) · U_jk      for k > j,
 *
 * which is the OBS update restricted to the not-yet-visited columns (the
 * rows of U carry exactly H⁻¹ of the remaining columns). Masks are chosen
 * per block of B columns from the current, already-updated weights (N:M:
 * per group of M columns when the group is reached); updates inside a block
 * are applied at once, those to the right of it lazily as one matrix product
 * Err (rows, B) · U[block, right] at the end of the block.
 *
 * Every row evolves independently given its mask, so blocks are processed
 * in parallel over row ranges; only the per-layer unstructured mask looks at
 * the whole block, and is chosen before the rows split. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "prune.h"

/* libmop's BLAS policy (docs/DEPENDENCIES.md): OpenBLAS runs single-threaded
 * and parallelism comes from libmop's pool. Pruning may be the process's
 * first BLAS user, so it applies the policy too; a threaded OpenBLAS would
 * also make the Hessians' summation order, and so the masks, vary per run. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void)
{
    openblas_set_num_threads(1);
}

void prune_blas_init(void)
{
    pthread_once(&blas_once, blas_single_thread);
}

/* LAPACK (shipped in OpenBLAS), Fortran calling convention. */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

/* U (cols, cols) row-major upper, H⁻¹ = UᵀU, from H (upper triangle read).
 * LAPACK sees the row-major array transposed, so its 'L' factor of the
 * (symmetric) matrix is our upper factor. */
static mop_status inverse_cholesky(float *U, const float *H, int64_t n, double damp)
{
    double *A = mop_alloc((size_t)(n * n) * sizeof(double));
    if (!A)
        return mop_fail(MOP_E_NOMEM, "SparseGPT: out of memory for a %lld x %lld Hessian",
                        (long long)n, (long long)n);
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++)
        mean += H[j * n + j];
    mean /= (double)n;
    if (!(mean > 0.0))
        mean = 1.0;
    const int N = (int)n;
    int info = 1;
    for (int attempt = 0; attempt < 6 && info != 0; attempt++, damp = damp > 0 ? damp * 10 : 1e-6) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = i; j < n; j++)
                A[i * n + j] = A[j * n + i] = H[i * n + j];
        for (int64_t j = 0; j < n; j++) /* inputs that never fire: keep the matrix invertible */
            A[j * n + j] = (H[j * n + j] == 0.0f ? 1.0 : A[j * n + j]) + damp * mean;
        dpotrf_("L", &N, A, &N, &info);
        if (info == 0)
            dpotri_("L", &N, A, &N, &info);
        if (info == 0) {
            for (int64_t i = 0; i < n; i++) /* mirror the upper triangle (our view) */
                for (int64_t j = i + 1; j < n; j++)
                    A[j * n + i] = A[i * n + j];
            dpotrf_("L", &N, A, &N, &info);
        }
    }
    if (info != 0) {
        mop_free(A);
        return mop_fail(MOP_E_INTERNAL, "SparseGPT: the %lld x %lld Hessian is not positive "
                        "definite even with dampening %g", (long long)n, (long long)n, damp);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            U[i * n + j] = j >= i ? (float)A[i * n + j] : 0.0f;
    mop_free(A);
    return MOP_OK;
}

typedef struct sg_job {
    float *W;            /* (rows, cols) */
    const float *U;      /* (cols, cols) */
    float *Err;          /* (rows, B) */
    uint8_t *mask;       /* (rows, B) 1 = remove; preset for the layer granularity */
    int64_t rows, cols, i1, i2, B;
    const prune_cfg *cfg;
    int preset;          /* masks already chosen for the whole block */
} sg_job;


static float obs_score(float w, float u)
{
    return (w * w) / (u * u);
}

/* Mark the k lowest-scoring of columns [a, b) of row r (relative to i1). */
static void mark_lowest(const sg_job *j, int64_t r, int64_t a, int64_t b, int64_t k,
                        prune_entry *buf)
{
    const float *w = j->W + r * j->cols;
    for (int64_t c = a; c < b; c++)
        buf[c - a] = (prune_entry){obs_score(w[c], j->U[c * j->cols + c]), (int32_t)c};
    qsort(buf, (size_t)(b - a), sizeof *buf, prune_entry_cmp);
    uint8_t *m = j->mask + r * j->B;
    for (int64_t c = a; c < b; c++)
        m[c - j->i1] = 0;
    for (int64_t i = 0; i < k; i++)
        m[buf[i].j - j->i1] = 1;
}

static void sg_rows(void *arg, int ith, int nth)
{
    const sg_job *j = arg;
    const prune_cfg *cfg = j->cfg;
    const int64_t bw = j->i2 - j->i1, cols = j->cols;
    int64_t lo, hi;
    mop_split_range(j->rows, ith, nth, &lo, &hi);
    prune_entry buf[512];
    for (int64_t r = lo; r < hi; r++) {
        float *w = j->W + r * cols;
        uint8_t *m = j->mask + r * j->B;
        if (!j->preset && cfg->pattern == MOP_PATTERN_UNSTRUCTURED) {
            int64_t k = prune_removed_before(cfg->ratio, j->i2) -
                        prune_removed_before(cfg->ratio, j->i1);
            mark_lowest(j, r, j->i1, j->i2, k, buf);
        }
        for (int64_t i = 0; i < bw; i++) {
            const int64_t c = j->i1 + i;
            if (cfg->pattern == MOP_PATTERN_NM && c % cfg->m == 0) {
                int64_t e = MOP_MIN(c + cfg->m, cols), len = e - c;
                mark_lowest(j, r, c, e, len - MOP_MIN(cfg->n, len), buf);
            }
            const float *u = j->U + c * cols;
            const float wc = w[c], q = m[i] ? 0.0f : wc;
            const float err = (wc - q) / u[c];
            w[c] = q;
            for (int64_t k = c + 1; k < j->i2; k++)
                w[k] -= err * u[k];
            j->Err[r * j->B + i] = err;
        }
    }
    /* lazy update right of the block: W[lo:hi, i2:] -= Err[lo:hi] · U[i1:i2, i2:] */
    if (j->i2 < cols && lo < hi)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)(cols - j->i2),
                    (int)bw, -1.0f, j->Err + lo * j->B, (int)j->B, j->U + j->i1 * cols + j->i2,
                    (int)cols, 1.0f, j->W + lo * cols + j->i2, (int)cols);
}

/* Per-layer unstructured: the block's removals over all rows at once. */
static mop_status preset_layer_mask(sg_job *j)
{
    const int64_t bw = j->i2 - j->i1, n = j->rows * bw;
    const double ratio = j->cfg->ratio;
    int64_t k = prune_removed_before(ratio, j->rows * j->i2) -
                prune_removed_before(ratio, j->rows * j->i1);
    prune_entry *all = mop_alloc((size_t)n * sizeof *all);
    if (!all)
        return mop_fail(MOP_E_NOMEM, "SparseGPT: out of memory for a block mask");
    for (int64_t r = 0; r < j->rows; r++)
        for (int64_t i = 0; i < bw; i++) {
            int64_t c = j->i1 + i;
            all[r * bw + i] = (prune_entry){obs_score(j->W[r * j->cols + c],
                                                      j->U[c * j->cols + c]),
                                            (int32_t)(r * bw + i)};
        }
    qsort(all, (size_t)n, sizeof *all, prune_entry_cmp);
    memset(j->mask, 0, (size_t)(j->rows * j->B));
    for (int64_t i = 0; i < k; i++) {
        int64_t r = all[i].j / bw, c = all[i].j % bw;
        j->mask[r * j->B + c] = 1;
    }
    mop_free(all);
    return MOP_OK;
}

mop_status prune_sparsegpt(float *W, int64_t rows, int64_t cols, const prune_cfg *cfg, float *H,
                           mop_pool *pool)
{
    MOP_CHECK_ARG(W && cfg && H && rows > 0 && cols > 0);
    prune_blas_init();
    int64_t B = MOP_MAX(1, MOP_MIN(cfg->block, 512));
    if (cfg->pattern == MOP_PATTERN_NM) /* groups never straddle blocks */
        B = MOP_MAX(cfg->m, B - B % cfg->m);
    float *U = mop_alloc((size_t)(cols * cols) * sizeof(float));
    float *Err = mop_alloc((size_t)(rows * B) * sizeof(float));
    uint8_t *mask = mop_calloc((size_t)(rows * B), 1);
    mop_status st = MOP_OK;
    if (!U || !Err || !mask)
        st = mop_fail(MOP_E_NOMEM, "SparseGPT: out of memory for a (%lld, %lld) weight",
                      (long long)rows, (long long)cols);
    if (st == MOP_OK)
        st = inverse_cholesky(U, H, cols, cfg->damp);
    for (int64_t i1 = 0; st == MOP_OK && i1 < cols; i1 += B) {
        sg_job j = {W, U, Err, mask, rows, cols, i1, MOP_MIN(i1 + B, cols), B, cfg, 0};
        if (cfg->pattern == MOP_PATTERN_UNSTRUCTURED && cfg->granularity == MOP_GRANULARITY_LAYER) {
            st = preset_layer_mask(&j);
            j.preset = 1;
        }
        if (st == MOP_OK)
            mop_pool_run(rows * cols * B < ((int64_t)1 << 18) ? NULL : pool, sg_rows, &j);
    }
    mop_free(U);
    mop_free(Err);
    mop_free(mask);
    return st;
}
