/* Inference contexts: KV cache, decode, NLL/perplexity, generation. */
#include <math.h>
#include <string.h>

#include "forward.h"

#define CTX_MAX_THREADS 256

/* first release (0.1.0) */
#define CTX_PARAMS_MIN MOP_SIZE_THROUGH(mop_ctx_params, n_threads)

static void ctx_defaults(mop_ctx_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->n_ctx = 2048;
    d->n_batch = 512;
    d->n_threads = 0;
}

MOP_DEFINE_PARAMS_INIT(ctx, CTX_PARAMS_MIN)

/* n floats, overflow-checked; NULL on overflow or out of memory. */
static float *alloc_floats(size_t a, size_t b, size_t c)
{
    size_t n, bytes;
    if (!mop_mul_ok(a, b, &n) || !mop_mul_ok(n, c, &n) || !mop_mul_ok(n, sizeof(float), &bytes))
        return NULL;
    return mop_alloc(bytes ? bytes : 1);
}

void mop_ctx_free(mop_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->adapter.free_state)
        ctx->adapter.free_state(ctx->adapter.state);
    if (!ctx->borrowed) {
        mop_pool_free(ctx->pool);
        rope_table_free(&ctx->rope);
        mop_free(ctx->x);
        mop_free(ctx->xn);
        mop_free(ctx->q);
        mop_free(ctx->att);
        mop_free(ctx->gate);
        mop_free(ctx->up);
        mop_free(ctx->pos);
    }
    mop_free(ctx->kv);
    mop_free(ctx->logits);
    mop_model_free(ctx->model);
    mop_free(ctx);
}

mop_status mop_ctx_create(mop_model *model, const mop_ctx_params *params, mop_ctx **out)
{
    MOP_CHECK_ARG(model);
    MOP_CHECK_ARG(out);
    mop_ctx_params p;
    ctx_defaults(&p);
    if (params)
        MOP_READ_STRUCT("mop_ctx_create", &p, params, CTX_PARAMS_MIN);
    const mop_hparams *hp = &model->hp;
    if (p.n_ctx < 1 || (hp->n_ctx_train > 0 && p.n_ctx > hp->n_ctx_train))
        return mop_fail(MOP_E_RANGE, "mop_ctx_create: n_ctx %d outside [1, %d] (model's context)",
                        p.n_ctx, hp->n_ctx_train);
    if (p.n_batch < 1)
        return mop_fail(MOP_E_RANGE, "mop_ctx_create: n_batch %d must be >= 1", p.n_batch);
    if (p.n_threads < 0 || p.n_threads > CTX_MAX_THREADS)
        return mop_fail(MOP_E_RANGE, "mop_ctx_create: n_threads %d outside [0, %d]", p.n_threads,
                        CTX_MAX_THREADS);
    if (hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv != 0 || hp->head_dim < 1 ||
        hp->head_dim > 1024)
        return mop_fail(MOP_E_UNSUPPORTED,
                        "mop_ctx_create: n_head %d, n_head_kv %d, head_dim %d (need n_head "
                        "divisible by n_head_kv and head_dim <= 1024)",
                        hp->n_head, hp->n_head_kv, hp->head_dim);
    if (p.n_batch > p.n_ctx)
        p.n_batch = p.n_ctx; /* a call never holds more tokens than the cache */

    mop_ctx *ctx = mop_calloc(1, sizeof *ctx);
    if (!ctx)
        return mop_fail(MOP_E_NOMEM, "mop_ctx_create: out of memory");
    ctx->model = model;
    mop_model_retain(model);
    ctx->params = p;

    size_t nb = (size_t)p.n_batch, d = (size_t)hp->n_embd, ff = (size_t)hp->n_ff;
    size_t qd = (size_t)hp->n_head * (size_t)hp->head_dim;
    size_t kvd = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    ctx->cap_logits = MOP_MIN(p.n_batch, FWD_HEAD_ROWS);
    ctx->cap_rows = p.n_batch;
    ctx->kv = alloc_floats((size_t)hp->n_layer * 2, (size_t)p.n_ctx, kvd);
    ctx->x = alloc_floats(nb, d, 1);
    ctx->xn = alloc_floats(nb, d, 1);
    ctx->q = alloc_floats(nb, qd, 1);
    ctx->att = alloc_floats(nb, qd, 1);
    ctx->gate = alloc_floats(nb, ff, 1);
    ctx->up = alloc_floats(nb, ff, 1);
    ctx->pos = mop_alloc(nb * sizeof(int32_t));
    ctx->logits = alloc_floats((size_t)ctx->cap_logits, (size_t)hp->n_vocab, 1);
    if (!ctx->kv || !ctx->x || !ctx->xn || !ctx->q || !ctx->att || !ctx->gate || !ctx->up ||
        !ctx->pos || !ctx->logits) {
        size_t kv_mb = (size_t)hp->n_layer * 2 * (size_t)p.n_ctx * kvd * sizeof(float) >> 20;
        mop_ctx_free(ctx);
        return mop_fail(MOP_E_NOMEM,
                        "mop_ctx_create: out of memory for n_ctx %d (KV cache %zu MiB), "
                        "n_batch %d",
                        p.n_ctx, kv_mb, p.n_batch);
    }
    mop_status s = rope_table_init(&ctx->rope, hp, p.n_ctx);
    if (s == MOP_OK)
        s = mop_pool_create(p.n_threads, &ctx->pool);
    if (s != MOP_OK) {
        mop_error_prefix("mop_ctx_create");
        mop_ctx_free(ctx);
        return s;
    }
    *out = ctx;
    return MOP_OK;
}

