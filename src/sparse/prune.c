/* mop_model_prune: choose which weights of each block's linear layers to
 * remove (prune_scored / prune_sparsegpt on a dense copy), pack the result
 * (sparse.h) and swap it into the model; plus the compact LM head and the
 * sparsity query.
 *
 * Blocks are pruned in order. Wanda and SparseGPT calibrate block l on the
 * outputs of the already-pruned blocks < l (calibration.c), so the pruned
 * weights are swapped in as each block finishes. The replaced weights are
 * kept until the end: on any error every block is swapped back and the new
 * weights released, so the model is unchanged; on success the old weights'
 * F32 buffers are freed (mapped data just stops being referenced). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lm_head.h"
#include "prune.h"
#include "sparse.h"

#define N_LINEAR 7

/* first release (0.1.0) */
#define PRUNE_PARAMS_MIN MOP_SIZE_THROUGH(mop_prune_params, progress_user)

static void prune_defaults(mop_prune_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->method = MOP_PRUNE_MAGNITUDE;
    d->pattern = MOP_PATTERN_NM;
    d->n = 2;
    d->m = 4;
    d->ratio = 0.5f;
    d->granularity = MOP_GRANULARITY_ROW;
    d->layer_begin = 0;
    d->layer_end = -1;
    d->calib_tokens = NULL;
    d->n_calib_tokens = 0;
    d->calib_seq_len = 256;
    d->sparsegpt_damp = 0.01f;
    d->sparsegpt_block = 128;
    d->lm_head_format = MOP_LM_HEAD_F32;
    d->n_threads = 0;
}

MOP_DEFINE_PARAMS_INIT(prune, PRUNE_PARAMS_MIN)

/* The linear weights of a block, in file order, with the input each reads. */
static void block_weights(mop_layer *L, mop_weight *ws[N_LINEAR])
{
    mop_weight *w[N_LINEAR] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    memcpy(ws, w, sizeof w);
}
static const int weight_input[N_LINEAR] = {CALIB_ATTN_IN, CALIB_ATTN_IN, CALIB_ATTN_IN, CALIB_ATT,
                                           CALIB_FFN_IN,  CALIB_FFN_IN,  CALIB_DOWN_IN};

/* ---- score-based masks -------------------------------------------------------- */

int prune_entry_cmp(const void *a, const void *b)
{
    const prune_entry *x = a, *y = b;
    if (x->s != y->s)
        return x->s < y->s ? -1 : 1;
    return (x->j < y->j) - (x->j > y->j);
}

typedef struct scored_job {
    float *W;
    int64_t rows, cols;
    const prune_cfg *cfg;
    const float *scale; /* (cols) or NULL */
    prune_entry *buf;   /* (nth, cols) */
} scored_job;

static float score_of(const scored_job *j, int64_t r, int64_t c)
{
    float a = fabsf(j->W[r * j->cols + c]);
    return j->scale ? a * j->scale[c] : a;
}

/* Zero the k lowest-scoring entries of row r among columns [a, b). */
static void zero_lowest(const scored_job *j, int64_t r, int64_t a, int64_t b, int64_t k,
                        prune_entry *buf)
{
    for (int64_t c = a; c < b; c++)
        buf[c - a] = (prune_entry){score_of(j, r, c), (int32_t)c};
    qsort(buf, (size_t)(b - a), sizeof *buf, prune_entry_cmp);
    for (int64_t i = 0; i < k; i++)
        j->W[r * j->cols + buf[i].j] = 0.0f;
}

static void scored_rows(void *arg, int ith, int nth)
{
    const scored_job *j = arg;
    const prune_cfg *cfg = j->cfg;
    prune_entry *buf = j->buf + (int64_t)ith * j->cols;
    int64_t lo, hi;
    mop_split_range(j->rows, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        if (cfg->pattern == MOP_PATTERN_NM) {
            for (int64_t c = 0; c < j->cols; c += cfg->m) {
                int64_t e = MOP_MIN(c + cfg->m, j->cols), len = e - c;
                zero_lowest(j, r, c, e, len - MOP_MIN(cfg->n, len), buf);
            }
        } else {
            zero_lowest(j, r, 0, j->cols, prune_removed_before(cfg->ratio, j->cols), buf);
        }
    }
}

