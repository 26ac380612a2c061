/* Activation backward kernels (src/core/backward.c, and the gate's softmax
 * and MLP in src/gate/gate_mlp.c) against central finite differences of
 * independent double-precision reference forwards.
 *
 * Method, for every kernel: master inputs live in double; the kernel gets a
 * float copy. The scalar loss is L = Σ r ⊙ f(x) with random r, f written here
 * naively in double. numeric_i = (L(x + h e_i) − L(x − h e_i)) / 2h with
 * h = 1e-3 (truncation error O(h²) ≈ 1e-6 relative). Tolerance for each
 * gradient entry: |analytic − numeric| <= FD_TOL · max(1, |numeric|); the
 * worst relative error per kernel is printed. Gradient buffers are pre-filled
 * with random values and the fill is subtracted afterwards, which checks that
 * the kernels accumulate (+=). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backward.h"
#include "gate/gate.h"

#define FD_H 1e-3
#define FD_TOL 1e-4

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rnd(void) /* uniform [-1, 1) */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}
static void fill(double *x, int64_t n, double scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = scale * rnd();
}
static float *to_f(const double *x, int64_t n)
{
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    for (int64_t i = 0; i < n; i++)
        f[i] = (float)x[i];
    return f;
}
static double *dalloc(int64_t n)
{
    return calloc((size_t)(n ? n : 1), sizeof(double));
}
/* gradient buffer pre-filled with random junk; *fill_out keeps a copy */
static float *grad_buf(int64_t n, float **fill_out)
{
    float *g = malloc((size_t)n * sizeof *g), *f = malloc((size_t)n * sizeof *f);
    for (int64_t i = 0; i < n; i++)
        g[i] = f[i] = (float)(0.5 * rnd());
    *fill_out = f;
    return g;
}
/* g -= fill, so g holds what the kernel added; frees fill */
static void unfill(float *g, float *fill_, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        g[i] -= fill_[i];
    free(fill_);
}

typedef double (*loss_fn)(void *ctx);

/* Compare analytic (n) with central differences of loss(ctx) in x (n).
 * Returns the worst |a − num| / max(1, |num|). */
static double fd_check(const char *what, double *x, int64_t n, const float *analytic,
                       loss_fn loss, void *ctx)
{
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double lp = loss(ctx);
        x[i] = x0 - FD_H;
        double lm = loss(ctx);
        x[i] = x0;
        double num = (lp - lm) / (2.0 * FD_H);
        double err = fabs((double)analytic[i] - num) / fmax(1.0, fabs(num));
        if (err > worst)
            worst = err;
        if (err > FD_TOL)
            fail_msg("%s[%lld]: analytic %.8g numeric %.8g (rel err %.3g > %.1g)", what,
                     (long long)i, (double)analytic[i], num, err, FD_TOL);
    }
    print_message("  %-28s n=%-4lld worst rel err %.2e\n", what, (long long)n, worst);
    return worst;
}

static double dot_r(const double *r, const double *y, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += r[i] * y[i];
    return s;
}

/* ---- RMSNorm ------------------------------------------------------------ */

typedef struct {
    double *x, *w, *r, *y;
    int64_t T;
    int d;
    double eps;
} rms_ctx;

static void rmsnorm_ref(double *y, const double *x, const double *w, int64_t T, int d,
                        double eps)
{
    for (int64_t t = 0; t < T; t++) {
        double ss = 0.0;
        for (int i = 0; i < d; i++)
            ss += x[t * d + i] * x[t * d + i];
        double rs = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++)
            y[t * d + i] = x[t * d + i] * rs * w[i];
    }
}
static double rms_loss(void *p)
{
    rms_ctx *c = p;
    rmsnorm_ref(c->y, c->x, c->w, c->T, c->d, c->eps);
    return dot_r(c->r, c->y, c->T * c->d);
}

static void test_rmsnorm_backward(void **state)
{
    (void)state;
    int64_t T = 5;
    int d = 7;
    rms_ctx c = {dalloc(T * d), dalloc(d), dalloc(T * d), dalloc(T * d), T, d, 1e-5};
    fill(c.x, T * d, 2.0);
    for (int i = 0; i < d; i++)
        c.w[i] = 1.0 + 0.5 * rnd();
    fill(c.r, T * d, 1.0);
    c.x[3] = 1e-3; /* one small row entry: nothing special expected */
    float *xf = to_f(c.x, T * d), *wf = to_f(c.w, d), *dyf = to_f(c.r, T * d), *f0;
    float *dx = grad_buf(T * d, &f0);
    rmsnorm_backward(dx, dyf, xf, wf, T, d, (float)c.eps);
    unfill(dx, f0, T * d);
    fd_check("rmsnorm dx", c.x, T * d, dx, rms_loss, &c);
    free(xf), free(wf), free(dyf), free(dx);
    free(c.x), free(c.w), free(c.r), free(c.y);
}

