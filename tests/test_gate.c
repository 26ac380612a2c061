/* Prompt mixtures on a tiny random Llama built in memory: finite-difference
 * checks of every parameter gradient in each mode, cache and batching
 * invariances, save/load, argument checks and allocation failures.
 *
 * Finite differences: central, step FD_H = 1e-2 on every parameter, loss in
 * double from libmop's float forward. Per tensor, max |fd − grad| must be
 * <= FD_TOL · max |grad| of that tensor (FD_TOL = 1e-2): the truncation error
 * of the step is O(h²) ≈ 1e-4 relative and float rounding of the loss
 * (≈ 1e-6) gives ≈ 1e-4 / max|grad| after dividing by 2h, so a wrong sign,
 * factor or missing term (errors of 10% and more) fails while rounding does
 * not. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "forward.h"
#include "gate/gate.h"
#include "internal.h"
#include "libmop/mop_gate.h"
#include "model.h"
#include "tiny_model.h"

#define FD_H 1e-2
#define FD_TOL 1e-2

/* ---- the tiny model (tests/tiny_model.h) ------------------------------------- */

enum { TL = 4 }; /* blocks */

static int32_t ctx_threads = 2;

/* A context of the model's full length with ctx_threads threads. */
static mop_ctx *gate_ctx(mop_model *m, int32_t n_batch)
{
    return tiny_ctx(m, TCTX, n_batch, ctx_threads);
}

/* A mixture with random (non-uniform, tie-free) parameters. */
static mop_mixture *tiny_mixture(mop_model *m, int32_t combine, int32_t top_k, int32_t gate_mode,
                                 int32_t act)
{
    mop_mixture_params p;
    mop_mixture_params_init(&p);
    p.n_experts = 4;
    p.prompt_len = 2;
    p.gate_layer = 1;
    p.inject_layer = 2;
    p.gate_hidden = 8;
    p.gate_act = act;
    p.gate_temperature = 0.7f;
    p.top_k = top_k;
    p.combine = combine;
    p.gate_mode = gate_mode;
    mop_mixture *mx = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &mx), MOP_OK);
    float *par, *grad;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, &grad, &n), MOP_OK);
    assert_int_equal(n, mop_mixture_n_params(mx));
    fill(par, n, 0.6f);
    return mx;
}

/* Batch: B = 3 sequences padded to T = 9 with a loss mask and task labels. */
enum { BB = 3, BT = 9 };
static int32_t g_tok[BB * BT], g_len[BB] = {9, 6, 4}, g_task[BB] = {1, 3, 0};
static uint8_t g_mask[BB * BT];

static mop_batch tiny_batch(void)
{
    for (int i = 0; i < BB * BT; i++) {
        g_tok[i] = (int32_t)((frand() + 1.0f) * 0.5f * TV) % TV;
        g_mask[i] = (uint8_t)(i % BT >= 2 && i % 5 != 0);
    }
    mop_batch b = {.struct_size = sizeof b, .n_seq = BB, .seq_len = BT, .tokens = g_tok,
                   .lengths = g_len, .loss_mask = g_mask, .task = g_task};
    return b;
}

static double fb_loss(mop_ctx *c, mop_mixture *mx, const mop_batch *b, const mop_loss_params *lp)
{
    mop_loss_result r = {.struct_size = sizeof r};
    assert_int_equal(mop_mixture_forward_backward(c, mx, b, lp, &r), MOP_OK);
    return r.loss;
}

/* Central differences of the loss against the analytic gradient, per tensor. */
static void check_grads(mop_ctx *c, mop_mixture *mx, const mop_batch *b, const mop_loss_params *lp,
                        const char *what)
{
    float *par, *grad;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, &grad, &n), MOP_OK);
    mop_mixture_zero_grad(mx);
    fb_loss(c, mx, b, lp);
    float *g = malloc(n * sizeof(float));
    assert_non_null(g);
    memcpy(g, grad, n * sizeof(float));
    for (int32_t t = 0; t < mop_mixture_tensor_count(mx); t++) {
        mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
        assert_int_equal(mop_mixture_tensor_get_info(mx, t, &ti), MOP_OK);
        double gmax = 0.0, emax = 0.0;
        for (size_t i = ti.offset; i < ti.offset + ti.size; i++) {
            float keep = par[i];
            par[i] = keep + (float)FD_H;
            double lp1 = fb_loss(c, mx, b, lp);
            par[i] = keep - (float)FD_H;
            double lm1 = fb_loss(c, mx, b, lp);
            par[i] = keep;
            double fd = (lp1 - lm1) / (2.0 * FD_H);
            gmax = fmax(gmax, fabs(g[i]));
            emax = fmax(emax, fabs(fd - g[i]));
        }
        print_message("  %-28s %-8s max|grad| %.3e  max|fd-grad| %.3e  rel %.2e\n", what, ti.name,
                      gmax, emax, gmax > 0 ? emax / gmax : 0.0);
        if (lp && lp->gate_only && t == GATE_T_EXPERTS) {
            assert_true(gmax == 0.0 && emax == 0.0); /* nothing above L_g runs */
            continue;
        }
        assert_true(gmax > 1e-6); /* every tensor receives a gradient */
        assert_true(emax <= FD_TOL * gmax);
    }
    free(g);
    mop_mixture_zero_grad(mx);
}

/* ---- gradients ------------------------------------------------------------- */

static void fd_case(int32_t combine, int32_t top_k, int32_t gate_mode, int32_t act,
                    const mop_loss_params *lp, const char *what)
{
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = tiny_mixture(m, combine, top_k, gate_mode, act);
    mop_batch b = tiny_batch();
    check_grads(c, mx, &b, lp, what);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

static void test_fd_attention_bias(void **state)
{
    (void)state;
    fd_case(MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU, NULL, "bias");
    fd_case(MOP_COMBINE_ATTENTION_BIAS, 2, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU, NULL,
            "bias top2");
    fd_case(MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_UNIFORM, MOP_GATE_ACT_GELU, NULL,
            "bias uniform");
}

static void test_fd_weighted_sum(void **state)
{
    (void)state;
    fd_case(MOP_COMBINE_WEIGHTED_SUM, 0, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU, NULL, "wsum");
    /* GELU: a central difference across a ReLU kink would measure nothing */
    fd_case(MOP_COMBINE_WEIGHTED_SUM, 2, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU, NULL,
            "wsum top2");
    fd_case(MOP_COMBINE_WEIGHTED_SUM, 0, MOP_GATE_UNIFORM, MOP_GATE_ACT_GELU, NULL,
            "wsum uniform");
}

static void test_fd_loss_terms(void **state)
{
    (void)state;
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    lp.load_balance = 0.5f;
    lp.gate_supervision = 0.7f;
    fd_case(MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU, &lp,
            "bias +lb +sup");
    lp.gate_only = 1;
    fd_case(MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU, &lp,
            "gate only (lb + sup)");
}

/* FedProx: the term and its gradient mu (θ − θ_ref), exactly. */
static void test_prox(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = tiny_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED,
                                   MOP_GATE_ACT_GELU);
    mop_batch b = tiny_batch();
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    lp.prox_mu = 0.3f;
    mop_loss_result r = {.struct_size = sizeof r};
    assert_int_equal(mop_mixture_forward_backward(c, mx, &b, &lp, &r), MOP_E_STATE);
    assert_int_equal(mop_mixture_set_prox_reference(mx), MOP_OK);
    float *par, *grad;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, &grad, &n), MOP_OK);
    float *g0 = malloc(n * sizeof(float)), *delta = malloc(n * sizeof(float));
    lp.prox_mu = 0.0f;
    double l0 = fb_loss(c, mx, &b, &lp);
    memcpy(g0, grad, n * sizeof(float));
    /* at θ = θ_ref the term is 0 */
    lp.prox_mu = 0.3f;
    mop_mixture_zero_grad(mx);
    assert_true(fabs(fb_loss(c, mx, &b, &lp) - l0) == 0.0);
    for (size_t i = 0; i < n; i++)
        assert_true(grad[i] == g0[i]);
    check_grads(c, mx, &b, &lp, "bias +prox");
    free(g0);
    free(delta);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* ---- invariances ----------------------------------------------------------- */

