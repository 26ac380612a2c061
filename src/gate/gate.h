/* Prompt mixtures, internal: the mixture object, its work buffers, and the
 * pieces shared by the forward (mixture_forward.c), the backward
 * (mixture_backward.c) and save/load (mixture_io.c). docs/MIXTURE.md has the
 * math as implemented. */
#ifndef MOP_GATE_INTERNAL_H
#define MOP_GATE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "backward.h"
#include "forward.h"
#include "internal.h"
#include "libmop/mop_gate.h"
#include "model.h"
#include "rng.h" /* mop_xorshift64s_next: initialisation and pre-training shuffles */

/* Named views of the flat buffers, in this order. */
enum { GATE_T_EXPERTS = 0, GATE_T_W1, GATE_T_B1, GATE_T_W2, GATE_T_B2, GATE_T_COUNT };

/* Work buffers of one forward (and backward) over a batch, sized for at most
 * cap_T input tokens per sequence, a prompt stream of cap_S rows and cap_B
 * sequences. Allocated once and grown when a bigger shape arrives; `train`
 * says whether the activations a backward needs were allocated too. */
typedef struct gate_ws {
    int32_t cap_T, cap_S, cap_B, train;
    int32_t decode_only; /* no LM-head buffers (gate_ws_reserve_decode) */
    int32_t first_layer; /* saved activations exist for layers >= first_layer */

    /* per sequence of the batch */
    float *u;      /* (B, d) gate input: mean hidden state after layer L_g */
    float *a;      /* (B, h) gate pre-activation W1 u + b1 */
    float *pi;     /* (B, K) softmax(z / tau) before top-k */
    float *w;      /* (B, K) weights used (after top-k; 1/K for the uniform gate) */
    float *G;      /* (B, K) dL/dlog w_k (attention bias) or dL/dw_k (weighted sum) */
    float *dz;     /* (B, K) gradient of the gate logits */
    int64_t *tgt_count; /* (B) targets of each sequence */

    /* forward */
    float *x;      /* (T, d) input hidden states */
    float *xp;     /* (S, d) prompt stream hidden states */
    float *bias;   /* (S) score bias toward prompt keys */
    int32_t *row_idx; /* (T) positions whose next token is a target */
    int32_t *pos;  /* (T) input positions 0..T-1 */
    int32_t *ppos; /* (S) prompt positions -S..-1 */
    const float **pk, **pv;  /* (n_layer) prompt keys/values of each layer, NULL below L_p */
    fwd_layer_saved *sv_in;  /* (n_layer) input stream, layers >= L_p */
    fwd_layer_saved *sv_pr;  /* (n_layer) prompt stream, layers >= L_p (k, v only unless train) */
    fwd_layer_saved *sv_grp; /* (n_layer) views of sv_pr at one group's rows */
    float *sv_in_buf, *sv_pr_buf;

    /* backward (train only) */
    float *dx;                    /* (R, d), R = max(T, S) */
    /* block_backward / head_backward scratch (backward.h) for R rows and
     * S + T keys; its xn_out (T, d), rows and logits (FWD_HEAD_ROWS rows) are
     * allocated without train too (the forward scores with rows, logits) */
    block_bwd_ws bwd;
    float *dbias;                 /* (S) */
    float *dkp, *dvp;             /* (n_layer - first_layer, cap_S, kvd) prompt K/V gradients */
} gate_ws;

struct mop_mixture {
    mop_model *model;
    mop_mixture_params p; /* resolved: no -1 defaults */
    size_t n_params;
    float *params, *grads;
    float *prox_ref;      /* NULL until mop_mixture_set_prox_reference() */
    int32_t n_tensors;
    size_t off[GATE_T_COUNT], size[GATE_T_COUNT];

    /* Prompt K/V cache (attention-bias mode, inference): valid while the
     * experts are byte-identical to cache_experts. Every field is read and
     * written under cache_lock; cache_kv is read without it once a reader
     * got it from gate_cache_acquire()/gate_cache_peek() (it changes only
     * when the parameters change, which no reader may do concurrently). */
    pthread_mutex_t cache_lock;
    float *cache_kv;      /* (n_layer - L_p, 2, K·P, kvd) */
    float *cache_experts; /* (K·P·d) the experts the cache was built from */
    int32_t cache_valid;

