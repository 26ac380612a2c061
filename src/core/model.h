/* The loaded model as the library sees it, and the weight-matrix interface
 * that every forward and backward product goes through. */
#ifndef MOP_MODEL_H
#define MOP_MODEL_H

#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"
#include "tensor_source.h"
#include "threadpool.h"

/* ---- weight-matrix interface ------------------------------------------------
 * A linear weight W of shape (rows, cols) = (out_features, in_features),
 * row-major, used as y = W·x. Dense F32 is one implementation (weight_dense.c);
 * sparse formats provide their own ops table. Model code never branches on
 * the format: it calls the table (optional slots are NULL-checked). Every op may split its work over `pool` (NULL = caller only). */
typedef struct mop_weight mop_weight;

typedef struct mop_weight_ops {
    const char *format; /* "f32", "nm", "bitmask", ... */
    /* y (rows) = W · x (cols) */
    void (*matvec)(const mop_weight *w, float *y, const float *x, mop_pool *pool);
    /* Y (n, rows) = X (n, cols) · Wᵀ */
    void (*matmul)(const mop_weight *w, float *Y, const float *X, int64_t n, mop_pool *pool);
    /* dX (n, cols) += dY (n, rows) · W   (activation gradient for backward) */
    void (*matmul_t)(const mop_weight *w, float *dX, const float *dY, int64_t n,
                     mop_pool *pool);
    /* Bytes the stored weight occupies (values + indices). */
    uint64_t (*bytes)(const mop_weight *w);
    /* Write W as dense row-major F32 (rows*cols floats). */
    void (*to_dense)(const mop_weight *w, float *out);
    /* Release what impl owns (not the struct itself). May be NULL. */
    void (*release)(mop_weight *w);
    /* May be NULL. Y[i] (n, w[i]->rows) = X (n, cols) · w[i]ᵀ for the n_w
     * weights sharing their input X (q/k/v, gate/up), w[0] using this table:
     * one pool job for the group. Returns 1 when done; 0, doing nothing,
     * when the group is not one it handles (the caller then runs the
     * products one by one, with the same results). */
    int (*linear_multi)(const mop_weight *const *w, float *const *Y, int n_w, const float *X,
                        int64_t n, mop_pool *pool);
} mop_weight_ops;

struct mop_weight {
    const mop_weight_ops *ops;
    int64_t rows, cols;
    const float *data; /* dense formats: rows*cols F32, row-major; else NULL */
    void *impl;        /* format-specific state, owned through ops->release */
};

/* Dense F32 weight over borrowed data (the model keeps the buffer alive). */
void mop_weight_dense_init(mop_weight *w, const float *data, int64_t rows, int64_t cols);
extern const mop_weight_ops mop_weight_dense_ops;

/* ---- hyper-parameters ---------------------------------------------------- */
typedef enum mop_rope_scaling {
    MOP_ROPE_SCALING_NONE = 0,
    MOP_ROPE_SCALING_LINEAR = 1, /* positions divided by factor */
    MOP_ROPE_SCALING_LLAMA3 = 2  /* Llama 3.1 frequency-dependent scaling */
} mop_rope_scaling;

typedef struct mop_hparams {
    int32_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx_train;
    int32_t n_rot;          /* rotary dims per head (== head_dim for Llama) */
    float rope_theta;
    int32_t rope_scaling;   /* mop_rope_scaling */
    float rope_factor;      /* linear / llama3 factor */
    float rope_low_freq_factor, rope_high_freq_factor; /* llama3 only */
    int32_t rope_orig_ctx;  /* llama3 only: original_max_position_embeddings */
    float norm_eps;
    int32_t tied_embeddings;
} mop_hparams;

/* RoPE convention inside libmop: GGUF's (llama.cpp "normal"), i.e. each head
 * rotates adjacent pairs (x[2i], x[2i+1]) by angle pos * theta^(-2i/n_rot).
 * Hugging Face checkpoints rotate (x[i], x[i + n_rot/2]); their Q and K rows
 * are permuted at load so one kernel serves both. */

typedef struct mop_layer {
    const float *attn_norm; /* (d) */
    const float *ffn_norm;  /* (d) */
    mop_weight wq;          /* (n_head*head_dim, d) */
    mop_weight wk;          /* (n_head_kv*head_dim, d) */
    mop_weight wv;          /* (n_head_kv*head_dim, d) */
    mop_weight wo;          /* (d, n_head*head_dim) */
    mop_weight w_gate;      /* (n_ff, d) */
    mop_weight w_up;        /* (n_ff, d) */
    mop_weight w_down;      /* (d, n_ff) */
} mop_layer;

/* One tensor as recorded from the file, for mop_model_tensor_get_info. */
typedef struct mop_tensor_record {
    char *name;
    int32_t ftype;
    int32_t n_dims;
    int64_t dims[4];
} mop_tensor_record;

typedef struct mop_mapping {
    void *addr;
    size_t size;
} mop_mapping;

struct mop_tokenizer; /* tokenizer.h */

struct mop_model {
    atomic_int refs;
    mop_hparams hp;
    char arch[32];
    char name[128];
    char file_kind[16]; /* "gguf" or "safetensors" */
    uint64_t file_bytes;

    const float *tok_embd; /* (n_vocab, d) */
    const float *out_norm; /* (d) */
    mop_weight lm_head;    /* (n_vocab, d); data == tok_embd when tied */
    mop_layer *layers;     /* n_layer */

    struct mop_tokenizer *tok;

    mop_tensor_record *tensors;
    int32_t n_tensors;

    /* Memory the model owns: file mappings and F32 buffers made at load. */
    mop_mapping *maps;
    int32_t n_maps;
    void **buffers;
    int32_t n_buffers, cap_buffers;
};

/* A weight a file reader built itself (a packed sparse weight, a compact LM
 * head), used instead of converting the tensor of the same canonical name.
 * mop_model_assemble moves each one it uses into the model and sets its
 * w.ops to NULL; the reader releases whatever is left. */
typedef struct mop_src_weight {
    const char *name; /* canonical name, e.g. "blk.3.attn_q.weight" */
    mop_weight w;
} mop_src_weight;

/* What a file reader hands to mop_model_assemble. */
typedef struct mop_model_source {
    mop_hparams hp;
    const char *arch;
    const char *name;
    const char *file_kind;
    uint64_t file_bytes;
    const mop_src_tensor *tensors; /* canonical GGUF-style names */
    int64_t n_tensors;
    int32_t qk_rope_halves;        /* 1: Q/K rows in HF half-split layout, permute */
    mop_src_weight *weights;       /* prebuilt weights (may be NULL) */
    int64_t n_weights;
} mop_model_source;

/* Allocate an empty model with one reference. */
mop_status mop_model_alloc(mop_model **out);

/* Validate every expected tensor's presence and shape against hp, convert to
 * F32 (mapping F32 data directly when allowed), and fill m's weights and
 * tensor records. The mappings behind src->tensors must already be owned by m
 * (mop_model_add_mapping). */
mop_status mop_model_assemble(mop_model *m, const mop_model_source *src,
                              const mop_model_params *params);

/* Hand a mapping or a mop_alloc'ed buffer to the model, which frees it last.
 * On failure the caller still owns it. */
mop_status mop_model_add_mapping(mop_model *m, void *addr, size_t size);
mop_status mop_model_add_buffer(mop_model *m, void *buf);

/* Take/drop a reference (contexts and mixtures hold one). */
void mop_model_retain(mop_model *m);

#endif
