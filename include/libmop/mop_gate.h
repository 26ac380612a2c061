/**
 * @file mop_gate.h
 * @brief Prompt mixtures: K soft-prompt experts, a gate, training and evaluation.
 *
 * A `mop_mixture` holds K experts E_k (P soft tokens of width d each) and a
 * gate MLP θ = (W1, b1, W2, b2). For an input, the gate reads the mean of the
 * frozen model's hidden states after layer L_g and gives weights w = softmax(z/τ)
 * over the experts (the mean is over the tokens before the first target of a
 * training example, i.e. its prompt; over the whole prompt when generating).
 * At layer L_p the experts are prepended; in the default
 * ::MOP_COMBINE_ATTENTION_BIAS mode every input query's attention score toward
 * expert k's positions gets + log w_k in every layer from L_p on.
 *
 * Parameters and gradients each live in one flat float buffer (see
 * mop_mixture_data()), with named views listed by mop_mixture_tensor_get_info(),
 * so optimizers, checkpoints and federated averaging all use the same array.
 *
 * Threads: a mixture belongs to one thread at a time while it is trained
 * (mop_mixture_forward_backward(), optimizer steps, mop_mixture_pretrain_gate(),
 * mop_mixture_init_experts(), writes through mop_mixture_data()). A mixture
 * that is only read — mop_mixture_evaluate(), mop_mixture_gate(),
 * mop_mixture_generate(), mop_mixture_prepare(), mop_ctx_set_mixture() and
 * decoding through a context it is attached to, mop_decoder — may be used by
 * any number of contexts in any number of threads at once: a mixture holds
 * only its parameters, gradients and its prompt key/value cache; all work
 * memory is the context's (or the call's). The cache is built once under the
 * mixture's lock, by the first call that needs it (or mop_mixture_prepare()),
 * and only read afterwards; it is rebuilt when the experts change. Changing
 * the parameters while another thread reads the mixture is a data race.
 */
#ifndef MOP_GATE_H
#define MOP_GATE_H

#include "mop_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** How the gate's weights combine the experts. */
typedef enum mop_combine_mode {
    MOP_COMBINE_ATTENTION_BIAS = 0, /**< all K·P tokens prepended, + log w_k on scores (paper) */
    MOP_COMBINE_WEIGHTED_SUM = 1    /**< one P-token prompt Σ_k w_k E_k prepended */
} mop_combine_mode;

/** Where the gate's weights come from. */
typedef enum mop_gate_mode {
    MOP_GATE_LEARNED = 0, /**< the gate MLP (MoPs) */
    MOP_GATE_UNIFORM = 1, /**< w_k = 1/K, no gate parameters (baseline) */
    MOP_GATE_ORACLE = 2   /**< w = one-hot(batch->task): expert k serves task k (the ceiling
                               of perfect routing; evaluation and training only) */
} mop_gate_mode;

/** Which tokens the gate averages. */
typedef enum mop_gate_pool {
    MOP_POOL_CONTENT = 0, /**< the user turns' content only (between the chat template's user
                               header and end of turn), before the first target; all tokens
                               before the first target when the sequence has no user turn */
    MOP_POOL_PROMPT = 1   /**< every token before the first target (template included) */
} mop_gate_pool;

/** How a gate weight enters the attention scores (attention-bias mode). */
typedef enum mop_gate_bias {
    MOP_BIAS_LOG_KW = 0, /**< + log(K·w_k): a uniform gate gives bias 0, so the mixture at
                              uniform weights is exactly one K·P-token prompt */
    MOP_BIAS_LOG_W = 1   /**< + log w_k: all K·P keys together weigh like P tokens */
} mop_gate_bias;

/** What the prompt rows attend to in layers [L_p, n_layer). */
typedef enum mop_expert_attention {
    MOP_EXPERTS_INDEPENDENT = 0, /**< each group only to itself, at positions -P..-1 */
    MOP_EXPERTS_JOINT = 1        /**< all rows as one causal sequence at -S..-1 */
} mop_expert_attention;

/** How experts are initialised. */
typedef enum mop_expert_init {
    MOP_INIT_VOCAB = 0,  /**< embeddings of randomly drawn vocabulary tokens */
    MOP_INIT_NORMAL = 1  /**< N(0, init_std²); mop_mixture_init_experts() replaces either
                              with real layer-L_p hidden states */
} mop_expert_init;

/** Gate activation between its two linear layers. */
typedef enum mop_gate_act {
    MOP_GATE_ACT_GELU = 0, /**< GELU (default) */
    MOP_GATE_ACT_RELU = 1  /**< ReLU */
} mop_gate_act;

