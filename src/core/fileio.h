/* File helpers: read-only mappings and atomic writes. */
#ifndef MOP_FILEIO_H
#define MOP_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#include "internal.h"

/* Map a whole file read-only. An empty file maps to (NULL, 0). */
mop_status mop_map_file(const char *path, void **addr, size_t *size);
void mop_unmap_file(void *addr, size_t size);

/* Read a whole (small) file into a NUL-terminated mop_alloc'ed buffer. */
mop_status mop_read_file(const char *path, size_t max_size, char **out, size_t *size);

/* Atomic write: the callback writes to a temporary file beside `path`, which
 * is fsynced and renamed over `path` only if the callback returns MOP_OK.
 * A failed write leaves `path` untouched and no temporary behind. The file is
 * created with mode 0666 (0600 with MOP_SAVE_PRIVATE in `flags`), which the
 * kernel reduces by the umask, as fopen() does. */
typedef mop_status (*mop_write_fn)(FILE *f, void *user);
mop_status mop_write_atomic_flags(const char *path, int32_t flags, mop_write_fn write, void *user);

/* mop_write_atomic_flags() with flags 0. */
mop_status mop_write_atomic(const char *path, mop_write_fn write, void *user);

/* fwrite that reports MOP_E_IO with the path on failure. */
mop_status mop_fwrite_all(FILE *f, const void *data, size_t size);

#endif
