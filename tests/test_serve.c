/* Serving with mixtures on a tiny random Llama (tests/tiny_model.h): one
 * prepared mixture shared by threads, a mixture attached to a context
 * (decode, NLL, generate, gate weights, argument checks), and the batched
 * decoder across mixtures.
 *
 * Tolerances: the attached-context path runs the same kernels in the same
 * order as the mixture calls, so results are compared exactly where the
 * row grouping is the same; where the LM head or a matrix product groups
 * rows differently (one row vs many), values must agree to 1e-4 relative
 * (float rounding of a 32-wide model is ~1e-6). */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "forward.h"
#include "gate/gate.h"
#include "internal.h"
#include "libmop/mop_gate.h"
#include "model.h"
#include "tiny_model.h"

enum { TL = 4 };

#define REL_TOL 1e-4

static int close_rel(double a, double b, double tol)
{
    return fabs(a - b) <= tol * fmax(1.0, fmax(fabs(a), fabs(b)));
}

static mop_mixture *make_mixture(mop_model *m, int32_t combine, int32_t k, uint64_t seed)
{
    mop_mixture_params p;
    mop_mixture_params_init(&p);
    p.n_experts = k;
    p.prompt_len = 2;
    p.gate_layer = 1;
    p.inject_layer = 2;
    p.gate_hidden = 8;
    p.gate_temperature = 0.7f;
    p.combine = combine;
    p.seed = seed;
    mop_mixture *mx = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &mx), MOP_OK);
    float *par;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, NULL, &n), MOP_OK);
    fill(par, n, 0.6f);
    return mx;
}

static mop_sampler *greedy(void)
{
    mop_sampler_params sp;
    mop_sampler_params_init(&sp);
    sp.temperature = 0.0f;
    mop_sampler *s = NULL;
    assert_int_equal(mop_sampler_create(&sp, &s), MOP_OK);
    return s;
}

/* ---- one shared mixture, four threads ---------------------------------------- */

enum { N_PROMPTS = 12, PROMPT_MAX = 10, GEN_MAX = 12, N_THREADS = 4 };

typedef struct reply {
    int32_t tok[GEN_MAX];
    int32_t n;
} reply;

static int32_t g_prompts[N_PROMPTS][PROMPT_MAX];
static int32_t g_plen[N_PROMPTS];

static int collect(int32_t token, void *user)
{
    reply *r = user;
    r->tok[r->n++] = token;
    return 0;
}

/* One prompt's greedy reply, through mop_mixture_generate (via = 0) or an
 * attached context and mop_generate (via = 1). */
static mop_status reply_for(mop_ctx *c, mop_mixture *mx, int via, int i, reply *r)
{
    mop_sampler *s = NULL;
    mop_sampler_params sp;
    mop_sampler_params_init(&sp);
    sp.temperature = 0.0f;
    mop_status st = mop_sampler_create(&sp, &s);
    if (st != MOP_OK)
        return st;
    memset(r, 0, sizeof *r);
    int32_t ng = 0;
    if (via == 0)
        st = mop_mixture_generate(c, mx, s, g_prompts[i], g_plen[i], GEN_MAX, collect, r, &ng);
    else
        st = mop_generate(c, s, g_prompts[i], g_plen[i], GEN_MAX, collect, r, &ng);
    mop_sampler_free(s);
    return st;
}

typedef struct worker {
    mop_model *model;
    mop_mixture *mx;
    int via, id;
    reply out[N_PROMPTS];
    mop_status st;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = TCTX;
    cp.n_batch = 8; /* prompts of 9, 10 tokens are prefilled in chunks */
    cp.n_threads = 1;
    mop_ctx *c = NULL;
    w->st = mop_ctx_create(w->model, &cp, &c);
    if (w->st == MOP_OK && w->via == 1)
        w->st = mop_ctx_set_mixture(c, w->mx);
    /* every thread walks the prompts from a different start */
    for (int j = 0; j < N_PROMPTS && w->st == MOP_OK; j++) {
        int i = (j + 3 * w->id) % N_PROMPTS;
        w->st = reply_for(c, w->mx, w->via, i, &w->out[i]);
    }
    mop_ctx_free(c);
    return NULL;
}