/* The same sequences padded to T = 9 and to T = 20 with junk: same loss and
 * gradients, bit for bit (sequences are processed at their real length). */
static void test_padding_invariance(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 20);
    for (int mode = 0; mode < 2; mode++) {
        mop_mixture *mx = tiny_mixture(m, mode, 0, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU);
        mop_batch b = tiny_batch();
        enum { T2 = 20 };
        int32_t tok2[BB * T2];
        uint8_t mask2[BB * T2];
        for (int s = 0; s < BB; s++)
            for (int t = 0; t < T2; t++) {
                tok2[s * T2 + t] = t < BT ? g_tok[s * BT + t] : (t * 7 + s) % TV;
                mask2[s * T2 + t] = t < BT ? g_mask[s * BT + t] : 1;
            }
        for (int s = 0; s < BB; s++) /* junk inside the first padding too */
            for (int t = g_len[s]; t < BT; t++)
                tok2[s * T2 + t] = (t * 3 + 1) % TV;
        mop_batch b2 = b;
        b2.seq_len = T2;
        b2.tokens = tok2;
        b2.loss_mask = mask2;
        float *par, *grad;
        size_t n;
        assert_int_equal(mop_mixture_data(mx, &par, &grad, &n), MOP_OK);
        mop_loss_params lp;
        mop_loss_params_init(&lp);
        lp.load_balance = 0.1f;
        lp.gate_supervision = 0.1f;
        mop_mixture_zero_grad(mx);
        mop_loss_result r1 = {.struct_size = sizeof r1}, r2 = {.struct_size = sizeof r2};
        assert_int_equal(mop_mixture_forward_backward(c, mx, &b, &lp, &r1), MOP_OK);
        float *g1 = malloc(n * sizeof(float));
        memcpy(g1, grad, n * sizeof(float));
        mop_mixture_zero_grad(mx);
        assert_int_equal(mop_mixture_forward_backward(c, mx, &b2, &lp, &r2), MOP_OK);
        assert_true(r1.loss == r2.loss);
        assert_true(r1.nll_sum == r2.nll_sum);
        assert_int_equal(r1.n_targets, r2.n_targets);
        assert_memory_equal(g1, grad, n * sizeof(float));
        /* accumulation: a second call adds the same gradient again */
        assert_int_equal(mop_mixture_forward_backward(c, mx, &b2, &lp, &r2), MOP_OK);
        /* sums land in the buffer term by term: equal up to float rounding */
        float gmax = 0.0f;
        for (size_t i = 0; i < n; i++)
            gmax = fmaxf(gmax, fabsf(g1[i]));
        for (size_t i = 0; i < n; i++)
            if (fabsf(grad[i] - 2.0f * g1[i]) > 1e-6f * gmax)
                fail_msg("mode %d: grad[%zu] = %.9g after two calls, one call gave %.9g", mode,
                         i, (double)grad[i], (double)g1[i]);
        free(g1);
        mop_mixture_free(mx);
    }
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Evaluation with the prompt K/V computed per call equals evaluation with
 * the prepared cache, exactly; a parameter change invalidates the cache. */
static void test_cache_matches_uncached(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = tiny_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED,
                                   MOP_GATE_ACT_GELU);
    mop_batch b = tiny_batch();
    const mop_mixture *list[1] = {mx};
    double nll1[BB], nll2[BB], nll3[BB];
    int32_t nt[BB];
    float w1[BB * 4], w2[BB * 4];
    assert_int_equal(mop_mixture_evaluate(c, list, 1, &b, nll1, nt, w1), MOP_OK);
    assert_false(gate_cache_fresh(mx));
    assert_int_equal(mop_mixture_prepare(c, mx), MOP_OK);
    assert_true(gate_cache_fresh(mx));
    assert_int_equal(mop_mixture_evaluate(c, list, 1, &b, nll2, nt, w2), MOP_OK);
    assert_memory_equal(nll1, nll2, sizeof nll1);
    assert_memory_equal(w1, w2, sizeof w1);
    /* the gate weights are the ones mop_mixture_gate gives, and sum to 1 */
    float wg[BB * 4];
    assert_int_equal(mop_mixture_gate(c, mx, &b, wg), MOP_OK);
    assert_memory_equal(wg, w1, sizeof wg);
    for (int s = 0; s < BB; s++)
        assert_true(fabsf(wg[s * 4] + wg[s * 4 + 1] + wg[s * 4 + 2] + wg[s * 4 + 3] - 1.0f) < 1e-6f);
    /* target counts: mask bits after the first token of the real length */
    for (int s = 0; s < BB; s++) {
        int want = 0;
        for (int t = 1; t < g_len[s]; t++)
            want += g_mask[s * BT + t];
        assert_int_equal(nt[s], want);
    }
    /* change an expert through the data pointer: stale cache, new results */
    float *par;
    assert_int_equal(mop_mixture_data(mx, &par, NULL, NULL), MOP_OK);
    par[3] += 0.5f;
    assert_false(gate_cache_fresh(mx));
    assert_int_equal(mop_mixture_evaluate(c, list, 1, &b, nll3, nt, NULL), MOP_OK);
    assert_true(nll3[0] != nll1[0]);
    assert_int_equal(mop_mixture_prepare(c, mx), MOP_OK);
    assert_int_equal(mop_mixture_evaluate(c, list, 1, &b, nll2, nt, NULL), MOP_OK);
    assert_memory_equal(nll3, nll2, sizeof nll3);
    /* the NLL of evaluate equals forward_backward's */
    mop_loss_result r = {.struct_size = sizeof r};
    assert_int_equal(mop_mixture_forward_backward(c, mx, &b, NULL, &r), MOP_OK);
    double sum = nll3[0] + nll3[1] + nll3[2];
    assert_true(fabs(r.nll_sum - sum) <= 1e-12 * fabs(sum));

    /* generation runs with the cache and is deterministic for greedy sampling */
    mop_sampler_params sp;
    mop_sampler_params_init(&sp);
    sp.temperature = 0.0f;
    mop_sampler *s = NULL;
    assert_int_equal(mop_sampler_create(&sp, &s), MOP_OK);
    int32_t n1 = -1, n2 = -1;
    assert_int_equal(mop_mixture_generate(c, mx, s, g_tok, 5, 6, NULL, NULL, &n1), MOP_OK);
    const float *lg1;
    int32_t rows;
    assert_int_equal(mop_ctx_get_logits(c, &lg1, &rows), MOP_OK);
    float last1[TV];
    memcpy(last1, lg1, sizeof last1);
    assert_int_equal(mop_mixture_generate(c, mx, s, g_tok, 5, 6, NULL, NULL, &n2), MOP_OK);
    assert_int_equal(n1, n2);
    assert_true(n1 >= 0 && n1 <= 6);
    assert_int_equal(mop_ctx_get_logits(c, &lg1, &rows), MOP_OK);
    assert_memory_equal(last1, lg1, sizeof last1);
    mop_sampler_free(s);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Generation's prefill logits equal the evaluation forward: the last-token
 * logits after generating 0 tokens score the next token as evaluate does. */
