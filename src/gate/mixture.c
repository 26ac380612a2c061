/* The mixture object: parameters, flat buffers, named views, initialisation. */
#include <math.h>
#include <string.h>

#include "gate.h"

/* first release (0.1.0) */
#define MIXTURE_PARAMS_MIN MOP_SIZE_THROUGH(mop_mixture_params, seed)

static void mixture_defaults(mop_mixture_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->n_experts = 8;
    d->prompt_len = 8;
    d->gate_layer = -1;
    d->inject_layer = -1;
    d->gate_hidden = 64;
    d->gate_act = MOP_GATE_ACT_GELU;
    d->gate_temperature = 1.0f;
    d->top_k = 0;
    d->combine = MOP_COMBINE_ATTENTION_BIAS;
    d->gate_mode = MOP_GATE_LEARNED;
    d->init = MOP_INIT_VOCAB;
    d->init_std = 0.02f;
    d->seed = 1234;
    d->gate_pool = MOP_POOL_CONTENT;
    d->gate_norm = 1;
    d->gate_bias = MOP_BIAS_LOG_KW;
    d->n_shared = 0;
    d->expert_attention = MOP_EXPERTS_INDEPENDENT;
    d->top_k_renorm = 0;
}

MOP_DEFINE_PARAMS_INIT(mixture, MIXTURE_PARAMS_MIN)

/* first release (0.1.0) */
#define LOSS_PARAMS_MIN MOP_SIZE_THROUGH(mop_loss_params, prox_mu)

static void loss_defaults(mop_loss_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
}

MOP_DEFINE_PARAMS_INIT(loss, LOSS_PARAMS_MIN)

mop_status mixture_resolve_params(mop_mixture_params *p, int32_t n_layer, const char *fn)
{
    if (p->gate_layer == -1)
        p->gate_layer = n_layer / 3;
    if (p->inject_layer == -1)
        p->inject_layer = n_layer / 3;
    if (p->n_experts < 1 || p->n_experts > 256)
        return mop_fail(MOP_E_RANGE, "%s: n_experts %d outside [1, 256]", fn, p->n_experts);
    if (p->prompt_len < 1 || p->prompt_len > 512)
        return mop_fail(MOP_E_RANGE, "%s: prompt_len %d outside [1, 512]", fn, p->prompt_len);
    if (p->gate_layer < 0 || p->gate_layer >= n_layer || p->inject_layer < 0 ||
        p->inject_layer >= n_layer)
        return mop_fail(MOP_E_RANGE,
                        "%s: need 0 <= gate_layer (%d) < n_layer (%d) and 0 <= inject_layer (%d) "
                        "< n_layer", fn, p->gate_layer, n_layer, p->inject_layer);
    if (p->gate_hidden < 1 || p->gate_hidden > 8192)
        return mop_fail(MOP_E_RANGE, "%s: gate_hidden %d outside [1, 8192]", fn, p->gate_hidden);
    if (!(p->gate_temperature > 0.0f) || !isfinite(p->gate_temperature))
        return mop_fail(MOP_E_RANGE, "%s: gate_temperature %g must be finite and > 0", fn,
                        (double)p->gate_temperature);
    if (p->top_k < 0 || p->top_k > p->n_experts)
        return mop_fail(MOP_E_RANGE, "%s: top_k %d outside [0, n_experts %d]", fn, p->top_k,
                        p->n_experts);
    if (p->gate_act != MOP_GATE_ACT_GELU && p->gate_act != MOP_GATE_ACT_RELU)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown gate_act %d", fn, p->gate_act);
    if (p->combine != MOP_COMBINE_ATTENTION_BIAS && p->combine != MOP_COMBINE_WEIGHTED_SUM)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown combine mode %d", fn, p->combine);
    if (p->gate_mode != MOP_GATE_LEARNED && p->gate_mode != MOP_GATE_UNIFORM &&
        p->gate_mode != MOP_GATE_ORACLE)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown gate_mode %d", fn, p->gate_mode);
    if (p->gate_mode != MOP_GATE_LEARNED && p->top_k != 0)
        return mop_fail(MOP_E_INVALID_ARG, "%s: top_k %d needs a learned gate", fn, p->top_k);
    if (p->gate_pool != MOP_POOL_CONTENT && p->gate_pool != MOP_POOL_PROMPT)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown gate_pool %d", fn, p->gate_pool);
    if (p->gate_norm != 0 && p->gate_norm != 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: gate_norm %d must be 0 or 1", fn, p->gate_norm);
    if (p->gate_bias != MOP_BIAS_LOG_KW && p->gate_bias != MOP_BIAS_LOG_W)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown gate_bias %d", fn, p->gate_bias);
    if (p->expert_attention != MOP_EXPERTS_INDEPENDENT &&
        p->expert_attention != MOP_EXPERTS_JOINT)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown expert_attention %d", fn,
                        p->expert_attention);
    if (p->top_k_renorm != 0 && p->top_k_renorm != 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: top_k_renorm %d must be 0 or 1", fn,
                        p->top_k_renorm);
    if (p->n_shared < 0 || p->n_shared > 16)
        return mop_fail(MOP_E_RANGE, "%s: n_shared %d outside [0, 16]", fn, p->n_shared);
    if (p->n_shared > 0 && p->combine != MOP_COMBINE_ATTENTION_BIAS)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n_shared %d needs the attention-bias combine mode",
                        fn, p->n_shared);
    if ((int64_t)mixture_groups(p) * p->prompt_len > 4096)
        return mop_fail(MOP_E_RANGE, "%s: %d groups of %d tokens: more than 4096 prompt rows", fn,
                        mixture_groups(p), p->prompt_len);
    if (p->init != MOP_INIT_VOCAB && p->init != MOP_INIT_NORMAL)
        return mop_fail(MOP_E_INVALID_ARG, "%s: unknown expert init %d", fn, p->init);
    if (!(p->init_std >= 0.0f) || !isfinite(p->init_std))
        return mop_fail(MOP_E_RANGE, "%s: init_std %g must be finite and >= 0", fn,
                        (double)p->init_std);
    return MOP_OK;
}

