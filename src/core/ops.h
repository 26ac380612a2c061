/* Elementwise kernels of the Llama block: RMSNorm, RoPE, SwiGLU, softmax.
 * Plain single-threaded loops over the rows they are given; the forward
 * splits rows across threads. Outputs first, then inputs, then sizes. */
#ifndef MOP_OPS_H
#define MOP_OPS_H

#include <stdint.h>

#include "model.h"

/* out (T, d) = inp / sqrt(mean(inp²) + eps) * weight (d).
 * rstd (T), optional: the 1/sqrt(mean(inp²) + eps) of each row, for backward.
 * out may equal inp. */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                     int64_t T, int64_t d, float eps);

/* Rotary embedding angles: per position p and pair i, angle = p · freq[i],
 * freq[i] = theta^(-2i/n_rot) after the model's scaling (none, linear,
 * Llama 3). cos/sin are tabulated for positions [0, n_pos); other positions
 * (negative ones, for prompts prepended before the input) are computed on
 * the fly with the same double-precision formula. */
#define ROPE_MAX_PAIRS 256 /* n_rot <= 512 */

typedef struct rope_table {
    int32_t n_rot;  /* rotated dims per head (even) */
    int32_t n_pos;  /* tabulated positions */
    double *freq;   /* (n_rot/2) */
    float *cs;      /* (n_pos, n_rot/2, 2): cos, sin */
} rope_table;

/* Scaled inverse frequencies (n_rot/2) of hp; the one place the scaling
 * rules live. Returns MOP_E_INVALID_ARG for a bad factor or n_rot. */
mop_status rope_frequencies(double *freq, const mop_hparams *hp);
mop_status rope_table_init(rope_table *rt, const mop_hparams *hp, int32_t n_pos);
void rope_table_free(rope_table *rt);

/* out (T, n_heads, head_dim) = inp rotated in place-compatible fashion: in
 * each head, pairs (x[2i], x[2i+1]) for 2i < n_rot turn by pos[t]·freq[i];
 * dims >= n_rot pass through. out may equal inp. */
void rope_forward(float *out, const float *inp, const int32_t *pos, const rope_table *rt,
                  int64_t T, int32_t n_heads, int32_t head_dim);

/* out (n) = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may alias gate. */
void swiglu_forward(float *out, const float *gate, const float *up, int64_t n);

/* out (n) = softmax(inp), max-subtracted. out may equal inp. */
void softmax_forward(float *out, const float *inp, int64_t n);

/* log(sum(exp(inp))) in double, max-subtracted. */
double logsumexp(const float *inp, int64_t n);

/* y (n) += x (n) */
void add_inplace(float *y, const float *x, int64_t n);

#endif