static void test_generate_matches_evaluate(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 4); /* prompt of 7 in chunks of 4 */
    for (int mode = 0; mode < 2; mode++) {
        mop_mixture *mx = tiny_mixture(m, mode, 0, MOP_GATE_LEARNED, MOP_GATE_ACT_GELU);
        /* n_batch 4 is too small for K·P = 8 prompt rows in bias mode */
        mop_sampler_params sp;
        mop_sampler_params_init(&sp);
        sp.temperature = 0.0f;
        mop_sampler *s = NULL;
        assert_int_equal(mop_sampler_create(&sp, &s), MOP_OK);
        int32_t tok[8] = {3, 14, 15, 9, 26, 5, 35, 8};
        int32_t ng;
        mop_status st = mop_mixture_generate(c, mx, s, tok, 7, 0, NULL, NULL, &ng);
        if (mode == MOP_COMBINE_ATTENTION_BIAS) {
            assert_int_equal(st, MOP_E_RANGE);
            mop_sampler_free(s);
            mop_mixture_free(mx);
            continue;
        }
        assert_int_equal(st, MOP_OK);
        assert_int_equal(ng, 0);
        const float *lg;
        int32_t rows;
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
        /* NLL of token 8 after the 7-token prompt */
        double nll_gen = logsumexp(lg, TV) - lg[8];
        mop_ctx *c2 = gate_ctx(m, 16);
        uint8_t mask[8] = {0, 0, 0, 0, 0, 0, 0, 1};
        int32_t len = 8;
        mop_batch b = {.struct_size = sizeof b, .n_seq = 1, .seq_len = 8, .tokens = tok,
                       .lengths = &len, .loss_mask = mask};
        /* the gate of evaluate reads all 8 tokens; generation's read 7: use a
         * uniform-weight comparison by making the gate constant (W2 = 0) */
        float *par;
        assert_int_equal(mop_mixture_data(mx, &par, NULL, NULL), MOP_OK);
        mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
        assert_int_equal(mop_mixture_tensor_get_info(mx, GATE_T_W2, &ti), MOP_OK);
        memset(par + ti.offset, 0, ti.size * sizeof(float));
        assert_int_equal(mop_mixture_generate(c, mx, s, tok, 7, 0, NULL, NULL, &ng), MOP_OK);
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
        nll_gen = logsumexp(lg, TV) - lg[8];
        const mop_mixture *list[1] = {mx};
        double nll_eval;
        assert_int_equal(mop_mixture_evaluate(c2, list, 1, &b, &nll_eval, NULL, NULL), MOP_OK);
        assert_true(fabs(nll_gen - nll_eval) <= 1e-5 * fabs(nll_eval));
        mop_ctx_free(c2);
        mop_sampler_free(s);
        mop_mixture_free(mx);
    }
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Serving: sequence b with mixtures[b] equals each sequence alone with its
 * own mixture; a NULL entry scores the base model as mop_ctx_nll does. */
static void test_evaluate_per_sequence(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *a = tiny_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED,
                                  MOP_GATE_ACT_GELU);
    mop_mixture *w = tiny_mixture(m, MOP_COMBINE_WEIGHTED_SUM, 2, MOP_GATE_LEARNED,
                                  MOP_GATE_ACT_RELU);
    assert_int_equal(mop_mixture_prepare(c, a), MOP_OK);
    mop_batch b = tiny_batch();
    b.loss_mask = NULL; /* every real token after the first */
    const mop_mixture *list[BB] = {w, NULL, a};
    double nll[BB];
    int32_t nt[BB];
    float gw[BB * 4];
    assert_int_equal(mop_mixture_evaluate(c, list, BB, &b, nll, nt, gw), MOP_OK);
    for (int s = 0; s < BB; s++) {
        mop_batch one = b;
        one.n_seq = 1;
        one.tokens = g_tok + s * BT;
        one.lengths = g_len + s;
        one.task = NULL;
        double nll1;
        int32_t nt1;
        float gw1[4];
        assert_int_equal(mop_mixture_evaluate(c, list + s, 1, &one, &nll1, &nt1, gw1), MOP_OK);
        assert_true(nll1 == nll[s]);
        assert_int_equal(nt1, g_len[s] - 1);
        assert_int_equal(nt[s], g_len[s] - 1);
        if (list[s])
            assert_memory_equal(gw1, gw + s * 4, sizeof gw1);
        else
            for (int k = 0; k < 4; k++)
                assert_true(gw[s * 4 + k] == 0.0f);
    }
    /* top-2: exactly two weights non-zero */
    int nz = 0;
    for (int k = 0; k < 4; k++)
        nz += gw[k] != 0.0f;
    assert_int_equal(nz, 2);
    /* the base model's row agrees with mop_ctx_nll */
    double total = 0.0;
    assert_int_equal(mop_ctx_nll(c, g_tok + BT, g_len[1], NULL, &total), MOP_OK);
    assert_true(fabs(total - nll[1]) <= 1e-5 * fabs(total));
    mop_mixture_free(a);
    mop_mixture_free(w);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* ---- save / load ----------------------------------------------------------- */

static char tmp_path[64];

static void make_tmp(void)
{
    snprintf(tmp_path, sizeof tmp_path, "/tmp/test_gate_%d.safetensors", (int)getpid());
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static uint8_t *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc(*n + 1);
    assert_int_equal(fread(d, 1, *n, f), *n);
    fclose(f);
    return d;
}

static void test_save_load_roundtrip(void **state)
{
    (void)state;
    make_tmp();
    mop_model *m = tiny_model(TL);
    for (int g = 0; g < 2; g++) {
        mop_mixture *mx = tiny_mixture(m, g ? MOP_COMBINE_WEIGHTED_SUM : MOP_COMBINE_ATTENTION_BIAS,
                                       g ? 0 : 3, g ? MOP_GATE_UNIFORM : MOP_GATE_LEARNED,
                                       MOP_GATE_ACT_RELU);
        assert_int_equal(mop_mixture_save(mx, tmp_path), MOP_OK);
        mop_mixture *back = NULL;
        assert_int_equal(mop_mixture_load(m, tmp_path, &back), MOP_OK);
        float *p1, *p2;
        size_t n1, n2;
        assert_int_equal(mop_mixture_data(mx, &p1, NULL, &n1), MOP_OK);
        assert_int_equal(mop_mixture_data(back, &p2, NULL, &n2), MOP_OK);
        assert_int_equal(n1, n2);
        assert_memory_equal(p1, p2, n1 * sizeof(float));
        mop_mixture_params a = {.struct_size = sizeof a}, b = {.struct_size = sizeof b};
        assert_int_equal(mop_mixture_get_params(mx, &a), MOP_OK);
        assert_int_equal(mop_mixture_get_params(back, &b), MOP_OK);
        assert_memory_equal(&a, &b, sizeof a);
        assert_int_equal(mop_mixture_tensor_count(back), g ? 1 : 5);
        mop_mixture_free(back);
        mop_mixture_free(mx);
    }
    unlink(tmp_path);
    mop_model_free(m);
}