static void shared_case(int32_t combine, int prepare)
{
    mop_model *m = tiny_model(TL);
    mop_mixture *mx = make_mixture(m, combine, 4, 7);
    for (int i = 0; i < N_PROMPTS; i++) {
        g_plen[i] = 3 + i % (PROMPT_MAX - 2);
        for (int t = 0; t < g_plen[i]; t++)
            g_prompts[i][t] = (int32_t)((frand() + 1.0f) * 0.5f * TV) % TV;
    }
    /* the sequential replies, on a context of the same shape */
    mop_ctx *c = tiny_ctx(m, TCTX, 8, 1);
    reply want[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++)
        assert_int_equal(reply_for(c, mx, 0, i, &want[i]), MOP_OK);
    if (prepare)
        assert_int_equal(mop_mixture_prepare(c, mx), MOP_OK);
    else
        gate_cache_invalidate(mx); /* the first threads race to build it */
    mop_ctx_free(c);
    for (int via = 0; via < 2; via++) {
        static worker ws[N_THREADS];
        pthread_t th[N_THREADS];
        for (int t = 0; t < N_THREADS; t++) {
            memset(&ws[t], 0, sizeof ws[t]);
            ws[t].model = m, ws[t].mx = mx, ws[t].via = via, ws[t].id = t;
            assert_int_equal(pthread_create(&th[t], NULL, worker_main, &ws[t]), 0);
        }
        for (int t = 0; t < N_THREADS; t++)
            assert_int_equal(pthread_join(th[t], NULL), 0);
        int differ = 0;
        for (int t = 0; t < N_THREADS; t++) {
            assert_int_equal(ws[t].st, MOP_OK);
            for (int i = 0; i < N_PROMPTS; i++)
                differ += ws[t].out[i].n != want[i].n ||
                          memcmp(ws[t].out[i].tok, want[i].tok, sizeof want[i].tok) != 0;
        }
        if (differ)
            fail_msg("%d of %d replies differ from the sequential ones (via %d)", differ,
                     N_THREADS * N_PROMPTS, via);
    }
    mop_mixture_free(mx);
    mop_model_free(m);
}

/* 4 threads x 1 shared mixture x greedy generation: every reply equals the
 * sequential one, through mop_mixture_generate and through an attached
 * context; with the cache prepared before, and built by the racing threads. */
static void test_shared_mixture_threads(void **state)
{
    (void)state;
    shared_case(MOP_COMBINE_ATTENTION_BIAS, 1);
    shared_case(MOP_COMBINE_ATTENTION_BIAS, 0);
    shared_case(MOP_COMBINE_WEIGHTED_SUM, 0);
}

/* ---- a mixture attached to a context ------------------------------------------- */

/* With a constant gate (W2 = 0, b2 random) the gate does not depend on how
 * many tokens it reads, so step-by-step decoding scores each next token as
 * the whole-sequence paths do: mop_ctx_nll with the mixture attached and
 * mop_mixture_evaluate (no loss mask). */