/* ---- RoPE --------------------------------------------------------------- */

/* Reference forward in double: adjacent pairs (x[2i], x[2i+1]) of each head
 * turn by pos·pos_scale·inv_freq[i]; dims >= n_rot pass through. */
static void rope_forward_ref(double *y, const double *x, const int32_t *pos, int64_t T,
                             int n_heads, int head_dim, int n_rot, const float *inv_freq,
                             float pos_scale)
{
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            int64_t o = (t * n_heads + h) * (int64_t)head_dim;
            for (int i = 0; i < head_dim; i++)
                y[o + i] = x[o + i];
            for (int i = 0; i < n_rot / 2; i++) {
                double a = (double)pos[t] * (double)pos_scale * (double)inv_freq[i];
                double x0 = x[o + 2 * i], x1 = x[o + 2 * i + 1];
                y[o + 2 * i] = x0 * cos(a) - x1 * sin(a);
                y[o + 2 * i + 1] = x0 * sin(a) + x1 * cos(a);
            }
        }
}

typedef struct {
    double *x, *r, *y;
    const int32_t *pos;
    const float *inv_freq;
    int64_t T;
    int nh, hd, nrot;
    float scale;
} rope_ctx;

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    rope_forward_ref(c->y, c->x, c->pos, c->T, c->nh, c->hd, c->nrot, c->inv_freq, c->scale);
    return dot_r(c->r, c->y, c->T * c->nh * c->hd);
}

static void test_rope_backward(void **state)
{
    (void)state;
    enum { T = 5, NH = 3, HD = 8, NROT = 6 };
    /* negative positions: prompts sit at −K·P..−1 */
    const int32_t pos[T] = {-6, -1, 0, 3, 1000};
    float inv_freq[NROT / 2];
    for (int i = 0; i < NROT / 2; i++)
        inv_freq[i] = (float)pow(1e5, -2.0 * i / NROT);
    const float scales[2] = {1.0f, 0.25f};
    for (int si = 0; si < 2; si++) {
        int64_t n = (int64_t)T * NH * HD;
        rope_ctx c = {dalloc(n), dalloc(n), dalloc(n), pos, inv_freq, T, NH, HD, NROT, scales[si]};
        fill(c.x, n, 1.0);
        fill(c.r, n, 1.0);
        float *dyf = to_f(c.r, n), *f0;
        float *dx = grad_buf(n, &f0);
        rope_backward(dx, dyf, pos, T, NH, HD, NROT, inv_freq, c.scale);
        unfill(dx, f0, n);
        fd_check(si ? "rope dx (pos_scale 0.25)" : "rope dx", c.x, n, dx, rope_loss, &c);
        /* backward of forward is the identity (rotation is orthogonal) */
        rope_forward_ref(c.y, c.x, pos, T, NH, HD, NROT, inv_freq, c.scale);
        float *yf = to_f(c.y, n);
        float *back = calloc((size_t)n, sizeof *back);
        rope_backward(back, yf, pos, T, NH, HD, NROT, inv_freq, c.scale);
        for (int64_t i = 0; i < n; i++)
            assert_true(fabs(back[i] - c.x[i]) <= 1e-5);
        /* untouched dims pass dy through exactly (into a zeroed buffer) */
        memset(back, 0, (size_t)n * sizeof *back);
        rope_backward(back, dyf, pos, T, NH, HD, NROT, inv_freq, c.scale);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int i = NROT; i < HD; i++) {
                    int64_t o = ((int64_t)t * NH + h) * HD + i;
                    assert_true(back[o] == dyf[o]);
                }
        free(yf), free(back), free(dyf), free(dx);
        free(c.x), free(c.r), free(c.y);
    }
}

/* ---- SwiGLU ------------------------------------------------------------- */

typedef struct {
    double *g, *u, *r;
    int64_t n;
} swiglu_ctx;

static double swiglu_loss(void *p)
{
    swiglu_ctx *c = p;
    double L = 0.0;
    for (int64_t i = 0; i < c->n; i++)
        L += c->r[i] * c->g[i] / (1.0 + exp(-c->g[i])) * c->u[i];
    return L;
}

