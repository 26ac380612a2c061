/* GGUF v2/v3 reader: parses and validates the header, metadata and tensor
 * table of a mapped file. Strings and data are borrowed from the mapping. */
#ifndef MOP_GGUF_H
#define MOP_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "tensor_source.h"

typedef struct gguf_file gguf_file;

/* GGUF metadata value types (file format ids). */
enum {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12
};

/* Parse a GGUF image in memory (not copied; must outlive the gguf_file).
 * Validates everything: magic, version, counts against the size, string and
 * array lengths, tensor types, dims, offsets, alignment, data in bounds,
 * no overlapping tensors, no duplicate names. `what` names the source in
 * error messages. */
mop_status gguf_parse(const void *data, size_t size, const char *what, gguf_file **out);
void gguf_free(gguf_file *g);

uint32_t gguf_version(const gguf_file *g);

/* Metadata getters. Each returns MOP_OK with *found = 0 when the key is
 * absent (out untouched), MOP_OK with *found = 1 and the value when present,
 * MOP_E_FORMAT when present with an incompatible type. Integer getters accept
 * any integer type whose value fits; float getters accept F32/F64. */
mop_status gguf_get_int(const gguf_file *g, const char *key, int64_t *out, int *found);
mop_status gguf_get_float(const gguf_file *g, const char *key, double *out, int *found);
mop_status gguf_get_bool(const gguf_file *g, const char *key, int *out, int *found);
/* String value: not NUL-terminated in the file, so a pointer and a length. */
mop_status gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len,
                        int *found);

/* An array value. elem_type is a GGUF_TYPE_*; nested arrays are rejected at parse. */
typedef struct gguf_array {
    int32_t elem_type;
    uint64_t n;
    const void *data;               /* fixed-size elements: n * size, little-endian */
    const uint64_t *string_offsets; /* strings: offset of element i's length field from data */
} gguf_array;

mop_status gguf_get_array(const gguf_file *g, const char *key, gguf_array *out, int *found);
/* Element i of a string array. */
mop_status gguf_array_str(const gguf_array *a, uint64_t i, const char **s, size_t *len);

/* Tensors in file order, with dims in libmop's order (see tensor_source.h)
 * and data pointing into the image. Names are the file's own. */
int64_t gguf_n_tensors(const gguf_file *g);
const mop_src_tensor *gguf_tensor(const gguf_file *g, int64_t i);
const mop_src_tensor *gguf_find_tensor(const gguf_file *g, const char *name);

#endif