static void test_ctx_decode_matches_mixture_paths(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    enum { N = 9, NP = 4 };
    int32_t tok[N] = {3, 14, 15, 9, 26, 5, 35, 8, 27};
    for (int combine = 0; combine < 2; combine++) {
        mop_mixture *mx = make_mixture(m, combine, 4, 11);
        float *par;
        assert_int_equal(mop_mixture_data(mx, &par, NULL, NULL), MOP_OK);
        mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
        assert_int_equal(mop_mixture_tensor_get_info(mx, GATE_T_W2, &ti), MOP_OK);
        memset(par + ti.offset, 0, ti.size * sizeof(float));

        /* whole-sequence NLL with the mixture attached (n_batch 3: chunked) */
        mop_ctx *c = tiny_ctx(m, TCTX, 3, 2);
        assert_int_equal(mop_ctx_set_mixture(c, mx), MOP_OK);
        assert_ptr_equal(mop_ctx_get_mixture(c), mx);
        float nll[N - 1];
        double total;
        assert_int_equal(mop_ctx_nll(c, tok, N, nll, &total), MOP_OK);
        float wg[4];
        int32_t nk = 0;
        assert_int_equal(mop_ctx_gate_weights(c, wg, 4, &nk), MOP_OK);
        assert_int_equal(nk, 4);

        /* the evaluation path on the same sequence */
        mop_ctx *c2 = tiny_ctx(m, TCTX, 16, 2);
        int32_t len = N;
        mop_batch b = {.struct_size = sizeof b, .n_seq = 1, .seq_len = N, .tokens = tok,
                       .lengths = &len};
        const mop_mixture *list[1] = {mx};
        double nll_eval;
        float we[4];
        assert_int_equal(mop_mixture_evaluate(c2, list, 1, &b, &nll_eval, NULL, we), MOP_OK);
        assert_true(close_rel(total, nll_eval, REL_TOL));
        for (int k = 0; k < 4; k++)
            assert_true(fabsf(wg[k] - we[k]) <= 1e-6f);

        /* step by step: prompt of NP, then one token at a time */
        mop_ctx_reset(c);
        assert_int_equal(mop_ctx_decode(c, tok, NP, MOP_LOGITS_LAST), MOP_OK);
        for (int i = NP - 1; i < N - 1; i++) {
            if (i >= NP)
                assert_int_equal(mop_ctx_decode(c, &tok[i], 1, MOP_LOGITS_LAST), MOP_OK);
            const float *lg;
            int32_t rows;
            assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
            assert_int_equal(rows, 1);
            double v = logsumexp(lg, TV) - lg[tok[i + 1]];
            if (!close_rel(v, nll[i], REL_TOL))
                fail_msg("mode %d token %d: step NLL %.8f, whole-sequence %.8f", combine, i + 1,
                         v, (double)nll[i]);
        }
        assert_int_equal(mop_ctx_n_past(c), N - 1);

        /* MOP_LOGITS_ALL rows equal the NLL path's (same prefill) */
        mop_ctx_reset(c);
        assert_int_equal(mop_ctx_decode(c, tok, N, MOP_LOGITS_ALL), MOP_OK);
        const float *all;
        int32_t rows;
        assert_int_equal(mop_ctx_get_logits(c, &all, &rows), MOP_OK);
        assert_int_equal(rows, N);
        for (int i = 0; i < N - 1; i++)
            assert_true(close_rel(logsumexp(all + i * TV, TV) - all[i * TV + tok[i + 1]], nll[i],
                                  REL_TOL));

        /* prefill logits: the attached context's equal mop_mixture_generate's, bitwise */
        {
            mop_sampler *g0 = greedy();
            int32_t ng = -1;
            assert_int_equal(mop_mixture_generate(c2, mx, g0, tok, NP, 0, NULL, NULL, &ng),
                             MOP_OK);
            const float *lg_gen, *lg_dec;
            int32_t r1, r2;
            assert_int_equal(mop_ctx_get_logits(c2, &lg_gen, &r1), MOP_OK);
            float keep[TV];
            memcpy(keep, lg_gen, sizeof keep);
            mop_ctx_reset(c);
            assert_int_equal(mop_ctx_decode(c, tok, NP, MOP_LOGITS_LAST), MOP_OK);
            assert_int_equal(mop_ctx_get_logits(c, &lg_dec, &r2), MOP_OK);
            assert_memory_equal(keep, lg_dec, sizeof keep);
            mop_sampler_free(g0);
        }
        /* the generate paths agree exactly, and detaching gives the base model */
        mop_sampler *s = greedy();
        int32_t g1[6], g2[6], n1 = 0, n2 = 0;
        reply r1 = {0}, r2 = {0};
        assert_int_equal(mop_generate(c, s, tok, NP, 6, collect, &r1, &n1), MOP_OK);
        assert_int_equal(mop_mixture_generate(c2, mx, s, tok, NP, 6, collect, &r2, &n2), MOP_OK);
        assert_int_equal(n1, n2);
        assert_memory_equal(r1.tok, r2.tok, sizeof r1.tok);
        (void)g1, (void)g2;
        assert_int_equal(mop_ctx_set_mixture(c, NULL), MOP_OK);
        assert_null(mop_ctx_get_mixture(c));
        double base_total, plain_total;
        assert_int_equal(mop_ctx_nll(c, tok, N, NULL, &base_total), MOP_OK);
        assert_int_equal(mop_ctx_nll(c2, tok, N, NULL, &plain_total), MOP_OK);
        assert_true(close_rel(base_total, plain_total, REL_TOL));
        assert_true(fabs(base_total - total) > 1e-3);
        assert_int_equal(mop_ctx_gate_weights(c, wg, 4, &nk), MOP_E_STATE);
        mop_sampler_free(s);
        mop_ctx_free(c2);
        mop_ctx_free(c);
        mop_mixture_free(mx);
    }
    mop_model_free(m);
}