static void test_swiglu_backward(void **state)
{
    (void)state;
    int64_t n = 13;
    swiglu_ctx c = {dalloc(n), dalloc(n), dalloc(n), n};
    fill(c.g, n, 4.0);
    fill(c.u, n, 2.0);
    fill(c.r, n, 1.0);
    c.g[0] = -12.0; /* saturated sigmoid on both sides */
    c.g[1] = 12.0;
    float *gf = to_f(c.g, n), *uf = to_f(c.u, n), *dhf = to_f(c.r, n), *f0, *f1;
    float *dg = grad_buf(n, &f0), *du = grad_buf(n, &f1);
    swiglu_backward(dg, du, dhf, gf, uf, n);
    unfill(dg, f0, n);
    unfill(du, f1, n);
    fd_check("swiglu dgate", c.g, n, dg, swiglu_loss, &c);
    fd_check("swiglu dup", c.u, n, du, swiglu_loss, &c);
    free(gf), free(uf), free(dhf), free(dg), free(du);
    free(c.g), free(c.u), free(c.r);
}

/* ---- Attention ---------------------------------------------------------- */

/* Naive double forward with an explicit mask over all n_prefix + T keys.
 * lse (T, n_head) optional. */
static void attention_ref(double *out, double *lse, const double *q, const double *k,
                          const double *v, const double *bias, int64_t T, int64_t P,
                          int nh, int nkv, int hd)
{
    int64_t nk = P + T;
    double *s = dalloc(nk);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            int kvh = h / (nh / nkv);
            double mx = -INFINITY;
            for (int64_t j = 0; j < nk; j++) {
                int allowed = j < P || (j - P) <= t;
                if (!allowed) {
                    s[j] = -INFINITY;
                    continue;
                }
                double dot = 0.0;
                for (int i = 0; i < hd; i++)
                    dot += q[(t * nh + h) * hd + i] * k[(j * nkv + kvh) * hd + i];
                s[j] = dot / sqrt((double)hd) + (j < P && bias ? bias[j] : 0.0);
                mx = fmax(mx, s[j]);
            }
            double sum = 0.0;
            for (int64_t j = 0; j < nk; j++)
                sum += exp(s[j] - mx); /* exp(-inf) = 0 for masked keys */
            if (lse)
                lse[t * nh + h] = mx + log(sum);
            for (int i = 0; i < hd; i++) {
                double o = 0.0;
                for (int64_t j = 0; j < nk; j++)
                    o += exp(s[j] - mx) / sum * v[(j * nkv + kvh) * hd + i];
                out[(t * nh + h) * hd + i] = o;
            }
        }
    free(s);
}

typedef struct {
    double *q, *k, *v, *bias, *r, *out;
    int64_t T, P;
    int nh, nkv, hd;
} attn_ctx;

static double attn_loss(void *p)
{
    attn_ctx *c = p;
    attention_ref(c->out, NULL, c->q, c->k, c->v, c->bias, c->T, c->P, c->nh, c->nkv, c->hd);
    return dot_r(c->r, c->out, c->T * c->nh * c->hd);
}

/* with_bias: 0 = kernel gets bias NULL (reference uses zeros; dbias is still
 * checked against FD at bias = 0). use_lse: backward given the forward's lse. */
static void attention_case(int64_t T, int64_t P, int nh, int nkv, int hd, int with_bias,
                           int use_lse, const char *name)
{
    int64_t nq = T * nh * hd, nkvn = (P + T) * nkv * hd;
    attn_ctx c = {dalloc(nq), dalloc(nkvn), dalloc(nkvn), dalloc(P), dalloc(nq), dalloc(nq),
                  T, P, nh, nkv, hd};
    fill(c.q, nq, 1.5);
    fill(c.k, nkvn, 1.5);
    fill(c.v, nkvn, 1.0);
    if (with_bias)
        for (int64_t j = 0; j < P; j++)
            c.bias[j] = log(0.05 + 0.9 * (0.5 + 0.5 * rnd())); /* log w_k-like, negative */
    fill(c.r, nq, 1.0);
    float *qf = to_f(c.q, nq), *kf = to_f(c.k, nkvn), *vf = to_f(c.v, nkvn);
    float *bf = with_bias ? to_f(c.bias, P) : NULL;
    float *scratch = malloc((size_t)attention_backward_scratch(P + T, nh, hd) * sizeof(float));

    /* forward against the naive loop */
    float *outf = malloc((size_t)nq * sizeof(float)), *lsef = malloc((size_t)(T * nh) * sizeof(float));
    double *lsed = dalloc(T * nh);
    attention_forward_lse(outf, lsef, scratch, qf, kf, vf, bf, T, P, nh, nkv, hd);
    attention_ref(c.out, lsed, c.q, c.k, c.v, c.bias, T, P, nh, nkv, hd);
    double fw = 0.0;
    for (int64_t i = 0; i < nq; i++)
        fw = fmax(fw, fabs(outf[i] - c.out[i]));
    for (int64_t i = 0; i < T * nh; i++)
        fw = fmax(fw, fabs(lsef[i] - lsed[i]) / fmax(1.0, fabs(lsed[i])));
    print_message("  %-28s forward max err vs naive %.2e\n", name, fw);
    assert_true(fw <= 1e-5);

    /* backward */
    float *doutf = to_f(c.r, nq), *f0, *f1, *f2, *f3;
    float *dq = grad_buf(nq, &f0), *dk = grad_buf(nkvn, &f1), *dv = grad_buf(nkvn, &f2);
    float *db = P ? grad_buf(P, &f3) : NULL;
    attention_backward(dq, dk, dv, db, scratch, doutf, qf, kf, vf, use_lse ? lsef : NULL, bf, T,
                       P, nh, nkv, hd, NULL);
    unfill(dq, f0, nq);
    unfill(dk, f1, nkvn);
    unfill(dv, f2, nkvn);
    char lab[96];
    snprintf(lab, sizeof lab, "%s dq", name);
    fd_check(lab, c.q, nq, dq, attn_loss, &c);
    snprintf(lab, sizeof lab, "%s dk", name);
    fd_check(lab, c.k, nkvn, dk, attn_loss, &c);
    snprintf(lab, sizeof lab, "%s dv", name);
    fd_check(lab, c.v, nkvn, dv, attn_loss, &c);
    if (P) {
        unfill(db, f3, P);
        snprintf(lab, sizeof lab, "%s dbias", name);
        fd_check(lab, c.bias, P, db, attn_loss, &c);
    }
    free(qf), free(kf), free(vf), free(bf), free(scratch), free(outf), free(lsef), free(lsed);
    free(doutf), free(dq), free(dk), free(dv), free(db);
    free(c.q), free(c.k), free(c.v), free(c.bias), free(c.r), free(c.out);
}