    /* Gate input standardization (learned gate): u' = (u - in_mean) / in_std. */
    float *in_mean, *in_std; /* (d) each; 0 and 1 until set */

    /* Content pooling: the chat template's user header ("<|im_start|>user\n"
     * as ids) and its end of turn; n_user_hdr = 0 without a chat template. */
    int32_t user_hdr[8], n_user_hdr, eot;
    /* No work buffers: those are the context's or the call's (a prepared
     * mixture is shared by threads). */
};

/* Views. */
static inline float *gate_experts(const mop_mixture *m) { return m->params + m->off[GATE_T_EXPERTS]; }

/* Resolve -1 defaults against the model and check every field; errors are
 * MOP_E_RANGE / MOP_E_INVALID_ARG with the field's name. */
mop_status mixture_resolve_params(mop_mixture_params *p, int32_t n_layer, const char *fn);

/* Allocate a mixture of resolved params p without initialising values
 * (params zeroed). Takes a model reference. */
mop_status mixture_alloc(mop_model *model, const mop_mixture_params *p, mop_mixture **out);

/* Expert groups: K routed + n_shared. */
int32_t mixture_groups(const mop_mixture_params *p);

/* Prompt stream length: groups · P (attention bias) or P (weighted sum). */
int32_t mixture_stream_len(const mop_mixture_params *p);

/* Prompt positions of the stream's S rows: -P..-1 per group (independent
 * experts, and the weighted sum), else -S..-1. */
void gate_prompt_positions(const mop_mixture_params *p, int32_t *ppos);

/* Grow ws for the shapes given; MOP_E_NOMEM on failure (ws left freed). */
mop_status gate_ws_reserve(gate_ws *ws, const mop_mixture *m, int32_t T, int32_t S, int32_t B,
                           int32_t train);
void gate_ws_free(gate_ws *ws);

/* Validate a batch against the model/mixture/ctx; fn names the caller. */
mop_status gate_check_batch(const mop_ctx *ctx, const mop_batch *batch, int32_t need_task_K,
                            const char *fn);

/* Tokens of sequence b the gate may average: those before its first target
 * (the instruction part of an example), so training gates on what generation
 * sees (the prompt); all real tokens when the batch has no loss mask. */
int32_t gate_pool_len(const mop_batch *batch, int32_t b);

/* u (d) = mean of the rows of x (n_pool, d) the gate pools (gate_pool: the
 * user turns' content, or all n_pool rows). Raw: not standardized. */
void gate_pool_input(const mop_mixture *m, float *u, const float *x, const int32_t *tokens,
                     int32_t n_pool);

/* u (d) <- (u - mean) / std when the mixture standardizes its gate input. */
void gate_standardize(const mop_mixture *m, float *u);

/* Embed a sequence and run layers [0, L_g): x (T, d), u (d) = the raw pooled
 * gate input over its first n_pool tokens. */
void gate_embed_and_pool(mop_ctx *ctx, const mop_mixture *m, float *x, float *u,
                         const int32_t *tokens, int32_t T, int32_t n_pool, const int32_t *pos);

/* The prompt stream xp (S, d) (already filled with the prompt vectors)
 * through layers [L_p, n_layer) at positions ppos, saving into sv (n_layer,
 * absolute index) at least k and v; with independent experts each group runs
 * on its own (grp: n_layer views used as scratch). Leaves ctx->n_past at 0. */
void gate_prompt_stream(mop_ctx *ctx, const mop_mixture *m, float *xp, int32_t S,
                        const int32_t *ppos, fwd_layer_saved *sv, fwd_layer_saved *grp);

/* Whether the stream's groups run separately (independent experts, >1 group). */
int gate_groups_separate(const mop_mixture_params *p);

/* grp[l] (l >= L_p) = sv[l] advanced by r0 rows. */
void gate_saved_rows(fwd_layer_saved *grp, const fwd_layer_saved *sv, const mop_hparams *hp,
                     int32_t first_layer, int64_t r0);