/* With a learned (input-dependent) gate, the first decode call gates on its
 * tokens exactly as mop_mixture_evaluate gates on the sequence; and the
 * context sizes its own buffers (n_batch 2 < K·P = 8 prompt rows). */
static void test_ctx_prefill_gate_and_buffers(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    enum { N = 7 };
    int32_t tok[N] = {1, 2, 30, 4, 41, 6, 17};
    mop_mixture *mx = make_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 4, 5);
    mop_ctx *c = tiny_ctx(m, 12, 2, 1); /* n_ctx 12 holds the input only */
    assert_int_equal(mop_ctx_set_mixture(c, mx), MOP_OK);
    double total;
    assert_int_equal(mop_ctx_nll(c, tok, N, NULL, &total), MOP_OK);
    mop_ctx *c2 = tiny_ctx(m, TCTX, 16, 1);
    int32_t len = N;
    mop_batch b = {.struct_size = sizeof b, .n_seq = 1, .seq_len = N, .tokens = tok,
                   .lengths = &len};
    const mop_mixture *list[1] = {mx};
    double nll_eval;
    assert_int_equal(mop_mixture_evaluate(c2, list, 1, &b, &nll_eval, NULL, NULL), MOP_OK);
    assert_true(close_rel(total, nll_eval, REL_TOL));
    /* the legacy call keeps its documented limit on n_batch */
    mop_sampler *s = greedy();
    assert_int_equal(mop_mixture_generate(c, mx, s, tok, 3, 2, NULL, NULL, NULL),
                     MOP_E_RANGE);
    mop_sampler_free(s);
    mop_ctx_free(c2);
    mop_ctx_free(c);
    mop_mixture_free(mx);
    mop_model_free(m);
}

/* Bad arguments: clear statuses and messages, the previous attachment kept. */
static void test_set_mixture_errors(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL), *other = tiny_model(TL);
    mop_mixture *mx = make_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 4, 3);
    mop_mixture *foreign = make_mixture(other, MOP_COMBINE_ATTENTION_BIAS, 4, 3);
    mop_ctx *c = tiny_ctx(m, TCTX, 8, 1);
    assert_int_equal(mop_ctx_set_mixture(NULL, mx), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_set_mixture(c, mx), MOP_OK);
    assert_int_equal(mop_ctx_set_mixture(c, foreign), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "another model"));
    assert_ptr_equal(mop_ctx_get_mixture(c), mx);

    mop_mixture_params p;
    mop_mixture_params_init(&p);
    p.n_experts = 2, p.prompt_len = 2, p.gate_layer = 1, p.inject_layer = 2;
    p.gate_mode = MOP_GATE_ORACLE;
    mop_mixture *oracle = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &oracle), MOP_OK);
    assert_int_equal(mop_ctx_set_mixture(c, oracle), MOP_E_UNSUPPORTED);
    assert_non_null(strstr(mop_last_error(), "oracle"));

    /* joint experts run all K·P = 8 rows at once: more than n_ctx 6 */
    mop_mixture_params_init(&p);
    p.n_experts = 4, p.prompt_len = 2, p.gate_layer = 1, p.inject_layer = 2;
    p.expert_attention = MOP_EXPERTS_JOINT;
    mop_mixture *joint = NULL;
    assert_int_equal(mop_mixture_create(m, &p, &joint), MOP_OK);
    mop_ctx *small = tiny_ctx(m, 6, 6, 1);
    assert_int_equal(mop_ctx_set_mixture(small, joint), MOP_E_RANGE);
    assert_non_null(strstr(mop_last_error(), "n_ctx"));
    assert_null(mop_ctx_get_mixture(small));
    assert_null(mop_ctx_get_mixture(NULL));

    /* gate weights: arguments and states */
    float w[4];
    int32_t n = 0;
    assert_int_equal(mop_ctx_gate_weights(NULL, w, 4, &n), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_gate_weights(c, w, 4, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_ctx_gate_weights(small, w, 4, &n), MOP_E_STATE);
    assert_int_equal(mop_ctx_gate_weights(c, w, 4, &n), MOP_E_STATE); /* nothing decoded */
    int32_t tok[3] = {1, 2, 3};
    assert_int_equal(mop_ctx_decode(c, tok, 3, MOP_LOGITS_LAST), MOP_OK);
    assert_int_equal(mop_ctx_gate_weights(c, w, 2, &n), MOP_E_RANGE);
    assert_int_equal(n, 4);
    assert_int_equal(mop_ctx_gate_weights(c, w, 4, &n), MOP_OK);
    /* decode errors keep their meaning with a mixture attached */
    int32_t bad = TV;
    assert_int_equal(mop_ctx_decode(c, &bad, 1, MOP_LOGITS_LAST), MOP_E_INVALID_ARG);
    int32_t many[TCTX];
    memset(many, 0, sizeof many);
    assert_int_equal(mop_ctx_decode(c, many, TCTX, MOP_LOGITS_LAST), MOP_E_RANGE);

    mop_ctx_free(small);
    mop_ctx_free(c); /* frees the attachment; the mixtures are the caller's */
    mop_mixture_free(joint);
    mop_mixture_free(oracle);
    mop_mixture_free(foreign);
    mop_mixture_free(mx);
    mop_model_free(other);
    mop_model_free(m);
}