/* Replace the first occurrence of `from` in the JSON header by `to` (same length). */
static void patch(uint8_t *d, size_t n, const char *from, const char *to)
{
    size_t lf = strlen(from);
    assert_int_equal(lf, strlen(to));
    for (size_t i = 8; i + lf <= n; i++)
        if (memcmp(d + i, from, lf) == 0) {
            memcpy(d + i, to, lf);
            return;
        }
    fail_msg("pattern %s not found", from);
}

static mop_status load_patched(mop_model *m, const uint8_t *orig, size_t n, const char *from,
                               const char *to)
{
    uint8_t *d = malloc(n);
    memcpy(d, orig, n);
    if (from)
        patch(d, n, from, to);
    write_bytes(tmp_path, d, n);
    free(d);
    mop_mixture *mx = NULL;
    mop_status st = mop_mixture_load(m, tmp_path, &mx);
    if (st == MOP_OK)
        mop_mixture_free(mx);
    else
        assert_null(mx);
    return st;
}

static void test_load_rejects_corrupt(void **state)
{
    (void)state;
    make_tmp();
    mop_model *m = tiny_model(TL);
    mop_mixture *mx = tiny_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED,
                                   MOP_GATE_ACT_GELU);
    assert_int_equal(mop_mixture_save(mx, tmp_path), MOP_OK);
    size_t n;
    uint8_t *orig = read_bytes(tmp_path, &n);
    mop_mixture *out = NULL;
    assert_int_equal(load_patched(m, orig, n, NULL, NULL), MOP_OK);
    /* truncations anywhere: header length, header, data */
    size_t cuts[] = {0, 4, 8, 20, n / 2, n - 4, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(tmp_path, orig, cuts[i]);
        mop_status st = mop_mixture_load(m, tmp_path, &out);
        assert_true(st == MOP_E_FORMAT || st == MOP_E_SHAPE);
        assert_null(out);
    }
    /* metadata */
    assert_int_equal(load_patched(m, orig, n, "\"d_model\":\"32\"", "\"d_model\":\"33\""),
                     MOP_E_SHAPE);
    assert_int_equal(load_patched(m, orig, n, "\"n_layer\":\"4\"", "\"n_layer\":\"5\""),
                     MOP_E_SHAPE);
    assert_int_equal(load_patched(m, orig, n, "\"format_version\":\"2\"",
                                  "\"format_version\":\"3\""),
                     MOP_E_UNSUPPORTED);
    assert_int_equal(load_patched(m, orig, n, "\"n_experts\":\"4\"", "\"n_experts\":\"x\""),
                     MOP_E_FORMAT);
    assert_int_equal(load_patched(m, orig, n, "\"n_experts\":\"4\"", "\"n_experts\":\"0\""),
                     MOP_E_FORMAT);
    assert_int_equal(load_patched(m, orig, n, "\"top_k\":\"0\"", "\"top_k\":\"9\""),
                     MOP_E_FORMAT);
    assert_int_equal(load_patched(m, orig, n, "\"prompt_len\":\"2\"", "\"prompt_len\":\"1\""),
                     MOP_E_FORMAT); /* shape of experts no longer matches */
    assert_int_equal(load_patched(m, orig, n, "\"format\":\"libmop.mixture\"",
                                  "\"format\":\"libmop.mixturX\""),
                     MOP_E_FORMAT);
    assert_int_equal(load_patched(m, orig, n, "\"seed\"", "\"seeX\""), MOP_E_FORMAT);
    assert_int_equal(load_patched(m, orig, n, "\"gate.b2\"", "\"gate.bX\""), MOP_E_FORMAT);
    assert_int_equal(load_patched(m, orig, n, "__metadata__", "__metadataX_"), MOP_E_FORMAT);
    /* a NaN value */
    uint8_t *d = malloc(n);
    memcpy(d, orig, n);
    uint32_t nan_bits = 0x7fc00000u;
    memcpy(d + n - 4, &nan_bits, 4);
    write_bytes(tmp_path, d, n);
    assert_int_equal(mop_mixture_load(m, tmp_path, &out), MOP_E_FORMAT);
    assert_true(strstr(mop_last_error(), "not finite") != NULL);
    free(d);
    /* missing file, NULL arguments */
    unlink(tmp_path);
    assert_int_equal(mop_mixture_load(m, tmp_path, &out), MOP_E_IO);
    assert_int_equal(mop_mixture_load(NULL, tmp_path, &out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_mixture_save(mx, "/nonexistent-dir/x.safetensors"), MOP_E_IO);
    free(orig);
    mop_mixture_free(mx);
    mop_model_free(m);
}

/* ---- arguments --------------------------------------------------------------- */