mop_status prune_scored(float *W, int64_t rows, int64_t cols, const prune_cfg *cfg,
                        const double *colsq, mop_pool *pool)
{
    MOP_CHECK_ARG(W && cfg && rows > 0 && cols > 0);
    const int layer = cfg->pattern == MOP_PATTERN_UNSTRUCTURED &&
                      cfg->granularity == MOP_GRANULARITY_LAYER;
    const int nth = layer ? 1 : (pool ? mop_pool_size(pool) : 1);
    float *scale = colsq ? mop_alloc((size_t)cols * sizeof *scale) : NULL;
    prune_entry *buf = mop_alloc((size_t)(layer ? rows * cols : nth * cols) * sizeof *buf);
    if (!buf || (colsq && !scale)) {
        mop_free(scale);
        mop_free(buf);
        return mop_fail(MOP_E_NOMEM, "out of memory scoring a (%lld, %lld) weight",
                        (long long)rows, (long long)cols);
    }
    for (int64_t c = 0; colsq && c < cols; c++)
        scale[c] = (float)sqrt(colsq[c]);
    scored_job j = {W, rows, cols, cfg, scale, buf};
    if (layer) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                buf[r * cols + c] = (prune_entry){score_of(&j, r, c), (int32_t)(r * cols + c)};
        qsort(buf, (size_t)(rows * cols), sizeof *buf, prune_entry_cmp);
        int64_t k = prune_removed_before(cfg->ratio, rows * cols);
        for (int64_t i = 0; i < k; i++)
            W[buf[i].j] = 0.0f;
    } else {
        mop_pool_run(rows * cols < ((int64_t)1 << 16) ? NULL : pool, scored_rows, &j);
    }
    mop_free(scale);
    mop_free(buf);
    return MOP_OK;
}

/* ---- parameters --------------------------------------------------------------- */

static mop_status check_params(const mop_model *m, const mop_prune_params *p, int32_t *lb,
                               int32_t *le)
{
    if (p->method < MOP_PRUNE_MAGNITUDE || p->method > MOP_PRUNE_SPARSEGPT)
        return mop_fail(MOP_E_INVALID_ARG, "mop_model_prune: unknown method %d", p->method);
    if (p->pattern != MOP_PATTERN_UNSTRUCTURED && p->pattern != MOP_PATTERN_NM)
        return mop_fail(MOP_E_INVALID_ARG, "mop_model_prune: unknown pattern %d", p->pattern);
    if (p->granularity != MOP_GRANULARITY_ROW && p->granularity != MOP_GRANULARITY_LAYER)
        return mop_fail(MOP_E_INVALID_ARG, "mop_model_prune: unknown granularity %d",
                        p->granularity);
    if (p->lm_head_format < MOP_LM_HEAD_F32 || p->lm_head_format > MOP_LM_HEAD_Q8_0)
        return mop_fail(MOP_E_INVALID_ARG, "mop_model_prune: unknown lm_head_format %d",
                        p->lm_head_format);
    if (p->pattern == MOP_PATTERN_NM && !(p->n >= 1 && p->n < p->m && p->m <= 16))
        return mop_fail(MOP_E_RANGE, "mop_model_prune: N:M = %d:%d (need 1 <= N < M <= 16)",
                        p->n, p->m);
    if (p->pattern == MOP_PATTERN_UNSTRUCTURED && !(p->ratio >= 0.0f && p->ratio <= 0.99f))
        return mop_fail(MOP_E_RANGE, "mop_model_prune: ratio %g outside [0, 0.99]",
                        (double)p->ratio);
    const int32_t nl = m->hp.n_layer;
    *lb = p->layer_begin;
    *le = p->layer_end == -1 ? nl : p->layer_end;
    if (*lb < 0 || *le < *lb || *le > nl)
        return mop_fail(MOP_E_RANGE, "mop_model_prune: layers [%d, %d) outside [0, %d]",
                        p->layer_begin, p->layer_end, nl);
    if (p->n_threads < 0 || p->n_threads > 256)
        return mop_fail(MOP_E_RANGE, "mop_model_prune: n_threads %d outside [0, 256]",
                        p->n_threads);
    if (p->method == MOP_PRUNE_SPARSEGPT &&
        (!(p->sparsegpt_damp >= 0.0f && p->sparsegpt_damp <= 1e3f) || p->sparsegpt_block < 1))
        return mop_fail(MOP_E_RANGE, "mop_model_prune: sparsegpt_damp %g or sparsegpt_block %d "
                        "out of range", (double)p->sparsegpt_damp, p->sparsegpt_block);
    if (p->method != MOP_PRUNE_MAGNITUDE && *le > *lb) {
        if (!p->calib_tokens || p->n_calib_tokens < 1)
            return mop_fail(MOP_E_INVALID_ARG, "mop_model_prune: %s needs calibration tokens",
                            p->method == MOP_PRUNE_WANDA ? "Wanda" : "SparseGPT");
        if (p->calib_seq_len < 1 || p->calib_seq_len > m->hp.n_ctx_train)
            return mop_fail(MOP_E_RANGE, "mop_model_prune: calib_seq_len %d outside [1, %d]",
                            p->calib_seq_len, m->hp.n_ctx_train);
        for (int64_t i = 0; i < p->n_calib_tokens; i++)
            if (p->calib_tokens[i] < 0 || p->calib_tokens[i] >= m->hp.n_vocab)
                return mop_fail(MOP_E_INVALID_ARG,
                                "mop_model_prune: calibration token %lld is %d (vocabulary %d)",
                                (long long)i, p->calib_tokens[i], m->hp.n_vocab);
    }
    if (p->lm_head_format == MOP_LM_HEAD_Q8_0 && m->hp.n_embd % 32 != 0)
        return mop_fail(MOP_E_INVALID_ARG, "mop_model_prune: a Q8_0 LM head needs n_embd "
                        "divisible by 32, got %d", m->hp.n_embd);
    return MOP_OK;
}

