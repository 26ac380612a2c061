/* Causal grouped-query attention over a key sequence, with optional prefix
 * keys that every query sees (prompts prepended at an inner layer). One
 * kernel serves the KV-cache path (keys = cache rows, q_offset = n_past) and
 * the prefix path (keys = this call's rows, prefix supplied per layer). */
#ifndef MOP_ATTENTION_H
#define MOP_ATTENTION_H

#include <stdint.h>

#include "threadpool.h"

/* Keys before the sequence that every query may attend to. */
typedef struct attn_prefix {
    const float *k, *v; /* (P, n_head_kv*head_dim), after RoPE */
    const float *bias;  /* (P) added to every query's score toward key p; NULL = 0 */
    int32_t P;
} attn_prefix;

/* For each query t (T) and head h (n_head), with kv head g = h / (n_head/n_head_kv):
 *   s_j   = q[t,h]·k[j,g] / sqrt(head_dim) (+ bias_j for prefix keys)
 *   keys  = the P prefix keys, then sequence keys j = 0 .. q_offset + t (causal)
 *   out[t,h] = Σ_j softmax(s)_j v[j,g]
 * out (T, n_head*head_dim); lse (T, n_head), optional: log Σ_j exp(s_j);
 * q (T, n_head*head_dim); k, v (q_offset + T, n_head_kv*head_dim).
 * Softmax is computed online in blocks (max-subtracted). Work is split over
 * (query, head) pairs on pool (NULL = caller only). prefix may be NULL. */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       const attn_prefix *prefix, int32_t q_offset, int32_t T, int32_t n_head,
                       int32_t n_head_kv, int32_t head_dim, mop_pool *pool);

/* One query per sequence, B sequences with their own keys (a batched
 * decode step): row b attends to its prefix, then its keys [0, q_offset + 1).
 * Each row gives exactly what attention_forward gives for T = 1. */
typedef struct attn_row {
    const float *k, *v;  /* (q_offset + 1, n_head_kv*head_dim) the sequence's keys/values */
    attn_prefix prefix;  /* P = 0: none */
    int32_t q_offset;    /* keys before this row's own */
} attn_row;

/* out (B, n_head*head_dim), q (B, n_head*head_dim), rows (B). */
void attention_forward_rows(float *out, const float *q, const attn_row *rows, int32_t B,
                            int32_t n_head, int32_t n_head_kv, int32_t head_dim, mop_pool *pool);

/* AVX2 inner loops (attention_avx2.c), for head_dim a multiple of 8:
 *   s (n)    = q (hd) · k[j] for keys j < n, rows strided by stride
 *   acc (hd) += Σ_j p[j] v[j] */
void attn_scores_avx2(float *s, const float *q, const float *k, int64_t n, int64_t stride,
                      int32_t hd);
void attn_accum_avx2(float *acc, const float *p, const float *v, int64_t n, int64_t stride,
                     int32_t hd);
/* D (n, hd) += c[j] x for each row j (attention backward's dk, dv terms). */
void attn_outer_avx2(float *D, const float *c, const float *x, int64_t n, int32_t hd);

#endif
