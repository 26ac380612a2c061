/**
 * @file mop_fed.h
 * @brief Federated primitives: updates, aggregation, merging, privacy,
 *        secure aggregation and data partitioning.
 *
 * The host runs the federation (Flower, MPI, ...); libmop supplies what lies
 * between "a client finished local training" and "here is the next global
 * mixture". An update is a set of named F32 tensors (deltas or full values)
 * with a sample count, round, client id and string metadata, serialized in a
 * versioned, checksummed little-endian format (docs/FORMAT.md).
 *
 * Threads: handles belong to one thread at a time; functions without a
 * handle are thread-safe.
 */
#ifndef MOP_FED_H
#define MOP_FED_H

#include "mop_core.h"
#include "mop_gate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/** @name Updates
 *  @{ */

/** Named F32 tensors plus provenance. Opaque. */
typedef struct mop_update mop_update;

/** What an update's tensors hold. */
typedef enum mop_update_kind {
    MOP_UPDATE_DELTA = 0, /**< new − old */
    MOP_UPDATE_FULL = 1   /**< the values themselves */
} mop_update_kind;

/**
 * @brief Create an empty update.
 * @param kind       ::mop_update_kind
 * @param round      federated round (>= 0)
 * @param client_id  any id the host uses
 * @param n_samples  examples behind this update (weight in FedAvg), >= 0, finite
 * @param out        the update, with no tensor and no metadata; free with mop_update_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL @p out, unknown kind, round < 0,
 *         bad n_samples), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_create(int32_t kind, int64_t round,
                                                   uint64_t client_id, double n_samples,
                                                   mop_update **out);

/** @brief Free an update with its tensors and metadata.
 *  @param u the update, or NULL (no-op) */
MOP_API void mop_update_free(mop_update *u);

/**
 * @brief Append a tensor (copied). Names are unique, 1..255 bytes of UTF-8.
 * @param u      the update
 * @param name   the tensor's name (copied)
 * @param data   Π dims floats, all finite (copied)
 * @param n_dims number of dimensions, 1..4
 * @param dims   @p n_dims sizes, outermost first, each >= 1
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (duplicate or bad name, NaN/Inf
 *         values, dims < 1), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_add_tensor(mop_update *u, const char *name,
                                                       const float *data, int32_t n_dims,
                                                       const int64_t *dims);

/** A tensor of an update, borrowed from it. */
typedef struct mop_update_tensor_info {
    uint32_t struct_size; /**< set by the caller */
    const char *name;     /**< the tensor's name (owned by the update) */
    float *data;          /**< writable view (valid while the update lives) */
    int64_t size;         /**< number of floats */
    int32_t n_dims;       /**< number of dimensions, 1..4 */
    int64_t dims[4];      /**< the shape, outermost first (entries past n_dims unused) */
} mop_update_tensor_info;

/** @brief Number of tensors.
 *  @param u the update, or NULL
 *  @return the count ("gate.usage" included); 0 for NULL */
MOP_API int32_t mop_update_tensor_count(const mop_update *u);

/**
 * @brief Describe tensor @p index, or look one up by @p name (index < 0).
 * @param[in]     u     the update
 * @param[in]     index 0 <= index < mop_update_tensor_count(), or < 0 to use @p name
 * @param[in]     name  the name to look up when @p index < 0 (ignored otherwise)
 * @param[in,out] info  caller sets @c struct_size; filled with views borrowed
 *                      from @p u (valid while it lives)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, struct_size 0 or larger than
 *         this header's), ::MOP_E_RANGE (index out of range, no such name)
 */
MOP_API MOP_NODISCARD mop_status mop_update_get_tensor(const mop_update *u, int32_t index,
                                                       const char *name,
                                                       mop_update_tensor_info *info);

/** Provenance of an update. */
typedef struct mop_update_header {
    uint32_t struct_size; /**< set by the caller */
    int32_t kind;         /**< ::mop_update_kind */
    int64_t round;        /**< federated round */
    uint64_t client_id;   /**< the host's id of the client */
    double n_samples;     /**< examples behind the update (its FedAvg weight) */
} mop_update_header;

/**
 * @brief Read the provenance fields.
 * @param[in]     u   the update
 * @param[in,out] out caller sets @c struct_size; the fields that fit are filled
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad @c struct_size)
 */
MOP_API MOP_NODISCARD mop_status mop_update_get_header(const mop_update *u,
                                                       mop_update_header *out);

/**
 * @brief Set a metadata string (copied; replaces an existing key). Keys are
 * 1..255 bytes of UTF-8, values 0..65535, at most 4096 keys.
 * @param u     the update
 * @param key   NUL-terminated key (copied)
 * @param value NUL-terminated value (copied)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_set_meta(mop_update *u, const char *key,
                                                     const char *value);

/**
 * @brief Get a metadata string.
 * @param[in]  u     the update
 * @param[in]  key   NUL-terminated key
 * @param[out] value the value, borrowed from @p u: valid until the key is set
 *                   again or the update is freed
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL), ::MOP_E_RANGE (no such key)
 */
MOP_API MOP_NODISCARD mop_status mop_update_get_meta(const mop_update *u, const char *key,
                                                     const char **value);

/**
 * @brief Serialize (format in docs/FORMAT.md: magic, version, header,
 * metadata, tensor table, payload, SHA-256 over all preceding bytes).
 * @param[in]  u     the update
 * @param[out] buf   receives the bytes; NULL with @p cap 0 to query the size in @p n_out
 * @param[in]  cap   capacity of @p buf in bytes
 * @param[out] n_out bytes the serialized update takes (also when @p cap is too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_RANGE (@p cap too small)
 */
MOP_API MOP_NODISCARD mop_status mop_update_serialize(const mop_update *u, uint8_t *buf,
                                                      size_t cap, size_t *n_out);

/**
 * @brief Parse a serialized update. Rejects truncation, trailing bytes,
 * unknown versions, bad names or shapes, NaN/Inf and checksum mismatch.
 * @param[in]  buf @p n bytes written by mop_update_serialize() (only read during the call)
 * @param[in]  n   number of bytes, exactly the serialized size
 * @param[out] out the update; free with mop_update_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_FORMAT, ::MOP_E_UNSUPPORTED
 *         (version), ::MOP_E_CHECKSUM, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_parse(const uint8_t *buf, size_t n, mop_update **out);

/**
 * @brief Build an update from a mixture's tensors: FULL values when @p base is
 * NULL, else the DELTA m − base (same shapes required). @p gate_usage (K
 * floats, may be NULL: each routed expert's mean gate weight over the
 * client's data, as mop_mixture_gate() gives them) is stored as tensor
 * "gate.usage" for MoP-aware aggregation, with usage 1 appended for each
 * always-on shared group (@c n_shared), so the tensor has one entry per row
 * of "experts".
 * @param[in]  m          the mixture (only read)
 * @param[in]  base       the reference mixture for a DELTA, or NULL for FULL values
 * @param[in]  round      federated round, >= 0
 * @param[in]  client_id  any id the host uses
 * @param[in]  n_samples  examples behind the update, >= 0, finite
 * @param[in]  gate_usage K = n_experts floats (may be NULL)
 * @param[out] out        the update; free with mop_update_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, bad n_samples/round, gate_usage
 *         negative or NaN), ::MOP_E_SHAPE (@p base has other tensors or
 *         shapes), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_from_mixture(mop_mixture *m, mop_mixture *base,
                                                         int64_t round, uint64_t client_id,
                                                         double n_samples,
                                                         const float *gate_usage,
                                                         mop_update **out);

/**
 * @brief Apply an update to a mixture: FULL sets the values, DELTA adds
 * @p scale × delta. Tensors are matched by name and shape ("gate.usage" ignored).
 * Every tensor is checked before anything changes.
 * @param[in]     u     the update
 * @param[in,out] m     the mixture whose parameters are set or moved
 * @param[in]     scale factor on a DELTA, finite (ignored for FULL)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, @p scale not finite),
 *         ::MOP_E_SHAPE (a name or shape does not match; the mixture is unchanged)
 */
MOP_API MOP_NODISCARD mop_status mop_update_apply(const mop_update *u, mop_mixture *m, float scale);

/** @} */

/* ==== aggregation, merging, partitioning (section A) ==== */

/* ------------------------------------------------------------------------ */
/** @name Aggregation and merging
 *
 *  One ::mop_aggregator runs the server side of one federation, round after
 *  round: mop_aggregator_add() for each client update of the round, then
 *  mop_aggregator_finish() with the current global values gives the next
 *  global values and starts the next round. Server-optimizer state (FedAvgM
 *  velocity, FedAdam/FedYogi/FedAdagrad moments) is kept across rounds.
 *
 *  Semantics, for every strategy:
 *  - Clients send DELTAs (new − old). A FULL update is turned into the delta
 *    x_i − g against the `global` passed to mop_aggregator_finish().
 *  - The tensors of a round are those of the first update ever added (the
 *    tensor "gate.usage" excluded: it is read by ::MOP_AGG_MOP_AWARE and
 *    otherwise ignored); every later update must hold the same names with
 *    the same shapes (any order), and `global` must hold them too. Global
 *    tensors that no update carries are copied unchanged.
 *  - Each strategy reduces the client deltas Δ_i to one delta Δ̄; then
 *    next = g + η·Δ̄ (η = server_lr), except the server optimizers below.
 *  - Weights n_i are the updates' n_samples. Only the FedAvg family and
 *    MoP-aware use them; robust and merging rules weigh clients equally (a
 *    Byzantine client must not buy influence by claiming many samples).
 *
 *  Memory: FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad and MoP-aware keep a
 *  running weighted sum (one double per parameter), whatever the number of
 *  clients. The robust and merging rules keep a copy of every update of the
 *  round (one float per parameter per client).
 *
 *  FedProx is not a server rule: it is the client loss term
 *  ::mop_loss_params.prox_mu (see docs/FEDERATED.md).
 *  @{ */

/** Aggregation or merging rule. Δ̄ below is what the rule feeds to the step. */
typedef enum mop_agg_strategy {
    MOP_AGG_FEDAVG = 0,      /**< Δ̄ = Σ n_i Δ_i / Σ n_i (McMahan et al. 2017) */
    MOP_AGG_FEDAVGM = 1,     /**< v ← μ·v + Δ̄;  x ← x + η·v (Hsu et al. 2019) */
    MOP_AGG_FEDADAM = 2,     /**< Reddi et al. 2021, Alg. 2: m ← β1 m + (1−β1)Δ̄; v ← β2 v + (1−β2)Δ̄²; x ← x + η m/(√v + τ) */
    MOP_AGG_FEDYOGI = 3,     /**< as FedAdam with v ← v − (1−β2)·Δ̄²·sign(v − Δ̄²) */
    MOP_AGG_FEDADAGRAD = 4,  /**< as FedAdam with v ← v + Δ̄² */
    MOP_AGG_MEDIAN = 5,      /**< coordinate-wise median (mean of the two middle values for even n) */
    MOP_AGG_TRIMMED_MEAN = 6,/**< coordinate-wise mean after dropping the floor(trim_ratio·n) lowest and highest */
    MOP_AGG_KRUM = 7,        /**< the Δ_i with the least sum of squared distances to its n−f−2 nearest (Blanchard et al. 2017) */
    MOP_AGG_MULTI_KRUM = 8,  /**< mean of the m Δ_i with the best Krum scores */
    MOP_AGG_TASK_ARITHMETIC = 9, /**< Δ̄ = λ Σ Δ_i (Ilharco et al. 2023) */
    MOP_AGG_TIES = 10,       /**< trim to top ties_density by magnitude, elect sign, disjoint mean, × λ (Yadav et al. 2023) */
    MOP_AGG_DARE = 11,       /**< drop each entry with prob. dare_drop, rescale by 1/(1−p), then task arithmetic (Yu et al. 2024) */
    MOP_AGG_BREADCRUMBS = 12,/**< per tensor drop the largest crumbs_top and smallest crumbs_bottom fraction by magnitude, then task arithmetic (Davari & Belilovsky 2023) */
    MOP_AGG_MOP_AWARE = 13   /**< FedAvg where row k of "experts" (K,P,d) is weighted by n_i·usage_i[k] ("gate.usage", K floats) */
} mop_agg_strategy;

/** Aggregator settings. Fill with mop_aggregator_params_init(). */
typedef struct mop_aggregator_params {
    uint32_t struct_size;  /**< sizeof(mop_aggregator_params) */
    int32_t strategy;      /**< ::mop_agg_strategy; default ::MOP_AGG_FEDAVG */
    float server_lr;       /**< η > 0; default 1 (plain FedAvg). For FedAdam/FedYogi/FedAdagrad, whose step is ≈ η per coordinate, use a small η (Reddi et al. tune it on a grid; 1e-2 is a sound start) */
    float momentum;        /**< μ of FedAvgM, in [0, 1); default 0.9 */
    float beta1;           /**< β1 in [0, 1) of the adaptive rules; default 0.9 (Reddi et al.) */
    float beta2;           /**< β2 in [0, 1) of FedAdam/FedYogi; default 0.99 (Reddi et al.) */
    float tau;             /**< τ > 0, adaptivity; v starts at τ²; default 1e-3 (Reddi et al.) */
    float trim_ratio;      /**< fraction trimmed from EACH end, in [0, 0.5); default 0.1 */
    int32_t krum_f;        /**< assumed Byzantine clients f >= 0; Krum needs n >= 2f + 3; default 1 */
    int32_t multi_krum_m;  /**< updates averaged by Multi-Krum, 1..n; 0 = n − f; default 0 */
    float ties_density;    /**< TIES: fraction of each Δ_i kept (largest magnitudes), in (0, 1]; default 0.2 (the TIES paper's k = 20%) */
    float dare_drop;       /**< DARE: drop probability p in [0, 1); default 0.9 */
    float crumbs_top;      /**< breadcrumbs: fraction of largest magnitudes dropped per tensor; default 0.01 */
    float crumbs_bottom;   /**< breadcrumbs: fraction of smallest magnitudes dropped per tensor; default 0.09 (with crumbs_top: mergekit's density 0.9, gamma 0.01); crumbs_top + crumbs_bottom < 1 */
    float merge_lambda;    /**< λ >= 0 of the merging rules; 0 = automatic: 1/n for task arithmetic, DARE and breadcrumbs (their sum becomes a mean), 1 for TIES (already a mean); default 0 */
    uint64_t seed;         /**< DARE masks: each update's mask is drawn from (seed, its round, its client_id), so arrival order does not matter; default 0 */
} mop_aggregator_params;

/** Server-side aggregation state. Opaque; belongs to one thread at a time. */
typedef struct mop_aggregator mop_aggregator;

/**
 * @brief Fill @p p with the default aggregator settings: each field's default is
 * on its line in ::mop_aggregator_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_aggregator_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_aggregator_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_aggregator_params_init_sized(mop_aggregator_params *p, size_t size);

/** @brief Fill the ::mop_aggregator_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_aggregator_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_aggregator_params_init(p) mop_aggregator_params_init_sized((p), sizeof *(p))

/** @brief Default aggregator settings, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_aggregator_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_aggregator_params_init(&p)")
mop_aggregator_params mop_aggregator_default_params(void);

/**
 * @brief Create an aggregator.
 * @param params settings (copied), or NULL for the defaults
 * @param out    the aggregator, at round start with empty server state; free
 *               with mop_aggregator_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (a field out of range: the message
 *         names it), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_aggregator_create(const mop_aggregator_params *params,
                                                       mop_aggregator **out);

/** @brief Free an aggregator and its state.
 *  @param agg the aggregator, or NULL (no-op) */
MOP_API void mop_aggregator_free(mop_aggregator *agg);

/**
 * @brief Add one client update to the current round. @p u is only read during
 * the call (the aggregator accumulates or copies what it needs).
 * @param agg the aggregator
 * @param u   a client's DELTA, or FULL update (turned into a delta at finish)
 * @return ::MOP_OK;
 *         ::MOP_E_INVALID_ARG (NULL argument; "gate.usage" negative for MoP-aware);
 *         ::MOP_E_SHAPE (a tensor missing, extra, or of another shape than in
 *         the first update; MoP-aware without "experts" (K,P,d) or without
 *         "gate.usage" of K floats);
 *         ::MOP_E_NOMEM. On error the round is unchanged.
 */
MOP_API MOP_NODISCARD mop_status mop_aggregator_add(mop_aggregator *agg, const mop_update *u);

/** @brief Updates added to the current round so far.
 *  @param agg the aggregator, or NULL
 *  @return the count (0 after mop_aggregator_finish()); 0 for NULL */
MOP_API int32_t mop_aggregator_count(const mop_aggregator *agg);

/**
 * @brief Close the round: reduce its updates, take the server step and return
 * the next global values.
 * @param agg        the aggregator
 * @param global     current global values, a FULL update holding every
 *                   aggregated tensor with the same shape
 * @param next_global receives a new FULL update (the caller frees it): the
 *                   tensors of @p global, aggregated ones stepped; round =
 *                   global's round + 1, client_id 0, n_samples = Σ n_i
 * @return ::MOP_OK (the aggregator is ready for the next round);
 *         ::MOP_E_INVALID_ARG (NULL argument, @p global not FULL);
 *         ::MOP_E_SHAPE (@p global lacks an aggregated tensor or its shape differs);
 *         ::MOP_E_STATE (no update in the round; FedAvg family with Σ n_i = 0;
 *         Krum/Multi-Krum with n < 2f + 3; trimmed mean leaving no value);
 *         ::MOP_E_NOMEM. On error nothing changes: the round's updates and
 *         the server state are kept, so the call may be retried.
 */
MOP_API MOP_NODISCARD mop_status mop_aggregator_finish(mop_aggregator *agg,
                                                       const mop_update *global,
                                                       mop_update **next_global);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Norm bounding before aggregation
 *
 *  A defence against a few clients that send huge updates (sign-flip ×5,
 *  noise): before any aggregation strategy, clip or reject each client
 *  delta whose L2 norm ‖Δ_i‖ (all tensors but "gate.usage", in double)
 *  exceeds a bound B, fixed (max_norm) or a multiple k of the round's median
 *  norm (median_multiple; the median of an even count is the mean of the two
 *  middle norms), or the smaller of the two when both are set:
 *  B = min(max_norm, k · median_i ‖Δ_i‖).
 *  Clip: Δ_i ← Δ_i · min(1, B/‖Δ_i‖) (as mop_update_clip(), never above B;
 *  B = 0 zeroes the update). Reject: the update is left unchanged and
 *  keep[i] = 0; the host does not aggregate it.
 *  Use: call it on the round's deltas, then mop_aggregator_add() the kept ones.
 *  Under secure aggregation the server never sees a norm: only a fixed
 *  bound in clip mode applies, each client calling it on its own update
 *  (n = 1) before masking.
 *  @{ */

/** What happens to an update above the bound. */
typedef enum mop_norm_bound_mode {
    MOP_NORM_BOUND_CLIP = 0,  /**< scale it down to norm B */
    MOP_NORM_BOUND_REJECT = 1 /**< leave it out (keep[i] = 0) */
} mop_norm_bound_mode;

/** Norm bounding settings. Fill with mop_norm_bound_params_init(). At least
 *  one of max_norm and median_multiple must be > 0. */
typedef struct mop_norm_bound_params {
    uint32_t struct_size;  /**< sizeof(mop_norm_bound_params) */
    int32_t mode;          /**< ::mop_norm_bound_mode; default ::MOP_NORM_BOUND_CLIP */
    float max_norm;        /**< fixed bound, finite, >= 0; 0 = none; default 0 */
    float median_multiple; /**< k, finite, >= 0: bound k × the median norm of the round; 0 = none; default 0 */
} mop_norm_bound_params;

/** @brief Fill the first @p size bytes of @p p with the documented defaults
 *  (@c struct_size = @p size). Call it through the macro
 *  mop_norm_bound_params_init(&p), which passes sizeof *p.
 *  @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, or @p size outside what this
 *  library accepts) */
MOP_API mop_status mop_norm_bound_params_init_sized(mop_norm_bound_params *p, size_t size);
/** mop_norm_bound_params_init_sized(p, sizeof *p). */
#define mop_norm_bound_params_init(p) mop_norm_bound_params_init_sized((p), sizeof *(p))

/**
 * @brief Bound the L2 norms of one round's client deltas (section text above).
 * @param[in,out] updates @p n distinct DELTA updates; clipped ones are edited in place
 * @param[in]     n       number of updates, >= 1
 * @param[in]     params  settings (struct_size set); required
 * @param[out]    keep    (n) may be NULL: 1 = aggregate the update, 0 = rejected
 *                        (always 1 in clip mode)
 * @param[out]    norms   (n) may be NULL: each ‖Δ_i‖ before bounding
 * @param[out]    bound   may be NULL: B (+inf never: one bound is always set)
 * @return ::MOP_OK; ::MOP_E_INVALID_ARG (NULL, n < 1, a NULL or repeated
 *         update, a FULL update, bad struct_size, unknown mode, a negative or
 *         non-finite bound, no bound set); ::MOP_E_NOMEM. On error no update
 *         is changed.
 */
MOP_API MOP_NODISCARD mop_status mop_update_norm_bound(mop_update *const *updates, int32_t n,
                                                       const mop_norm_bound_params *params,
                                                       uint8_t *keep, float *norms,
                                                       float *bound);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Data partitioners
 *  Assign each of n examples to one of n_clients clients. Pure functions,
 *  thread-safe; the same arguments give the same split on every platform.
 *  Task labels are any int32 values (a "category" is a distinct label).
 *  @{ */

/**
 * @brief The paper's skewed split (MoPs, appendix A). For each category with
 * c examples (shuffled): s = floor(c / (ratio + N − 1)) examples go to each of
 * N − 1 small parts and the rest, c − (N − 1)·s >= ratio·s, to the big part
 * (so big = ratio·s plus a remainder smaller than ratio + N − 1); the N parts
 * are dealt to the N clients in random order, so every client gets one part
 * of every category.
 * @param task       (n) category of each example
 * @param n          number of examples, >= 1
 * @param n_clients  N, number of clients, >= 1
 * @param ratio      size of the big part over each small one, >= 1 (the paper: 15)
 * @param seed       seed of the shuffles (any value; the split depends only on it and the arguments)
 * @param client_of  (n) out: client 0..n_clients−1 of each example
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 1, n_clients < 1, bad ratio), ::MOP_E_RANGE (a category with
 *         fewer than ratio + N − 1 examples: some client would get none),
 *         ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_partition_skewed(const int32_t *task, int64_t n,
                                                      int32_t n_clients, float ratio,
                                                      uint64_t seed, int32_t *client_of);

/**
 * @brief Uniform random split: a seeded shuffle dealt round-robin, so client
 * sizes differ by at most one.
 * @param n          number of examples, >= 1
 * @param n_clients  number of clients, >= 1
 * @param seed       seed of the shuffle
 * @param client_of  (n) out: client 0..n_clients−1 of each example
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 1, n_clients < 1), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_partition_iid(int64_t n, int32_t n_clients, uint64_t seed,
                                                   int32_t *client_of);

/**
 * @brief Dirichlet split: for each category, client proportions
 * p ~ Dir(alpha, ..., alpha); the category's shuffled examples are cut at
 * round(c · cumsum(p)). Large alpha → near-equal shares; small alpha → each
 * category concentrated on few clients. A client may get no example.
 * @param task       (n) category of each example
 * @param n          number of examples, >= 1
 * @param n_clients  number of clients, >= 1
 * @param alpha      concentration, finite and > 0
 * @param seed       seed of the shuffles and of the Dirichlet draws
 * @param client_of  (n) out: client 0..n_clients−1 of each example
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, n < 1, n_clients < 1, bad
 *         alpha), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_partition_dirichlet(const int32_t *task, int64_t n,
                                                         int32_t n_clients, float alpha,
                                                         uint64_t seed, int32_t *client_of);

/** @} */


/* ==== privacy and secure aggregation (section B) ==== */

/* ------------------------------------------------------------------------ */
/** @name Differential privacy: clipping and Gaussian noise
 *
 *  Recipes (docs/PRIVACY.md): every client clips its delta to L2 norm C with
 *  mop_update_clip(). Central DP: the server averages n clipped deltas with
 *  equal weights and adds noise of std z·C/n to the average. Local DP: each
 *  client adds noise of std z·C to its own clipped delta before sending it.
 *  z is the noise multiplier given to the accountant (mop_rdp_epsilon()).
 *  @{ */

/**
 * @brief Scale all tensors of @p u (except "gate.usage") by one factor so that
 * their global L2 norm ‖u‖ = sqrt(Σ_t Σ_i u_t[i]²) is at most @p max_norm:
 * factor min(1, max_norm/‖u‖). An update already within the bound is left
 * bit-for-bit unchanged; a clipped one has norm max_norm up to float rounding
 * (never above it).
 * @param u          the update, edited in place
 * @param max_norm   C, finite and > 0
 * @param norm_before out, may be NULL: ‖u‖ before clipping (computed in double)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL @p u, @p max_norm not finite or <= 0)
 */
MOP_API MOP_NODISCARD mop_status mop_update_clip(mop_update *u, float max_norm, float *norm_before);

/**
 * @brief Add independent N(0, std²) noise to every value of every tensor of
 * @p u except "gate.usage", tensors in index order, values in memory order.
 *
 * Noise source: a ChaCha20 keystream (libsodium crypto_stream_chacha20,
 * nonce 0) read as 64-bit little-endian words, two words giving two normals
 * by the Box–Muller transform. The 256-bit key is
 * BLAKE2b-256("libmop-dp-noise-v1" ‖ seed as 8 LE bytes) for @p seed ≠ 0, so
 * the same seed and the same tensor sizes give the same noise (on every
 * platform with the same libm); for @p seed = 0 the key comes from
 * randombytes_buf() (the OS CSPRNG): use 0 for real privacy, a fixed seed
 * only for tests and reproducible experiments.
 * @param u    the update, edited in place
 * @param std  standard deviation, finite and >= 0 (0 leaves @p u unchanged)
 * @param seed 0 for OS randomness, else the seed of a reproducible stream
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL @p u, @p std negative or not
 *         finite), ::MOP_E_INTERNAL (libsodium failed to initialise), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_add_noise(mop_update *u, float std, uint64_t seed);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Rényi-DP accountant for the subsampled Gaussian mechanism
 *
 *  One step = each record (client) is included independently with
 *  probability q (Poisson sampling), the sum of included clipped
 *  contributions (L2 sensitivity C) gets N(0, (z·C)²) noise. Its RDP at order
 *  α is computed as in Mironov, Talwar & Zhang 2019, "Rényi Differential
 *  Privacy of the Sampled Gaussian Mechanism": the binomial expansion for
 *  integer α, the two-sided series with erfc terms for fractional α; q = 1
 *  gives exactly α/(2z²). T steps compose to T·RDP(α). The conversion to
 *  (ε, δ)-DP is selectable (docs/PRIVACY.md).
 *  @{ */

/** RDP → (ε, δ) conversion. */
typedef enum mop_rdp_conversion {
    /** ε = min_α T·RDP(α) + log(1/δ)/(α−1) (Mironov 2017, Prop. 3; what
     *  TF-Privacy's classic get_privacy_spent reports) */
    MOP_RDP_CONVERSION_CLASSIC = 0,
    /** ε = min_α T·RDP(α) + log((α−1)/α) − (log δ + log α)/(α−1)
     *  (Balle et al. 2020, "Hypothesis testing interpretations and Rényi DP",
     *  Thm. 21; what Opacus and dp_accounting report). Never larger. */
    MOP_RDP_CONVERSION_BALLE2020 = 1
} mop_rdp_conversion;

/** Accountant settings. Fill with mop_rdp_params_init(). */
typedef struct mop_rdp_params {
    uint32_t struct_size;  /**< sizeof(mop_rdp_params) */
    int32_t conversion;    /**< ::mop_rdp_conversion; default ::MOP_RDP_CONVERSION_CLASSIC */
    const double *orders;  /**< orders α > 1 to minimise over (copied), or NULL for the
                                defaults: 1.1, 1.2, ..., 10.9, 1.25, 1.75, 11, 12, ..., 63,
                                64, 80, 96, 128, 256, 512, 1024; default NULL */
    int32_t n_orders;      /**< entries in @p orders, 1..4096; ignored when orders is NULL; default 0 */
} mop_rdp_params;

/**
 * @brief Fill @p p with the default accountant settings: each field's default is
 * on its line in ::mop_rdp_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_rdp_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_rdp_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_rdp_params_init_sized(mop_rdp_params *p, size_t size);

/** @brief Fill the ::mop_rdp_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_rdp_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_rdp_params_init(p) mop_rdp_params_init_sized((p), sizeof *(p))

/** @brief Default accountant settings, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_rdp_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_rdp_params_init(&p)")
mop_rdp_params mop_rdp_default_params(void);

/**
 * @brief RDP of ONE step of the sampled Gaussian mechanism at order @p alpha.
 * @param noise_multiplier z = noise std / sensitivity, finite and > 0
 * @param sample_rate      q in [0, 1]
 * @param alpha            order, finite and > 1
 * @param rdp              out: RDP(α) in nats (0 when q = 0)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (an argument out of range; the message names it),
 *         ::MOP_E_INTERNAL (the fractional-order series did not converge)
 */
MOP_API MOP_NODISCARD mop_status mop_rdp_sampled_gaussian(double noise_multiplier,
                                                          double sample_rate, double alpha,
                                                          double *rdp);

/**
 * @brief ε after @p steps steps of the sampled Gaussian mechanism, with the
 * default orders and the classic conversion (TF-Privacy's numbers: z = 1.12,
 * q = 256/60000, 14063 steps, δ = 1e-5 → ε = 2.92).
 * @param noise_multiplier z = noise std / sensitivity, finite and > 0
 * @param sample_rate      q in [0, 1]
 * @param steps      T >= 0 (0 gives ε = 0)
 * @param delta      δ in (0, 1)
 * @param eps        out: ε (+inf when no order gives a finite bound)
 * @param best_order out, may be NULL: the minimising α
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_INTERNAL (a series did not converge)
 */
MOP_API MOP_NODISCARD mop_status mop_rdp_epsilon(double noise_multiplier, double sample_rate,
                                                 int64_t steps, double delta, double *eps,
                                                 double *best_order);

/** Running RDP total over heterogeneous steps (rounds with different q or z). Opaque. */
typedef struct mop_rdp_accountant mop_rdp_accountant;

/**
 * @brief Create an accountant with zero privacy spent.
 * @param params settings (copied, @c orders included), or NULL for the defaults
 * @param out    the accountant; free with mop_rdp_accountant_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (conversion unknown, n_orders out of
 *         range, an order not finite or <= 1), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_rdp_accountant_create(const mop_rdp_params *params,
                                                           mop_rdp_accountant **out);

/** @brief Free an accountant.
 *  @param acc the accountant, or NULL (no-op) */
MOP_API void mop_rdp_accountant_free(mop_rdp_accountant *acc);

/**
 * @brief Compose @p steps more steps of the sampled Gaussian mechanism.
 * @param acc              the accountant
 * @param noise_multiplier z of these steps, finite and > 0
 * @param sample_rate      q of these steps, in [0, 1]
 * @param steps            number of steps, >= 0
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (as mop_rdp_sampled_gaussian(); steps < 0),
 *         ::MOP_E_INTERNAL (a series did not converge).
 *         On error the total is unchanged.
 */
MOP_API MOP_NODISCARD mop_status mop_rdp_accountant_add(mop_rdp_accountant *acc,
                                                        double noise_multiplier,
                                                        double sample_rate, int64_t steps);

/**
 * @brief ε for @p delta of everything composed so far.
 * @param acc        the accountant
 * @param delta      δ in (0, 1)
 * @param eps        out: ε with the accountant's conversion (0 when nothing
 *                   was composed, +inf when no order gives a finite bound)
 * @param best_order out, may be NULL: the minimising α
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, δ outside (0, 1))
 */
MOP_API MOP_NODISCARD mop_status mop_rdp_accountant_epsilon(const mop_rdp_accountant *acc,
                                                            double delta, double *eps,
                                                            double *best_order);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Secure aggregation (pairwise additive masking), deprecated
 *
 *  Deprecated: use the dropout-tolerant protocol below (mop_secagg2_*),
 *  which adds self-masks and Shamir shares; this one stays until 1.0.
 *
 *  Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
 *  Machine Learning"), simplified: no secret sharing and no self-mask, but
 *  dropout recovery. Protocol for one round with n clients, indices 0..n−1:
 *  1. each client creates a ::mop_secagg_client (fresh X25519 key pair) and
 *     sends its public key (mop_secagg_client_public_key()) to the server;
 *  2. the server broadcasts all n keys; every client calls
 *     mop_secagg_client_set_peer_keys(), which derives with each peer j the
 *     round key k_ij = BLAKE2b-256("libmop-secagg-v1" ‖ X25519(sk_i, pk_j) ‖
 *     round ‖ min(i,j) ‖ max(i,j) ‖ pk_min ‖ pk_max);
 *  3. each client encodes its vector in fixed point (x clipped to
 *     [−clip_range, clip_range], round(x·scale) mod 2^ring_bits), adds
 *     +m_ij for every j > i and −m_ij for every j < i, where m_ij is the
 *     ChaCha20 keystream of k_ij read as ring elements, and sends the masked
 *     blob (mop_secagg_client_mask()); the server adds it
 *     (mop_secagg_server_add_masked());
 *  4. if some clients dropped (their blob never came), the server tells the
 *     survivors which; each survivor i sends the round keys k_ij of the
 *     dropped j (mop_secagg_client_reveal()), never its own input or secret
 *     key; the server removes the dangling masks (mop_secagg_server_add_recovery());
 *  5. mop_secagg_server_finish() decodes the exact fixed-point sum of the
 *     survivors' inputs: the masks cancel mod 2^ring_bits.
 *
 *  What the server learns: the sum of the survivors' encoded inputs, the set
 *  of survivors, and the pairwise round keys between survivors and dropped
 *  clients (useless outside this round: keys are fresh per handle and bound
 *  to the round). A single masked blob is uniformly distributed given the
 *  input as long as one pairwise key is unknown to the server.
 *  Threat model: honest-but-curious server and clients that follow the
 *  protocol; the key broadcast is trusted (an active server that substitutes
 *  public keys, or that declares a live client dropped and still uses its
 *  blob, learns that client's input: this simplified protocol has no
 *  self-masks or Shamir shares; the mop_secagg2_* protocol below has both
 *  and survives dropouts). The server handle
 *  refuses a blob from a client declared dropped and recovery for a client
 *  whose blob it holds; a client refuses to reveal keys that would leave
 *  fewer than min_survivors survivors, and masks only once.
 *
 *  Integrity: every blob ends with a 16-byte BLAKE2b checksum (transmission
 *  errors → ::MOP_E_CHECKSUM); every masked vector carries one extra ring
 *  element whose plaintext is 0, so if masks do not cancel (a client used a
 *  wrong peer key, a wrong recovery key) finish() fails with
 *  ::MOP_E_CHECKSUM instead of returning garbage (missed with probability 2^−ring_bits).
 *  Blob layouts: docs/PRIVACY.md. Pure functions on buffers: the host moves the bytes.
 *  @{ */

#define MOP_SECAGG_KEY_BYTES 32 /**< bytes of a public key and of a revealed round key */

/** Secure aggregation settings; client and server must use equal values. */
typedef struct mop_secagg_params {
    uint32_t struct_size;  /**< sizeof(mop_secagg_params) */
    int32_t n_clients;     /**< n, 2..65536; default 0 (must be set) */
    int64_t round;         /**< round number, >= 0, bound into the keys; default 0 */
    int64_t length;        /**< floats per vector, 1..2^31; default 0 (must be set) */
    int32_t ring_bits;     /**< 32 or 64: the ring Z_2^ring_bits; default 64 */
    float scale;           /**< fixed-point scale: x ↦ round(x·scale); finite, > 0; default 2^32 */
    float clip_range;      /**< inputs clipped to [−clip_range, clip_range], finite, > 0; default 256.
                                n·round(clip_range·scale) must be < 2^(ring_bits−1) so the sum
                                cannot wrap (the defaults allow any n up to 65536) */
    int32_t min_survivors; /**< t: fewest survivors whose sum may be revealed, 2..n; default 2 */
} mop_secagg_params;

/**
 * @brief Fill @p p with the default secure aggregation settings (n_clients
 * and length still to set): each field's default is on its line in ::mop_secagg_params; @c struct_size is set to @p size.
 *
 * Call it through the macro mop_secagg_params_init(&p), which passes the size
 * of the struct as the caller's header defines it: the library writes no
 * more than the caller's struct holds, so binaries built against an older
 * header keep working when the struct grows (mop_version.h).
 * @param[out] p    the struct to fill
 * @param[in]  size sizeof the caller's struct: from the size of its first
 *                  release to sizeof(mop_secagg_params)
 * @return ::MOP_OK (always, through the macro with a non-NULL @p p),
 *         ::MOP_E_INVALID_ARG (@p p NULL, @p size outside that range)
 */
MOP_API mop_status mop_secagg_params_init_sized(mop_secagg_params *p, size_t size);

/** @brief Fill the ::mop_secagg_params at @p p with its defaults, as
 *  dav1d_default_settings() does: mop_secagg_params_init_sized(p, sizeof *p).
 *  Returns ::MOP_OK for a non-NULL @p p (no need to check it then). */
#define mop_secagg_params_init(p) mop_secagg_params_init_sized((p), sizeof *(p))

/** @brief Default secure aggregation settings, returned by value.
 *  @deprecated kept for binaries built against libmop 0.2.0 and older; a
 *  struct returned by value cannot grow without breaking them. Use
 *  mop_secagg_params_init().
 *  @return the defaults documented on each field, with @c struct_size set */
MOP_API MOP_DEPRECATED("use mop_secagg_params_init(&p)")
mop_secagg_params mop_secagg_default_params(void);

/** One client's side of one round. Opaque; holds its X25519 secret key (wiped on free). */
typedef struct mop_secagg_client mop_secagg_client;
/** The server's side of one round: a running masked sum. Opaque. */
typedef struct mop_secagg_server mop_secagg_server;

/**
 * @brief Create client @p index of a round, with a fresh X25519 key pair
 * from the OS CSPRNG.
 * @param params the round's settings (copied); required
 * @param index  this client's index, 0..n_clients−1
 * @param out    the client; free with mop_secagg_client_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (a parameter out of range, index not
 *         in 0..n−1), ::MOP_E_RANGE (n·clip_range·scale does not fit the
 *         ring), ::MOP_E_NOMEM, ::MOP_E_INTERNAL (libsodium failed to initialise)
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_client_create(const mop_secagg_params *params,
                                                          int32_t index,
                                                          mop_secagg_client **out);

/** @brief Free a client, wiping its keys.
 *  @param c the client, or NULL (no-op) */
MOP_API void mop_secagg_client_free(mop_secagg_client *c);

/** @brief Copy the client's public key (::MOP_SECAGG_KEY_BYTES bytes) to @p pk.
 *  @param c  the client
 *  @param pk out: ::MOP_SECAGG_KEY_BYTES bytes
 *  @return ::MOP_OK, ::MOP_E_INVALID_ARG */
MOP_API MOP_NODISCARD mop_status mop_secagg_client_public_key(const mop_secagg_client *c,
                                                              uint8_t *pk);

/**
 * @brief Give the client every participant's public key and derive the
 * pairwise round keys. Call once.
 * @param c       the client
 * @param keys    n·::MOP_SECAGG_KEY_BYTES bytes, client j's key at j·32; slot
 *                index must hold this client's own key
 * @param n_bytes size of @p keys, 32·n_clients
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, @p n_bytes ≠ 32·n, own slot
 *         not this client's key, two equal keys, a low-order point);
 *         ::MOP_E_STATE (keys already set)
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_client_set_peer_keys(mop_secagg_client *c,
                                                                 const uint8_t *keys,
                                                                 size_t n_bytes);

/**
 * @brief Encode and mask @p x (length floats) into a blob for the server.
 * Allowed once per client: masking two inputs with the same masks would
 * reveal their difference.
 * @param c     the client
 * @param x     @p n floats, finite (clipped to ±clip_range before encoding)
 * @param n     must equal the round's length
 * @param buf   out: the blob; NULL with @p cap 0 to query the blob size in
 *              @p n_out (does not use up the single masking)
 * @param cap   capacity of @p buf in bytes
 * @param n_out bytes of the blob (also when @p cap is too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, NaN/Inf in @p x),
 *         ::MOP_E_SHAPE (@p n ≠ length), ::MOP_E_RANGE (@p cap too small),
 *         ::MOP_E_STATE (peer keys not set, or already masked), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_client_mask(mop_secagg_client *c, const float *x,
                                                        int64_t n, uint8_t *buf, size_t cap,
                                                        size_t *n_out);

/**
 * @brief As mop_secagg_client_mask() on the concatenation of all tensors of
 * @p u in index order ("gate.usage" included if present); their total size
 * must equal length.
 * @param c     the client
 * @param u     the update whose tensors are masked (only read)
 * @param buf   out: the blob; NULL with @p cap 0 to query its size
 * @param cap   capacity of @p buf in bytes
 * @param n_out bytes of the blob (also when @p cap is too small)
 * @return as mop_secagg_client_mask(), ::MOP_E_SHAPE when the total size
 *         differs from length
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_client_mask_update(mop_secagg_client *c,
                                                               const mop_update *u,
                                                               uint8_t *buf, size_t cap,
                                                               size_t *n_out);

/**
 * @brief Reveal the round keys shared with the @p dropped clients so the
 * server can remove their masks. Only after masking. May be called again
 * for clients that drop later; the union of all dropped sets must leave at
 * least min_survivors clients.
 * @param c         the client
 * @param dropped   @p n_dropped indices of dropped clients, distinct, not this
 *                  client's; may be NULL when @p n_dropped is 0
 * @param n_dropped number of entries, 0..n_clients−1
 * @param buf       out: the recovery blob; NULL with @p cap 0 to query the size in @p n_out
 * @param cap       capacity of @p buf in bytes
 * @param n_out     bytes of the blob (also when @p cap is too small)
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, an index out of range, a
 *         duplicate, this client itself), ::MOP_E_RANGE (@p cap too small),
 *         ::MOP_E_STATE (not masked yet; fewer than min_survivors would remain)
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_client_reveal(mop_secagg_client *c,
                                                          const int32_t *dropped,
                                                          int32_t n_dropped, uint8_t *buf,
                                                          size_t cap, size_t *n_out);

/**
 * @brief Create the server side of a round (the sum starts at 0).
 * @param params the round's settings (copied); must equal the clients'
 * @param out    the server; free with mop_secagg_server_free()
 * @return as mop_secagg_client_create()
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_server_create(const mop_secagg_params *params,
                                                          mop_secagg_server **out);

/** @brief Free a server.
 *  @param s the server, or NULL (no-op) */
MOP_API void mop_secagg_server_free(mop_secagg_server *s);

/**
 * @brief Add a client's masked blob to the running sum.
 * @param s    the server
 * @param blob @p n bytes from mop_secagg_client_mask() (only read during the call)
 * @param n    size of @p blob
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL), ::MOP_E_FORMAT (bad magic,
 *         truncated, trailing bytes, client index out of range),
 *         ::MOP_E_UNSUPPORTED (version), ::MOP_E_CHECKSUM,
 *         ::MOP_E_STATE (other round, n, ring or fixed-point parameters than
 *         the server; a second blob from that client; the client was
 *         declared dropped by a recovery),
 *         ::MOP_E_SHAPE (other length). On error the sum is unchanged.
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_server_add_masked(mop_secagg_server *s,
                                                              const uint8_t *blob, size_t n);

/**
 * @brief Apply a survivor's recovery blob: remove the masks it shared with
 * each dropped client it names.
 * @param s    the server
 * @param blob @p n bytes from mop_secagg_client_reveal() (only read during the call)
 * @param n    size of @p blob
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_FORMAT, ::MOP_E_UNSUPPORTED,
 *         ::MOP_E_CHECKSUM (as above); ::MOP_E_STATE (the survivor's own
 *         blob is not in the sum; a named client's blob is in the sum; a key
 *         for that pair was already applied; other round).
 *         On error the sum is unchanged.
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_server_add_recovery(mop_secagg_server *s,
                                                                const uint8_t *blob, size_t n);

/**
 * @brief Decode the sum of the included clients' inputs (exact in fixed
 * point: Σ_i round(clip(x_i)·scale) / scale, rounded once to float).
 * @param s          the server
 * @param sum        out (length floats)
 * @param n          must equal length
 * @param included   out, may be NULL: indices of the clients whose input is
 *                   in the sum, ascending (room for n_clients)
 * @param n_included out, may be NULL: their count
 * @return ::MOP_OK; ::MOP_E_INVALID_ARG; ::MOP_E_SHAPE (@p n ≠ length);
 *         ::MOP_E_STATE (fewer than min_survivors blobs; a survivor's key
 *         for a dropped client is missing: the message names the pair);
 *         ::MOP_E_CHECKSUM (the masks did not cancel: some client used
 *         wrong peer keys or a revealed key is wrong). Can be called again.
 */
MOP_API MOP_NODISCARD mop_status mop_secagg_server_finish(mop_secagg_server *s, float *sum,
                                                          int64_t n, int32_t *included,
                                                          int32_t *n_included);

/** @} */

/* ------------------------------------------------------------------------ */
/** @name Secure aggregation with dropout recovery (SecAgg)
 *
 *  Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
 *  Machine Learning", the semi-honest protocol of section 4 without its
 *  consistency-check round): self-masks plus pairwise masks, and t-of-n
 *  Shamir shares of both the self-mask seed and the pairwise-mask secret key,
 *  so the server recovers the sum when clients drop at any step, as long as
 *  t = min_survivors of them are left. Prefer it to the simplified
 *  mop_secagg_client / mop_secagg_server above (no self-mask: one client
 *  that drops after masking, if the survivors then also drop, makes the round
 *  unrecoverable; kept for compatibility, deprecated, to be removed in 1.0).
 *
 *  The host moves the bytes and drives the stages, round after round of
 *  messages: clients call mop_secagg2_client_step() with the server's last
 *  message for them and send what it returns; the server takes every client
 *  message of a stage with mop_secagg2_server_receive(), then closes the
 *  stage with mop_secagg2_server_advance() (which needs t messages) and
 *  hands each client its next message (mop_secagg2_server_message()).
 *  Stages, with U1 ⊇ U2 ⊇ U3 ⊇ U4 the clients whose message of that stage
 *  arrived:
 *  0. advertise: client u (mop_secagg2_client_step(c, NULL, 0, NULL, 0, ...))
 *     draws two X25519 key pairs (c: for encrypting shares, s: for
 *     pairwise masks) and sends both public keys. The server broadcasts the
 *     list U1 (needs |U1| >= t).
 *  1. share keys: u draws the self-mask seed b_u (32 bytes, OS CSPRNG),
 *     splits b_u and its secret key s_u into t-of-|U1| Shamir shares over
 *     GF(2^61 − 1) and sends each v ∈ U1 its two shares, encrypted with
 *     XChaCha20-Poly1305 under BLAKE2b(X25519(c_u, c_v), ...), plus a
 *     commitment BLAKE2b(b_u). The server forwards to each v ∈ U2 the
 *     ciphertexts addressed to it (needs |U2| >= t).
 *  2. masked input: u encodes x_u in fixed point (as mop_secagg_params
 *     says) and sends y_u = enc(x_u) + PRG(b_u) + Σ_{v∈U2, v>u} PRG(s_uv) −
 *     Σ_{v∈U2, v<u} PRG(s_uv) mod 2^ring_bits, s_uv =
 *     BLAKE2b(X25519(s_u, s_v), round, ...), PRG = ChaCha20. The server adds
 *     the y_u and broadcasts the list U3 (needs |U3| >= t).
 *  3. unmasking: u ∈ U3 sends, for every v ∈ U2, the share of b_v when v ∈
 *     U3, or the share of s_v when v ∉ U3 — never both for one v: a client
 *     answers one survivor list only, which must hold itself and be a subset
 *     of U2 with at least t members; anything else is refused with
 *     ::MOP_E_STATE. The server (needs |U4| >= t) reconstructs each b_v of U3
 *     and each s_v of U2 \ U3 (checking them against the commitment and the
 *     advertised public key, and the redundant shares against each other),
 *     removes PRG(b_v) and the dropped clients' pairwise masks, and decodes
 *     Σ_{u∈U3} x_u (mop_secagg2_server_result()).
 *  Clients that drop before stage 2 are not in the sum; a client that drops
 *  after sending its masked input is (its self-mask comes from the others'
 *  shares).
 *
 *  Threat model (docs/PRIVACY.md): an honest-but-curious server and up to
 *  t − 1 colluding clients learn nothing about the honest clients' inputs
 *  beyond the sum over U3. An active server that sends different survivor
 *  lists to different clients can collect both shares of one client from
 *  two groups; the paper's consistency-check round (signed U3) that stops
 *  this is not implemented, nor are signatures on the advertised keys (the
 *  key broadcast is trusted). Choose t > n/2 so that two disjoint groups of
 *  t answers cannot exist. Messages carry a BLAKE2b-128 checksum (transmission
 *  errors: ::MOP_E_CHECKSUM); shares are authenticated encryption, so a
 *  tampered share fails to decrypt (::MOP_E_CHECKSUM) at its recipient.
 *  Masked vectors carry one extra slot encoding 0: finish fails with
 *  ::MOP_E_CHECKSUM rather than return a wrong sum.
 *
 *  Cost: per client O(n) keys and shares and n + 1 PRG expansions of the
 *  vector; the server holds O(n²) shares (n·n·64 bytes) and expands
 *  |U3| + |U3|·|U2 \ U3| PRG vectors. Message layouts: docs/PRIVACY.md.
 *  @{ */

/** Stages of a round (the server's and each client's position). */
typedef enum mop_secagg2_stage {
    MOP_SECAGG2_ADVERTISE = 0, /**< clients send their public keys */
    MOP_SECAGG2_SHARE = 1,     /**< clients send encrypted shares */
    MOP_SECAGG2_MASKED = 2,    /**< clients send masked inputs */
    MOP_SECAGG2_UNMASK = 3,    /**< clients send the shares that remove the masks */
    MOP_SECAGG2_DONE = 4       /**< finished (server: result ready) */
} mop_secagg2_stage;

/** One client's side of a dropout-tolerant round. Opaque; wiped on free. */
typedef struct mop_secagg2_client mop_secagg2_client;
/** The server's side of a dropout-tolerant round. Opaque. */
typedef struct mop_secagg2_server mop_secagg2_server;

/**
 * @brief Create client @p index of a round.
 * @param params the round's settings (copied; min_survivors is the Shamir
 *               threshold t); equal on every client and the server
 * @param index  this client's index, 0..n_clients−1
 * @param out    the client; free with mop_secagg2_client_free()
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_RANGE (as
 *         mop_secagg_client_create()), ::MOP_E_NOMEM, ::MOP_E_INTERNAL
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_client_create(const mop_secagg_params *params,
                                                           int32_t index,
                                                           mop_secagg2_client **out);

/** @brief Free a client, wiping its keys, seed and shares.
 *  @param c the client, or NULL (no-op) */
MOP_API void mop_secagg2_client_free(mop_secagg2_client *c);

/**
 * @brief Take the client's next stage: read the server's message @p msg for
 * it and produce the message to send back.
 * - stage advertise: @p msg NULL, @p n 0 → public keys;
 * - stage share: the server's key list → encrypted shares;
 * - stage masked input: the server's forwarded shares, and @p x (@p n_x =
 *   length floats, finite) → the masked input;
 * - stage unmasking: the server's survivor list → the unmasking shares.
 * On error the client stays where it was (a corrupted message may be
 * retried), except that it never answers a second survivor list.
 * @param c     the client
 * @param msg   @p n bytes from mop_secagg2_server_message() (only read during the call)
 * @param n     size of @p msg
 * @param x     the input, only at the masked-input stage (else NULL)
 * @param n_x   floats in @p x (0 when NULL)
 * @param out   receives the message to send, owned by the client: valid until
 *              the next call on @p c or its free
 * @param n_out receives its size in bytes
 * @return ::MOP_OK; ::MOP_E_INVALID_ARG (NULL, NaN/Inf in @p x, a message
 *         where none is expected); ::MOP_E_SHAPE (@p n_x ≠ length);
 *         ::MOP_E_FORMAT (bad magic, truncated, trailing bytes, reserved word
 *         ≠ 0, indices out of range or not ascending, a malformed share);
 *         ::MOP_E_UNSUPPORTED (version);
 *         ::MOP_E_CHECKSUM (checksum, a share that fails to decrypt);
 *         ::MOP_E_STATE (a message of another stage, or for another client;
 *         other round or parameters; fewer than t clients
 *         listed; this client missing from a list or its keys altered; a
 *         second survivor list, or one that would reveal both shares of a
 *         client; the round is done); ::MOP_E_NOMEM.
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_client_step(mop_secagg2_client *c,
                                                         const uint8_t *msg, size_t n,
                                                         const float *x, int64_t n_x,
                                                         const uint8_t **out, size_t *n_out);

/**
 * @brief Create the server side of a round (stage advertise).
 * @param params the round's settings (copied); must equal the clients'
 * @param out    the server; free with mop_secagg2_server_free()
 * @return as mop_secagg2_client_create()
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_server_create(const mop_secagg_params *params,
                                                           mop_secagg2_server **out);

/** @brief Free a server.
 *  @param s the server, or NULL (no-op) */
MOP_API void mop_secagg2_server_free(mop_secagg2_server *s);

/**
 * @brief Take one client's message of the current stage.
 * @param s   the server
 * @param msg @p n bytes from mop_secagg2_client_step() (only read during the call)
 * @param n   size of @p msg
 * @return ::MOP_OK; ::MOP_E_INVALID_ARG (NULL); ::MOP_E_FORMAT,
 *         ::MOP_E_UNSUPPORTED, ::MOP_E_CHECKSUM (as for the client);
 *         ::MOP_E_STATE (a message of another stage, round or parameters;
 *         a second message from that client; a client that did not take
 *         part in the previous stage; shares for other clients than the
 *         stage's list; an unmasking answer that does not give exactly one
 *         share per client of U2, the right kind); ::MOP_E_SHAPE (other
 *         length); ::MOP_E_NOMEM. On error the server is unchanged.
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_server_receive(mop_secagg2_server *s,
                                                            const uint8_t *msg, size_t n);

/**
 * @brief Close the current stage: the clients that have not sent their
 * message by now have dropped. After the unmasking stage this reconstructs
 * the masks and decodes the sum.
 * @param s the server
 * @return ::MOP_OK; ::MOP_E_STATE (fewer than t = min_survivors messages in
 *         this stage: the message says how many, and the round cannot go on;
 *         the round is done); ::MOP_E_CHECKSUM (a reconstructed seed or key
 *         does not match its commitment or public key, the shares disagree,
 *         or the masks did not cancel: some client sent wrong shares);
 *         ::MOP_E_NOMEM. On error the stage stays open (more messages may
 *         still be received).
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_server_advance(mop_secagg2_server *s);

/**
 * @brief The server's message for client @p index, after advance(): the key
 * list (stage share), the shares addressed to it (stage masked input), the
 * survivor list (stage unmasking).
 * @param s     the server
 * @param index the recipient; must be in the stage's list (U1, U2, U3)
 * @param out   receives the message, owned by the server: valid until the
 *              next call on @p s that changes it (receive, advance, message) or its free
 * @param n_out receives its size in bytes
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (NULL, index out of range),
 *         ::MOP_E_STATE (no message at this stage; @p index dropped out
 *         earlier), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_server_message(mop_secagg2_server *s,
                                                            int32_t index,
                                                            const uint8_t **out,
                                                            size_t *n_out);

/**
 * @brief The decoded sum Σ_{u∈U3} round(clip(x_u)·scale)/scale, once the
 * round is done.
 * @param s          the server
 * @param sum        out (length floats)
 * @param n          must equal length
 * @param included   out, may be NULL: U3 ascending (room for n_clients)
 * @param n_included out, may be NULL: |U3|
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_SHAPE, ::MOP_E_STATE (not done)
 */
MOP_API MOP_NODISCARD mop_status mop_secagg2_server_result(const mop_secagg2_server *s,
                                                           float *sum, int64_t n,
                                                           int32_t *included,
                                                           int32_t *n_included);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* MOP_FED_H */