/* ---- batched decoding across mixtures ---------------------------------------- */

enum { DS = 10, DPMAX = 9, DCMAX = 8 };

typedef struct dseq {
    int mix;                 /* index into the mixtures, -1 = base model */
    int32_t prompt[DPMAX], n_prompt;
    int32_t cont[DCMAX], n_cont; /* teacher-forced continuation */
    int start;               /* step at which it may join */
    float ref[DCMAX + 1][TV]; /* one-sequence logits after the prompt and each token */
    int32_t id, fed;         /* decoder id; tokens fed so far (-1 = not joined) */
} dseq;

static dseq g_seq[DS];

/* 8 sequences on 4 mixtures (two attention-bias, one weighted-sum, one with
 * a shared group and joint experts) plus 2 on the base model, prompts of
 * 2..9 tokens, 3..8 more tokens each, joining at different steps into a
 * decoder of 6 slots (so some wait for others to leave): every step's
 * logits equal the one-sequence path (an attached context) to 1e-4. */
static void test_decoder_matches_single(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL);
    mop_mixture *mx[4];
    mx[0] = make_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 4, 21);
    mx[1] = make_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 2, 22);
    mx[2] = make_mixture(m, MOP_COMBINE_WEIGHTED_SUM, 3, 23);
    {
        mop_mixture_params p;
        mop_mixture_params_init(&p);
        p.n_experts = 3, p.prompt_len = 2, p.gate_layer = 0, p.inject_layer = 1;
        p.gate_hidden = 8, p.n_shared = 1, p.expert_attention = MOP_EXPERTS_JOINT;
        assert_int_equal(mop_mixture_create(m, &p, &mx[3]), MOP_OK);
        float *par;
        size_t n;
        assert_int_equal(mop_mixture_data(mx[3], &par, NULL, &n), MOP_OK);
        fill(par, n, 0.6f);
    }
    for (int i = 0; i < DS; i++) {
        dseq *q = &g_seq[i];
        memset(q, 0, sizeof *q);
        q->mix = i < 8 ? i % 4 : -1;
        q->n_prompt = 2 + (i * 5) % 8;
        q->n_cont = 3 + (i * 3) % 6;
        q->start = i % 5;
        q->fed = -1;
        for (int t = 0; t < q->n_prompt; t++)
            q->prompt[t] = (int32_t)((frand() + 1.0f) * 0.5f * TV) % TV;
        for (int t = 0; t < q->n_cont; t++)
            q->cont[t] = (int32_t)((frand() + 1.0f) * 0.5f * TV) % TV;
        /* the one-sequence reference */
        mop_ctx *c = tiny_ctx(m, TCTX, 4, 1);
        if (q->mix >= 0)
            assert_int_equal(mop_ctx_set_mixture(c, mx[q->mix]), MOP_OK);
        const float *lg;
        int32_t rows;
        assert_int_equal(mop_ctx_decode(c, q->prompt, q->n_prompt, MOP_LOGITS_LAST), MOP_OK);
        assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
        memcpy(q->ref[0], lg, sizeof q->ref[0]);
        for (int t = 0; t < q->n_cont; t++) {
            assert_int_equal(mop_ctx_decode(c, &q->cont[t], 1, MOP_LOGITS_LAST), MOP_OK);
            assert_int_equal(mop_ctx_get_logits(c, &lg, &rows), MOP_OK);
            memcpy(q->ref[t + 1], lg, sizeof q->ref[0]);
        }
        mop_ctx_free(c);
    }

    mop_decoder_params dp;
    assert_int_equal(mop_decoder_params_init(&dp), MOP_OK);
    dp.n_seq_max = 6;
    dp.n_ctx = 24;
    dp.n_batch = 4;
    dp.n_threads = 2;
    mop_decoder *dec = NULL;
    assert_int_equal(mop_decoder_create(m, &dp, &dec), MOP_OK);
    int done = 0, max_batched = 0, live_n = 0;
    double worst = 0.0;
    for (int step = 0; done < DS; step++) {
        assert_true(step < 100);
        for (int i = 0; i < DS; i++) { /* join while there is room */
            dseq *q = &g_seq[i];
            if (q->fed == -1 && q->start <= step && live_n < dp.n_seq_max) {
                assert_int_equal(mop_decoder_add(dec, q->mix >= 0 ? mx[q->mix] : NULL, &q->id),
                                 MOP_OK);
                q->fed = 0;
                live_n++;
            }
        }
        int32_t seqs[DS], ntok[DS];
        const int32_t *toks[DS];
        int idx[DS], n = 0, batched = 0;
        for (int i = 0; i < DS; i++) {
            dseq *q = &g_seq[i];
            if (q->fed < 0 || q->fed > q->n_cont)
                continue;
            seqs[n] = q->id;
            if (q->fed == 0) {
                ntok[n] = q->n_prompt, toks[n] = q->prompt;
            } else {
                ntok[n] = 1, toks[n] = &q->cont[q->fed - 1];
                batched++;
            }
            idx[n++] = i;
        }
        if (n == 0)
            continue;
        max_batched = batched > max_batched ? batched : max_batched;
        mop_decoder_batch b = {.struct_size = sizeof b, .n = n, .seq = seqs, .n_tokens = ntok,
                               .tokens = toks};
        assert_int_equal(mop_decoder_step(dec, &b), MOP_OK);
        for (int e = 0; e < n; e++) {
            dseq *q = &g_seq[idx[e]];
            const float *lg;
            assert_int_equal(mop_decoder_get_logits(dec, q->id, &lg), MOP_OK);
            for (int v = 0; v < TV; v++) {
                double diff = fabs((double)lg[v] - q->ref[q->fed][v]);
                worst = diff > worst ? diff : worst;
                if (!close_rel(lg[v], q->ref[q->fed][v], REL_TOL))
                    fail_msg("sequence %d (mixture %d) token %d logit %d: batched %.7f, alone "
                             "%.7f", idx[e], q->mix, q->fed, v, (double)lg[v],
                             (double)q->ref[q->fed][v]);
            }
            assert_int_equal(mop_decoder_n_past(dec, q->id), q->n_prompt + q->fed);
            q->fed++;
            if (q->fed > q->n_cont) { /* leave */
                assert_int_equal(mop_decoder_remove(dec, q->id), MOP_OK);
                live_n--;
                done++;
            }
        }
    }
    assert_true(max_batched >= 4);
    print_message("decoder: worst |batched - alone| logit difference %.2e, up to %d rows "
                  "batched\n", worst, max_batched);
    mop_decoder_free(dec);
    for (int k = 0; k < 4; k++)
        mop_mixture_free(mx[k]);
    mop_model_free(m);
}

