/**
 * @file mop_version.h
 * @brief libmop version numbers: the single source of the version.
 *
 * ABI policy: releases with the same major version are ABI compatible.
 * Minor versions only add symbols and grow params structs at their end
 * (callers set @c struct_size, so older callers keep working). The soname is
 * libmop.so.MOP_VERSION_MAJOR. meson reads the three numbers from this file.
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