/** Shape of a mixture. Fill with mop_mixture_params_init(). */
typedef struct mop_mixture_params {
    uint32_t struct_size;   /**< sizeof(mop_mixture_params); set by the default call */
    int32_t n_experts;      /**< K; default 8. K = 1 with ::MOP_GATE_UNIFORM is single prompt tuning */
    int32_t prompt_len;     /**< P tokens per expert; default 8 */
    int32_t gate_layer;     /**< L_g: gate reads hidden states after this many layers; default -1 = n_layer/3 */
    int32_t inject_layer;   /**< L_p: experts enter before this layer; default -1 = n_layer/3.
                                 Below gate_layer (e.g. 0, the input), the gate reads a
                                 prompt-free pass of layers [0, L_g) over the prompt and the
                                 prompted pass starts again from the embeddings (L_p more
                                 layers of prefill; none when L_p = 0) */
    int32_t gate_hidden;    /**< gate MLP width h; default 64 */
    int32_t gate_act;       /**< ::mop_gate_act; default ::MOP_GATE_ACT_GELU */
    float gate_temperature; /**< τ; default 1 */
    int32_t top_k;          /**< keep the k largest weights (see @c top_k_renorm); 0 = all; default 0 */
    int32_t combine;        /**< ::mop_combine_mode; default ::MOP_COMBINE_ATTENTION_BIAS */
    int32_t gate_mode;      /**< ::mop_gate_mode; default ::MOP_GATE_LEARNED */
    int32_t init;           /**< ::mop_expert_init; default ::MOP_INIT_VOCAB */
    float init_std;         /**< std for ::MOP_INIT_NORMAL and the gate's first layer; default 0.02 */
    uint64_t seed;          /**< initialisation seed; default 1234 */
    /* since 0.2 (struct_size tells which fields a caller set) */
    int32_t gate_pool;      /**< ::mop_gate_pool; default ::MOP_POOL_CONTENT */
    int32_t gate_norm;      /**< 1: the gate reads (u − μ)/σ with the stored input statistics
                                 (mop_mixture_set_input_stats(); identity until set); default 1 */
    int32_t gate_bias;      /**< ::mop_gate_bias; default ::MOP_BIAS_LOG_KW */
    int32_t n_shared;       /**< always-on shared groups of P tokens after the K routed ones
                                 (bias 0, not gated), 0..16; default 0 */
    int32_t expert_attention; /**< ::mop_expert_attention; default ::MOP_EXPERTS_INDEPENDENT */
    int32_t top_k_renorm;   /**< 1: kept top-k weights renormalised to sum 1 (top-1 then gets no
                                 gradient from the LM loss); 0: they keep their probability;
                                 default 0 */
} mop_mixture_params;

/** A prompt mixture (experts + gate + gradients). Opaque. */
typedef struct mop_mixture mop_mixture;

/**
 * @brief Fill @p p with the default mixture shape: each field's default is
 * on its line in ::mop_mixture_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_mixture_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_mixture_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_mixture_params_init_sized(mop_mixture_params *p, size_t size);

/** @brief Fill the ::mop_mixture_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_mixture_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_mixture_params_init(p) mop_mixture_params_init_sized((p), sizeof *(p))

/** @brief Default mixture shape, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_mixture_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_mixture_params_init(&p)")
mop_mixture_params mop_mixture_default_params(void);

/**
 * @brief Create a mixture for @p model, initialised from @p params.seed.
 *
 * Takes a reference on the model. Experts initialised per @c params.init;
 * gate W1 ~ N(0, init_std²), W2 = 0, biases 0 (so the gate starts uniform).
 * Gradients start at zero.
 * @param[in]  model  the frozen model the mixture adapts (its reference count is raised)
 * @param[in]  params shape and initialisation (copied), or NULL for the defaults
 * @param[out] out    the mixture; free with mop_mixture_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_RANGE (K, P, layers or sizes
 *         out of range: 1 <= K <= 256, 1 <= P <= 512, 0 <= gate_layer,
 *         inject_layer < n_layer, 1 <= gate_hidden <= 8192, τ > 0,
 *         0 <= top_k <= K; top_k must be 0 with ::MOP_GATE_UNIFORM: ::MOP_E_INVALID_ARG),
 *         ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_create(mop_model *model,
                                                    const mop_mixture_params *params,
                                                    mop_mixture **out);

/** @brief Free a mixture and drop its reference on the model.
 *  @param m the mixture, or NULL (no-op) */
MOP_API void mop_mixture_free(mop_mixture *m);

/**
 * @brief The mixture's shape (with -1 defaults resolved).
 * @param[in]     m   the mixture
 * @param[in,out] out caller sets @c struct_size (at most sizeof(mop_mixture_params));
 *                    the fields that fit are filled
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_get_params(const mop_mixture *m,
                                                        mop_mixture_params *out);

/**
 * @brief Save as a safetensors file (tensors F32, shape in JSON metadata).
 * Written atomically (temporary file, fsync, rename), mode 0666 less the
 * umask (see "Files written" in mop_core.h). Gradients are not saved.
 * @param[in] m    the mixture
 * @param[in] path file to write (replaced if it exists)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_IO, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_save(const mop_mixture *m, const char *path);

/**
 * @brief mop_mixture_save() with flags.
 * @param[in] m     the mixture
 * @param[in] path  file to write (replaced if it exists)
 * @param[in] flags 0 (as mop_mixture_save()) or ::MOP_SAVE_PRIVATE (mode 0600)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (also unknown flags), ::MOP_E_IO, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_save_v2(const mop_mixture *m, const char *path,
                                                     int32_t flags);

/**
 * @brief Load a mixture saved by mop_mixture_save() for a model of the same width.
 * @param[in]  model the model the mixture is used with (its reference count is raised)
 * @param[in]  path  a file written by mop_mixture_save()
 * @param[out] out   the mixture (gradients zero); free with mop_mixture_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_IO, ::MOP_E_FORMAT (corrupt,
 *         missing tensor or metadata, NaN/Inf values), ::MOP_E_SHAPE (d_model
 *         or layer count does not match @p model), ::MOP_E_UNSUPPORTED (a newer
 *         format version), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_load(mop_model *model, const char *path,
                                                  mop_mixture **out);

/**
 * @brief The flat parameter and gradient buffers (borrowed; valid while @p m lives).
 *
 * Writing through @p params is how optimizers and federated code change the
 * mixture; the prompt cache notices the change (see mop_mixture_prepare()).
 * @param[in]  m      the mixture
 * @param[out] params @p n floats: all trainable values, in tensor order (may be NULL)
 * @param[out] grads  @p n floats: their gradients (accumulated by training calls; may be NULL)
 * @param[out] n      number of trainable floats (= mop_mixture_n_params(); may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (@p m NULL)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_data(mop_mixture *m, float **params, float **grads,
                                                  size_t *n);

/** @brief Number of trainable floats.
 *  @param m the mixture, or NULL
 *  @return the length of the flat buffers of mop_mixture_data(); 0 for NULL */
MOP_API size_t mop_mixture_n_params(const mop_mixture *m);

/** @brief Set every gradient to zero.
 *  @param m the mixture, or NULL (no-op) */