/* ---- one weight ------------------------------------------------------------------ */

static mop_status prune_one(mop_weight *out, const mop_weight *w, const mop_prune_params *p,
                            const prune_cfg *cfg, const calib_stats *cs, int input, mop_pool *pool)
{
    const int64_t rows = w->rows, cols = w->cols;
    float *W = mop_alloc((size_t)(rows * cols) * sizeof(float));
    if (!W)
        return mop_fail(MOP_E_NOMEM, "out of memory for a (%lld, %lld) weight", (long long)rows,
                        (long long)cols);
    if (w->data)
        memcpy(W, w->data, (size_t)(rows * cols) * sizeof(float));
    else
        w->ops->to_dense(w, W);
    mop_status st = MOP_OK;
    if (p->method == MOP_PRUNE_SPARSEGPT) {
        /* H is consumed; q/k/v and gate/up share one: work on a copy */
        float *H = mop_alloc((size_t)(cols * cols) * sizeof(float));
        if (!H)
            st = mop_fail(MOP_E_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)cols,
                          (long long)cols);
        if (st == MOP_OK) {
            memcpy(H, cs->H[input], (size_t)(cols * cols) * sizeof(float));
            st = prune_sparsegpt(W, rows, cols, cfg, H, pool);
        }
        mop_free(H);
    } else {
        st = prune_scored(W, rows, cols, cfg,
                          p->method == MOP_PRUNE_WANDA ? cs->colsq[input] : NULL, pool);
    }
    if (st == MOP_OK)
        st = p->pattern == MOP_PATTERN_NM
                 ? sparse_pack_nm(out, W, rows, cols, p->n, p->m)
                 : sparse_pack_unstructured(out, W, rows, cols, SPARSE_AUTO);
    mop_free(W);
    return st;
}

/* ---- the model ------------------------------------------------------------------- */

static void release(mop_weight *w)
{
    if (w->ops && w->ops->release)
        w->ops->release(w);
    w->ops = NULL;
}

/* Free the model-owned F32 buffer behind a replaced dense weight, if any. */
static void drop_buffer(mop_model *m, const void *data)
{
    if (!data || data == m->tok_embd)
        return;
    for (int32_t i = 0; i < m->n_buffers; i++)
        if (m->buffers[i] == data) {
            mop_free(m->buffers[i]);
            m->buffers[i] = m->buffers[--m->n_buffers];
            return;
        }
}

