/* mop prune MODEL --method M --pattern P [options] -o OUT.gguf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Seconds between progress lines when stderr is not a terminal. */
#define PRUNE_REPORT_EVERY_S 10.0

/* The library's progress callback: one unit per weight matrix (calibration
 * of a block runs before its first matrix, so the ETA includes it). */
static int prune_progress(uint64_t done, uint64_t total, void *user)
{
    cli_meter_report(user, done, total, "weights");
    return 0;
}

/* "2:4" or "unstructured:0.75" */
static int parse_pattern(const char *s, mop_prune_params *p)
{
    int n, m, used = 0;
    float r;
    if (sscanf(s, "%d:%d%n", &n, &m, &used) == 2 && s[used] == '\0') {
        p->pattern = MOP_PATTERN_NM;
        p->n = n;
        p->m = m;
        return 1;
    }
    if (sscanf(s, "unstructured:%f%n", &r, &used) == 1 && s[used] == '\0') {
        p->pattern = MOP_PATTERN_UNSTRUCTURED;
        p->ratio = r;
        return 1;
    }
    return 0;
}

static int pick(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

int cli_cmd_prune(int argc, char **argv)
{
    const char *method = "magnitude", *pattern = "2:4", *gran = "row", *layers = NULL,
               *calib = NULL, *head = "f32", *out = NULL;
    int32_t calib_tokens = 8192, calib_seq = 256, block = 128, n_threads = 0;
    float damp = 0.01f;
    const cli_opt opts[] = {
        {"method", 0, CLI_STRING, &method, "M", "magnitude, wanda or sparsegpt; default magnitude"},
        {"pattern", 0, CLI_STRING, &pattern, "P",
         "N:M (1 <= N < M <= 16, N of every M inputs kept) or unstructured:R (fraction R in "
         "[0, 0.99] removed); default 2:4"},
        {"granularity", 0, CLI_STRING, &gran, "G",
         "unstructured only: row (each output row loses the same count) or layer (one "
         "threshold per matrix); default row"},
        {"layers", 0, CLI_STRING, &layers, "A:B", "prune blocks A..B-1 only; default all"},
        {"calib", 0, CLI_STRING, &calib, "FILE",
         "calibration text (wanda, sparsegpt), tokenized with the model's tokenizer"},
        {"calib-tokens", 0, CLI_INT, &calib_tokens, "N",
         "use the first N calibration tokens; default 8192"},
        {"calib-seq", 0, CLI_INT, &calib_seq, "N", "calibration sequence length; default 256"},
        {"damp", 0, CLI_FLOAT, &damp, "F",
         "sparsegpt: dampening, fraction of mean diag(H); default 0.01"},
        {"block", 0, CLI_INT, &block, "N", "sparsegpt: columns per lazy-update block; default 128"},
        {"lm-head", 0, CLI_STRING, &head, "F",
         "LM head storage: f32 (unchanged), f16 or q8_0; default f32"},
        {"threads", 't', CLI_INT, &n_threads, "N", "compute threads, 0 = all cores; default 0"},
        {"output", 'o', CLI_STRING, &out, "OUT", "where to write the pruned GGUF (required)"},
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {
        "prune", "MODEL --method M --pattern P [options] -o OUT.gguf",
        "Prune the linear weights of every transformer block (attention q/k/v/o,\n"
        "MLP gate/up/down; embeddings, norms and the LM head stay dense), store\n"
        "them packed (N:M values + 4-bit indices, or bitmask/blocked for\n"
        "unstructured) and save one GGUF that mop info/ppl/bench/generate read.\n"
        "magnitude scores |W|; wanda |W|*||X_j|| and sparsegpt (layer-wise OBS with\n"
        "error compensation) calibrate each block on --calib text run through the\n"
        "already-pruned blocks before it. Prints the sparsity and file size.",
        opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;

    mop_prune_params p;
    mop_prune_params_init(&p);
    static const char *const methods[] = {"magnitude", "wanda", "sparsegpt"};
    static const char *const grans[] = {"row", "layer"};
    static const char *const heads[] = {"f32", "f16", "q8_0"};
    if (!out)
        return cli_usage_error("prune", "-o OUT.gguf is required");
    if ((p.method = pick(method, methods, 3)) < 0)
        return cli_usage_error("prune", "unknown --method '%s'", method);
    if (!parse_pattern(pattern, &p))
        return cli_usage_error("prune", "--pattern '%s' is neither N:M nor unstructured:R",
                               pattern);
    if ((p.granularity = pick(gran, grans, 2)) < 0)
        return cli_usage_error("prune", "unknown --granularity '%s'", gran);
    if ((p.lm_head_format = pick(head, heads, 3)) < 0)
        return cli_usage_error("prune", "unknown --lm-head '%s'", head);
    if (layers) {
        int a, b, used = 0;
        if (sscanf(layers, "%d:%d%n", &a, &b, &used) != 2 || layers[used] != '\0')
            return cli_usage_error("prune", "--layers '%s' is not A:B", layers);
        p.layer_begin = a;
        p.layer_end = b;
    }
    if (p.method != MOP_PRUNE_MAGNITUDE && !calib)
        return cli_usage_error("prune", "--method %s needs --calib FILE", method);
    if (calib_tokens < 1 || calib_seq < 1 || n_threads < 0)
        return cli_usage_error("prune", "--calib-tokens, --calib-seq must be >= 1, --threads >= 0");
    p.calib_seq_len = calib_seq;
    p.sparsegpt_damp = damp;
    p.sparsegpt_block = block;
    p.n_threads = n_threads;
    if (cli_check_output_path(out) != CLI_OK)
        return CLI_ERROR;

    mop_model *model = cli_load_model(pos[0], n_threads);
    if (!model)
        return CLI_ERROR;
    int32_t *tokens = NULL;
    char *text = NULL;
    rc = CLI_ERROR;
    mop_status st;
    if (calib) {
        size_t len = 0, n = 0;
        text = cli_read_file(calib, &len);
        if (!text)
            goto done;
        st = mop_tokenize(model, text, len, MOP_TOKENIZE_ADD_BOS, NULL, 0, &n);
        if (st == MOP_OK || st == MOP_E_RANGE) {
            tokens = malloc((n ? n : 1) * sizeof *tokens);
            if (!tokens) {
                rc = cli_error("out of memory");
                goto done;
            }
            st = mop_tokenize(model, text, len, MOP_TOKENIZE_ADD_BOS, tokens, n, &n);
        }
        if (st != MOP_OK) {
            rc = cli_fail(st, "cannot tokenize '%s'", calib);
            goto done;
        }
        p.calib_tokens = tokens;
        p.n_calib_tokens = (int64_t)(n < (size_t)calib_tokens ? n : (size_t)calib_tokens);
        printf("calibration tokens: %lld\n", (long long)p.n_calib_tokens);
    }
    double t0 = cli_now();
    cli_meter meter;
    cli_meter_start(&meter, "prune", PRUNE_REPORT_EVERY_S);
    p.progress = prune_progress;
    p.progress_user = &meter;
    st = mop_model_prune(model, &p);
    cli_progress_end();
    if (st != MOP_OK) {
        rc = cli_fail(st, "pruning '%s' failed", pos[0]);
        goto done;
    }
    double sparsity = 0.0;
    const char *fmt = "?";
    st = mop_model_sparsity(model, &sparsity, &fmt);
    if (st != MOP_OK) {
        rc = cli_fail(st, "sparsity query failed");
        goto done;
    }
    printf("pruned in %.1f s\nsparsity: %.4f\nformat: %s\n", cli_now() - t0, sparsity, fmt);
    st = mop_model_save(model, out);
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot save '%s'", out);
        goto done;
    }
    FILE *f = fopen(out, "rb");
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (f)
        fclose(f);
    printf("saved: %s (%.1f MiB)\n", out, (double)size / (1024.0 * 1024.0));
    rc = CLI_OK;
done:
    free(tokens);
    free(text);
    mop_model_free(model);
    return rc;
}
