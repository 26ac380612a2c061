/* Bitmask packed weight (unstructured sparsity):
 *
 *   mask (rows, ceil(cols/8))  bit c%8 of byte c/8 set when W[r,c] != 0
 *   vals (nnz)                 the nonzeros, row by row in column order
 *   row_off (rows+1)           first value of each row (derived from mask)
 *
 * The AVX2 matvec takes 8 columns per mask byte: a table maps the byte to
 * the permutation that expands its popcount values to their lanes. */
#include "cpu.h"
#include "sparse.h"

#define PAD_BYTES 64

static void bitmask_release(mop_weight *w)
{
    sparse_bitmask *p = w->impl;
    if (!p)
        return;
    sparse_release_transpose(&p->h);
    mop_free(p->mask);
    mop_free(p->row_off);
    mop_free(p->vals);
    mop_free(p);
    w->impl = NULL;
}

/* Whole 64-bit words of mask per call (at most SPARSE_CHUNK entries); the
 * granule is 64 columns. */
static int bitmask_decode(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                          const float **vals)
{
    const sparse_bitmask *p = w->impl;
    const uint8_t *mask = p->mask + it->r * p->mask_stride;
    const int64_t b_end = MOP_MIN(p->mask_stride, (col_end + 7) / 8);
    if (it->pos == 0)
        it->voff = p->row_off[it->r];
    *vals = p->vals + it->voff;
    int cnt = 0;
    while (it->pos < b_end && cnt + 64 <= SPARSE_CHUNK) {
        int64_t b0 = it->pos, b1 = MOP_MIN(b0 + 8, b_end);
        uint64_t bits = 0;
        for (int64_t b = b0; b < b1; b++)
            bits |= (uint64_t)mask[b] << ((b - b0) * 8);
        while (bits) {
            cols[cnt++] = (int32_t)(b0 * 8 + __builtin_ctzll(bits));
            bits &= bits - 1;
        }
        it->pos = b1;
    }
    it->voff += cnt;
    return cnt;
}

static const sparse_format bitmask_format = {2, bitmask_decode, bitmask_decode_avx2, bitmask_matvec_avx2};

const mop_weight_ops sparse_bitmask_ops = {
    .format = "bitmask",
    .matvec = sparse_matvec,
    .matmul = sparse_matmul,
    .matmul_t = sparse_matmul_t,
    .bytes = sparse_bytes,
    .to_dense = sparse_to_dense,
    .release = bitmask_release,
    .linear_multi = sparse_linear_multi,
};

mop_status bitmask_alloc(mop_weight *w, int64_t rows, int64_t cols, int64_t nnz)
{
    if (rows < 1 || cols < 1 || rows > SPARSE_MAX_DIM || cols > SPARSE_MAX_DIM)
        return mop_fail(MOP_E_INVALID_ARG, "sparse bitmask: shape %lldx%lld out of range [1, 2^30]",
                        (long long)rows, (long long)cols);
    if (nnz < 0 || nnz > rows * cols)
        return mop_fail(MOP_E_INVALID_ARG, "sparse bitmask: %lld nonzeros in %lldx%lld",
                        (long long)nnz, (long long)rows, (long long)cols);
    sparse_bitmask *p = mop_calloc(1, sizeof *p);
    if (!p)
        return mop_fail(MOP_E_NOMEM, "sparse bitmask: out of memory");
    p->h.fmt = &bitmask_format;
    p->mask_stride = (cols + 7) / 8;
    p->nnz = nnz;
    p->mask = mop_calloc(1, (size_t)(rows * p->mask_stride) + PAD_BYTES);
    p->row_off = mop_calloc((size_t)rows + 1, sizeof(int64_t));
    p->vals = mop_calloc(1, (size_t)nnz * sizeof(float) + PAD_BYTES);
    w->ops = &sparse_bitmask_ops;
    w->rows = rows;
    w->cols = cols;
    w->data = NULL;
    w->impl = p;
    if (!p->mask || !p->row_off || !p->vals) {
        bitmask_release(w);
        w->ops = NULL;
        return mop_fail(MOP_E_NOMEM, "sparse bitmask: out of memory for %lldx%lld, %lld nonzeros",
                        (long long)rows, (long long)cols, (long long)nnz);
    }
    return MOP_OK;
}

void bitmask_finish(mop_weight *w)
{
    sparse_bitmask *p = w->impl;
    int64_t off = 0;
    for (int64_t r = 0; r < w->rows; r++) {
        p->row_off[r] = off;
        const uint8_t *mask = p->mask + r * p->mask_stride;
        for (int64_t b = 0; b < p->mask_stride; b++)
            off += __builtin_popcount(mask[b]);
    }
    p->row_off[w->rows] = off;
    p->h.stored = p->nnz;
    p->h.bytes = (uint64_t)(w->rows * p->mask_stride) + (uint64_t)p->nnz * 4 +
                 (uint64_t)(w->rows + 1) * 8;
}

static int64_t count_nonzeros(const float *dense, int64_t count)
{
    int64_t nnz = 0;
    for (int64_t i = 0; i < count; i++)
        nnz += dense[i] != 0.0f;
    return nnz;
}

static mop_status bitmask_pack(mop_weight *out, const float *dense, int64_t rows, int64_t cols)
{
    mop_weight w;
    MOP_TRY(bitmask_alloc(&w, rows, cols, count_nonzeros(dense, rows * cols)));
    sparse_bitmask *p = w.impl;
    int64_t k = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float v = dense[r * cols + c];
            if (v != 0.0f) {
                p->mask[r * p->mask_stride + c / 8] |= (uint8_t)(1u << (c % 8));
                p->vals[k++] = v;
            }
        }
    bitmask_finish(&w);
    *out = w;
    return MOP_OK;
}

static mop_status blocked_pack(mop_weight *out, const float *dense, int64_t rows, int64_t cols)
{
    mop_weight w;
    MOP_TRY(blocked_alloc(&w, rows, cols, count_nonzeros(dense, rows * cols)));
    sparse_blocked *p = w.impl;
    int64_t k = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float v = dense[r * cols + c];
            if (v != 0.0f) {
                p->cnt[r * p->nblk + c / SPARSE_BLOCK_COLS]++;
                p->idx[k] = (uint8_t)(c % SPARSE_BLOCK_COLS);
                p->vals[k++] = v;
            }
        }
    blocked_finish(&w);
    *out = w;
    return MOP_OK;
}

mop_status sparse_pack_unstructured(mop_weight *out, const float *dense, int64_t rows,
                                    int64_t cols, int32_t format)
{
    MOP_CHECK_ARG(out && dense);
    if (rows < 1 || cols < 1 || rows > SPARSE_MAX_DIM || cols > SPARSE_MAX_DIM)
        return mop_fail(MOP_E_INVALID_ARG,
                        "sparse_pack_unstructured: shape %lldx%lld out of range [1, 2^30]",
                        (long long)rows, (long long)cols);
    if (format == SPARSE_AUTO) {
        double density = (double)count_nonzeros(dense, rows * cols) / (double)(rows * cols);
        format = density < SPARSE_AUTO_BLOCKED_BELOW ? SPARSE_BLOCKED : SPARSE_BITMASK;
    }
    if (format == SPARSE_BITMASK)
        return bitmask_pack(out, dense, rows, cols);
    if (format == SPARSE_BLOCKED)
        return blocked_pack(out, dense, rows, cols);
    return mop_fail(MOP_E_INVALID_ARG, "sparse_pack_unstructured: unknown format %d",
                    (int)format);
}
