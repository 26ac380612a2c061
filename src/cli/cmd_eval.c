/* mop eval MODEL [--mixture FILE] --data FILE: perplexity of the responses,
 * per task and overall. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "cli_common.h"
#include "cli_data.h"

/* line,task,nll,targets per example, written atomically enough for a CLI
 * (a temporary file renamed into place). */
static int write_per_example(const char *path, const cli_dataset *ds, const double *nll,
                             const int32_t *tgt)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return cli_error("--per-example: path too long");
    FILE *f = fopen(tmp, "w");
    if (!f)
        return cli_error("cannot write '%s'", tmp);
    fprintf(f, "line,task,nll,targets\n");
    for (size_t i = 0; i < ds->n; i++)
        fprintf(f, "%d,%s,%.9g,%d\n", (int)ds->ex[i].line, ds->tasks[ds->ex[i].task], nll[i],
                (int)tgt[i]);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        remove(tmp);
        return cli_error("cannot write '%s'", path);
    }
    return CLI_OK;
}

int cli_cmd_eval(int argc, char **argv)
{
    const char *data = NULL, *mix_path = NULL, *per_example = NULL;
    int32_t B = 4, n_threads = 0, max_len = 1024;
    const char *system = NULL;
    int32_t template_system = 0;
    const cli_opt opts[] = {
        CLI_OPT_DATA(&data),
        CLI_OPT_MIXTURE(&mix_path, "default: the base model"),
        CLI_OPT_BATCH(&B, "4"),
        CLI_OPT_MAX_LEN(&max_len, "1024"),
        CLI_OPT_THREADS(&n_threads),
        CLI_OPT_SYSTEM(&system, &template_system),
        {"per-example", 0, CLI_STRING, &per_example, "CSV", "also write line,task,nll,targets for every example (for paired comparisons)"},
        CLI_OPT_END,
    };
    const cli_spec spec = {
        "eval", "MODEL --data FILE [--mixture FILE] [options]",
        "Perplexity of the response tokens (and the closing end-of-turn token) of\n"
        "each example, in the model's chat template, with the mixture or without\n"
        "(the base model). ppl = exp(sum of NLL / number of target tokens), per task\n"
        "and overall. The last line of stdout is 'perplexity: X'.",
        opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (!data)
        return cli_usage_error("eval", "--data FILE is required");
    if ((rc = cli_check_data_opts("eval", B, max_len, n_threads)) != CLI_OK)
        return rc;

    mop_model *model = cli_load_model(pos[0], n_threads);
    if (!model)
        return CLI_ERROR;
    mop_mixture *m = NULL;
    mop_ctx *ctx = NULL;
    cli_dataset ds = {0};
    cli_batch cb = {0};
    double *task_nll = NULL;
    int64_t *task_tgt = NULL, *task_n = NULL;
    double *ex_nll = NULL;
    int32_t *ex_tgt = NULL;
    rc = CLI_ERROR;

    int32_t rows = 0;
    if (mix_path) {
        mop_mixture_params mp;
        if (cli_load_mixture(model, mix_path, &m, &mp) != CLI_OK)
            goto out;
        rows = cli_prompt_rows(&mp);
    }
    if (cli_dataset_load(&ds, data, model, max_len, cli_data_system(system, template_system)) != CLI_OK)
        goto out;
    if (ds.n_truncated || ds.n_dropped)
        fprintf(stderr, "mop eval: %zu examples cut to --max-len %d, %zu without a target left "
                        "skipped\n", ds.n_truncated, (int)max_len, ds.n_dropped);
    ctx = cli_make_ctx(model, rows, ds.max_len, n_threads);
    if (!ctx || cli_batch_init(&cb, B, ds.max_len) != CLI_OK)
        goto out;
    task_nll = calloc((size_t)ds.n_tasks, sizeof *task_nll);
    task_tgt = calloc((size_t)ds.n_tasks, sizeof *task_tgt);
    task_n = calloc((size_t)ds.n_tasks, sizeof *task_n);
    if (!task_nll || !task_tgt || !task_n) {
        cli_error("out of memory");
        goto out;
    }
    double nll = 0.0;
    int64_t count = 0;
    double t0 = cli_now();
    ex_nll = malloc((ds.n ? ds.n : 1) * sizeof *ex_nll);
    ex_tgt = malloc((ds.n ? ds.n : 1) * sizeof *ex_tgt);
    if (!ex_nll || !ex_tgt) {
        cli_error("out of memory");
        goto out;
    }
    if (cli_evaluate_each(ctx, m, &ds, &cb, B, ex_nll, ex_tgt) != CLI_OK)
        goto out;
    double dt = cli_now() - t0;
    for (size_t i = 0; i < ds.n; i++) {
        int32_t t = ds.ex[i].task;
        task_nll[t] += ex_nll[i];
        task_tgt[t] += ex_tgt[i];
        task_n[t] += 1;
        nll += ex_nll[i];
        count += ex_tgt[i];
    }
    if (per_example && write_per_example(per_example, &ds, ex_nll, ex_tgt) != CLI_OK)
        goto out;

    printf("model: %s\nmixture: %s\nexamples: %zu\n", pos[0], mix_path ? mix_path : "(none)",
           ds.n);
    printf("%-16s %8s %9s %10s %12s\n", "task", "examples", "targets", "nll/token", "perplexity");
    for (int32_t t = 0; t < ds.n_tasks; t++) {
        double mean = task_tgt[t] ? task_nll[t] / (double)task_tgt[t] : 0.0;
        printf("%-16s %8lld %9lld %10.4f %12.4f\n", ds.tasks[t], (long long)task_n[t],
               (long long)task_tgt[t], mean, exp(mean));
    }
    printf("%-16s %8zu %9lld %10.4f %12.4f\n", "all", ds.n, (long long)count,
           nll / (double)count, exp(nll / (double)count));
    printf("time: %.1f s (%.1f examples/s)\n", dt, dt > 0 ? (double)ds.n / dt : 0.0);
    printf("perplexity: %.6f\n", exp(nll / (double)count));
    rc = CLI_OK;
out:
    free(task_nll);
    free(task_tgt);
    free(task_n);
    free(ex_nll);
    free(ex_tgt);
    cli_batch_free(&cb);
    cli_dataset_free(&ds);
    mop_ctx_free(ctx);
    mop_mixture_free(m);
    mop_model_free(model);
    return rc;
}
