/* Pruning (magnitude, Wanda, SparseGPT), the compact LM head, and saving /
 * loading pruned models, on small random matrices and a tiny random Llama
 * written by tests/gguf_builder.h. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cpu.h"
#include "gguf.h"
#include "gguf_builder.h"
#include "internal.h"
#include "libmop/mop_sparse.h"
#include "model.h"
#include "lm_head.h"
#include "sparse/prune.h"
#include "sparse/sparse.h"

/* this file's random stream (frand() of tiny_model.h) */
#define TINY_RNG_SEED 0x9E3779B97F4A7C15ull
#include "tiny_model.h"

/* ---- helpers ------------------------------------------------------------- */

static float *rand_matrix(int64_t n)
{
    float *W = malloc((size_t)n * sizeof *W);
    for (int64_t i = 0; i < n; i++)
        W[i] = frand();
    return W;
}

static prune_cfg nm_cfg(int n, int m)
{
    return (prune_cfg){MOP_PATTERN_NM, n, m, 0.0, MOP_GRANULARITY_ROW, 0.01, 128};
}

static prune_cfg un_cfg(double ratio, int gran)
{
    return (prune_cfg){MOP_PATTERN_UNSTRUCTURED, 0, 0, ratio, gran, 0.01, 128};
}

/* Every group of m columns (last one partial) holds exactly min(n, len) nonzeros. */
static void assert_nm(const float *W, int64_t rows, int64_t cols, int n, int m)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c += m) {
            int64_t len = MOP_MIN(m, cols - c), nz = 0;
            for (int64_t k = c; k < c + len; k++)
                nz += W[r * cols + k] != 0.0f;
            assert_int_equal(nz, MOP_MIN(n, len));
        }
}

static int64_t zeros_in(const float *W, int64_t n)
{
    int64_t z = 0;
    for (int64_t i = 0; i < n; i++)
        z += W[i] == 0.0f;
    return z;
}

static void assert_unstructured(const float *W, int64_t rows, int64_t cols, double ratio, int gran)
{
    if (gran == MOP_GRANULARITY_LAYER) {
        assert_int_equal(zeros_in(W, rows * cols), (int64_t)(ratio * (double)(rows * cols) + 0.5));
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        assert_int_equal(zeros_in(W + r * cols, cols), (int64_t)(ratio * (double)cols + 0.5));
}

/* X (n, cols) with correlated columns, H = XᵀX (full). */
static void calib_data(float *X, float *H, int64_t n, int64_t cols)
{
    for (int64_t t = 0; t < n; t++) {
        float common = frand();
        for (int64_t j = 0; j < cols; j++)
            X[t * cols + j] = frand() * (1.0f + (float)(j % 5)) + 0.8f * common;
    }
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < cols; j++) {
            double s = 0;
            for (int64_t t = 0; t < n; t++)
                s += (double)X[t * cols + i] * X[t * cols + j];
            H[i * cols + j] = (float)s;
        }
}

/* ||(W - Ŵ) Xᵀ||² */
static double recon_err(const float *W, const float *Wp, const float *X, int64_t rows,
                        int64_t cols, int64_t n)
{
    double e = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = 0; t < n; t++) {
            double s = 0;
            for (int64_t j = 0; j < cols; j++)
                s += ((double)W[r * cols + j] - Wp[r * cols + j]) * X[t * cols + j];
            e += s * s;
        }
    return e;
}

/* ---- masks on one matrix ---------------------------------------------------- */

/* The one tie order of every mask choice (prune_entry_cmp): ascending
 * score, equal scores with the higher index first; the first k are removed,
 * so of equal scores the lower index is kept, by magnitude, Wanda and
 * SparseGPT alike. */
