/* Calibration statistics for pruning, collected block by block.
 *
 * The state holds the hidden states of every calibration sequence entering
 * the next block to prune. calib_collect runs that block with the forward's
 * saved activations (forward.h) and accumulates, per distinct linear input,
 * Σ_t x_tj² (Wanda's column norms, squared) and/or Σ_t x_t x_tᵀ (SparseGPT's
 * Hessian up to the factor 2/n, which neither method depends on). After the
 * block is pruned, calib_advance runs the pruned block so the next block is
 * calibrated on what the pruned model actually feeds it. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "forward.h"
#include "prune.h"

struct calib {
    mop_ctx *ctx;
    int32_t n_seq, T;
    float *X;               /* (n_seq, T, d) input of the current block */
    int32_t *pos;           /* (T) 0..T-1 */
    fwd_layer_saved *saved; /* (n_layer), only the current block's entry is set */
    float *xn_attn, *att, *xn_ffn, *gate, *up; /* (T, .) one sequence */
};

void calib_free(calib *c)
{
    if (!c)
        return;
    mop_ctx_free(c->ctx);
    mop_free(c->X);
    mop_free(c->pos);
    mop_free(c->saved);
    mop_free(c->xn_attn);
    mop_free(c->att);
    mop_free(c->xn_ffn);
    mop_free(c->gate);
    mop_free(c->up);
    mop_free(c);
}

static void run_block(calib *c, int32_t l, const attn_extra *extra)
{
    const int64_t d = c->ctx->model->hp.n_embd;
    for (int32_t s = 0; s < c->n_seq; s++) {
        c->ctx->n_past = 0;
        forward_layers(c->ctx, c->X + (int64_t)s * c->T * d, c->T, c->pos, l, l + 1, extra);
    }
}

mop_pool *calib_pool(const calib *c)
{
    return c ? c->ctx->pool : NULL;
}

mop_status calib_create(mop_model *m, const int32_t *tokens, int64_t n_tokens, int32_t seq_len,
                        int32_t n_threads, int32_t layer, calib **out)
{
    MOP_CHECK_ARG(m && tokens && n_tokens > 0 && seq_len > 0 && out);
    prune_blas_init();
    const mop_hparams *hp = &m->hp;
    int32_t T = n_tokens < seq_len ? (int32_t)n_tokens : seq_len;
    int64_t n_seq = n_tokens / T;
    if (n_seq > INT32_MAX)
        return mop_fail(MOP_E_RANGE, "%lld calibration sequences are too many", (long long)n_seq);
    calib *c = mop_calloc(1, sizeof *c);
    if (!c)
        return mop_fail(MOP_E_NOMEM, "out of memory for calibration");
    c->n_seq = (int32_t)n_seq;
    c->T = T;
    const size_t d = (size_t)hp->n_embd, qd = (size_t)hp->n_head * (size_t)hp->head_dim,
                 ff = (size_t)hp->n_ff, t = (size_t)T;
    c->X = mop_alloc((size_t)n_seq * t * d * sizeof(float));
    c->pos = mop_alloc(t * sizeof *c->pos);
    c->saved = mop_calloc((size_t)hp->n_layer, sizeof *c->saved);
    c->xn_attn = mop_alloc(t * d * sizeof(float));
    c->att = mop_alloc(t * qd * sizeof(float));
    c->xn_ffn = mop_alloc(t * d * sizeof(float));
    c->gate = mop_alloc(t * ff * sizeof(float));
    c->up = mop_alloc(t * ff * sizeof(float));
    if (!c->X || !c->pos || !c->saved || !c->xn_attn || !c->att || !c->xn_ffn || !c->gate ||
        !c->up) {
        calib_free(c);
        return mop_fail(MOP_E_NOMEM, "out of memory for %lld calibration sequences of %d tokens",
                        (long long)n_seq, (int)T);
    }
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = T;
    cp.n_batch = T;
    cp.n_threads = n_threads;
    mop_status st = mop_ctx_create(m, &cp, &c->ctx);
    if (st != MOP_OK) {
        calib_free(c);
        return st;
    }
    for (int32_t i = 0; i < T; i++)
        c->pos[i] = i;
    for (int32_t s = 0; s < c->n_seq; s++)
        forward_embed(c->ctx, c->X + (size_t)s * t * d, tokens + (size_t)s * t, T);
    for (int32_t l = 0; l < layer; l++)
        run_block(c, l, NULL);
    *out = c;
    return MOP_OK;
}

