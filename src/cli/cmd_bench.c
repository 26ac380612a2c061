/* mop bench MODEL: prefill and decode throughput and peak memory. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"

enum { MAX_REPS = 100 };

/* The fixed token sequence every run feeds: spread over the vocabulary. */
static int32_t bench_token(int64_t i, int32_t n_vocab)
{
    return (int32_t)((1000 + 37 * i) % n_vocab);
}

/* Peak resident set of this process: VmHWM from /proc/self/status, the
 * high-water mark of this program's own address space. getrusage's
 * ru_maxrss is not used first: Linux carries it over execve, so a child of a
 * large parent (a test runner) reports the parent's size. */
static uint64_t peak_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    if (kib)
        return (uint64_t)kib * 1024u;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void json_array(const double *v, int32_t n)
{
    putchar('[');
    for (int32_t i = 0; i < n; i++)
        printf("%s%.3f", i ? ", " : "", v[i]);
    putchar(']');
}

/* One measured run: prefill `n_prompt` tokens, then decode `n_gen` tokens one
 * at a time. Times in seconds. */
static mop_status run_once(mop_ctx *ctx, const int32_t *tokens, int32_t n_prompt, int32_t n_gen,
                           double *t_prefill, double *t_decode)
{
    mop_ctx_reset(ctx);
    double t0 = cli_now();
    mop_status st = mop_ctx_decode(ctx, tokens, n_prompt, MOP_LOGITS_LAST);
    if (st != MOP_OK)
        return st;
    double t1 = cli_now();
    for (int32_t i = 0; i < n_gen; i++) {
        st = mop_ctx_decode(ctx, &tokens[n_prompt + i], 1, MOP_LOGITS_LAST);
        if (st != MOP_OK)
            return st;
    }
    double t2 = cli_now();
    *t_prefill = t1 - t0;
    *t_decode = t2 - t1;
    return MOP_OK;
}