static void test_attention_prefix_bias_gqa(void **state)
{
    (void)state;
    attention_case(6, 4, 4, 2, 6, 1, 1, "attn P=4 bias gqa lse");
    attention_case(6, 4, 4, 2, 6, 1, 0, "attn P=4 bias gqa recompute");
    /* head_dim 16: the AVX2 inner loops (when the CPU has them) */
    attention_case(6, 4, 4, 2, 16, 1, 1, "attn P=4 bias gqa hd16 lse");
}

static void test_attention_prefix_no_bias(void **state)
{
    (void)state;
    attention_case(6, 4, 4, 2, 6, 0, 1, "attn P=4 nobias gqa lse");
    attention_case(6, 4, 4, 4, 6, 0, 0, "attn P=4 nobias mha");
}

static void test_attention_causal_prompt(void **state)
{
    (void)state;
    /* the prompt sequence itself: plain causal self-attention, n_prefix = 0 */
    attention_case(7, 0, 4, 2, 6, 0, 1, "attn P=0 causal gqa");
    attention_case(5, 0, 3, 1, 4, 0, 0, "attn P=0 causal mqa");
}

/* Skipping dq/dk/dv (NULL) must not change the others. */
static void test_attention_null_outputs(void **state)
{
    (void)state;
    enum { T = 3, P = 2, NH = 2, NKV = 1, HD = 4 };
    int64_t nq = T * NH * HD, nk = (P + T) * NKV * HD;
    double qd[T * NH * HD], kd[(P + T) * NKV * HD], vd[(P + T) * NKV * HD], dd[T * NH * HD];
    fill(qd, nq, 1.0), fill(kd, nk, 1.0), fill(vd, nk, 1.0), fill(dd, nq, 1.0);
    float *q = to_f(qd, nq), *k = to_f(kd, nk), *v = to_f(vd, nk), *dout = to_f(dd, nq);
    float *scratch = malloc((size_t)attention_backward_scratch(P + T, NH, HD) * sizeof(float));
    float dq[T * NH * HD] = {0}, dk[(P + T) * NKV * HD] = {0}, dv[(P + T) * NKV * HD] = {0},
          db[P] = {0}, db2[P] = {0};
    attention_backward(dq, dk, dv, db, scratch, dout, q, k, v, NULL, NULL, T, P, NH, NKV, HD, NULL);
    float dq2[T * NH * HD] = {0};
    attention_backward(dq2, NULL, NULL, db2, scratch, dout, q, k, v, NULL, NULL, T, P, NH, NKV,
                       HD, NULL);
    assert_memory_equal(dq, dq2, sizeof dq);
    assert_memory_equal(db, db2, sizeof db);
    free(q), free(k), free(v), free(dout), free(scratch);
}

/* Large scores (|s| ~ 1e3): both backward paths stay finite and agree, and
 * the lse path reproduces the recomputed probabilities. */