MOP_API void mop_mixture_zero_grad(mop_mixture *m);

/** A named view into the flat buffers. */
typedef struct mop_mixture_tensor_info {
    uint32_t struct_size; /**< set by the caller */
    const char *name;     /**< "experts" (K,P,d), "gate.w1" (h,d), "gate.b1" (h), "gate.w2" (K,h), "gate.b2" (K) */
    size_t offset;        /**< first float in the flat buffers */
    size_t size;          /**< floats */
    int32_t n_dims;       /**< number of dimensions, 1..3 */
    int64_t dims[4];      /**< the shape, outermost first (entries past n_dims unused) */
} mop_mixture_tensor_info;

/** @brief Number of named tensors.
 *  @param m the mixture, or NULL
 *  @return 1 for a uniform-gate mixture, 5 with a gate; 0 for NULL */
MOP_API int32_t mop_mixture_tensor_count(const mop_mixture *m);

/**
 * @brief Describe tensor @p index.
 * @param[in]     m     the mixture
 * @param[in]     index 0 <= index < mop_mixture_tensor_count()
 * @param[in,out] info  caller sets @c struct_size; filled on success (the name is static)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size),
 *         ::MOP_E_RANGE (@p index out of range)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_tensor_get_info(const mop_mixture *m, int32_t index,
                                                             mop_mixture_tensor_info *info);

/* ------------------------------------------------------------------------ */
/** @name Batches, loss, training and evaluation
 *  @{ */

/** A batch of B token sequences padded to T. All arrays borrowed for the call. */
typedef struct mop_batch {
    uint32_t struct_size;      /**< sizeof(mop_batch) */
    int32_t n_seq;             /**< B >= 1 */
    int32_t seq_len;           /**< T >= 2, padded length */
    const int32_t *tokens;     /**< (B, T) token ids; padding ids are ignored */
    const int32_t *lengths;    /**< (B) real lengths, 1..T */
    const uint8_t *loss_mask;  /**< (B, T): 1 where token t is a target (predicted from t-1); NULL = every real token after the first */
    const int32_t *task;       /**< (B) task labels 0..K-1 for gate supervision and the
                                    oracle gate, or NULL */
    /* since 0.2 (struct_size tells whether a caller set them) */
    const float *const *states; /**< (B) NULL, or per sequence NULL or its hidden states
                                     entering layer L_p, (lengths[b], d), from
                                     mop_mixture_inject_states(): that sequence then skips
                                     layers [0, L_p) in training and evaluation. Valid for
                                     mixtures of the same L_g, L_p and gate_pool */
    const float *gate_input;    /**< (B, d) the raw gate inputs of those sequences (from the
                                     same call); required with @c states for a learned gate */
} mop_batch;

/** Loss options. Fill with mop_loss_params_init(). */
typedef struct mop_loss_params {
    uint32_t struct_size;   /**< sizeof(mop_loss_params) */
    float load_balance;     /**< weight of K·Σ_k f_k·p_k (gate usage balance); default 0 */
    float gate_supervision; /**< weight of cross-entropy between gate and batch->task (gate pre-training); default 0 */
    int32_t gate_only;      /**< 1: only the gate supervision loss, no LM forward above L_g (fast pre-training); default 0 */
    float prox_mu;          /**< FedProx: (mu/2)·||θ − θ_ref||² with mop_mixture_set_prox_reference(); default 0 */
} mop_loss_params;

/**
 * @brief Fill @p p with the default loss options (plain next-token NLL:
 * every weight 0): each field's default is on its line in ::mop_loss_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_loss_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_loss_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_loss_params_init_sized(mop_loss_params *p, size_t size);

/** @brief Fill the ::mop_loss_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_loss_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_loss_params_init(p) mop_loss_params_init_sized((p), sizeof *(p))

/** @brief Default loss options (plain next-token NLL: every weight 0), returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_loss_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_loss_params_init(&p)")
mop_loss_params mop_loss_default_params(void);

/** What one training or evaluation call measured. */
typedef struct mop_loss_result {
    uint32_t struct_size; /**< set by the caller */
    double loss;          /**< total loss that was differentiated */
    double nll_sum;       /**< Σ NLL over target tokens */
    int64_t n_targets;    /**< number of target tokens */
} mop_loss_result;

