/* Batched decoding across mixtures (mop_decoder): many sequences, each with
 * its own KV cache and its own mixture (or none), one step for all of them.
 *
 * Each sequence is a context that borrows the decoder's pool, RoPE table and
 * scratch (ctx_create_borrowing) and has its mixture attached (mixture_ctx.c),
 * so a sequence's first call and any multi-token call are exactly
 * mop_ctx_decode() on it. The one-token calls of a step run together through
 * forward_layers_rows(): one pass over the layers, each linear product over
 * all rows at once, attention per row on its own cache and prompt prefix. */
#include <string.h>

#include "gate.h"

#define DEC_MAX_SEQ 4096

struct mop_decoder {
    mop_model *model;
    mop_decoder_params p;
    mop_ctx *main;      /* pool, RoPE table and scratch of every sequence (no KV cache) */
    mop_ctx **seq;      /* (n_seq_max) each live sequence's context, NULL = free id */
    float *logits;      /* (n_seq_max, V) each sequence's last next-token logits */
    uint8_t *has_logits;/* (n_seq_max) */
    /* the batched step */
    float *x;           /* (n_seq_max, d) */
    float *k_new, *v_new; /* (n_seq_max, kvd) */
    float *step_logits; /* (n_seq_max, V) */
    int32_t *pos, *order; /* (n_seq_max) */
    uint8_t *seen;      /* (n_seq_max) */
    fwd_row *rows;      /* (n_seq_max) */
    attn_row *ar;       /* (n_seq_max) */
};

#define DECODER_PARAMS_MIN MOP_SIZE_THROUGH(mop_decoder_params, n_threads)

static void decoder_defaults(mop_decoder_params *p)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_seq_max = 16;
    p->n_ctx = 2048;
    p->n_batch = 512;
    p->n_threads = 0;
}

MOP_DEFINE_PARAMS_INIT_SIZED(decoder, DECODER_PARAMS_MIN)

void mop_decoder_free(mop_decoder *dec)
{
    if (!dec)
        return;
    for (int32_t i = 0; dec->seq && i < dec->p.n_seq_max; i++)
        mop_ctx_free(dec->seq[i]);
    mop_ctx_free(dec->main);
    mop_free(dec->seq);
    mop_free(dec->logits);
    mop_free(dec->has_logits);
    mop_free(dec->x);
    mop_free(dec->k_new);
    mop_free(dec->v_new);
    mop_free(dec->step_logits);
    mop_free(dec->pos);
    mop_free(dec->order);
    mop_free(dec->seen);
    mop_free(dec->rows);
    mop_free(dec->ar);
    mop_model_free(dec->model);
    mop_free(dec);
}

mop_status mop_decoder_create(mop_model *model, const mop_decoder_params *params,
                              mop_decoder **out)
{
    static const char fn[] = "mop_decoder_create";
    MOP_CHECK_ARG(model);
    MOP_CHECK_ARG(out);
    mop_decoder_params p;
    decoder_defaults(&p);
    if (params)
        MOP_READ_STRUCT(fn, &p, params, DECODER_PARAMS_MIN);
    if (p.n_seq_max < 1 || p.n_seq_max > DEC_MAX_SEQ)
        return mop_fail(MOP_E_RANGE, "%s: n_seq_max %d outside [1, %d]", fn, p.n_seq_max,
                        DEC_MAX_SEQ);
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = p.n_ctx;
    cp.n_batch = p.n_batch;
    cp.n_threads = p.n_threads;
    mop_decoder *dec = mop_calloc(1, sizeof *dec);
    if (!dec)
        return mop_fail(MOP_E_NOMEM, "%s: out of memory", fn);
    dec->model = model;
    mop_model_retain(model);
    mop_status st = mop_ctx_create(model, &cp, &dec->main);
    if (st != MOP_OK) {
        mop_error_prefix("%s", fn);
        mop_decoder_free(dec);
        return st;
    }
    dec->p = p;
    dec->p.n_batch = dec->main->params.n_batch;
    /* the main context runs no sequence of its own: only its KV cache goes */
    mop_free(dec->main->kv);
    dec->main->kv = NULL;
    const mop_hparams *hp = &model->hp;
    const size_t S = (size_t)p.n_seq_max, d = (size_t)hp->n_embd, V = (size_t)hp->n_vocab;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    dec->seq = mop_calloc(S, sizeof *dec->seq);
    dec->logits = mop_alloc(S * V * sizeof(float));
    dec->has_logits = mop_calloc(S, 1);
    dec->x = mop_alloc(S * d * sizeof(float));
    dec->k_new = mop_alloc(S * kvd * sizeof(float));
    dec->v_new = mop_alloc(S * kvd * sizeof(float));
    dec->step_logits = mop_alloc(S * V * sizeof(float));
    dec->pos = mop_alloc(S * sizeof(int32_t));
    dec->order = mop_alloc(S * sizeof(int32_t));
    dec->seen = mop_calloc(S, 1);
    dec->rows = mop_calloc(S, sizeof *dec->rows);
    dec->ar = mop_calloc(S, sizeof *dec->ar);
    st = MOP_OK;
    if (!dec->seq || !dec->logits || !dec->has_logits || !dec->x || !dec->k_new ||
        !dec->v_new || !dec->step_logits || !dec->pos || !dec->order || !dec->seen ||
        !dec->rows || !dec->ar)
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory for %d sequences", fn, p.n_seq_max);
    if (st == MOP_OK)
        st = ctx_reserve_rows(dec->main, p.n_seq_max);
    if (st != MOP_OK) {
        mop_decoder_free(dec);
        return st;
    }
    *out = dec;
    return MOP_OK;
}