/* Decoder arguments: exact statuses, and nothing changes on a rejected step. */
static void test_decoder_errors(void **state)
{
    (void)state;
    mop_model *m = tiny_model(TL), *other = tiny_model(TL);
    mop_mixture *mx = make_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 4, 3);
    mop_mixture *foreign = make_mixture(other, MOP_COMBINE_ATTENTION_BIAS, 4, 3);
    mop_decoder_params dp;
    assert_int_equal(mop_decoder_params_init_sized(NULL, sizeof dp), MOP_E_INVALID_ARG);
    assert_int_equal(mop_decoder_params_init(&dp), MOP_OK);
    mop_decoder *dec = NULL;
    dp.n_seq_max = 0;
    assert_int_equal(mop_decoder_create(m, &dp, &dec), MOP_E_RANGE);
    dp.n_seq_max = 2;
    dp.n_ctx = TCTX + 1;
    assert_int_equal(mop_decoder_create(m, &dp, &dec), MOP_E_RANGE);
    dp.n_ctx = 8;
    dp.struct_size = 1;
    assert_int_equal(mop_decoder_create(m, &dp, &dec), MOP_E_INVALID_ARG);
    dp.struct_size = sizeof dp;
    assert_int_equal(mop_decoder_create(NULL, &dp, &dec), MOP_E_INVALID_ARG);
    assert_null(dec);
    assert_int_equal(mop_decoder_create(m, &dp, &dec), MOP_OK);
    int32_t a = -1, b2 = -1, c3 = -1;
    assert_int_equal(mop_decoder_add(dec, foreign, &a), MOP_E_INVALID_ARG);
    assert_int_equal(mop_decoder_add(dec, mx, &a), MOP_OK);
    assert_int_equal(mop_decoder_add(dec, NULL, &b2), MOP_OK);
    assert_int_equal(mop_decoder_add(dec, NULL, &c3), MOP_E_STATE);
    const float *lg;
    assert_int_equal(mop_decoder_get_logits(dec, a, &lg), MOP_E_STATE);
    assert_int_equal(mop_decoder_get_logits(dec, 7, &lg), MOP_E_INVALID_ARG);
    assert_int_equal(mop_decoder_n_past(dec, 7), -1);
    assert_int_equal(mop_decoder_n_past(NULL, a), -1);

    int32_t ids[2] = {a, b2}, one[2] = {1, 2};
    mop_decoder_batch bt = {.struct_size = sizeof bt, .n = 2, .seq = ids, .token = one};
    assert_int_equal(mop_decoder_step(NULL, &bt), MOP_E_INVALID_ARG);
    bt.n = 3;
    assert_int_equal(mop_decoder_step(dec, &bt), MOP_E_INVALID_ARG);
    bt.n = 2;
    int32_t twice[2] = {a, a};
    bt.seq = twice;
    assert_int_equal(mop_decoder_step(dec, &bt), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "twice"));
    bt.seq = ids;
    int32_t bad[2] = {1, TV};
    bt.token = bad;
    assert_int_equal(mop_decoder_step(dec, &bt), MOP_E_INVALID_ARG);
    assert_int_equal(mop_decoder_n_past(dec, a), 0); /* nothing ran */
    int32_t longp[9] = {0};
    const int32_t *tp[2] = {longp, one};
    int32_t nt[2] = {9, 1};
    mop_decoder_batch bl = {.struct_size = sizeof bl, .n = 2, .seq = ids, .n_tokens = nt,
                            .tokens = tp};
    assert_int_equal(mop_decoder_step(dec, &bl), MOP_E_RANGE); /* n_ctx 8 */
    assert_int_equal(mop_decoder_n_past(dec, b2), 0);
    bt.token = one;
    assert_int_equal(mop_decoder_step(dec, &bt), MOP_OK);
    assert_int_equal(mop_decoder_get_logits(dec, a, &lg), MOP_OK);
    assert_int_equal(mop_decoder_n_past(dec, a), 1);
    assert_int_equal(mop_decoder_remove(dec, a), MOP_OK);
    assert_int_equal(mop_decoder_remove(dec, a), MOP_E_INVALID_ARG);
    assert_int_equal(mop_decoder_remove(NULL, b2), MOP_E_INVALID_ARG);
    assert_int_equal(mop_decoder_step(dec, &bt), MOP_E_INVALID_ARG); /* a has left */
    mop_decoder_free(dec);
    mop_decoder_free(NULL);
    mop_mixture_free(foreign);
    mop_mixture_free(mx);
    mop_model_free(other);
    mop_model_free(m);
}

