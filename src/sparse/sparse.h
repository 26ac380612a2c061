/* Packed sparse weights behind the mop_weight interface (model.h).
 *
 * Three formats for W (rows, cols), all row-major over W's rows; layouts and
 * byte counts are in docs/FORMAT.md, "Sparse weight formats":
 *
 *   nm       N:M along cols: each group of M consecutive columns of a row
 *            keeps N slots (value F32 + 4-bit in-group index); groups with
 *            fewer than N nonzeros are padded with value 0. The last group of
 *            a row may be partial (cols % M), its indices < cols % M.
 *   bitmask  1 bit per weight + the nonzero values of each row in column
 *            order.
 *   blocked  per block of 256 columns a u16 count, then per nonzero a u8
 *            column-in-block index + its F32 value.
 *
 * Every format exposes its entries to the shared kernels (sparse_kernels.c)
 * through a chunked row decoder, so matmul, matmul_t, to_dense and the
 * portable matvec are written once; each format has its own AVX2 matvec.
 * A weight owns its buffers (mop_alloc'ed); ops->release frees them. */
#ifndef MOP_SPARSE_H
#define MOP_SPARSE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Formats for sparse_pack_unstructured (stored as int32_t). */
enum {
    SPARSE_AUTO = 0,    /* blocked when density < SPARSE_AUTO_BLOCKED_BELOW, else bitmask */
    SPARSE_BITMASK = 1,
    SPARSE_BLOCKED = 2,
};
/* Crossover measured with bench_sparse (docs/PERFORMANCE.md, "Sparse kernels"). */
#define SPARSE_AUTO_BLOCKED_BELOW 0.30

/* Columns per block of the blocked format (a u8 index addresses one block). */
#define SPARSE_BLOCK_COLS 256

/* Pack a dense F32 matrix whose every group of m consecutive columns (per
 * row; the last one partial when cols % m != 0) holds at most n nonzeros.
 * 1 <= n < m <= 16. On error *out is untouched.
 * @return MOP_OK, MOP_E_INVALID_ARG (bad sizes or n/m, or a group with more
 *         than n nonzeros — prune first), MOP_E_NOMEM. */
mop_status sparse_pack_nm(mop_weight *out, const float *dense, int64_t rows, int64_t cols,
                          int n, int m);

/* Pack any dense F32 matrix keeping its nonzeros; format SPARSE_BITMASK,
 * SPARSE_BLOCKED or SPARSE_AUTO.
 * @return MOP_OK, MOP_E_INVALID_ARG, MOP_E_NOMEM. */
mop_status sparse_pack_unstructured(mop_weight *out, const float *dense, int64_t rows,
                                    int64_t cols, int32_t format);

extern const mop_weight_ops sparse_nm_ops;
extern const mop_weight_ops sparse_bitmask_ops;
extern const mop_weight_ops sparse_blocked_ops;

/* 1 when w uses one of the ops tables above. */
int sparse_is_sparse(const mop_weight *w);

/* Y[i] = W_i·x for n_w sparse weights sharing the input x (n = 1 token): one
 * pool job instead of n_w, the same per-row kernels as matvec. Returns 1 when
 * done; 0, doing nothing, unless n == 1 and every weight is sparse with the
 * same number of columns. */
int sparse_linear_multi(const mop_weight *const *w, float *const *Y, int n_w, const float *x,
                        int64_t n, mop_pool *pool);

/* Serialisation (little-endian byte stream, docs/FORMAT.md):
 *   "MOPS" u32 version=1, u32 format (1 nm, 2 bitmask, 3 blocked), u32 0,
 *   i64 rows, i64 cols, then per format:
 *   nm      u32 n, u32 m, F32 vals[rows·slots], u8 idx[rows·ceil(slots/2)]
 *   bitmask u64 nnz, u8 mask[rows·ceil(cols/8)], F32 vals[nnz]
 *   blocked u64 nnz, u16 count[rows·ceil(cols/256)], u8 idx[nnz], F32 vals[nnz]
 * The deserializer checks every size, count and index (safe on any bytes). */
mop_status sparse_weight_serialize_size(const mop_weight *w, size_t *out);
/* @return MOP_OK, MOP_E_INVALID_ARG (not a sparse weight), MOP_E_RANGE (cap). */
mop_status sparse_weight_serialize(const mop_weight *w, void *buf, size_t cap);
/* @return MOP_OK, MOP_E_INVALID_ARG, MOP_E_FORMAT (with the precise reason),
 *         MOP_E_NOMEM. On error *out is untouched. */
mop_status sparse_weight_deserialize(mop_weight *out, const void *buf, size_t size);

/* ---- internals shared by the format files and the kernels ----------------- */

/* Entries handed out per decoder call (bounded so buffers live on the stack). */
#define SPARSE_CHUNK 256
/* Size of a decoder's cols[] buffer: vector decoders may write up to 8
 * entries past the count they return. */
#define SPARSE_CHUNK_CAP (SPARSE_CHUNK + 8)

/* Row decoder state: row r, position in the format's row encoding. */
typedef struct sparse_iter {
    int64_t r, pos, voff;
} sparse_iter;

/* Next up to SPARSE_CHUNK entries of row it->r with column < col_end: column
 * of each in cols[], their values at *vals (contiguous). Returns the count, 0
 * when the row has no more entries before col_end. col_end is w->cols or a
 * multiple of the format's granule (sparse_col_block), so a row can be walked
 * block by block with one iterator. Entries come in a fixed order. */
typedef int (*sparse_decode_fn)(const mop_weight *w, sparse_iter *it, int64_t col_end,
                                int32_t *cols, const float **vals);