int32_t mixture_groups(const mop_mixture_params *p)
{
    return p->n_experts + p->n_shared;
}

int32_t mixture_stream_len(const mop_mixture_params *p)
{
    return p->combine == MOP_COMBINE_ATTENTION_BIAS ? mixture_groups(p) * p->prompt_len
                                                    : p->prompt_len;
}

int gate_groups_separate(const mop_mixture_params *p)
{
    return p->combine == MOP_COMBINE_ATTENTION_BIAS &&
           p->expert_attention == MOP_EXPERTS_INDEPENDENT && mixture_groups(p) > 1;
}

void gate_prompt_positions(const mop_mixture_params *p, int32_t *ppos)
{
    const int32_t S = mixture_stream_len(p), P = p->prompt_len;
    const int sep = gate_groups_separate(p);
    for (int32_t i = 0; i < S; i++)
        ppos[i] = sep ? i % P - P : i - S;
}

void mop_mixture_free(mop_mixture *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->cache_lock);
    mop_free(m->params);
    mop_free(m->grads);
    mop_free(m->prox_ref);
    mop_free(m->cache_kv);
    mop_free(m->cache_experts);
    mop_free(m->in_mean);
    mop_free(m->in_std);
    mop_model_free(m->model);
    mop_free(m);
}

/* The ids of the chat template's user header, for content pooling. Without a
 * ChatML template (or if it does not tokenize to a short run) there is none
 * and the gate pools every token before the first target. */
static void find_user_header(mop_mixture *m)
{
    static const char hdr[] = "<|im_start|>user\n";
    m->n_user_hdr = 0;
    m->eot = mop_model_special_token(m->model, MOP_TOKEN_EOT);
    size_t n = 0;
    if (m->eot < 0 || mop_chat_format(m->model, NULL, 0, 1, NULL, 0, &n) == MOP_E_UNSUPPORTED)
        return;
    if (mop_tokenize(m->model, hdr, sizeof hdr - 1, MOP_TOKENIZE_PARSE_SPECIAL, m->user_hdr,
                     sizeof m->user_hdr / sizeof m->user_hdr[0], &n) == MOP_OK)
        m->n_user_hdr = (int32_t)n;
}

