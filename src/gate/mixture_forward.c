/* Mixture forward: gate, prompt stream, injection at L_p; evaluation,
 * gating, generation and the inference prompt K/V cache. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "backward.h"
#include "gate.h"

/* ---- work buffers ------------------------------------------------------------ */

void gate_ws_free(gate_ws *ws)
{
    block_bwd_ws *bw = &ws->bwd;
    float **fbufs[] = {&ws->u,      &ws->a,     &ws->pi,     &ws->w,     &ws->G,
                       &ws->dz,     &ws->x,     &ws->xp,     &ws->bias,  &bw->xn_out,
                       &bw->rows,   &bw->logits, &ws->sv_in_buf, &ws->sv_pr_buf, &ws->dx,
                       &bw->dxn,    &bw->dh,    &bw->dgate,  &bw->dup,   &bw->datt,
                       &bw->dq,     &bw->dqpre, &bw->kcat,   &bw->vcat,  &bw->dkcat,
                       &bw->dvcat,  &bw->dkpre, &bw->scratch, &ws->dbias, &ws->dkp,
                       &ws->dvp,    &bw->inv_freq};
    for (size_t i = 0; i < sizeof fbufs / sizeof fbufs[0]; i++)
        mop_free(*fbufs[i]);
    mop_free(ws->tgt_count);
    mop_free(ws->row_idx);
    mop_free(ws->pos);
    mop_free(ws->ppos);
    mop_free((void *)ws->pk);
    mop_free((void *)ws->pv);
    mop_free(ws->sv_in);
    mop_free(ws->sv_pr);
    mop_free(ws->sv_grp);
    memset(ws, 0, sizeof *ws);
}

/* n elements of esize bytes, overflow-checked, at least 1 byte. */
static void *ws_alloc(size_t n, size_t esize, int *fail)
{
    size_t bytes;
    if (!mop_mul_ok(n, esize, &bytes)) {
        *fail = 1;
        return NULL;
    }
    void *p = mop_alloc(bytes ? bytes : 1);
    if (!p)
        *fail = 1;
    return p;
}

/* Floats per token of one layer's saved activations (train) */
static size_t saved_per_token(const mop_hparams *hp)
{
    size_t d = (size_t)hp->n_embd, qd = (size_t)hp->n_head * hp->head_dim,
           kvd = (size_t)hp->n_head_kv * hp->head_dim;
    return 2 * d + qd + 2 * kvd + (size_t)hp->n_head + 2 * (size_t)hp->n_ff;
}

