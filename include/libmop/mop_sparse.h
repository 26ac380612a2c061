/**
 * @file mop_sparse.h
 * @brief Pruning a loaded model and storing it compactly.
 *
 * Pruning applies to the linear weights of the transformer blocks (attention
 * q/k/v/o and MLP gate/up/down). Embeddings, norms and the LM head stay dense.
 * Pruned weights are stored in packed sparse formats (N:M or unstructured,
 * see docs/FORMAT.md) and every entry point (decode, prefill, perplexity,
 * generation, prompt-mixture training) runs on them directly.
 *
 * Threads: mop_model_prune() changes the model, so it may only be called
 * while no context or mixture holds the model (it returns ::MOP_E_STATE
 * otherwise). Afterwards the model is immutable again and shareable.
 */
#ifndef MOP_SPARSE_API_H
#define MOP_SPARSE_API_H

#include "mop_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Pruning criterion. */
typedef enum mop_prune_method {
    MOP_PRUNE_MAGNITUDE = 0, /**< |W| */
    MOP_PRUNE_WANDA = 1,     /**< |W| × ||X_j||₂ over calibration activations */
    MOP_PRUNE_SPARSEGPT = 2  /**< layer-wise OBS with Hessian XᵀX and error compensation */
} mop_prune_method;

/** Sparsity pattern. */
typedef enum mop_prune_pattern {
    MOP_PATTERN_UNSTRUCTURED = 0, /**< a fraction @c ratio of weights removed */
    MOP_PATTERN_NM = 1            /**< N of every M consecutive inputs kept */
} mop_prune_pattern;

/** Where an unstructured ratio is applied. */
typedef enum mop_prune_granularity {
    MOP_GRANULARITY_ROW = 0,  /**< each output row keeps the same count */
    MOP_GRANULARITY_LAYER = 1 /**< one threshold per weight matrix */
} mop_prune_granularity;

/** Storage of the (dense) LM head after pruning: decode reads all of it per token. */
typedef enum mop_lm_head_format {
    MOP_LM_HEAD_F32 = 0,  /**< unchanged */
    MOP_LM_HEAD_F16 = 1,  /**< half precision, 2 bytes per weight */
    MOP_LM_HEAD_Q8_0 = 2  /**< 8-bit blocks of 32 with an F16 scale, 1.06 bytes per weight */
} mop_lm_head_format;

/** Options for mop_model_prune(). Fill with mop_prune_params_init(). */
typedef struct mop_prune_params {
    uint32_t struct_size;    /**< sizeof(mop_prune_params) */
    int32_t method;          /**< ::mop_prune_method; default ::MOP_PRUNE_MAGNITUDE */
    int32_t pattern;         /**< ::mop_prune_pattern; default ::MOP_PATTERN_NM */
    int32_t n;               /**< N of N:M; default 2 */
    int32_t m;               /**< M of N:M, N < M <= 16; default 4 */
    float ratio;             /**< unstructured: fraction removed, [0, 0.99]; default 0.5 */
    int32_t granularity;     /**< ::mop_prune_granularity; default ::MOP_GRANULARITY_ROW */
    int32_t layer_begin;     /**< first block pruned; default 0 */
    int32_t layer_end;       /**< one past the last block pruned; default -1 = all */
    const int32_t *calib_tokens; /**< calibration token ids (Wanda, SparseGPT), borrowed */
    int64_t n_calib_tokens;  /**< their count; cut into sequences of calib_seq_len */
    int32_t calib_seq_len;   /**< default 256 */
    float sparsegpt_damp;    /**< diagonal dampening as a fraction of mean diag(H); default 0.01 */
    int32_t sparsegpt_block; /**< columns per lazy-update block; default 128 */
    int32_t lm_head_format;  /**< ::mop_lm_head_format; default ::MOP_LM_HEAD_F32 */
    int32_t n_threads;       /**< default 0 = all cores */
    mop_progress_fn progress; /**< optional, one unit per weight matrix */
    void *progress_user;     /**< passed to @c progress */
} mop_prune_params;

/**
 * @brief Fill @p p with the default pruning options (magnitude, 2:4): each field's default is
 * on its line in ::mop_prune_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_prune_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_prune_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_prune_params_init_sized(mop_prune_params *p, size_t size);

/** @brief Fill the ::mop_prune_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_prune_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_prune_params_init(p) mop_prune_params_init_sized((p), sizeof *(p))

/** @brief Default pruning options (magnitude, 2:4), returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_prune_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_prune_params_init(&p)")
mop_prune_params mop_prune_default_params(void);

/**
 * @brief Prune @p model in place and store the pruned weights packed.
 * @param[in,out] model  the model; no context or mixture may hold it
 * @param[in]     params options; required, fill with mop_prune_params_init()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_RANGE (N, M, ratio or layers
 *         out of range), ::MOP_E_STATE (a context or mixture holds the model),
 *         ::MOP_E_INVALID_ARG (Wanda/SparseGPT without calibration tokens),
 *         ::MOP_E_NOMEM, ::MOP_E_CANCELLED (model unchanged on every error)
 */
MOP_API MOP_NODISCARD mop_status mop_model_prune(mop_model *model, const mop_prune_params *params);

/**
 * @brief Fraction of zero weights over the linear weights of the transformer
 * blocks, and the storage format name of the first pruned weight ("f32",
 * "nm", "bitmask", ...).
 * @param[in]  model    the model
 * @param[out] sparsity zeros / weights over all block linear layers, in [0, 1]
 * @param[out] format   static string: the format of the first sparse weight,
 *                      else of the first weight ("f32" for a dense model)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_model_sparsity(const mop_model *model, double *sparsity,
                                                    const char **format);

/**
 * @brief Save the model (pruned or not) as one GGUF file: metadata and
 * tokenizer of the source, dense tensors as F32, packed sparse weights as the
 * extra tensor types documented in docs/FORMAT.md. Written atomically, mode
 * 0666 less the umask (mop_model_save_v2() with ::MOP_SAVE_PRIVATE: 0600).
 * mop_model_load() reads it back, validating every index and count.
 * @param[in] model the model
 * @param[in] path  file to write (replaced if it exists)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_IO, ::MOP_E_UNSUPPORTED
 *         (Llama 3.1 RoPE scaling, which GGUF metadata cannot carry back),
 *         ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_model_save(const mop_model *model, const char *path);

/**
 * @brief mop_model_save() with flags. The file's mode is 0666 less the umask
 * (see "Files written" in mop_core.h), or 0600 less the umask with
 * ::MOP_SAVE_PRIVATE.
 * @param[in] model the model
 * @param[in] path  file to write (replaced if it exists)
 * @param[in] flags 0 (as mop_model_save()) or ::MOP_SAVE_PRIVATE
 * @return as mop_model_save(); ::MOP_E_INVALID_ARG also for unknown flags
 */
MOP_API MOP_NODISCARD mop_status mop_model_save_v2(const mop_model *model, const char *path,
                                                   int32_t flags);

#ifdef __cplusplus
}
#endif

#endif /* MOP_SPARSE_API_H */