/* The batch's cached layer-L_p states of sequence b, or NULL (also for a
 * caller whose mop_batch predates the field). */
const float *gate_batch_state(const mop_batch *batch, int32_t b);

/* Sequence b of batch up to layer `to` (L_g, or L_p): x (T, d) = the hidden
 * states entering it, u (d) = the raw pooled gate input; taken from the
 * batch's cached states when it has them and to is L_p. pos (T) = 0..T-1. */
void gate_run_to(mop_ctx *ctx, const mop_mixture *m, float *x, float *u, const mop_batch *batch,
                 int32_t b, const int32_t *pos, int32_t to);

/* bias (S) on the prompt keys: group k < K gets log(K·w_k) or log w_k (-inf for
 * w_k = 0), shared groups 0. */
void gate_fill_bias(const mop_mixture_params *p, float *bias, const float *w);

/* Weighted-sum prompt: out (P, d) = Σ_k w_k E_k. */
void gate_weighted_prompt(const mop_mixture *m, float *out, const float *w);

/* Targets of one sequence: rows list of positions t whose next token t+1 is a
 * target; returns their count. */
int32_t gate_targets(int32_t *row_idx, const mop_batch *batch, int32_t b);

/* The prompt K/V cache (attention-bias mode). gate_cache_acquire builds it
 * with ctx when stale (rows [0, S) of ctx's KV cache in layers >= L_p are
 * overwritten: call it before the sequence reaches L_p) and sets *kv;
 * gate_cache_peek gives it only when fresh, else NULL; gate_cache_invalidate
 * marks it stale (the owner of a mixture under training). All three lock. */
mop_status gate_cache_acquire(mop_ctx *ctx, const mop_mixture *m, const float **kv);
const float *gate_cache_peek(const mop_mixture *m);
void gate_cache_invalidate(mop_mixture *m);
mop_status gate_cache_build(mop_ctx *ctx, mop_mixture *m);
int gate_cache_fresh(const mop_mixture *m);

/* ---- the gate MLP (gate_mlp.c): its forward, then its backward in reverse
 * order. act is a mop_gate_act: MOP_GATE_ACT_GELU, the tanh approximation
 * 0.5·x·(1 + tanh(sqrt(2/π)(x + 0.044715 x³))), or MOP_GATE_ACT_RELU. The
 * backward follows backward.h's conventions (gradients accumulated). ------- */

/* Gate of one sequence: u (d, already standardized) -> a (h), pi (K), w (K).
 * Learned mode only for a/pi; uniform sets w = pi = 1/K; oracle sets
 * w = pi = one-hot(task). */
void gate_forward_one(const mop_mixture *m, float *a, float *pi, float *w, const float *u,
                      int32_t task);

/* w (B, K) = softmax(z / tau) per row.
 * Attention-bias mode: given G (B, K) = dL/d(log w_k) (the dbias of group k's
 * keys, summed over layers), dz (B, K) += (G_m − w_m Σ_k G_k) / tau. */
void gate_softmax_backward(float *dz, const float *G, const float *w, int64_t B, int K,
                           float tau);

/* Weighted-sum mode: given dw (B, K) = dL/dw,
 * dz (B, K) += w_m (dw_m − Σ_k w_k dw_k) / tau. */
void gate_softmax_backward_dw(float *dz, const float *dw, const float *w, int64_t B, int K,
                              float tau);

/* Gate MLP: a (B, h) = W1 (h, d) · u + b1 (h);  z (B, K) = W2 (K, h) · act(a) + b2 (K).
 * Given dz (B, K), the saved pre-activation a (B, h) and the input u (B, d):
 *   dW1 (h, d), db1 (h), dW2 (K, h), db2 (K) += the parameter gradients summed
 *   over the batch; du (B, d) += the input gradient, or NULL to skip (the
 *   default mode needs none). ReLU uses the derivative 0 at a = 0. */
void gate_mlp_backward(float *dW1, float *db1, float *dW2, float *db2, float *du,
                       const float *dz, const float *u, const float *a, const float *W1,
                       const float *W2, int64_t B, int d, int h, int K, int act);

/* ---- the layer schedule (schedule.c): the one place that orders a mixture's
 * forward, used by training, evaluation and inference alike ---------------- */