mop_status ctx_reserve_rows(mop_ctx *ctx, int32_t rows)
{
    if (rows <= ctx->cap_rows)
        return MOP_OK;
    const mop_hparams *hp = &ctx->model->hp;
    size_t nr = (size_t)rows, d = (size_t)hp->n_embd, ff = (size_t)hp->n_ff;
    size_t qd = (size_t)hp->n_head * (size_t)hp->head_dim;
    float *x = alloc_floats(nr, d, 1), *xn = alloc_floats(nr, d, 1), *q = alloc_floats(nr, qd, 1);
    float *att = alloc_floats(nr, qd, 1), *gate = alloc_floats(nr, ff, 1);
    float *up = alloc_floats(nr, ff, 1);
    int32_t *pos = mop_alloc(nr * sizeof(int32_t));
    if (!x || !xn || !q || !att || !gate || !up || !pos) {
        mop_free(x), mop_free(xn), mop_free(q), mop_free(att), mop_free(gate), mop_free(up);
        mop_free(pos);
        return mop_fail(MOP_E_NOMEM, "context: out of memory for %d rows of scratch", rows);
    }
    mop_free(ctx->x), mop_free(ctx->xn), mop_free(ctx->q), mop_free(ctx->att);
    mop_free(ctx->gate), mop_free(ctx->up), mop_free(ctx->pos);
    ctx->x = x, ctx->xn = xn, ctx->q = q, ctx->att = att, ctx->gate = gate, ctx->up = up;
    ctx->pos = pos;
    ctx->cap_rows = rows;
    return MOP_OK;
}

mop_status ctx_create_borrowing(mop_ctx *owner, int32_t n_ctx, mop_ctx **out)
{
    const mop_hparams *hp = &owner->model->hp;
    if (n_ctx < 1 || n_ctx > owner->params.n_ctx)
        return mop_fail(MOP_E_RANGE, "context: n_ctx %d outside [1, %d]", n_ctx,
                        owner->params.n_ctx);
    mop_ctx *ctx = mop_calloc(1, sizeof *ctx);
    if (!ctx)
        return mop_fail(MOP_E_NOMEM, "context: out of memory");
    *ctx = *owner;
    memset(&ctx->adapter, 0, sizeof ctx->adapter);
    ctx->borrowed = 1;
    ctx->params.n_ctx = n_ctx;
    ctx->n_past = 0;
    ctx->n_logits = 0;
    ctx->cap_logits = 1;
    size_t kvd = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    ctx->kv = alloc_floats((size_t)hp->n_layer * 2, (size_t)n_ctx, kvd);
    ctx->logits = alloc_floats(1, (size_t)hp->n_vocab, 1);
    if (!ctx->kv || !ctx->logits) {
        mop_free(ctx->kv), mop_free(ctx->logits), mop_free(ctx);
        return mop_fail(MOP_E_NOMEM, "context: out of memory for a KV cache of %d tokens", n_ctx);
    }
    mop_model_retain(ctx->model);
    *out = ctx;
    return MOP_OK;
}

void mop_ctx_reset(mop_ctx *ctx)
{
    if (!ctx)
        return;
    ctx->n_past = 0;
    ctx->n_logits = 0;
}

int32_t mop_ctx_n_past(const mop_ctx *ctx)
{
    return ctx ? ctx->n_past : 0;
}

static mop_status check_tokens(const mop_ctx *ctx, const char *fn, const int32_t *tokens,
                               int32_t n)
{
    int32_t n_vocab = ctx->model->hp.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return mop_fail(MOP_E_INVALID_ARG, "%s: token %d at index %d outside [0, %d)", fn,
                            tokens[i], i, n_vocab);
    return MOP_OK;
}

/* Embed tokens (T <= n_batch) at positions n_past.., run every layer, advance
 * n_past. The final hidden states are left in ctx->x. */