mop_status gate_ws_reserve(gate_ws *ws, const mop_mixture *m, int32_t T, int32_t S, int32_t B,
                           int32_t train)
{
    const mop_hparams *hp = &m->model->hp;
    const int32_t first = m->p.inject_layer;
    if (ws->pk && T <= ws->cap_T && S <= ws->cap_S && B <= ws->cap_B && train <= ws->train &&
        first >= ws->first_layer)
        return MOP_OK;
    int32_t cT = MOP_MAX(T, ws->cap_T), cS = MOP_MAX(S, ws->cap_S), cB = MOP_MAX(B, ws->cap_B);
    int32_t tr = MOP_MAX(train, ws->train);
    int32_t fl = ws->pk ? MOP_MIN(first, ws->first_layer) : first;
    const int32_t head = !ws->decode_only;
    gate_ws_free(ws);
    ws->cap_T = cT, ws->cap_S = cS, ws->cap_B = cB, ws->train = tr, ws->first_layer = fl;
    ws->decode_only = !head;
    block_bwd_ws *bw = &ws->bwd;

    /* K and h are at most 256 and 8192; size the per-sequence gate buffers
     * for the largest so mixtures of any shape on this model fit. */
    const size_t d = (size_t)hp->n_embd, ff = (size_t)hp->n_ff, V = (size_t)hp->n_vocab;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t nL = (size_t)hp->n_layer, nS = (size_t)(hp->n_layer - fl), K = 256, H = 8192;
    const size_t R = (size_t)MOP_MAX(cT, cS), ST = (size_t)cS + (size_t)cT;
    const size_t Bn = (size_t)cB, Tn = (size_t)cT, Sn = (size_t)cS;
    int fail = 0;
    ws->u = ws_alloc(Bn * d, sizeof(float), &fail);
    ws->a = ws_alloc(Bn * H, sizeof(float), &fail);
    ws->pi = ws_alloc(Bn * K, sizeof(float), &fail);
    ws->w = ws_alloc(Bn * K, sizeof(float), &fail);
    ws->G = ws_alloc(Bn * K, sizeof(float), &fail);
    ws->dz = ws_alloc(Bn * K, sizeof(float), &fail);
    if (head)
        ws->tgt_count = ws_alloc(Bn, sizeof(int64_t), &fail);
    ws->x = ws_alloc(Tn * d, sizeof(float), &fail);
    ws->xp = ws_alloc(Sn * d, sizeof(float), &fail);
    ws->bias = ws_alloc(Sn, sizeof(float), &fail);
    if (head) {
        bw->xn_out = ws_alloc(Tn * d, sizeof(float), &fail);
        bw->rows = ws_alloc((size_t)FWD_HEAD_ROWS * d, sizeof(float), &fail);
        bw->logits = ws_alloc((size_t)FWD_HEAD_ROWS * V, sizeof(float), &fail);
        ws->row_idx = ws_alloc(Tn, sizeof(int32_t), &fail);
    }
    ws->pos = ws_alloc(Tn, sizeof(int32_t), &fail);
    ws->ppos = ws_alloc(Sn, sizeof(int32_t), &fail);
    ws->pk = ws_alloc(nL, sizeof(float *), &fail);
    ws->pv = ws_alloc(nL, sizeof(float *), &fail);
    ws->sv_in = ws_alloc(nL, sizeof(fwd_layer_saved), &fail);
    ws->sv_pr = ws_alloc(nL, sizeof(fwd_layer_saved), &fail);
    ws->sv_grp = ws_alloc(nL, sizeof(fwd_layer_saved), &fail);
    /* saved activations for every layer (a mixture uses those >= its L_p) */
    size_t per_tok = saved_per_token(hp);
    ws->sv_pr_buf = ws_alloc(nS * Sn * (tr ? per_tok : 2 * kvd), sizeof(float), &fail);
    if (tr) {
        ws->sv_in_buf = ws_alloc(nS * Tn * per_tok, sizeof(float), &fail);
        ws->dx = ws_alloc(R * d, sizeof(float), &fail);
        bw->dxn = ws_alloc(R * d, sizeof(float), &fail);
        bw->dh = ws_alloc(R * ff, sizeof(float), &fail);
        bw->dgate = ws_alloc(R * ff, sizeof(float), &fail);
        bw->dup = ws_alloc(R * ff, sizeof(float), &fail);
        bw->datt = ws_alloc(R * qd, sizeof(float), &fail);
        bw->dq = ws_alloc(R * qd, sizeof(float), &fail);
        bw->dqpre = ws_alloc(R * qd, sizeof(float), &fail);
        bw->kcat = ws_alloc(ST * kvd, sizeof(float), &fail);
        bw->vcat = ws_alloc(ST * kvd, sizeof(float), &fail);
        bw->dkcat = ws_alloc(ST * kvd, sizeof(float), &fail);
        bw->dvcat = ws_alloc(ST * kvd, sizeof(float), &fail);
        bw->dkpre = ws_alloc(R * kvd, sizeof(float), &fail);
        bw->scratch = ws_alloc((size_t)attention_backward_scratch((int64_t)ST, hp->n_head,
                                                                  hp->head_dim),
                               sizeof(float), &fail);
        ws->dbias = ws_alloc(Sn, sizeof(float), &fail);
        ws->dkp = ws_alloc(nS * Sn * kvd, sizeof(float), &fail);
        ws->dvp = ws_alloc(nS * Sn * kvd, sizeof(float), &fail);
        bw->inv_freq = ws_alloc((size_t)MOP_MAX(hp->n_rot / 2, 1), sizeof(float), &fail);
    }
    if (fail) {
        gate_ws_free(ws);
        return mop_fail(MOP_E_NOMEM,
                        "mixture: out of memory for work buffers (%d tokens, %d prompt rows, %d "
                        "sequences%s)",
                        cT, cS, cB, tr ? ", training" : "");
    }
    /* bind the saved-activation views, layer by layer */
    memset(ws->sv_in, 0, nL * sizeof(fwd_layer_saved));
    memset(ws->sv_pr, 0, nL * sizeof(fwd_layer_saved));
    memset(ws->sv_grp, 0, nL * sizeof(fwd_layer_saved));
    memset((void *)ws->pk, 0, nL * sizeof(float *));
    memset((void *)ws->pv, 0, nL * sizeof(float *));
    for (size_t l = (size_t)fl; l < nL; l++) {
        size_t i = l - (size_t)fl;
        for (int s = 0; s < 2; s++) {
            fwd_layer_saved *sv = s == 0 ? &ws->sv_pr[l] : &ws->sv_in[l];
            size_t rows = s == 0 ? Sn : Tn;
            float *base = s == 0 ? ws->sv_pr_buf : ws->sv_in_buf;
            if (!base)
                continue;
            if (!tr) { /* prompt stream for inference: keys and values only */
                sv->k = base + i * rows * 2 * kvd;
                sv->v = sv->k + rows * kvd;
                continue;
            }
            float *p = base + i * rows * per_tok;
            sv->x_in = p, p += rows * d;
            sv->x_mid = p, p += rows * d;
            sv->q = p, p += rows * qd;
            sv->k = p, p += rows * kvd;
            sv->v = p, p += rows * kvd;
            sv->lse = p, p += rows * (size_t)hp->n_head;
            sv->gate = p, p += rows * ff;
            sv->up = p;
        }
    }
    if (tr)
        for (int32_t i = 0; i < hp->n_rot / 2; i++)
            bw->inv_freq[i] = 0.0f; /* filled from the ctx's RoPE table at use */
    return MOP_OK;
}

mop_status gate_ws_reserve_decode(gate_ws *ws, const mop_mixture *m)
{
    ws->decode_only = 1;
    return gate_ws_reserve(ws, m, 1, mixture_stream_len(&m->p), 1, 0);
}

/* ---- checks ------------------------------------------------------------------ */

