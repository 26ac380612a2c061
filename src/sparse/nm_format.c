/* N:M packed weight: per row, groups of m consecutive columns (the last
 * group partial when cols % m != 0), each with n slots:
 *
 *   vals (rows, slots)       F32, slots = ceil(cols/m)·n
 *   idx  (rows, ceil(slots/2)) 4-bit column-in-group per slot
 *
 * A group with fewer than n nonzeros is padded with value 0 at index 0, so
 * an entry's column is base[s] + idx[s] with base[s] = (s/n)·m, and every
 * slot contributes value·x[col] (padding adds 0). The AVX2 matvec gathers
 * x at those columns, 8 slots per step. */
#include <string.h>

#include "cpu.h"
#include "sparse.h"

#define PAD_BYTES 64 /* slack after each buffer: vector loads may over-read */

static void nm_release(mop_weight *w)
{
    sparse_nm *p = w->impl;
    if (!p)
        return;
    sparse_release_transpose(&p->h);
    mop_free(p->vals);
    mop_free(p->idx);
    mop_free(p->base);
    mop_free(p->lane);
    mop_free(p);
    w->impl = NULL;
}

static int nm_decode(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                     const float **vals)
{
    const sparse_nm *p = w->impl;
    int64_t s0 = it->pos, s1 = MOP_MIN(s0 + SPARSE_CHUNK, nm_slot_end(p, col_end));
    if (s1 <= s0)
        return 0;
    const uint8_t *idx = p->idx + it->r * p->idx_stride;
    for (int64_t s = s0; s < s1; s++)
        cols[s - s0] = p->base[s] + ((idx[s >> 1] >> ((s & 1) * 4)) & 15);
    *vals = p->vals + it->r * p->slots + s0;
    it->pos = s1;
    return (int)(s1 - s0);
}

static const sparse_format nm_format = {1, nm_decode, nm_decode_avx2, nm_matvec_avx2};

const mop_weight_ops sparse_nm_ops = {
    .format = "nm",
    .matvec = sparse_matvec,
    .matmul = sparse_matmul,
    .matmul_t = sparse_matmul_t,
    .bytes = sparse_bytes,
    .to_dense = sparse_to_dense,
    .release = nm_release,
    .linear_multi = sparse_linear_multi,
};

mop_status nm_alloc(mop_weight *w, int64_t rows, int64_t cols, int n, int m)
{
    if (rows < 1 || cols < 1 || rows > SPARSE_MAX_DIM || cols > SPARSE_MAX_DIM)
        return mop_fail(MOP_E_INVALID_ARG, "sparse N:M: shape %lldx%lld out of range [1, 2^30]",
                        (long long)rows, (long long)cols);
    if (n < 1 || m > 16 || n >= m)
        return mop_fail(MOP_E_INVALID_ARG, "sparse N:M: %d:%d not in 1 <= N < M <= 16", n, m);
    sparse_nm *p = mop_calloc(1, sizeof *p);
    if (!p)
        return mop_fail(MOP_E_NOMEM, "sparse N:M: out of memory");
    p->h.fmt = &nm_format;
    p->n = n;
    p->m = m;
    p->slots = (cols + m - 1) / m * n;
    p->idx_stride = (p->slots + 1) / 2;
    p->vals = mop_calloc(1, (size_t)(rows * p->slots) * sizeof(float) + PAD_BYTES);
    p->idx = mop_calloc(1, (size_t)(rows * p->idx_stride) + PAD_BYTES);
    p->base = mop_calloc(1, (size_t)p->slots * sizeof(int32_t) + PAD_BYTES);
    p->lane = mop_calloc(1, (size_t)p->slots * sizeof(int32_t) + PAD_BYTES);
    w->ops = &sparse_nm_ops;
    w->rows = rows;
    w->cols = cols;
    w->data = NULL;
    w->impl = p;
    if (!p->vals || !p->idx || !p->base || !p->lane) {
        nm_release(w);
        w->ops = NULL;
        return mop_fail(MOP_E_NOMEM, "sparse N:M: out of memory for %lldx%lld %d:%d",
                        (long long)rows, (long long)cols, n, m);
    }
    return MOP_OK;
}

void nm_finish(mop_weight *w)
{
    sparse_nm *p = w->impl;
    for (int64_t s = 0; s < p->slots; s++)
        p->base[s] = (int32_t)(s / p->n * p->m);
    /* The permute matvec needs each 8-slot step's columns inside a 16-column
     * window of x: true for 2:4, 4:8, 3:4, 7:8, 1:2 (not 1:4: 32 columns). */
    p->win_end = 0;
    for (int64_t s0 = 0; s0 + 8 <= p->slots; s0 += 8) {
        const int64_t w0 = p->base[s0];
        if (p->base[s0 + 7] + p->m - w0 > 16 || w0 + 16 > w->cols)
            break;
        for (int64_t s = s0; s < s0 + 8; s++)
            p->lane[s] = (int32_t)(p->base[s] - w0);
        p->win_end = s0 + 8;
    }
    p->win_stride = p->win_end >= 8 && 8 % p->n == 0 ? 8 / p->n * p->m : 0;
    p->h.stored = w->rows * p->slots;
    p->h.bytes = (uint64_t)(w->rows * p->slots) * 4 + (uint64_t)(w->rows * p->idx_stride) +
                 (uint64_t)p->slots * 8;
}

mop_status sparse_pack_nm(mop_weight *out, const float *dense, int64_t rows, int64_t cols,
                          int n, int m)
{
    MOP_CHECK_ARG(out && dense);
    /* Check every group first, so nothing is allocated for a bad matrix. */
    if (rows >= 1 && cols >= 1 && n >= 1 && n < m && m <= 16)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g0 = 0; g0 < cols; g0 += m) {
                int64_t g1 = MOP_MIN(g0 + m, cols);
                int kept = 0;
                for (int64_t c = g0; c < g1; c++)
                    kept += dense[r * cols + c] != 0.0f;
                if (kept > n)
                    return mop_fail(MOP_E_INVALID_ARG,
                                    "sparse_pack_nm: row %lld, columns %lld..%lld hold %d "
                                    "nonzeros, more than %d of %d (prune first)",
                                    (long long)r, (long long)g0, (long long)(g1 - 1), kept, n, m);
            }
    mop_weight w;
    MOP_TRY(nm_alloc(&w, rows, cols, n, m));
    sparse_nm *p = w.impl;
    for (int64_t r = 0; r < rows; r++) {
        float *v = p->vals + r * p->slots;
        uint8_t *idx = p->idx + r * p->idx_stride;
        int64_t s = 0;
        for (int64_t g0 = 0; g0 < cols; g0 += m) {
            int64_t g1 = MOP_MIN(g0 + m, cols), s_end = s + n;
            for (int64_t c = g0; c < g1; c++)
                if (dense[r * cols + c] != 0.0f) {
                    v[s] = dense[r * cols + c];
                    idx[s >> 1] |= (uint8_t)((c - g0) << ((s & 1) * 4));
                    s++;
                }
            s = s_end; /* padding: value 0, index 0 (calloc) */
        }
    }
    nm_finish(&w);
    *out = w;
    return MOP_OK;
}