static void run_chunk(mop_ctx *ctx, const int32_t *tokens, int32_t T)
{
    for (int32_t t = 0; t < T; t++)
        ctx->pos[t] = ctx->n_past + t;
    forward_embed(ctx, ctx->x, tokens, T);
    forward_layers(ctx, ctx->x, T, ctx->pos, 0, ctx->model->hp.n_layer, NULL);
    ctx->n_past += T;
}

mop_status mop_ctx_decode(mop_ctx *ctx, const int32_t *tokens, int32_t n, int32_t logits_mode)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(tokens);
    if (n < 1)
        return mop_fail(MOP_E_INVALID_ARG, "mop_ctx_decode: n = %d tokens, need >= 1", n);
    if (logits_mode != MOP_LOGITS_LAST && logits_mode != MOP_LOGITS_ALL)
        return mop_fail(MOP_E_INVALID_ARG, "mop_ctx_decode: unknown logits_mode %d",
                        logits_mode);
    MOP_TRY(check_tokens(ctx, "mop_ctx_decode", tokens, n));
    if (n > ctx->params.n_ctx - ctx->n_past)
        return mop_fail(MOP_E_RANGE,
                        "mop_ctx_decode: %d cached + %d new tokens exceed n_ctx %d", ctx->n_past,
                        n, ctx->params.n_ctx);
    const int64_t V = ctx->model->hp.n_vocab, d = ctx->model->hp.n_embd;
    if (logits_mode == MOP_LOGITS_ALL && n > ctx->cap_logits) {
        /* The one allocation outside creation: a wider LOGITS_ALL call than before. */
        float *grown = alloc_floats((size_t)n, (size_t)V, 1);
        if (!grown)
            return mop_fail(MOP_E_NOMEM, "mop_ctx_decode: out of memory for %d x %lld logits",
                            n, (long long)V);
        mop_free(ctx->logits);
        ctx->logits = grown;
        ctx->cap_logits = n;
    }
    if (ctx->adapter.forward) {
        /* a mixture: its layer schedule over the whole call, then the head */
        const float *xs;
        MOP_TRY(ctx->adapter.forward(ctx, tokens, n, &xs));
        if (logits_mode == MOP_LOGITS_ALL)
            for (int32_t c0 = 0; c0 < n; c0 += ctx->params.n_batch)
                forward_head(ctx, ctx->logits + (int64_t)c0 * V, xs + (int64_t)c0 * d,
                             MOP_MIN(ctx->params.n_batch, n - c0));
        else
            forward_head(ctx, ctx->logits, xs + (int64_t)(n - 1) * d, 1);
        ctx->n_logits = logits_mode == MOP_LOGITS_ALL ? n : 1;
        return MOP_OK;
    }
    for (int32_t c0 = 0; c0 < n; c0 += ctx->params.n_batch) {
        int32_t T = MOP_MIN(ctx->params.n_batch, n - c0);
        run_chunk(ctx, tokens + c0, T);
        if (logits_mode == MOP_LOGITS_ALL)
            forward_head(ctx, ctx->logits + (int64_t)c0 * V, ctx->x, T);
        else if (c0 + T == n)
            forward_head(ctx, ctx->logits, ctx->x + (int64_t)(T - 1) * d, 1);
    }
    ctx->n_logits = logits_mode == MOP_LOGITS_ALL ? n : 1;
    return MOP_OK;
}

mop_status mop_ctx_get_logits(const mop_ctx *ctx, const float **logits, int32_t *n_rows)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(logits);
    MOP_CHECK_ARG(n_rows);
    if (ctx->n_logits == 0)
        return mop_fail(MOP_E_STATE, "mop_ctx_get_logits: nothing decoded since the last reset");
    *logits = ctx->logits;
    *n_rows = ctx->n_logits;
    return MOP_OK;
}

