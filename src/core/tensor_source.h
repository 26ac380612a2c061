/* Tensors as file readers see them, before the model owns them, and the
 * storage types libmop can read. */
#ifndef MOP_TENSOR_SOURCE_H
#define MOP_TENSOR_SOURCE_H

#include <stdint.h>

#include "internal.h"

/* Values match GGML's type ids so GGUF readers map them 1:1. */
typedef enum mop_ftype {
    MOP_FT_F32 = 0,
    MOP_FT_F16 = 1,
    MOP_FT_Q4_0 = 2,
    MOP_FT_Q4_1 = 3,
    MOP_FT_Q8_0 = 8,
    MOP_FT_I8 = 24,  /* raw bytes: libmop stores packed sparse weights as I8 blobs */
    MOP_FT_BF16 = 30
} mop_ftype;

/* One tensor in a mapped file. dims[0] is the outermost (rows), dims[n_dims-1]
 * the contiguous one, as in PyTorch (GGUF's ne[] order is reversed on read). */
typedef struct mop_src_tensor {
    const char *name;      /* canonical GGUF-style name, e.g. "blk.3.attn_q.weight" */
    int32_t ftype;         /* mop_ftype */
    int32_t n_dims;
    int64_t dims[4];
    const void *data;      /* borrowed: points into a mapping the model keeps */
    uint64_t nbytes;       /* bytes of data, already checked against dims and ftype */
    const char *file_name; /* name as stored in the file (for messages and `mop info`) */
} mop_src_tensor;

/* Name of a storage type ("F32", "Q4_1", ...), or NULL if not supported. */
const char *mop_ftype_name(int32_t ftype);

/* Bytes needed to store n elements of ftype; 0 if ftype is unknown or n is
 * not a whole number of its blocks. Overflow-checked (0 on overflow). */
uint64_t mop_ftype_nbytes(int32_t ftype, int64_t n);

/* Elements per block (1 for F32/F16/BF16, 32 for the Q types); 0 if unknown. */
int64_t mop_ftype_block(int32_t ftype);

/* Convert n elements (a whole number of blocks) of ftype at src to F32. */
void mop_dequantize(float *dst, const void *src, int32_t ftype, int64_t n);

#endif
