/* AVX2/FMA dot-product tiles for the dense weight: Y = X · Wᵀ on a block of
 * W's rows. Compiled with -mavx2 -mfma -mf16c; called only after cpu.c found
 * those features and OS support for YMM state.
 *
 * A tile keeps R rows of W against T rows of X in R·T 8-wide accumulators,
 * walking k in steps of 8 (the last partial step with masked loads, which
 * read zeros past the end), then reduces each accumulator horizontally.
 *   matvec (T = 1): 8 rows at once, 8 independent FMA chains, 9 loads per
 *                   8 FMAs — bandwidth-bound by design.
 *   matmul (T = 3): 4 rows × 3 tokens, 12 accumulators + 3 x + 1 w = 16 ymm,
 *                   7 loads per 12 FMAs — FMA-bound while X stays in cache.
 *
 * dense_tn_avx2 (dX += dY·W, small batches) is the outer-product form: a tile
 * holds T = 3 tokens × 32 columns of dX in 12 accumulators and walks the rows
 * of W, broadcasting dY[t, r]; the last partial vector of a row is masked. */
#include <immintrin.h>

#include "weight_dense.h"

#define AI static inline __attribute__((always_inline))

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lanes [0, m) set, for m in 1..7. */
AI __m256i tail_mask(int64_t m)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), lane);
}

/* Y[t*ldy + r] = X[t,:] · W[r,:] for r < R, t < T (pointers at the tile). */
AI void tile(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols, const int R,
             const int T)
{
    __m256 acc[8][3];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= cols; k += 8) {
        __m256 xv[3];
        for (int t = 0; t < T; t++)
            xv[t] = _mm256_loadu_ps(X + t * cols + k);
        for (int r = 0; r < R; r++) {
            __m256 wv = _mm256_loadu_ps(W + r * cols + k);
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k < cols) {
        __m256i m = tail_mask(cols - k);
        __m256 xv[3];
        for (int t = 0; t < T; t++)
            xv[t] = _mm256_maskload_ps(X + t * cols + k, m);
        for (int r = 0; r < R; r++) {
            __m256 wv = _mm256_maskload_ps(W + r * cols + k, m);
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            Y[t * ldy + r] = hsum8(acc[r][t]);
}

static void tile_8x1(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols)
{
    tile(Y, ldy, X, W, cols, 8, 1);
}
static void tile_4x3(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols)
{
    tile(Y, ldy, X, W, cols, 4, 3);
}
static void tile_4x2(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols)
{
    tile(Y, ldy, X, W, cols, 4, 2);
}
static void tile_1x3(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols)
{
    tile(Y, ldy, X, W, cols, 1, 3);
}
static void tile_1x2(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols)
{
    tile(Y, ldy, X, W, cols, 1, 2);
}
static void tile_1x1(float *Y, int64_t ldy, const float *X, const float *W, int64_t cols)
{
    tile(Y, ldy, X, W, cols, 1, 1);
}

/* Tokens per pass: keep that slice of X (≤ 256 KiB) in L2 while all row
 * blocks of W stream past it. */
static int64_t token_chunk(int64_t cols)
{
    int64_t c = (256 * 1024 / 4) / (cols > 0 ? cols : 1);
    c -= c % 3;
    return c < 3 ? 3 : c;
}

void dense_nt_avx2(float *Y, int64_t ldy, const float *X, const float *W, int64_t n,
                   int64_t r0, int64_t r1, int64_t cols)
{
    if (n == 1) { /* matvec */
        int64_t r = r0;
        for (; r + 8 <= r1; r += 8)
            tile_8x1(Y + r, ldy, X, W + r * cols, cols);
        for (; r < r1; r++)
            tile_1x1(Y + r, ldy, X, W + r * cols, cols);
        return;
    }
    const int64_t chunk = token_chunk(cols);
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
        const int64_t t1 = t0 + chunk < n ? t0 + chunk : n;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const float *w = W + r * cols;
            int64_t t = t0;
            for (; t + 3 <= t1; t += 3)
                tile_4x3(Y + t * ldy + r, ldy, X + t * cols, w, cols);
            if (t1 - t == 2)
                tile_4x2(Y + t * ldy + r, ldy, X + t * cols, w, cols);
            else if (t1 - t == 1)
                tile(Y + t * ldy + r, ldy, X + t * cols, w, cols, 4, 1);
        }
        for (; r < r1; r++) {
            const float *w = W + r * cols;
            int64_t t = t0;
            for (; t + 3 <= t1; t += 3)
                tile_1x3(Y + t * ldy + r, ldy, X + t * cols, w, cols);
            if (t1 - t == 2)
                tile_1x2(Y + t * ldy + r, ldy, X + t * cols, w, cols);
            else if (t1 - t == 1)
                tile_1x1(Y + t * ldy + r, ldy, X + t * cols, w, cols);
        }
    }
}

