/* The Llama-family dense forward: embedding, transformer blocks, LM head.
 * Every linear product goes through the weight interface (model.h). */
#include <string.h>

#include "forward.h"

/* Y (T, rows) = X (T, cols) · Wᵀ; the matrix-vector kernel for one token. */
static void linear(const mop_weight *w, float *Y, const float *X, int32_t T, mop_pool *pool)
{
    if (T == 1)
        w->ops->matvec(w, Y, X, pool);
    else
        w->ops->matmul(w, Y, X, T, pool);
}

/* Y[i] = X · w[i]ᵀ for products sharing their input: one pool job for the
 * group when the format offers one (mop_weight_ops.linear_multi); else one
 * by one. */
static void linear_multi(const mop_weight *const *w, float *const *Y, int n_w, const float *X,
                         int32_t T, mop_pool *pool)
{
    if (w[0]->ops->linear_multi && w[0]->ops->linear_multi(w, Y, n_w, X, T, pool))
        return;
    for (int i = 0; i < n_w; i++)
        linear(w[i], Y[i], X, T, pool);
}

/* ---- elementwise work split over rows -------------------------------------- */

typedef enum { ROWS_RMSNORM, ROWS_ROPE, ROWS_SWIGLU, ROWS_ADD } rows_op;

typedef struct rows_job {
    rows_op op;
    float *out, *aux;      /* aux: rstd for RMSNorm */
    const float *a, *b;    /* inputs; b = weight (RMSNorm) or second operand */
    const int32_t *pos;
    const rope_table *rope;
    int64_t T, width;      /* rows and row width in floats */
    int32_t n_heads, head_dim;
    float eps;
} rows_job;

static void rows_worker(void *arg, int ith, int nth)
{
    const rows_job *j = arg;
    int64_t lo, hi;
    mop_split_range(j->T, ith, nth, &lo, &hi);
    if (lo >= hi)
        return;
    int64_t n = hi - lo, off = lo * j->width;
    switch (j->op) {
    case ROWS_RMSNORM:
        rmsnorm_forward(j->out + off, j->aux ? j->aux + lo : NULL, j->a + off, j->b, n,
                        j->width, j->eps);
        break;
    case ROWS_ROPE:
        rope_forward(j->out + off, j->a + off, j->pos + lo, j->rope, n, j->n_heads, j->head_dim);
        break;
    case ROWS_SWIGLU:
        swiglu_forward(j->out + off, j->a + off, j->b + off, n * j->width);
        break;
    case ROWS_ADD:
        add_inplace(j->out + off, j->a + off, n * j->width);
        break;
    }
}

/* Below this many floats per call, one thread beats waking the pool. */
#define ROWS_PARALLEL_MIN (1 << 15)

static void run_rows(mop_ctx *ctx, rows_job *j)
{
    mop_pool *pool = j->T > 1 && j->T * j->width >= ROWS_PARALLEL_MIN ? ctx->pool : NULL;
    mop_pool_run(pool, rows_worker, j);
}

static void rmsnorm_rows(mop_ctx *ctx, float *out, float *rstd, const float *inp,
                         const float *weight, int32_t T)
{
    rows_job j = {.op = ROWS_RMSNORM, .out = out, .aux = rstd, .a = inp, .b = weight,
                  .T = T, .width = ctx->model->hp.n_embd, .eps = ctx->model->hp.norm_eps};
    run_rows(ctx, &j);
}

static void rope_rows(mop_ctx *ctx, float *x, const int32_t *pos, int32_t T, int32_t n_heads)
{
    int32_t hd = ctx->model->hp.head_dim;
    rows_job j = {.op = ROWS_ROPE, .out = x, .a = x, .pos = pos, .rope = &ctx->rope, .T = T,
                  .width = (int64_t)n_heads * hd, .n_heads = n_heads, .head_dim = hd};
    run_rows(ctx, &j);
}

static void add_rows(mop_ctx *ctx, float *y, const float *x, int32_t T, int64_t width)
{
    rows_job j = {.op = ROWS_ADD, .out = y, .a = x, .T = T, .width = width};
    run_rows(ctx, &j);
}

static void save(float *dst, const float *src, int64_t n)
{
    if (dst)
        memcpy(dst, src, (size_t)n * sizeof(float));
}

/* ---- public pieces ---------------------------------------------------------- */