mop_status gate_check_batch(const mop_ctx *ctx, const mop_batch *batch, int32_t need_task_K,
                            const char *fn)
{
    MOP_CHECK_STRUCT_SIZE(fn, batch, MOP_SIZE_THROUGH(mop_batch, task)); /* 0.1.0 */
    const int cached = batch->struct_size >= sizeof(mop_batch) && batch->states;
    if (cached && !batch->gate_input)
        return mop_fail(MOP_E_INVALID_ARG, "%s: batch->states needs batch->gate_input", fn);
    if (batch->n_seq < 1 || batch->seq_len < 2)
        return mop_fail(MOP_E_INVALID_ARG, "%s: batch of %d sequences of %d tokens (need >= 1, >= 2)",
                        fn, batch->n_seq, batch->seq_len);
    if (!batch->tokens || !batch->lengths)
        return mop_fail(MOP_E_INVALID_ARG, "%s: batch->tokens and batch->lengths are required", fn);
    const int32_t V = ctx->model->hp.n_vocab, T = batch->seq_len;
    for (int32_t b = 0; b < batch->n_seq; b++) {
        int32_t len = batch->lengths[b];
        if (len < 1 || len > T)
            return mop_fail(MOP_E_INVALID_ARG, "%s: lengths[%d] = %d outside [1, seq_len %d]", fn,
                            b, len, T);
        if (len > ctx->params.n_batch)
            return mop_fail(MOP_E_RANGE, "%s: sequence %d has %d tokens, more than the context's "
                            "n_batch %d", fn, b, len, ctx->params.n_batch);
        const int32_t *tok = batch->tokens + (int64_t)b * T;
        for (int32_t t = 0; t < len; t++)
            if (tok[t] < 0 || tok[t] >= V)
                return mop_fail(MOP_E_INVALID_ARG, "%s: token %d at sequence %d, position %d "
                                "outside [0, %d)", fn, tok[t], b, t, V);
        if (batch->loss_mask)
            for (int32_t t = 0; t < len; t++) {
                uint8_t v = batch->loss_mask[(int64_t)b * T + t];
                if (v > 1)
                    return mop_fail(MOP_E_INVALID_ARG, "%s: loss_mask[%d][%d] = %u (need 0 or 1)",
                                    fn, b, t, v);
            }
        if (need_task_K > 0) {
            if (!batch->task)
                return mop_fail(MOP_E_INVALID_ARG, "%s: gate supervision needs batch->task", fn);
            if (batch->task[b] < 0 || batch->task[b] >= need_task_K)
                return mop_fail(MOP_E_INVALID_ARG, "%s: task[%d] = %d outside [0, %d)", fn, b,
                                batch->task[b], need_task_K);
        }
    }
    return MOP_OK;
}

/* The stream of prompt rows must fit one forward call. */
mop_status gate_check_stream(const mop_ctx *ctx, const mop_mixture *m, const char *fn)
{
    if (ctx->model != m->model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture and the context use different models",
                        fn);
    int32_t S = mixture_stream_len(&m->p);
    if (S > ctx->params.n_batch)
        return mop_fail(MOP_E_RANGE, "%s: the mixture's %d prompt rows exceed the context's "
                        "n_batch %d", fn, S, ctx->params.n_batch);
    return MOP_OK;
}

int32_t gate_targets(int32_t *row_idx, const mop_batch *batch, int32_t b)
{
    const int32_t T = batch->seq_len, len = batch->lengths[b];
    const uint8_t *mask = batch->loss_mask ? batch->loss_mask + (int64_t)b * T : NULL;
    int32_t n = 0;
    for (int32_t t = 0; t + 1 < len; t++)
        if (!mask || mask[t + 1]) {
            if (row_idx)
                row_idx[n] = t;
            n++;
        }
    return n;
}

/* ---- gate -------------------------------------------------------------------- */

int32_t gate_pool_len(const mop_batch *batch, int32_t b)
{
    const int32_t T = batch->lengths[b];
    if (!batch->loss_mask)
        return T;
    const uint8_t *mask = batch->loss_mask + (int64_t)b * batch->seq_len;
    for (int32_t t = 1; t < T; t++)
        if (mask[t])
            return t;
    return T;
}

/* Whether tokens[t..) starts with the user header. */
static int at_user_header(const mop_mixture *m, const int32_t *tokens, int32_t t, int32_t n)
{
    if (m->n_user_hdr == 0 || t + m->n_user_hdr > n)
        return 0;
    return memcmp(tokens + t, m->user_hdr, (size_t)m->n_user_hdr * sizeof(int32_t)) == 0;
}

void gate_pool_input(const mop_mixture *m, float *u, const float *x, const int32_t *tokens,
                     int32_t n_pool)
{
    const int64_t d = m->model->hp.n_embd;
    memset(u, 0, (size_t)d * sizeof(float));
    int32_t count = 0;
    if (m->p.gate_pool == MOP_POOL_CONTENT) {
        /* the rows of every user turn's content: after its header, up to its end of turn */
        int in_user = 0;
        for (int32_t t = 0; t < n_pool; t++) {
            if (at_user_header(m, tokens, t, n_pool)) {
                in_user = 1;
                t += m->n_user_hdr - 1;
                continue;
            }
            if (tokens[t] == m->eot)
                in_user = 0;
            if (!in_user)
                continue;
            add_inplace(u, x + t * d, d);
            count++;
        }
    }
    if (count == 0) { /* no user turn (or MOP_POOL_PROMPT): every row */
        for (int32_t t = 0; t < n_pool; t++)
            add_inplace(u, x + t * d, d);
        count = n_pool;
    }
    for (int64_t i = 0; i < d; i++)
        u[i] /= (float)count;
}