/**
 * @brief Forward and backward of one batch: gradients are ADDED to the
 * mixture's gradient buffer (call mop_mixture_zero_grad() between steps;
 * several calls accumulate). The loss is the mean NLL over the batch's target
 * tokens plus the optional terms. The base model is never changed.
 * Sequences are processed one at a time at their real length (padding never
 * enters the computation). The context's KV cache is used as scratch and
 * left reset.
 * @param[in,out] ctx    a context on the mixture's model with n_batch >= the longest
 *                       real length and >= the prompt stream (K·P rows in attention-bias
 *                       mode, P in weighted-sum mode)
 * @param[in,out] m      the mixture; its gradient buffer is added to
 * @param[in]     batch  the sequences, targets and optional task labels
 * @param[in]     loss   loss options, or NULL for mop_loss_params_init()
 * @param[in,out] result caller sets @c struct_size; filled with the loss,
 *                       Σ NLL (nats) and target count (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (bad ids, lengths, masks, task labels;
 *         load_balance / gate_supervision / gate_only with a uniform gate),
 *         ::MOP_E_RANGE (batch too long for @p ctx), ::MOP_E_STATE (prox_mu > 0
 *         without mop_mixture_set_prox_reference()), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_forward_backward(mop_ctx *ctx, mop_mixture *m,
                                                              const mop_batch *batch,
                                                              const mop_loss_params *loss,
                                                              mop_loss_result *result);

/**
 * @brief Evaluate a batch without gradients.
 *
 * Serving form: sequence b uses @p mixtures[b] (n_mixtures == B), or all use
 * @p mixtures[0] (n_mixtures == 1); n_mixtures == 0 or a NULL entry scores
 * the base model. Mixtures must share the context's model.
 * @param[in,out] ctx        a context on the mixtures' model (n_batch as for
 *                           mop_mixture_forward_backward()); its cache is used as scratch
 * @param[in]     mixtures   @p n_mixtures mixtures (entries may be NULL); not modified
 * @param[in]     n_mixtures 0, 1 or B
 * @param[in]     batch      the sequences and their targets (task labels are ignored)
 * @param[out]    nll_sum    (B) Σ NLL in nats over each sequence's targets (may be NULL)
 * @param[out]    n_targets  (B) target counts (may be NULL)
 * @param[out]    gate_w     (B, K) gate weights, K of the first mixture; every
 *                           mixture must then have K experts (may be NULL;
 *                           rows of base-model sequences are 0)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad batch, n_mixtures not 0, 1
 *         or B, a mixture on another model, mixtures with different K while
 *         @p gate_w is given), ::MOP_E_RANGE (a sequence or a prompt stream
 *         longer than n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_evaluate(mop_ctx *ctx,
                                                      const mop_mixture *const *mixtures,
                                                      int32_t n_mixtures, const mop_batch *batch,
                                                      double *nll_sum, int32_t *n_targets,
                                                      float *gate_w);

/**
 * @brief Gate weights for each sequence of a batch (runs layers [0, L_g) only).
 * @param[in,out] ctx   a context on the mixture's model; its cache is used as scratch
 * @param[in]     m     the mixture (not modified)
 * @param[in]     batch the sequences (the gate reads the tokens before each first target)
 * @param[out]    w     (B, K) weights; each row sums to 1
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad batch, mixture on another
 *         model), ::MOP_E_RANGE (a sequence longer than n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_gate(mop_ctx *ctx, const mop_mixture *m,
                                                  const mop_batch *batch, float *w);

/**
 * @brief Generate with a mixture: gate from the prompt, then decode as
 * mop_generate() does with the experts prepended at L_p. With
 * ::MOP_COMBINE_ATTENTION_BIAS the experts' keys/values are computed once per
 * mixture and reused across calls (until the mixture's parameters change).
 * The same as mop_generate() on @p ctx with @p m attached
 * (mop_ctx_set_mixture()); @p ctx's own attachment is kept (if it was
 * another mixture, @p ctx is left reset). Safe on one mixture from several
 * threads at once, each with its own context.
 * @param[in,out] ctx      a context on the mixture's model with n_batch >= the
 *                         prompt stream; its cache is reset
 * @param[in,out] m        the mixture (its prompt cache may be built, under its lock)
 * @param[in,out] sampler  draws each token
 * @param[in]     prompt   @p n_prompt ids in [0, n_vocab)
 * @param[in]     n_prompt number of prompt tokens, 1..n_ctx
 * @param[in]     max_new  most tokens to generate, >= 0
 * @param[in]     on_token optional, called with each generated token and @p user;
 *                         non-zero stops
 * @param[in]     user     passed to @p on_token unchanged
 * @param[out]    n_generated tokens generated (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n_prompt < 1, max_new < 0, id
 *         out of range, mixture on another model), ::MOP_E_RANGE (prompt
 *         longer than n_ctx, prompt stream longer than n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_generate(mop_ctx *ctx, mop_mixture *m,
                                                      mop_sampler *sampler,
                                                      const int32_t *prompt, int32_t n_prompt,
                                                      int32_t max_new, mop_token_fn on_token,
                                                      void *user, int32_t *n_generated);

/**
 * @brief Build the mixture's prompt key/value cache now (attention-bias mode;
 * a no-op for weighted-sum mixtures, whose prompt depends on the input).
 *
 * The cache holds the experts' keys/values in layers [L_p, n_layer) and is
 * valid while the experts are byte-identical to those it was built from:
 * any change through the buffer of mop_mixture_data() (an optimizer step),
 * mop_mixture_forward_backward() or loading a new mixture makes the next
 * mop_mixture_generate() or mop_mixture_prepare() rebuild it. Evaluation
 * uses a fresh cache and otherwise computes the keys/values for the call
 * without touching the mixture, so a prepared mixture may be evaluated from
 * several threads at once (each with its own context).
 * @param[in,out] ctx a context on the mixture's model with n_batch >= K·P; its KV cache is reset
 * @param[in,out] m   the mixture whose cache is built
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, mixture on another model),
 *         ::MOP_E_RANGE (K·P > n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_prepare(mop_ctx *ctx, mop_mixture *m);

/**
 * @brief The gate's raw inputs: for each sequence, the mean of the hidden
 * states after layer L_g over the tokens the gate pools (@c gate_pool), before
 * standardization. Runs layers [0, L_g) only. Use it for the statistics pass
 * (mop_mixture_input_moments()), and to cache inputs for gate pre-training.
 * @param[in,out] ctx   a context on the mixture's model; its cache is used as scratch
 * @param[in]     m     the mixture (not modified)
 * @param[in]     batch the sequences
 * @param[out]    u     (B, d) pooled inputs, d = the model's width
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad batch, mixture on another
 *         model), ::MOP_E_RANGE (a sequence longer than n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_gate_inputs(mop_ctx *ctx, const mop_mixture *m,
                                                         const mop_batch *batch, float *u);

/**
 * @brief Gate weights from cached raw inputs, as mop_mixture_gate() computes
 * them after layers [0, L_g): no model forward. Use it to score a gate on
 * inputs from mop_mixture_gate_inputs() many times (a federated server
 * checking each round's averaged gate on validation rows, for example).
 * @param[in]  m (a mixture with a learned or uniform gate; not modified)
 * @param[in]  u (n, d) raw inputs from mop_mixture_gate_inputs() (standardized
 *               here with the mixture's statistics when @c gate_norm is 1)
 * @param[in]  n rows, >= 0
 * @param[out] w (n, K) gate weights
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 0, an oracle gate, which
 *         needs labels, or a non-finite input)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_gate_from_inputs(const mop_mixture *m,
                                                              const float *u, int32_t n,
                                                              float *w);

/**
 * @brief What layers [0, L_p) give each sequence: its hidden states entering
 * layer L_p and its raw pooled gate input. They do not depend on the prompts
 * or the gate, so a training loop can compute them once per example and pass
 * them back through mop_batch.states / .gate_input every epoch (the
 * results are bit-identical to computing them again).
 * @param[in,out] ctx        a context on the mixture's model; its cache is used as scratch
 * @param[in]     m          the mixture (not modified; only L_g, L_p and gate_pool matter)
 * @param[in]     batch      the sequences (its own states/gate_input are ignored)
 * @param[out]    states     (B) buffers of (lengths[b], d) floats each
 * @param[out]    gate_input (B, d) raw pooled gate inputs (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad batch, mixture on another
 *         model), ::MOP_E_RANGE (a sequence longer than n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_inject_states(mop_ctx *ctx, const mop_mixture *m,
                                                           const mop_batch *batch,
                                                           float *const *states,
                                                           float *gate_input);

/**
 * @brief Add the moments of @p n input rows to running sums:
 * sum[i] += Σ_r u[r,i], sumsq[i] += Σ_r u[r,i]². Sums from several clients
 * merge exactly by adding them (also under secure aggregation).
 * @param[in]     u     (n, d) rows, e.g. from mop_mixture_gate_inputs()
 * @param[in]     n     rows, >= 0
 * @param[in]     d     width, >= 1
 * @param[in,out] sum   (d) running sum
 * @param[in,out] sumsq (d) running sum of squares
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 0, d < 1, a non-finite input)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_input_moments(const float *u, int32_t n, int32_t d,
                                                           double *sum, double *sumsq);

/**
 * @brief Set the gate's input standardization from moments: μ = sum/n,
 * σ = sqrt(max(sumsq/n − μ², 0) + 1e-6). The gate then reads (u − μ)/σ when
 * @c gate_norm is 1, in training, evaluation and generation alike; μ and σ are
 * saved with the mixture. Until set, μ = 0 and σ = 1.
 * @param[in,out] m     a mixture with a learned gate
 * @param[in]     n     number of rows the moments cover, > 0
 * @param[in]     sum   (d) Σ u
 * @param[in]     sumsq (d) Σ u²
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n <= 0, non-finite moments, a
 *         mixture without a learned gate)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_set_input_stats(mop_mixture *m, double n,
                                                             const double *sum,
                                                             const double *sumsq);

/**
 * @brief The gate's input standardization (borrowed views, valid while @p m
 * lives; identity until mop_mixture_set_input_stats()).
 * @param[in]  m    the mixture
 * @param[out] mean (d) μ (may be NULL)
 * @param[out] std  (d) σ (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, a mixture without a learned gate)
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_get_input_stats(const mop_mixture *m,
                                                             const float **mean,
                                                             const float **std);

/** Gate pre-training settings. Fill with mop_gate_pretrain_params_init(). */
typedef struct mop_gate_pretrain_params {
    uint32_t struct_size; /**< sizeof(mop_gate_pretrain_params) */
    float lr;             /**< AdamW learning rate (constant); default 3e-3 */
    float weight_decay;   /**< default 0 */
    int32_t batch_size;   /**< examples per step; default 32 */
    int32_t max_epochs;   /**< at most this many passes over the data; default 100 */
    int32_t patience;     /**< stop after this many epochs without a higher validation
                               accuracy; the gate kept is the epoch with the best accuracy
                               (ties: the lower validation loss); default 5 */
    uint64_t seed;        /**< shuffling seed; default 1234 */
    mop_progress_fn progress; /**< optional, called after each epoch with (epoch,
                                   max_epochs); non-zero cancels (::MOP_E_CANCELLED) */
    void *progress_user;  /**< passed to @c progress */
} mop_gate_pretrain_params;

