/* Activation backward kernels of the Llama block, for training soft prompts
 * (and the gate) through a frozen model.
 *
 * Conventions (llm.c style):
 * - outputs first, then inputs, then sizes; a shape comment on each;
 * - gradients are ACCUMULATED (+=) into the d-outputs, so callers can sum
 *   contributions (residual branches, several layers); callers zero them
 *   first. The one exception is cross_entropy_backward, which WRITES dlogits
 *   (it is always the first gradient of a step and the buffer is large).
 * - the frozen model's weights receive no gradient; the gate MLP's do
 *   (gate_mlp_backward), because those are trained parameters.
 * - single-threaded plain loops over what they are given; callers split work
 *   (rows for the elementwise kernels, sequences for attention).
 * - no argument checks: these are internal kernels, callers validate shapes. */
#ifndef MOP_BACKWARD_H
#define MOP_BACKWARD_H

#include <stdint.h>

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

/* ---- Gate ---------------------------------------------------------------
 * w (B, K) = softmax(z / tau) per row.
 * Attention-bias mode: given G (B, K) = dL/d(log w_k) (the dbias of group k's
 * keys, summed over layers), dz (B, K) += (G_m − w_m Σ_k G_k) / tau. */
void gate_softmax_backward(float *dz, const float *G, const float *w, int64_t B, int K,
                           float tau);

/* Weighted-sum mode: given dw (B, K) = dL/dw,
 * dz (B, K) += w_m (dw_m − Σ_k w_k dw_k) / tau. */
void gate_softmax_backward_dw(float *dz, const float *dw, const float *w, int64_t B, int K,
                              float tau);

/* Gate MLP activations (values match mop_gate_act). */
enum { GATE_BWD_ACT_GELU = 0, GATE_BWD_ACT_RELU = 1 };

/* Gate MLP: a (B, h) = W1 (h, d) · u + b1 (h);  z (B, K) = W2 (K, h) · act(a) + b2 (K)
 * act: GATE_BWD_ACT_GELU (tanh approximation
 *   0.5·x·(1 + tanh(sqrt(2/π)(x + 0.044715 x³)))) or GATE_BWD_ACT_RELU.
 * Given dz (B, K), the saved pre-activation a (B, h) and the input u (B, d):
 *   dW1 (h, d), db1 (h), dW2 (K, h), db2 (K) += the parameter gradients summed
 *   over the batch; du (B, d) += the input gradient, or NULL to skip (the
 *   default mode needs none). ReLU uses the derivative 0 at a = 0. */
void gate_mlp_backward(float *dW1, float *db1, float *dW2, float *db2, float *du,
                       const float *dz, const float *u, const float *a, const float *W1,
                       const float *W2, int64_t B, int d, int h, int K, int act);

#endif