static void test_tie_order(void **state)
{
    (void)state;
    prune_entry e[] = {{1.0f, 0}, {0.5f, 1}, {1.0f, 2}, {0.5f, 3}, {0.25f, 4}};
    qsort(e, 5, sizeof *e, prune_entry_cmp);
    const int32_t want[] = {4, 3, 1, 2, 0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(e[i].j, want[i]);
    /* one row of equal weights, 2:4: columns 0 and 1 stay */
    float W[8] = {1, 1, 1, 1, -2, 2, -2, 2};
    prune_cfg c = nm_cfg(2, 4);
    assert_int_equal(prune_scored(W, 1, 8, &c, NULL, NULL), MOP_OK);
    const float want_w[8] = {1, 1, 0, 0, -2, 2, 0, 0};
    assert_memory_equal(W, want_w, sizeof W);
    /* SparseGPT with H = I (equal scores w²/U_jj², no error carried to
     * other columns): the same columns stay */
    float W2[8] = {1, 1, 1, 1, -2, 2, -2, 2}, H[64] = {0};
    for (int i = 0; i < 8; i++)
        H[i * 8 + i] = 1.0f;
    c.block = 8;
    assert_int_equal(prune_sparsegpt(W2, 1, 8, &c, H, NULL), MOP_OK);
    assert_memory_equal(W2, want_w, sizeof W2);
    /* unstructured, half of the row */
    float W3[8] = {3, 3, 3, 3, 3, 3, 3, 3};
    prune_cfg u = un_cfg(0.5, MOP_GRANULARITY_ROW);
    assert_int_equal(prune_scored(W3, 1, 8, &u, NULL, NULL), MOP_OK);
    const float want_u[8] = {3, 3, 3, 3, 0, 0, 0, 0};
    assert_memory_equal(W3, want_u, sizeof W3);
}

static void test_patterns_exact(void **state)
{
    (void)state;
    const int nms[][2] = {{2, 4}, {4, 8}, {3, 4}, {7, 8}, {1, 4}, {1, 2}, {15, 16}};
    const int64_t rows = 13, cols = 37; /* partial last groups */
    for (size_t i = 0; i < sizeof nms / sizeof nms[0]; i++) {
        prune_cfg c = nm_cfg(nms[i][0], nms[i][1]);
        float *W = rand_matrix(rows * cols), *H = malloc((size_t)(cols * cols) * sizeof *H),
              *X = malloc((size_t)(64 * cols) * sizeof *X);
        float *W2 = malloc((size_t)(rows * cols) * sizeof *W2);
        memcpy(W2, W, (size_t)(rows * cols) * sizeof *W);
        assert_int_equal(prune_scored(W, rows, cols, &c, NULL, NULL), MOP_OK);
        assert_nm(W, rows, cols, c.n, c.m);
        calib_data(X, H, 64, cols);
        c.block = 8; /* several blocks, rounded to whole groups */
        assert_int_equal(prune_sparsegpt(W2, rows, cols, &c, H, NULL), MOP_OK);
        assert_nm(W2, rows, cols, c.n, c.m);
        free(W), free(W2), free(H), free(X);
    }
    const double ratios[] = {0.0, 0.25, 0.5, 0.75, 0.9, 0.99};
    for (size_t i = 0; i < sizeof ratios / sizeof ratios[0]; i++)
        for (int g = 0; g < 2; g++) {
            prune_cfg c = un_cfg(ratios[i], g);
            c.block = 10;
            float *W = rand_matrix(rows * cols), *H = malloc((size_t)(cols * cols) * sizeof *H),
                  *X = malloc((size_t)(64 * cols) * sizeof *X);
            float *W2 = malloc((size_t)(rows * cols) * sizeof *W2);
            memcpy(W2, W, (size_t)(rows * cols) * sizeof *W);
            assert_int_equal(prune_scored(W, rows, cols, &c, NULL, NULL), MOP_OK);
            assert_unstructured(W, rows, cols, ratios[i], g);
            calib_data(X, H, 64, cols);
            assert_int_equal(prune_sparsegpt(W2, rows, cols, &c, H, NULL), MOP_OK);
            assert_unstructured(W2, rows, cols, ratios[i], g);
            free(W), free(W2), free(H), free(X);
        }
}

/* Magnitude keeps the largest |w| of each group / row / matrix. */
static void test_magnitude_keeps_largest(void **state)
{
    (void)state;
    const int64_t rows = 9, cols = 40;
    float *W0 = rand_matrix(rows * cols), *W = malloc((size_t)(rows * cols) * sizeof *W);
    prune_cfg c = nm_cfg(3, 8);
    memcpy(W, W0, (size_t)(rows * cols) * sizeof *W);
    assert_int_equal(prune_scored(W, rows, cols, &c, NULL, NULL), MOP_OK);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < cols; g += 8)
            for (int64_t a = g; a < g + 8; a++)
                for (int64_t b = g; b < g + 8; b++)
                    if (W[r * cols + a] != 0.0f && W[r * cols + b] == 0.0f)
                        assert_true(fabsf(W0[r * cols + a]) >= fabsf(W0[r * cols + b]));
    for (int g = 0; g < 2; g++) {
        c = un_cfg(0.6, g);
        memcpy(W, W0, (size_t)(rows * cols) * sizeof *W);
        assert_int_equal(prune_scored(W, rows, cols, &c, NULL, NULL), MOP_OK);
        for (int64_t a = 0; a < rows * cols; a++)
            for (int64_t b = 0; b < rows * cols; b++)
                if (W[a] != 0.0f && W[b] == 0.0f && (g == 1 || a / cols == b / cols))
                    assert_true(fabsf(W0[a]) >= fabsf(W0[b]));
        /* kept values are untouched */
        for (int64_t a = 0; a < rows * cols; a++)
            assert_true(W[a] == 0.0f || W[a] == W0[a]);
    }
    free(W0), free(W);
}