/* y[r] = W[r,:]·x for r in [r0, r1). */
typedef void (*sparse_rows_fn)(const mop_weight *w, float *y, const float *x, int64_t r0,
                               int64_t r1);

typedef struct sparse_format {
    int32_t id; /* serialised format number */
    sparse_decode_fn decode;
    sparse_decode_fn decode_avx2; /* same entries, same order; NULL: decode */
    sparse_rows_fn matvec_avx2;
} sparse_format;

/* First member of every format's impl. */
typedef struct sparse_head {
    const sparse_format *fmt;
    int64_t stored; /* stored entries (values), for the thread threshold */
    uint64_t bytes; /* the packed weight, see docs/FORMAT.md (not the cache below) */
    /* Wᵀ packed (unstructured format), built by the first matmul_t and kept:
     * dX = dY·W then runs as the gather-form product dY·(Wᵀ)ᵀ instead of a
     * scatter. Published once with a compare-and-swap (weights are shared
     * between threads); NULL until then or if it could not be built. */
    _Atomic(mop_weight *) transpose;
} sparse_head;

/* Free the cached transpose (every format's release calls it). */
void sparse_release_transpose(sparse_head *h);

typedef struct sparse_nm {
    sparse_head h;
    int32_t n, m;
    int64_t slots;      /* per row: ceil(cols/m)·n */
    int64_t idx_stride; /* bytes of indices per row: ceil(slots/2) */
    float *vals;        /* (rows, slots) */
    uint8_t *idx;       /* (rows, idx_stride), slot s: byte s/2, low nibble when even */
    int32_t *base;      /* (slots) first column of slot s's group: (s/n)·m */
    int32_t *lane;      /* (slots) base[s] − base[s & ~7]: column within the step's window */
    int64_t win_end;    /* slots [0, win_end) go in 8-slot steps whose columns lie in
                           [base[s0], base[s0] + 16) ⊂ [0, cols): the permute matvec */
    int32_t win_stride; /* > 0 when every such step has the same lanes and its window
                           starts win_stride columns after the previous one (N | 8) */
} sparse_nm;

typedef struct sparse_bitmask {
    sparse_head h;
    int64_t mask_stride; /* ceil(cols/8) */
    int64_t nnz;
    uint8_t *mask;       /* (rows, mask_stride), column c: bit c%8 of byte c/8 */
    int64_t *row_off;    /* (rows+1) first value of each row, derived from mask */
    float *vals;         /* (nnz) */
} sparse_bitmask;

typedef struct sparse_blocked {
    sparse_head h;
    int64_t nblk; /* ceil(cols/256) */
    int64_t nnz;
    uint16_t *cnt;     /* (rows, nblk) nonzeros per block */
    int64_t *row_off;  /* (rows+1) derived from cnt */
    uint8_t *idx;      /* (nnz) column within the block, increasing */
    float *vals;       /* (nnz) */
} sparse_blocked;

/* Shared ops (sparse_kernels.c). */
void sparse_matvec(const mop_weight *w, float *y, const float *x, mop_pool *pool);
void sparse_matmul(const mop_weight *w, float *Y, const float *X, int64_t n, mop_pool *pool);
void sparse_matmul_t(const mop_weight *w, float *dX, const float *dY, int64_t n,
                     mop_pool *pool);
uint64_t sparse_bytes(const mop_weight *w);
void sparse_to_dense(const mop_weight *w, float *out);

/* Panel kernels (sparse_kernels.c generic, sparse_kernels_avx2.c). A panel
 * holds SPARSE_T tokens per column: P[c*SPARSE_T + t]. Four YMM registers
 * per panel row: one broadcast of a value feeds four FMAs.
 *   acc    acc[t] += Σ_k vals[k]·P[cols[k]*SPARSE_T + t] (two chains, k % 2)
 *   scat   D[cols[k]*SPARSE_T + t] += vals[k]·a[t] */
#define SPARSE_T 32
typedef void (*sparse_acc_fn)(float *acc, const int32_t *cols, const float *vals, int cnt,
                              const float *P);
typedef void (*sparse_scat_fn)(float *D, const int32_t *cols, const float *vals, int cnt,
                               const float *a);
void sparse_acc_avx2(float *acc, const int32_t *cols, const float *vals, int cnt,
                     const float *P);
void sparse_scat_avx2(float *D, const int32_t *cols, const float *vals, int cnt,
                      const float *a);

/* Format decoders (AVX2). */
int nm_decode_avx2(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                   const float **vals);
int bitmask_decode_avx2(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                        const float **vals);
/* First slot of the group holding column col_end (col_end a multiple of m or
 * w->cols). */
static inline int64_t nm_slot_end(const sparse_nm *p, int64_t col_end)
{
    const int64_t s = (col_end + p->m - 1) / p->m * p->n;
    return s < p->slots ? s : p->slots;
}

/* Format matvec kernels (AVX2). */
void nm_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1);
void bitmask_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1);
void blocked_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1);

/* Build derived state and bytes after vals/indices are filled (pack and
 * deserialize share these). */
void nm_finish(mop_weight *w);
void bitmask_finish(mop_weight *w);
void blocked_finish(mop_weight *w);
/* Allocate an empty impl with buffers for the given counts (zeroed). */
mop_status nm_alloc(mop_weight *w, int64_t rows, int64_t cols, int n, int m);
mop_status bitmask_alloc(mop_weight *w, int64_t rows, int64_t cols, int64_t nnz);
mop_status blocked_alloc(mop_weight *w, int64_t rows, int64_t cols, int64_t nnz);

/* Largest rows/cols accepted (column indices are int32 in the kernels). */
#define SPARSE_MAX_DIM ((int64_t)1 << 30)

#endif
