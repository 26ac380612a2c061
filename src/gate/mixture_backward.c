/* Mixture training step: forward with saved activations above L_p, loss,
 * activation backward to the experts and the gate (docs/MIXTURE.md). */
#include <math.h>
#include <string.h>

#include "backward.h"
#include "gate.h"

static void zero(float *x, int64_t n)
{
    memset(x, 0, (size_t)n * sizeof(float));
}

/* Where layer l's prompt K/V gradients live. */
static float *dkp_at(const gate_ws *ws, const mop_hparams *hp, int32_t l)
{
    return ws->dkp + (size_t)(l - ws->first_layer) * (size_t)ws->cap_S * hp->n_head_kv *
                         (size_t)hp->head_dim;
}

static float *dvp_at(const gate_ws *ws, const mop_hparams *hp, int32_t l)
{
    return ws->dvp + (size_t)(l - ws->first_layer) * (size_t)ws->cap_S * hp->n_head_kv *
                         (size_t)hp->head_dim;
}

/* Prompt stream backward over layers n_layer-1 .. L_p with the prompt K/V
 * gradients in ws->dkp/dvp; leaves the gradient at its input in ws->dx (S, d). */
static void prompt_backward(mop_ctx *ctx, gate_ws *ws, const mop_mixture *m)
{
    const mop_hparams *hp = &ctx->model->hp;
    const int32_t S = mixture_stream_len(&m->p), Lp = m->p.inject_layer;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    /* one causal stream, or each independent group on its own */
    const int32_t R = gate_groups_separate(&m->p) ? m->p.prompt_len : S;
    zero(ws->dx, (int64_t)S * hp->n_embd);
    for (int32_t r0 = 0; r0 < S; r0 += R) {
        gate_saved_rows(ws->sv_grp, ws->sv_pr, hp, Lp, r0);
        for (int32_t l = hp->n_layer - 1; l >= Lp; l--) {
            block_bwd a = {.l = l, .T = R, .n_pre = 0, .pos = ws->ppos + r0,
                           .sv = &ws->sv_grp[l], .dk_ext = dkp_at(ws, hp, l) + r0 * kvd,
                           .dv_ext = dvp_at(ws, hp, l) + r0 * kvd,
                           .top = l == hp->n_layer - 1};
            block_backward(ctx, &ws->bwd, ws->dx + (int64_t)r0 * hp->n_embd, &a);
        }
    }
}

static void zero_prompt_grads(gate_ws *ws, const mop_mixture *m)
{
    const mop_hparams *hp = &m->model->hp;
    for (int32_t l = m->p.inject_layer; l < hp->n_layer; l++) {
        int64_t n = (int64_t)mixture_stream_len(&m->p) * hp->n_head_kv * hp->head_dim;
        zero(dkp_at(ws, hp, l), n);
        zero(dvp_at(ws, hp, l), n);
    }
}