void gate_standardize(const mop_mixture *m, float *u)
{
    if (!m->p.gate_norm || !m->in_mean)
        return;
    const int64_t d = m->model->hp.n_embd;
    for (int64_t i = 0; i < d; i++)
        u[i] = (u[i] - m->in_mean[i]) / m->in_std[i];
}

const float *gate_batch_state(const mop_batch *batch, int32_t b)
{
    if (batch->struct_size < sizeof(mop_batch) || !batch->states)
        return NULL;
    return batch->states[b];
}

void gate_run_to(mop_ctx *ctx, const mop_mixture *m, float *x, float *u, const mop_batch *batch,
                 int32_t b, const int32_t *pos, int32_t to)
{
    const int64_t d = m->model->hp.n_embd;
    const int32_t T = batch->lengths[b];
    const float *st = gate_batch_state(batch, b);
    if (st && to == m->p.inject_layer) {
        memcpy(x, st, (size_t)T * (size_t)d * sizeof(float));
        memcpy(u, batch->gate_input + (int64_t)b * d, (size_t)d * sizeof(float));
        return;
    }
    const int32_t *tokens = batch->tokens + (int64_t)b * batch->seq_len;
    gate_embed_and_pool(ctx, m, x, u, tokens, T, gate_pool_len(batch, b), pos);
    if (to > m->p.gate_layer) {
        forward_layers(ctx, x, T, pos, m->p.gate_layer, to, NULL);
    } else if (to < m->p.gate_layer) { /* as gate_schedule: again from the embeddings */
        forward_embed(ctx, x, tokens, T);
        forward_layers(ctx, x, T, pos, 0, to, NULL);
    }
}

void gate_embed_and_pool(mop_ctx *ctx, const mop_mixture *m, float *x, float *u,
                         const int32_t *tokens, int32_t T, int32_t n_pool, const int32_t *pos)
{
    ctx->n_past = 0;
    forward_embed(ctx, x, tokens, T);
    forward_layers(ctx, x, T, pos, 0, m->p.gate_layer, NULL);
    gate_pool_input(m, u, x, tokens, n_pool);
}

void gate_fill_bias(const mop_mixture_params *p, float *bias, const float *w)
{
    const int32_t K = p->n_experts, P = p->prompt_len, G = mixture_groups(p);
    const float shift = p->gate_bias == MOP_BIAS_LOG_KW ? logf((float)K) : 0.0f;
    for (int32_t k = 0; k < G; k++) {
        float lw = k >= K ? 0.0f : w[k] > 0.0f ? logf(w[k]) + shift : -INFINITY;
        for (int32_t j = 0; j < P; j++)
            bias[k * P + j] = lw;
    }
}

void gate_weighted_prompt(const mop_mixture *m, float *out, const float *w)
{
    const int64_t n = (int64_t)m->p.prompt_len * m->model->hp.n_embd;
    const float *E = gate_experts(m);
    memset(out, 0, (size_t)n * sizeof(float));
    for (int32_t k = 0; k < m->p.n_experts; k++) {
        if (w[k] == 0.0f)
            continue;
        for (int64_t i = 0; i < n; i++)
            out[i] += w[k] * E[k * n + i];
    }
}

void gate_saved_rows(fwd_layer_saved *grp, const fwd_layer_saved *sv, const mop_hparams *hp,
                     int32_t first_layer, int64_t r0)
{
    const int64_t d = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
#define ROWS(f, w) grp[l].f = sv[l].f ? sv[l].f + r0 * (w) : NULL
    for (int32_t l = first_layer; l < hp->n_layer; l++) {
        ROWS(x_in, d);
        ROWS(rstd_attn, 1);
        ROWS(xn_attn, d);
        ROWS(q, qd);
        ROWS(k, kvd);
        ROWS(v, kvd);
        ROWS(lse, hp->n_head);
        ROWS(att, qd);
        ROWS(x_mid, d);
        ROWS(rstd_ffn, 1);
        ROWS(xn_ffn, d);
        ROWS(gate, ff);
        ROWS(up, ff);
    }
#undef ROWS
}

void gate_prompt_stream(mop_ctx *ctx, const mop_mixture *m, float *xp, int32_t S,
                        const int32_t *ppos, fwd_layer_saved *sv, fwd_layer_saved *grp)
{
    const mop_hparams *hp = &m->model->hp;
    const int32_t Lp = m->p.inject_layer;
    attn_extra ex;
    memset(&ex, 0, sizeof ex);
    ex.saved = sv;
    if (!gate_groups_separate(&m->p)) {
        ctx->n_past = 0;
        forward_layers(ctx, xp, S, ppos, Lp, hp->n_layer, &ex);
        return;
    }
    /* independent experts: each group is its own P-token sequence */
    const int32_t P = m->p.prompt_len;
    ex.saved = grp;
    for (int32_t r0 = 0; r0 < S; r0 += P) {
        gate_saved_rows(grp, sv, hp, Lp, r0);
        ctx->n_past = 0;
        forward_layers(ctx, xp + (int64_t)r0 * hp->n_embd, P, ppos + r0, Lp, hp->n_layer, &ex);
    }
    ctx->n_past = 0;
}

