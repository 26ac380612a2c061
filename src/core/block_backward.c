/* The backward of the transformer's layers and LM head (backward.h), written
 * like llm.c's gpt2_backward: the loss and LM head first, then each layer's
 * MLP and attention, in the reverse order of forward_layers and
 * forward_head (forward.c). Gradients reach the activations only: the frozen
 * model's weights get none. */
#include <string.h>

#include "backward.h"

static void zero(float *x, int64_t n)
{
    memset(x, 0, (size_t)n * sizeof(float));
}

/* ---- the LM head and the loss: the last forward, so the first backward ---- */

double head_backward(mop_ctx *ctx, block_bwd_ws *ws, float *dx, const float *x,
                     const int32_t *tokens, int32_t T, const int32_t *row_idx, int32_t n,
                     float scale)
{
    const mop_model *mod = ctx->model;
    const int64_t d = mod->hp.n_embd, V = mod->hp.n_vocab;
    rmsnorm_forward(ws->xn_out, NULL, x, mod->out_norm, T, d, mod->hp.norm_eps);
    float *dxn = ws->dxn; /* (T, d) dL/d out_norm(x) */
    zero(dxn, T * d);
    double sum = 0.0;
    int32_t tg[FWD_HEAD_ROWS];
    for (int32_t r0 = 0; r0 < n; r0 += FWD_HEAD_ROWS) {
        int32_t R = MOP_MIN(FWD_HEAD_ROWS, n - r0);
        for (int32_t r = 0; r < R; r++) {
            int32_t t = row_idx[r0 + r];
            memcpy(ws->rows + r * d, ws->xn_out + (int64_t)t * d, (size_t)d * sizeof(float));
            tg[r] = tokens[t + 1];
        }
        mod->lm_head.ops->matmul(&mod->lm_head, ws->logits, ws->rows, R, ctx->pool);
        for (int32_t r = 0; r < R; r++) {
            const float *row = ws->logits + (int64_t)r * V;
            sum += logsumexp(row, V) - (double)row[tg[r]];
        }
        cross_entropy_backward(ws->logits, ws->logits, tg, R, V, scale);
        zero(ws->rows, R * d);
        mod->lm_head.ops->matmul_t(&mod->lm_head, ws->rows, ws->logits, R, ctx->pool);
        for (int32_t r = 0; r < R; r++)
            add_inplace(dxn + (int64_t)row_idx[r0 + r] * d, ws->rows + r * d, d);
    }
    zero(dx, T * d);
    rmsnorm_backward(dx, dxn, x, mod->out_norm, T, (int)d, mod->hp.norm_eps);
    return sum;
}

/* ---- one layer: the MLP block, then the attention block (forward_layers
 * runs attention, then the MLP) ---------------------------------------------- */

void block_backward(mop_ctx *ctx, block_bwd_ws *ws, float *dx, const block_bwd *a)
{
    const mop_hparams *hp = &ctx->model->hp;
    const mop_layer *L = &ctx->model->layers[a->l];
    const int64_t T = a->T, d = hp->n_embd, ff = hp->n_ff;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t n_pre = a->n_pre;
    const fwd_layer_saved *sv = a->sv;
    mop_pool *pool = ctx->pool;

    float *dk_seq = ws->dkcat + n_pre * kvd, *dv_seq = ws->dvcat + n_pre * kvd;
    zero(ws->dkcat, (n_pre + T) * kvd);
    zero(ws->dvcat, (n_pre + T) * kvd);
    zero(ws->dq, T * qd);
    if (!a->top) {
        /* MLP: x_out = x_mid + W_down swiglu(W_gate xn, W_up xn), xn = norm(x_mid) */
        zero(ws->dh, T * ff);
        L->w_down.ops->matmul_t(&L->w_down, ws->dh, dx, T, pool);
        zero(ws->dgate, T * ff);
        zero(ws->dup, T * ff);
        swiglu_backward(ws->dgate, ws->dup, ws->dh, sv->gate, sv->up, T * ff);
        zero(ws->dxn, T * d);
        L->w_gate.ops->matmul_t(&L->w_gate, ws->dxn, ws->dgate, T, pool);
        L->w_up.ops->matmul_t(&L->w_up, ws->dxn, ws->dup, T, pool);
        rmsnorm_backward(dx, ws->dxn, sv->x_mid, L->ffn_norm, T, (int)d, hp->norm_eps);

        /* attention: x_mid = x_in + W_o attn(q, [pre_k; k], [pre_v; v]) */
        zero(ws->datt, T * qd);
        L->wo.ops->matmul_t(&L->wo, ws->datt, dx, T, pool);
        if (n_pre > 0) {
            memcpy(ws->kcat, a->pre_k, (size_t)(n_pre * kvd) * sizeof(float));
            memcpy(ws->vcat, a->pre_v, (size_t)(n_pre * kvd) * sizeof(float));
        }
        memcpy(ws->kcat + n_pre * kvd, sv->k, (size_t)(T * kvd) * sizeof(float));
        memcpy(ws->vcat + n_pre * kvd, sv->v, (size_t)(T * kvd) * sizeof(float));
        attention_backward(ws->dq, ws->dkcat, ws->dvcat, a->dbias, ws->scratch, ws->datt, sv->q,
                           ws->kcat, ws->vcat, sv->lse, a->bias, T, n_pre, hp->n_head,
                           hp->n_head_kv, hp->head_dim, pool);
        if (a->dpre_k) {
            add_inplace(a->dpre_k, ws->dkcat, n_pre * kvd);
            add_inplace(a->dpre_v, ws->dvcat, n_pre * kvd);
        }
    }
    if (a->dk_ext) {
        add_inplace(dk_seq, a->dk_ext, T * kvd);
        add_inplace(dv_seq, a->dv_ext, T * kvd);
    }
    /* q, k after RoPE -> before; then through W_q, W_k, W_v and attn_norm */
    zero(ws->dqpre, T * qd);
    zero(ws->dkpre, T * kvd);
    rope_backward(ws->dqpre, ws->dq, a->pos, T, hp->n_head, hp->head_dim, hp->n_rot,
                  ws->inv_freq, 1.0f);
    rope_backward(ws->dkpre, dk_seq, a->pos, T, hp->n_head_kv, hp->head_dim, hp->n_rot,
                  ws->inv_freq, 1.0f);
    zero(ws->dxn, T * d);
    if (!a->top)
        L->wq.ops->matmul_t(&L->wq, ws->dxn, ws->dqpre, T, pool);
    L->wk.ops->matmul_t(&L->wk, ws->dxn, ws->dkpre, T, pool);
    L->wv.ops->matmul_t(&L->wv, ws->dxn, dv_seq, T, pool);
    rmsnorm_backward(dx, ws->dxn, sv->x_in, L->attn_norm, T, (int)d, hp->norm_eps);
}