static void test_invalid_params(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_mixture *mx = NULL;
    struct {
        int field;
        int32_t value;
        mop_status want;
    } cases[] = {
        {0, 0, MOP_E_RANGE},   {0, 257, MOP_E_RANGE}, {1, 0, MOP_E_RANGE},
        {1, 513, MOP_E_RANGE}, {2, 4, MOP_E_RANGE},   {3, 4, MOP_E_RANGE},
        {4, 0, MOP_E_RANGE},   {5, 9, MOP_E_RANGE},   {6, 2, MOP_E_INVALID_ARG},
        {7, 5, MOP_E_INVALID_ARG}, {8, 7, MOP_E_INVALID_ARG}, {9, 2, MOP_E_INVALID_ARG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mop_mixture_params p;
        mop_mixture_params_init(&p);
        p.n_experts = 8;
        p.gate_layer = 1;
        p.inject_layer = 2;
        switch (cases[i].field) {
        case 0: p.n_experts = cases[i].value; break;
        case 1: p.prompt_len = cases[i].value; break;
        case 2: p.gate_layer = cases[i].value; break; /* = n_layer */
        case 3: p.inject_layer = cases[i].value; break; /* = n_layer */
        case 4: p.gate_hidden = cases[i].value; break;
        case 5: p.top_k = cases[i].value; break;
        case 6: p.combine = cases[i].value; break;
        case 7: p.gate_act = cases[i].value; break;
        case 8: p.gate_mode = cases[i].value; break;
        case 9: p.gate_mode = MOP_GATE_UNIFORM, p.top_k = cases[i].value; break;
        }
        assert_int_equal(mop_mixture_create(m, &p, &mx), cases[i].want);
        assert_null(mx);
    }
    mop_mixture_params p;
    mop_mixture_params_init(&p);
    p.gate_temperature = 0.0f;
    assert_int_equal(mop_mixture_create(m, &p, &mx), MOP_E_RANGE);
    mop_mixture_params_init(&p);
    p.struct_size = 3;
    assert_int_equal(mop_mixture_create(m, &p, &mx), MOP_E_INVALID_ARG);
    assert_int_equal(mop_mixture_create(NULL, NULL, &mx), MOP_E_INVALID_ARG);
    /* defaults resolve to n_layer / 3 */
    assert_int_equal(mop_mixture_create(m, NULL, &mx), MOP_OK);
    mop_mixture_params got = {.struct_size = sizeof got};
    assert_int_equal(mop_mixture_get_params(mx, &got), MOP_OK);
    assert_int_equal(got.gate_layer, TL / 3);
    assert_int_equal(got.inject_layer, TL / 3);
    assert_int_equal(mop_mixture_tensor_count(mx), 5);
    mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_mixture_tensor_get_info(mx, 5, &ti), MOP_E_RANGE);
    assert_int_equal(mop_mixture_tensor_get_info(mx, 0, &ti), MOP_OK);
    assert_string_equal(ti.name, "experts");
    assert_int_equal(ti.dims[0], 8);
    assert_int_equal(ti.dims[1], 8);
    assert_int_equal(ti.dims[2], TD);
    /* VOCAB init: every expert row is a row of the embeddings */
    float *par;
    assert_int_equal(mop_mixture_data(mx, &par, NULL, NULL), MOP_OK);
    for (int r = 0; r < 64; r++) {
        int found = 0;
        for (int v = 0; v < TV && !found; v++)
            found = memcmp(par + r * TD, m->tok_embd + v * TD, TD * sizeof(float)) == 0;
        assert_true(found);
    }

    /* batches and loss options */
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *small = tiny_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_LEARNED,
                                      MOP_GATE_ACT_GELU);
    mop_batch b = tiny_batch();
    mop_loss_result r = {.struct_size = sizeof r};
    /* K·P = 64 prompt rows do not fit n_batch 16 */
    assert_int_equal(mop_mixture_forward_backward(c, mx, &b, NULL, &r), MOP_E_RANGE);
    mop_batch bad = b;
    int32_t lens[BB] = {9, 0, 4};
    bad.lengths = lens;
    assert_int_equal(mop_mixture_forward_backward(c, small, &bad, NULL, &r), MOP_E_INVALID_ARG);
    bad = b;
    int32_t tok[BB * BT];
    memcpy(tok, g_tok, sizeof tok);
    tok[BT + 2] = TV;
    bad.tokens = tok;
    assert_int_equal(mop_mixture_forward_backward(c, small, &bad, NULL, &r), MOP_E_INVALID_ARG);
    tok[BT + 2] = 0;
    tok[BT + 7] = -5; /* in the padding of sequence 1: ignored */
    assert_int_equal(mop_mixture_forward_backward(c, small, &bad, NULL, &r), MOP_OK);
    bad = b;
    int32_t task[BB] = {0, 4, 1};
    bad.task = task;
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    lp.gate_supervision = 1.0f;
    assert_int_equal(mop_mixture_forward_backward(c, small, &bad, &lp, &r), MOP_E_INVALID_ARG);
    bad.task = NULL;
    assert_int_equal(mop_mixture_forward_backward(c, small, &bad, &lp, &r), MOP_E_INVALID_ARG);
    bad = b;
    uint8_t mask[BB * BT];
    memcpy(mask, g_mask, sizeof mask);
    mask[3] = 2;
    bad.loss_mask = mask;
    assert_int_equal(mop_mixture_forward_backward(c, small, &bad, NULL, &r), MOP_E_INVALID_ARG);
    mop_loss_params_init(&lp);
    lp.load_balance = -1.0f;
    assert_int_equal(mop_mixture_forward_backward(c, small, &b, &lp, &r), MOP_E_INVALID_ARG);
    mop_ctx *c4 = gate_ctx(m, 8); /* a sequence of 9 tokens does not fit */
    assert_int_equal(mop_mixture_forward_backward(c4, small, &b, NULL, &r), MOP_E_RANGE);
    mop_ctx_free(c4);
    mop_mixture *uni = tiny_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 0, MOP_GATE_UNIFORM,
                                    MOP_GATE_ACT_GELU);
    mop_loss_params_init(&lp);
    lp.gate_only = 1;
    assert_int_equal(mop_mixture_forward_backward(c, uni, &b, &lp, &r), MOP_E_INVALID_ARG);
    const mop_mixture *list[2] = {small, uni};
    assert_int_equal(mop_mixture_evaluate(c, list, 2, &b, NULL, NULL, NULL), MOP_E_INVALID_ARG);
    mop_mixture_free(uni);
    mop_mixture_free(small);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}


/* ---- the routing choices (docs/MIXTURE.md) ------------------------------------- */

/* A mixture of tiny_mixture's shape with some fields changed by `edit`, random
 * parameters and (learned gate) random input statistics. */
static mop_mixture *shaped_mixture(mop_model *m, void (*edit)(mop_mixture_params *))
{
    mop_mixture_params p;
    mop_mixture_params_init(&p);
    p.n_experts = 4;
    p.prompt_len = 2;
    p.gate_layer = 1;
    p.inject_layer = 2;
    p.gate_hidden = 8;
    p.gate_temperature = 0.7f;
    edit(&p);
    mop_mixture *mx = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &mx), MOP_OK);
    float *par;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, NULL, &n), MOP_OK);
    fill(par, n, 0.6f);
    if (p.gate_mode == MOP_GATE_LEARNED) {
        double sum[TD], sumsq[TD];
        for (int i = 0; i < TD; i++) {
            sum[i] = 10.0 * frand();
            sumsq[i] = sum[i] * sum[i] / 10.0 + 10.0 * (1.5 + frand());
        }
        assert_int_equal(mop_mixture_set_input_stats(mx, 10.0, sum, sumsq), MOP_OK);
    }
    return mx;
}

static void edit_shared(mop_mixture_params *p) { p->n_shared = 1; }
static void edit_joint(mop_mixture_params *p) { p->expert_attention = MOP_EXPERTS_JOINT; }
static void edit_log_w(mop_mixture_params *p) { p->gate_bias = MOP_BIAS_LOG_W; }
static void edit_top1(mop_mixture_params *p) { p->top_k = 1; }
static void edit_top2_renorm(mop_mixture_params *p) { p->top_k = 2, p->top_k_renorm = 1; }
static void edit_oracle(mop_mixture_params *p) { p->gate_mode = MOP_GATE_ORACLE; }
static void edit_top1_renorm(mop_mixture_params *p) { p->top_k = 1, p->top_k_renorm = 1; }
static void edit_none(mop_mixture_params *p) { (void)p; }
/* the gate reads layer 3 of a prompt-free pass, the experts enter at layer 1 */
static void edit_gate_after(mop_mixture_params *p) { p->gate_layer = 3, p->inject_layer = 1; }
static void edit_oracle_after(mop_mixture_params *p)
{
    edit_oracle(p);
    edit_gate_after(p);
}

