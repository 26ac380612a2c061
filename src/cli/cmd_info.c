/* mop info MODEL: architecture, sizes and tensor storage types of a model. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct type_count {
    const char *type;
    int32_t count;
} type_count;

static int by_count_desc(const void *a, const void *b)
{
    const type_count *x = a, *y = b;
    if (x->count != y->count)
        return y->count - x->count;
    return strcmp(x->type, y->type);
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static int print_tensor_types(const mop_model *model)
{
    int32_t n = mop_model_tensor_count(model);
    type_count counts[32];
    int n_types = 0;
    for (int32_t i = 0; i < n; i++) {
        mop_tensor_info ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        mop_status st = mop_model_tensor_get_info(model, i, &ti);
        if (st != MOP_OK)
            return cli_fail(st, "cannot describe tensor %d", (int)i);
        int k = 0;
        while (k < n_types && strcmp(counts[k].type, ti.file_type) != 0)
            k++;
        if (k == n_types) {
            if (n_types == (int)(sizeof counts / sizeof counts[0]))
                continue; /* more storage types than any real file has */
            counts[n_types].type = ti.file_type;
            counts[n_types].count = 0;
            n_types++;
        }
        counts[k].count++;
    }
    qsort(counts, (size_t)n_types, sizeof counts[0], by_count_desc);
    printf("tensors:         %d (", (int)n);
    for (int k = 0; k < n_types; k++)
        printf("%s%s: %d", k ? ", " : "", counts[k].type, (int)counts[k].count);
    printf(")\n");
    return CLI_OK;
}

static int list_tensors(const mop_model *model)
{
    int32_t n = mop_model_tensor_count(model);
    for (int32_t i = 0; i < n; i++) {
        mop_tensor_info ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        mop_status st = mop_model_tensor_get_info(model, i, &ti);
        if (st != MOP_OK)
            return cli_fail(st, "cannot describe tensor %d", (int)i);
        printf("  %-32s %-5s [", ti.name, ti.file_type);
        for (int32_t k = 0; k < ti.n_dims; k++)
            printf("%s%" PRId64, k ? ", " : "", ti.dims[k]);
        printf("]\n");
    }
    return CLI_OK;
}

/* "end of generation: 0 <|endoftext|>, 2 <|im_end|>" (ids and their text). */
static int print_eog(const mop_model *model)
{
    int32_t ids[64];
    size_t n = 0;
    mop_status st = mop_model_eog_tokens(model, ids, 64, &n);
    if (st != MOP_OK)
        return cli_fail(st, "cannot read the end-of-generation tokens");
    printf("end of generation: ");
    if (n == 0)
        printf("(none: no tokenizer)");
    for (size_t i = 0; i < n; i++) {
        char text[128];
        size_t len = 0;
        st = mop_detokenize(model, &ids[i], 1, MOP_TOKENIZE_PARSE_SPECIAL, text, sizeof text, &len);
        printf("%s%d", i ? ", " : "", (int)ids[i]);
        if (st == MOP_OK)
            printf(" %s", text);
    }
    printf("\n");
    return CLI_OK;
}

int cli_cmd_info(int argc, char **argv)
{
    int32_t want_list = 0;
    const cli_opt opts[] = {
        {"tensors", 0, CLI_FLAG, &want_list, NULL, "also list every tensor: name, file type, shape"},
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {"info", "MODEL [--tensors]",
                           "Print a model's architecture, sizes and tensor storage types.\n"
                           "MODEL is a GGUF file, a .safetensors file with config.json beside it,\n"
                           "or a directory of safetensors files.",
                           opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;

    mop_model *model = cli_load_model(pos[0], 0);
    if (!model)
        return CLI_ERROR;
    mop_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = sizeof mi;
    mop_status st = mop_model_get_info(model, &mi);
    if (st != MOP_OK) {
        mop_model_free(model);
        return cli_fail(st, "cannot describe model '%s'", pos[0]);
    }
    printf("file:            %s (%s, %" PRIu64 " bytes, %.1f MiB)\n", pos[0], mi.file_type,
           mi.file_bytes, mib(mi.file_bytes));
    printf("architecture:    %s\n", mi.arch);
    printf("name:            %s\n", mi.name[0] ? mi.name : "(none)");
    printf("layers:          %d\n", (int)mi.n_layer);
    printf("d:               %d\n", (int)mi.n_embd);
    printf("heads:           %d\n", (int)mi.n_head);
    printf("kv heads:        %d\n", (int)mi.n_head_kv);
    printf("head_dim:        %d\n", (int)mi.head_dim);
    printf("ff:              %d\n", (int)mi.n_ff);
    printf("vocab:           %d\n", (int)mi.n_vocab);
    printf("context:         %d\n", (int)mi.n_ctx_train);
    printf("rope theta:      %g\n", (double)mi.rope_theta);
    if (mi.rope_scale != 1.0f)
        printf("rope scale:      %g\n", (double)mi.rope_scale);
    printf("norm eps:        %g\n", (double)mi.norm_eps);
    printf("tied embeddings: %s\n", mi.tied_embeddings ? "yes" : "no");
    printf("parameters:      %" PRIu64 " (%.1f M)\n", mi.n_params, (double)mi.n_params / 1e6);
    printf("weight bytes:    %" PRIu64 " (%.1f MiB in memory)\n", mi.weight_bytes,
           mib(mi.weight_bytes));
    double sparsity = 0.0;
    const char *sfmt = NULL;
    st = mop_model_sparsity(model, &sparsity, &sfmt);
    if (st != MOP_OK) {
        mop_model_free(model);
        return cli_fail(st, "cannot measure the sparsity of '%s'", pos[0]);
    }
    /* The format is that of the first packed sparse weight, else of the first
     * weight: "f32" means no block weight is pruned, whatever zeros it holds. */
    if (strcmp(sfmt, "f32") == 0)
        printf("sparsity:        dense (not pruned)\n");
    else
        printf("sparsity:        %.4f of the block linear weights (format %s)\n", sparsity,
               sfmt);
    rc = print_eog(model);
    if (rc == CLI_OK)
        rc = print_tensor_types(model);
    if (rc == CLI_OK && want_list)
        rc = list_tensors(model);
    mop_model_free(model);
    return rc;
}