void calib_stats_free(calib_stats *st)
{
    for (int i = 0; i < CALIB_N; i++) {
        mop_free(st->colsq[i]);
        mop_free(st->H[i]);
        st->colsq[i] = NULL;
        st->H[i] = NULL;
    }
}

// colsq (dim) += Σ_t x[t]²;  H (dim, dim) upper += xᵀx;  x (T, dim)
static void accumulate(calib_stats *st, int k, const float *x, int64_t T)
{
    const int64_t n = st->dim[k];
    if (st->colsq[k])
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < n; j++)
                st->colsq[k][j] += (double)x[t * n + j] * x[t * n + j];
    if (st->H[k])
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)n, (int)T, 1.0f, x, (int)n, 1.0f,
                    st->H[k], (int)n);
}

mop_status calib_collect(calib *c, int32_t l, int want_colsq, int want_H, calib_stats *st)
{
    MOP_CHECK_ARG(c && st && l >= 0 && l < c->ctx->model->hp.n_layer);
    const mop_hparams *hp = &c->ctx->model->hp;
    memset(st, 0, sizeof *st);
    st->dim[CALIB_ATTN_IN] = hp->n_embd;
    st->dim[CALIB_ATT] = (int64_t)hp->n_head * hp->head_dim;
    st->dim[CALIB_FFN_IN] = hp->n_embd;
    st->dim[CALIB_DOWN_IN] = hp->n_ff;
    for (int k = 0; k < CALIB_N; k++) {
        size_t n = (size_t)st->dim[k];
        if (want_colsq && !(st->colsq[k] = mop_calloc(n, sizeof(double))))
            goto nomem;
        if (want_H && !(st->H[k] = mop_calloc(n * n, sizeof(float))))
            goto nomem;
    }

    /* Each sequence's block run fills the saved buffers; accumulate at once. */
    fwd_layer_saved *sv = &c->saved[l];
    *sv = (fwd_layer_saved){.xn_attn = c->xn_attn, .att = c->att, .xn_ffn = c->xn_ffn,
                            .gate = c->gate, .up = c->up};
    attn_extra extra;
    memset(&extra, 0, sizeof extra);
    extra.saved = c->saved;
    const int64_t d = hp->n_embd, T = c->T, ff = hp->n_ff;
    float *Xs = mop_alloc((size_t)(T * d) * sizeof(float));
    if (!Xs)
        goto nomem;
    for (int32_t s = 0; s < c->n_seq; s++) {
        /* the block runs on a copy: the state moves on only in calib_advance */
        memcpy(Xs, c->X + s * T * d, (size_t)(T * d) * sizeof(float));
        c->ctx->n_past = 0;
        forward_layers(c->ctx, Xs, c->T, c->pos, l, l + 1, &extra);
        accumulate(st, CALIB_ATTN_IN, c->xn_attn, T);
        accumulate(st, CALIB_ATT, c->att, T);
        accumulate(st, CALIB_FFN_IN, c->xn_ffn, T);
        for (int64_t i = 0; i < T * ff; i++) /* down's input, in place of gate */
            c->gate[i] = c->gate[i] / (1.0f + expf(-c->gate[i])) * c->up[i];
        accumulate(st, CALIB_DOWN_IN, c->gate, T);
    }
    mop_free(Xs);
    *sv = (fwd_layer_saved){0};
    st->n_tokens = (int64_t)c->n_seq * T;
    return MOP_OK;
nomem:
    c->saved[l] = (fwd_layer_saved){0};
    calib_stats_free(st);
    return mop_fail(MOP_E_NOMEM, "out of memory for the calibration statistics of block %d", l);
}

void calib_advance(calib *c, int32_t l)
{
    run_block(c, l, NULL);
}