mop_status mop_ctx_nll(mop_ctx *ctx, const int32_t *tokens, int32_t n, float *nll, double *total)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(tokens);
    if (n < 1)
        return mop_fail(MOP_E_INVALID_ARG, "mop_ctx_nll: n = %d tokens, need >= 1", n);
    if (n > ctx->params.n_ctx)
        return mop_fail(MOP_E_RANGE, "mop_ctx_nll: %d tokens exceed n_ctx %d", n,
                        ctx->params.n_ctx);
    MOP_TRY(check_tokens(ctx, "mop_ctx_nll", tokens, n));

    mop_ctx_reset(ctx);
    const int64_t V = ctx->model->hp.n_vocab, d = ctx->model->hp.n_embd;
    const float *xs = NULL; /* with a mixture: every token's final states at once */
    if (ctx->adapter.forward)
        MOP_TRY(ctx->adapter.forward(ctx, tokens, n, &xs));
    double sum = 0.0;
    for (int32_t c0 = 0; c0 < n; c0 += ctx->params.n_batch) {
        int32_t T = MOP_MIN(ctx->params.n_batch, n - c0);
        const float *xc = xs ? xs + (int64_t)c0 * d : ctx->x;
        if (!xs)
            run_chunk(ctx, tokens + c0, T);
        /* LM head a few rows at a time: the logits buffer holds cap_logits rows. */
        for (int32_t r0 = 0; r0 < T; r0 += ctx->cap_logits) {
            int32_t R = MOP_MIN(ctx->cap_logits, T - r0);
            forward_head(ctx, ctx->logits, xc + (int64_t)r0 * d, R);
            for (int32_t r = 0; r < R; r++) {
                int32_t i = c0 + r0 + r;
                if (i + 1 >= n)
                    break;
                const float *row = ctx->logits + (int64_t)r * V;
                double v = logsumexp(row, V) - (double)row[tokens[i + 1]];
                sum += v;
                if (nll)
                    nll[i] = (float)v;
            }
            if (c0 + r0 + R == n && R > 1) /* keep the last token's logits in row 0 */
                memmove(ctx->logits, ctx->logits + (int64_t)(R - 1) * V,
                        (size_t)V * sizeof(float));
        }
    }
    ctx->n_logits = 1;
    if (total)
        *total = sum;
    return MOP_OK;
}

mop_status mop_ctx_perplexity(mop_ctx *ctx, const int32_t *tokens, int32_t n, int32_t window,
                              mop_progress_fn progress, void *user, double *ppl)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(tokens);
    MOP_CHECK_ARG(ppl);
    if (n < 2)
        return mop_fail(MOP_E_INVALID_ARG, "mop_ctx_perplexity: n = %d tokens, need >= 2", n);
    if (window == 0)
        window = ctx->params.n_ctx;
    if (window < 2 || window > ctx->params.n_ctx)
        return mop_fail(MOP_E_RANGE, "mop_ctx_perplexity: window %d outside [2, n_ctx %d]",
                        window, ctx->params.n_ctx);
    MOP_TRY(check_tokens(ctx, "mop_ctx_perplexity", tokens, n));

    /* A trailing window of one token has nothing to score and is skipped. */
    int32_t n_windows = n / window + (n % window >= 2 ? 1 : 0);
    double sum = 0.0;
    int64_t scored = 0;
    for (int32_t w = 0; w < n_windows; w++) {
        int32_t start = w * window, len = MOP_MIN(window, n - start);
        double total = 0.0;
        MOP_TRY(mop_ctx_nll(ctx, tokens + start, len, NULL, &total));
        sum += total;
        scored += len - 1;
        if (progress && progress((uint64_t)w + 1, (uint64_t)n_windows, user))
            return mop_fail(MOP_E_CANCELLED, "mop_ctx_perplexity: cancelled after window %d of %d",
                            w + 1, n_windows);
    }
    *ppl = exp(sum / (double)scored);
    return MOP_OK;
}

mop_status mop_generate(mop_ctx *ctx, mop_sampler *sampler, const int32_t *prompt,
                        int32_t n_prompt, int32_t max_new, mop_token_fn on_token, void *user,
                        int32_t *n_generated)
{
    MOP_CHECK_ARG(ctx);
    MOP_CHECK_ARG(sampler);
    MOP_CHECK_ARG(prompt);
    if (n_prompt < 1 || max_new < 0)
        return mop_fail(MOP_E_INVALID_ARG, "mop_generate: n_prompt %d (need >= 1), max_new %d "
                        "(need >= 0)", n_prompt, max_new);
    if (n_prompt > ctx->params.n_ctx)
        return mop_fail(MOP_E_RANGE, "mop_generate: prompt of %d tokens exceeds n_ctx %d",
                        n_prompt, ctx->params.n_ctx);
    MOP_TRY(check_tokens(ctx, "mop_generate", prompt, n_prompt));

    int32_t V = ctx->model->hp.n_vocab;
    mop_ctx_reset(ctx);
    MOP_TRY(mop_ctx_decode(ctx, prompt, n_prompt, MOP_LOGITS_LAST));
    int32_t gen = 0;
    while (gen < max_new) {
        int32_t tok;
        MOP_TRY(mop_sampler_sample(sampler, ctx->logits, V, &tok));
        if (mop_model_is_eog(ctx->model, tok))
            break;
        gen++;
        if (on_token && on_token(tok, user))
            break;
        if (gen == max_new || ctx->n_past >= ctx->params.n_ctx)
            break;
        MOP_TRY(mop_ctx_decode(ctx, &tok, 1, MOP_LOGITS_LAST));
    }
    if (n_generated)
        *n_generated = gen;
    return MOP_OK;
}