static void attention_scores_case(double qk_scale)
{
    enum { T = 4, P = 3, NH = 2, NKV = 1, HD = 4 };
    int64_t nq = T * NH * HD, nk = (P + T) * NKV * HD;
    double qd[T * NH * HD], kd[(P + T) * NKV * HD], vd[(P + T) * NKV * HD], dd[T * NH * HD];
    fill(qd, nq, qk_scale), fill(kd, nk, qk_scale), fill(vd, nk, 1.0), fill(dd, nq, 1.0);
    const double bd[P] = {-50.0, 0.0, 30.0};
    float *q = to_f(qd, nq), *k = to_f(kd, nk), *v = to_f(vd, nk), *dout = to_f(dd, nq);
    float *b = to_f(bd, P);
    float *scratch = malloc((size_t)attention_backward_scratch(P + T, NH, HD) * sizeof(float));
    float out[T * NH * HD], lse[T * NH];
    attention_forward_lse(out, lse, scratch, q, k, v, b, T, P, NH, NKV, HD);
    float g1[3][T * NH * HD > (P + T) * NKV * HD ? T * NH * HD : (P + T) * NKV * HD];
    float g2[3][sizeof g1[0] / sizeof(float)], db1[P] = {0}, db2[P] = {0};
    memset(g1, 0, sizeof g1), memset(g2, 0, sizeof g2);
    attention_backward(g1[0], g1[1], g1[2], db1, scratch, dout, q, k, v, lse, b, T, P, NH, NKV, HD, NULL);
    attention_backward(g2[0], g2[1], g2[2], db2, scratch, dout, q, k, v, NULL, b, T, P, NH, NKV, HD, NULL);
    double worst = 0.0;
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < sizeof g1[0] / sizeof(float); i++) {
            assert_true(isfinite(g1[a][i]) && isfinite(g2[a][i]));
            worst = fmax(worst, fabs(g1[a][i] - g2[a][i]) / fmax(1.0, fabs(g2[a][i])));
        }
    for (int j = 0; j < P; j++)
        worst = fmax(worst, fabs(db1[j] - db2[j]) / fmax(1.0, fabs(db2[j])));
    print_message("  attn q,k scale %-13g lse vs recompute max rel diff %.2e\n", qk_scale, worst);
    assert_true(worst <= 1e-3);
    free(q), free(k), free(v), free(dout), free(b), free(scratch);
}

static void test_attention_large_scores(void **state)
{
    (void)state;
    attention_scores_case(5.0);  /* |s| ~ 10: soft rows */
    attention_scores_case(40.0); /* |s| ~ 1e3: saturated rows */
}

/* Split by head over a pool: the same bits as on the caller alone (each
 * head's dk, dv, dbias terms are summed into its own block, added in order). */
static void test_attention_backward_pool_independent(void **state)
{
    (void)state;
    enum { T = 9, P = 5, NH = 9, NKV = 3, HD = 64 };
    const int64_t nq = T * NH * HD, nk = (P + T) * NKV * HD;
    double *qd = dalloc(nq), *kd = dalloc(nk), *vd = dalloc(nk), *dd = dalloc(nq), bd[P];
    fill(qd, nq, 1.0), fill(kd, nk, 1.0), fill(vd, nk, 1.0), fill(dd, nq, 1.0);
    for (int j = 0; j < P; j++)
        bd[j] = -0.3 * j;
    float *q = to_f(qd, nq), *k = to_f(kd, nk), *v = to_f(vd, nk), *dout = to_f(dd, nq);
    float *b = to_f(bd, P);
    float *scratch = malloc((size_t)attention_backward_scratch(P + T, NH, HD) * sizeof(float));
    float *g[2][4];
    mop_pool *pool;
    assert_int_equal(mop_pool_create(2, &pool), MOP_OK);
    for (int r = 0; r < 2; r++) {
        g[r][0] = calloc((size_t)nq, sizeof(float));
        g[r][1] = calloc((size_t)nk, sizeof(float));
        g[r][2] = calloc((size_t)nk, sizeof(float));
        g[r][3] = calloc(P, sizeof(float));
        attention_backward(g[r][0], g[r][1], g[r][2], g[r][3], scratch, dout, q, k, v, NULL, b, T, P,
                           NH, NKV, HD, r ? pool : NULL);
    }
    assert_memory_equal(g[0][0], g[1][0], (size_t)nq * sizeof(float));
    assert_memory_equal(g[0][1], g[1][1], (size_t)nk * sizeof(float));
    assert_memory_equal(g[0][2], g[1][2], (size_t)nk * sizeof(float));
    assert_memory_equal(g[0][3], g[1][3], P * sizeof(float));
    for (int r = 0; r < 2; r++)
        for (int a = 0; a < 4; a++)
            free(g[r][a]);
    mop_pool_free(pool);
    free(qd), free(kd), free(vd), free(dd), free(q), free(k), free(v), free(dout), free(b),
        free(scratch);
}

/* ---- Cross-entropy ------------------------------------------------------ */

typedef struct {
    double *x;
    const int32_t *tg;
    int64_t T, V;
    double scale;
} ce_ctx;

