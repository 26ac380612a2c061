/* The Llama-family dense forward, in pieces the mixture code can compose:
 * embed -> layers [a, b) -> layers [b, c) ... -> final norm + LM head.
 *
 * Internal. A mop_ctx carries everything a forward call needs: the model,
 * the thread pool, RoPE tables, scratch for n_batch tokens and the KV cache.
 * The hot path never allocates.
 *
 * KV cache: layer l keeps keys and values of positions [0, n_ctx), each row
 * n_head_kv*head_dim floats (keys after RoPE). A forward_layers call of T
 * tokens writes its keys/values into rows [n_past, n_past + T) of each layer
 * it runs and attends over rows [0, n_past + T) causally; it does not move
 * n_past: the caller advances ctx->n_past once the last layer has run. A
 * caller that wants no cache (training, one-off sequences) sets n_past = 0
 * first. */
#ifndef MOP_FORWARD_H
#define MOP_FORWARD_H

#include <stdint.h>

#include "attention.h"
#include "model.h"
#include "ops.h"
#include "threadpool.h"

/* What one layer saw and produced, for an activation backward. Every pointer
 * is a caller-owned buffer of T rows (the T of the call), or NULL to skip it.
 * Shapes: d = n_embd, qd = n_head*head_dim, kvd = n_head_kv*head_dim. */
typedef struct fwd_layer_saved {
    float *x_in;      /* (T, d) residual stream entering the layer */
    float *rstd_attn; /* (T) 1/rms of x_in */
    float *xn_attn;   /* (T, d) attn_norm(x_in) */
    float *q;         /* (T, qd) queries after RoPE */
    float *k, *v;     /* (T, kvd) this call's keys (after RoPE) and values */
    float *lse;       /* (T, n_head) log-sum-exp of each query's attention scores */
    float *att;       /* (T, qd) attention output, input of wo */
    float *x_mid;     /* (T, d) x_in + wo(att) */
    float *rstd_ffn;  /* (T) 1/rms of x_mid */
    float *xn_ffn;    /* (T, d) ffn_norm(x_mid) */
    float *gate, *up; /* (T, n_ff) pre-activation products */
} fwd_layer_saved;

/* Optional extras of a forward_layers call. Zero-initialise, then set what
 * is used. Arrays of n_layer entries are indexed by absolute layer number. */
typedef struct attn_extra {
    /* Prefix keys every query attends to (after RoPE), per layer. */
    int32_t P;
    const float *const *prefix_k; /* (n_layer) -> (P, kvd), or NULL when P == 0 */
    const float *const *prefix_v; /* (n_layer) -> (P, kvd) */
    const float *prefix_bias;     /* (P) added to every query's score toward key p; NULL = 0 */
    /* Where to save what backward needs, per layer; NULL = save nothing. */
    fwd_layer_saved *saved;       /* (n_layer) */
} attn_extra;

/* An adapter attached to a context (a mixture, by mop_ctx_set_mixture() in
 * src/gate; core knows nothing of prompts). When `forward` is set, decode and
 * NLL run their tokens through it instead of every layer: it runs n tokens
 * at positions n_past.., advances n_past and points *x at their final hidden
 * states (n, d), valid until the next call; on failure nothing has changed.
 * `state` is the adapter's per-context memory, released with free_state. */
typedef struct ctx_adapter {
    const void *owner; /* the attached object, NULL = the base model */
    void *state;
    mop_status (*forward)(mop_ctx *ctx, const int32_t *tokens, int32_t n, const float **x);
    void (*free_state)(void *state);
} ctx_adapter;

struct mop_ctx {
    mop_model *model;
    mop_ctx_params params;
    mop_pool *pool;
    rope_table rope;

    /* KV cache: (n_layer, 2, n_ctx, kvd) */
    float *kv;
    int32_t n_past;

    /* scratch for cap_rows >= n_batch rows (ctx_reserve_rows grows it) */
    float *x;     /* (n_batch, d) hidden states of ctx_decode */
    float *xn;    /* (n_batch, d) normed input, then projection outputs */
    float *q;     /* (n_batch, qd) */
    float *att;   /* (n_batch, qd) */
    float *gate;  /* (n_batch, n_ff) */
    float *up;    /* (n_batch, n_ff) */
    int32_t *pos; /* (n_batch) */

    /* logits of the last decode: n_logits rows of n_vocab; the buffer holds
     * cap_logits rows and grows only for LOGITS_ALL calls wider than before. */
    float *logits;
    int32_t n_logits, cap_logits;

    int32_t cap_rows;    /* rows of the scratch buffers above */
    ctx_adapter adapter; /* attached mixture, if any */
    int borrowed;        /* pool, rope and scratch belong to another context (mop_decoder) */
};

/* Grow the scratch so one forward_layers call may take `rows` rows; nothing
 * changes on failure (MOP_E_NOMEM). Not for a borrowing context. */
mop_status ctx_reserve_rows(mop_ctx *ctx, int32_t rows);

/* A context whose pool, RoPE table and scratch are owner's (its KV cache, n_past,
 * adapter and one row of logits are its own): the sequences of a mop_decoder,
 * used one at a time from the owner's thread. Free with mop_ctx_free() before owner. */
mop_status ctx_create_borrowing(mop_ctx *owner, int32_t n_ctx, mop_ctx **out);

/* Rows per LM-head product when scoring many tokens (bounds the buffer). */
#define FWD_HEAD_ROWS 32

/* x (T, d) = embedding rows of tokens (T). Ids must be valid. */
void forward_embed(mop_ctx *ctx, float *x, const int32_t *tokens, int32_t T);

/* Run layers [layer_begin, layer_end) on x (T, d), updated in place; pos (T)
 * are the RoPE positions. T <= n_batch, n_past + T <= n_ctx (unchecked). */
void forward_layers(mop_ctx *ctx, float *x, int32_t T, const int32_t *pos, int32_t layer_begin,
                    int32_t layer_end, const attn_extra *extra);

/* One sequence of a batched decode step (forward_layers_rows). */
typedef struct fwd_row {
    mop_ctx *ctx;             /* its KV cache; the new token goes to row ctx->n_past (not advanced) */
    const attn_extra *extra;  /* its prompt prefix, or NULL */
    int32_t prefix_from;      /* layers >= prefix_from attend to extra's prefix */
} fwd_row;

/* One new token of each of B sequences, x (B, d) at positions pos (B),
 * through layers [layer_begin, layer_end): every linear product runs once
 * over all B rows (the weights are read once per step), attention per row
 * on its own cache and prefix. Uses ctx's pool and scratch (cap_rows >= B);
 * k_new, v_new (B, kvd) and ar (B) are scratch. A row gives what
 * forward_layers gives its context for T = 1, up to the rounding of the
 * multi-row products. */
void forward_layers_rows(mop_ctx *ctx, float *x, int32_t B, const int32_t *pos,
                         const fwd_row *rows, float *k_new, float *v_new, attn_row *ar,
                         int32_t layer_begin, int32_t layer_end);

/* logits (T, n_vocab) = lm_head(out_norm(x)) for x (T, d), T <= n_batch.
 * x is not modified. */
void forward_head(mop_ctx *ctx, float *logits, const float *x, int32_t T);

/* Keys and values of layer l in the cache: (n_ctx, kvd) each. */
float *forward_cache_k(mop_ctx *ctx, int32_t layer);
float *forward_cache_v(mop_ctx *ctx, int32_t layer);

#endif