/* Every allocation of mop_ctx_set_mixture, a decode with the mixture, and
 * the decoder's create/add/step, failing in turn: MOP_E_NOMEM and no leak. */
static void test_alloc_failures(void **state)
{
    (void)state;
    mop_allocator al = {failing_alloc, plain_free, NULL};
    alloc_limit = -1;
    assert_int_equal(mop_set_allocator(&al), MOP_OK);
    mop_model *m = tiny_model(TL);
    mop_ctx *c = tiny_ctx(m, TCTX, 4, 1); /* n_batch 4 < K·P: set_mixture grows the scratch */
    mop_mixture *ab = make_mixture(m, MOP_COMBINE_ATTENTION_BIAS, 4, 1);
    mop_mixture *wsum = make_mixture(m, MOP_COMBINE_WEIGHTED_SUM, 4, 2);
    mop_ctx *big = tiny_ctx(m, TCTX, 16, 1);
    assert_int_equal(mop_mixture_prepare(big, ab), MOP_OK); /* the cache is the mixture's */
    mop_ctx_free(big);
    long base = mop_alloc_live();
    int32_t tok[6] = {1, 5, 9, 2, 7, 3};
    int done = 0;
    for (long n = 0; n < 2000 && !done; n++) {
        alloc_count = 0;
        alloc_limit = n;
        mop_status st = mop_ctx_set_mixture(c, n % 2 ? wsum : ab);
        if (st == MOP_OK)
            st = mop_ctx_decode(c, tok, 6, MOP_LOGITS_ALL);
        if (st == MOP_OK)
            st = mop_ctx_decode(c, tok, 2, MOP_LOGITS_LAST);
        mop_decoder *dec = NULL;
        if (st == MOP_OK) {
            mop_decoder_params dp;
            assert_int_equal(mop_decoder_params_init(&dp), MOP_OK);
            dp.n_seq_max = 3, dp.n_ctx = 16, dp.n_batch = 4, dp.n_threads = 1;
            st = mop_decoder_create(m, &dp, &dec);
            if (st != MOP_OK)
                assert_null(dec);
        }
        int32_t ids[3];
        if (st == MOP_OK)
            st = mop_decoder_add(dec, ab, &ids[0]);
        if (st == MOP_OK)
            st = mop_decoder_add(dec, wsum, &ids[1]);
        if (st == MOP_OK)
            st = mop_decoder_add(dec, NULL, &ids[2]);
        if (st == MOP_OK) {
            const int32_t *tp[3] = {tok, tok + 1, tok + 2};
            int32_t nt[3] = {4, 3, 2};
            mop_decoder_batch b = {.struct_size = sizeof b, .n = 3, .seq = ids, .n_tokens = nt,
                                   .tokens = tp};
            st = mop_decoder_step(dec, &b);
        }
        if (st == MOP_OK) {
            mop_decoder_batch b = {.struct_size = sizeof b, .n = 3, .seq = ids, .token = tok};
            st = mop_decoder_step(dec, &b);
            done = st == MOP_OK;
        }
        mop_decoder_free(dec);
        alloc_limit = -1;
        assert_int_equal(mop_ctx_set_mixture(c, NULL), MOP_OK);
        if (!done && st != MOP_E_NOMEM)
            fail_msg("allocation %ld failing gives %s (%s)", n, mop_status_name(st),
                     mop_last_error());
        if (mop_alloc_live() != base)
            fail_msg("allocation %ld failing leaks %ld blocks (%s)", n, mop_alloc_live() - base,
                     mop_last_error());
    }
    assert_true(done);
    mop_mixture_free(wsum);
    mop_mixture_free(ab);
    mop_ctx_free(c);
    mop_model_free(m);
    assert_int_equal(mop_alloc_live(), 0);
    assert_int_equal(mop_set_allocator(NULL), MOP_OK);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_mixture_threads),
        cmocka_unit_test(test_ctx_decode_matches_mixture_paths),
        cmocka_unit_test(test_ctx_prefill_gate_and_buffers),
        cmocka_unit_test(test_set_mixture_errors),
        cmocka_unit_test(test_decoder_matches_single),
        cmocka_unit_test(test_decoder_errors),
        cmocka_unit_test(test_alloc_failures),
    };
    if (argc > 1) {
        if (argv[1][0] == '-')
            cmocka_set_skip_filter(argv[1] + 1);
        else
            cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
