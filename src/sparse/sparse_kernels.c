/* The products every sparse format shares, written once over the formats'
 * row decoders (sparse.h):
 *
 *   matvec    y (rows)      = W · x        format's AVX2 kernel, or the
 *                                          portable loop over decoded entries
 *   matmul    Y (n, rows)   = X (n, cols) · Wᵀ
 *   matmul_t  dX (n, cols) += dY (n, rows) · W
 *
 * matmul packs SPARSE_T = 16 tokens of X into a column-major panel
 * P (cols, 16) and walks each row's entries once per panel: every stored
 * value is loaded once per 16 tokens and feeds two 8-wide FMAs
 * (acc[k%4] += v·P[col]; four accumulator sets for independent chains, summed
 * in a fixed order at the end of the row). Threads take contiguous blocks of
 * W's rows and all panels.
 *
 * matmul_t is the scatter form: panels dYp (rows, 16) and dXp (cols, 16);
 * per row r and entry (c, v): dXp[c] += v·dYp[r]; then dX += dXpᵀ. Threads
 * take whole panels of tokens, so they never write the same dX element and
 * each element sums its terms in row order whatever the pool size.
 *
 * Both need a panel buffer per thread (mop_alloc, once per call). If that
 * allocation fails the product still completes on a slower path that needs
 * no memory (matvec per token; scalar scatter), since the ops cannot fail. */
#include <string.h>

#include "cpu.h"
#include "sparse.h"

/* Below this many stored entries × tokens a product runs on the caller. */
#define SPARSE_MIN_PARALLEL (128 * 1024)
/* Rows per scheduling unit (one cache line of y). */
#define SPARSE_ROW_UNIT 16
/* From this batch size on matmul uses panels; below it, matvec per token
 * (W's entries come from cache for the later tokens). */
#define SPARSE_PANEL_MIN_N 4

/* matmul / matmul_t decode a row once for up to SPARSE_MAX_GROUP panels,
 * as many as fit in this many bytes (kept in L2 while the rows stream). */
#define SPARSE_GROUP_BYTES (192 * 1024)
#define SPARSE_MAX_GROUP 8

#define T SPARSE_T

static const sparse_format *fmt_of(const mop_weight *w)
{
    return ((const sparse_head *)w->impl)->fmt;
}

int sparse_is_sparse(const mop_weight *w)
{
    return w && (w->ops == &sparse_nm_ops || w->ops == &sparse_bitmask_ops ||
                 w->ops == &sparse_blocked_ops);
}

uint64_t sparse_bytes(const mop_weight *w)
{
    return ((const sparse_head *)w->impl)->bytes;
}

void sparse_to_dense(const mop_weight *w, float *out)
{
    const sparse_format *f = fmt_of(w);
    int32_t cols[SPARSE_CHUNK];
    memset(out, 0, (size_t)(w->rows * w->cols) * sizeof(float));
    for (int64_t r = 0; r < w->rows; r++) {
        float *o = out + r * w->cols;
        sparse_iter it = {r, 0, 0};
        const float *v;
        int cnt;
        while ((cnt = f->decode(w, &it, cols, &v)) > 0)
            for (int k = 0; k < cnt; k++)
                o[cols[k]] += v[k]; /* N:M padding adds 0 */
    }
}

/* ---- portable kernels ----------------------------------------------------- */

