/**
 * @file mop_core.h
 * @brief libmop core: status codes, library hooks, model loading, tokenizer,
 *        inference contexts, perplexity and sampling.
 *
 * Ownership and threads, for every function in this header:
 * - Handles (`mop_model`, `mop_ctx`, `mop_sampler`) are created by a
 *   `_load`/`_create` call and released by the matching `_free`, which
 *   accepts NULL. A `mop_ctx` holds a reference on its model, so the two may
 *   be freed in any order.
 * - A `mop_model` is read-only after load and may be used by any number of
 *   threads at once. A `mop_ctx` and a `mop_sampler` belong to one thread at
 *   a time. A prompt mixture attached to contexts (mop_ctx_set_mixture() in
 *   mop_gate.h) may be shared by contexts in any number of threads.
 * - Every fallible call returns a ::mop_status; on failure the detail is in
 *   mop_last_error() and output arguments are left untouched unless stated.
 * - Strings returned as `const char *` are owned by the library and live as
 *   long as the handle they came from (or forever, for static strings).
 */
#ifndef MOP_CORE_H
#define MOP_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "mop_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @def MOP_API
 * @brief Marks a public function: exported from the shared library (every
 * other symbol is hidden). Empty for users of the headers.
 */
#if defined(MOP_BUILDING_LIBRARY) && defined(__GNUC__)
#define MOP_API __attribute__((visibility("default")))
#else
#define MOP_API
#endif

/**
 * @def MOP_NODISCARD
 * @brief Marks a function whose ::mop_status result must be checked (GCC and
 * Clang warn when it is ignored).
 */
#if defined(__GNUC__)
#define MOP_NODISCARD __attribute__((warn_unused_result))
#else
#define MOP_NODISCARD
#endif

/**
 * @def MOP_DEPRECATED
 * @brief Marks a function kept for older binaries (GCC and Clang warn when
 * new code calls it, with @p msg saying what to call instead).
 */
#if defined(__GNUC__)
#define MOP_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define MOP_DEPRECATED(msg)
#endif

/* ------------------------------------------------------------------------ */
/** @name Status codes
 *  Values are append-only and never reused. 0 is success, errors are negative.
 *  @{ */

/** X-macro table: symbol, value, short description. */
#define MOP_STATUS_TABLE(X)                                                    \
    X(MOP_OK, 0, "success")                                                    \
    X(MOP_E_INVALID_ARG, -1, "invalid argument")                               \
    X(MOP_E_IO, -2, "input/output error")                                      \
    X(MOP_E_FORMAT, -3, "malformed or corrupt data")                           \
    X(MOP_E_UNSUPPORTED, -4, "unsupported feature or file type")               \
    X(MOP_E_NOMEM, -5, "out of memory")                                        \
    X(MOP_E_SHAPE, -6, "shape mismatch")                                       \
    X(MOP_E_CHECKSUM, -7, "checksum mismatch")                                 \
    X(MOP_E_RANGE, -8, "value out of range or buffer too small")               \
    X(MOP_E_STATE, -9, "call not valid in the object's current state")         \
    X(MOP_E_CANCELLED, -10, "cancelled by the caller's callback")              \
    X(MOP_E_INTERNAL, -11, "internal error (a bug in libmop)")

/** Result of every fallible libmop call. */
typedef enum mop_status {
#define MOP_STATUS_ENUM_(name, value, text) name = value,
    MOP_STATUS_TABLE(MOP_STATUS_ENUM_)
#undef MOP_STATUS_ENUM_
} mop_status;

/** @var MOP_OK
 *  Success (0). */
/** @var MOP_E_INVALID_ARG
 *  Invalid argument: NULL, out of its documented domain, or inconsistent with another (-1). */
/** @var MOP_E_IO
 *  Input/output error: a file cannot be opened, read or written (-2). */
/** @var MOP_E_FORMAT
 *  Malformed or corrupt data: truncated file, bad header, NaN/Inf where not allowed (-3). */