/* ---- inference cache of the prompt keys/values (attention-bias mode) ---------- */

/* Under cache_lock. */
static int cache_fresh_locked(const mop_mixture *m)
{
    return m->cache_valid && m->cache_kv &&
           memcmp(m->cache_experts, gate_experts(m), m->size[GATE_T_EXPERTS] * sizeof(float)) == 0;
}

/* The cache fields change under the lock only; the lock is the mixture's
 * (not its parameters'), so taking it on a const mixture is sound. */
static pthread_mutex_t *cache_lock(const mop_mixture *m)
{
    return (pthread_mutex_t *)&m->cache_lock;
}

int gate_cache_fresh(const mop_mixture *m)
{
    pthread_mutex_lock(cache_lock(m));
    int fresh = cache_fresh_locked(m);
    pthread_mutex_unlock(cache_lock(m));
    return fresh;
}

const float *gate_cache_peek(const mop_mixture *m)
{
    pthread_mutex_lock(cache_lock(m));
    const float *kv = cache_fresh_locked(m) ? m->cache_kv : NULL;
    pthread_mutex_unlock(cache_lock(m));
    return kv;
}

void gate_cache_invalidate(mop_mixture *m)
{
    pthread_mutex_lock(&m->cache_lock);
    m->cache_valid = 0;
    pthread_mutex_unlock(&m->cache_lock);
}

/* Build the cache with ctx (under the lock). */
static mop_status cache_build_locked(mop_ctx *ctx, mop_mixture *m)
{
    const mop_hparams *hp = &m->model->hp;
    const int32_t S = mixture_stream_len(&m->p), Lp = m->p.inject_layer;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, d = (size_t)hp->n_embd;
    const size_t nL = (size_t)(hp->n_layer - Lp);
    m->cache_valid = 0;
    if (!m->cache_kv) {
        m->cache_kv = mop_alloc(nL * 2 * (size_t)S * kvd * sizeof(float));
        m->cache_experts = mop_alloc(m->size[GATE_T_EXPERTS] * sizeof(float));
        if (!m->cache_kv || !m->cache_experts) {
            mop_free(m->cache_kv);
            mop_free(m->cache_experts);
            m->cache_kv = m->cache_experts = NULL;
            return mop_fail(MOP_E_NOMEM, "mixture: out of memory for the prompt K/V cache "
                            "(%zu layers x %d rows)", nL, S);
        }
    }
    fwd_layer_saved *sv = mop_calloc(2 * (size_t)hp->n_layer, sizeof *sv);
    float *xp = mop_alloc((size_t)S * d * sizeof(float));
    int32_t *ppos = mop_alloc((size_t)S * sizeof(int32_t));
    if (!sv || !xp || !ppos) {
        mop_free(sv), mop_free(xp), mop_free(ppos);
        return mop_fail(MOP_E_NOMEM, "mixture: out of memory building the prompt K/V cache");
    }
    for (int32_t l = Lp; l < hp->n_layer; l++) {
        sv[l].k = m->cache_kv + (size_t)(l - Lp) * 2 * (size_t)S * kvd;
        sv[l].v = sv[l].k + (size_t)S * kvd;
    }
    gate_prompt_positions(&m->p, ppos);
    memcpy(xp, gate_experts(m), (size_t)S * d * sizeof(float));
    memcpy(m->cache_experts, gate_experts(m), m->size[GATE_T_EXPERTS] * sizeof(float));
    const int32_t n_past = ctx->n_past;
    gate_prompt_stream(ctx, m, xp, S, ppos, sv, sv + hp->n_layer);
    ctx->n_past = n_past;
    mop_free(sv), mop_free(xp), mop_free(ppos);
    m->cache_valid = 1;
    return MOP_OK;
}

mop_status gate_cache_acquire(mop_ctx *ctx, const mop_mixture *m, const float **kv)
{
    mop_mixture *mm = (mop_mixture *)m; /* only the cache fields change, under the lock */
    mop_status st = MOP_OK;
    pthread_mutex_lock(&mm->cache_lock);
    if (!cache_fresh_locked(mm))
        st = cache_build_locked(ctx, mm);
    *kv = st == MOP_OK ? mm->cache_kv : NULL;
    pthread_mutex_unlock(&mm->cache_lock);
    return st;
}

mop_status gate_cache_build(mop_ctx *ctx, mop_mixture *m)
{
    if (m->p.combine != MOP_COMBINE_ATTENTION_BIAS)
        return MOP_OK;
    const float *kv;
    return gate_cache_acquire(ctx, m, &kv);
}

mop_status mop_mixture_prepare(mop_ctx *ctx, mop_mixture *m)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(m);
    MOP_TRY(gate_check_stream(ctx, m, "mop_mixture_prepare"));
    mop_ctx_reset(ctx);
    return gate_cache_build(ctx, m);
}

