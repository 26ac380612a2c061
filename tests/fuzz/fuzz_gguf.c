/* libFuzzer harness for the GGUF reader: parse arbitrary bytes and, when they
 * parse, touch everything a loader would (metadata of every type, string
 * arrays, tensor lookups and the tensor bytes themselves). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const keys[] = {
    "general.architecture", "general.alignment", "general.name", "llama.block_count",
    "llama.rope.freq_base", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.add_bos_token",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy so any over-read is caught */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    gguf_file *g = NULL;
    if (gguf_parse(copy, size, "fuzz", &g) == MOP_OK) {
        volatile uint64_t sink = 0;
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            int64_t i;
            double f;
            int b, found;
            const char *s;
            size_t len;
            gguf_array a;
            if (gguf_get_int(g, keys[k], &i, &found) == MOP_OK && found)
                sink += (uint64_t)i;
            if (gguf_get_float(g, keys[k], &f, &found) == MOP_OK && found)
                sink += (uint64_t)(f != f);
            if (gguf_get_bool(g, keys[k], &b, &found) == MOP_OK && found)
                sink += (uint64_t)b;
            if (gguf_get_str(g, keys[k], &s, &len, &found) == MOP_OK && found && len)
                sink += (uint8_t)s[len - 1];
            if (gguf_get_array(g, keys[k], &a, &found) == MOP_OK && found) {
                for (uint64_t e = 0; e < a.n && e < 1000; e++)
                    if (gguf_array_str(&a, e, &s, &len) == MOP_OK && len)
                        sink += (uint8_t)s[len - 1];
            }
        }
        for (int64_t t = 0; t < gguf_n_tensors(g); t++) {
            const mop_src_tensor *ts = gguf_tensor(g, t);
            if (gguf_find_tensor(g, ts->name) != ts)
                abort();
            const uint8_t *p = ts->data;
            sink += p[0] + p[ts->nbytes - 1];
        }
        (void)sink;
        gguf_free(g);
    }
    free(copy);
    return 0;
}
