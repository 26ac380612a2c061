/* Compact LM-head storage: the (n_vocab, d) output matrix as F16 or Q8_0
 * behind the mop_weight interface. Decode reads the whole head per token, so
 * halving (F16) or quartering (Q8_0, 34 bytes per 32 weights) its bytes
 * speeds up the memory-bound part that pruning does not touch.
 *
 * Values are used exactly as stored: y = dequant(W)·x with x in F32 (x is not
 * quantized), so a compact head equals a dense head holding the dequantized
 * values, up to summation order. Layouts are GGML's (docs/FORMAT.md), so a
 * saved head is an ordinary F16 / Q8_0 GGUF tensor. */
#ifndef MOP_LM_HEAD_H
#define MOP_LM_HEAD_H

#include <stdint.h>

#include "model.h"

extern const mop_weight_ops lm_head_f16_ops;
extern const mop_weight_ops lm_head_q8_0_ops;

/* out = src (any weight) converted to ftype MOP_FT_F16 or MOP_FT_Q8_0 (cols a
 * multiple of 32), in a buffer the weight owns. On error *out is untouched.
 * @return MOP_OK, MOP_E_INVALID_ARG, MOP_E_NOMEM */
mop_status lm_head_convert(mop_weight *out, const mop_weight *src, int32_t ftype);

/* out = a weight over borrowed data of ftype MOP_FT_F16 / MOP_FT_Q8_0 holding
 * rows*cols values (a mapped file tensor the model keeps).
 * @return MOP_OK, MOP_E_INVALID_ARG, MOP_E_NOMEM */
mop_status lm_head_wrap(mop_weight *out, const void *data, int32_t ftype, int64_t rows,
                        int64_t cols);

/* 1 when w is a compact head; then its storage type, data and byte count. */
int lm_head_raw(const mop_weight *w, int32_t *ftype, const void **data, uint64_t *nbytes);

/* ---- kernels (lm_head.c generic, lm_head_avx2.c) ----------------------------
 * y[r] = Σ_k W[r,k]·x[k] for r in [r0, r1); W rows of row_bytes bytes. */
typedef void (*lm_rows_fn)(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                           int64_t cols, int64_t r0, int64_t r1);
void lm_f16_rows_avx2(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                      int64_t cols, int64_t r0, int64_t r1);
void lm_q8_0_rows_avx2(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                       int64_t cols, int64_t r0, int64_t r1);
/* dst (n) F16 bits = round-to-nearest-even(src) */
void lm_f32_to_f16_avx2(uint16_t *dst, const float *src, int64_t n);

#endif