/* Wanda on a hand-built row: scores |w|·||x_j|| = [4, 10, 2, 3] keep columns
 * 0 and 1, where magnitude keeps 0 and 3. */
static void test_wanda_order(void **state)
{
    (void)state;
    float W[8] = {4, 1, 2, 3, -1, -2, 0.5f, 0.25f};
    const double colsq[4] = {1, 100, 1, 1}; /* ||x_1|| = 10 */
    prune_cfg c = nm_cfg(2, 4);
    assert_int_equal(prune_scored(W, 2, 4, &c, colsq, NULL), MOP_OK);
    const float want[8] = {4, 1, 0, 0, -1, -2, 0, 0}; /* row 2: [1, 20, 0.5, 0.25] */
    for (int i = 0; i < 8; i++)
        assert_true(W[i] == want[i]);
    float M[4] = {4, 1, 2, 3};
    assert_int_equal(prune_scored(M, 1, 4, &c, NULL, NULL), MOP_OK);
    assert_true(M[0] == 4 && M[1] == 0 && M[2] == 0 && M[3] == 3);
}

/* SparseGPT's compensated weights reconstruct WXᵀ better than magnitude at
 * the same pattern; with nothing removed W comes back bit for bit. */
static void test_sparsegpt_reconstruction(void **state)
{
    (void)state;
    const int64_t rows = 24, cols = 48, n = 200;
    float *W = rand_matrix(rows * cols), *X = malloc((size_t)(n * cols) * sizeof *X),
          *H = malloc((size_t)(cols * cols) * sizeof *H),
          *Hc = malloc((size_t)(cols * cols) * sizeof *H),
          *Wm = malloc((size_t)(rows * cols) * sizeof *W),
          *Ws = malloc((size_t)(rows * cols) * sizeof *W);
    calib_data(X, H, n, cols);
    const prune_cfg cfgs[] = {nm_cfg(2, 4), un_cfg(0.5, 0), un_cfg(0.75, 1), nm_cfg(1, 4)};
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        prune_cfg c = cfgs[i];
        c.block = 16;
        memcpy(Wm, W, (size_t)(rows * cols) * sizeof *W);
        memcpy(Ws, W, (size_t)(rows * cols) * sizeof *W);
        memcpy(Hc, H, (size_t)(cols * cols) * sizeof *H);
        assert_int_equal(prune_scored(Wm, rows, cols, &c, NULL, NULL), MOP_OK);
        assert_int_equal(prune_sparsegpt(Ws, rows, cols, &c, Hc, NULL), MOP_OK);
        double em = recon_err(W, Wm, X, rows, cols, n), es = recon_err(W, Ws, X, rows, cols, n);
        print_message("pattern %zu: ||(W-Ŵ)Xᵀ||² magnitude %.4g, SparseGPT %.4g\n", i, em, es);
        assert_true(es < 0.8 * em);
    }
    prune_cfg c = un_cfg(0.0, 0);
    memcpy(Ws, W, (size_t)(rows * cols) * sizeof *W);
    memcpy(Hc, H, (size_t)(cols * cols) * sizeof *H);
    assert_int_equal(prune_sparsegpt(Ws, rows, cols, &c, Hc, NULL), MOP_OK);
    assert_memory_equal(Ws, W, (size_t)(rows * cols) * sizeof *W);
    free(W), free(X), free(H), free(Hc), free(Wm), free(Ws);
}

/* ---- compact LM head ------------------------------------------------------------ */