/** @var MOP_E_UNSUPPORTED
 *  Unsupported feature or file type: architecture, tensor type, format version (-4). */
/** @var MOP_E_NOMEM
 *  Out of memory (-5). */
/** @var MOP_E_SHAPE
 *  Shape mismatch between tensors, or between a tensor and the model (-6). */
/** @var MOP_E_CHECKSUM
 *  Checksum mismatch: the data was altered or damaged (-7). */
/** @var MOP_E_RANGE
 *  A value out of range, or a caller's buffer too small (the call reports the size needed) (-8). */
/** @var MOP_E_STATE
 *  The call is not valid in the object's current state, e.g. pruning a model that a context holds (-9). */
/** @var MOP_E_CANCELLED
 *  Cancelled by the caller's progress callback (-10). */
/** @var MOP_E_INTERNAL
 *  Internal error: a bug in libmop, please report it (-11). */

/**
 * @brief Name of a status code, e.g. "MOP_E_FORMAT".
 * @param s any value, also one outside ::mop_status
 * @return a static string, never NULL; "MOP_E_UNKNOWN" for a value not in the table
 */
MOP_API const char *mop_status_name(mop_status s);

/**
 * @brief Short description of a status code, e.g. "malformed or corrupt data".
 * @param s any value, also one outside ::mop_status
 * @return a static string, never NULL; "unknown status" for a value not in the table
 */
MOP_API const char *mop_status_str(mop_status s);

/**
 * @brief Detail of the last failing call in this thread.
 *
 * @return the message of the last failure in the calling thread, owned by
 *         libmop: thread-local, valid until the next failing libmop call in
 *         the same thread. Empty string (never NULL) if nothing has failed yet.
 */
