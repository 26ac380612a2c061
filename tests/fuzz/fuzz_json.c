/* libFuzzer: the config.json parser (cJSON + libmop's field checks) on
 * arbitrary bytes. Accepted configs must have consistent hyper-parameters. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    mop_hparams hp;
    char name[128];
    long live = mop_alloc_live();
    if (safetensors_parse_config(copy, size, "fuzz", &hp, name, sizeof name) == MOP_OK) {
        if (hp.n_layer < 1 || hp.n_embd < 1 || hp.n_head < 1 || hp.n_head_kv < 1 ||
            hp.n_head % hp.n_head_kv != 0 || hp.head_dim < 2 || hp.head_dim % 2 != 0 ||
            !(hp.norm_eps > 0) || !(hp.rope_theta > 0) || strlen(name) >= sizeof name)
            abort();
    }
    if (mop_alloc_live() != live)
        abort();
    free(copy);
    return 0;
}