static double ce_ref(void *p)
{
    ce_ctx *c = p;
    double L = 0.0;
    for (int64_t t = 0; t < c->T; t++) {
        if (c->tg[t] < 0)
            continue;
        const double *x = c->x + t * c->V;
        double mx = x[0];
        for (int64_t i = 1; i < c->V; i++)
            mx = fmax(mx, x[i]);
        double s = 0.0;
        for (int64_t i = 0; i < c->V; i++)
            s += exp(x[i] - mx);
        L += mx + log(s) - x[c->tg[t]];
    }
    return c->scale * L;
}

static void test_cross_entropy(void **state)
{
    (void)state;
    enum { T = 5, V = 11 };
    const int32_t tg[T] = {3, -1, 0, 10, -1};
    ce_ctx c = {dalloc(T * V), tg, T, V, 1.0 / 3.0};
    fill(c.x, T * V, 4.0);
    float *xf = to_f(c.x, T * V), *f0;
    float loss = -1.0f;
    cross_entropy_forward(&loss, xf, tg, T, V, (float)c.scale);
    double Lref = ce_ref(&c);
    print_message("  %-28s loss %.7f ref %.7f\n", "cross-entropy V=11", (double)loss, Lref);
    assert_true(fabs(loss - Lref) <= 1e-6 * fmax(1.0, fabs(Lref)));

    float *dx = grad_buf(T * V, &f0); /* junk must be overwritten, not added to */
    free(f0);
    cross_entropy_backward(dx, xf, tg, T, V, (float)c.scale);
    for (int i = 0; i < V; i++) { /* ignored rows are exactly zero */
        assert_true(dx[1 * V + i] == 0.0f);
        assert_true(dx[4 * V + i] == 0.0f);
    }
    fd_check("cross-entropy dlogits", c.x, T * V, dx, ce_ref, &c);

    /* in place */
    float *inpl = to_f(c.x, T * V);
    cross_entropy_backward(inpl, inpl, tg, T, V, (float)c.scale);
    assert_memory_equal(inpl, dx, (size_t)(T * V) * sizeof(float));
    free(inpl), free(xf), free(dx), free(c.x);
}

/* Vocabulary-sized rows: forward and softmax against double. */
static void test_cross_entropy_large_vocab(void **state)
{
    (void)state;
    enum { T = 3 };
    const int64_t V = 49152;
    const int32_t tg[T] = {12345, -1, 49151};
    ce_ctx c = {dalloc(T * V), tg, T, V, 0.5};
    fill(c.x, T * V, 10.0);
    float *xf = to_f(c.x, T * V), *dx = malloc((size_t)(T * V) * sizeof(float));
    float loss;
    cross_entropy_forward(&loss, xf, tg, T, V, 0.5f);
    double Lref = ce_ref(&c);
    assert_true(fabs(loss - Lref) <= 1e-6 * fmax(1.0, fabs(Lref)));
    cross_entropy_backward(dx, xf, tg, T, V, 0.5f);
    double worst = 0.0;
    for (int64_t t = 0; t < T; t++) {
        const double *x = c.x + t * V;
        double mx = x[0], s = 0.0, rowsum = 0.0;
        for (int64_t i = 1; i < V; i++)
            mx = fmax(mx, x[i]);
        for (int64_t i = 0; i < V; i++)
            s += exp(x[i] - mx);
        for (int64_t i = 0; i < V; i++) {
            double ref = tg[t] < 0 ? 0.0 : 0.5 * (exp(x[i] - mx) / s - (i == tg[t]));
            worst = fmax(worst, fabs(dx[t * V + i] - ref));
            rowsum += dx[t * V + i];
        }
        assert_true(fabs(rowsum) <= 1e-5);
    }
    print_message("  %-28s loss %.6f ref %.6f, max |d - ref| %.2e\n", "cross-entropy V=49152",
                  (double)loss, Lref, worst);
    assert_true(worst <= 1e-7);
    free(xf), free(dx), free(c.x);
}

/* ---- Gate softmax ------------------------------------------------------- */

typedef struct {
    double *z, *G, *r;
    int64_t B;
    int K;
    double tau;
    int mode; /* 0: L = Σ G log w; 1: L = Σ r w */
} gs_ctx;

static void softmax_tau_ref(double *w, const double *z, int K, double tau)
{
    double mx = z[0] / tau, s = 0.0;
    for (int k = 1; k < K; k++)
        mx = fmax(mx, z[k] / tau);
    for (int k = 0; k < K; k++)
        s += (w[k] = exp(z[k] / tau - mx));
    for (int k = 0; k < K; k++)
        w[k] /= s;
}

