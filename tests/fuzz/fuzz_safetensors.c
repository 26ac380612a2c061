/* libFuzzer: the safetensors header parser on arbitrary bytes (no files).
 * Every input must give MOP_OK or an error status, never a crash, leak or
 * out-of-bounds read; parsed tensors must lie inside the input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy of exactly `size` bytes so ASan sees any over-read. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    long live = mop_alloc_live();
    st_file *f = NULL;
    mop_status st = safetensors_parse(copy, size, "fuzz", &f);
    if (st == MOP_OK) {
        for (int64_t i = 0; i < f->n_tensors; i++) {
            const st_tensor *t = &f->tensors[i];
            const uint8_t *p = t->data;
            if (p < copy || t->end < t->begin || (size_t)(p - copy) + (t->end - t->begin) > size)
                abort();
            if (safetensors_find(f, t->name) != t)
                abort();
            /* touch the first and last bytes */
            volatile uint8_t sink = 0;
            if (t->end > t->begin)
                sink ^= p[0] ^ p[t->end - t->begin - 1];
            (void)sink;
        }
        safetensors_free(f);
    } else if (f) {
        abort();
    }
    if (mop_alloc_live() != live)
        abort();
    free(copy);
    return 0;
}
