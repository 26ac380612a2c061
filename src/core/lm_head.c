/* Compact LM head: F16 or Q8_0 rows behind the mop_weight interface.
 *
 * matvec runs a row kernel (AVX2 when cpu_current() allows, else portable C)
 * over row ranges split across the pool. matmul dequantizes tiles of rows
 * into an F32 stack buffer and runs the dense kernel on them, so W is read
 * once per call however many tokens there are. matmul_t splits the columns
 * (in whole 32-column blocks) across threads, so no two threads write the
 * same dX entry. */
#include <string.h>

#include "cpu.h"
#include "lm_head.h"
#include "weight_dense.h"

typedef struct lm_head {
    int32_t ftype;        /* MOP_FT_F16 or MOP_FT_Q8_0 */
    uint64_t row_bytes;
    const uint8_t *data;  /* (rows, row_bytes) */
    uint8_t *owned;       /* == data when the weight owns it, else NULL */
} lm_head;

/* F32 per stack tile of dequantized rows. */
#define LM_TILE 8192
/* Below this many multiply-adds a call stays on the caller's thread. */
#define LM_MIN_PARALLEL ((int64_t)1 << 17)

/* ---- portable conversions ------------------------------------------------- */

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf / NaN */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* value = m * 2^(e-150); half subnormal unit 2^-24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((ax >> 13) - (112u << 10)), rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

static void to_f16(uint16_t *dst, const float *src, int64_t n)
{
    if (cpu_current() == CPU_AVX2) {
        lm_f32_to_f16_avx2(dst, src, n);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        dst[i] = f32_to_f16(src[i]);
}

/* One Q8_0 block of 32: d = max|x|/127 stored as F16, q = round(x/d). */
static void q8_0_block(uint8_t *b, const float *x)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = x[j] > amax ? x[j] : (-x[j] > amax ? -x[j] : amax);
    float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = f32_to_f16(d);
    memcpy(b, &dh, 2);
    for (int j = 0; j < 32; j++) {
        float v = x[j] * id;
        int q = (int)(v >= 0.0f ? v + 0.5f : v - 0.5f);
        b[2 + j] = (uint8_t)(int8_t)(q > 127 ? 127 : (q < -127 ? -127 : q));
    }
}

/* ---- row kernels ------------------------------------------------------------ */

static void rows_generic(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                         int64_t cols, int64_t r0, int64_t r1, int32_t ftype)
{
    float buf[256];
    const int64_t step = 256; /* a whole number of Q8_0 blocks */
    const uint64_t chunk_bytes = mop_ftype_nbytes(ftype, step);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = W + (uint64_t)r * row_bytes;
        float s = 0.0f;
        for (int64_t c = 0; c < cols; c += step) {
            int64_t n = MOP_MIN(step, cols - c);
            mop_dequantize(buf, w + (uint64_t)(c / step) * chunk_bytes, ftype, n);
            for (int64_t k = 0; k < n; k++)
                s += buf[k] * x[c + k];
        }
        y[r] = s;
    }
}

static void f16_rows_generic(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                             int64_t cols, int64_t r0, int64_t r1)
{
    rows_generic(y, x, W, row_bytes, cols, r0, r1, MOP_FT_F16);
}

static void q8_0_rows_generic(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                              int64_t cols, int64_t r0, int64_t r1)
{
    rows_generic(y, x, W, row_bytes, cols, r0, r1, MOP_FT_Q8_0);
}

static lm_rows_fn rows_kernel(int32_t ftype)
{
    int avx2 = cpu_current() == CPU_AVX2;
    if (ftype == MOP_FT_F16)
        return avx2 ? lm_f16_rows_avx2 : f16_rows_generic;
    return avx2 ? lm_q8_0_rows_avx2 : q8_0_rows_generic;
}

/* ---- ops -------------------------------------------------------------------- */

typedef struct lm_job {
    const mop_weight *w;
    float *Y;
    const float *X;
    int64_t n;
} lm_job;

static void matvec_run(void *arg, int ith, int nth)
{
    const lm_job *j = arg;
    const lm_head *h = j->w->impl;
    int64_t lo, hi;
    mop_split_range(j->w->rows, ith, nth, &lo, &hi);
    if (lo < hi)
        rows_kernel(h->ftype)(j->Y, j->X, h->data, h->row_bytes, j->w->cols, lo, hi);
}

// y (rows) = W (rows, cols) · x (cols)
static void lm_matvec(const mop_weight *w, float *y, const float *x, mop_pool *pool)
{
    lm_job j = {w, y, x, 1};
    mop_pool_run(w->rows * w->cols < LM_MIN_PARALLEL ? NULL : pool, matvec_run, &j);
}