static double gs_loss(void *p)
{
    gs_ctx *c = p;
    double L = 0.0, w[16];
    for (int64_t b = 0; b < c->B; b++) {
        softmax_tau_ref(w, c->z + b * c->K, c->K, c->tau);
        for (int k = 0; k < c->K; k++)
            L += c->mode ? c->r[b * c->K + k] * w[k] : c->G[b * c->K + k] * log(w[k]);
    }
    return L;
}

static void test_gate_softmax_backward(void **state)
{
    (void)state;
    enum { B = 2, K = 4 };
    gs_ctx c = {dalloc(B * K), dalloc(B * K), dalloc(B * K), B, K, 0.7, 0};
    fill(c.z, B * K, 2.0);
    fill(c.G, B * K, 1.0);
    fill(c.r, B * K, 1.0);
    double w[B * K];
    for (int b = 0; b < B; b++)
        softmax_tau_ref(w + b * K, c.z + b * K, K, c.tau);
    float *wf = to_f(w, B * K), *Gf = to_f(c.G, B * K), *rf = to_f(c.r, B * K), *f0, *f1;
    float *dz = grad_buf(B * K, &f0), *dz2 = grad_buf(B * K, &f1);
    gate_softmax_backward(dz, Gf, wf, B, K, (float)c.tau);
    unfill(dz, f0, B * K);
    fd_check("gate softmax dz (G)", c.z, B * K, dz, gs_loss, &c);
    c.mode = 1;
    gate_softmax_backward_dw(dz2, rf, wf, B, K, (float)c.tau);
    unfill(dz2, f1, B * K);
    fd_check("gate softmax dz (dw)", c.z, B * K, dz2, gs_loss, &c);
    free(wf), free(Gf), free(rf), free(dz), free(dz2);
    free(c.z), free(c.G), free(c.r);
}

/* ---- Gate MLP ----------------------------------------------------------- */

typedef struct {
    double *W1, *b1, *W2, *b2, *u, *r, *a, *z;
    int64_t B;
    int d, h, K, act;
} mlp_ctx;

static double act_ref(double a, int act)
{
    if (act == MOP_GATE_ACT_RELU)
        return a > 0 ? a : 0;
    return 0.5 * a * (1.0 + tanh(sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a)));
}

static void mlp_ref(mlp_ctx *c)
{
    for (int64_t b = 0; b < c->B; b++) {
        for (int j = 0; j < c->h; j++) {
            double s = c->b1[j];
            for (int i = 0; i < c->d; i++)
                s += c->W1[j * c->d + i] * c->u[b * c->d + i];
            c->a[b * c->h + j] = s;
        }
        for (int m = 0; m < c->K; m++) {
            double s = c->b2[m];
            for (int j = 0; j < c->h; j++)
                s += c->W2[m * c->h + j] * act_ref(c->a[b * c->h + j], c->act);
            c->z[b * c->K + m] = s;
        }
    }
}

static double mlp_loss(void *p)
{
    mlp_ctx *c = p;
    mlp_ref(c);
    return dot_r(c->r, c->z, c->B * c->K);
}

static void gate_mlp_case(int act)
{
    enum { B = 3, D = 5, H = 4, K = 3 };
    mlp_ctx c = {dalloc(H * D), dalloc(H), dalloc(K * H), dalloc(K), dalloc(B * D),
                 dalloc(B * K), dalloc(B * H), dalloc(B * K), B, D, H, K, act};
    /* ReLU: redraw until no pre-activation lies within 0.05 of the kink */
    for (;;) {
        fill(c.W1, H * D, 1.0), fill(c.b1, H, 0.5), fill(c.W2, K * H, 1.0), fill(c.b2, K, 0.5);
        fill(c.u, B * D, 1.0), fill(c.r, B * K, 1.0);
        mlp_ref(&c);
        double mn = INFINITY;
        for (int i = 0; i < B * H; i++)
            mn = fmin(mn, fabs(c.a[i]));
        if (act != MOP_GATE_ACT_RELU || mn > 0.05)
            break;
    }
    float *W1f = to_f(c.W1, H * D), *W2f = to_f(c.W2, K * H), *uf = to_f(c.u, B * D);
    float *af = to_f(c.a, B * H), *dzf = to_f(c.r, B * K), *f[5];
    float *dW1 = grad_buf(H * D, &f[0]), *db1 = grad_buf(H, &f[1]), *dW2 = grad_buf(K * H, &f[2]),
          *db2 = grad_buf(K, &f[3]), *du = grad_buf(B * D, &f[4]);
    gate_mlp_backward(dW1, db1, dW2, db2, du, dzf, uf, af, W1f, W2f, B, D, H, K, act);
    unfill(dW1, f[0], H * D), unfill(db1, f[1], H), unfill(dW2, f[2], K * H);
    unfill(db2, f[3], K), unfill(du, f[4], B * D);
    const char *an = act == MOP_GATE_ACT_RELU ? "relu" : "gelu";
    char lab[64];
    snprintf(lab, sizeof lab, "gate mlp %s dW1", an);
    fd_check(lab, c.W1, H * D, dW1, mlp_loss, &c);
    snprintf(lab, sizeof lab, "gate mlp %s db1", an);
    fd_check(lab, c.b1, H, db1, mlp_loss, &c);
    snprintf(lab, sizeof lab, "gate mlp %s dW2", an);
    fd_check(lab, c.W2, K * H, dW2, mlp_loss, &c);
    snprintf(lab, sizeof lab, "gate mlp %s db2", an);
    fd_check(lab, c.b2, K, db2, mlp_loss, &c);
    snprintf(lab, sizeof lab, "gate mlp %s du", an);
    fd_check(lab, c.u, B * D, du, mlp_loss, &c);
    free(W1f), free(W2f), free(uf), free(af), free(dzf);
    free(dW1), free(db1), free(dW2), free(db2), free(du);
    free(c.W1), free(c.b1), free(c.W2), free(c.b2), free(c.u), free(c.r), free(c.a), free(c.z);
}