static void test_lm_head_formats(void **state)
{
    (void)state;
    const int64_t rows = 67, cols = 96, n = 5;
    float *W = rand_matrix(rows * cols), *X = rand_matrix(n * cols), *dY = rand_matrix(n * rows);
    const int32_t fts[2] = {MOP_FT_F16, MOP_FT_Q8_0};
    for (int f = 0; f < 2; f++) {
        mop_weight src, c;
        mop_weight_dense_init(&src, W, rows, cols);
        assert_int_equal(lm_head_convert(&c, &src, fts[f]), MOP_OK);
        float *D = malloc((size_t)(rows * cols) * sizeof *D);
        c.ops->to_dense(&c, D);
        for (int64_t i = 0; i < rows * cols; i++) /* F16: 2^-11 relative; Q8_0: 1/254 of the block max */
            assert_true(fabsf(D[i] - W[i]) <= (f ? 1.0f / 200 : fabsf(W[i]) / 1024 + 1e-7f));
        mop_weight dense;
        mop_weight_dense_init(&dense, D, rows, cols);
        for (int path = 0; path < 2; path++) {
            cpu_force_generic(path);
            float y1[67], y2[67], Y1[5 * 67], Y2[5 * 67], dX1[5 * 96] = {0}, dX2[5 * 96] = {0};
            c.ops->matvec(&c, y1, X, NULL);
            dense.ops->matvec(&dense, y2, X, NULL);
            c.ops->matmul(&c, Y1, X, n, NULL);
            dense.ops->matmul(&dense, Y2, X, n, NULL);
            c.ops->matmul_t(&c, dX1, dY, n, NULL);
            dense.ops->matmul_t(&dense, dX2, dY, n, NULL);
            for (int64_t i = 0; i < rows; i++)
                assert_float_equal(y1[i], y2[i], 1e-5 * (1 + fabsf(y2[i])));
            for (int64_t i = 0; i < n * rows; i++)
                assert_float_equal(Y1[i], Y2[i], 1e-5 * (1 + fabsf(Y2[i])));
            for (int64_t i = 0; i < n * cols; i++)
                assert_float_equal(dX1[i], dX2[i], 1e-5 * (1 + fabsf(dX2[i])));
        }
        cpu_force_generic(0);
        assert_int_equal(c.ops->bytes(&c), (uint64_t)rows * (f ? 34 * 3 : 2 * 96));
        c.ops->release(&c);
        free(D);
    }
    mop_weight src, c;
    mop_weight_dense_init(&src, W, 3, 31);
    assert_int_equal(lm_head_convert(&c, &src, MOP_FT_Q8_0), MOP_E_INVALID_ARG);
    free(W), free(X), free(dY);
}

/* Stored head data with a NaN/Inf half is refused when wrapped (the load
 * path): in F16 any value, in Q8_0 a block's scale. */
static void test_lm_head_wrap_rejects_nonfinite(void **state)
{
    (void)state;
    const int64_t rows = 4, cols = 64;
    uint8_t f16[4 * 64 * 2] = {0}, q8[4 * 2 * 34] = {0};
    mop_weight c;
    assert_int_equal(lm_head_wrap(&c, f16, MOP_FT_F16, rows, cols), MOP_OK);
    c.ops->release(&c);
    assert_int_equal(lm_head_wrap(&c, q8, MOP_FT_Q8_0, rows, cols), MOP_OK);
    c.ops->release(&c);
    const uint16_t nan16 = 0x7e00, inf16 = 0xfc00;
    memcpy(f16 + 2 * (2 * cols + 5), &nan16, 2); /* row 2, column 5 */
    assert_int_equal(lm_head_wrap(&c, f16, MOP_FT_F16, rows, cols), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "NaN at row 2, column 5"));
    memcpy(q8 + 34 * 3, &inf16, 2); /* row 1, second block: column 32 */
    assert_int_equal(lm_head_wrap(&c, q8, MOP_FT_Q8_0, rows, cols), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "Inf at row 1, column 32"));
}

/* ---- the tiny model -------------------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

static char tiny_path[64];

static void make_tiny(void)
{
    if (tiny_path[0])
        return;
    gguf_builder b;
    gb_init(&b);
    tiny_opts o = tiny_defaults();
    o.n_ff = 72; /* not a multiple of 16: partial groups in down */
    tiny_llama(&b, &o);
    size_t size;
    uint8_t *img = gb_finish(&b, &size);
    snprintf(tiny_path, sizeof tiny_path, "/tmp/mop_test_prune_XXXXXX");
    int fd = mkstemp(tiny_path);
    assert_true(fd >= 0);
    close(fd);
    write_file(tiny_path, img, size);
    free(img);
    gb_release(&b);
}

static mop_model *load_tiny(void)
{
    make_tiny();
    mop_model_params p;
    mop_model_params_init(&p);
    p.use_mmap = 0; /* every weight in its own buffer, so tests may rewrite it */
    p.n_threads = 1;
    mop_model *m = NULL;
    assert_int_equal(mop_model_load(tiny_path, &p, &m), MOP_OK);
    return m;
}

#define NTOK 40
static int32_t toks[NTOK];

static void init_tokens(void)
{
    for (int i = 0; i < NTOK; i++)
        toks[i] = 3 + (int32_t)((frand() + 1.0f) * 13.0f) % 29;
}