static void matmul_run(void *arg, int ith, int nth)
{
    const lm_job *j = arg;
    const lm_head *h = j->w->impl;
    const int64_t cols = j->w->cols, rows = j->w->rows;
    int64_t lo, hi;
    mop_split_range(rows, ith, nth, &lo, &hi);
    float tile[LM_TILE];
    const int64_t R = MOP_MAX(1, LM_TILE / cols);
    const dense_nt_fn nt = dense_nt_kernel();
    if (cols > LM_TILE) { /* very wide rows: one dot product at a time */
        for (int64_t t = 0; t < j->n; t++)
            rows_kernel(h->ftype)(j->Y + t * rows, j->X + t * cols, h->data, h->row_bytes, cols,
                                  lo, hi);
        return;
    }
    for (int64_t r0 = lo; r0 < hi; r0 += R) {
        int64_t nr = MOP_MIN(R, hi - r0);
        mop_dequantize(tile, h->data + (uint64_t)r0 * h->row_bytes, h->ftype, nr * cols);
        nt(j->Y + r0, rows, j->X, tile, j->n, 0, nr, cols);
    }
}

// Y (n, rows) = X (n, cols) · Wᵀ
static void lm_matmul(const mop_weight *w, float *Y, const float *X, int64_t n, mop_pool *pool)
{
    lm_job j = {w, Y, X, n};
    mop_pool_run(w->rows * w->cols * n < LM_MIN_PARALLEL ? NULL : pool, matmul_run, &j);
}

typedef struct lm_t_job {
    const mop_weight *w;
    float *dX;
    const float *dY;
    int64_t n;
} lm_t_job;

static void matmul_t_run(void *arg, int ith, int nth)
{
    const lm_t_job *j = arg;
    const lm_head *h = j->w->impl;
    const int64_t cols = j->w->cols, rows = j->w->rows;
    int64_t lo, hi; /* in 32-column blocks */
    mop_split_range((cols + 31) / 32, ith, nth, &lo, &hi);
    const int64_t c0 = lo * 32, c1 = MOP_MIN(hi * 32, cols);
    const uint64_t off32 = mop_ftype_nbytes(h->ftype, 32);
    float seg[256];
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = h->data + (uint64_t)r * h->row_bytes;
        for (int64_t c = c0; c < c1; c += 256) {
            int64_t nc = MOP_MIN(256, c1 - c);
            mop_dequantize(seg, wr + (uint64_t)(c / 32) * off32, h->ftype, nc);
            for (int64_t t = 0; t < j->n; t++) {
                const float a = j->dY[t * rows + r];
                float *dx = j->dX + t * cols + c;
                for (int64_t k = 0; k < nc; k++)
                    dx[k] += a * seg[k];
            }
        }
    }
}

// dX (n, cols) += dY (n, rows) · W
static void lm_matmul_t(const mop_weight *w, float *dX, const float *dY, int64_t n,
                        mop_pool *pool)
{
    lm_t_job j = {w, dX, dY, n};
    mop_pool_run(w->rows * w->cols * n < LM_MIN_PARALLEL ? NULL : pool, matmul_t_run, &j);
}

static uint64_t lm_bytes(const mop_weight *w)
{
    const lm_head *h = w->impl;
    return h->row_bytes * (uint64_t)w->rows;
}

static void lm_to_dense(const mop_weight *w, float *out)
{
    const lm_head *h = w->impl;
    mop_dequantize(out, h->data, h->ftype, w->rows * w->cols);
}

static void lm_release(mop_weight *w)
{
    lm_head *h = w->impl;
    if (h)
        mop_free(h->owned);
    mop_free(h);
    w->impl = NULL;
}

const mop_weight_ops lm_head_f16_ops = {.format = "f16", .matvec = lm_matvec,
                                        .matmul = lm_matmul, .matmul_t = lm_matmul_t,
                                        .bytes = lm_bytes, .to_dense = lm_to_dense,
                                        .release = lm_release};
const mop_weight_ops lm_head_q8_0_ops = {.format = "q8_0", .matvec = lm_matvec,
                                         .matmul = lm_matmul, .matmul_t = lm_matmul_t,
                                         .bytes = lm_bytes, .to_dense = lm_to_dense,
                                         .release = lm_release};

/* ---- construction ------------------------------------------------------------- */

static mop_status check_shape(int32_t ftype, int64_t rows, int64_t cols)
{
    if (ftype != MOP_FT_F16 && ftype != MOP_FT_Q8_0)
        return mop_fail(MOP_E_INVALID_ARG, "LM head storage type %d is not F16 or Q8_0", ftype);
    if (rows < 1 || cols < 1 || rows > ((int64_t)1 << 31) || cols > ((int64_t)1 << 31))
        return mop_fail(MOP_E_INVALID_ARG, "LM head shape (%lld, %lld) out of range",
                        (long long)rows, (long long)cols);
    if (ftype == MOP_FT_Q8_0 && cols % 32 != 0)
        return mop_fail(MOP_E_INVALID_ARG, "LM head as Q8_0 needs a width divisible by 32, got %lld",
                        (long long)cols);
    return MOP_OK;
}

