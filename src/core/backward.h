/* Activation backward kernels of the Llama block, for training soft prompts
 * (and the gate) through a frozen model.
 *
 * Conventions (llm.c style):
 * - outputs first, then inputs, then sizes; a shape comment on each;
 * - gradients are ACCUMULATED (+=) into the d-outputs, so callers can sum
 *   contributions (residual branches, several layers); callers zero them
 *   first. The exceptions are cross_entropy_backward, which WRITES dlogits
 *   (it is always the first gradient of a step and the buffer is large), and
 *   head_backward, which starts the pass the same way and WRITES dx.
 * - the frozen model's weights receive no gradient (the gate MLP's, trained
 *   parameters, do: gate_mlp_backward in src/gate/gate_mlp.c).
 * - single-threaded plain loops over what they are given; callers split work
 *   (rows for the elementwise kernels, sequences for attention).
 * - no argument checks: these are internal kernels, callers validate shapes.
 * block_backward and head_backward (block_backward.c) compose the kernels
 * into the backward of forward_layers and of the LM head (forward.h). */
#ifndef MOP_BACKWARD_H
#define MOP_BACKWARD_H

#include <stdint.h>

#include "forward.h"
#include "threadpool.h"

/* ---- RMSNorm ------------------------------------------------------------
 * Forward: y (T, d) = x / sqrt(mean(x²) + eps) * weight (d).
 * dx (T, d) += dy · ∂y/∂x.  dy, x (T, d). No weight gradient. */
void rmsnorm_backward(float *dx, const float *dy, const float *x, const float *weight,
                      int64_t T, int d, float eps);

/* ---- RoPE ---------------------------------------------------------------
 * Forward: in each head of x (T, n_heads, head_dim), pairs (x[2i], x[2i+1])
 * with 2i < n_rot turn by angle pos[t]·pos_scale·inv_freq[i]; dims >= n_rot
 * pass through. The rotation is orthogonal, so backward turns dy by the
 * negative angle: dx (T, n_heads, head_dim) += R(-angle) dy.
 * pos (T), inv_freq (n_rot/2). Angles are formed in double precision. */
void rope_backward(float *dx, const float *dy, const int32_t *pos, int64_t T, int n_heads,
                   int head_dim, int n_rot, const float *inv_freq, float pos_scale);

/* ---- SwiGLU -------------------------------------------------------------
 * Forward: h (n) = silu(gate) * up, silu(g) = g·σ(g).
 * dgate (n) += dh · up · σ(g)(1 + g(1 − σ(g)));  dup (n) += dh · silu(g). */
void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                     const float *up, int64_t n);

/* ---- Attention with a prefix --------------------------------------------
 * One sequence (callers loop over a batch). Shapes:
 *   q, out, dq, dout  (T, n_head, head_dim)
 *   k, v, dk, dv      (n_prefix + T, n_head_kv, head_dim): rows [0, n_prefix)
 *                     are the prefix (prompt), row n_prefix + j is query j's own key
 *   bias, dbias       (n_prefix), either may be NULL (bias 0 / not wanted)
 *   lse               (T, n_head), optional
 *   scratch           (2 · (n_prefix + T)) floats of workspace
 * Query t of head h uses kv head h / (n_head / n_head_kv) and attends to all
 * prefix keys and to its own keys j <= t (causal):
 *   s_j = q·k_j / sqrt(head_dim) + (j < n_prefix ? bias[j] : 0)
 *   p = softmax(s) over the allowed keys, out = Σ_j p_j v_j.
 * With n_prefix = 0 this is plain causal self-attention (the prompt sequence).
 *
 * attention_forward_lse writes out and, if lse != NULL, the log-sum-exp of
 * each row's scores, lse[t·n_head + h] = log Σ_j exp(s_j). Scores are formed
 * in float, the softmax sums in double. */
void attention_forward_lse(float *out, float *lse, float *scratch, const float *q,
                           const float *k, const float *v, const float *bias, int64_t T,
                           int64_t n_prefix, int n_head, int n_head_kv, int head_dim);

/* Backward of the above (attention_backward.c). Design choice: probabilities
 * are RECOMPUTED from q, k (and bias) one query row at a time, never stored
 * as a (T, n_keys) matrix per head, so memory stays O(n_keys) for long
 * sequences. If the forward's lse is given, p_j = exp(s_j − lse) as the
 * forward had it; with lse == NULL each row is re-normalised with a stable
 * (max-subtracted) softmax, which costs one more pass over the row's scores.
 *   dP_j = dout·v_j,  D = Σ_j p_j dP_j,  dS_j = p_j (dP_j − D)
 *   dq += Σ_j dS_j k_j / sqrt(hd),  dk_j += dS_j q / sqrt(hd),  dv_j += p_j dout
 *   dbias[j] += Σ over heads and queries of dS_j   (j < n_prefix; NULL: skipped)
 * dq, dk, dv are accumulated (+=); dk, dv sum over the query heads of a kv
 * head (GQA). Any of dq, dk, dv may be NULL to skip it.
 * Work is split by query head on pool (NULL = caller only): each head sums
 * its dk, dv and dbias terms into its own part of scratch, and the parts are
 * added in head order afterwards, so the result does not depend on the pool.
 * scratch holds attention_backward_scratch(n_prefix + T, ...) floats. */