/* logits (NTOK, vocab) of one decode of toks, and the perplexity in windows of 16 */
static void run(mop_model *m, float *logits, double *ppl)
{
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    mop_ctx *c = NULL;
    assert_int_equal(mop_ctx_create(m, &cp, &c), MOP_OK);
    assert_int_equal(mop_ctx_decode(c, toks, NTOK, MOP_LOGITS_ALL), MOP_OK);
    const float *lg;
    int32_t rows;
    assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
    assert_int_equal(rows, NTOK);
    memcpy(logits, lg, (size_t)(NTOK * m->hp.n_vocab) * sizeof *lg);
    assert_int_equal(mop_ctx_perplexity(c, toks, NTOK, 16, NULL, NULL, ppl), MOP_OK);
    mop_ctx_free(c);
}

/* The same logits decoding toks one at a time through the KV cache (the
 * single-token path: matvec and the grouped q/k/v, gate/up products). */
static void run_stepwise(mop_model *m, float *logits)
{
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    mop_ctx *c = NULL;
    assert_int_equal(mop_ctx_create(m, &cp, &c), MOP_OK);
    for (int t = 0; t < NTOK; t++) {
        assert_int_equal(mop_ctx_decode(c, toks + t, 1, MOP_LOGITS_LAST), MOP_OK);
        const float *lg;
        int32_t rows;
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
        assert_int_equal(rows, 1);
        memcpy(logits + (int64_t)t * m->hp.n_vocab, lg, (size_t)m->hp.n_vocab * sizeof *lg);
    }
    mop_ctx_free(c);
}

static mop_weight *linear(mop_model *m, int l, int i)
{
    mop_layer *L = &m->layers[l];
    mop_weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return ws[i];
}

static mop_prune_params wanda_params(void)
{
    mop_prune_params p;
    mop_prune_params_init(&p);
    p.method = MOP_PRUNE_WANDA;
    p.calib_tokens = toks;
    p.n_calib_tokens = NTOK;
    p.calib_seq_len = 16;
    p.n_threads = 2;
    return p;
}

/* Packed weights run through the model give what the same pruned values give
 * as dense F32 weights. */
static void test_packed_equals_dense(void **state)
{
    (void)state;
    const int nv = 32;
    mop_prune_params ps[4];
    mop_prune_params_init(&ps[0]); /* magnitude 2:4 */
    ps[1] = wanda_params();
    ps[1].pattern = MOP_PATTERN_UNSTRUCTURED;
    ps[1].ratio = 0.75f;
    ps[2] = wanda_params();
    ps[2].method = MOP_PRUNE_SPARSEGPT;
    ps[2].n = 4;
    ps[2].m = 8;
    ps[3] = wanda_params();
    ps[3].method = MOP_PRUNE_SPARSEGPT;
    ps[3].pattern = MOP_PATTERN_UNSTRUCTURED;
    ps[3].ratio = 0.9f;
    ps[3].granularity = MOP_GRANULARITY_LAYER;
    ps[3].layer_begin = 1;
    for (int k = 0; k < 4; k++) {
        mop_model *a = load_tiny(), *d = load_tiny();
        float la[NTOK * 32], ld[NTOK * 32];
        double pa, pd;
        assert_int_equal(mop_model_prune(a, &ps[k]), MOP_OK);
        for (int l = 0; l < 2; l++)
            for (int i = 0; i < 7; i++) {
                mop_weight *w = linear(a, l, i), *dw = linear(d, l, i);
                if (l < ps[k].layer_begin) {
                    assert_ptr_equal(w->ops, &mop_weight_dense_ops);
                    continue;
                }
                assert_true(sparse_is_sparse(w));
                w->ops->to_dense(w, (float *)dw->data);
            }
        double sp;
        const char *fmt;
        assert_int_equal(mop_model_sparsity(a, &sp, &fmt), MOP_OK);
        print_message("case %d: sparsity %.4f format %s\n", k, sp, fmt);
        run(a, la, &pa);
        run(d, ld, &pd);
        /* relative to the largest logit: summation orders differ (sparse
         * kernels vs the dense blocked product) */
        double md = 0, mx = 0;
        for (int i = 0; i < NTOK * nv; i++) {
            md = fmax(md, fabs((double)la[i] - ld[i]));
            mx = fmax(mx, fabs((double)ld[i]));
        }
        print_message("case %d: max |logit diff| %.3g of max |logit| %.3g; ppl %.8g vs %.8g\n", k,
                      md, mx, pa, pd);
        assert_true(md <= 1e-5 * mx);
        assert_true(fabs(pa - pd) <= 1e-4 * pd);
        float ls[NTOK * 32];
        run_stepwise(a, ls);
        double ms = 0;
        for (int i = 0; i < NTOK * nv; i++)
            ms = fmax(ms, fabs((double)ls[i] - ld[i]));
        print_message("case %d: token-by-token decode, max |logit diff| %.3g\n", k, ms);
        assert_true(ms <= 1e-5 * mx);
        mop_model_free(a);
        mop_model_free(d);
    }
}