void gate_bind_prefix(gate_ws *ws, const mop_mixture *m, const float *kv)
{
    const mop_hparams *hp = &m->model->hp;
    const int32_t S = mixture_stream_len(&m->p), Lp = m->p.inject_layer;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        if (l < Lp) {
            ws->pk[l] = ws->pv[l] = NULL;
        } else if (kv) {
            ws->pk[l] = kv + (size_t)(l - Lp) * 2 * (size_t)S * kvd;
            ws->pv[l] = ws->pk[l] + (size_t)S * kvd;
        } else {
            ws->pk[l] = ws->sv_pr[l].k;
            ws->pv[l] = ws->sv_pr[l].v;
        }
    }
}

/* ---- scoring ------------------------------------------------------------------ */

/* Σ NLL of sequence b's targets from final hidden states x (T, d). */
static double head_nll(mop_ctx *ctx, gate_ws *ws, const float *x, const mop_batch *batch, int32_t b)
{
    const mop_model *mod = ctx->model;
    const int64_t d = mod->hp.n_embd, V = mod->hp.n_vocab;
    const int32_t T = batch->lengths[b];
    const int32_t *tok = batch->tokens + (int64_t)b * batch->seq_len;
    int32_t n = gate_targets(ws->row_idx, batch, b);
    double sum = 0.0;
    for (int32_t r0 = 0; r0 < n; r0 += FWD_HEAD_ROWS) {
        int32_t R = MOP_MIN(FWD_HEAD_ROWS, n - r0);
        for (int32_t r = 0; r < R; r++)
            memcpy(ws->bwd.rows + r * d, x + (int64_t)ws->row_idx[r0 + r] * d, (size_t)d * sizeof(float));
        rmsnorm_forward(ws->bwd.rows, NULL, ws->bwd.rows, mod->out_norm, R, d, mod->hp.norm_eps);
        mod->lm_head.ops->matmul(&mod->lm_head, ws->bwd.logits, ws->bwd.rows, R, ctx->pool);
        for (int32_t r = 0; r < R; r++) {
            const float *row = ws->bwd.logits + (int64_t)r * V;
            sum += logsumexp(row, V) - (double)row[tok[ws->row_idx[r0 + r] + 1]];
        }
    }
    (void)T;
    return sum;
}

/* One sequence through the mixture (or the base model when m is NULL), no
 * gradients; w_out (K) receives the gate weights. prompt_ready says whether
 * ws->sv_pr already holds this mixture's prompt K/V (attention-bias mode). */
static void eval_one(mop_ctx *ctx, gate_ws *ws, const mop_mixture *m, const mop_batch *batch,
                     int32_t b, int *prompt_ready, double *nll, float *w_out)
{
    const int32_t T = batch->lengths[b], n_layer = ctx->model->hp.n_layer;
    const int32_t *tok = batch->tokens + (int64_t)b * batch->seq_len;
    for (int32_t t = 0; t < T; t++)
        ws->pos[t] = t;
    if (!m) {
        ctx->n_past = 0;
        forward_embed(ctx, ws->x, tok, T);
        forward_layers(ctx, ws->x, T, ws->pos, 0, n_layer, NULL);
        *nll = head_nll(ctx, ws, ws->x, batch, b);
        return;
    }
    const mop_mixture_params *p = &m->p;
    gate_seq s = {.tokens = tok, .T = T, .n_pool = gate_pool_len(batch, b), .chunk = T,
                  .state = gate_batch_state(batch, b),
                  .task = batch->task ? batch->task[b] : -1, .prefix = GATE_PREFIX_COMPUTE};
    if (s.state)
        s.gate_input = batch->gate_input + (int64_t)b * m->model->hp.n_embd;
    if (p->combine == MOP_COMBINE_ATTENTION_BIAS) {
        s.cache_kv = gate_cache_peek(m);
        s.prefix = s.cache_kv ? GATE_PREFIX_CACHE
                   : *prompt_ready ? GATE_PREFIX_READY : GATE_PREFIX_COMPUTE;
        if (s.prefix == GATE_PREFIX_COMPUTE)
            *prompt_ready = 1;
    }
    attn_extra ex;
    gate_schedule(ctx, m, ws, ws->x, ws->pos, ws->u, ws->a, ws->pi, ws->w, &ex, &s);
    if (w_out)
        memcpy(w_out, ws->w, (size_t)p->n_experts * sizeof(float));
    *nll = head_nll(ctx, ws, ws->x, batch, b);
}

