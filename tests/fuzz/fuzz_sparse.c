/* libFuzzer harness for the packed sparse weight deserializer
 * (src/sparse/sparse_serialize.c): arbitrary bytes either fail cleanly or
 * give a weight whose every op stays in bounds; a loaded weight must
 * serialise back to the same bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sparse/sparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1); /* exact size: over-reads are caught */
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    mop_weight w;
    if (sparse_weight_deserialize(&w, copy, size) == MOP_OK) {
        /* keep the products small: the fuzzer wants many inputs per second */
        if (w.rows * w.cols <= (1 << 16)) {
            float *x = calloc((size_t)(2 * w.cols), sizeof *x);
            float *y = calloc((size_t)(2 * w.rows), sizeof *y);
            float *d = malloc((size_t)(w.rows * w.cols) * sizeof *d);
            if (x && y && d) {
                for (int64_t i = 0; i < 2 * w.cols; i++)
                    x[i] = 1.0f;
                w.ops->matvec(&w, y, x, NULL);
                w.ops->matmul(&w, y, x, 2, NULL);
                w.ops->matmul_t(&w, x, y, 2, NULL);
                w.ops->to_dense(&w, d);
            }
            free(x), free(y), free(d);
        }
        size_t n = 0;
        if (sparse_weight_serialize_size(&w, &n) == MOP_OK && n == size) {
            uint8_t *out = malloc(n);
            if (out && sparse_weight_serialize(&w, out, n) == MOP_OK && memcmp(out, copy, n) != 0)
                abort(); /* a loaded weight must write back the same bytes */
            free(out);
        } else {
            abort();
        }
        w.ops->release(&w);
    }
    free(copy);
    return 0;
}