static void assert_models_equal(mop_model *a, mop_model *b)
{
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < 7; i++) {
            mop_weight *x = linear(a, l, i), *y = linear(b, l, i);
            assert_ptr_equal(x->ops, y->ops);
            int64_t n = x->rows * x->cols;
            float *dx = malloc((size_t)n * 4), *dy = malloc((size_t)n * 4);
            x->ops->to_dense(x, dx);
            y->ops->to_dense(y, dy);
            assert_memory_equal(dx, dy, (size_t)n * 4);
            assert_int_equal(x->ops->bytes(x), y->ops->bytes(y));
            free(dx), free(dy);
        }
    float la[NTOK * 32], lb[NTOK * 32];
    double pa, pb;
    run(a, la, &pa);
    run(b, lb, &pb);
    assert_memory_equal(la, lb, sizeof la);
    assert_true(pa == pb);
}

/* save -> load gives the same weights and bit-identical logits, for N:M,
 * unstructured and a compact head; the file keeps the tokenizer. */
static void test_save_load_roundtrip(void **state)
{
    (void)state;
    for (int k = 0; k < 3; k++) {
        mop_model *a = load_tiny();
        mop_prune_params p;
        mop_prune_params_init(&p);
        if (k == 1) {
            p.pattern = MOP_PATTERN_UNSTRUCTURED;
            p.ratio = 0.8f;
        }
        if (k == 2) {
            p.n = 1;
            p.m = 4;
            p.lm_head_format = MOP_LM_HEAD_Q8_0;
        }
        assert_int_equal(mop_model_prune(a, &p), MOP_OK);
        char path[64] = "/tmp/mop_test_pruned_XXXXXX";
        int fd = mkstemp(path);
        close(fd);
        assert_int_equal(mop_model_save(a, path), MOP_OK);
        mop_model *b = NULL;
        assert_int_equal(mop_model_load(path, NULL, &b), MOP_OK);
        assert_models_equal(a, b);
        assert_string_equal(a->lm_head.ops->format, b->lm_head.ops->format);
        int32_t t[8];
        size_t n = 0;
        assert_int_equal(mop_tokenize(b, "ab a", 4, 0, t, 8, &n), MOP_OK);
        assert_true(n > 0);
        mop_model_free(b);
        unlink(path);
        mop_model_free(a);
    }
}

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc(*size);
    assert_int_equal(fread(d, 1, *size, f), *size);
    fclose(f);
    return d;
}

/* Every truncation of a saved pruned model fails to load (never crashes);
 * out-of-range in-group indices are MOP_E_FORMAT. */
static void test_corrupt_files(void **state)
{
    (void)state;
    mop_model *a = load_tiny();
    mop_prune_params p;
    mop_prune_params_init(&p);
    assert_int_equal(mop_model_prune(a, &p), MOP_OK);
    char path[64] = "/tmp/mop_test_pruned_XXXXXX", bad[64] = "/tmp/mop_test_bad_XXXXXX";
    close(mkstemp(path));
    close(mkstemp(bad));
    assert_int_equal(mop_model_save(a, path), MOP_OK);
    mop_model_free(a);
    size_t size;
    uint8_t *img = read_all(path, &size);
    for (size_t len = 0; len < size; len++) {
        write_file(bad, img, len);
        mop_model *m = NULL;
        mop_status st = mop_model_load(bad, NULL, &m);
        if (st == MOP_OK)
            print_error("truncated to %zu of %zu bytes: loaded\n", len, size);
        assert_int_not_equal(st, MOP_OK);
        assert_null(m);
    }
    /* the nm stream of blk.0.attn_q: 40 header bytes, F32 values, then indices */
    gguf_file *g = NULL;
    assert_int_equal(gguf_parse(img, size, NULL, &g), MOP_OK);
    const mop_src_tensor *t = gguf_find_tensor(g, "blk.0.attn_q.weight.sparse");
    assert_non_null(t);
    size_t off = (size_t)((const uint8_t *)t->data - img);
    int64_t rows = 32, slots = 32 / 4 * 2;
    size_t idx = off + 40 + (size_t)(rows * slots) * 4;
    assert_true(idx < off + t->nbytes);
    gguf_free(g);
    const uint8_t flips[] = {0xFF, 0x4F, 0xF4, 0xCD};
    for (size_t i = 0; i < sizeof flips; i++) {
        uint8_t save = img[idx + 3];
        img[idx + 3] = flips[i]; /* a nibble >= M = 4 */
        write_file(bad, img, size);
        mop_model *m = NULL;
        mop_status st = mop_model_load(bad, NULL, &m);
        if (st != MOP_E_FORMAT)
            print_error("index byte 0x%02x: %s\n", flips[i], mop_status_name(st));
        assert_int_equal(st, MOP_E_FORMAT);
        img[idx + 3] = save;
    }
    free(img);
    unlink(path);
    unlink(bad);
}