float *forward_cache_k(mop_ctx *ctx, int32_t layer)
{
    const mop_hparams *hp = &ctx->model->hp;
    size_t plane = (size_t)ctx->params.n_ctx * (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    return ctx->kv + (2 * (size_t)layer) * plane;
}

float *forward_cache_v(mop_ctx *ctx, int32_t layer)
{
    const mop_hparams *hp = &ctx->model->hp;
    size_t plane = (size_t)ctx->params.n_ctx * (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    return ctx->kv + (2 * (size_t)layer + 1) * plane;
}

void forward_embed(mop_ctx *ctx, float *x, const int32_t *tokens, int32_t T)
{
    int64_t d = ctx->model->hp.n_embd;
    for (int32_t t = 0; t < T; t++)
        memcpy(x + t * d, ctx->model->tok_embd + (int64_t)tokens[t] * d, (size_t)d * sizeof(float));
}

/* MLP block of layer L over x (T, d): x += down(silu(gate(xn)) * up(xn)), xn = norm(x). */
static void mlp_block(mop_ctx *ctx, float *x, int32_t T, const mop_layer *L,
                      const fwd_layer_saved *sv)
{
    const int64_t d = ctx->model->hp.n_embd, ff = ctx->model->hp.n_ff;
    float *xn = ctx->xn, *gate = ctx->gate, *up = ctx->up;
    mop_pool *pool = ctx->pool;
    rmsnorm_rows(ctx, xn, sv->rstd_ffn, x, L->ffn_norm, T);
    save(sv->xn_ffn, xn, T * d);
    const mop_weight *gu_w[2] = {&L->w_gate, &L->w_up};
    float *gu_y[2] = {gate, up};
    linear_multi(gu_w, gu_y, 2, xn, T, pool);
    save(sv->gate, gate, T * ff);
    save(sv->up, up, T * ff);
    rows_job sw = {.op = ROWS_SWIGLU, .out = gate, .a = gate, .b = up, .T = T, .width = ff};
    run_rows(ctx, &sw);
    linear(&L->w_down, xn, gate, T, pool);
    add_rows(ctx, x, xn, T, d);
}

void forward_layers(mop_ctx *ctx, float *x, int32_t T, const int32_t *pos, int32_t layer_begin,
                    int32_t layer_end, const attn_extra *extra)
{
    const mop_model *m = ctx->model;
    const mop_hparams *hp = &m->hp;
    const int64_t d = hp->n_embd;
    const int64_t qd = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    mop_pool *pool = ctx->pool;
    float *xn = ctx->xn, *q = ctx->q, *att = ctx->att;

    for (int32_t l = layer_begin; l < layer_end; l++) {
        const mop_layer *L = &m->layers[l];
        fwd_layer_saved none = {0};
        const fwd_layer_saved *sv = extra && extra->saved ? &extra->saved[l] : &none;
        float *kc = forward_cache_k(ctx, l), *vc = forward_cache_v(ctx, l);
        float *k_new = kc + (int64_t)ctx->n_past * kvd, *v_new = vc + (int64_t)ctx->n_past * kvd;

        /* attention block: x += wo(attn(rope(wq xn), rope(wk xn), wv xn)), xn = norm(x) */
        save(sv->x_in, x, T * d);
        rmsnorm_rows(ctx, xn, sv->rstd_attn, x, L->attn_norm, T);
        save(sv->xn_attn, xn, T * d);
        const mop_weight *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_y[3] = {q, k_new, v_new};
        linear_multi(qkv_w, qkv_y, 3, xn, T, pool);
        rope_rows(ctx, q, pos, T, hp->n_head);
        rope_rows(ctx, k_new, pos, T, hp->n_head_kv);
        save(sv->q, q, T * qd);
        save(sv->k, k_new, T * kvd);
        save(sv->v, v_new, T * kvd);

        attn_prefix prefix = {0};
        if (extra && extra->P > 0)
            prefix = (attn_prefix){extra->prefix_k[l], extra->prefix_v[l], extra->prefix_bias,
                                   extra->P};
        attention_forward(att, sv->lse, q, kc, vc, &prefix, ctx->n_past, T, hp->n_head,
                          hp->n_head_kv, hp->head_dim, pool);
        save(sv->att, att, T * qd);
        linear(&L->wo, xn, att, T, pool);
        add_rows(ctx, x, xn, T, d);
        save(sv->x_mid, x, T * d);

        mlp_block(ctx, x, T, L, sv);
    }
}

void forward_layers_rows(mop_ctx *ctx, float *x, int32_t B, const int32_t *pos,
                         const fwd_row *rows, float *k_new, float *v_new, attn_row *ar,
                         int32_t layer_begin, int32_t layer_end)
{
    const mop_model *m = ctx->model;
    const mop_hparams *hp = &m->hp;
    const int64_t d = hp->n_embd, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    mop_pool *pool = ctx->pool;
    float *xn = ctx->xn, *q = ctx->q, *att = ctx->att;
    for (int32_t l = layer_begin; l < layer_end; l++) {
        const mop_layer *L = &m->layers[l];
        const fwd_layer_saved none = {0};
        rmsnorm_rows(ctx, xn, NULL, x, L->attn_norm, B);
        const mop_weight *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_y[3] = {q, k_new, v_new};
        linear_multi(qkv_w, qkv_y, 3, xn, B, pool);
        rope_rows(ctx, q, pos, B, hp->n_head);
        rope_rows(ctx, k_new, pos, B, hp->n_head_kv);
        for (int32_t b = 0; b < B; b++) {
            mop_ctx *c = rows[b].ctx;
            memcpy(forward_cache_k(c, l) + (int64_t)c->n_past * kvd, k_new + b * kvd,
                   (size_t)kvd * sizeof(float));
            memcpy(forward_cache_v(c, l) + (int64_t)c->n_past * kvd, v_new + b * kvd,
                   (size_t)kvd * sizeof(float));
        }
        for (int32_t b = 0; b < B; b++) {
            mop_ctx *c = rows[b].ctx;
            const attn_extra *ex = rows[b].extra;
            memset(&ar[b], 0, sizeof ar[b]);
            ar[b].k = forward_cache_k(c, l);
            ar[b].v = forward_cache_v(c, l);
            ar[b].q_offset = c->n_past;
            if (ex && ex->P > 0 && l >= rows[b].prefix_from)
                ar[b].prefix = (attn_prefix){ex->prefix_k[l], ex->prefix_v[l], ex->prefix_bias,
                                             ex->P};
        }
        attention_forward_rows(att, q, ar, B, hp->n_head, hp->n_head_kv, hp->head_dim, pool);
        linear(&L->wo, xn, att, B, pool);
        add_rows(ctx, x, xn, B, d);
        mlp_block(ctx, x, B, L, &none);
    }
}

void forward_head(mop_ctx *ctx, float *logits, const float *x, int32_t T)
{
    const mop_model *m = ctx->model;
    rmsnorm_rows(ctx, ctx->xn, NULL, x, m->out_norm, T);
    linear(&m->lm_head, logits, ctx->xn, T, ctx->pool);
}