/** What gate pre-training reached. */
typedef struct mop_gate_pretrain_result {
    uint32_t struct_size; /**< set by the caller */
    int32_t epochs;       /**< epochs run */
    int32_t best_epoch;   /**< the epoch whose gate was kept (1-based) */
    float train_accuracy; /**< share of training rows whose argmax expert is their task, best epoch */
    float val_accuracy;   /**< the same on the validation rows (training rows when none) */
    double val_loss;      /**< mean −log π[task] on the validation rows, best epoch */
} mop_gate_pretrain_result;

/**
 * @brief Fill @p p with the default gate pre-training settings: each
 * field's default is on its line in ::mop_gate_pretrain_params;
 * @c struct_size is set to @p size.
 *
 * Call it through the macro mop_gate_pretrain_params_init(&p), which passes
 * the size of the struct as the caller's header defines it (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release (0.2) to sizeof(mop_gate_pretrain_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_gate_pretrain_params_init_sized(mop_gate_pretrain_params *p, size_t size);

/** @brief Fill the ::mop_gate_pretrain_params at @p p with its defaults:
 *  mop_gate_pretrain_params_init_sized(p, sizeof *p). Returns ::MOP_OK for
 *  a non-NULL @p p (no need to check it then). */
#define mop_gate_pretrain_params_init(p) mop_gate_pretrain_params_init_sized((p), sizeof *(p))

/** @brief The 0.2.0 function of the same name, for binaries built against
 *  it (the macro above replaces it in source): fills sizeof(the 0.2.0
 *  struct) bytes.
 *  @deprecated use the macro mop_gate_pretrain_params_init(&p)
 *  @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL) */
MOP_API MOP_DEPRECATED("use the macro mop_gate_pretrain_params_init(&p)")
mop_status (mop_gate_pretrain_params_init)(mop_gate_pretrain_params *p);

