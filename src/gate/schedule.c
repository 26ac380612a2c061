/* The mixture's layer schedule, written once:
 *
 *   embed -> layers [0, L_g) -> gate on the pooled states -> layers [L_g, L_p)
 *   -> prompt keys/values prepended at L_p (+ log-weight bias) -> layers [L_p, L)
 *
 * (with L_p < L_g: embed -> layers [0, L_g) without the prompt -> gate; embed
 * again -> layers [0, L_p) -> prompt prefix -> layers [L_p, L))
 *
 * Training (mixture_backward.c), evaluation (mixture_forward.c), decoding with
 * a mixture attached to a context (mixture_ctx.c) and the batched decoder
 * (decoder.c) all run a sequence through gate_schedule(), and later tokens
 * of a decoded sequence through gate_schedule_step(). */
#include <string.h>

#include "gate.h"

/* Layers [l0, l1) over x (T, d) in chunks of at most C rows; each chunk at
 * KV positions c0.. (ctx->n_past = c0), so chunked prefill sees every row
 * before it in the same layer. */
static void run_range(mop_ctx *ctx, float *x, int32_t T, const int32_t *pos, int32_t C,
                      int32_t l0, int32_t l1, const attn_extra *ex)
{
    const int64_t d = ctx->model->hp.n_embd;
    if (l0 >= l1)
        return;
    for (int32_t c0 = 0; c0 < T; c0 += C) {
        ctx->n_past = c0;
        forward_layers(ctx, x + c0 * d, MOP_MIN(C, T - c0), pos + c0, l0, l1, ex);
    }
}

void gate_schedule(mop_ctx *ctx, const mop_mixture *m, gate_ws *ws, float *x, const int32_t *pos,
                   float *u, float *a, float *pi, float *w, attn_extra *ex, const gate_seq *s)
{
    const mop_mixture_params *p = &m->p;
    const int32_t L = m->model->hp.n_layer, Lg = p->gate_layer, Lp = p->inject_layer;
    const int32_t T = s->T, C = s->chunk, S = mixture_stream_len(p);
    const int64_t d = m->model->hp.n_embd;

    /* layers [0, L_g), the gate's input, layers [L_g, L_p) (or the cached
     * states entering L_p and their gate input) */
    if (s->state && !s->stop_at_gate) {
        memcpy(x, s->state, (size_t)T * (size_t)d * sizeof(float));
        memcpy(u, s->gate_input, (size_t)d * sizeof(float));
    } else {
        for (int32_t c0 = 0; c0 < T; c0 += C)
            forward_embed(ctx, x + c0 * d, s->tokens + c0, MOP_MIN(C, T - c0));
        run_range(ctx, x, T, pos, C, 0, Lg, NULL);
        gate_pool_input(m, u, x, s->tokens, s->n_pool);
        if (!s->stop_at_gate && Lg <= Lp) {
            run_range(ctx, x, T, pos, C, Lg, Lp, NULL);
        } else if (!s->stop_at_gate) {
            /* the gate read a prompt-free pass beyond L_p: the prompted pass
             * starts again from the embeddings (layers [0, L_p) are the same
             * with or without the prompt; none to redo when L_p = 0) */
            for (int32_t c0 = 0; c0 < T; c0 += C)
                forward_embed(ctx, x + c0 * d, s->tokens + c0, MOP_MIN(C, T - c0));
            run_range(ctx, x, T, pos, C, 0, Lp, NULL);
        }
    }
    /* the gate */
    gate_standardize(m, u);
    gate_forward_one(m, a, pi, w, u, s->task);
    ctx->n_past = 0;
    if (s->stop_at_gate)
        return;

    /* the prompt prefix at L_p: the input has not reached L_p, so the prompt
     * stream may use rows [0, S) of the KV cache there */
    memset(ex, 0, sizeof *ex);
    ex->P = S;
    ex->prefix_k = ws->pk;
    ex->prefix_v = ws->pv;
    ex->saved = s->saved;
    gate_prompt_positions(p, ws->ppos);
    if (p->combine == MOP_COMBINE_ATTENTION_BIAS) {
        if (s->prefix == GATE_PREFIX_COMPUTE) {
            memcpy(ws->xp, gate_experts(m), (size_t)m->size[GATE_T_EXPERTS] * sizeof(float));
            gate_prompt_stream(ctx, m, ws->xp, S, ws->ppos, ws->sv_pr, ws->sv_grp);
        }
        gate_bind_prefix(ws, m, s->prefix == GATE_PREFIX_CACHE ? s->cache_kv : NULL);
        gate_fill_bias(p, ws->bias, w);
        ex->prefix_bias = ws->bias;
    } else {
        gate_weighted_prompt(m, ws->xp, w);
        gate_prompt_stream(ctx, m, ws->xp, S, ws->ppos, ws->sv_pr, ws->sv_grp);
        gate_bind_prefix(ws, m, NULL);
    }

    /* layers [L_p, L) with the prefix */
    run_range(ctx, x, T, pos, C, Lp, L, ex);
    ctx->n_past = 0;
}

void gate_schedule_step(mop_ctx *ctx, const mop_mixture *m, float *x, int32_t T,
                        const int32_t *pos, const attn_extra *ex)
{
    forward_layers(ctx, x, T, pos, 0, m->p.inject_layer, NULL);
    forward_layers(ctx, x, T, pos, m->p.inject_layer, m->model->hp.n_layer, ex);
}
