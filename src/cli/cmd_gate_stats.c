/* mop gate-stats MODEL --mixture FILE --data FILE -o stats.csv: the average
 * gate weight each task gives each expert (the paper's appendix figures). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_common.h"
#include "cli_data.h"

/* A CSV field, quoted when it holds a comma, quote or line break. */
static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int cli_cmd_gate_stats(int argc, char **argv)
{
    const char *data = NULL, *mix_path = NULL, *out_path = NULL;
    int32_t B = 8, n_threads = 0, max_len = 1024;
    const char *system = NULL;
    int32_t template_system = 0;
    const cli_opt opts[] = {
        CLI_OPT_MIXTURE(&mix_path, "required"),
        CLI_OPT_DATA(&data),
        {"output", 'o', CLI_STRING, &out_path, "CSV", "where to write the table; required"},
        CLI_OPT_BATCH(&B, "8"),
        CLI_OPT_MAX_LEN(&max_len, "1024"),
        CLI_OPT_THREADS(&n_threads),
        CLI_OPT_SYSTEM(&system, &template_system),
        CLI_OPT_END,
    };
    const cli_spec spec = {
        "gate-stats", "MODEL --mixture FILE --data FILE -o CSV [options]",
        "Run the gate on every example (the same chat-formatted tokens training\n"
        "sees; layers [0, gate_layer) only) and write, per task, the mean weight\n"
        "given to each expert: CSV columns task, n, w0 .. w{K-1}. Each row sums to 1.\n"
        "The table is also printed. examples/plot_gate_heatmap.py draws it.",
        opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (!mix_path || !data || !out_path)
        return cli_usage_error("gate-stats", "--mixture, --data and -o are required");
    if ((rc = cli_check_data_opts("gate-stats", B, max_len, n_threads)) != CLI_OK)
        return rc;
    if (cli_check_output_path(out_path) != CLI_OK)
        return CLI_ERROR;

    mop_model *model = cli_load_model(pos[0], n_threads);
    if (!model)
        return CLI_ERROR;
    mop_mixture *m = NULL;
    mop_ctx *ctx = NULL;
    cli_dataset ds = {0};
    cli_batch cb = {0};
    double *sum = NULL;
    int64_t *count = NULL;
    float *w = NULL;
    size_t *idx = NULL;
    FILE *f = NULL;
    rc = CLI_ERROR;

    mop_status st;
    mop_mixture_params mp;
    if (cli_load_mixture(model, mix_path, &m, &mp) != CLI_OK)
        goto out;
    const int32_t K = mp.n_experts;
    if (cli_dataset_load(&ds, data, model, max_len, cli_data_system(system, template_system)) != CLI_OK)
        goto out;
    ctx = cli_make_ctx(model, cli_prompt_rows(&mp), ds.max_len, n_threads);
    if (!ctx || cli_batch_init(&cb, B, ds.max_len) != CLI_OK)
        goto out;
    sum = calloc((size_t)ds.n_tasks * (size_t)K, sizeof *sum);
    count = calloc((size_t)ds.n_tasks, sizeof *count);
    w = malloc((size_t)B * (size_t)K * sizeof *w);
    idx = malloc((size_t)B * sizeof *idx);
    if (!sum || !count || !w || !idx) {
        cli_error("out of memory");
        goto out;
    }
    for (size_t first = 0; first < ds.n; first += (size_t)B) {
        int32_t n = (int32_t)(ds.n - first < (size_t)B ? ds.n - first : (size_t)B);
        for (int32_t b = 0; b < n; b++)
            idx[b] = first + (size_t)b;
        cli_batch_fill(&cb, &ds, idx, n);
        if ((st = mop_mixture_gate(ctx, m, &cb.b, w)) != MOP_OK) {
            cli_fail(st, "gate failed at line %d", (int)ds.ex[first].line);
            goto out;
        }
        for (int32_t b = 0; b < n; b++) {
            int32_t t = ds.ex[idx[b]].task;
            count[t]++;
            for (int32_t k = 0; k < K; k++)
                sum[(size_t)t * K + k] += w[(size_t)b * K + k];
        }
        cli_progress("gate-stats: %zu/%zu examples", first + (size_t)n, ds.n);
    }
    cli_progress_end();

    f = fopen(out_path, "w");
    if (!f) {
        cli_error("cannot write '%s': %s", out_path, strerror(errno));
        goto out;
    }
    fprintf(f, "task,n");
    printf("%-16s %6s", "task", "n");
    for (int32_t k = 0; k < K; k++) {
        fprintf(f, ",w%d", (int)k);
        printf(" %6s%-2d", "w", (int)k);
    }
    fprintf(f, "\n");
    printf("\n");
    for (int32_t t = 0; t < ds.n_tasks; t++) {
        csv_field(f, ds.tasks[t]);
        fprintf(f, ",%lld", (long long)count[t]);
        printf("%-16s %6lld", ds.tasks[t], (long long)count[t]);
        for (int32_t k = 0; k < K; k++) {
            double mean = count[t] ? sum[(size_t)t * K + k] / (double)count[t] : 0.0;
            fprintf(f, ",%.6f", mean);
            printf(" %8.4f", mean);
        }
        fprintf(f, "\n");
        printf("\n");
    }
    if (fclose(f) != 0) {
        f = NULL;
        cli_error("cannot write '%s': %s", out_path, strerror(errno));
        goto out;
    }
    f = NULL;
    printf("wrote %s (%d tasks, %d experts)\n", out_path, (int)ds.n_tasks, (int)K);
    rc = CLI_OK;
out:
    if (f)
        fclose(f);
    free(sum);
    free(count);
    free(w);
    free(idx);
    cli_batch_free(&cb);
    cli_dataset_free(&ds);
    mop_ctx_free(ctx);
    mop_mixture_free(m);
    mop_model_free(model);
    return rc;
}