/* Where a run's prompt keys/values come from (attention-bias mode; a
 * weighted-sum prompt is always computed, it depends on the gate). */
enum { GATE_PREFIX_CACHE = 0, GATE_PREFIX_READY = 1, GATE_PREFIX_COMPUTE = 2 };

typedef struct gate_seq {
    const int32_t *tokens;   /* (T) ids (unused when state is given) */
    int32_t T;               /* tokens, at positions pos[0..T) = 0..T-1 */
    int32_t n_pool;          /* the gate reads the first n_pool tokens */
    int32_t chunk;           /* most rows per forward_layers call (>= T to run whole) */
    const float *state;      /* (T, d) cached hidden states entering L_p, or NULL */
    const float *gate_input; /* (d) the raw gate input, with state */
    int32_t task;            /* oracle label, or -1 */
    int32_t stop_at_gate;    /* 1: layers [0, L_g) and the gate only */
    int32_t prefix;          /* GATE_PREFIX_*: CACHE binds cache_kv, READY ws->sv_pr as it
                                is, COMPUTE runs the experts into ws->sv_pr first */
    const float *cache_kv;   /* with GATE_PREFIX_CACHE */
    fwd_layer_saved *saved;  /* training: layers >= L_p save here (n_layer entries) */
} gate_seq;

/* One sequence through the mixture's schedule:
 *   embed -> layers [0, L_g) -> u = pool -> gate (a, pi, w) -> layers [L_g, L_p)
 *   -> prompt prefix at L_p (K/V per s->prefix, bias from w) -> layers [L_p, L)
 * x (T, d) ends as the final hidden states (or the layer-L_g states with
 * stop_at_gate); u (d) standardized, a (h), pi (K), w (K) the gate's; *ex
 * the prefix binding (into ws->pk/pv/bias), reused by gate_schedule_step for
 * later tokens. ws needs u.. only for ppos, xp, bias, pk, pv, sv_pr, sv_grp.
 * ctx->n_past is left 0. */
void gate_schedule(mop_ctx *ctx, const mop_mixture *m, gate_ws *ws, float *x, const int32_t *pos,
                   float *u, float *a, float *pi, float *w, attn_extra *ex, const gate_seq *s);

/* Later tokens of a gated sequence: x (T, d) at positions pos (from ctx->n_past)
 * through layers [0, L_p) and, with the prefix of ex, [L_p, L). */
void gate_schedule_step(mop_ctx *ctx, const mop_mixture *m, float *x, int32_t T,
                        const int32_t *pos, const attn_extra *ex);

/* The decode-state subset of ws for stream length S (pk, pv, bias, ppos, xp,
 * u, a, pi, w, sv_pr/sv_grp with K/V only). */
mop_status gate_ws_reserve_decode(gate_ws *ws, const mop_mixture *m);

/* Point ws->pk/pv at each layer's prompt K/V: kv (the cache) when given, else ws->sv_pr. */
void gate_bind_prefix(gate_ws *ws, const mop_mixture *m, const float *kv);

/* Attach m to ctx (mixture_ctx.c): checks m against ctx (fn names the caller),
 * allocates the context's decode state, grows its scratch to the prompt
 * stream and resets the context. ctx must have no adapter attached. */
mop_status gate_ctx_attach(mop_ctx *ctx, const mop_mixture *m, const char *fn);

/* The prompt prefix of ctx's current sequence and the layer it starts at
 * (the attached mixture's L_p); NULL without a mixture. */
const attn_extra *gate_ctx_prefix(const mop_ctx *ctx, int32_t *inject_layer);

/* Argument checks shared by the mixture calls (mixture_forward.c). */
mop_status gate_check_stream(const mop_ctx *ctx, const mop_mixture *m, const char *fn);

/* Parse and validate a mixture file image. On success *params holds the
 * resolved shape and *values (mop_alloc'ed, n floats in flat order) the
 * parameters. d_model/n_layer are the model's, checked against the file. */
mop_status mixture_parse(const void *data, size_t size, const char *what, int32_t d_model,
                         int32_t n_layer, mop_mixture_params *params, float **values,
                         size_t *n);

#endif