int cli_cmd_bench(int argc, char **argv)
{
    int32_t n_prompt = 128, n_gen = 64, n_threads = 0, reps = 3, n_ctx = 512, json = 0;
    const cli_opt opts[] = {
        {"prompt-tokens", 0, CLI_INT, &n_prompt, "N", "tokens in the prefill; default 128"},
        {"gen-tokens", 0, CLI_INT, &n_gen, "N", "tokens decoded one at a time after it; default 64"},
        {"threads", 't', CLI_INT, &n_threads, "N", "compute threads, 0 = all cores; default 0"},
        {"reps", 'r', CLI_INT, &reps, "R", "measured repetitions (median reported); default 3"},
        {"ctx", 'c', CLI_INT, &n_ctx, "N", "context (KV cache) size; default 512"},
        {"json", 0, CLI_FLAG, &json, NULL, "print one JSON object instead of the table"},
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {"bench", "MODEL [options]",
                           "Time a prefill of N tokens (one mop_ctx_decode call on a fixed token\n"
                           "sequence) and the decode of the following tokens one at a time, after\n"
                           "one unmeasured warm-up run; report the medians over R repetitions in\n"
                           "tokens/s and the peak resident set size of the process.",
                           opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (n_prompt < 1 || n_gen < 0 || n_threads < 0 || reps < 1 || reps > MAX_REPS)
        return cli_usage_error("bench", "need --prompt-tokens >= 1, --gen-tokens >= 0, "
                                        "--threads >= 0 and 1 <= --reps <= %d", MAX_REPS);
    if ((int64_t)n_prompt + n_gen > n_ctx)
        return cli_usage_error("bench", "--prompt-tokens + --gen-tokens (%d) exceed --ctx %d",
                               (int)(n_prompt + n_gen), (int)n_ctx);

    double t_load = cli_now();
    mop_model *model = cli_load_model(pos[0], n_threads);
    if (!model)
        return CLI_ERROR;
    t_load = cli_now() - t_load;
    mop_ctx *ctx = NULL;
    int32_t *tokens = NULL;
    rc = CLI_ERROR;

    mop_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = sizeof mi;
    mop_status st = mop_model_get_info(model, &mi);
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot describe model '%s'", pos[0]);
        goto out;
    }
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_threads = n_threads;
    cp.n_ctx = n_ctx;
    if (cp.n_batch < n_prompt)
        cp.n_batch = n_prompt; /* the whole prefill in one matrix-matrix pass */
    if (cp.n_batch > n_ctx)
        cp.n_batch = n_ctx;
    st = mop_ctx_create(model, &cp, &ctx);
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot create a context of %d tokens", (int)n_ctx);
        goto out;
    }
    tokens = malloc((size_t)(n_prompt + n_gen) * sizeof *tokens);
    if (!tokens) {
        rc = cli_error("out of memory");
        goto out;
    }
    for (int32_t i = 0; i < n_prompt + n_gen; i++)
        tokens[i] = bench_token(i, mi.n_vocab);

    double tp, td;
    cli_progress("bench: warm-up");
    st = run_once(ctx, tokens, n_prompt, n_gen, &tp, &td);
    double prefill[MAX_REPS], decode[MAX_REPS], prefill_sorted[MAX_REPS], decode_sorted[MAX_REPS];
    for (int32_t r = 0; r < reps && st == MOP_OK; r++) {
        cli_progress("bench: repetition %d/%d", (int)r + 1, (int)reps);
        st = run_once(ctx, tokens, n_prompt, n_gen, &tp, &td);
        prefill[r] = (double)n_prompt / tp;
        decode[r] = n_gen > 0 ? (double)n_gen / td : 0.0;
    }
    cli_progress_end();
    if (st != MOP_OK) {
        rc = cli_fail(st, "decode failed");
        goto out;
    }
    memcpy(prefill_sorted, prefill, (size_t)reps * sizeof prefill[0]);
    memcpy(decode_sorted, decode, (size_t)reps * sizeof decode[0]);
    double prefill_med = cli_median(prefill_sorted, (size_t)reps);
    double decode_med = cli_median(decode_sorted, (size_t)reps);
    uint64_t rss = peak_rss_bytes();
    /* KV cache if stored as F32 keys and values: 2 · layers · n_ctx · kv width */
    uint64_t kv_bytes = 2u * (uint64_t)mi.n_layer * (uint64_t)n_ctx * (uint64_t)mi.n_head_kv *
                        (uint64_t)mi.head_dim * sizeof(float);

    if (json) {
        printf("{\"model\": ");
        json_string(pos[0]);
        printf(", \"threads\": %d, \"prompt_tokens\": %d, \"gen_tokens\": %d, \"reps\": %d, "
               "\"n_ctx\": %d, \"load_s\": %.4f, \"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, "
               "\"prefill_tok_s_all\": ",
               (int)n_threads, (int)n_prompt, (int)n_gen, (int)reps, (int)n_ctx, t_load,
               prefill_med, decode_med);
        json_array(prefill, reps);
        printf(", \"decode_tok_s_all\": ");
        json_array(decode, reps);
        printf(", \"peak_rss_bytes\": %" PRIu64 ", \"weight_bytes\": %" PRIu64
               ", \"kv_bytes_f32\": %" PRIu64 ", \"n_params\": %" PRIu64 "}\n",
               rss, mi.weight_bytes, kv_bytes, mi.n_params);
    } else {
        printf("model:        %s (%s, %.1f M parameters)\n", pos[0], mi.name[0] ? mi.name : mi.arch,
               (double)mi.n_params / 1e6);
        printf("threads:      %d%s\n", (int)n_threads, n_threads == 0 ? " (all cores)" : "");
        printf("load:         %.3f s\n", t_load);
        printf("prefill:      %.2f tok/s  (%d tokens, median of %d)\n", prefill_med, (int)n_prompt,
               (int)reps);
        printf("decode:       %.2f tok/s  (%d tokens, median of %d)\n", decode_med, (int)n_gen,
               (int)reps);
        printf("peak RSS:     %.1f MiB\n", (double)rss / (1024.0 * 1024.0));
        printf("weights:      %.1f MiB; KV cache of %d tokens as F32: %.1f MiB\n",
               (double)mi.weight_bytes / (1024.0 * 1024.0), (int)n_ctx,
               (double)kv_bytes / (1024.0 * 1024.0));
    }
    rc = CLI_OK;
out:
    free(tokens);
    mop_ctx_free(ctx);
    mop_model_free(model);
    return rc;
}