/* dX[t, 0:8M) += Σ_r dY[t, r] · W[r, 0:8M) for t < T; the last vector masked
 * when `masked` (pointers at the tile). */
AI void tn_tile(float *dX, const float *dY, const float *W, int64_t rows, int64_t cols,
                const int M, const int T, const int masked, __m256i mask)
{
    __m256 acc[3][4];
    for (int t = 0; t < T; t++)
        for (int m = 0; m < M; m++)
            acc[t][m] = masked && m == M - 1 ? _mm256_maskload_ps(dX + t * cols + 8 * m, mask)
                                             : _mm256_loadu_ps(dX + t * cols + 8 * m);
    for (int64_t r = 0; r < rows; r++) {
        __m256 a[3];
        for (int t = 0; t < T; t++)
            a[t] = _mm256_broadcast_ss(dY + t * rows + r);
        for (int m = 0; m < M; m++) {
            const float *w = W + r * cols + 8 * m;
            __m256 wv = masked && m == M - 1 ? _mm256_maskload_ps(w, mask) : _mm256_loadu_ps(w);
            for (int t = 0; t < T; t++)
                acc[t][m] = _mm256_fmadd_ps(a[t], wv, acc[t][m]);
        }
    }
    for (int t = 0; t < T; t++)
        for (int m = 0; m < M; m++) {
            if (masked && m == M - 1)
                _mm256_maskstore_ps(dX + t * cols + 8 * m, mask, acc[t][m]);
            else
                _mm256_storeu_ps(dX + t * cols + 8 * m, acc[t][m]);
        }
}

/* T tokens over the columns [c0, c1): 32-wide tiles, then 8-wide, then masked. */
AI void tn_tokens(float *dX, const float *dY, const float *W, int64_t rows, int64_t c0,
                  int64_t c1, int64_t cols, const int T)
{
    const __m256i none = _mm256_setzero_si256();
    int64_t c = c0;
    for (; c + 32 <= c1; c += 32)
        tn_tile(dX + c, dY, W + c, rows, cols, 4, T, 0, none);
    for (; c + 8 <= c1; c += 8)
        tn_tile(dX + c, dY, W + c, rows, cols, 1, T, 0, none);
    if (c < c1)
        tn_tile(dX + c, dY, W + c, rows, cols, 1, T, 1, tail_mask(c1 - c));
}

static void tn_tokens3(float *dX, const float *dY, const float *W, int64_t rows, int64_t c0,
                       int64_t c1, int64_t cols)
{
    tn_tokens(dX, dY, W, rows, c0, c1, cols, 3);
}
static void tn_tokens2(float *dX, const float *dY, const float *W, int64_t rows, int64_t c0,
                       int64_t c1, int64_t cols)
{
    tn_tokens(dX, dY, W, rows, c0, c1, cols, 2);
}
static void tn_tokens1(float *dX, const float *dY, const float *W, int64_t rows, int64_t c0,
                       int64_t c1, int64_t cols)
{
    tn_tokens(dX, dY, W, rows, c0, c1, cols, 1);
}

void dense_tn_avx2(float *dX, const float *dY, const float *W, int64_t n, int64_t rows,
                   int64_t c0, int64_t c1, int64_t cols)
{
    int64_t t = 0;
    for (; t + 3 <= n; t += 3)
        tn_tokens3(dX + t * cols, dY + t * rows, W, rows, c0, c1, cols);
    if (n - t == 2)
        tn_tokens2(dX + t * cols, dY + t * rows, W, rows, c0, c1, cols);
    else if (n - t == 1)
        tn_tokens1(dX + t * cols, dY + t * rows, W, rows, c0, c1, cols);
}