mop_status mop_mixture_forward_backward(mop_ctx *ctx, mop_mixture *m, const mop_batch *batch,
                                        const mop_loss_params *loss, mop_loss_result *result)
{
    static const char fn[] = "mop_mixture_forward_backward";
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(m);
    MOP_CHECK_ARG(batch);
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    if (loss)
        MOP_READ_STRUCT(fn, &lp, loss, MOP_SIZE_THROUGH(mop_loss_params, prox_mu)); /* 0.1.0 */
    if (result)
        MOP_CHECK_STRUCT_SIZE(fn, result, MOP_OUT_STRUCT_MIN);
    const mop_mixture_params *p = &m->p;
    const int learned = p->gate_mode == MOP_GATE_LEARNED;
    if (!(lp.load_balance >= 0.0f) || !(lp.gate_supervision >= 0.0f) || !(lp.prox_mu >= 0.0f) ||
        !isfinite(lp.load_balance) || !isfinite(lp.gate_supervision) || !isfinite(lp.prox_mu))
        return mop_fail(MOP_E_INVALID_ARG, "%s: load_balance %g, gate_supervision %g, prox_mu %g "
                        "must be finite and >= 0", fn, (double)lp.load_balance,
                        (double)lp.gate_supervision, (double)lp.prox_mu);
    if (!learned && (lp.load_balance > 0.0f || lp.gate_supervision > 0.0f || lp.gate_only))
        return mop_fail(MOP_E_INVALID_ARG, "%s: load_balance, gate_supervision and gate_only need "
                        "a learned gate (this mixture's gate is uniform)", fn);
    if (lp.gate_only != 0 && lp.gate_only != 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: gate_only %d must be 0 or 1", fn, lp.gate_only);
    if (lp.prox_mu > 0.0f && !m->prox_ref)
        return mop_fail(MOP_E_STATE, "%s: prox_mu %g without a reference "
                        "(call mop_mixture_set_prox_reference first)", fn, (double)lp.prox_mu);
    if (ctx->model != m->model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture and the context use different models",
                        fn);
    const int need_task = lp.gate_supervision > 0.0f || p->gate_mode == MOP_GATE_ORACLE;
    MOP_TRY(gate_check_batch(ctx, batch, need_task ? p->n_experts : 0, fn));
    const int32_t S = mixture_stream_len(p);
    if (S > ctx->params.n_batch)
        return mop_fail(MOP_E_RANGE, "%s: the mixture's %d prompt rows exceed the context's "
                        "n_batch %d", fn, S, ctx->params.n_batch);

    const mop_hparams *hp = &m->model->hp;
    const int32_t B = batch->n_seq, K = p->n_experts, P = p->prompt_len, L = hp->n_layer;
    const int32_t Lp = p->inject_layer;
    const int64_t d = hp->n_embd;
    int32_t maxT = 1;
    int64_t n_tgt = 0;
    for (int32_t b = 0; b < B; b++) {
        maxT = MOP_MAX(maxT, batch->lengths[b]);
        n_tgt += gate_targets(NULL, batch, b);
    }
    /* the call's work buffers (a mixture holds none) */
    gate_ws ws_call;
    memset(&ws_call, 0, sizeof ws_call);
    MOP_TRY(gate_ws_reserve(&ws_call, m, maxT, S, B, 1));
    gate_ws *ws = &ws_call;
    for (int32_t i = 0; i < hp->n_rot / 2; i++)
        ws->bwd.inv_freq[i] = (float)ctx->rope.freq[i];
    gate_prompt_positions(p, ws->ppos);
    gate_cache_invalidate(m); /* the caller is about to change the parameters */
    mop_ctx_reset(ctx);

    const int ab = p->combine == MOP_COMBINE_ATTENTION_BIAS;
    const int lm = !lp.gate_only;
    const float scale = n_tgt > 0 ? 1.0f / (float)n_tgt : 0.0f;
    float *E = gate_experts(m), *dE_flat = m->grads + m->off[GATE_T_EXPERTS];
    const int64_t EP = (int64_t)P * d; /* floats per expert */
    zero(ws->G, (int64_t)B * K);
    if (lm && ab) {
        /* the prompt stream, shared by every sequence */
        memcpy(ws->xp, E, (size_t)S * (size_t)d * sizeof(float));
        gate_prompt_stream(ctx, m, ws->xp, S, ws->ppos, ws->sv_pr, ws->sv_grp);
        zero_prompt_grads(ws, m);
    }
    gate_bind_prefix(ws, m, NULL);

    double nll_sum = 0.0;
    for (int32_t b = 0; b < B; b++) {
        const int32_t T = batch->lengths[b];
        float *ub = ws->u + b * d, *ab_ = ws->a + (int64_t)b * p->gate_hidden;
        float *pib = ws->pi + b * K, *wb = ws->w + b * K, *Gb = ws->G + b * K;
        for (int32_t t = 0; t < T; t++)
            ws->pos[t] = t;
        /* the schedule, saving what backward needs above L_p; in bias mode
         * the prompt stream (shared by every sequence) is ready in sv_pr */
        gate_seq sq = {.tokens = batch->tokens + (int64_t)b * batch->seq_len, .T = T,
                      .n_pool = gate_pool_len(batch, b), .chunk = T,
                      .state = gate_batch_state(batch, b),
                      .task = batch->task ? batch->task[b] : -1, .stop_at_gate = !lm,
                      .prefix = GATE_PREFIX_READY, .saved = ws->sv_in};
        if (sq.state)
            sq.gate_input = batch->gate_input + (int64_t)b * d;
        attn_extra ex;
        gate_schedule(ctx, m, ws, ws->x, ws->pos, ub, ab_, pib, wb, &ex, &sq);
        if (!lm)
            continue;
        if (!ab)
            zero_prompt_grads(ws, m);

        /* backward of this sequence's input stream down to L_p */
        float *dx = ws->dx;
        const int32_t n_rows = gate_targets(ws->row_idx, batch, b);
        nll_sum += head_backward(ctx, &ws->bwd, dx, ws->x, sq.tokens, T, ws->row_idx, n_rows,
                                 scale);
        zero(ws->dbias, S);
        for (int32_t l = L - 1; l >= Lp; l--) {
            block_bwd a = {.l = l, .T = T, .n_pre = S, .pos = ws->pos, .sv = &ws->sv_in[l],
                           .pre_k = ws->pk[l], .pre_v = ws->pv[l],
                           .bias = ab ? ws->bias : NULL, .dpre_k = dkp_at(ws, hp, l),
                           .dpre_v = dvp_at(ws, hp, l), .dbias = ab ? ws->dbias : NULL};
            block_backward(ctx, &ws->bwd, dx, &a);
        }
        if (ab) {
            /* G_k = dL/dlog w_k: the bias gradient of group k's keys */
            for (int32_t k = 0; k < K; k++) {
                double s = 0.0;
                for (int32_t j = 0; j < P; j++)
                    s += ws->dbias[k * P + j];
                Gb[k] = (float)s;
            }
        } else {
            /* prompt = Σ_k w_k E_k: dE_k += w_k dprompt, dL/dw_k = <dprompt, E_k> */
            prompt_backward(ctx, ws, m);
            const float *dprompt = ws->dx; /* (P, d) */
            for (int32_t k = 0; k < K; k++) {
                double s = 0.0;
                for (int64_t i = 0; i < EP; i++) {
                    s += (double)dprompt[i] * E[k * EP + i];
                    dE_flat[k * EP + i] += wb[k] * dprompt[i];
                }
                Gb[k] = wb[k] != 0.0f ? (float)s : 0.0f; /* top-k drops w_k: no path */
            }
        }
    }
    if (lm && ab) {
        /* the prompt stream's backward, with every sequence's K/V gradients */
        prompt_backward(ctx, ws, m);
        add_inplace(dE_flat, ws->dx, (int64_t)S * d);
    }

    /* gate: LM gradient, load balance, supervision -> dz -> MLP parameters */
    double loss_total = n_tgt > 0 ? nll_sum / (double)n_tgt : 0.0;
    if (learned) {
        const float tau = p->gate_temperature;
        float *dz = ws->dz;
        zero(dz, (int64_t)B * K);
        if (lm) {
            /* kept groups carry w = pi (or pi renormalised over the kept ones),
             * dropped ones 0 with G = 0: the softmax Jacobian at the
             * probabilities the weights were taken from */
            const float *probs = p->top_k_renorm ? ws->w : ws->pi;
            if (ab)
                gate_softmax_backward(dz, ws->G, probs, B, K, tau);
            else
                gate_softmax_backward_dw(dz, ws->G, probs, B, K, tau);
        }
        if (lp.load_balance > 0.0f) {
            /* K Σ_k f_k p_k, f_k = share of argmax_k pi (no gradient), p_k = mean_b pi_bk */
            double f[256] = {0}, pk[256] = {0};
            for (int32_t b = 0; b < B; b++) {
                const float *pib = ws->pi + b * K;
                int32_t best = 0;
                for (int32_t k = 1; k < K; k++)
                    best = pib[k] > pib[best] ? k : best;
                f[best] += 1.0 / B;
                for (int32_t k = 0; k < K; k++)
                    pk[k] += (double)pib[k] / B;
            }
            double lb = 0.0;
            for (int32_t k = 0; k < K; k++)
                lb += f[k] * pk[k];
            loss_total += lp.load_balance * K * lb;
            for (int32_t b = 0; b < B; b++) {
                float g[256];
                for (int32_t k = 0; k < K; k++)
                    g[k] = (float)(lp.load_balance * K * f[k] / B);
                gate_softmax_backward_dw(dz + b * K, g, ws->pi + b * K, 1, K, tau);
            }
        }
        if (lp.gate_supervision > 0.0f) {
            /* mean_b −log pi_b[task_b]; G_m = dL/dlog pi_m = −σ/B on the label */
            double ce = 0.0;
            for (int32_t b = 0; b < B; b++) {
                const float *pib = ws->pi + b * K;
                int32_t c = batch->task[b];
                ce -= log(fmax((double)pib[c], 1e-30));
                float g[256];
                zero(g, K);
                g[c] = -lp.gate_supervision / (float)B;
                gate_softmax_backward(dz + b * K, g, pib, 1, K, tau);
            }
            loss_total += lp.gate_supervision * ce / B;
        }
        gate_mlp_backward(m->grads + m->off[GATE_T_W1], m->grads + m->off[GATE_T_B1],
                          m->grads + m->off[GATE_T_W2], m->grads + m->off[GATE_T_B2], NULL, dz,
                          ws->u, ws->a, m->params + m->off[GATE_T_W1],
                          m->params + m->off[GATE_T_W2], B, (int)d, p->gate_hidden, K,
                          p->gate_act);
    }
    if (lp.prox_mu > 0.0f) {
        double sq = 0.0;
        for (size_t i = 0; i < m->n_params; i++) {
            float diff = m->params[i] - m->prox_ref[i];
            sq += (double)diff * diff;
            m->grads[i] += lp.prox_mu * diff;
        }
        loss_total += 0.5 * lp.prox_mu * sq;
    }
    gate_ws_free(ws);
    mop_ctx_reset(ctx);
    if (result) {
        mop_loss_result r;
        memset(&r, 0, sizeof r);
        r.struct_size = result->struct_size;
        r.loss = loss_total;
        r.nll_sum = nll_sum;
        r.n_targets = lm ? n_tgt : 0;
        memcpy(result, &r, result->struct_size);
    }
    return MOP_OK;
}
