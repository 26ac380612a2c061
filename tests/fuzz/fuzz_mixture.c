/* libFuzzer: the mixture file parser (mixture_parse, behind mop_mixture_load)
 * on arbitrary bytes, checked against a model of d_model 32 and 4 layers.
 * Every input must give MOP_OK or an error status, never a crash, leak or
 * out-of-bounds read; a parsed mixture must have a valid shape and finite
 * values. Seed corpus: any file written by mop_mixture_save() for such a
 * model (tests/test_gate.c writes one per run in /tmp). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gate/gate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1); /* exactly `size` bytes for ASan */
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    long live = mop_alloc_live();
    mop_mixture_params p;
    float *values = NULL;
    size_t n = 0;
    mop_status st = mixture_parse(copy, size, "fuzz", 32, 4, &p, &values, &n);
    if (st == MOP_OK) {
        size_t want = (size_t)p.n_experts * (size_t)p.prompt_len * 32;
        if (p.gate_mode == MOP_GATE_LEARNED)
            want += (size_t)p.gate_hidden * 33 + (size_t)p.n_experts * ((size_t)p.gate_hidden + 1);
        if (n != want || p.gate_layer > p.inject_layer || p.inject_layer >= 4)
            abort();
        for (size_t i = 0; i < n; i++)
            if (!isfinite(values[i]))
                abort();
        mop_free(values);
    } else if (values) {
        abort();
    }
    if (mop_alloc_live() != live)
        abort();
    free(copy);
    return 0;
}
