/* The products every sparse format shares, written once over the formats'
 * row decoders (sparse.h):
 *
 *   matvec    y (rows)      = W · x        format's AVX2 kernel, or the
 *                                          portable loop over decoded entries
 *   matmul    Y (n, rows)   = X (n, cols) · Wᵀ
 *   matmul_t  dX (n, cols) += dY (n, rows) · W
 *
 * matmul packs SPARSE_T = 32 tokens of X into a column-major panel
 * P (cols, 32); every stored value is loaded once per 32 tokens, broadcast,
 * and feeds four 8-wide FMAs with P's row at its column. The columns are
 * walked in blocks (sparse_col_block) and, per block, every row of the
 * thread's share applies its entries there, so the panel rows in use stay in
 * L1 (a whole panel does not fit: row-at-a-time was L2-bound). Each row keeps
 * its decoder position and a T-float accumulator between blocks. Threads take
 * contiguous blocks of W's rows.
 *
 * matmul_t (n >= 4) runs as matmul on Wᵀ, packed once and cached in the
 * weight (transpose_of), accumulating into dX. Without that copy, and for
 * n < 4, it is the scatter form: panels dYp (rows, 32) and dXp (cols, 32);
 * per row r and entry (c, v): dXp[c] += v·dYp[r], block by block of columns
 * (dXp's block stays in L1); then dX += dXpᵀ. Threads take whole panels of
 * tokens, so they never write the same dX element and each element sums its
 * terms in row order whatever the pool size.
 *
 * All need a work buffer per thread (mop_alloc, once per call). If an
 * allocation fails the product still completes on a slower path that needs
 * no memory (matvec per token; scalar scatter), since the ops cannot fail. */
#include <string.h>

#include "cpu.h"
#include "sparse.h"

/* Below this many stored entries × tokens a product runs on the caller
 * (a 576 × 576 matrix at 90 % zeros, 33 K entries, still gains from two
 * threads at batch 1: 2.0x → 3.75x for all 90 % layers, bench_sparse). */
#define SPARSE_MIN_PARALLEL (16 * 1024)
/* Rows per scheduling unit (one cache line of y). */
#define SPARSE_ROW_UNIT 16
/* From this batch size on matmul uses panels; below it, matvec per token
 * (W's entries come from cache for the later tokens). */
#define SPARSE_PANEL_MIN_N 4

#define T SPARSE_T

static const sparse_format *fmt_of(const mop_weight *w)
{
    return ((const sparse_head *)w->impl)->fmt;
}

/* The format's fastest row decoder on this CPU (all yield the same entries). */
static sparse_decode_fn decoder_of(const mop_weight *w)
{
    const sparse_format *f = fmt_of(w);
    return cpu_current() == CPU_AVX2 && f->decode_avx2 ? f->decode_avx2 : f->decode;
}

/* The pool for a product of w with n tokens: none (the caller alone) when
 * it is too small to pay for waking the workers. */
static mop_pool *pool_for(const mop_weight *w, int64_t n, mop_pool *pool)
{
    return ((const sparse_head *)w->impl)->stored * n < SPARSE_MIN_PARALLEL ? NULL : pool;
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
    int32_t cols[SPARSE_CHUNK_CAP];
    memset(out, 0, (size_t)(w->rows * w->cols) * sizeof(float));
    for (int64_t r = 0; r < w->rows; r++) {
        float *o = out + r * w->cols;
        sparse_iter it = {r, 0, 0};
        const float *v;
        int cnt;
        while ((cnt = f->decode(w, &it, w->cols, cols, &v)) > 0)
            for (int k = 0; k < cnt; k++)
                o[cols[k]] += v[k]; /* N:M padding adds 0 */
    }
}

/* ---- portable kernels ----------------------------------------------------- */

