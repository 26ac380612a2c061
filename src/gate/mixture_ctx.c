/* A mixture attached to a context (mop_ctx_set_mixture): mop_ctx_decode,
 * mop_ctx_nll, mop_generate and the rest run their tokens through the
 * mixture's layer schedule (schedule.c). The first call of a sequence (at
 * n_past 0) runs the gate on its tokens and binds the prompt prefix; later
 * calls reuse both. All work memory is the context's: the mixture is only
 * read, so one prepared mixture serves contexts in any number of threads. */
#include <string.h>

#include "gate.h"

/* The context's decode state for an attached mixture. */
typedef struct gate_dec {
    const mop_mixture *m;
    gate_ws ws;     /* the prefix binding, gate, weighted-sum prompt K/V (decode subset) */
    attn_extra ex;  /* the current sequence's prefix (valid while n_past > 0) */
    float *xs;      /* (cap, d) hidden states of the last call */
    int32_t *pos;   /* (cap) their positions */
    int32_t cap;
} gate_dec;

static void dec_free(void *state)
{
    gate_dec *g = state;
    if (!g)
        return;
    gate_ws_free(&g->ws);
    mop_free(g->xs);
    mop_free(g->pos);
    mop_free(g);
}

/* Room for n rows in xs/pos; nothing changes on failure. */
static mop_status dec_grow(gate_dec *g, const mop_hparams *hp, int32_t n)
{
    if (n <= g->cap)
        return MOP_OK;
    size_t bytes;
    if (!mop_mul_ok((size_t)n, (size_t)hp->n_embd * sizeof(float), &bytes))
        return mop_fail(MOP_E_NOMEM, "mixture decode: %d tokens overflow the buffer size", n);
    float *xs = mop_alloc(bytes);
    int32_t *pos = mop_alloc((size_t)n * sizeof(int32_t));
    if (!xs || !pos) {
        mop_free(xs), mop_free(pos);
        return mop_fail(MOP_E_NOMEM, "mixture decode: out of memory for %d tokens", n);
    }
    mop_free(g->xs), mop_free(g->pos);
    g->xs = xs, g->pos = pos, g->cap = n;
    return MOP_OK;
}

/* ctx_adapter.forward: n tokens at positions n_past.. through the mixture. */
static mop_status dec_forward(mop_ctx *ctx, const int32_t *tokens, int32_t n, const float **x)
{
    gate_dec *g = ctx->adapter.state;
    const mop_mixture *m = g->m;
    const mop_hparams *hp = &ctx->model->hp;
    const int64_t d = hp->n_embd;
    const int32_t n0 = ctx->n_past, nb = ctx->params.n_batch;
    MOP_TRY(dec_grow(g, hp, n));
    if (n0 == 0) {
        /* a new sequence: the gate reads these tokens; the prompt prefix is
         * the mixture's shared cache (built first, while the cache rows at
         * L_p are free) or, for a weighted sum, computed for this gate */
        gate_seq s = {.tokens = tokens, .T = n, .n_pool = n, .chunk = nb, .task = -1,
                      .prefix = GATE_PREFIX_COMPUTE};
        if (m->p.combine == MOP_COMBINE_ATTENTION_BIAS) {
            MOP_TRY(gate_cache_acquire(ctx, m, &s.cache_kv));
            s.prefix = GATE_PREFIX_CACHE;
        }
        for (int32_t t = 0; t < n; t++)
            g->pos[t] = t;
        gate_schedule(ctx, m, &g->ws, g->xs, g->pos, g->ws.u, g->ws.a, g->ws.pi, g->ws.w, &g->ex,
                      &s);
    } else {
        for (int32_t t = 0; t < n; t++)
            g->pos[t] = n0 + t;
        for (int32_t c0 = 0; c0 < n; c0 += nb) {
            int32_t T = MOP_MIN(nb, n - c0);
            ctx->n_past = n0 + c0;
            forward_embed(ctx, g->xs + c0 * d, tokens + c0, T);
            gate_schedule_step(ctx, m, g->xs + c0 * d, T, g->pos + c0, &g->ex);
        }
    }
    ctx->n_past = n0 + n;
    *x = g->xs;
    return MOP_OK;
}