static mop_status make(mop_weight *out, const uint8_t *data, uint8_t *owned, int32_t ftype,
                       int64_t rows, int64_t cols)
{
    lm_head *h = mop_calloc(1, sizeof *h);
    if (!h)
        return mop_fail(MOP_E_NOMEM, "out of memory for an LM head");
    h->ftype = ftype;
    h->row_bytes = mop_ftype_nbytes(ftype, cols);
    h->data = data;
    h->owned = owned;
    *out = (mop_weight){ftype == MOP_FT_F16 ? &lm_head_f16_ops : &lm_head_q8_0_ops, rows, cols,
                        NULL, h};
    return MOP_OK;
}

/* MOP_E_FORMAT at the first NaN/Inf half in stored head data: every F16
 * value, or every Q8_0 block's F16 scale (its int8 values are finite).
 * A model's weights must be finite, as the dense loader checks too. */
static mop_status check_finite(const uint8_t *data, int32_t ftype, int64_t rows, int64_t cols)
{
    const size_t step = ftype == MOP_FT_F16 ? 2 : 34; /* Q8_0: f16 scale + 32 int8 */
    const size_t n = (size_t)rows * (size_t)(ftype == MOP_FT_F16 ? cols : cols / 32);
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, data + i * step, sizeof h);
        if ((h & 0x7c00u) == 0x7c00u) {
            size_t v = ftype == MOP_FT_F16 ? i : i * 32;
            return mop_fail(MOP_E_FORMAT, "LM head (%s): %s at row %lld, column %lld; a "
                            "model's weights must be finite", ftype == MOP_FT_F16 ? "F16" : "Q8_0",
                            (h & 0x03ffu) ? "NaN" : "Inf", (long long)(v / (size_t)cols),
                            (long long)(v % (size_t)cols));
        }
    }
    return MOP_OK;
}

mop_status lm_head_wrap(mop_weight *out, const void *data, int32_t ftype, int64_t rows,
                        int64_t cols)
{
    MOP_CHECK_ARG(out && data);
    MOP_TRY(check_shape(ftype, rows, cols));
    MOP_TRY(check_finite(data, ftype, rows, cols));
    return make(out, data, NULL, ftype, rows, cols);
}

mop_status lm_head_convert(mop_weight *out, const mop_weight *src, int32_t ftype)
{
    MOP_CHECK_ARG(out && src && src->ops);
    const int64_t rows = src->rows, cols = src->cols;
    MOP_TRY(check_shape(ftype, rows, cols));
    const uint64_t row_bytes = mop_ftype_nbytes(ftype, cols);
    uint8_t *buf = mop_alloc((size_t)(row_bytes * (uint64_t)rows));
    float *row = src->data ? NULL : mop_alloc((size_t)(rows * cols) * sizeof(float));
    if (!buf || (!src->data && !row)) {
        mop_free(buf);
        mop_free(row);
        return mop_fail(MOP_E_NOMEM, "out of memory converting the LM head (%lld x %lld)",
                        (long long)rows, (long long)cols);
    }
    const float *W = src->data;
    if (!W) {
        src->ops->to_dense(src, row);
        W = row;
    }
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *dst = buf + (uint64_t)r * row_bytes;
        const float *x = W + r * cols;
        if (ftype == MOP_FT_F16) {
            uint16_t tmp[256];
            for (int64_t c = 0; c < cols; c += 256) {
                int64_t n = MOP_MIN(256, cols - c);
                to_f16(tmp, x + c, n);
                memcpy(dst + 2 * c, tmp, (size_t)n * 2);
            }
        } else {
            for (int64_t b = 0; b < cols / 32; b++)
                q8_0_block(dst + 34 * b, x + 32 * b);
        }
    }
    mop_free(row);
    mop_status st = make(out, buf, buf, ftype, rows, cols);
    if (st != MOP_OK)
        mop_free(buf);
    return st;
}

int lm_head_raw(const mop_weight *w, int32_t *ftype, const void **data, uint64_t *nbytes)
{
    if (!w || (w->ops != &lm_head_f16_ops && w->ops != &lm_head_q8_0_ops))
        return 0;
    const lm_head *h = w->impl;
    *ftype = h->ftype;
    *data = h->data;
    *nbytes = h->row_bytes * (uint64_t)w->rows;
    return 1;
}