mop_status mop_model_prune(mop_model *model, const mop_prune_params *params)
{
    MOP_CHECK_ARG(model && params && model->layers);
    mop_prune_params p;
    prune_defaults(&p);
    MOP_READ_STRUCT("mop_model_prune", &p, params, PRUNE_PARAMS_MIN);
    if (atomic_load(&model->refs) > 1)
        return mop_fail(MOP_E_STATE, "mop_model_prune: the model is held by %d other "
                        "context(s) or mixture(s); free them first",
                        atomic_load(&model->refs) - 1);
    int32_t lb = 0, le = 0;
    MOP_TRY(check_params(model, &p, &lb, &le));

    const prune_cfg cfg = {p.pattern, p.n, p.m, p.ratio, p.granularity, p.sparsegpt_damp,
                           p.sparsegpt_block};
    const int64_t n_blocks = le - lb;
    const int head = p.lm_head_format != MOP_LM_HEAD_F32;
    const uint64_t total = (uint64_t)(N_LINEAR * n_blocks + head);
    mop_weight *old = mop_calloc((size_t)(n_blocks * N_LINEAR + 1), sizeof *old);
    mop_pool *own_pool = NULL, *pool = NULL;
    calib *cal = NULL;
    mop_status st = old ? MOP_OK : mop_fail(MOP_E_NOMEM, "mop_model_prune: out of memory");
    const int need_calib = p.method != MOP_PRUNE_MAGNITUDE && n_blocks > 0;
    if (st == MOP_OK && need_calib)
        st = calib_create(model, p.calib_tokens, p.n_calib_tokens, p.calib_seq_len, p.n_threads,
                          lb, &cal);
    /* one pool at a time: the calibration context's, or one of our own */
    if (st == MOP_OK && cal)
        pool = calib_pool(cal);
    else if (st == MOP_OK && (st = mop_pool_create(p.n_threads, &own_pool)) == MOP_OK)
        pool = own_pool;

    int64_t swapped = 0; /* blocks whose new weights are in the model */
    uint64_t done = 0;
    for (int32_t l = lb; st == MOP_OK && l < le; l++) {
        calib_stats cs;
        memset(&cs, 0, sizeof cs);
        if (need_calib)
            st = calib_collect(cal, l, p.method == MOP_PRUNE_WANDA,
                               p.method == MOP_PRUNE_SPARSEGPT, &cs);
        mop_weight *ws[N_LINEAR];
        block_weights(&model->layers[l], ws);
        mop_weight nw[N_LINEAR];
        memset(nw, 0, sizeof nw);
        int built = 0;
        for (; st == MOP_OK && built < N_LINEAR; built++) {
            st = prune_one(&nw[built], ws[built], &p, &cfg, &cs, weight_input[built], pool);
            if (st != MOP_OK)
                break;
            done++;
            if (p.progress && p.progress(done, total, p.progress_user) != 0) {
                built++;
                st = mop_fail(MOP_E_CANCELLED, "pruning cancelled after %llu of %llu weights",
                              (unsigned long long)done, (unsigned long long)total);
            }
        }
        calib_stats_free(&cs);
        if (st != MOP_OK) {
            for (int i = 0; i < built; i++)
                release(&nw[i]);
            break;
        }
        for (int i = 0; i < N_LINEAR; i++) {
            old[swapped * N_LINEAR + i] = *ws[i];
            *ws[i] = nw[i];
        }
        swapped++;
        if (need_calib && l + 1 < le)
            calib_advance(cal, l);
    }
    calib_free(cal);
    pool = NULL;

    mop_weight new_head;
    memset(&new_head, 0, sizeof new_head);
    if (st == MOP_OK && head) {
        st = lm_head_convert(&new_head, &model->lm_head,
                             p.lm_head_format == MOP_LM_HEAD_F16 ? MOP_FT_F16 : MOP_FT_Q8_0);
        if (st == MOP_OK && p.progress && p.progress(++done, total, p.progress_user) != 0) {
            release(&new_head);
            st = mop_fail(MOP_E_CANCELLED, "pruning cancelled before the LM head");
        }
    }
    mop_pool_free(own_pool);

    if (st != MOP_OK) { /* put every block back */
        for (int64_t b = 0; b < swapped; b++) {
            mop_weight *ws[N_LINEAR];
            block_weights(&model->layers[lb + b], ws);
            for (int i = 0; i < N_LINEAR; i++) {
                release(ws[i]);
                *ws[i] = old[b * N_LINEAR + i];
            }
        }
        mop_free(old);
        return st;
    }
    for (int64_t b = 0; b < swapped * N_LINEAR; b++) {
        const void *data = old[b].data;
        release(&old[b]);
        drop_buffer(model, data);
    }
    if (head) {
        const void *data = model->lm_head.data;
        release(&model->lm_head);
        drop_buffer(model, data);
        model->lm_head = new_head;
        model->hp.tied_embeddings = 0; /* the head is its own (compact) copy now */
    }
    mop_free(old);
    return MOP_OK;
}

/* ---- query -------------------------------------------------------------------- */

mop_status mop_model_sparsity(const mop_model *model, double *sparsity, const char **format)
{
    MOP_CHECK_ARG(model && sparsity && format && model->layers);
    uint64_t zeros = 0, total = 0;
    const char *fmt = NULL, *first = NULL;
    for (int32_t l = 0; l < model->hp.n_layer; l++) {
        mop_weight *ws[N_LINEAR];
        block_weights(&model->layers[l], ws);
        for (int i = 0; i < N_LINEAR; i++) {
            const mop_weight *w = ws[i];
            const size_t n = (size_t)(w->rows * w->cols);
            if (!first)
                first = w->ops->format;
            if (!fmt && sparse_is_sparse(w))
                fmt = w->ops->format;
            const float *v = w->data;
            float *tmp = NULL;
            if (!v) {
                tmp = mop_alloc(n * sizeof *tmp);
                if (!tmp)
                    return mop_fail(MOP_E_NOMEM, "mop_model_sparsity: out of memory");
                w->ops->to_dense(w, tmp);
                v = tmp;
            }
            for (size_t k = 0; k < n; k++)
                zeros += v[k] == 0.0f;
            total += n;
            mop_free(tmp);
        }
    }
    *sparsity = total ? (double)zeros / (double)total : 0.0;
    *format = fmt ? fmt : (first ? first : "f32");
    return MOP_OK;
}