static void fd_shaped(void (*edit)(mop_mixture_params *), const char *what)
{
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = shaped_mixture(m, edit);
    mop_batch b = tiny_batch();
    check_grads(c, mx, &b, NULL, what);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Every choice differentiates correctly; with the un-renormalised top-1 the
 * gate gets a gradient from the LM loss (check_grads asserts one per tensor). */
static void test_fd_routing_choices(void **state)
{
    (void)state;
    fd_shaped(edit_none, "standardized input");
    fd_shaped(edit_shared, "shared group");
    fd_shaped(edit_joint, "joint experts");
    fd_shaped(edit_log_w, "bias log w");
    fd_shaped(edit_top1, "top1");
    fd_shaped(edit_top2_renorm, "top2 renormalised");
    fd_shaped(edit_oracle, "oracle");
    fd_shaped(edit_gate_after, "gate layer after the injection layer");
}

/* L_g > L_p: the prompted pass restarts from the embeddings, so with an
 * oracle gate (which reads no input) the NLL and gradients equal, bit for
 * bit, those of the same parameters with L_g = 0 <= L_p. */
static void test_gate_after_injection(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *after = shaped_mixture(m, edit_oracle_after);
    mop_mixture_params p = {.struct_size = sizeof p};
    assert_int_equal(mop_mixture_get_params(after, &p), MOP_OK);
    assert_int_equal(p.gate_layer, 3);
    assert_int_equal(p.inject_layer, 1);
    p.gate_layer = 0;
    mop_mixture *before = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &before), MOP_OK);
    float *pa, *pb, *ga, *gb;
    size_t na, nb;
    assert_int_equal(mop_mixture_data(after, &pa, &ga, &na), MOP_OK);
    assert_int_equal(mop_mixture_data(before, &pb, &gb, &nb), MOP_OK);
    assert_int_equal(na, nb);
    memcpy(pb, pa, na * sizeof(float));
    mop_batch b = tiny_batch();
    const mop_mixture *la[1] = {after}, *lb[1] = {before};
    double nll_a[BB], nll_b[BB];
    assert_int_equal(mop_mixture_evaluate(c, la, 1, &b, nll_a, NULL, NULL), MOP_OK);
    assert_int_equal(mop_mixture_evaluate(c, lb, 1, &b, nll_b, NULL, NULL), MOP_OK);
    assert_memory_equal(nll_a, nll_b, sizeof nll_a);
    mop_mixture_zero_grad(after);
    mop_mixture_zero_grad(before);
    assert_true(fb_loss(c, after, &b, NULL) == fb_loss(c, before, &b, NULL));
    assert_memory_equal(ga, gb, na * sizeof(float));
    /* out of range either way */
    p.gate_layer = TL;
    mop_mixture *bad = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &bad), MOP_E_RANGE);
    p.gate_layer = 3, p.inject_layer = TL;
    assert_int_equal(mop_mixture_create(m, &p, &bad), MOP_E_RANGE);
    assert_null(bad);
    mop_mixture_free(before);
    mop_mixture_free(after);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* The renormalised top-1 weight is always 1: the LM loss gives the gate
 * exactly zero gradient (why top_k_renorm is off by default). */
static void test_top1_renorm_has_no_gate_gradient(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = shaped_mixture(m, edit_top1_renorm);
    mop_batch b = tiny_batch();
    float *grad;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, NULL, &grad, &n), MOP_OK);
    mop_mixture_zero_grad(mx);
    fb_loss(c, mx, &b, NULL);
    mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_mixture_tensor_get_info(mx, GATE_T_W1, &ti), MOP_OK);
    for (size_t i = ti.offset; i < n; i++)
        assert_true(grad[i] == 0.0f);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Independent experts: group k's prompt keys/values equal those of a
 * one-group mixture holding only group k (so no group sees another). */
static void test_expert_independence(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = shaped_mixture(m, edit_shared);
    assert_int_equal(mop_mixture_prepare(c, mx), MOP_OK);
    const int32_t G = 5, P = 2, Lp = 2, S = G * P;
    const size_t kvd = (size_t)m->hp.n_head_kv * m->hp.head_dim;
    mop_mixture_params p1;
    mop_mixture_params_init(&p1);
    p1.n_experts = 1;
    p1.prompt_len = P;
    p1.gate_layer = 1;
    p1.inject_layer = Lp;
    p1.gate_mode = MOP_GATE_UNIFORM;
    for (int32_t g = 0; g < G; g++) {
        mop_mixture *one = NULL;
        assert_int_equal(mop_mixture_create(m, &p1, &one), MOP_OK);
        memcpy(gate_experts(one), gate_experts(mx) + (size_t)g * P * TD,
               (size_t)P * TD * sizeof(float));
        assert_int_equal(mop_mixture_prepare(c, one), MOP_OK);
        for (int32_t l = 0; l < TL - Lp; l++)
            for (int kv = 0; kv < 2; kv++) {
                const float *big = mx->cache_kv + ((size_t)l * 2 + kv) * S * kvd + g * P * kvd;
                const float *small = one->cache_kv + ((size_t)l * 2 + kv) * P * kvd;
                for (size_t i = 0; i < P * kvd; i++)
                    assert_float_equal(big[i], small[i], 1e-6f);
            }
        mop_mixture_free(one);
    }
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Statistics: moments of two halves merge into those of the whole; the gate
 * reads (u − μ)/σ in mop_mixture_gate() (checked against a direct
 * computation); μ and σ survive save/load. */
static void test_input_stats(void **state)
{
    (void)state;
    make_tmp();
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = shaped_mixture(m, edit_none);
    mop_batch b = tiny_batch();
    float u[BB * TD];
    assert_int_equal(mop_mixture_gate_inputs(c, mx, &b, u), MOP_OK);
    double s_all[TD] = {0}, q_all[TD] = {0}, s1[TD] = {0}, q1[TD] = {0}, s2[TD] = {0},
           q2[TD] = {0};
    assert_int_equal(mop_mixture_input_moments(u, BB, TD, s_all, q_all), MOP_OK);
    assert_int_equal(mop_mixture_input_moments(u, 1, TD, s1, q1), MOP_OK);
    assert_int_equal(mop_mixture_input_moments(u + TD, BB - 1, TD, s2, q2), MOP_OK);
    for (int i = 0; i < TD; i++) {
        assert_true(fabs(s1[i] + s2[i] - s_all[i]) <= 1e-9 * (1.0 + fabs(s_all[i])));
        assert_true(fabs(q1[i] + q2[i] - q_all[i]) <= 1e-9 * (1.0 + fabs(q_all[i])));
        s1[i] += s2[i], q1[i] += q2[i];
    }
    assert_int_equal(mop_mixture_set_input_stats(mx, BB, s1, q1), MOP_OK);
    const float *mu, *sd;
    assert_int_equal(mop_mixture_get_input_stats(mx, &mu, &sd), MOP_OK);
    for (int i = 0; i < TD; i++) {
        double mean = s_all[i] / BB;
        assert_float_equal(mu[i], (float)mean, 1e-5f * (1.0f + fabsf(mu[i])));
        double var = q_all[i] / BB - mean * mean;
        assert_float_equal(sd[i], (float)sqrt(fmax(var, 0.0) + 1e-6), 1e-3f * sd[i] + 1e-5f);
    }
    /* the gate on standardized inputs, computed here from the raw u */
    float w[BB * 4];
    assert_int_equal(mop_mixture_gate(c, mx, &b, w), MOP_OK);
    const float *par;
    {
        float *pp;
        assert_int_equal(mop_mixture_data(mx, &pp, NULL, NULL), MOP_OK);
        par = pp;
    }
    const float *W1 = par + mx->off[GATE_T_W1], *b1 = par + mx->off[GATE_T_B1];
    const float *W2 = par + mx->off[GATE_T_W2], *b2 = par + mx->off[GATE_T_B2];
    for (int r = 0; r < BB; r++) {
        double z[4], zmax = -INFINITY, den = 0.0;
        for (int k = 0; k < 4; k++) {
            z[k] = b2[k];
            for (int j = 0; j < 8; j++) {
                double a = b1[j];
                for (int i = 0; i < TD; i++)
                    a += (double)W1[j * TD + i] * ((u[r * TD + i] - mu[i]) / sd[i]);
                double g = 0.5 * a * (1.0 + tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)));
                z[k] += W2[k * 8 + j] * g;
            }
            z[k] /= 0.7;
            zmax = fmax(zmax, z[k]);
        }
        for (int k = 0; k < 4; k++)
            den += exp(z[k] - zmax);
        for (int k = 0; k < 4; k++)
            assert_float_equal(w[r * 4 + k], (float)(exp(z[k] - zmax) / den), 1e-4f);
    }
    /* the same weights from the cached raw inputs, without a model forward */
    float wu[BB * 4];
    assert_int_equal(mop_mixture_gate_from_inputs(mx, u, BB, wu), MOP_OK);
    for (int i = 0; i < BB * 4; i++)
        assert_float_equal(wu[i], w[i], 1e-6f);
    assert_int_equal(mop_mixture_gate_from_inputs(mx, u, -1, wu), MOP_E_INVALID_ARG);
    assert_int_equal(mop_mixture_gate_from_inputs(mx, NULL, BB, wu), MOP_E_INVALID_ARG);
    float ubad = u[3];
    u[3] = INFINITY;
    assert_int_equal(mop_mixture_gate_from_inputs(mx, u, BB, wu), MOP_E_INVALID_ARG);
    u[3] = ubad;
    /* saved with the mixture */
    assert_int_equal(mop_mixture_save(mx, tmp_path), MOP_OK);
    mop_mixture *back = NULL;
    assert_int_equal(mop_mixture_load(m, tmp_path, &back), MOP_OK);
    const float *mu2, *sd2;
    assert_int_equal(mop_mixture_get_input_stats(back, &mu2, &sd2), MOP_OK);
    assert_memory_equal(mu, mu2, TD * sizeof(float));
    assert_memory_equal(sd, sd2, TD * sizeof(float));
    float w2[BB * 4];
    assert_int_equal(mop_mixture_gate(c, back, &b, w2), MOP_OK);
    assert_memory_equal(w, w2, sizeof w);
    /* bad arguments */
    s1[0] = NAN;
    assert_int_equal(mop_mixture_set_input_stats(mx, BB, s1, q1), MOP_E_INVALID_ARG);
    assert_int_equal(mop_mixture_set_input_stats(mx, 0.0, s2, q2), MOP_E_INVALID_ARG);
    assert_int_equal(mop_mixture_input_moments(u, -1, TD, s2, q2), MOP_E_INVALID_ARG);
    mop_mixture *uni = shaped_mixture(m, edit_oracle);
    assert_int_equal(mop_mixture_set_input_stats(uni, BB, s2, q2), MOP_E_INVALID_ARG);
    assert_int_equal(mop_mixture_gate_from_inputs(uni, u, BB, wu), MOP_E_INVALID_ARG);
    mop_mixture_free(uni);
    mop_mixture_free(back);
    mop_mixture_free(mx);
    unlink(tmp_path);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* Content pooling: only the user turns' tokens (after the header, before
 * the end of turn) are averaged; without a user header, every row. */