void attention_backward(float *dq, float *dk, float *dv, float *dbias, float *scratch,
                        const float *dout, const float *q, const float *k, const float *v,
                        const float *lse, const float *bias, int64_t T, int64_t n_prefix,
                        int n_head, int n_head_kv, int head_dim, mop_pool *pool);
/* Floats of scratch attention_backward needs for up to n_keys keys. */
int64_t attention_backward_scratch(int64_t n_keys, int n_head, int head_dim);

/* ---- Cross-entropy fused with log-softmax -------------------------------
 * logits (T, V), targets (T): a class in [0, V), or -1 = ignored (any value
 * outside [0, V) is treated as ignored). scale is usually 1 / (number of
 * counted targets).
 * cross_entropy_forward: *loss_out = scale · Σ_t −log softmax(logits_t)[target_t]
 *   (written, not accumulated; sums in double).
 * cross_entropy_backward: dlogits (T, V) = scale · (softmax − onehot(target))
 *   on counted rows, 0 on ignored rows. WRITTEN, not accumulated: the loss is
 *   the start of the backward pass and V is large (49152), so no extra pass.
 *   dlogits may equal logits (in place). */
void cross_entropy_forward(float *loss_out, const float *logits, const int32_t *targets,
                           int64_t T, int64_t V, float scale);
void cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                            int64_t T, int64_t V, float scale);

/* ---- Transformer blocks and the LM head (block_backward.c) ---------------
 * The backward of forward_layers and of the LM head with its loss, in the
 * reverse order of their forward: head_backward, then block_backward for
 * layers b-1 .. a. d = n_embd, ff = n_ff, qd = n_head·head_dim,
 * kvd = n_head_kv·head_dim, V = n_vocab.
 *
 * Their scratch, the caller's, sized for calls of up to R rows over up to
 * N = n_pre + R keys (prefix rows then the call's own). */
typedef struct block_bwd_ws {
    float *dxn;               /* (R, d) */
    float *dh, *dgate, *dup;  /* (R, ff) */
    float *datt, *dq, *dqpre; /* (R, qd) */
    float *kcat, *vcat;       /* (N, kvd) prefix rows then the call's */
    float *dkcat, *dvcat;     /* (N, kvd) */
    float *dkpre;             /* (R, kvd) */
    float *scratch;           /* attention_backward_scratch(N, n_head, head_dim) workspace */
    float *inv_freq;          /* (n_rot / 2) the RoPE frequencies, filled by the caller */
    /* head_backward only */
    float *xn_out;            /* (T, d) out_norm(x) of the sequence */
    float *rows;              /* (FWD_HEAD_ROWS, d) gathered rows of xn_out */
    float *logits;            /* (FWD_HEAD_ROWS, V) */
} block_bwd_ws;

/* One layer's backward over T rows at positions pos (T). The keys attended
 * are n_pre prefix rows (pre_k, pre_v (n_pre, kvd); bias (n_pre) or NULL)
 * then the rows' own. dpre_k/dpre_v (n_pre, kvd) and dbias (n_pre) receive
 * the prefix gradients (+=), each NULL to skip; dk_ext/dv_ext (T, kvd), if
 * given, are gradients that reach this call's own keys/values from elsewhere
 * (the input stream's queries, for the prompt stream). top: dx is zero (the
 * prompt stream's last layer, whose output nobody reads), so only
 * dk_ext/dv_ext flow. sv: what forward_layers saved of this layer (x_in,
 * x_mid, q, k, v, lse, gate, up are read). */
typedef struct block_bwd {
    int32_t l, T, n_pre;
    const int32_t *pos;
    const fwd_layer_saved *sv;
    const float *pre_k, *pre_v, *bias;
    float *dpre_k, *dpre_v, *dbias;
    const float *dk_ext, *dv_ext;
    int top;
} block_bwd;

/* Backward of layer a->l given dx (T, d) = dL/d(layer output), turned in
 * place into dL/d(layer input). */
void block_backward(mop_ctx *ctx, block_bwd_ws *ws, float *dx, const block_bwd *a);

/* LM head, loss and its gradient for one sequence of T tokens with final
 * hidden states x (T, d): the targets are tokens[t + 1] for the n rows t in
 * row_idx (n). Returns Σ NLL over them; dx (T, d) = dL/dx WRITTEN, with
 * L = scale · Σ NLL. */
double head_backward(mop_ctx *ctx, block_bwd_ws *ws, float *dx, const float *x,
                     const int32_t *tokens, int32_t T, const int32_t *row_idx, int32_t n,
                     float scale);

#endif
