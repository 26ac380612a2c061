/* Hugging Face safetensors reader and config.json parser, split out of the
 * loader so tests and fuzzers reach them without files.
 *
 * safetensors layout: u64 little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}...},
 * then the data buffer; data_offsets [begin, end) are relative to its start. */
#ifndef MOP_SAFETENSORS_H
#define MOP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "model.h"

/* Largest header accepted (the reference implementation's limit). */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;          /* as stored in the file; owned by the st_file */
    const char *dtype;   /* static string: "F32", "I64", ... */
    int32_t ftype;       /* mop_ftype, or -1 for dtypes libmop cannot convert */
    int32_t n_dims;      /* 0 (scalar) .. ST_MAX_DIMS */
    int64_t dims[ST_MAX_DIMS];
    uint64_t begin, end; /* byte range inside the data buffer */
    const void *data;    /* start of the tensor's bytes in the image */
} st_tensor;

typedef struct st_file {
    st_tensor *tensors;  /* sorted by name, names unique */
    int64_t n_tensors;
    uint64_t header_len;
    uint64_t data_size;  /* bytes after the header */
} st_file;

/* Parse and validate a safetensors image in memory (borrowed; must outlive
 * the st_file). Checks: header length within the image and ST_MAX_HEADER,
 * valid JSON object, known dtype, shape of non-negative integers, element
 * count * dtype size == end - begin (overflow-checked), offsets within the
 * data buffer, no two non-empty tensors overlapping, no duplicate names,
 * __metadata__ a map of strings. `what` names the source in messages.
 * Returns MOP_OK, MOP_E_FORMAT, MOP_E_UNSUPPORTED (unknown dtype, too many
 * dims), MOP_E_SHAPE (byte size disagrees with shape), MOP_E_NOMEM. */
mop_status safetensors_parse(const void *data, size_t size, const char *what, st_file **out);
void safetensors_free(st_file *f);

/* Tensor by file name, or NULL. */
const st_tensor *safetensors_find(const st_file *f, const char *name);

/* Hyper-parameters from a Llama config.json text of len bytes. Returns
 * MOP_E_UNSUPPORTED (not a Llama, unsupported rope_scaling, biases, other
 * activation), MOP_E_FORMAT (invalid JSON, missing or ill-typed fields),
 * MOP_E_SHAPE (inconsistent sizes). `name` (may be NULL) receives
 * "_name_or_path" when present, truncated to name_cap. */
mop_status safetensors_parse_config(const char *json, size_t len, const char *what,
                                    mop_hparams *hp, char *name, size_t name_cap);

/* Canonical GGUF-style name of an HF Llama tensor name into buf: 1 mapped,
 * 0 not a Llama weight (ignored), -1 mapped but the layer index is not
 * below n_layer. */
int safetensors_map_name(const char *hf, int32_t n_layer, char *buf, size_t cap);

#endif