/* A sequence's context sees the main context's current scratch (it may
 * have grown for a longer prompt stream). */
static void sync_scratch(const mop_decoder *dec, mop_ctx *c)
{
    const mop_ctx *m = dec->main;
    c->x = m->x, c->xn = m->xn, c->q = m->q, c->att = m->att, c->gate = m->gate, c->up = m->up;
    c->pos = m->pos, c->cap_rows = m->cap_rows;
}

static int live(const mop_decoder *dec, int32_t seq)
{
    return seq >= 0 && seq < dec->p.n_seq_max && dec->seq[seq];
}

mop_status mop_decoder_add(mop_decoder *dec, const mop_mixture *m, int32_t *seq)
{
    static const char fn[] = "mop_decoder_add";
    MOP_CHECK_ARG(dec);
    MOP_CHECK_ARG(seq);
    int32_t id = -1;
    for (int32_t i = 0; i < dec->p.n_seq_max && id < 0; i++)
        if (!dec->seq[i])
            id = i;
    if (id < 0)
        return mop_fail(MOP_E_STATE, "%s: all %d sequences are in use (remove one first)", fn,
                        dec->p.n_seq_max);
    if (m) {
        if (m->model != dec->model)
            return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture was made for another model", fn);
        MOP_TRY(ctx_reserve_rows(dec->main, mixture_stream_len(&m->p)));
    }
    mop_ctx *c = NULL;
    mop_status st = ctx_create_borrowing(dec->main, dec->p.n_ctx, &c);
    if (st != MOP_OK) {
        mop_error_prefix("%s", fn);
        return st;
    }
    sync_scratch(dec, c);
    if (m && (st = gate_ctx_attach(c, m, fn)) != MOP_OK) {
        mop_ctx_free(c);
        return st;
    }
    dec->seq[id] = c;
    dec->has_logits[id] = 0;
    *seq = id;
    return MOP_OK;
}

mop_status mop_decoder_remove(mop_decoder *dec, int32_t seq)
{
    MOP_CHECK_ARG(dec);
    if (!live(dec, seq))
        return mop_fail(MOP_E_INVALID_ARG, "mop_decoder_remove: %d is not a live sequence", seq);
    mop_ctx_free(dec->seq[seq]);
    dec->seq[seq] = NULL;
    dec->has_logits[seq] = 0;
    return MOP_OK;
}

/* Entry i's tokens and count. */
static const int32_t *entry_tokens(const mop_decoder_batch *b, int32_t i, int32_t *n)
{
    *n = b->n_tokens ? b->n_tokens[i] : 1;
    return b->tokens ? b->tokens[i] : b->token + i;
}