mop_status mop_mixture_evaluate(mop_ctx *ctx, const mop_mixture *const *mixtures,
                                int32_t n_mixtures, const mop_batch *batch, double *nll_sum,
                                int32_t *n_targets, float *gate_w)
{
    static const char fn[] = "mop_mixture_evaluate";
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(batch);
    MOP_CHECK_ARG(n_mixtures >= 0);
    MOP_CHECK_ARG(n_mixtures == 0 || mixtures);
    MOP_TRY(gate_check_batch(ctx, batch, 0, fn));
    const int32_t B = batch->n_seq;
    if (n_mixtures != 0 && n_mixtures != 1 && n_mixtures != B)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n_mixtures %d must be 0, 1 or n_seq %d", fn,
                        n_mixtures, B);
    const mop_mixture *first = NULL;
    int32_t maxS = 1, maxT = 1;
    for (int32_t i = 0; i < n_mixtures; i++) {
        const mop_mixture *m = mixtures[i];
        if (!m)
            continue;
        MOP_TRY(gate_check_stream(ctx, m, fn));
        if (m->p.gate_mode == MOP_GATE_ORACLE)
            MOP_TRY(gate_check_batch(ctx, batch, m->p.n_experts, fn));
        if (!first)
            first = m;
        if (gate_w && m->p.n_experts != first->p.n_experts)
            return mop_fail(MOP_E_INVALID_ARG, "%s: gate_w needs every mixture to have K = %d "
                            "experts (mixture %d has %d)", fn, first->p.n_experts, i,
                            m->p.n_experts);
        maxS = MOP_MAX(maxS, mixture_stream_len(&m->p));
    }
    for (int32_t b = 0; b < B; b++)
        maxT = MOP_MAX(maxT, batch->lengths[b]);

    /* Evaluation leaves the mixtures untouched (they may be shared), so its
     * buffers are this call's. The base model's work needs a mixture only
     * for sizes: use the first one, or none at all. */
    gate_ws ws;
    memset(&ws, 0, sizeof ws);
    mop_mixture dummy;
    memset(&dummy, 0, sizeof dummy);
    dummy.model = ctx->model;
    mop_mixture_params_init(&dummy.p);
    dummy.p.inject_layer = ctx->model->hp.n_layer - 1;
    mop_status st = gate_ws_reserve(&ws, &dummy, maxT, maxS, 1, 0);
    for (int32_t i = 0; i < n_mixtures && st == MOP_OK; i++)
        if (mixtures[i])
            st = gate_ws_reserve(&ws, mixtures[i], maxT, maxS, 1, 0);
    if (st != MOP_OK)
        return st;
    mop_ctx_reset(ctx);
    const mop_mixture *prev = NULL;
    int prompt_ready = 0;
    for (int32_t b = 0; b < B; b++) {
        const mop_mixture *m = n_mixtures == 0 ? NULL : mixtures[n_mixtures == 1 ? 0 : b];
        if (m != prev)
            prompt_ready = 0;
        prev = m;
        double nll = 0.0;
        float *wrow = gate_w && first ? gate_w + (int64_t)b * first->p.n_experts : NULL;
        if (wrow && !m)
            memset(wrow, 0, (size_t)first->p.n_experts * sizeof(float));
        eval_one(ctx, &ws, m, batch, b, &prompt_ready, &nll, m ? wrow : NULL);
        if (nll_sum)
            nll_sum[b] = nll;
        if (n_targets)
            n_targets[b] = gate_targets(NULL, batch, b);
    }
    gate_ws_free(&ws);
    mop_ctx_reset(ctx);
    return MOP_OK;
}

/* Gate weights w (B, K), or the raw pooled inputs raw (B, d) when raw is given. */
static mop_status gate_batch(mop_ctx *ctx, const mop_mixture *m, const mop_batch *batch,
                             float *w, float *raw, const char *fn)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(m);
    MOP_CHECK_ARG(batch);
    MOP_CHECK_ARG(w || raw);
    if (ctx->model != m->model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture and the context use different models",
                        fn);
    const int need_task = !raw && m->p.gate_mode == MOP_GATE_ORACLE;
    MOP_TRY(gate_check_batch(ctx, batch, need_task ? m->p.n_experts : 0, fn));
    const int64_t d = m->model->hp.n_embd;
    int32_t maxT = 1;
    for (int32_t b = 0; b < batch->n_seq; b++)
        maxT = MOP_MAX(maxT, batch->lengths[b]);
    gate_ws ws;
    memset(&ws, 0, sizeof ws);
    MOP_TRY(gate_ws_reserve(&ws, m, maxT, 1, 1, 0));
    mop_ctx_reset(ctx);
    for (int32_t b = 0; b < batch->n_seq; b++) {
        /* causal: the pooled rows do not depend on the tokens after them */
        const int32_t T = gate_pool_len(batch, b);
        for (int32_t t = 0; t < T; t++)
            ws.pos[t] = t;
        gate_embed_and_pool(ctx, m, ws.x, ws.u, batch->tokens + (int64_t)b * batch->seq_len, T,
                            T, ws.pos);
        if (raw) {
            memcpy(raw + (int64_t)b * d, ws.u, (size_t)d * sizeof(float));
            continue;
        }
        gate_standardize(m, ws.u);
        gate_forward_one(m, ws.a, ws.pi, w + (int64_t)b * m->p.n_experts, ws.u,
                         batch->task ? batch->task[b] : -1);
    }
    gate_ws_free(&ws);
    mop_ctx_reset(ctx);
    return MOP_OK;
}

mop_status mop_mixture_gate(mop_ctx *ctx, const mop_mixture *m, const mop_batch *batch, float *w)
{
    MOP_CHECK_ARG(w);
    return gate_batch(ctx, m, batch, w, NULL, "mop_mixture_gate");
}

mop_status mop_mixture_gate_inputs(mop_ctx *ctx, const mop_mixture *m, const mop_batch *batch,
                                   float *u)
{
    MOP_CHECK_ARG(u);
    return gate_batch(ctx, m, batch, NULL, u, "mop_mixture_gate_inputs");
}