static void test_content_pool(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_mixture *mx = shaped_mixture(m, edit_none);
    mx->user_hdr[0] = 5, mx->user_hdr[1] = 6, mx->n_user_hdr = 2, mx->eot = 7;
    const int32_t tok[11] = {1, 5, 6, 10, 11, 7, 5, 6, 12, 7, 13};
    float x[11 * TD], u[TD];
    fill(x, 11 * TD, 1.0f);
    gate_pool_input(mx, u, x, tok, 11);
    for (int i = 0; i < TD; i++)
        assert_float_equal(u[i], (x[3 * TD + i] + x[4 * TD + i] + x[8 * TD + i]) / 3.0f, 1e-6f);
    const int32_t plain[3] = {1, 2, 3};
    gate_pool_input(mx, u, x, plain, 3);
    for (int i = 0; i < TD; i++)
        assert_float_equal(u[i], (x[i] + x[TD + i] + x[2 * TD + i]) / 3.0f, 1e-6f);
    mx->p.gate_pool = MOP_POOL_PROMPT;
    gate_pool_input(mx, u, x, tok, 2);
    for (int i = 0; i < TD; i++)
        assert_float_equal(u[i], (x[i] + x[TD + i]) / 2.0f, 1e-6f);
    mop_mixture_free(mx);
    mop_model_free(m);
}

/* Pre-training separates well-separated classes and stops early: once the
 * validation accuracy is 1 it cannot improve, so it stops `patience` epochs
 * after the best one; labels that cannot be learned stop it too. */
static void test_pretrain_early_stop(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_mixture *mx = shaped_mixture(m, edit_none);
    enum { N = 64, NV = 32 };
    float *u = malloc((size_t)(N + NV) * TD * sizeof(float));
    int32_t task[N + NV];
    for (int r = 0; r < N + NV; r++) {
        task[r] = r % 4;
        for (int i = 0; i < TD; i++)
            u[r * TD + i] = 0.3f * frand() + (i % 4 == task[r] ? 2.0f : 0.0f);
    }
    double s[TD] = {0}, q[TD] = {0};
    assert_int_equal(mop_mixture_input_moments(u, N, TD, s, q), MOP_OK);
    assert_int_equal(mop_mixture_set_input_stats(mx, N, s, q), MOP_OK);
    float *par;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, NULL, &n), MOP_OK);
    float *experts = malloc(mx->size[GATE_T_EXPERTS] * sizeof(float));
    memcpy(experts, par, mx->size[GATE_T_EXPERTS] * sizeof(float));
    mop_gate_pretrain_params pp;
    assert_int_equal(mop_gate_pretrain_params_init(&pp), MOP_OK);
    pp.patience = 3;
    pp.batch_size = 16;
    mop_gate_pretrain_result r = {.struct_size = sizeof r};
    assert_int_equal(mop_mixture_pretrain_gate(mx, u, task, N, u + N * TD, task + N, NV, &pp, &r),
                     MOP_OK);
    assert_true(r.val_accuracy == 1.0f && r.train_accuracy == 1.0f);
    assert_true(r.epochs < pp.max_epochs);
    assert_true(r.best_epoch <= r.epochs);
    assert_memory_equal(experts, par, mx->size[GATE_T_EXPERTS] * sizeof(float));
    /* unlearnable validation labels (a constant) still stop early */
    int32_t bad[NV];
    for (int i = 0; i < NV; i++)
        bad[i] = 3;
    mop_mixture *mx2 = shaped_mixture(m, edit_none);
    assert_int_equal(mop_mixture_pretrain_gate(mx2, u, task, N, u + N * TD, bad, NV, &pp, &r),
                     MOP_OK);
    assert_true(r.epochs < pp.max_epochs);
    /* bad arguments */
    task[0] = 4;
    assert_int_equal(mop_mixture_pretrain_gate(mx, u, task, N, NULL, NULL, 0, NULL, NULL),
                     MOP_E_INVALID_ARG);
    task[0] = 0;
    pp.lr = 0.0f;
    assert_int_equal(mop_mixture_pretrain_gate(mx, u, task, N, NULL, NULL, 0, &pp, NULL),
                     MOP_E_INVALID_ARG);
    mop_mixture *uni = shaped_mixture(m, edit_oracle);
    assert_int_equal(mop_mixture_pretrain_gate(uni, u, task, N, NULL, NULL, 0, NULL, NULL),
                     MOP_E_INVALID_ARG);
    mop_mixture_free(uni);
    mop_mixture_free(mx2);
    mop_mixture_free(mx);
    free(experts);
    free(u);
    mop_model_free(m);
}

/* Experts from hidden states: every prompt row is the layer-L_p input state
 * of some token of the batch. */