mop_status mop_decoder_step(mop_decoder *dec, const mop_decoder_batch *batch)
{
    static const char fn[] = "mop_decoder_step";
    MOP_CHECK_ARG(dec);
    MOP_CHECK_ARG(batch);
    if (batch->struct_size < sizeof(uint32_t) || batch->struct_size > sizeof *batch)
        return mop_fail(MOP_E_INVALID_ARG, "%s: batch->struct_size %u (expected %zu)", fn,
                        batch->struct_size, sizeof *batch);
    mop_decoder_batch b;
    memset(&b, 0, sizeof b);
    memcpy(&b, batch, batch->struct_size);
    if (b.n < 1 || b.n > dec->p.n_seq_max)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n = %d entries outside [1, n_seq_max %d]", fn,
                        b.n, dec->p.n_seq_max);
    if (!b.seq || (!b.tokens && !b.token))
        return mop_fail(MOP_E_INVALID_ARG, "%s: batch->seq and batch->tokens (or ->token) are "
                        "required", fn);
    if (!b.tokens && b.n_tokens)
        for (int32_t i = 0; i < b.n; i++)
            if (b.n_tokens[i] != 1)
                return mop_fail(MOP_E_INVALID_ARG, "%s: entry %d: n_tokens %d with batch->token "
                                "(one id per entry); use batch->tokens", fn, i, b.n_tokens[i]);
    const mop_hparams *hp = &dec->model->hp;
    const int32_t V = hp->n_vocab;
    mop_status st = MOP_OK;
    memset(dec->seen, 0, (size_t)dec->p.n_seq_max);
    for (int32_t i = 0; i < b.n && st == MOP_OK; i++) {
        int32_t s = b.seq[i], n;
        const int32_t *tok = entry_tokens(&b, i, &n);
        if (!live(dec, s))
            st = mop_fail(MOP_E_INVALID_ARG, "%s: entry %d: %d is not a live sequence", fn, i, s);
        else if (dec->seen[s])
            st = mop_fail(MOP_E_INVALID_ARG, "%s: sequence %d appears twice", fn, s);
        else if (n < 1 || !tok)
            st = mop_fail(MOP_E_INVALID_ARG, "%s: entry %d: %d tokens (need >= 1 and their ids)",
                          fn, i, n);
        else if (n > dec->seq[s]->params.n_ctx - dec->seq[s]->n_past)
            st = mop_fail(MOP_E_RANGE, "%s: sequence %d: %d cached + %d new tokens exceed n_ctx "
                          "%d", fn, s, dec->seq[s]->n_past, n, dec->seq[s]->params.n_ctx);
        for (int32_t t = 0; st == MOP_OK && t < n; t++)
            if (tok[t] < 0 || tok[t] >= V)
                st = mop_fail(MOP_E_INVALID_ARG, "%s: sequence %d: token %d at index %d outside "
                              "[0, %d)", fn, s, tok[t], t, V);
        if (st == MOP_OK)
            dec->seen[s] = 1;
    }
    if (st != MOP_OK)
        return st;

    /* prompts and multi-token calls: each on its own context */
    int32_t B = 0;
    for (int32_t i = 0; i < b.n; i++) {
        int32_t s = b.seq[i], n;
        const int32_t *tok = entry_tokens(&b, i, &n);
        mop_ctx *c = dec->seq[s];
        if (n == 1 && c->n_past > 0) {
            dec->order[B++] = i;
            continue;
        }
        sync_scratch(dec, c);
        MOP_TRY(mop_ctx_decode(c, tok, n, MOP_LOGITS_LAST));
        memcpy(dec->logits + (int64_t)s * V, c->logits, (size_t)V * sizeof(float));
        dec->has_logits[s] = 1;
    }
    if (B == 0)
        return MOP_OK;

    /* one token each: one batched pass over the layers and the LM head */
    const int64_t d = hp->n_embd;
    for (int32_t r = 0; r < B; r++) {
        int32_t i = dec->order[r], s = b.seq[i], n;
        const int32_t *tok = entry_tokens(&b, i, &n);
        mop_ctx *c = dec->seq[s];
        memcpy(dec->x + r * d, dec->model->tok_embd + (int64_t)tok[0] * d,
               (size_t)d * sizeof(float));
        dec->pos[r] = c->n_past;
        dec->rows[r].ctx = c;
        dec->rows[r].extra = gate_ctx_prefix(c, &dec->rows[r].prefix_from);
    }
    forward_layers_rows(dec->main, dec->x, B, dec->pos, dec->rows, dec->k_new, dec->v_new,
                        dec->ar, 0, hp->n_layer);
    forward_head(dec->main, dec->step_logits, dec->x, B);
    for (int32_t r = 0; r < B; r++) {
        int32_t s = b.seq[dec->order[r]];
        memcpy(dec->logits + (int64_t)s * V, dec->step_logits + (int64_t)r * V,
               (size_t)V * sizeof(float));
        dec->has_logits[s] = 1;
        dec->seq[s]->n_past++;
        dec->seq[s]->n_logits = 0; /* its own logits row is stale now */
    }
    return MOP_OK;
}

mop_status mop_decoder_get_logits(const mop_decoder *dec, int32_t seq, const float **logits)
{
    MOP_CHECK_ARG(dec);
    MOP_CHECK_ARG(logits);
    if (!live(dec, seq))
        return mop_fail(MOP_E_INVALID_ARG, "mop_decoder_get_logits: %d is not a live sequence",
                        seq);
    if (!dec->has_logits[seq])
        return mop_fail(MOP_E_STATE, "mop_decoder_get_logits: sequence %d has decoded nothing "
                        "yet", seq);
    *logits = dec->logits + (int64_t)seq * dec->model->hp.n_vocab;
    return MOP_OK;
}

int32_t mop_decoder_n_past(const mop_decoder *dec, int32_t seq)
{
    if (!dec || !live(dec, seq))
        return -1;
    return dec->seq[seq]->n_past;
}
