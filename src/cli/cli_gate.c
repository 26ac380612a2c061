/* Gate set-up before prompt training: pooled inputs, statistics, pre-training. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_gate.h"

static int32_t model_width(const mop_mixture *m)
{
    mop_mixture_tensor_info ti;
    memset(&ti, 0, sizeof ti);
    ti.struct_size = sizeof ti;
    if (mop_mixture_tensor_get_info(m, 0, &ti) != MOP_OK)
        return 0;
    return (int32_t)ti.dims[2]; /* experts (groups, P, d) */
}

int32_t cli_gate_width(const mop_mixture *m)
{
    return model_width(m);
}

int cli_gate_inputs(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds, cli_batch *cb,
                    int32_t B, float **u)
{
    return cli_gate_inputs_rows(ctx, m, ds, NULL, ds->n, cb, B, u);
}

int cli_gate_inputs_rows(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds,
                         const size_t *rows, size_t n_rows, cli_batch *cb, int32_t B, float **u)
{
    const int32_t d = model_width(m);
    size_t *idx = malloc((size_t)B * sizeof *idx);
    float *out = malloc((n_rows ? n_rows : 1) * (size_t)d * sizeof *out);
    if (!idx || !out) {
        free(idx), free(out);
        return cli_error("out of memory for %zu gate inputs", n_rows);
    }
    double t0 = cli_now();
    for (size_t first = 0; first < n_rows; first += (size_t)B) {
        int32_t n = (int32_t)(n_rows - first < (size_t)B ? n_rows - first : (size_t)B);
        for (int32_t b = 0; b < n; b++)
            idx[b] = rows ? rows[first + (size_t)b] : first + (size_t)b;
        cli_batch_fill(cb, ds, idx, n);
        mop_status st = mop_mixture_gate_inputs(ctx, m, &cb->b, out + first * (size_t)d);
        if (st != MOP_OK) {
            int line = (int)ds->ex[idx[0]].line;
            free(idx), free(out);
            return cli_fail(st, "gate inputs failed at line %d", line);
        }
        size_t done = first + (size_t)n;
        double dt = cli_now() - t0;
        cli_progress("gate inputs: %zu/%zu examples, %.1f s, ETA %.0f s", done, n_rows, dt,
                     dt / (double)done * (double)(n_rows - done));
    }
    cli_progress_end();
    free(idx);
    *u = out;
    return CLI_OK;
}

int cli_gate_set_stats(mop_mixture *m, const float *u, size_t n)
{
    const int32_t d = model_width(m);
    double *sum = calloc((size_t)d * 2, sizeof *sum);
    if (!sum)
        return cli_error("out of memory");
    mop_status st = mop_mixture_input_moments(u, (int32_t)n, d, sum, sum + d);
    if (st == MOP_OK)
        st = mop_mixture_set_input_stats(m, (double)n, sum, sum + d);
    free(sum);
    return st == MOP_OK ? CLI_OK : cli_fail(st, "cannot set the gate's input statistics");
}

int32_t *cli_gate_labels(const cli_dataset *ds, const cli_dataset *ids)
{
    int32_t *t = malloc((ds->n ? ds->n : 1) * sizeof *t);
    if (!t) {
        cli_error("out of memory");
        return NULL;
    }
    for (size_t i = 0; i < ds->n; i++)
        t[i] = ids ? cli_dataset_task_id(ids, ds->tasks[ds->ex[i].task]) : ds->ex[i].task;
    return t;
}

int cli_gate_pretrain_rows(mop_mixture *m, const float *u, const int32_t *task, int32_t n,
                           const float *uv, const int32_t *task_val, int32_t n_val,
                           int32_t max_epochs, float lr, uint64_t seed, const char *label,
                           int quiet, mop_gate_pretrain_result *result)
{
    mop_gate_pretrain_params pp;
    mop_status st = mop_gate_pretrain_params_init(&pp);
    if (max_epochs > 0)
        pp.max_epochs = max_epochs;
    if (lr > 0.0f)
        pp.lr = lr;
    pp.seed = seed;
    mop_gate_pretrain_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    double t0 = cli_now();
    if (st == MOP_OK)
        st = mop_mixture_pretrain_gate(m, u, task, n, uv, task_val, uv ? n_val : 0, &pp, &r);
    if (st != MOP_OK)
        return cli_fail(st, "%s failed", label);
    if (!quiet) {
        printf("%s: %d epochs (best %d) in %.1f s, argmax accuracy %.3f train, %.3f %s\n",
               label, (int)r.epochs, (int)r.best_epoch, cli_now() - t0,
               (double)r.train_accuracy, (double)r.val_accuracy,
               uv && n_val > 0 ? "validation" : "train");
        fflush(stdout);
    }
    if (result)
        *result = r;
    return CLI_OK;
}