MOP_API const char *mop_last_error(void);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Version
 *  @{ */

/** @brief Version of the linked library.
 *  @return a static string such as "0.1.0", never NULL */
MOP_API const char *mop_version(void);

/** @brief Version of the linked library as one integer.
 *  @return the library's ::MOP_VERSION_NUMBER (major*10000 + minor*100 + patch);
 *          compare with the header's to detect a mismatch */
MOP_API uint32_t mop_version_number(void);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Library hooks
 *  Set once, before any handle is created; not thread-safe against other calls.
 *  @{ */

/** Log levels passed to the log callback. */
typedef enum mop_log_level {
    MOP_LOG_ERROR = 0, /**< errors */
    MOP_LOG_WARN = 1,  /**< warnings: something unexpected that libmop worked around */
    MOP_LOG_INFO = 2,  /**< information, e.g. a feature unavailable for a model */
    MOP_LOG_DEBUG = 3  /**< details for debugging */
} mop_log_level;

/** Receives one log line (no trailing newline). */
typedef void (*mop_log_fn)(int32_t level, const char *message, void *user);

/**
 * @brief Route libmop's log lines to @p fn. libmop prints nothing otherwise.
 * @param fn   callback, or NULL to silence the library (the default)
 * @param user passed back to @p fn unchanged
 */
MOP_API void mop_set_log_callback(mop_log_fn fn, void *user);

/** Allocator hooks. @c alloc must return memory aligned to at least 64 bytes. */
typedef struct mop_allocator {
    void *(*alloc)(size_t size, void *user); /**< NULL result = out of memory */
    void (*free)(void *ptr, void *user);     /**< must accept NULL */
    void *user;                              /**< passed to both */
} mop_allocator;

/**
 * @brief Replace the allocator used for all libmop allocations.
 * @param a  hooks to copy, or NULL to restore the default (aligned malloc)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG if a hook is missing,
 *         ::MOP_E_STATE if handles allocated with the previous allocator
 *         are still alive.
 */
MOP_API MOP_NODISCARD mop_status mop_set_allocator(const mop_allocator *a);

/**
 * @brief Progress callback for long work (loading, pruning, training...).
 * @param done  units finished so far
 * @param total units in all (0 if unknown)
 * @param user  the pointer given with the callback, passed back unchanged
 * @return 0 to continue, non-zero to cancel (the call returns ::MOP_E_CANCELLED)
 */
typedef int (*mop_progress_fn)(uint64_t done, uint64_t total, void *user);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Model
 *  @{ */

/** A loaded, frozen model. Opaque; immutable after load; shareable by threads. */
typedef struct mop_model mop_model;

/** Options for mop_model_load(). Fill with mop_model_params_init(). */
typedef struct mop_model_params {
    uint32_t struct_size;     /**< sizeof(mop_model_params); set by the default call */
    int32_t n_threads;        /**< threads used to dequantize at load; default 0 = all cores */
    int32_t use_mmap;         /**< map F32 tensors instead of copying; default 1 */
    mop_progress_fn progress; /**< optional progress over tensors; default NULL */
    void *progress_user;      /**< passed to @c progress; default NULL */
} mop_model_params;

/**
 * @brief Fill @p p with the default model load options: each field's default is
 * on its line in ::mop_model_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_model_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_model_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_model_params_init_sized(mop_model_params *p, size_t size);

/** @brief Fill the ::mop_model_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_model_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_model_params_init(p) mop_model_params_init_sized((p), sizeof *(p))

/** @brief Default model load options, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_model_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_model_params_init(&p)")
mop_model_params mop_model_default_params(void);

/**
 * @brief Load a model.
 *
 * @p path is a GGUF file (v2 or v3; tensor types F32, F16, BF16, Q8_0, Q4_0,
 * Q4_1), a Hugging Face `.safetensors` file with `config.json` beside it, or
 * a directory holding `config.json` and one or more `*.safetensors` files.
 * Quantized and half-precision tensors are converted to F32 at load.
 *
 * @param[in]  path   file or directory
 * @param[in]  params options, or NULL for the defaults
 * @param[out] out    the model; free with mop_model_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_IO (cannot open/read),
 *         ::MOP_E_FORMAT (truncated or corrupt), ::MOP_E_UNSUPPORTED
 *         (architecture or tensor type), ::MOP_E_SHAPE (tensor shape does not
 *         match the hyper-parameters), ::MOP_E_NOMEM, ::MOP_E_CANCELLED.
 */
MOP_API MOP_NODISCARD mop_status mop_model_load(const char *path,
                                                const mop_model_params *params,
                                                mop_model **out);

/**
 * @brief Release the caller's reference on a model. Contexts and mixtures
 * keep their own reference: the memory is freed when the last one goes.
 * @param model the model, or NULL (no-op)
 */
MOP_API void mop_model_free(mop_model *model);

/** Architecture and size of a loaded model. */
typedef struct mop_model_info {
    uint32_t struct_size;     /**< set by the caller to sizeof(mop_model_info) */
    char arch[32];            /**< architecture name, e.g. "llama" */
    char name[128];           /**< model name from the file's metadata, may be empty */
    int32_t n_layer;          /**< transformer blocks */
    int32_t n_embd;           /**< hidden width d */
    int32_t n_ff;             /**< MLP inner width */
    int32_t n_head;           /**< query heads */
    int32_t n_head_kv;        /**< key/value heads (grouped-query attention) */
    int32_t head_dim;         /**< width of one head */
    int32_t n_vocab;          /**< vocabulary size */
    int32_t n_ctx_train;      /**< context length the model was trained with */
    float rope_theta;         /**< RoPE base frequency */
    float rope_scale;         /**< RoPE linear scaling factor (1 = none) */
    float norm_eps;           /**< RMSNorm epsilon */
    int32_t tied_embeddings;  /**< 1 if the LM head reuses the token embeddings */
    uint64_t n_params;        /**< parameters (tied embeddings counted once) */
    uint64_t weight_bytes;    /**< bytes the weights occupy in memory now */
    uint64_t file_bytes;      /**< size of the file(s) loaded */
    char file_type[16];       /**< "gguf" or "safetensors" */
} mop_model_info;

/**
 * @brief Describe a model.
 * @param[in]     model the model
 * @param[in,out] info  caller sets @c struct_size (at most sizeof(mop_model_info));
 *                      the fields that fit are filled on success
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG
 */
MOP_API MOP_NODISCARD mop_status mop_model_get_info(const mop_model *model,
                                                    mop_model_info *info);

/** One tensor as it was stored in the file. */
typedef struct mop_tensor_info {
    uint32_t struct_size;     /**< set by the caller to sizeof(mop_tensor_info) */
    const char *name;         /**< owned by the model */
    const char *file_type;    /**< storage type in the file: "F32", "Q4_1", ... */
    int32_t n_dims;           /**< 1..4 */
    int64_t dims[4];          /**< dims[0] = rows (outputs), last = contiguous */
} mop_tensor_info;

/** @brief Number of tensors read from the file(s).
 *  @param model the model, or NULL
 *  @return the count, 0 for NULL */
MOP_API int32_t mop_model_tensor_count(const mop_model *model);

/**
 * @brief Describe tensor @p index (0 <= index < mop_model_tensor_count()).
 * @param[in]     model the model
 * @param[in]     index tensor index, in file order
 * @param[in,out] info  caller sets @c struct_size; filled on success (the
 *                      name is owned by the model and lives as long as it)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size),
 *         ::MOP_E_RANGE (@p index out of range)
 */
MOP_API MOP_NODISCARD mop_status mop_model_tensor_get_info(const mop_model *model,
                                                           int32_t index,
                                                           mop_tensor_info *info);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Files written
 *  Every file libmop writes (mop_model_save(), mop_mixture_save() and their
 *  _v2 forms) is written atomically: a temporary file beside the target,
 *  fsynced, then renamed over it. Its mode is what fopen() gives: 0666 less
 *  the process umask (0644 under umask 022), so that, for instance, a serving
 *  daemon running as another user can read a trained mixture.
 *  ::MOP_SAVE_PRIVATE asks for 0600 (less the umask) instead, whatever the
 *  umask. A replaced file's old mode is not kept.
 *  @{ */

/** Flags for mop_model_save_v2() and mop_mixture_save_v2(). */
enum {
    MOP_SAVE_PRIVATE = 1 /**< mode 0600: only the owner may read or write the file */
};

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Tokenizer
 *  All tokenizer calls are thread-safe on a shared model.
 *  @{ */

/** Flags for mop_tokenize(). */
enum {
    MOP_TOKENIZE_ADD_BOS = 1,       /**< prepend BOS if the model asks for it */
    MOP_TOKENIZE_PARSE_SPECIAL = 2  /**< match control tokens such as "<|im_start|>" in the text */
};

/** Which special token mop_model_special_token() returns. */
typedef enum mop_special_token {
    MOP_TOKEN_BOS = 0,  /**< beginning of sequence */
    MOP_TOKEN_EOS = 1,  /**< end of sequence */
    MOP_TOKEN_EOT = 2,  /**< end of turn in chat models (e.g. "<|im_end|>"), else EOS */
    MOP_TOKEN_PAD = 3   /**< padding */
} mop_special_token;

/**
 * @brief Id of a special token.
 * @param model the model, or NULL
 * @param which a ::mop_special_token value
 * @return the token id, or -1 if the model has no such token (or @p model is
 *         NULL, or @p which is unknown)
 */
MOP_API int32_t mop_model_special_token(const mop_model *model, int32_t which);

/**
 * @brief The model's end-of-generation tokens: the ids that stop
 *        mop_generate() and mop_mixture_generate() (the sampled token is not
 *        emitted).
 *
 * Read at load: the file's EOS and end-of-turn ids (::MOP_TOKEN_EOT), the
 * end-of-message and FIM pad / repository / file-separator ids when a GGUF
 * names them (tokenizer.ggml.eom_token_id, ..fim_pad/rep/sep_token_id), and
 * the control tokens whose text marks the end of a turn or of a document:
 * "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
 * "<end_of_turn>", "<|end_of_text|>", "<EOT>", "<|repo_name|>", "<reponame>",
 * "<|file_sep|>", "<|fim_pad|>". This is the set llama.cpp stops on; for
 * SmolLM2 it is {0, 2, 4}. A model without a tokenizer has none.
 *
 * @param[in]  model  the model
 * @param[out] tokens receives the ids in ascending order; may be NULL when
 *                    @p cap is 0
 * @param[in]  cap    capacity of @p tokens
 * @param[out] n_out  number of ids in the set (also when @p cap is too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL @p model or @p n_out, NULL
 *         @p tokens with @p cap > 0), ::MOP_E_RANGE (@p cap < *@p n_out;
 *         nothing written)
 */
MOP_API MOP_NODISCARD mop_status mop_model_eog_tokens(const mop_model *model, int32_t *tokens,
                                                      size_t cap, size_t *n_out);

/**
 * @brief Whether @p token ends generation (is in mop_model_eog_tokens()).
 * @param model the model, or NULL
 * @param token a token id
 * @return 1 if it does, 0 if not (also for a NULL @p model, a model without
 *         a tokenizer, or an id outside the vocabulary)
 */
MOP_API int32_t mop_model_is_eog(const mop_model *model, int32_t token);

/**
 * @brief Convert UTF-8 text to token ids (byte-level BPE from the model file).
 * @param[in]  model  the model whose tokenizer is used
 * @param[in]  text   UTF-8 bytes (need not be NUL-terminated)
 * @param[in]  len    number of bytes in @p text
 * @param[in]  flags  ::MOP_TOKENIZE_ADD_BOS | ::MOP_TOKENIZE_PARSE_SPECIAL
 * @param[out] tokens receives up to @p cap ids; may be NULL when @p cap is 0
 * @param[in]  cap    capacity of @p tokens
 * @param[out] n_out  number of ids the text needs (also when too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, unknown flags, text not valid
 *         UTF-8), ::MOP_E_UNSUPPORTED (the model has no tokenizer),
 *         ::MOP_E_RANGE (@p cap too small; @p n_out holds the size needed),
 *         ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_tokenize(const mop_model *model, const char *text,
                                              size_t len, int32_t flags, int32_t *tokens,
                                              size_t cap, size_t *n_out);

/**
 * @brief Convert token ids back to UTF-8 text.
 * @param[in]  model    the model whose tokenizer is used
 * @param[in]  tokens   @p n_tokens ids in [0, n_vocab); may be NULL when @p n_tokens is 0
 * @param[in]  n_tokens number of ids
 * @param[in]  flags    ::MOP_TOKENIZE_PARSE_SPECIAL renders control tokens, else they are skipped
 * @param[out] buf      receives up to @p cap bytes, NUL-terminated when room
 *                      allows (@p n_out < @p cap); may be NULL when @p cap is 0
 * @param[in]  cap      capacity of @p buf in bytes
 * @param[out] n_out    number of bytes of text (without the NUL), also when too small
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, unknown flags, id out of range),
 *         ::MOP_E_UNSUPPORTED (the model has no tokenizer),
 *         ::MOP_E_RANGE (@p cap too small; @p n_out holds the size needed)
 */
MOP_API MOP_NODISCARD mop_status mop_detokenize(const mop_model *model, const int32_t *tokens,
                                                size_t n_tokens, int32_t flags, char *buf,
                                                size_t cap, size_t *n_out);

/** One chat message for mop_chat_format(). */
typedef struct mop_chat_message {
    const char *role;     /**< "system", "user" or "assistant" */
    const char *content;  /**< UTF-8, NUL-terminated */
} mop_chat_message;

/**
 * @brief Render messages with the model's chat template.
 *
 * Supports the ChatML family of templates ("<|im_start|>role\n...<|im_end|>\n"),
 * including the default system message SmolLM2's template inserts.
 * @param[in]  model      the model whose chat template (from its file) is used
 * @param[in]  messages   @p n_messages messages, each with a non-empty role and
 *                        a content; may be NULL when @p n_messages is 0
 * @param[in]  n_messages number of messages
 * @param[in]  add_assistant_prompt 1 to end with the opening of an assistant turn
 * @param[out] buf        receives up to @p cap bytes, NUL-terminated when room
 *                        allows; may be NULL when @p cap is 0
 * @param[in]  cap        capacity of @p buf in bytes
 * @param[out] n_out      number of bytes of text (without the NUL), also when too small
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, a message without role or
 *         content), ::MOP_E_UNSUPPORTED (no tokenizer, no chat template, or
 *         template not recognised), ::MOP_E_RANGE (@p cap too small; @p n_out
 *         holds the size needed)
 */
MOP_API MOP_NODISCARD mop_status mop_chat_format(const mop_model *model,
                                                 const mop_chat_message *messages,
                                                 size_t n_messages, int32_t add_assistant_prompt,
                                                 char *buf, size_t cap, size_t *n_out);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Inference context
 *  @{ */

/** Per-thread state: scratch buffers and the KV cache. Opaque. */
typedef struct mop_ctx mop_ctx;

/** Options for mop_ctx_create(). Fill with mop_ctx_params_init(). */
typedef struct mop_ctx_params {
    uint32_t struct_size;  /**< sizeof(mop_ctx_params); set by the default call */
    int32_t n_ctx;         /**< KV cache capacity in tokens; default 2048 (<= the model's) */
    int32_t n_batch;       /**< most tokens one forward call processes; default 512 */
    int32_t n_threads;     /**< compute threads; default 0 = all cores. libmop uses its own
                                pool and calls OpenBLAS single-threaded from each pool thread:
                                its first BLAS call sets openblas_set_num_threads(1), a
                                process-wide setting (see docs/DEPENDENCIES.md) */
} mop_ctx_params;

/**
 * @brief Fill @p p with the default context options: each field's default is
 * on its line in ::mop_ctx_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_ctx_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_ctx_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_ctx_params_init_sized(mop_ctx_params *p, size_t size);

/** @brief Fill the ::mop_ctx_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_ctx_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_ctx_params_init(p) mop_ctx_params_init_sized((p), sizeof *(p))

/** @brief Default context options, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_ctx_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_ctx_params_init(&p)")
mop_ctx_params mop_ctx_default_params(void);

/**
 * @brief Create a context on @p model. Takes a reference on the model.
 *
 * All buffers (KV cache, activations, logits of one row per batch token) are
 * allocated here; n_batch larger than n_ctx is lowered to n_ctx.
 * @param[in]  model  the model (its reference count is raised)
 * @param[in]  params options (copied), or NULL for the defaults
 * @param[out] out    the context; free with mop_ctx_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size),
 *         ::MOP_E_RANGE (n_ctx outside [1, the model's n_ctx_train], n_batch
 *         < 1, n_threads negative or too large), ::MOP_E_UNSUPPORTED (head
 *         layout the kernels do not handle), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_create(mop_model *model, const mop_ctx_params *params,
                                                mop_ctx **out);

/** @brief Free a context and drop its reference on the model.
 *  @param ctx the context, or NULL (no-op) */
MOP_API void mop_ctx_free(mop_ctx *ctx);

/** @brief Forget all cached tokens (and the logits of the last decode).
 *  @param ctx the context, or NULL (no-op) */
MOP_API void mop_ctx_reset(mop_ctx *ctx);

/** @brief Number of tokens in the KV cache.
 *  @param ctx the context, or NULL
 *  @return the position the next decoded token gets; 0 for NULL */
MOP_API int32_t mop_ctx_n_past(const mop_ctx *ctx);

/** Which logits mop_ctx_decode() keeps. */
enum {
    MOP_LOGITS_LAST = 0,  /**< only the last token's */
    MOP_LOGITS_ALL = 1    /**< one row per token of the call */
};

/**
 * @brief Run @p n tokens through the model after the cached ones.
 *
 * Tokens are processed in chunks of at most n_batch (matrix-matrix prefill);
 * a single token uses the matrix-vector decode path. Positions continue from
 * mop_ctx_n_past(). With a mixture attached (mop_ctx_set_mixture()) the
 * tokens run through it; the first call after a reset is the one its gate
 * reads. mop_ctx_get_logits(), mop_ctx_nll(), mop_ctx_perplexity() and
 * mop_generate() run with the attached mixture too.
 * @param[in,out] ctx    the context; its cache grows by @p n tokens
 * @param[in]     tokens @p n ids in [0, n_vocab)
 * @param[in]     n      number of tokens, >= 1
 * @param[in]     logits_mode ::MOP_LOGITS_LAST or ::MOP_LOGITS_ALL
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, token id out of range, n < 1,
 *         unknown @p logits_mode), ::MOP_E_RANGE (the cache would overflow
 *         n_ctx; nothing is run), ::MOP_E_NOMEM (::MOP_LOGITS_ALL wider than
 *         any call before and the larger logits buffer cannot be allocated,
 *         or, with a mixture attached, a call longer than any before)
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_decode(mop_ctx *ctx, const int32_t *tokens, int32_t n,
                                                int32_t logits_mode);

/**
 * @brief Logits of the last mop_ctx_decode() call.
 * @param[in]  ctx    the context
 * @param[out] logits borrowed pointer to @p n_rows × n_vocab floats, valid
 *                    until the next call on @p ctx
 * @param[out] n_rows rows available (1, or n of the last call)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_STATE (nothing decoded yet)
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_get_logits(const mop_ctx *ctx, const float **logits,
                                                    int32_t *n_rows);

/**
 * @brief Per-token negative log-likelihood of a token sequence, from an empty cache.
 *
 * nll[i] = -log p(tokens[i+1] | tokens[0..i]) for i in [0, n-1). The cache is
 * reset before and left holding the sequence after. n must be <= n_ctx.
 * NLL values are in nats (natural logarithm).
 * @param[in,out] ctx    the context; its cache is reset, then holds the sequence
 * @param[in]     tokens @p n ids in [0, n_vocab)
 * @param[in]     n      number of tokens, 1..n_ctx (1 gives no value and total 0)
 * @param[out]    nll    n-1 values (may be NULL)
 * @param[out]    total  sum of the n-1 values (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 1, id out of range),
 *         ::MOP_E_RANGE (n > n_ctx)
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_nll(mop_ctx *ctx, const int32_t *tokens, int32_t n,
                                             float *nll, double *total);

/**
 * @brief Perplexity of a long token sequence in non-overlapping windows.
 *
 * The sequence is cut into windows of @p window tokens (0 = n_ctx); each is
 * scored from an empty cache and the first token of each window is context
 * only. ppl = exp(sum of NLL / number of scored tokens). A trailing window
 * of a single token has nothing to score and is skipped.
 * @param[in,out] ctx      the context; its cache is used as scratch
 * @param[in]     tokens   @p n ids in [0, n_vocab)
 * @param[in]     n        number of tokens, >= 2
 * @param[in]     window   tokens per window, 2..n_ctx, or 0 for n_ctx
 * @param[in]     progress optional, called once per window with (windows
 *                         done, windows in all, @p user); non-zero cancels
 * @param[in]     user     passed to @p progress unchanged
 * @param[out]    ppl      the perplexity
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 2, id out of range),
 *         ::MOP_E_RANGE (@p window out of range), ::MOP_E_CANCELLED
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_perplexity(mop_ctx *ctx, const int32_t *tokens,
                                                    int32_t n, int32_t window,
                                                    mop_progress_fn progress, void *user,
                                                    double *ppl);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Sampling
 *  @{ */

/** Options for a sampler. Fill with mop_sampler_params_init(). */
typedef struct mop_sampler_params {
    uint32_t struct_size; /**< sizeof(mop_sampler_params); set by the default call */
    float temperature;    /**< 0 = greedy (argmax); default 0.8 */
    int32_t top_k;        /**< keep the k most likely tokens; 0 = all; default 40 */
    float top_p;          /**< nucleus: smallest set with mass >= top_p; 1 = off; default 0.95 */
    uint64_t seed;        /**< random seed; default 42 */
} mop_sampler_params;

/** A token sampler: parameters plus its random state. Opaque. */
typedef struct mop_sampler mop_sampler;

/**
 * @brief Fill @p p with the default sampler options: each field's default is
 * on its line in ::mop_sampler_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_sampler_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_sampler_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_sampler_params_init_sized(mop_sampler_params *p, size_t size);

/** @brief Fill the ::mop_sampler_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_sampler_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_sampler_params_init(p) mop_sampler_params_init_sized((p), sizeof *(p))

/** @brief Default sampler options, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_sampler_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_sampler_params_init(&p)")
mop_sampler_params mop_sampler_default_params(void);

/**
 * @brief Create a sampler.
 * @param[in]  params options (copied); required, fill with mop_sampler_params_init()
 * @param[out] out    the sampler; free with mop_sampler_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL argument, bad @c struct_size,
 *         temperature < 0, top_k < 0, top_p outside (0, 1]), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_sampler_create(const mop_sampler_params *params,
                                                    mop_sampler **out);

/** @brief Free a sampler.
 *  @param s the sampler, or NULL (no-op) */
MOP_API void mop_sampler_free(mop_sampler *s);

/**
 * @brief Draw one token from a row of logits (advances the sampler's random state).
 * @param[in,out] s       the sampler
 * @param[in]     logits  @p n_vocab unnormalised log-probabilities
 * @param[in]     n_vocab number of logits, >= 1
 * @param[out]    token   the drawn id, in [0, n_vocab)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n_vocab < 1, NaN or +inf in logits)
 */
MOP_API MOP_NODISCARD mop_status mop_sampler_sample(mop_sampler *s, const float *logits,
                                                    int32_t n_vocab, int32_t *token);

/** Called with each generated token; return non-zero to stop. */
typedef int (*mop_token_fn)(int32_t token, void *user);

/**
 * @brief Generate up to @p max_new tokens after @p prompt.
 *
 * Resets the cache, prefills the prompt, then samples until @p max_new tokens,
 * an end-of-generation token (mop_model_is_eog(); not passed to @p on_token),
 * the context end, or @p on_token returning non-zero.
 * @param[in,out] ctx      the context; its cache is reset and then holds the
 *                         prompt and the generated tokens
 * @param[in,out] sampler  draws each token (its random state advances)
 * @param[in]     prompt   @p n_prompt ids in [0, n_vocab)
 * @param[in]     n_prompt number of prompt tokens, 1..n_ctx
 * @param[in]     max_new  most tokens to generate, >= 0
 * @param[in]     on_token optional, called with each generated token and @p user
 * @param[in]     user     passed to @p on_token unchanged
 * @param[out]    n_generated tokens generated (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n_prompt < 1, max_new < 0, id
 *         out of range), ::MOP_E_RANGE (prompt longer than n_ctx)
 */
MOP_API MOP_NODISCARD mop_status mop_generate(mop_ctx *ctx, mop_sampler *sampler,
                                              const int32_t *prompt, int32_t n_prompt,
                                              int32_t max_new, mop_token_fn on_token,
                                              void *user, int32_t *n_generated);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* MOP_CORE_H */