/* mop.format_version is read (issue 14, F8): a newer version is
 * MOP_E_UNSUPPORTED, 0 is MOP_E_FORMAT, and so is a pruned file without the
 * key; the version written (1) loads. */
static void test_format_version_checked(void **state)
{
    (void)state;
    mop_model *a = load_tiny();
    mop_prune_params p;
    mop_prune_params_init(&p);
    assert_int_equal(mop_model_prune(a, &p), MOP_OK);
    char path[64] = "/tmp/mop_test_pruned_XXXXXX", bad[64] = "/tmp/mop_test_bad_XXXXXX";
    close(mkstemp(path));
    close(mkstemp(bad));
    assert_int_equal(mop_model_save(a, path), MOP_OK);
    mop_model_free(a);
    size_t size;
    uint8_t *img = read_all(path, &size);
    /* GGUF kv: u64 key length, key, u32 type (4 = u32), u32 value */
    static const char key[] = "mop.format_version";
    uint8_t *k = NULL;
    for (size_t i = 0; i + sizeof key < size && !k; i++)
        if (memcmp(img + i, key, sizeof key - 1) == 0)
            k = img + i;
    assert_non_null(k);
    uint8_t *type = k + sizeof key - 1, *val = type + 4;
    assert_int_equal(type[0], 4);
    assert_int_equal(val[0], 1);
    const struct {
        uint8_t v;
        mop_status want;
    } cases[] = {{1, MOP_OK}, {2, MOP_E_UNSUPPORTED}, {200, MOP_E_UNSUPPORTED}, {0, MOP_E_FORMAT}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        val[0] = cases[i].v;
        write_file(bad, img, size);
        mop_model *m = NULL;
        mop_status st = mop_model_load(bad, NULL, &m);
        if (st != cases[i].want)
            print_error("version %u: %s (%s)\n", cases[i].v, mop_status_name(st), mop_last_error());
        assert_int_equal(st, cases[i].want);
        if (st == MOP_OK)
            mop_model_free(m);
        else
            assert_non_null(strstr(mop_last_error(), "mop.format_version"));
    }
    val[0] = 1;
    k[sizeof key - 2] = 'X'; /* the key renamed: no version in a pruned file */
    write_file(bad, img, size);
    mop_model *m = NULL;
    assert_int_equal(mop_model_load(bad, NULL, &m), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "no mop.format_version"));
    free(img);
    unlink(path);
    unlink(bad);
}

