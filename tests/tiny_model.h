/* Shared test helpers: a seeded random stream, a tiny random Llama built in
 * memory, a context on it, and allocator hooks that fail the n-th allocation.
 *
 * Header-only (static inline, so a test that uses part of it gets no unused
 * warnings); include it after <cmocka.h>, since the builders assert. Every
 * test program has its own copy of the state below.
 *
 * The random stream is xorshift64 from TINY_RNG_SEED; a test that needs
 * another sequence defines TINY_RNG_SEED before including this header. The
 * builders draw from it, so the weights of a tiny model depend on what the
 * test drew before building it (as they did when each test had its own copy). */
#ifndef MOP_TESTS_TINY_MODEL_H
#define MOP_TESTS_TINY_MODEL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "libmop/mop_core.h"
#include "model.h"

/* ---- random numbers ------------------------------------------------------------ */

#ifndef TINY_RNG_SEED
#define TINY_RNG_SEED 88172645463325252ull
#endif

static uint64_t tiny_rng_state = TINY_RNG_SEED;

/* uniform in [-1, 1) */
static inline float frand(void)
{
    tiny_rng_state ^= tiny_rng_state << 13;
    tiny_rng_state ^= tiny_rng_state >> 7;
    tiny_rng_state ^= tiny_rng_state << 17;
    return (float)((double)(tiny_rng_state >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* x[i] = scale · U[-1, 1) */
static inline void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand() * scale;
}

/* ---- a tiny random Llama ------------------------------------------------------- */

/* Width, heads (grouped-query: 2 query heads per KV head), MLP width, vocabulary
 * and context of every tiny model; the layer count is the caller's. */
enum { TD = 32, TNH = 4, TNKV = 2, THD = 8, TFF = 48, TV = 50, TCTX = 64 };

/* n random floats of U[-scale, scale) in a buffer the model owns. */
static inline float *model_buf(mop_model *m, size_t n, float scale)
{
    float *p = mop_alloc(n * sizeof(float));
    assert_non_null(p);
    assert_int_equal(mop_model_add_buffer(m, p), MOP_OK);
    fill(p, n, scale);
    return p;
}

/* A dense Llama of n_layer blocks with random weights scaled so activations
 * stay O(1): norms 1 ± 0.2, projections ~ U(±1/sqrt(fan_in)) (q, k and the
 * LM head twice that, for peakier attention and logits). Free with
 * mop_model_free(). */
static inline mop_model *tiny_model(int n_layer)
{
    mop_model *m = NULL;
    assert_int_equal(mop_model_alloc(&m), MOP_OK);
    mop_hparams *hp = &m->hp;
    *hp = (mop_hparams){.n_layer = n_layer, .n_embd = TD, .n_ff = TFF, .n_head = TNH,
                        .n_head_kv = TNKV, .head_dim = THD, .n_vocab = TV,
                        .n_ctx_train = TCTX, .n_rot = THD, .rope_theta = 10000.0f,
                        .norm_eps = 1e-5f};
    strcpy(m->arch, "llama");
    float ws = 1.0f / sqrtf(TD);
    m->tok_embd = model_buf(m, (size_t)TV * TD, 1.0f);
    float *on = model_buf(m, TD, 0.2f);
    for (int i = 0; i < TD; i++)
        on[i] += 1.0f;
    m->out_norm = on;
    mop_weight_dense_init(&m->lm_head, model_buf(m, (size_t)TV * TD, 2.0f * ws), TV, TD);
    m->layers = mop_calloc((size_t)n_layer, sizeof(mop_layer));
    assert_non_null(m->layers);
    for (int l = 0; l < n_layer; l++) {
        mop_layer *L = &m->layers[l];
        float *an = model_buf(m, TD, 0.2f), *fn = model_buf(m, TD, 0.2f);
        for (int i = 0; i < TD; i++) {
            an[i] += 1.0f;
            fn[i] += 1.0f;
        }
        L->attn_norm = an;
        L->ffn_norm = fn;
        mop_weight_dense_init(&L->wq, model_buf(m, (size_t)TNH * THD * TD, 2 * ws), TNH * THD, TD);
        mop_weight_dense_init(&L->wk, model_buf(m, (size_t)TNKV * THD * TD, 2 * ws), TNKV * THD, TD);
        mop_weight_dense_init(&L->wv, model_buf(m, (size_t)TNKV * THD * TD, ws), TNKV * THD, TD);
        mop_weight_dense_init(&L->wo, model_buf(m, (size_t)TD * TNH * THD, ws), TD, TNH * THD);
        mop_weight_dense_init(&L->w_gate, model_buf(m, (size_t)TFF * TD, ws), TFF, TD);
        mop_weight_dense_init(&L->w_up, model_buf(m, (size_t)TFF * TD, ws), TFF, TD);
        mop_weight_dense_init(&L->w_down, model_buf(m, (size_t)TD * TFF, 1.0f / sqrtf(TFF)), TD,
                              TFF);
    }
    return m;
}

/* A context on m; asserts that creation succeeds. */
static inline mop_ctx *tiny_ctx(mop_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads)
{
    mop_ctx_params p;
    mop_ctx_params_init(&p);
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_threads = n_threads;
    mop_ctx *c = NULL;
    assert_int_equal(mop_ctx_create(m, &p, &c), MOP_OK);
    return c;
}

/* ---- allocation failures ------------------------------------------------------- */

/* With mop_allocator {failing_alloc, plain_free, NULL} installed, allocation
 * number alloc_limit (counting from 0 since alloc_count was reset) and every
 * later one fail; alloc_limit = -1 never fails. */
static long alloc_count, alloc_limit = -1;

static inline void *failing_alloc(size_t n, void *user)
{
    (void)user;
    if (alloc_limit >= 0 && alloc_count++ >= alloc_limit)
        return NULL;
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 64) == 0 ? p : NULL;
}

static inline void plain_free(void *p, void *user)
{
    (void)user;
    free(p);
}

#endif /* MOP_TESTS_TINY_MODEL_H */
