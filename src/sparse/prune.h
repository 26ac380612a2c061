/* Pruning internals: mask selection on one dense matrix (magnitude, Wanda,
 * SparseGPT) and the calibration statistics they need. prune.c drives them
 * over a model, block by block. */
#ifndef MOP_PRUNE_H
#define MOP_PRUNE_H

#include <stdint.h>

#include "libmop/mop_sparse.h"
#include "model.h"
#include "threadpool.h"

/* What to remove from one matrix (validated by the caller). */
typedef struct prune_cfg {
    int32_t pattern;     /* MOP_PATTERN_* */
    int32_t n, m;        /* N:M */
    double ratio;        /* unstructured fraction removed */
    int32_t granularity; /* MOP_GRANULARITY_* */
    double damp;         /* SparseGPT: fraction of mean diag(H) added to the diagonal */
    int32_t block;       /* SparseGPT: columns per lazy-update block */
} prune_cfg;

/* Weights removed from the first e of n entries under a ratio: round(ratio·e)
 * (half up), so consecutive ranges add up to exactly round(ratio·n). */
static inline int64_t prune_removed_before(double ratio, int64_t e)
{
    return (int64_t)(ratio * (double)e + 0.5);
}

/* A weight's pruning score and its index (column, or flat index). */
typedef struct prune_entry {
    float s;
    int32_t j;
} prune_entry;

/* The one order of every mask choice (qsort): ascending score, and equal
 * scores with the HIGHER index first. The first k entries are removed, so of
 * equal scores the lower index is kept (test_prune: test_tie_order). */
int prune_entry_cmp(const void *a, const void *b);

/* Zero the weights a score-based criterion removes from W (rows, cols):
 * score |W_ij|·s_j with s_j = sqrt(colsq[j]) (Wanda; colsq = Σ_t x_tj²) or
 * s_j = 1 (magnitude, colsq = NULL). Ties go to the lower column (kept).
 * @return MOP_OK, MOP_E_NOMEM */
mop_status prune_scored(float *W, int64_t rows, int64_t cols, const prune_cfg *cfg,
                        const double *colsq, mop_pool *pool);

/* SparseGPT on W (rows, cols) with H (cols, cols) = Σ_t x_t x_tᵀ (only the
 * upper triangle is read; H is overwritten): masks chosen block by block from
 * w²/[U]_jj² with U the upper Cholesky factor of (H + λI)⁻¹, and the removed
 * weights' error compensated on the columns to their right (OBS update).
 * @return MOP_OK, MOP_E_NOMEM, MOP_E_INTERNAL (H not positive definite even
 *         after raising the dampening) */
mop_status prune_sparsegpt(float *W, int64_t rows, int64_t cols, const prune_cfg *cfg, float *H,
                           mop_pool *pool);

/* Apply libmop's OpenBLAS policy (one thread) before the first BLAS call. */
void prune_blas_init(void);

/* ---- calibration (calibration.c) ------------------------------------------ */

/* The four distinct inputs of a block's linear weights. */
enum { CALIB_ATTN_IN = 0, /* xn_attn: q, k, v */
       CALIB_ATT = 1,     /* attention output: wo */
       CALIB_FFN_IN = 2,  /* xn_ffn: gate, up */
       CALIB_DOWN_IN = 3, /* silu(gate)·up: down */
       CALIB_N = 4 };

typedef struct calib_stats {
    int64_t dim[CALIB_N];
    double *colsq[CALIB_N]; /* Wanda: (dim) Σ_t x_tj², or NULL */
    float *H[CALIB_N];      /* SparseGPT: (dim, dim) Σ_t x_t x_tᵀ, upper triangle, or NULL */
    int64_t n_tokens;
} calib_stats;

typedef struct calib calib;

/* Cut tokens into sequences of seq_len (the rest dropped; one shorter
 * sequence when there are fewer than seq_len), embed them and run blocks
 * [0, layer) so the state holds the input of block `layer`.
 * @return MOP_OK, MOP_E_NOMEM, ctx errors */
mop_status calib_create(mop_model *m, const int32_t *tokens, int64_t n_tokens, int32_t seq_len,
                        int32_t n_threads, int32_t layer, calib **out);
void calib_free(calib *c);
/* The pool of the calibration context: pruning runs on it too, so one
 * pool of n_threads works at a time. */
mop_pool *calib_pool(const calib *c);

/* Run block l (as the model holds it now) on every sequence, accumulating
 * what `want_colsq` / `want_H` ask for into st (allocated here, zeroed first).
 * @return MOP_OK, MOP_E_NOMEM */
mop_status calib_collect(calib *c, int32_t l, int want_colsq, int want_H, calib_stats *st);
void calib_stats_free(calib_stats *st);

/* Replace the state by the output of block l as the model holds it now. */
void calib_advance(calib *c, int32_t l);

#endif