static void test_state_and_params(void **state)
{
    (void)state;
    mop_model *m = load_tiny();
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = 16;
    mop_ctx *c = NULL;
    assert_int_equal(mop_ctx_create(m, &cp, &c), MOP_OK);
    mop_prune_params p;
    mop_prune_params_init(&p);
    assert_int_equal(mop_model_prune(m, &p), MOP_E_STATE);
    mop_ctx_free(c);

    assert_int_equal(mop_model_prune(NULL, &p), MOP_E_INVALID_ARG);
    assert_int_equal(mop_model_prune(m, NULL), MOP_E_INVALID_ARG);
    struct {
        int field;
        int32_t v;
        float f;
        mop_status want;
    } cases[] = {
        {0, 4, 0, MOP_E_RANGE},   /* n = m */
        {1, 17, 0, MOP_E_RANGE},  /* m > 16 */
        {2, 0, 0, MOP_E_RANGE},   /* n = 0 */
        {3, 0, 1.0f, MOP_E_RANGE},  /* ratio 1 */
        {3, 0, -0.1f, MOP_E_RANGE},
        {3, 0, NAN, MOP_E_RANGE},
        {4, 3, 0, MOP_E_RANGE},   /* layer_end > n_layer */
        {5, 2, 0, MOP_E_RANGE},   /* begin > end */
        {6, 7, 0, MOP_E_INVALID_ARG}, /* method */
        {7, 1, 0, MOP_E_INVALID_ARG}, /* wanda without tokens */
        {8, 9, 0, MOP_E_INVALID_ARG}, /* lm head format */
        {9, 0, 0, MOP_E_INVALID_ARG}, /* struct_size */
        {10, 0, 0, MOP_E_INVALID_ARG}, /* calibration token out of range */
    };
    int32_t badtok[3] = {1, 2, 999};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mop_prune_params_init(&p);
        switch (cases[i].field) {
        case 0: p.n = cases[i].v; break;
        case 1: p.m = cases[i].v; break;
        case 2: p.n = cases[i].v; break;
        case 3: p.pattern = MOP_PATTERN_UNSTRUCTURED; p.ratio = cases[i].f; break;
        case 4: p.layer_end = cases[i].v; break;
        case 5: p.layer_begin = cases[i].v; p.layer_end = 1; break;
        case 6: p.method = cases[i].v; break;
        case 7: p.method = cases[i].v; break;
        case 8: p.lm_head_format = cases[i].v; break;
        case 9: p.struct_size = 1000; break;
        case 10: p = wanda_params(); p.calib_tokens = badtok; p.n_calib_tokens = 3; break;
        }
        assert_int_equal(mop_model_prune(m, &p), cases[i].want);
    }
    double sp;
    const char *fmt;
    assert_int_equal(mop_model_sparsity(m, &sp, &fmt), MOP_OK);
    assert_string_equal(fmt, "f32");
    assert_int_equal(mop_model_save(m, NULL), MOP_E_INVALID_ARG);
    mop_model_free(m);
}

/* ---- allocation failures ----------------------------------------------------- */

/* Every allocation of a Wanda prune (with a compact head) fails in turn: each
 * returns MOP_E_NOMEM, leaks nothing and leaves the model as it was. */
static void test_alloc_failures(void **state)
{
    (void)state;
    mop_allocator al = {failing_alloc, plain_free, NULL};
    alloc_limit = -1;
    assert_int_equal(mop_set_allocator(&al), MOP_OK);
    mop_model *m = load_tiny();
    float l0[NTOK * 32], l1[NTOK * 32];
    double p0, p1;
    run(m, l0, &p0);
    long base = mop_alloc_live();
    mop_prune_params p = wanda_params();
    p.lm_head_format = MOP_LM_HEAD_F16;
    int done = 0;
    for (long n = 0; n < 5000 && !done; n++) {
        alloc_count = 0;
        alloc_limit = n;
        mop_status st = mop_model_prune(m, &p);
        alloc_limit = -1;
        if (st == MOP_OK) {
            done = 1;
            break;
        }
        if (st != MOP_E_NOMEM)
            print_error("allocation %ld failed: %s\n", n, mop_last_error());
        assert_int_equal(st, MOP_E_NOMEM);
        assert_int_equal(mop_alloc_live(), base);
        for (int l = 0; l < 2; l++)
            for (int i = 0; i < 7; i++)
                assert_ptr_equal(linear(m, l, i)->ops, &mop_weight_dense_ops);
        assert_ptr_equal(m->lm_head.ops, &mop_weight_dense_ops);
        if (n % 16 == 0) {
            run(m, l1, &p1);
            assert_memory_equal(l0, l1, sizeof l0);
        }
    }
    assert_true(done);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
    assert_int_equal(mop_set_allocator(NULL), MOP_OK);
}

int main(int argc, char **argv)
{
    /* An argument is a cmocka name pattern, or "-pattern" for the tests to
     * leave out (tests/meson.build, suite `threads`, runs under TSan). */
    if (argc > 1) {
        if (argv[1][0] == '-')
            cmocka_set_skip_filter(argv[1] + 1);
        else
            cmocka_set_test_filter(argv[1]);
    }
    init_tokens();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tie_order),
        cmocka_unit_test(test_patterns_exact),
        cmocka_unit_test(test_magnitude_keeps_largest),
        cmocka_unit_test(test_wanda_order),
        cmocka_unit_test(test_sparsegpt_reconstruction),
        cmocka_unit_test(test_lm_head_formats),
        cmocka_unit_test(test_lm_head_wrap_rejects_nonfinite),
        cmocka_unit_test(test_format_version_checked),
        cmocka_unit_test(test_packed_equals_dense),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_state_and_params),
        cmocka_unit_test(test_alloc_failures),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (tiny_path[0])
        unlink(tiny_path);
    return rc;
}
