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
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_create(int32_t kind, int64_t round,
                                                   uint64_t client_id, double n_samples,
                                                   mop_update **out);

/** @brief Free an update. Accepts NULL. */
MOP_API void mop_update_free(mop_update *u);

/**
 * @brief Append a tensor (copied). Names are unique, 1..255 bytes of UTF-8.
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG (duplicate or bad name, NaN/Inf
 *         values, dims < 1), ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_add_tensor(mop_update *u, const char *name,
                                                       const float *data, int32_t n_dims,
                                                       const int64_t *dims);

/** A tensor of an update, borrowed from it. */
typedef struct mop_update_tensor_info {
    uint32_t struct_size; /**< set by the caller */
    const char *name;
    float *data;          /**< writable view (valid while the update lives) */
    int64_t size;         /**< number of floats */
    int32_t n_dims;
    int64_t dims[4];
} mop_update_tensor_info;

/** @brief Number of tensors. */
MOP_API int32_t mop_update_tensor_count(const mop_update *u);

/** @brief Describe tensor @p index, or look one up by @p name (index < 0). */
MOP_API MOP_NODISCARD mop_status mop_update_get_tensor(const mop_update *u, int32_t index,
                                                       const char *name,
                                                       mop_update_tensor_info *info);

/** Provenance of an update. */
typedef struct mop_update_header {
    uint32_t struct_size; /**< set by the caller */
    int32_t kind;
    int64_t round;
    uint64_t client_id;
    double n_samples;
} mop_update_header;

/** @brief Read the provenance fields. */
MOP_API MOP_NODISCARD mop_status mop_update_get_header(const mop_update *u,
                                                       mop_update_header *out);

/** @brief Set a metadata string (copied; replaces an existing key). */
MOP_API MOP_NODISCARD mop_status mop_update_set_meta(mop_update *u, const char *key,
                                                     const char *value);

/** @brief Get a metadata string (borrowed), or ::MOP_E_RANGE if absent. */
MOP_API MOP_NODISCARD mop_status mop_update_get_meta(const mop_update *u, const char *key,
                                                     const char **value);

/**
 * @brief Serialize (format in docs/FORMAT.md: magic, version, header,
 * metadata, tensor table, payload, SHA-256 over all preceding bytes).
 * @param buf NULL with cap 0 to query the size in @p n_out
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_RANGE (@p cap too small)
 */
MOP_API MOP_NODISCARD mop_status mop_update_serialize(const mop_update *u, uint8_t *buf,
                                                      size_t cap, size_t *n_out);

/**
 * @brief Parse a serialized update. Rejects truncation, trailing bytes,
 * unknown versions, bad names or shapes, NaN/Inf and checksum mismatch.
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_FORMAT, ::MOP_E_UNSUPPORTED
 *         (version), ::MOP_E_CHECKSUM, ::MOP_E_NOMEM
 */
MOP_API MOP_NODISCARD mop_status mop_update_parse(const uint8_t *buf, size_t n, mop_update **out);

/**
 * @brief Build an update from a mixture's tensors: FULL values when @p base is
 * NULL, else the DELTA m − base (same shapes required). @p gate_usage (K
 * floats, may be NULL) is stored as tensor "gate.usage" for MoP-aware
 * aggregation.
 */
MOP_API MOP_NODISCARD mop_status mop_update_from_mixture(mop_mixture *m, mop_mixture *base,
                                                         int64_t round, uint64_t client_id,
                                                         double n_samples,
                                                         const float *gate_usage,
                                                         mop_update **out);

/**
 * @brief Apply an update to a mixture: FULL sets the values, DELTA adds
 * @p scale × delta. Tensors are matched by name and shape ("gate.usage" ignored).
 * @return ::MOP_OK, ::MOP_E_INVALID_ARG, ::MOP_E_SHAPE (a name or shape does not match)
 */
MOP_API MOP_NODISCARD mop_status mop_update_apply(const mop_update *u, mop_mixture *m, float scale);

/** @} */

/* ==== aggregation, merging, partitioning (section A) ==== */

/* ==== privacy and secure aggregation (section B) ==== */

#ifdef __cplusplus
}
#endif

#endif /* MOP_FED_H */
