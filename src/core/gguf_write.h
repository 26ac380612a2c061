/* GGUF v3 writer: metadata and tensors laid out at a 32-byte alignment.
 * Collect entries, then write them to a FILE (mop_write_atomic's callback).
 * Tensor data is borrowed until gguf_writer_write, or produced at write time
 * by an emit callback (for data serialised on the fly). */
#ifndef MOP_GGUF_WRITE_H
#define MOP_GGUF_WRITE_H

#include <stdint.h>
#include <stdio.h>

#include "internal.h"

#define GGUF_WRITE_ALIGNMENT 32

typedef struct gguf_writer gguf_writer;

/* Write exactly nbytes of obj's data to f. */
typedef mop_status (*gguf_emit_fn)(FILE *f, const void *obj, uint64_t nbytes);

mop_status gguf_writer_create(gguf_writer **out);
void gguf_writer_free(gguf_writer *w);

/* 1 when key was added already. */
int gguf_writer_has_key(const gguf_writer *w, const char *key, size_t key_len);

/* Typed metadata. Keys must be new (MOP_E_INVALID_ARG otherwise). */
mop_status gguf_writer_kv_str(gguf_writer *w, const char *key, const char *s);
mop_status gguf_writer_kv_u32(gguf_writer *w, const char *key, uint32_t v);
mop_status gguf_writer_kv_f32(gguf_writer *w, const char *key, float v);

/* Copy every metadata entry of a GGUF image (already validated by
 * gguf_parse) whose key is not added yet and for which skip(key) is 0. */
mop_status gguf_writer_copy_kvs(gguf_writer *w, const void *image, size_t size,
                                int (*skip)(const char *key, size_t len));

/* A tensor: dims in libmop order (dims[0] outermost); type a GGML type id;
 * nbytes of data (borrowed) or, when data is NULL, produced by emit(obj). */
mop_status gguf_writer_tensor(gguf_writer *w, const char *name, uint32_t type, int n_dims,
                              const int64_t *dims, const void *data, uint64_t nbytes,
                              gguf_emit_fn emit, const void *obj);

/* Header, metadata, tensor table, padding and data. */
mop_status gguf_writer_write(const gguf_writer *w, FILE *f);

#endif
