/* Blocked-index packed weight (unstructured sparsity), for high sparsity:
 *
 *   cnt  (rows, ceil(cols/256))  u16 nonzeros in each block of 256 columns
 *   idx  (nnz)                   u8 column within the block, increasing
 *   vals (nnz)                   the nonzeros, row by row in column order
 *   row_off (rows+1)             first entry of each row (derived from cnt)
 *
 * The AVX2 matvec gathers x at 8 entries per step (block base + idx). */
#include "cpu.h"
#include "sparse.h"

#define PAD_BYTES 64

static void blocked_release(mop_weight *w)
{
    sparse_blocked *p = w->impl;
    if (!p)
        return;
    sparse_release_transpose(&p->h);
    mop_free(p->cnt);
    mop_free(p->row_off);
    mop_free(p->idx);
    mop_free(p->vals);
    mop_free(p);
    w->impl = NULL;
}

/* Whole blocks per call; a block has at most 256 = SPARSE_CHUNK entries. The
 * granule is one block (256 columns). */
static int blocked_decode(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                          const float **vals)
{
    const sparse_blocked *p = w->impl;
    const uint16_t *cnt = p->cnt + it->r * p->nblk;
    const int64_t blk_end = MOP_MIN(p->nblk, (col_end + SPARSE_BLOCK_COLS - 1) / SPARSE_BLOCK_COLS);
    if (it->pos == 0)
        it->voff = p->row_off[it->r];
    *vals = p->vals + it->voff;
    int n = 0;
    while (it->pos < blk_end && n + cnt[it->pos] <= SPARSE_CHUNK) {
        const uint8_t *idx = p->idx + it->voff + n;
        int32_t base = (int32_t)(it->pos * SPARSE_BLOCK_COLS);
        for (int k = 0; k < cnt[it->pos]; k++)
            cols[n + k] = base + idx[k];
        n += cnt[it->pos];
        it->pos++;
    }
    it->voff += n;
    return n;
}

static const sparse_format blocked_format = {3, blocked_decode, NULL, blocked_matvec_avx2};

const mop_weight_ops sparse_blocked_ops = {
    .format = "blocked",
    .matvec = sparse_matvec,
    .matmul = sparse_matmul,
    .matmul_t = sparse_matmul_t,
    .bytes = sparse_bytes,
    .to_dense = sparse_to_dense,
    .release = blocked_release,
    .linear_multi = sparse_linear_multi,
};

mop_status blocked_alloc(mop_weight *w, int64_t rows, int64_t cols, int64_t nnz)
{
    if (rows < 1 || cols < 1 || rows > SPARSE_MAX_DIM || cols > SPARSE_MAX_DIM)
        return mop_fail(MOP_E_INVALID_ARG, "sparse blocked: shape %lldx%lld out of range [1, 2^30]",
                        (long long)rows, (long long)cols);
    if (nnz < 0 || nnz > rows * cols)
        return mop_fail(MOP_E_INVALID_ARG, "sparse blocked: %lld nonzeros in %lldx%lld",
                        (long long)nnz, (long long)rows, (long long)cols);
    sparse_blocked *p = mop_calloc(1, sizeof *p);
    if (!p)
        return mop_fail(MOP_E_NOMEM, "sparse blocked: out of memory");
    p->h.fmt = &blocked_format;
    p->nblk = (cols + SPARSE_BLOCK_COLS - 1) / SPARSE_BLOCK_COLS;
    p->nnz = nnz;
    p->cnt = mop_calloc(1, (size_t)(rows * p->nblk) * sizeof(uint16_t) + PAD_BYTES);
    p->row_off = mop_calloc((size_t)rows + 1, sizeof(int64_t));
    p->idx = mop_calloc(1, (size_t)nnz + PAD_BYTES);
    p->vals = mop_calloc(1, (size_t)nnz * sizeof(float) + PAD_BYTES);
    w->ops = &sparse_blocked_ops;
    w->rows = rows;
    w->cols = cols;
    w->data = NULL;
    w->impl = p;
    if (!p->cnt || !p->row_off || !p->idx || !p->vals) {
        blocked_release(w);
        w->ops = NULL;
        return mop_fail(MOP_E_NOMEM, "sparse blocked: out of memory for %lldx%lld, %lld nonzeros",
                        (long long)rows, (long long)cols, (long long)nnz);
    }
    return MOP_OK;
}

void blocked_finish(mop_weight *w)
{
    sparse_blocked *p = w->impl;
    int64_t off = 0;
    for (int64_t r = 0; r < w->rows; r++) {
        p->row_off[r] = off;
        for (int64_t b = 0; b < p->nblk; b++)
            off += p->cnt[r * p->nblk + b];
    }
    p->row_off[w->rows] = off;
    p->h.stored = p->nnz;
    p->h.bytes = (uint64_t)(w->rows * p->nblk) * 2 + (uint64_t)p->nnz * 5 +
                 (uint64_t)(w->rows + 1) * 8;
}
