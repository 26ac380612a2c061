/* Row-range kernels behind the dense F32 weight (weight_dense.c). One
 * portable C version and one AVX2/FMA version (weight_dense_avx2.c, built
 * with -mavx2 -mfma -mf16c and only called when cpu_current() == CPU_AVX2).
 *
 * Both compute dot products of rows of X with rows of W (the "NT" layout both
 * matrices are stored in), for the output rows [r0, r1) only, so a pool can
 * hand each thread a contiguous block of W:
 *
 *   Y[t*ldy + r] = Σ_k X[t*cols + k] · W[r*cols + k]    t < n, r0 <= r < r1
 *
 * X (n, cols), W (rows, cols), Y (n, ldy) with ldy >= rows. Y is overwritten.
 * With n = 1 this is the matvec. */
#ifndef MOP_WEIGHT_DENSE_H
#define MOP_WEIGHT_DENSE_H

#include <stdint.h>

typedef void (*dense_nt_fn)(float *Y, int64_t ldy, const float *X, const float *W, int64_t n,
                            int64_t r0, int64_t r1, int64_t cols);

void dense_nt_generic(float *Y, int64_t ldy, const float *X, const float *W, int64_t n,
                      int64_t r0, int64_t r1, int64_t cols);
void dense_nt_avx2(float *Y, int64_t ldy, const float *X, const float *W, int64_t n,
                   int64_t r0, int64_t r1, int64_t cols);

/* Activation gradient on the output columns [c0, c1) only:
 *
 *   dX[t*cols + c] += Σ_r dY[t*rows + r] · W[r*cols + c]   t < n, c0 <= c < c1
 *
 * dY (n, rows), W (rows, cols), dX (n, cols), accumulated. */
typedef void (*dense_tn_fn)(float *dX, const float *dY, const float *W, int64_t n, int64_t rows,
                            int64_t c0, int64_t c1, int64_t cols);

void dense_tn_generic(float *dX, const float *dY, const float *W, int64_t n, int64_t rows,
                      int64_t c0, int64_t c1, int64_t cols);
void dense_tn_avx2(float *dX, const float *dY, const float *W, int64_t n, int64_t rows,
                   int64_t c0, int64_t c1, int64_t cols);

/* Y[i] (n, w[i]->rows) = X (n, cols) · w[i]ᵀ for i < n_w: products that share
 * their input (q/k/v, gate/up) in one pool job instead of n_w, so a decoded
 * token pays one hand-off per group and the small k/v products run in
 * parallel too. Same kernels and per-row results as the ops one by one.
 * Returns 1 when done; 0, doing nothing, unless every weight is dense F32
 * with the same number of columns (the caller then runs them one by one). */
struct mop_weight;
struct mop_pool;
int dense_linear_multi(const struct mop_weight *const *w, float *const *Y, int n_w,
                       const float *X, int64_t n, struct mop_pool *pool);

/* The kernels for the current CPU path (cpu_current()). */
dense_nt_fn dense_nt_kernel(void);
dense_tn_fn dense_tn_kernel(void);

#endif