static void matvec_rows_generic(const mop_weight *w, float *y, const float *x, int64_t r0,
                                int64_t r1)
{
    const sparse_format *f = fmt_of(w);
    int32_t cols[SPARSE_CHUNK_CAP];
    for (int64_t r = r0; r < r1; r++) {
        sparse_iter it = {r, 0, 0};
        const float *v;
        float s[4] = {0};
        int cnt;
        while ((cnt = f->decode(w, &it, w->cols, cols, &v)) > 0)
            for (int k = 0; k < cnt; k++)
                s[k & 3] += v[k] * x[cols[k]];
        y[r] = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

static void acc_generic(float *acc, const int32_t *cols, const float *vals, int cnt,
                        const float *P)
{
    float a[2][T] = {{0}};
    for (int k = 0; k < cnt; k++) {
        const float v = vals[k], *p = P + (int64_t)cols[k] * T;
        for (int t = 0; t < T; t++)
            a[k & 1][t] += v * p[t];
    }
    for (int t = 0; t < T; t++)
        acc[t] += a[0][t] + a[1][t];
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
    mop_pool_run(pool_for(w, n, pool), mv_job_run, &j);
}

void sparse_matvec(const mop_weight *w, float *y, const float *x, mop_pool *pool)
{
    matvec_tokens(w, y, x, 1, pool);
}

/* Several matvecs of one input (q/k/v, gate/up) as one pool job: the row
 * units of all weights laid end to end, split in contiguous ranges, each row
 * computed by its format's kernel exactly as sparse_matvec would. */
typedef struct mv_multi_job {
    const mop_weight *const *w;
    float *const *Y;
    const float *x;
    int64_t units;
    int n_w, avx2;
} mv_multi_job;

static void mv_multi_run(void *arg, int ith, int nth)
{
    const mv_multi_job *j = arg;
    int64_t lo, hi, base = 0;
    mop_split_range(j->units, ith, nth, &lo, &hi);
    for (int i = 0; i < j->n_w && lo < hi; i++) {
        const mop_weight *w = j->w[i];
        const int64_t u = (w->rows + SPARSE_ROW_UNIT - 1) / SPARSE_ROW_UNIT;
        const int64_t a = MOP_MAX(lo, base), b = MOP_MIN(hi, base + u);
        if (a < b) {
            const sparse_rows_fn fn = j->avx2 ? fmt_of(w)->matvec_avx2 : matvec_rows_generic;
            fn(w, j->Y[i], j->x, (a - base) * SPARSE_ROW_UNIT,
               MOP_MIN((b - base) * SPARSE_ROW_UNIT, w->rows));
        }
        base += u;
    }
}

int sparse_linear_multi(const mop_weight *const *w, float *const *Y, int n_w, const float *x,
                        int64_t n, mop_pool *pool)
{
    if (n != 1 || n_w < 1)
        return 0;
    int64_t units = 0, stored = 0;
    for (int i = 0; i < n_w; i++) {
        if (!sparse_is_sparse(w[i]) || w[i]->cols != w[0]->cols)
            return 0;
        units += (w[i]->rows + SPARSE_ROW_UNIT - 1) / SPARSE_ROW_UNIT;
        stored += ((const sparse_head *)w[i]->impl)->stored;
    }
    mv_multi_job j = {w, Y, x, units, n_w, cpu_current() == CPU_AVX2};
    mop_pool_run(stored < SPARSE_MIN_PARALLEL ? NULL : pool, mv_multi_run, &j);
    return 1;
}

/* ---- matmul and matmul_t: column blocks ---------------------------------- */

/* Columns per block: the block's panel rows (block × T floats, 16 KiB at 128
 * columns) stay in L1 while every row's entries in the block are applied.
 * A multiple of the format's decode granule; for N:M also a whole number of
 * 8-slot steps per block (nm_decode_avx2 starts at multiples of 8). The
 * blocked format takes two of its 256-column blocks: at high sparsity a
 * row has few entries per block and the per-call cost dominates (~8 %
 * faster at 90 % than one block, bench_sparse). */
static int64_t sparse_col_block(const mop_weight *w)
{
    const sparse_format *f = fmt_of(w);
    if (f->id == 1) {
        const sparse_nm *p = w->impl;
        int64_t groups = (128 + p->m - 1) / p->m;
        while (groups * p->n % 8)
            groups++;
        return groups * p->m;
    }
    return f->id == 2 ? 128 : 2 * SPARSE_BLOCK_COLS;
}

/* Ask for the entries row it->r holds before col_end (N:M only for now). */
static void sparse_prefetch(const mop_weight *w, const sparse_iter *it, int64_t col_end)
{
    if (fmt_of(w)->id != 1)
        return;
    const sparse_nm *p = w->impl;
    const int64_t s0 = it->pos, s1 = nm_slot_end(p, col_end);
    const char *v = (const char *)(p->vals + it->r * p->slots);
    for (int64_t b = s0 * 4; b < s1 * 4; b += 64)
        __builtin_prefetch(v + b);
    __builtin_prefetch(p->idx + it->r * p->idx_stride + s0 / 2);
}

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
    int64_t cb;     /* columns per block */
    char *work;     /* per thread: panel (cols, T), acc (rows, T), iterators (rows) */
    size_t per_thread;
    int accumulate; /* Y += X·Wᵀ instead of Y = X·Wᵀ */
} mm_job;

/* Y[t, r] for this thread's rows: per panel of T tokens, per column block,
 * every row's entries in the block; row r's sum runs over the blocks in
 * order, so the result does not depend on the thread count. */
static void mm_job_run(void *arg, int ith, int nth)
{
    const mm_job *j = arg;
    const mop_weight *w = j->w;
    const sparse_decode_fn decode = decoder_of(w);
    const int64_t rows = w->rows, cols = w->cols;
    int64_t units = (rows + SPARSE_ROW_UNIT - 1) / SPARSE_ROW_UNIT, lo, hi;
    mop_split_range(units, ith, nth, &lo, &hi);
    const int64_t r0 = lo * SPARSE_ROW_UNIT, r1 = MOP_MIN(hi * SPARSE_ROW_UNIT, rows), nr = r1 - r0;
    if (nr <= 0)
        return;
    char *base = j->work + (size_t)ith * j->per_thread;
    float *P = (float *)base, *acc = P + cols * T;
    sparse_iter *its = (sparse_iter *)(acc + rows * T);
    int32_t ci[SPARSE_CHUNK_CAP];
    for (int64_t t0 = 0; t0 < j->n; t0 += T) {
        const int64_t tv = MOP_MIN(T, j->n - t0);
        pack_panel(P, j->X, t0, tv, cols);
        memset(acc, 0, (size_t)(nr * T) * sizeof(float));
        for (int64_t r = 0; r < nr; r++)
            its[r] = (sparse_iter){r0 + r, 0, 0};
        for (int64_t c1 = MOP_MIN(j->cb, cols);; c1 = MOP_MIN(c1 + j->cb, cols)) {
            for (int64_t r = 0; r < nr; r++) {
                const float *v;
                int cnt;
                if (r + 4 < nr)
                    sparse_prefetch(w, &its[r + 4], c1);
                while ((cnt = decode(w, &its[r], c1, ci, &v)) > 0)
                    j->acc(acc + r * T, ci, v, cnt, P);
            }
            if (c1 == cols)
                break;
        }
        for (int64_t t = 0; t < tv; t++) {
            float *y = j->Y + (t0 + t) * rows + r0;
            if (j->accumulate)
                for (int64_t r = 0; r < nr; r++)
                    y[r] += acc[r * T + t];
            else
                for (int64_t r = 0; r < nr; r++)
                    y[r] = acc[r * T + t];
        }
    }
}

/* Work bytes per thread of matmul and matmul_t: a (cols, T) and a (rows, T)
 * panel, and one row iterator per row of W. */
static size_t work_per_thread(const mop_weight *w)
{
    return (size_t)((w->cols + w->rows) * T) * sizeof(float) +
           (size_t)w->rows * sizeof(sparse_iter) + 64;
}

/* Y = X·Wᵀ, or Y += X·Wᵀ when accumulate. Returns 0 when the work buffer
 * could not be allocated (nothing done). */
static int matmul_panels(const mop_weight *w, float *Y, const float *X, int64_t n,
                         mop_pool *pool, int accumulate)
{
    pool = pool_for(w, n, pool);
    const int nth = pool ? mop_pool_size(pool) : 1;
    const size_t per_thread = work_per_thread(w);
    char *work = mop_alloc((size_t)nth * per_thread);
    if (!work)
        return 0;
    mm_job j = {w, cpu_current() == CPU_AVX2 ? sparse_acc_avx2 : acc_generic, Y, X, n,
                sparse_col_block(w), work, per_thread, accumulate};
    mop_pool_run(pool, mm_job_run, &j);
    mop_free(work);
    return 1;
}

void sparse_matmul(const mop_weight *w, float *Y, const float *X, int64_t n, mop_pool *pool)
{
    if (n <= 0)
        return;
    if (n < SPARSE_PANEL_MIN_N || !matmul_panels(w, Y, X, n, pool, 0))
        matvec_tokens(w, Y, X, n, pool);
}

typedef struct mt_job {
    const mop_weight *w;
    sparse_scat_fn scat;
    float *dX;       /* (n, cols) */
    const float *dY; /* (n, rows) */
    int64_t n;
    int64_t cb;      /* columns per block */
    char *work;      /* per thread: dYp (rows, T), dXp (cols, T), iterators (rows) */
    size_t per_thread;
} mt_job;

/* Threads take whole panels of T tokens, so they never write the same dX
 * element; per panel, column block by column block, every row scatters its
 * entries in the block into dXp, rows in order (the sum order of each dX
 * element does not depend on the thread count). */
static void mt_job_run(void *arg, int ith, int nth)
{
    const mt_job *j = arg;
    const mop_weight *w = j->w;
    const sparse_decode_fn decode = decoder_of(w);
    const int64_t rows = w->rows, cols = w->cols;
    int64_t panels = (j->n + T - 1) / T, lo, hi;
    mop_split_range(panels, ith, nth, &lo, &hi);
    char *base = j->work + (size_t)ith * j->per_thread;
    float *dYp = (float *)base, *dXp = dYp + rows * T;
    sparse_iter *its = (sparse_iter *)(dXp + cols * T);
    int32_t ci[SPARSE_CHUNK_CAP];
    for (int64_t b = lo; b < hi; b++) {
        const int64_t t0 = b * T, tv = MOP_MIN(T, j->n - t0);
        pack_panel(dYp, j->dY, t0, tv, rows);
        memset(dXp, 0, (size_t)(cols * T) * sizeof(float));
        for (int64_t r = 0; r < rows; r++)
            its[r] = (sparse_iter){r, 0, 0};
        for (int64_t c1 = MOP_MIN(j->cb, cols);; c1 = MOP_MIN(c1 + j->cb, cols)) {
            for (int64_t r = 0; r < rows; r++) {
                const float *v;
                int cnt;
                while ((cnt = decode(w, &its[r], c1, ci, &v)) > 0)
                    j->scat(dXp, ci, v, cnt, dYp + r * T);
            }
            if (c1 == cols)
                break;
        }
        for (int64_t t = 0; t < tv; t++) {
            float *dx = j->dX + (t0 + t) * cols;
            for (int64_t c = 0; c < cols; c++)
                dx[c] += dXp[c * T + t];
        }
    }
}

/* Without panel memory: dX[t, c] += dY[t, r]·v, rows in order. */
static void matmul_t_direct(const mop_weight *w, float *dX, const float *dY, int64_t n)
{
    const sparse_format *f = fmt_of(w);
    int32_t ci[SPARSE_CHUNK_CAP];
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < w->rows; r++) {
            const float a = dY[t * w->rows + r];
            float *dx = dX + t * w->cols;
            sparse_iter it = {r, 0, 0};
            const float *v;
            int cnt;
            while ((cnt = f->decode(w, &it, w->cols, ci, &v)) > 0)
                for (int k = 0; k < cnt; k++)
                    dx[ci[k]] += a * v[k];
        }
}

