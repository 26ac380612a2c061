/**
 * @file mop_version.h
 * @brief libmop version numbers: the single source of the version.
 *
 * ABI policy: releases with the same major version are ABI compatible.
 * Minor versions only add symbols and grow params structs at their end
 * (callers set @c struct_size, so older callers keep working). The soname is
 * libmop.so.MOP_VERSION_MAJOR. meson reads the three numbers from this file.
 *
 * Structs with a @c struct_size, one rule for every call:
 * - A struct the library reads (every `mop_X_params`, and ::mop_batch) is
 *   accepted with a @c struct_size from the size of the struct's first
 *   release to its size in the library's header; fields past the caller's
 *   @c struct_size take their defaults. Two structs keep the shorter
 *   prefixes they accepted before this rule: ::mop_model_params (any
 *   @c struct_size that covers @c n_threads) and ::mop_adamw_params (any
 *   @c struct_size >= 4). A `mop_X_params` is filled with
 *   `mop_X_params_init(&p)`, a macro that passes `sizeof p` to
 *   `mop_X_params_init_sized()`, so the library never writes past the
 *   caller's struct; a ::mop_batch's @c struct_size is set by the caller.
 * - A struct the library fills (`*_info`, `*_result`, get_params) may have
 *   any @c struct_size from 4 (the field itself) to its size in the
 *   library's header; the library fills the fields that fit.
 * - Anything else is ::MOP_E_INVALID_ARG, the accepted range in
 *   mop_last_error().
 * The by-value `mop_X_default_params()` functions are deprecated (kept for
 * binaries built against 0.2.0 and older): a struct returned by value cannot
 * grow without breaking binaries built against the older header.
 */
#ifndef MOP_VERSION_H
#define MOP_VERSION_H

/** Major version: changes only with an incompatible ABI (the soname's number). */
#define MOP_VERSION_MAJOR 0
/** Minor version: new symbols and struct fields, ABI compatible. */
#define MOP_VERSION_MINOR 2
/** Patch version: fixes only. */
#define MOP_VERSION_PATCH 0

/** The version as one comparable integer: major*10000 + minor*100 + patch. */
#define MOP_VERSION_NUMBER \
    (MOP_VERSION_MAJOR * 10000 + MOP_VERSION_MINOR * 100 + MOP_VERSION_PATCH)

#endif