mop_status mop_mixture_gate_from_inputs(const mop_mixture *m, const float *u, int32_t n,
                                        float *w)
{
    static const char fn[] = "mop_mixture_gate_from_inputs";
    MOP_CHECK_ARG(m && u && w);
    if (n < 0)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n = %d (need >= 0)", fn, n);
    if (m->p.gate_mode == MOP_GATE_ORACLE)
        return mop_fail(MOP_E_INVALID_ARG, "%s: an oracle gate needs task labels", fn);
    const int32_t K = m->p.n_experts, d = m->model->hp.n_embd;
    const int32_t h = m->p.gate_mode == MOP_GATE_LEARNED ? m->p.gate_hidden : 1;
    for (int64_t i = 0; i < (int64_t)n * d; i++)
        if (!isfinite(u[i]))
            return mop_fail(MOP_E_INVALID_ARG, "%s: row %lld holds a non-finite value", fn,
                            (long long)(i / d));
    float *un = mop_alloc((size_t)d * sizeof(float)), *a = mop_alloc((size_t)h * sizeof(float));
    float *pi = mop_alloc((size_t)K * sizeof(float));
    if (!un || !a || !pi) {
        mop_free(un), mop_free(a), mop_free(pi);
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    for (int32_t r = 0; r < n; r++) {
        memcpy(un, u + (int64_t)r * d, (size_t)d * sizeof(float));
        if (m->p.gate_mode == MOP_GATE_LEARNED)
            gate_standardize(m, un);
        gate_forward_one(m, a, pi, w + (int64_t)r * K, un, -1);
    }
    mop_free(un), mop_free(a), mop_free(pi);
    return MOP_OK;
}

mop_status mop_mixture_inject_states(mop_ctx *ctx, const mop_mixture *m, const mop_batch *batch,
                                     float *const *states, float *gate_input)
{
    static const char fn[] = "mop_mixture_inject_states";
    MOP_CHECK_ARG(ctx && m && batch && states);
    if (ctx->model != m->model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture and the context use different models",
                        fn);
    MOP_TRY(gate_check_batch(ctx, batch, 0, fn));
    for (int32_t b = 0; b < batch->n_seq; b++)
        MOP_CHECK_ARG(states[b]);
    mop_batch plain = *batch; /* computed, never taken from a cache */
    plain.struct_size = (uint32_t)offsetof(mop_batch, states);
    int32_t maxT = 1;
    for (int32_t b = 0; b < batch->n_seq; b++)
        maxT = MOP_MAX(maxT, batch->lengths[b]);
    gate_ws ws;
    memset(&ws, 0, sizeof ws);
    MOP_TRY(gate_ws_reserve(&ws, m, maxT, 1, 1, 0));
    const int64_t d = m->model->hp.n_embd;
    mop_ctx_reset(ctx);
    for (int32_t t = 0; t < maxT; t++)
        ws.pos[t] = t;
    for (int32_t b = 0; b < batch->n_seq; b++) {
        gate_run_to(ctx, m, states[b], ws.u, &plain, b, ws.pos, m->p.inject_layer);
        if (gate_input)
            memcpy(gate_input + b * d, ws.u, (size_t)d * sizeof(float));
    }
    gate_ws_free(&ws);
    mop_ctx_reset(ctx);
    return MOP_OK;
}

/* ---- generation ---------------------------------------------------------------- */

mop_status mop_mixture_generate(mop_ctx *ctx, mop_mixture *m, mop_sampler *sampler,
                                const int32_t *prompt, int32_t n_prompt, int32_t max_new,
                                mop_token_fn on_token, void *user, int32_t *n_generated)
{
    static const char fn[] = "mop_mixture_generate";
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(m);
    MOP_CHECK_ARG(sampler);
    MOP_CHECK_ARG(prompt);
    if (n_prompt < 1 || max_new < 0)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n_prompt %d (need >= 1), max_new %d (need >= 0)",
                        fn, n_prompt, max_new);
    MOP_TRY(gate_check_stream(ctx, m, fn));
    if (m->p.gate_mode == MOP_GATE_ORACLE)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: an oracle mixture routes by task label and "
                        "cannot generate (it is an evaluation baseline)", fn);
    if (n_prompt > ctx->params.n_ctx)
        return mop_fail(MOP_E_RANGE, "%s: prompt of %d tokens exceeds n_ctx %d", fn, n_prompt,
                        ctx->params.n_ctx);
    /* mop_generate() on the context with m attached (the one decode path) */
    if (ctx->adapter.owner == m)
        return mop_generate(ctx, sampler, prompt, n_prompt, max_new, on_token, user, n_generated);
    ctx_adapter prev = ctx->adapter;
    memset(&ctx->adapter, 0, sizeof ctx->adapter);
    mop_status st = gate_ctx_attach(ctx, m, fn);
    if (st == MOP_OK)
        st = mop_generate(ctx, sampler, prompt, n_prompt, max_new, on_token, user, n_generated);
    if (ctx->adapter.free_state)
        ctx->adapter.free_state(ctx->adapter.state);
    ctx->adapter = prev;
    if (prev.owner) /* the cache holds m's sequence, not the attached mixture's */
        mop_ctx_reset(ctx);
    return st;
}