static void matvec_rows_generic(const mop_weight *w, float *y, const float *x, int64_t r0,
                                int64_t r1)
{
    const sparse_format *f = fmt_of(w);
    int32_t cols[SPARSE_CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        sparse_iter it = {r, 0, 0};
        const float *v;
        float s[4] = {0};
        int cnt;
        while ((cnt = f->decode(w, &it, cols, &v)) > 0)
            for (int k = 0; k < cnt; k++)
                s[k & 3] += v[k] * x[cols[k]];
        y[r] = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

static void acc_generic(float *acc, const int32_t *cols, const float *vals, int cnt,
                        const float *P)
{
    for (int k = 0; k < cnt; k++) {
        const float v = vals[k], *p = P + (int64_t)cols[k] * T;
        float *a = acc + (k & 3) * T;
        for (int t = 0; t < T; t++)
            a[t] += v * p[t];
    }
}

static void scat_generic(float *D, const int32_t *cols, const float *vals, int cnt,
                         const float *a)
{
    for (int k = 0; k < cnt; k++) {
        const float v = vals[k];
        float *d = D + (int64_t)cols[k] * T;
        for (int t = 0; t < T; t++)
            d[t] += v * a[t];
    }
}

/* ---- matvec --------------------------------------------------------------- */

typedef struct mv_job {
    const mop_weight *w;
    sparse_rows_fn fn;
    float *Y;       /* (n, rows) */
    const float *X; /* (n, cols) */
    int64_t n;
} mv_job;

static void mv_job_run(void *arg, int ith, int nth)
{
    const mv_job *j = arg;
    const int64_t rows = j->w->rows, cols = j->w->cols;
    int64_t units = (rows + SPARSE_ROW_UNIT - 1) / SPARSE_ROW_UNIT, lo, hi;
    mop_split_range(units, ith, nth, &lo, &hi);
    int64_t r0 = lo * SPARSE_ROW_UNIT, r1 = MOP_MIN(hi * SPARSE_ROW_UNIT, rows);
    if (r0 >= r1)
        return;
    for (int64_t t = 0; t < j->n; t++)
        j->fn(j->w, j->Y + t * rows, j->X + t * cols, r0, r1);
}

static void matvec_tokens(const mop_weight *w, float *Y, const float *X, int64_t n,
                          mop_pool *pool)
{
    mv_job j = {w, cpu_current() == CPU_AVX2 ? fmt_of(w)->matvec_avx2 : matvec_rows_generic,
                Y, X, n};
    if (((const sparse_head *)w->impl)->stored * n < SPARSE_MIN_PARALLEL)
        pool = NULL;
    mop_pool_run(pool, mv_job_run, &j);
}

void sparse_matvec(const mop_weight *w, float *y, const float *x, mop_pool *pool)
{
    matvec_tokens(w, y, x, 1, pool);
}

/* ---- matmul --------------------------------------------------------------- */

/* P (cols, T) = X[t0 .. t0+tv)ᵀ, zero past tv. */
static void pack_panel(float *P, const float *X, int64_t t0, int64_t tv, int64_t cols)
{
    for (int64_t c = 0; c < cols; c++) {
        float *p = P + c * T;
        int64_t t = 0;
        for (; t < tv; t++)
            p[t] = X[(t0 + t) * cols + c];
        for (; t < T; t++)
            p[t] = 0.0f;
    }
}

typedef struct mm_job {
    const mop_weight *w;
    sparse_acc_fn acc;
    float *Y;       /* (n, rows) */
    const float *X; /* (n, cols) */
    int64_t n;
    int64_t group;  /* panels per pass */
    float *panels;  /* nth × group × (cols, T) */
} mm_job;

static void mm_job_run(void *arg, int ith, int nth)
{
    const mm_job *j = arg;
    const mop_weight *w = j->w;
    const sparse_format *f = fmt_of(w);
    const int64_t rows = w->rows, cols = w->cols, G = j->group;
    int64_t units = (rows + SPARSE_ROW_UNIT - 1) / SPARSE_ROW_UNIT, lo, hi;
    mop_split_range(units, ith, nth, &lo, &hi);
    int64_t r0 = lo * SPARSE_ROW_UNIT, r1 = MOP_MIN(hi * SPARSE_ROW_UNIT, rows);
    if (r0 >= r1)
        return;
    float *P = j->panels + (int64_t)ith * G * cols * T;
    int32_t ci[SPARSE_CHUNK];
    float acc[SPARSE_MAX_GROUP][4 * T];
    for (int64_t t0 = 0; t0 < j->n; t0 += G * T) {
        const int64_t g1 = MOP_MIN(G, (j->n - t0 + T - 1) / T);
        for (int64_t g = 0; g < g1; g++)
            pack_panel(P + g * cols * T, j->X, t0 + g * T, MOP_MIN(T, j->n - t0 - g * T), cols);
        for (int64_t r = r0; r < r1; r++) {
            memset(acc, 0, sizeof acc);
            sparse_iter it = {r, 0, 0};
            const float *v;
            int cnt;
            while ((cnt = f->decode(w, &it, ci, &v)) > 0) /* once per G panels */
                for (int64_t g = 0; g < g1; g++)
                    j->acc(acc[g], ci, v, cnt, P + g * cols * T);
            for (int64_t g = 0; g < g1; g++) {
                const float *a = acc[g];
                const int64_t tb = t0 + g * T, tv = MOP_MIN(T, j->n - tb);
                for (int64_t t = 0; t < tv; t++)
                    j->Y[(tb + t) * rows + r] = (a[t] + a[T + t]) + (a[2 * T + t] + a[3 * T + t]);
            }
        }
    }
}

/* Panels per decoded row: as many as fit in SPARSE_GROUP_BYTES (L2). */
static int64_t panel_group(int64_t floats_per_panel, int64_t n)
{
    int64_t g = SPARSE_GROUP_BYTES / (floats_per_panel * (int64_t)sizeof(float));
    g = MOP_MIN(g, (n + T - 1) / T);
    return MOP_MAX(1, MOP_MIN(g, SPARSE_MAX_GROUP));
}

void sparse_matmul(const mop_weight *w, float *Y, const float *X, int64_t n, mop_pool *pool)
{
    if (n <= 0)
        return;
    if (((const sparse_head *)w->impl)->stored * n < SPARSE_MIN_PARALLEL)
        pool = NULL;
    const int nth = pool ? mop_pool_size(pool) : 1;
    const int64_t G = panel_group(w->cols * T, n);
    float *panels = n >= SPARSE_PANEL_MIN_N
                        ? mop_alloc((size_t)nth * (size_t)(G * w->cols) * T * sizeof(float))
                        : NULL;
    if (!panels) {
        matvec_tokens(w, Y, X, n, pool);
        return;
    }
    mm_job j = {w, cpu_current() == CPU_AVX2 ? sparse_acc_avx2 : acc_generic, Y, X, n, G, panels};
    mop_pool_run(pool, mm_job_run, &j);
    mop_free(panels);
}

/* ---- matmul_t ------------------------------------------------------------- */

typedef struct mt_job {
    const mop_weight *w;
    sparse_scat_fn scat;
    float *dX;       /* (n, cols) */
    const float *dY; /* (n, rows) */
    int64_t n;
    int64_t group;   /* panels per pass */
    float *panels;   /* nth × group × [(rows, T) + (cols, T)] */
} mt_job;

static void mt_job_run(void *arg, int ith, int nth)
{
    const mt_job *j = arg;
    const mop_weight *w = j->w;
    const sparse_format *f = fmt_of(w);
    const int64_t rows = w->rows, cols = w->cols, G = j->group, per = (rows + cols) * T;
    int64_t blocks = (j->n + T - 1) / T, lo, hi;
    mop_split_range(blocks, ith, nth, &lo, &hi);
    float *base = j->panels + (int64_t)ith * G * per;
    int32_t ci[SPARSE_CHUNK];
    for (int64_t b0 = lo; b0 < hi; b0 += G) {
        const int64_t g1 = MOP_MIN(G, hi - b0);
        for (int64_t g = 0; g < g1; g++) { /* panel g: dYp (rows, T), then dXp (cols, T) */
            const int64_t t0 = (b0 + g) * T;
            pack_panel(base + g * per, j->dY, t0, MOP_MIN(T, j->n - t0), rows);
            memset(base + g * per + rows * T, 0, (size_t)(cols * T) * sizeof(float));
        }
        for (int64_t r = 0; r < rows; r++) {
            sparse_iter it = {r, 0, 0};
            const float *v;
            int cnt;
            while ((cnt = f->decode(w, &it, ci, &v)) > 0)
                for (int64_t g = 0; g < g1; g++)
                    j->scat(base + g * per + rows * T, ci, v, cnt, base + g * per + r * T);
        }
        for (int64_t g = 0; g < g1; g++) {
            const int64_t t0 = (b0 + g) * T, tv = MOP_MIN(T, j->n - t0);
            const float *dXp = base + g * per + rows * T;
            for (int64_t t = 0; t < tv; t++) {
                float *dx = j->dX + (t0 + t) * cols;
                for (int64_t c = 0; c < cols; c++)
                    dx[c] += dXp[c * T + t];
            }
        }
    }
}

/* Without panel memory: dX[t, c] += dY[t, r]·v, rows in order. */
static void matmul_t_direct(const mop_weight *w, float *dX, const float *dY, int64_t n)
{
    const sparse_format *f = fmt_of(w);
    int32_t ci[SPARSE_CHUNK];
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < w->rows; r++) {
            const float a = dY[t * w->rows + r];
            float *dx = dX + t * w->cols;
            sparse_iter it = {r, 0, 0};
            const float *v;
            int cnt;
            while ((cnt = f->decode(w, &it, ci, &v)) > 0)
                for (int k = 0; k < cnt; k++)
                    dx[ci[k]] += a * v[k];
        }
}

void sparse_matmul_t(const mop_weight *w, float *dX, const float *dY, int64_t n,
                     mop_pool *pool)
{
    if (n <= 0)
        return;
    if (((const sparse_head *)w->impl)->stored * n < SPARSE_MIN_PARALLEL)
        pool = NULL;
    const int nth = pool ? mop_pool_size(pool) : 1;
    const int64_t G = panel_group((w->rows + w->cols) * T, n);
    float *panels =
        mop_alloc((size_t)nth * (size_t)(G * (w->rows + w->cols)) * T * sizeof(float));
    if (!panels) {
        matmul_t_direct(w, dX, dY, n);
        return;
    }
    mt_job j = {w, cpu_current() == CPU_AVX2 ? sparse_scat_avx2 : scat_generic, dX, dY, n, G,
                panels};
    mop_pool_run(pool, mt_job_run, &j);
    mop_free(panels);
}