static void test_gate_mlp_backward(void **state)
{
    (void)state;
    gate_mlp_case(MOP_GATE_ACT_GELU);
    gate_mlp_case(MOP_GATE_ACT_RELU);
}

/* ---- Chain: gate logits → log w_k bias → attention ----------------------
 * K groups of P_k prompt keys; bias[j] = log w_{j / P_k}. G_k = Σ over group
 * k of dbias, then dz = gate_softmax_backward(G). Checked against FD in z. */
typedef struct {
    attn_ctx a;
    double *z;
    int K, Pk;
    double tau;
} chain_ctx;

static double chain_loss(void *p)
{
    chain_ctx *c = p;
    double w[8];
    softmax_tau_ref(w, c->z, c->K, c->tau);
    for (int j = 0; j < c->K * c->Pk; j++)
        c->a.bias[j] = log(w[j / c->Pk]);
    return attn_loss(&c->a);
}

static void test_chain_gate_through_attention(void **state)
{
    (void)state;
    enum { K = 3, PK = 2, P = K * PK, T = 4, NH = 4, NKV = 2, HD = 6 };
    int64_t nq = T * NH * HD, nkvn = (P + T) * NKV * HD;
    chain_ctx c = {{dalloc(nq), dalloc(nkvn), dalloc(nkvn), dalloc(P), dalloc(nq), dalloc(nq), T,
                    P, NH, NKV, HD},
                   dalloc(K), K, PK, 0.8};
    fill(c.a.q, nq, 1.5), fill(c.a.k, nkvn, 1.5), fill(c.a.v, nkvn, 1.0), fill(c.a.r, nq, 1.0);
    fill(c.z, K, 1.5);
    chain_loss(&c); /* sets bias */
    double w[K];
    softmax_tau_ref(w, c.z, K, c.tau);
    float *qf = to_f(c.a.q, nq), *kf = to_f(c.a.k, nkvn), *vf = to_f(c.a.v, nkvn);
    float *bf = to_f(c.a.bias, P), *dout = to_f(c.a.r, nq), *wf = to_f(w, K);
    float *scratch = malloc((size_t)attention_backward_scratch(P + T, NH, HD) * sizeof(float));
    float dbias[P] = {0}, G[K] = {0}, dz[K] = {0};
    attention_backward(NULL, NULL, NULL, dbias, scratch, dout, qf, kf, vf, NULL, bf, T, P, NH, NKV,
                       HD, NULL);
    for (int j = 0; j < P; j++)
        G[j / PK] += dbias[j];
    gate_softmax_backward(dz, G, wf, 1, K, (float)c.tau);
    fd_check("chain z -> log w -> attention", c.z, K, dz, chain_loss, &c);
    free(qf), free(kf), free(vf), free(bf), free(dout), free(wf), free(scratch);
    free(c.a.q), free(c.a.k), free(c.a.v), free(c.a.bias), free(c.a.r), free(c.a.out), free(c.z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_backward),
        cmocka_unit_test(test_rope_backward),
        cmocka_unit_test(test_swiglu_backward),
        cmocka_unit_test(test_attention_prefix_bias_gqa),
        cmocka_unit_test(test_attention_prefix_no_bias),
        cmocka_unit_test(test_attention_causal_prompt),
        cmocka_unit_test(test_attention_null_outputs),
        cmocka_unit_test(test_attention_large_scores),
        cmocka_unit_test(test_attention_backward_pool_independent),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_large_vocab),
        cmocka_unit_test(test_gate_softmax_backward),
        cmocka_unit_test(test_gate_mlp_backward),
        cmocka_unit_test(test_chain_gate_through_attention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