int cli_gate_pretrain(mop_mixture *m, const float *u, const cli_dataset *ds, const float *uv,
                      const cli_dataset *val, int32_t max_epochs, float lr, uint64_t seed)
{
    /* validation labels by task name in the training set's numbering; rows
     * of tasks the training set lacks are left out */
    const size_t d = (size_t)cli_gate_width(m);
    int32_t *task = cli_gate_labels(ds, NULL), *task_val = val ? cli_gate_labels(val, ds) : NULL;
    float *uv_kept = val ? malloc((val->n ? val->n : 1) * d * sizeof *uv_kept) : NULL;
    if (!task || (val && (!task_val || !uv_kept))) {
        free(task), free(task_val), free(uv_kept);
        return cli_error("out of memory");
    }
    int32_t n_val = 0;
    for (size_t i = 0; val && i < val->n; i++)
        if (task_val[i] >= 0) {
            memcpy(uv_kept + (size_t)n_val * d, uv + i * d, d * sizeof *uv_kept);
            task_val[n_val++] = task_val[i];
        }
    int rc = cli_gate_pretrain_rows(m, u, task, (int32_t)ds->n, n_val > 0 ? uv_kept : NULL,
                                    task_val, n_val, max_epochs, lr, seed, "gate pre-training", 0,
                                    NULL);
    free(task), free(task_val), free(uv_kept);
    return rc;
}

int cli_gate_accuracy(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds,
                      const cli_dataset *ids, cli_batch *cb, int32_t B, double *accuracy)
{
    mop_mixture_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    mop_status st = mop_mixture_get_params(m, &p);
    if (st != MOP_OK)
        return cli_fail(st, "cannot read the mixture's parameters");
    const int32_t K = p.n_experts;
    size_t *idx = malloc((size_t)B * sizeof *idx);
    float *w = malloc((size_t)B * (size_t)K * sizeof *w);
    if (!idx || !w) {
        free(idx), free(w);
        return cli_error("out of memory");
    }
    size_t hits = 0;
    for (size_t first = 0; first < ds->n; first += (size_t)B) {
        int32_t n = (int32_t)(ds->n - first < (size_t)B ? ds->n - first : (size_t)B);
        for (int32_t b = 0; b < n; b++)
            idx[b] = first + (size_t)b;
        cli_batch_fill(cb, ds, idx, n);
        if ((st = mop_mixture_gate(ctx, m, &cb->b, w)) != MOP_OK) {
            free(idx), free(w);
            return cli_fail(st, "gate weights failed");
        }
        for (int32_t b = 0; b < n; b++) {
            int32_t best = 0;
            for (int32_t k = 1; k < K; k++)
                if (w[(size_t)b * K + k] > w[(size_t)b * K + best])
                    best = k;
            int32_t t = ds->ex[first + (size_t)b].task;
            if (ids)
                t = cli_dataset_task_id(ids, ds->tasks[t]);
            hits += best == t;
        }
    }
    free(idx), free(w);
    *accuracy = ds->n ? (double)hits / (double)ds->n : 0.0;
    return CLI_OK;
}

size_t cli_gate_offset(const mop_mixture *m)
{
    for (int32_t i = 0; i < mop_mixture_tensor_count(m); i++) {
        mop_mixture_tensor_info ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        if (mop_mixture_tensor_get_info(m, i, &ti) == MOP_OK && strncmp(ti.name, "gate.", 5) == 0)
            return ti.offset;
    }
    return mop_mixture_n_params(m);
}

int cli_gate_baseline(const char *cmd, const char *name, mop_mixture_params *mp)
{
    mp->gate_mode = MOP_GATE_UNIFORM;
    if (strcmp(name, "single") == 0) {
        mp->prompt_len = mp->n_experts * mp->prompt_len;
        mp->n_experts = 1;
    } else if (strcmp(name, "oracle") == 0) {
        mp->gate_mode = MOP_GATE_ORACLE;
    } else if (strcmp(name, "uniform") != 0) {
        return cli_usage_error(cmd, "--baseline must be 'single', 'uniform' or 'oracle', got '%s'",
                               name);
    }
    return CLI_OK;
}