/* Wᵀ packed (unstructured, SPARSE_AUTO: bitmask at 50 %, blocked from 70 %
 * zeros, the faster matmul of the two at each density), built on first use
 * and cached in the weight (see sparse_head); NULL if memory ran out. */
static const mop_weight *transpose_of(const mop_weight *w)
{
    sparse_head *h = w->impl;
    mop_weight *t = atomic_load_explicit(&h->transpose, memory_order_acquire);
    if (t)
        return t;
    const int64_t rows = w->rows, cols = w->cols;
    float *dt = mop_calloc((size_t)(rows * cols), sizeof(float)); /* Wᵀ dense */
    t = mop_alloc(sizeof *t);
    if (dt && t) {
        const sparse_format *f = fmt_of(w);
        int32_t ci[SPARSE_CHUNK_CAP];
        for (int64_t r = 0; r < rows; r++) {
            sparse_iter it = {r, 0, 0};
            const float *v;
            int cnt;
            while ((cnt = f->decode(w, &it, cols, ci, &v)) > 0)
                for (int k = 0; k < cnt; k++)
                    dt[(int64_t)ci[k] * rows + r] += v[k]; /* N:M padding adds 0 */
        }
        if (sparse_pack_unstructured(t, dt, cols, rows, SPARSE_AUTO) != MOP_OK) {
            mop_free(t);
            t = NULL;
        }
    } else {
        mop_free(t);
        t = NULL;
    }
    mop_free(dt);
    if (!t)
        return NULL;
    mop_weight *expected = NULL;
    if (!atomic_compare_exchange_strong_explicit(&h->transpose, &expected, t,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        t->ops->release(t); /* another thread published first */
        mop_free(t);
        return expected;
    }
    return t;
}

void sparse_release_transpose(sparse_head *h)
{
    mop_weight *t = atomic_exchange_explicit(&h->transpose, NULL, memory_order_acq_rel);
    if (t) {
        t->ops->release(t);
        mop_free(t);
    }
}

void sparse_matmul_t(const mop_weight *w, float *dX, const float *dY, int64_t n,
                     mop_pool *pool)
{
    if (n <= 0)
        return;
    /* Batches: dX += dY·(Wᵀ)ᵀ through the gather-form matmul on the cached
     * transpose (a scatter stores every product; the gather keeps them in
     * registers). */
    if (n >= SPARSE_PANEL_MIN_N) {
        const mop_weight *t = transpose_of(w);
        if (t && matmul_panels(t, dX, dY, n, pool, 1))
            return;
    }
    pool = pool_for(w, n, pool);
    const int nth = pool ? mop_pool_size(pool) : 1;
    const size_t per_thread = work_per_thread(w);
    char *work = mop_alloc((size_t)nth * per_thread);
    if (!work) {
        matmul_t_direct(w, dX, dY, n);
        return;
    }
    mt_job j = {w, cpu_current() == CPU_AVX2 ? sparse_scat_avx2 : scat_generic, dX, dY, n,
                sparse_col_block(w), work, per_thread};
    mop_pool_run(pool, mt_job_run, &j);
    mop_free(work);
}