/**
 * @brief Pre-train the gate on task labels: cross-entropy between π and the
 * label, AdamW on the gate's parameters only, on cached inputs (no model
 * forward). Runs epochs until the validation accuracy of the argmax expert
 * has not improved for @c patience epochs, then restores the best epoch's
 * gate. The experts are not touched; gradients are left zero.
 * @param[in,out] m        a mixture with a learned gate and K >= the number of tasks
 * @param[in]     u        (n, d) raw inputs from mop_mixture_gate_inputs() (standardized
 *                         here with the mixture's statistics when @c gate_norm is 1)
 * @param[in]     task     (n) labels in [0, K)
 * @param[in]     n        training rows, >= 1
 * @param[in]     u_val    (n_val, d) validation inputs, or NULL (then the training rows decide)
 * @param[in]     task_val (n_val) validation labels, or NULL
 * @param[in]     n_val    validation rows, >= 0
 * @param[in]     params   settings, or NULL for the defaults
 * @param[in,out] result   caller sets @c struct_size; filled (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, labels out of range, bad settings,
 *         a mixture without a learned gate), ::MOP_E_CANCELLED, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_pretrain_gate(
    mop_mixture *m, const float *u, const int32_t *task, int32_t n, const float *u_val,
    const int32_t *task_val, int32_t n_val, const mop_gate_pretrain_params *params,
    mop_gate_pretrain_result *result);

/**
 * @brief Initialise the experts from real hidden states: each prompt row
 * becomes the layer-L_p input state of a token drawn (with the mixture's
 * seed) from the sequences of @p batch. Runs layers [0, L_p) only.
 * @param[in,out] ctx   a context on the mixture's model; its cache is used as scratch
 * @param[in,out] m     the mixture whose experts are overwritten
 * @param[in]     batch sequences to draw from
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad batch, mixture on another model),
 *         ::MOP_E_RANGE (a sequence longer than n_batch), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_init_experts(mop_ctx *ctx, mop_mixture *m,
                                                          const mop_batch *batch);

/**
 * @brief Remember the current parameters as the FedProx reference θ_ref
 * (a copy; later calls overwrite it).
 * @param m the mixture
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_mixture_set_prox_reference(mop_mixture *m);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name A mixture attached to a context
 *  After mop_ctx_set_mixture(), the ordinary context calls run with the
 *  mixture: mop_ctx_decode(), mop_ctx_get_logits(), mop_ctx_nll(),
 *  mop_ctx_perplexity(), mop_generate() and sampling from those logits.
 *  The context sizes its own buffers: its KV cache holds only the input
 *  tokens (the prompt keys/values are the mixture's), so n_ctx is the
 *  sequence length, whatever K·P is.
 *
 *  The gate of a sequence reads the tokens of the first mop_ctx_decode()
 *  call after a reset (the prompt; for mop_ctx_nll() the whole sequence, as
 *  mop_mixture_evaluate() without a loss mask): layers [0, L_g) run over
 *  all of them, the gate weighs the experts, layers [L_g, L_p) follow, the
 *  experts' keys/values are prepended at L_p (+ log-weight bias) and layers
 *  [L_p, n_layer) finish; later calls reuse that gate and prefix. This is the
 *  schedule training and evaluation use. mop_generate() on such a context
 *  gives the tokens mop_mixture_generate() gives.
 *
 *  Threads: a context belongs to one thread at a time; one mixture may be
 *  attached to any number of contexts in any threads at once (see the top
 *  of this header). The context borrows the mixture: keep it alive, and its
 *  parameters unchanged, while it is attached (detach with NULL or free the
 *  context before freeing the mixture).
 *  @{ */

/**
 * @brief Attach @p m to @p ctx, or detach with NULL (the base model). The
 * context is reset (its cache emptied) in either case, also when @p m is
 * already attached. Builds nothing yet: the prompt K/V cache is built by the
 * first decode that needs it (or by mop_mixture_prepare()).
 * @param[in,out] ctx the context (grows its scratch to the prompt stream if needed)
 * @param[in]     m   the mixture (borrowed, see above), or NULL
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL @p ctx; @p m made for another
 *         model), ::MOP_E_UNSUPPORTED (an oracle mixture: it routes by task
 *         labels, which decoding has not), ::MOP_E_RANGE (the prompt stream
 *         runs more rows at once — P, or K·P with ::MOP_EXPERTS_JOINT — than
 *         n_ctx), ::MOP_E_NOMEM. On failure the previous attachment stays.
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_set_mixture(mop_ctx *ctx, const mop_mixture *m);

/** @brief The mixture attached to @p ctx.
 *  @param ctx the context, or NULL
 *  @return the mixture, or NULL (base model, or NULL @p ctx) */
MOP_API const mop_mixture *mop_ctx_get_mixture(const mop_ctx *ctx);

/**
 * @brief The gate weights of the context's current sequence (after its first
 * decode with a mixture attached).
 * @param[in]  ctx   the context
 * @param[out] w     receives K weights (after top-k); may be NULL when @p cap is 0
 * @param[in]  cap   capacity of @p w
 * @param[out] n_out K (also when @p cap is too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL), ::MOP_E_STATE (no mixture
 *         attached, or nothing decoded since the last reset), ::MOP_E_RANGE
 *         (@p cap < K)
 */