static void test_init_experts(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = shaped_mixture(m, edit_shared);
    mop_batch b = tiny_batch();
    assert_int_equal(mop_mixture_init_experts(c, mx, &b), MOP_OK);
    float x[BT * TD];
    int32_t pos[BT];
    for (int t = 0; t < BT; t++)
        pos[t] = t;
    const float *E = gate_experts(mx);
    int found[10] = {0};
    for (int s = 0; s < BB; s++) {
        c->n_past = 0;
        forward_embed(c, x, g_tok + s * BT, g_len[s]);
        forward_layers(c, x, g_len[s], pos, 0, 2, NULL);
        for (int row = 0; row < 10; row++)
            for (int t = 0; t < g_len[s]; t++)
                found[row] |= memcmp(E + row * TD, x + t * TD, TD * sizeof(float)) == 0;
    }
    mop_ctx_reset(c);
    for (int row = 0; row < 10; row++)
        assert_true(found[row]);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}


/* Cached layer-L_p states: a training step and an evaluation from them equal,
 * bit for bit, the ones that run layers [0, L_p); a batch of the 0.1 size
 * (without the cache fields) is still accepted. */
static void cached_states_equal_uncached(void (*edit)(mop_mixture_params *))
{
    mop_model *m = tiny_model(TL);
    mop_ctx *c = gate_ctx(m, 16);
    mop_mixture *mx = shaped_mixture(m, edit);
    mop_batch b = tiny_batch();
    float *st[BB], u[BB * TD];
    for (int s = 0; s < BB; s++)
        st[s] = malloc((size_t)g_len[s] * TD * sizeof(float));
    assert_int_equal(mop_mixture_inject_states(c, mx, &b, st, u), MOP_OK);
    float *grad;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, NULL, &grad, &n), MOP_OK);
    float *g0 = malloc(n * sizeof(float));
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    lp.gate_supervision = 0.3f;
    mop_mixture_zero_grad(mx);
    double l0 = fb_loss(c, mx, &b, &lp);
    memcpy(g0, grad, n * sizeof(float));
    mop_batch bc = b;
    bc.states = (const float *const *)st;
    bc.gate_input = u;
    mop_mixture_zero_grad(mx);
    double l1 = fb_loss(c, mx, &bc, &lp);
    assert_true(l0 == l1);
    assert_memory_equal(g0, grad, n * sizeof(float));
    const mop_mixture *list[1] = {mx};
    double nll0[BB], nll1[BB];
    assert_int_equal(mop_mixture_evaluate(c, list, 1, &b, nll0, NULL, NULL), MOP_OK);
    assert_int_equal(mop_mixture_evaluate(c, list, 1, &bc, nll1, NULL, NULL), MOP_OK);
    assert_memory_equal(nll0, nll1, sizeof nll0);
    /* the old batch size; states without gate_input */
    mop_batch old = b;
    old.struct_size = (uint32_t)offsetof(mop_batch, states);
    mop_mixture_zero_grad(mx);
    assert_true(fb_loss(c, mx, &old, &lp) == l0);
    bc.gate_input = NULL;
    mop_loss_result r = {.struct_size = sizeof r};
    assert_int_equal(mop_mixture_forward_backward(c, mx, &bc, &lp, &r), MOP_E_INVALID_ARG);
    old.struct_size = (uint32_t)offsetof(mop_batch, states) - 1;
    assert_int_equal(mop_mixture_forward_backward(c, mx, &old, &lp, &r), MOP_E_INVALID_ARG);
    for (int s = 0; s < BB; s++)
        free(st[s]);
    free(g0);
    mop_mixture_free(mx);
    mop_ctx_free(c);
    mop_model_free(m);
}

/* ... also when the gate reads a prompt-free pass beyond L_p */
static void test_cached_states_equal_uncached(void **state)
{
    (void)state;
    cached_states_equal_uncached(edit_shared);
    cached_states_equal_uncached(edit_gate_after);
}

/* ---- allocation failures ---------------------------------------------------------- */

/* Every allocation of create, a training step, prepare and save/load fails
 * in turn: MOP_E_NOMEM each time, nothing leaked. */
static void test_alloc_failures(void **state)
{
    (void)state;
    make_tmp();
    mop_allocator a = {failing_alloc, plain_free, NULL};
    alloc_limit = -1;
    assert_int_equal(mop_set_allocator(&a), MOP_OK);
    mop_model *m = tiny_model(TL);
    ctx_threads = 1; /* a worker frees its start-up block whenever it starts: not countable */
    mop_ctx *c = gate_ctx(m, 16);
    ctx_threads = 2;
    mop_batch b = tiny_batch();
    long base = mop_alloc_live();
    int done = 0;
    for (long n = 0; n < 1000 && !done; n++) {
        alloc_count = 0;
        alloc_limit = n;
        mop_mixture *mx = NULL;
        mop_mixture_params p;
        mop_mixture_params_init(&p);
        p.n_experts = 3;
        p.prompt_len = 2;
        p.gate_layer = 1;
        p.inject_layer = 2;
        mop_status st = mop_mixture_create(m, &p, &mx);
        if (st == MOP_OK) {
            mop_loss_result r = {.struct_size = sizeof r};
            st = mop_mixture_forward_backward(c, mx, &b, NULL, &r);
            if (st == MOP_OK)
                st = mop_mixture_prepare(c, mx);
            if (st == MOP_OK)
                st = mop_mixture_set_prox_reference(mx);
            if (st == MOP_OK) {
                const mop_mixture *list[1] = {mx};
                st = mop_mixture_evaluate(c, list, 1, &b, NULL, NULL, NULL);
            }
            if (st == MOP_OK) {
                alloc_limit = -1;
                assert_int_equal(mop_mixture_save(mx, tmp_path), MOP_OK);
                alloc_limit = n;
                alloc_count = 0;
                mop_mixture *back = NULL;
                st = mop_mixture_load(m, tmp_path, &back);
                if (st != MOP_OK)
                    assert_null(back);
                mop_mixture_free(back);
                done = st == MOP_OK;
            }
            mop_mixture_free(mx);
        } else {
            assert_null(mx);
        }
        if (!done)
            assert_int_equal(st, MOP_E_NOMEM);
        if (mop_alloc_live() != base)
            fail_msg("allocation %ld failing leaks %ld blocks (%s)", n, mop_alloc_live() - base,
                     mop_last_error());
    }
    assert_true(done);
    alloc_limit = -1;
    unlink(tmp_path);
    mop_ctx_free(c);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
    assert_int_equal(mop_set_allocator(NULL), MOP_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_attention_bias),
        cmocka_unit_test(test_fd_weighted_sum),
        cmocka_unit_test(test_fd_loss_terms),
        cmocka_unit_test(test_prox),
        cmocka_unit_test(test_padding_invariance),
        cmocka_unit_test(test_cache_matches_uncached),
        cmocka_unit_test(test_generate_matches_evaluate),
        cmocka_unit_test(test_evaluate_per_sequence),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_load_rejects_corrupt),
        cmocka_unit_test(test_invalid_params),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_fd_routing_choices),
        cmocka_unit_test(test_top1_renorm_has_no_gate_gradient),
        cmocka_unit_test(test_expert_independence),
        cmocka_unit_test(test_input_stats),
        cmocka_unit_test(test_content_pool),
        cmocka_unit_test(test_pretrain_early_stop),
        cmocka_unit_test(test_init_experts),
        cmocka_unit_test(test_cached_states_equal_uncached),
        cmocka_unit_test(test_gate_after_injection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