mop_status mixture_alloc(mop_model *model, const mop_mixture_params *p, mop_mixture **out)
{
    const int64_t d = model->hp.n_embd;
    mop_mixture *m = mop_calloc(1, sizeof *m);
    if (!m)
        return mop_fail(MOP_E_NOMEM, "mop_mixture_create: out of memory");
    if (pthread_mutex_init(&m->cache_lock, NULL) != 0) {
        mop_free(m);
        return mop_fail(MOP_E_NOMEM, "mop_mixture_create: cannot create a mutex");
    }
    m->model = model;
    mop_model_retain(model);
    m->p = *p;
    size_t K = (size_t)p->n_experts, h = (size_t)p->gate_hidden;
    size_t sizes[GATE_T_COUNT] = {(size_t)mixture_groups(p) * (size_t)p->prompt_len * (size_t)d,
                                  h * (size_t)d, h, K * h, K};
    m->n_tensors = p->gate_mode == MOP_GATE_LEARNED ? GATE_T_COUNT : 1;
    size_t off = 0;
    for (int32_t i = 0; i < m->n_tensors; i++) {
        m->off[i] = off;
        m->size[i] = sizes[i];
        off += sizes[i];
    }
    m->n_params = off;
    m->params = mop_calloc(off, sizeof(float));
    m->grads = mop_calloc(off, sizeof(float));
    if (p->gate_mode == MOP_GATE_LEARNED) {
        m->in_mean = mop_calloc((size_t)d, sizeof(float));
        m->in_std = mop_alloc((size_t)d * sizeof(float));
    }
    if (!m->params || !m->grads ||
        (p->gate_mode == MOP_GATE_LEARNED && (!m->in_mean || !m->in_std))) {
        mop_mixture_free(m);
        return mop_fail(MOP_E_NOMEM, "mop_mixture_create: out of memory for %zu parameters",
                        off);
    }
    for (int64_t i = 0; m->in_std && i < d; i++)
        m->in_std[i] = 1.0f;
    find_user_header(m);
    *out = m;
    return MOP_OK;
}

/* ---- initialisation: xorshift64* + Box-Muller, fixed by the seed ------------ */

typedef struct gate_rng {
    uint64_t s;
} gate_rng;

static uint64_t rng_next(gate_rng *r)
{
    return mop_xorshift64s_next(&r->s);
}