mop_status gate_ctx_attach(mop_ctx *ctx, const mop_mixture *m, const char *fn)
{
    if (ctx->model != m->model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture was made for another model (a "
                        "mixture works only with contexts on the model it was created or "
                        "loaded with)", fn);
    if (m->p.gate_mode == MOP_GATE_ORACLE)
        return mop_fail(MOP_E_UNSUPPORTED, "%s: an oracle mixture routes by task label and "
                        "cannot decode (it is an evaluation baseline)", fn);
    /* one forward call of the prompt stream: a group of P rows, or all S */
    const int32_t S = mixture_stream_len(&m->p);
    const int32_t rows = gate_groups_separate(&m->p) ? m->p.prompt_len : S;
    if (rows > ctx->params.n_ctx)
        return mop_fail(MOP_E_RANGE, "%s: the mixture's prompt stream runs %d rows at once, "
                        "more than the context's n_ctx %d", fn, rows, ctx->params.n_ctx);
    if (ctx->borrowed) {
        if (S > ctx->cap_rows)
            return mop_fail(MOP_E_INTERNAL, "%s: %d prompt rows, scratch of %d", fn, S,
                            ctx->cap_rows);
    } else {
        MOP_TRY(ctx_reserve_rows(ctx, S));
    }
    gate_dec *g = mop_calloc(1, sizeof *g);
    if (!g)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    g->m = m;
    mop_status st = gate_ws_reserve_decode(&g->ws, m);
    if (st == MOP_OK)
        st = dec_grow(g, &ctx->model->hp, 1);
    if (st != MOP_OK) {
        dec_free(g);
        mop_error_prefix("%s", fn);
        return st;
    }
    ctx->adapter.owner = m;
    ctx->adapter.state = g;
    ctx->adapter.forward = dec_forward;
    ctx->adapter.free_state = dec_free;
    mop_ctx_reset(ctx);
    return MOP_OK;
}

mop_status mop_ctx_set_mixture(mop_ctx *ctx, const mop_mixture *m)
{
    static const char fn[] = "mop_ctx_set_mixture";
    MOP_CHECK_ARG(ctx);
    if (m && ctx->adapter.owner == m) {
        mop_ctx_reset(ctx);
        return MOP_OK;
    }
    ctx_adapter prev = ctx->adapter;
    memset(&ctx->adapter, 0, sizeof ctx->adapter);
    if (m) {
        mop_status st = gate_ctx_attach(ctx, m, fn);
        if (st != MOP_OK) {
            ctx->adapter = prev; /* unchanged on failure */
            return st;
        }
    }
    if (prev.free_state)
        prev.free_state(prev.state);
    mop_ctx_reset(ctx);
    return MOP_OK;
}

const mop_mixture *mop_ctx_get_mixture(const mop_ctx *ctx)
{
    return ctx ? (const mop_mixture *)ctx->adapter.owner : NULL;
}

mop_status mop_ctx_gate_weights(const mop_ctx *ctx, float *w, int32_t cap, int32_t *n_out)
{
    static const char fn[] = "mop_ctx_gate_weights";
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(n_out);
    MOP_CHECK_ARG(w || cap == 0);
    MOP_CHECK_ARG(cap >= 0);
    if (!ctx->adapter.owner)
        return mop_fail(MOP_E_STATE, "%s: no mixture is attached to the context", fn);
    const gate_dec *g = ctx->adapter.state;
    const int32_t K = g->m->p.n_experts;
    *n_out = K;
    if (ctx->n_past == 0)
        return mop_fail(MOP_E_STATE, "%s: nothing decoded since the last reset (the gate reads "
                        "the first call's tokens)", fn);
    if (cap < K)
        return mop_fail(MOP_E_RANGE, "%s: cap %d < %d experts", fn, cap, K);
    memcpy(w, g->ws.w, (size_t)K * sizeof(float));
    return MOP_OK;
}

const attn_extra *gate_ctx_prefix(const mop_ctx *ctx, int32_t *inject_layer)
{
    if (!ctx->adapter.owner)
        return NULL;
    const gate_dec *g = ctx->adapter.state;
    *inject_layer = g->m->p.inject_layer;
    return &g->ex;
}