MOP_API MOP_NODISCARD mop_status mop_ctx_gate_weights(const mop_ctx *ctx, float *w, int32_t cap,
                                                      int32_t *n_out);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Batched decoding across mixtures
 *  A ::mop_decoder holds up to n_seq_max sequences, each with its own KV
 *  cache and its own mixture (or none). One mop_decoder_step() appends
 *  tokens to any subset of them: every sequence that appends one token to a
 *  non-empty cache joins one batched pass in which each linear product
 *  (q/k/v, output, MLP, LM head) runs once over all of their rows, so the
 *  frozen weights are read once per step for all of them; attention is per
 *  sequence, over its own cache and its own mixture's prompt keys/values
 *  with its own gate bias. A sequence's first call (its prompt, gated as
 *  mop_ctx_decode() gates it), and any call of several tokens, runs on its
 *  own in the same step. Sequences join (mop_decoder_add()) and leave
 *  (mop_decoder_remove()) between steps: continuous batching.
 *
 *  Results equal the one-sequence path (a context with the mixture
 *  attached) up to the rounding of multi-row products (float tolerance).
 *  Threads: a decoder belongs to one thread at a time; its compute threads
 *  are its own pool (n_threads). Mixtures are borrowed: keep each alive
 *  and unchanged while a sequence uses it.
 *  @{ */

/** Several sequences decoded together. Opaque. */
typedef struct mop_decoder mop_decoder;

/** Options for mop_decoder_create(). Fill with mop_decoder_params_init(). */
typedef struct mop_decoder_params {
    uint32_t struct_size; /**< sizeof(mop_decoder_params); set by mop_decoder_params_init() */
    int32_t n_seq_max;    /**< most sequences at once, 1..4096; default 16 */
    int32_t n_ctx;        /**< KV cache of each sequence in tokens (input only: prompt
                               keys/values are the mixture's); default 2048, <= the model's */
    int32_t n_batch;      /**< most tokens of one prefill forward call; default 512 */
    int32_t n_threads;    /**< compute threads; default 0 = all cores */
} mop_decoder_params;

/** @brief Fill the first @p size bytes of @p p with the documented defaults
 *  (@c struct_size = @p size). Call it through the macro
 *  mop_decoder_params_init(&p), which passes sizeof *p.
 *  @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, or @p size outside what
 *  this library accepts) */
MOP_API mop_status mop_decoder_params_init_sized(mop_decoder_params *p, size_t size);
/** mop_decoder_params_init_sized(p, sizeof *p). */
#define mop_decoder_params_init(p) mop_decoder_params_init_sized((p), sizeof *(p))

/**
 * @brief Create a decoder on @p model (takes a reference on it). Memory per
 * sequence (its KV cache) is allocated when it joins.
 * @param[in]  model  the model
 * @param[in]  params options (copied), or NULL for the defaults
 * @param[out] out    the decoder; free with mop_decoder_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size), ::MOP_E_RANGE
 *         (n_seq_max, n_ctx, n_batch or n_threads out of range), ::MOP_E_UNSUPPORTED,
 *         ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_decoder_create(mop_model *model,
                                                    const mop_decoder_params *params,
                                                    mop_decoder **out);

/** @brief Free a decoder and its sequences (not their mixtures).
 *  @param dec the decoder, or NULL (no-op) */
MOP_API void mop_decoder_free(mop_decoder *dec);

/**
 * @brief A new, empty sequence that decodes with @p m (NULL = the base model).
 * @param[in,out] dec the decoder
 * @param[in]     m   the mixture (borrowed), or NULL
 * @param[out]    seq the sequence's id, in [0, n_seq_max); ids of removed
 *                    sequences are reused
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL; @p m made for another model),
 *         ::MOP_E_UNSUPPORTED (an oracle mixture), ::MOP_E_STATE (n_seq_max
 *         sequences already), ::MOP_E_RANGE (the prompt stream does not fit
 *         n_ctx), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_decoder_add(mop_decoder *dec, const mop_mixture *m,
                                                 int32_t *seq);

/** @brief End sequence @p seq and free its cache; its id may be reused.
 *  @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL @p dec, @p seq not a live sequence) */
MOP_API MOP_NODISCARD mop_status mop_decoder_remove(mop_decoder *dec, int32_t seq);

/** One step's input: sequence seq[i] appends n_tokens[i] tokens. */
typedef struct mop_decoder_batch {
    uint32_t struct_size;        /**< sizeof(mop_decoder_batch) */
    int32_t n;                   /**< entries, 1..n_seq_max */
    const int32_t *seq;          /**< (n) live sequence ids, each at most once */
    const int32_t *n_tokens;     /**< (n) tokens to append, >= 1; NULL = one each */
    const int32_t *const *tokens; /**< (n) pointers to n_tokens[i] ids; NULL = use @c token */
    const int32_t *token;        /**< (n) one id per entry, when @c tokens is NULL */
} mop_decoder_batch;

/**
 * @brief Append tokens to several sequences in one step; afterwards each
 * one's next-token logits are in mop_decoder_get_logits().
 *
 * Every argument is checked before anything runs: on an error no sequence
 * has changed (except on ::MOP_E_NOMEM while a sequence's first call grows
 * its buffers: sequences before it in @p batch have advanced).
 * @param[in,out] dec   the decoder
 * @param[in]     batch the entries
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size, n out of
 *         range, an id not live or repeated, n_tokens < 1, a token id outside
 *         the vocabulary), ::MOP_E_RANGE (a sequence would overflow n_ctx),
 *         ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_decoder_step(mop_decoder *dec,
                                                  const mop_decoder_batch *batch);

/**
 * @brief Next-token logits of sequence @p seq after its last step.
 * @param[in]  dec    the decoder
 * @param[in]  seq    a live sequence
 * @param[out] logits borrowed pointer to n_vocab floats, valid until the next
 *                    step, remove or free
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, @p seq not live), ::MOP_E_STATE
 *         (nothing decoded in that sequence yet)
 */
MOP_API MOP_NODISCARD mop_status mop_decoder_get_logits(const mop_decoder *dec, int32_t seq,
                                                        const float **logits);

/** @brief Tokens in sequence @p seq's cache.
 *  @return the count; -1 if @p dec is NULL or @p seq is not live */
MOP_API int32_t mop_decoder_n_past(const mop_decoder *dec, int32_t seq);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Training data
 *  @{ */

/**
 * @brief Tokenize one instruction example with the model's chat template:
 * user turn = @p instruction, assistant turn = @p response. loss_mask marks
 * the response tokens and the closing end-of-turn token (the targets).
 * @param[in]  model       the model whose tokenizer and chat template are used
 * @param[in]  instruction UTF-8, NUL-terminated
 * @param[in]  response    UTF-8, NUL-terminated
 * @param[out] tokens      up to @p cap token ids (may be NULL when @p cap is 0)
 * @param[out] loss_mask   up to @p cap entries, 1 on targets, else 0 (may be
 *                         NULL when @p cap is 0)
 * @param[in]  cap         capacity of @p tokens and of @p loss_mask
 * @param[out] n_out       tokens needed (also when @p cap is too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_UNSUPPORTED (no chat
 *         template, or one that does not render the response verbatim and
 *         close it with the end-of-turn token), ::MOP_E_RANGE (@p cap too
 *         small), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_tokenize_example(const mop_model *model,
                                                      const char *instruction,
                                                      const char *response, int32_t *tokens,
                                                      uint8_t *loss_mask, size_t cap,
                                                      size_t *n_out);

/**
 * @brief mop_tokenize_example() with a chosen system turn.
 *
 * @p system NULL keeps the template's default system turn (SmolLM2's is ~45%
 * of a short example's tokens); "" renders an empty system turn; any other
 * text is the system message. Use the same choice when generating.
 * @param[in]  model       the model whose tokenizer and chat template are used
 * @param[in]  system      UTF-8 system text, "" or NULL (see above)
 * @param[in]  instruction UTF-8, NUL-terminated
 * @param[in]  response    UTF-8, NUL-terminated
 * @param[out] tokens      up to @p cap token ids (may be NULL when @p cap is 0)
 * @param[out] loss_mask   up to @p cap entries, 1 on targets (may be NULL when @p cap is 0)
 * @param[in]  cap         capacity of @p tokens and of @p loss_mask
 * @param[out] n_out       tokens needed (also when @p cap is too small)
 * @return as mop_tokenize_example()
 */
MOP_API MOP_NODISCARD mop_status mop_tokenize_example_v2(const mop_model *model,
                                                         const char *system,
                                                         const char *instruction,
                                                         const char *response, int32_t *tokens,
                                                         uint8_t *loss_mask, size_t cap,
                                                         size_t *n_out);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Optimizer
 *  AdamW with decoupled weight decay, global-norm clipping, linear warmup
 *  and cosine decay, over any flat float buffer.
 *  @{ */

/** AdamW and schedule. Fill with mop_adamw_params_init(). */
typedef struct mop_adamw_params {
    uint32_t struct_size; /**< sizeof(mop_adamw_params) */
    float lr;             /**< peak learning rate; default 3e-3 */
    float beta1;          /**< default 0.9 */
    float beta2;          /**< default 0.999 */
    float eps;            /**< default 1e-8 */
    float weight_decay;   /**< decoupled, applied as p -= lr·wd·p; default 0.01 */
    float clip_norm;      /**< clip gradients to this global L2 norm; 0 = off; default 1 */
    int32_t warmup_steps; /**< linear warmup from 0; default 0 */
    int32_t total_steps;  /**< cosine decay to min_lr_ratio·lr at this step; 0 = constant; default 0 */
    float min_lr_ratio;   /**< default 0.1 */
} mop_adamw_params;

/** An optimizer's state (moments, step count). Opaque. */
typedef struct mop_optimizer mop_optimizer;

/**
 * @brief Fill @p p with the default AdamW settings: each field's default is
 * on its line in ::mop_adamw_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_adamw_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_adamw_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_adamw_params_init_sized(mop_adamw_params *p, size_t size);

/** @brief Fill the ::mop_adamw_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_adamw_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_adamw_params_init(p) mop_adamw_params_init_sized((p), sizeof *(p))

/** @brief Default AdamW settings, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_adamw_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_adamw_params_init(&p)")
mop_adamw_params mop_adamw_default_params(void);

/**
 * @brief Create AdamW state for @p n_params floats (moments zero, step 0).
 * @param[in]  n_params length of the buffers mop_optimizer_step() updates, > 0
 * @param[in]  params   settings (copied); required, fill with mop_adamw_params_init()
 * @param[out] out      the optimizer; free with mop_optimizer_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n_params = 0, bad @c struct_size,
 *         lr < 0, betas outside [0,1), eps <= 0, ...), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_optimizer_create(size_t n_params,
                                                      const mop_adamw_params *params,
                                                      mop_optimizer **out);

/** @brief Free an optimizer.
 *  @param opt the optimizer, or NULL (no-op) */
MOP_API void mop_optimizer_free(mop_optimizer *opt);

/**
 * @brief One update: grads are scaled by @p grad_scale (e.g. 1/accumulation
 * steps), clipped, then params are updated in place. grads are not cleared.
 * @param[in,out] opt        the optimizer; its step count advances on success
 * @param[in,out] params     @p n values updated in place (e.g. from mop_mixture_data())
 * @param[in]     grads      @p n gradients
 * @param[in]     n          must equal the n_params given at creation
 * @param[in]     grad_scale factor applied to @p grads, finite and >= 0
 * @param[out]    lr_used    learning rate of this step (may be NULL)
 * @param[out]    grad_norm  global L2 norm of the scaled gradient before clipping (may be NULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n differs from create, bad
 *         @p grad_scale, NaN/Inf gradient: nothing is updated)
 */
MOP_API MOP_NODISCARD mop_status mop_optimizer_step(mop_optimizer *opt, float *params,
                                                    const float *grads, size_t n,
                                                    float grad_scale, float *lr_used,
                                                    float *grad_norm);

/** @brief Learning rate the schedule gives at @p step (0-based).
 *  @param opt  the optimizer, or NULL
 *  @param step step index, >= 0
 *  @return the warmup/cosine learning rate; 0 for NULL or a negative @p step */
MOP_API float mop_optimizer_lr_at(const mop_optimizer *opt, int64_t step);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* MOP_GATE_H */