static double rng_uniform(gate_rng *r) /* (0, 1) */
{
    return ((double)(rng_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

static double rng_normal(gate_rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void mixture_init(mop_mixture *m)
{
    const mop_mixture_params *p = &m->p;
    const int64_t d = m->model->hp.n_embd, V = m->model->hp.n_vocab;
    gate_rng r = {p->seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull};
    if (r.s == 0)
        r.s = 1;
    float *E = gate_experts(m);
    int64_t n_rows = (int64_t)mixture_groups(p) * p->prompt_len;
    for (int64_t i = 0; i < n_rows; i++) {
        if (p->init == MOP_INIT_VOCAB) {
            int64_t tok = (int64_t)(rng_next(&r) % (uint64_t)V);
            memcpy(E + i * d, m->model->tok_embd + tok * d, (size_t)d * sizeof(float));
        } else {
            for (int64_t j = 0; j < d; j++)
                E[i * d + j] = (float)(rng_normal(&r) * p->init_std);
        }
    }
    if (p->gate_mode == MOP_GATE_LEARNED) {
        float *W1 = m->params + m->off[GATE_T_W1];
        for (size_t i = 0; i < m->size[GATE_T_W1]; i++)
            W1[i] = (float)(rng_normal(&r) * p->init_std);
        /* b1, W2, b2 stay 0: the gate starts uniform */
    }
}

mop_status mop_mixture_create(mop_model *model, const mop_mixture_params *params,
                              mop_mixture **out)
{
    MOP_CHECK_ARG(model);
    MOP_CHECK_ARG(out);
    mop_mixture_params p;
    mixture_defaults(&p);
    if (params)
        MOP_READ_STRUCT("mop_mixture_create", &p, params, MIXTURE_PARAMS_MIN);
    MOP_TRY(mixture_resolve_params(&p, model->hp.n_layer, "mop_mixture_create"));
    mop_mixture *m = NULL;
    MOP_TRY(mixture_alloc(model, &p, &m));
    mixture_init(m);
    *out = m;
    return MOP_OK;
}

mop_status mop_mixture_get_params(const mop_mixture *m, mop_mixture_params *out)
{
    MOP_CHECK_ARG(m);
    MOP_CHECK_ARG(out);
    MOP_CHECK_STRUCT_SIZE("mop_mixture_get_params", out, MOP_OUT_STRUCT_MIN);
    uint32_t n = out->struct_size;
    memcpy(out, &m->p, n);
    out->struct_size = n;
    return MOP_OK;
}

mop_status mop_mixture_data(mop_mixture *m, float **params, float **grads, size_t *n)
{
    MOP_CHECK_ARG(m);
    if (params)
        *params = m->params;
    if (grads)
        *grads = m->grads;
    if (n)
        *n = m->n_params;
    return MOP_OK;
}

size_t mop_mixture_n_params(const mop_mixture *m)
{
    return m ? m->n_params : 0;
}

void mop_mixture_zero_grad(mop_mixture *m)
{
    if (m)
        memset(m->grads, 0, m->n_params * sizeof(float));
}

int32_t mop_mixture_tensor_count(const mop_mixture *m)
{
    return m ? m->n_tensors : 0;
}

mop_status mop_mixture_tensor_get_info(const mop_mixture *m, int32_t index,
                                       mop_mixture_tensor_info *info)
{
    MOP_CHECK_ARG(m);
    MOP_CHECK_ARG(info);
    MOP_CHECK_STRUCT_SIZE("mop_mixture_tensor_get_info", info, MOP_OUT_STRUCT_MIN);
    if (index < 0 || index >= m->n_tensors)
        return mop_fail(MOP_E_RANGE, "mop_mixture_tensor_get_info: index %d outside [0, %d)",
                        index, m->n_tensors);
    static const char *const names[GATE_T_COUNT] = {"experts", "gate.w1", "gate.b1", "gate.w2",
                                                    "gate.b2"};
    const int64_t K = m->p.n_experts, P = m->p.prompt_len, d = m->model->hp.n_embd,
                  h = m->p.gate_hidden;
    mop_mixture_tensor_info t;
    memset(&t, 0, sizeof t);
    t.struct_size = info->struct_size;
    t.name = names[index];
    t.offset = m->off[index];
    t.size = m->size[index];
    switch (index) {
    case GATE_T_EXPERTS:
        t.n_dims = 3, t.dims[0] = mixture_groups(&m->p), t.dims[1] = P, t.dims[2] = d;
        break;
    case GATE_T_W1: t.n_dims = 2, t.dims[0] = h, t.dims[1] = d; break;
    case GATE_T_B1: t.n_dims = 1, t.dims[0] = h; break;
    case GATE_T_W2: t.n_dims = 2, t.dims[0] = K, t.dims[1] = h; break;
    default: t.n_dims = 1, t.dims[0] = K; break;
    }
    memcpy(info, &t, info->struct_size);
    return MOP_OK;
}

mop_status mop_mixture_set_prox_reference(mop_mixture *m)
{
    MOP_CHECK_ARG(m);
    if (!m->prox_ref) {
        m->prox_ref = mop_alloc(m->n_params * sizeof(float));
        if (!m->prox_ref)
            return mop_fail(MOP_E_NOMEM,
                            "mop_mixture_set_prox_reference: out of memory for %zu floats",
                            m->n_params);
    }
    memcpy(m->prox_ref, m->params, m->n_params * sizeof(float));
    return MOP_OK;
}

/* ---- gate input statistics ---------------------------------------------------- */

mop_status mop_mixture_input_moments(const float *u, int32_t n, int32_t d, double *sum,
                                     double *sumsq)
{
    MOP_CHECK_ARG(n >= 0 && d >= 1);
    MOP_CHECK_ARG(sum && sumsq && (u || n == 0));
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < d; i++)
            if (!isfinite(u[r * d + i]))
                return mop_fail(MOP_E_INVALID_ARG, "mop_mixture_input_moments: u[%lld][%lld] is "
                                "not finite", (long long)r, (long long)i);
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < d; i++) {
            double v = u[r * d + i];
            sum[i] += v;
            sumsq[i] += v * v;
        }
    return MOP_OK;
}

mop_status mop_mixture_set_input_stats(mop_mixture *m, double n, const double *sum,
                                       const double *sumsq)
{
    MOP_CHECK_ARG(m && sum && sumsq);
    if (!m->in_mean)
        return mop_fail(MOP_E_INVALID_ARG, "mop_mixture_set_input_stats: the mixture has no "
                        "learned gate");
    if (!(n > 0.0) || !isfinite(n))
        return mop_fail(MOP_E_INVALID_ARG, "mop_mixture_set_input_stats: n = %g (need > 0)", n);
    const int64_t d = m->model->hp.n_embd;
    for (int64_t i = 0; i < d; i++)
        if (!isfinite(sum[i]) || !isfinite(sumsq[i]))
            return mop_fail(MOP_E_INVALID_ARG, "mop_mixture_set_input_stats: moment %lld is not "
                            "finite", (long long)i);
    for (int64_t i = 0; i < d; i++) {
        double mu = sum[i] / n, var = sumsq[i] / n - mu * mu;
        m->in_mean[i] = (float)mu;
        m->in_std[i] = (float)sqrt(fmax(var, 0.0) + 1e-6);
    }
    return MOP_OK;
}

mop_status mop_mixture_get_input_stats(const mop_mixture *m, const float **mean,
                                       const float **std)
{
    MOP_CHECK_ARG(m);
    if (!m->in_mean)
        return mop_fail(MOP_E_INVALID_ARG, "mop_mixture_get_input_stats: the mixture has no "
                        "learned gate");
    if (mean)
        *mean = m->in_mean;
    if (std)
        *std = m->in_std;
    return MOP_OK;
}

/* ---- experts from real hidden states ---------------------------------------------- */

mop_status mop_mixture_init_experts(mop_ctx *ctx, mop_mixture *m, const mop_batch *batch)
{
    static const char fn[] = "mop_mixture_init_experts";
    MOP_CHECK_ARG(ctx && m && batch);
    if (ctx->model != m->model)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture and the context use different models",
                        fn);
    MOP_TRY(gate_check_batch(ctx, batch, 0, fn));
    const int64_t d = m->model->hp.n_embd;
    const int32_t B = batch->n_seq, rows = mixture_groups(&m->p) * m->p.prompt_len;
    int32_t maxT = 1;
    for (int32_t b = 0; b < B; b++)
        maxT = MOP_MAX(maxT, batch->lengths[b]);
    /* which (sequence, position) each prompt row copies */
    int32_t *src = mop_alloc((size_t)rows * 2 * sizeof(int32_t));
    int32_t *pos = mop_alloc((size_t)maxT * sizeof(int32_t));
    float *x = mop_alloc((size_t)maxT * (size_t)d * sizeof(float));
    if (!src || !pos || !x) {
        mop_free(src), mop_free(pos), mop_free(x);
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    }
    gate_rng r = {m->p.seed * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull};
    if (r.s == 0)
        r.s = 1;
    for (int32_t i = 0; i < rows; i++) {
        src[2 * i] = (int32_t)(rng_next(&r) % (uint64_t)B);
        src[2 * i + 1] = (int32_t)(rng_next(&r) % (uint64_t)batch->lengths[src[2 * i]]);
    }
    for (int32_t t = 0; t < maxT; t++)
        pos[t] = t;
    float *E = gate_experts(m);
    mop_ctx_reset(ctx);
    for (int32_t b = 0; b < B; b++) {
        int used = 0;
        for (int32_t i = 0; i < rows && !used; i++)
            used = src[2 * i] == b;
        if (!used)
            continue;
        const int32_t T = batch->lengths[b];
        ctx->n_past = 0;
        forward_embed(ctx, x, batch->tokens + (int64_t)b * batch->seq_len, T);
        forward_layers(ctx, x, T, pos, 0, m->p.inject_layer, NULL);
        for (int32_t i = 0; i < rows; i++)
            if (src[2 * i] == b)
                memcpy(E + (int64_t)i * d, x + (int64_t)src[2 * i + 1] * d,
                       (size_t)d * sizeof(float));
    }
    mop_ctx_reset(ctx);
    mop_free(src), mop_free(pos), mop_free(x);
    gate_cache_invalidate(m);
    return MOP_OK;
}
