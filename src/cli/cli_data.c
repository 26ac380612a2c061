/* JSONL instruction data -> tokenized examples -> padded batches. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "cli_data.h"

/* One parsed line before task ids are known. */
typedef struct raw_example {
    char *task;
    cli_example ex;
} raw_example;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int32_t cli_dataset_task_id(const cli_dataset *ds, const char *name)
{
    char *const *hit = bsearch(&name, ds->tasks, (size_t)ds->n_tasks, sizeof *ds->tasks, cmp_str);
    return hit ? (int32_t)(hit - ds->tasks) : -1;
}

void cli_dataset_free(cli_dataset *ds)
{
    for (size_t i = 0; i < ds->n; i++) {
        free(ds->ex[i].tokens);
        free(ds->ex[i].mask);
        free(ds->ex[i].states);
        free(ds->ex[i].gate_u);
    }
    for (int32_t t = 0; t < ds->n_tasks; t++)
        free(ds->tasks[t]);
    free(ds->ex);
    free(ds->tasks);
    memset(ds, 0, sizeof *ds);
}

static const char *string_field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Tokenize one example into fresh arrays (*truncated = 1 if cut to max_len);
 * CLI_ERROR after printing. */
static int tokenize_one(const mop_model *model, const char *path, int line, const char *system,
                        const char *instr, const char *resp, int32_t max_len, cli_example *ex,
                        int *truncated)
{
    size_t n = 0;
    mop_status st = mop_tokenize_example_v2(model, system, instr, resp, NULL, NULL, 0, &n);
    if (st != MOP_OK && st != MOP_E_RANGE)
        return cli_fail(st, "%s: line %d: cannot tokenize", path, line);
    ex->tokens = malloc((n ? n : 1) * sizeof *ex->tokens);
    ex->mask = malloc(n ? n : 1);
    if (!ex->tokens || !ex->mask)
        return cli_error("out of memory");
    st = mop_tokenize_example_v2(model, system, instr, resp, ex->tokens, ex->mask, n, &n);
    if (st != MOP_OK)
        return cli_fail(st, "%s: line %d: cannot tokenize", path, line);
    ex->len = (int32_t)(n > (size_t)max_len ? (size_t)max_len : n);
    ex->n_targets = 0;
    for (int32_t t = 1; t < ex->len; t++) /* token 0 is never a target */
        ex->n_targets += ex->mask[t];
    ex->mask[0] = 0;
    ex->line = line;
    *truncated = n > (size_t)max_len;
    return CLI_OK;
}

int cli_dataset_load(cli_dataset *ds, const char *path, const mop_model *model, int32_t max_len,
                     const char *system)
{
    memset(ds, 0, sizeof *ds);
    size_t len = 0;
    char *text = cli_read_file(path, &len);
    if (!text)
        return CLI_ERROR;

    raw_example *raw = NULL;
    size_t n_raw = 0, cap_raw = 0;
    int rc = CLI_ERROR;
    int line = 0;
    for (char *p = text, *end = text + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        line++;
        char *s = p;
        p = nl ? nl + 1 : end;
        while (s < eol && (*s == ' ' || *s == '\t' || *s == '\r'))
            s++;
        if (s == eol)
            continue; /* blank line */

        cJSON *obj = cJSON_ParseWithLength(s, (size_t)(eol - s));
        if (!cJSON_IsObject(obj)) {
            cJSON_Delete(obj);
            cli_error("%s: line %d: not a JSON object", path, line);
            goto out;
        }
        const char *task = string_field(obj, "task");
        const char *instr = string_field(obj, "instruction");
        const char *resp = string_field(obj, "response");
        const char *missing = !task ? "task" : !instr ? "instruction" : !resp ? "response" : NULL;
        if (missing) {
            cJSON_Delete(obj);
            cli_error("%s: line %d: missing string field \"%s\"", path, line, missing);
            goto out;
        }
        if (n_raw == cap_raw) {
            cap_raw = cap_raw ? 2 * cap_raw : 256;
            raw_example *grown = realloc(raw, cap_raw * sizeof *raw);
            if (!grown) {
                cJSON_Delete(obj);
                cli_error("out of memory");
                goto out;
            }
            raw = grown;
        }
        raw_example *r = &raw[n_raw++];
        memset(r, 0, sizeof *r);
        r->task = strdup(task);
        int trunc = 0;
        int st = r->task ? tokenize_one(model, path, line, system, instr, resp, max_len, &r->ex, &trunc)
                         : cli_error("out of memory");
        cJSON_Delete(obj);
        if (st != CLI_OK)
            goto out;
        if (trunc && r->ex.n_targets > 0)
            ds->n_truncated++;
    }
    if (n_raw == 0) {
        cli_error("%s: no examples", path);
        goto out;
    }

    /* task names, sorted and distinct */
    ds->tasks = malloc(n_raw * sizeof *ds->tasks);
    ds->ex = malloc(n_raw * sizeof *ds->ex);
    if (!ds->tasks || !ds->ex) {
        cli_error("out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_raw; i++)
        ds->tasks[i] = raw[i].task;
    qsort(ds->tasks, n_raw, sizeof *ds->tasks, cmp_str);
    int32_t n_tasks = 0;
    for (size_t i = 0; i < n_raw; i++)
        if (n_tasks == 0 || strcmp(ds->tasks[n_tasks - 1], ds->tasks[i]) != 0)
            ds->tasks[n_tasks++] = ds->tasks[i];
    /* the names become owned by ds->tasks: duplicate the kept ones */
    int oom = 0;
    for (int32_t t = 0; t < n_tasks; t++) {
        ds->tasks[t] = oom ? NULL : strdup(ds->tasks[t]);
        oom |= !ds->tasks[t];
    }
    ds->n_tasks = n_tasks;
    if (oom) {
        cli_error("out of memory");
        goto out;
    }

    for (size_t i = 0; i < n_raw; i++) {
        cli_example ex = raw[i].ex;
        raw[i].ex.tokens = NULL;
        raw[i].ex.mask = NULL;
        if (ex.n_targets == 0) {
            ds->n_dropped++;
            free(ex.tokens);
            free(ex.mask);
            continue;
        }
        ex.task = cli_dataset_task_id(ds, raw[i].task);
        if (ex.len > ds->max_len)
            ds->max_len = ex.len;
        ds->ex[ds->n++] = ex;
    }
    if (ds->n == 0) {
        cli_error("%s: no example has a response token within --max-len %d", path, (int)max_len);
        goto out;
    }
    rc = CLI_OK;
out:
    for (size_t i = 0; i < n_raw; i++) {
        free(raw[i].task);
        free(raw[i].ex.tokens);
        free(raw[i].ex.mask);
    }
    free(raw);
    free(text);
    if (rc != CLI_OK)
        cli_dataset_free(ds);
    return rc;
}

int cli_batch_init(cli_batch *cb, int32_t cap_B, int32_t cap_T)
{
    memset(cb, 0, sizeof *cb);
    size_t bt = (size_t)cap_B * (size_t)cap_T;
    cb->tokens = malloc(bt * sizeof *cb->tokens);
    cb->mask = malloc(bt);
    cb->lengths = malloc((size_t)cap_B * sizeof *cb->lengths);
    cb->task = malloc((size_t)cap_B * sizeof *cb->task);
    if (!cb->tokens || !cb->mask || !cb->lengths || !cb->task) {
        cli_batch_free(cb);
        return cli_error("out of memory for a batch of %d x %d tokens", (int)cap_B, (int)cap_T);
    }
    cb->cap_B = cap_B;
    cb->cap_T = cap_T;
    return CLI_OK;
}

void cli_batch_free(cli_batch *cb)
{
    free(cb->tokens);
    free(cb->mask);
    free(cb->states);
    free(cb->gate_u);
    free(cb->lengths);
    free(cb->task);
    memset(cb, 0, sizeof *cb);
}

void cli_batch_fill(cli_batch *cb, const cli_dataset *ds, const size_t *idx, int32_t n)
{
    int32_t T = 2;
    for (int32_t b = 0; b < n; b++)
        if (ds->ex[idx[b]].len > T)
            T = ds->ex[idx[b]].len;
    for (int32_t b = 0; b < n; b++) {
        const cli_example *ex = &ds->ex[idx[b]];
        int32_t *tok = cb->tokens + (size_t)b * T;
        uint8_t *mask = cb->mask + (size_t)b * T;
        memcpy(tok, ex->tokens, (size_t)ex->len * sizeof *tok);
        memcpy(mask, ex->mask, (size_t)ex->len);
        for (int32_t t = ex->len; t < T; t++) {
            tok[t] = 0; /* padding: ignored past lengths[b] */
            mask[t] = 0;
        }
        cb->lengths[b] = ex->len;
        cb->task[b] = ex->task;
    }
    int cached = cb->states != NULL;
    for (int32_t b = 0; b < n && cached; b++)
        cached = ds->ex[idx[b]].states != NULL;
    memset(&cb->b, 0, sizeof cb->b);
    cb->b.struct_size = sizeof cb->b;
    cb->b.n_seq = n;
    cb->b.seq_len = T;
    cb->b.tokens = cb->tokens;
    cb->b.lengths = cb->lengths;
    cb->b.loss_mask = cb->mask;
    cb->b.task = cb->task; /* used by gate supervision and the oracle gate only */
    if (cached) {
        for (int32_t b = 0; b < n; b++) {
            cb->states[b] = ds->ex[idx[b]].states;
            memcpy(cb->gate_u + (size_t)b * cb->d, ds->ex[idx[b]].gate_u,
                   (size_t)cb->d * sizeof *cb->gate_u);
        }
        cb->b.states = cb->states;
        cb->b.gate_input = cb->gate_u;
    }
}

uint64_t cli_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cli_shuffle(size_t *v, size_t n, uint64_t *state)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(cli_rand(state) % i);
        size_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

int cli_evaluate_each(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds, cli_batch *cb,
                      int32_t B, double *ex_nll, int32_t *ex_targets)
{
    size_t *idx = malloc((size_t)B * sizeof *idx);
    if (!idx)
        return cli_error("out of memory");
    double total = 0.0;
    int64_t count = 0;
    double t0 = cli_now();
    for (size_t first = 0; first < ds->n; first += (size_t)B) {
        int32_t n = (int32_t)(ds->n - first < (size_t)B ? ds->n - first : (size_t)B);
        for (int32_t b = 0; b < n; b++)
            idx[b] = first + (size_t)b;
        cli_batch_fill(cb, ds, idx, n);
        mop_status st = mop_mixture_evaluate(ctx, m ? &m : NULL, m ? 1 : 0, &cb->b,
                                             ex_nll + first, ex_targets + first, NULL);
        if (st != MOP_OK) {
            free(idx);
            return cli_fail(st, "evaluation failed at line %d", (int)ds->ex[first].line);
        }
        for (int32_t b = 0; b < n; b++) {
            total += ex_nll[first + (size_t)b];
            count += ex_targets[first + (size_t)b];
        }
        size_t done = first + (size_t)n;
        double dt = cli_now() - t0;
        cli_progress("eval: %zu/%zu examples, ppl %.3f, %.1f s, ETA %.0f s", done, ds->n,
                     count ? exp(total / (double)count) : 0.0, dt,
                     dt / (double)done * (double)(ds->n - done));
    }
    cli_progress_end();
    free(idx);
    return CLI_OK;
}

int cli_evaluate(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds, cli_batch *cb,
                 int32_t B, double *task_nll, int64_t *task_targets, int64_t *task_n,
                 double *nll, int64_t *n_targets)
{
    double *ex_nll = malloc((ds->n ? ds->n : 1) * sizeof *ex_nll);
    int32_t *ex_tgt = malloc((ds->n ? ds->n : 1) * sizeof *ex_tgt);
    if (!ex_nll || !ex_tgt) {
        free(ex_nll), free(ex_tgt);
        return cli_error("out of memory");
    }
    int rc = cli_evaluate_each(ctx, m, ds, cb, B, ex_nll, ex_tgt);
    double total = 0.0;
    int64_t count = 0;
    for (size_t i = 0; rc == CLI_OK && i < ds->n; i++) {
        int32_t t = ds->ex[i].task;
        if (task_nll)
            task_nll[t] += ex_nll[i];
        if (task_targets)
            task_targets[t] += ex_tgt[i];
        if (task_n)
            task_n[t] += 1;
        total += ex_nll[i];
        count += ex_tgt[i];
    }
    *nll = total;
    *n_targets = count;
    free(ex_nll), free(ex_tgt);
    return rc;
}

int32_t cli_prompt_rows(const mop_mixture_params *p)
{
    return p->combine == MOP_COMBINE_WEIGHTED_SUM ? p->prompt_len
                                                   : (p->n_experts + p->n_shared) * p->prompt_len;
}

mop_ctx *cli_make_ctx(mop_model *model, int32_t prompt_rows, int32_t max_len, int32_t n_threads)
{
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_threads = n_threads;
    cp.n_batch = prompt_rows + max_len;
    cp.n_ctx = cp.n_batch;
    mop_ctx *ctx = NULL;
    mop_status st = mop_ctx_create(model, &cp, &ctx);
    if (st != MOP_OK) {
        cli_fail(st, "cannot create a context for %d prompt rows + %d tokens", (int)prompt_rows,
                 (int)max_len);
        return NULL;
    }
    return ctx;
}

const char *cli_data_system(const char *system_opt, int template_system)
{
    if (template_system)
        return NULL;
    return system_opt ? system_opt : "";
}

size_t cli_dataset_cache_bytes(const cli_dataset *ds, int32_t d)
{
    size_t rows = 0;
    for (size_t i = 0; i < ds->n; i++)
        rows += (size_t)ds->ex[i].len + 1;
    return rows * (size_t)d * sizeof(float);
}

int cli_dataset_cache(mop_ctx *ctx, const mop_mixture *m, cli_dataset *ds, cli_batch *cb,
                      int32_t B)
{
    mop_mixture_tensor_info ti;
    memset(&ti, 0, sizeof ti);
    ti.struct_size = sizeof ti;
    mop_status st = mop_mixture_tensor_get_info(m, 0, &ti);
    if (st != MOP_OK)
        return cli_fail(st, "cannot read the mixture's shape");
    const int32_t d = (int32_t)ti.dims[2];
    if (!cb->states) {
        cb->d = d;
        cb->states = malloc((size_t)cb->cap_B * sizeof *cb->states);
        cb->gate_u = malloc((size_t)cb->cap_B * (size_t)d * sizeof *cb->gate_u);
        if (!cb->states || !cb->gate_u)
            return cli_error("out of memory");
    }
    size_t *idx = malloc((size_t)B * sizeof *idx);
    float **out = malloc((size_t)B * sizeof *out);
    if (!idx || !out) {
        free(idx), free(out);
        return cli_error("out of memory");
    }
    double t0 = cli_now();
    int rc = CLI_OK;
    for (size_t first = 0; first < ds->n && rc == CLI_OK; first += (size_t)B) {
        int32_t n = (int32_t)(ds->n - first < (size_t)B ? ds->n - first : (size_t)B);
        for (int32_t b = 0; b < n; b++)
            idx[b] = first + (size_t)b;
        cli_batch_fill(cb, ds, idx, n); /* these examples have no states yet */
        for (int32_t b = 0; b < n; b++) {
            cli_example *ex = &ds->ex[first + (size_t)b];
            ex->states = malloc((size_t)ex->len * (size_t)d * sizeof *ex->states);
            ex->gate_u = malloc((size_t)d * sizeof *ex->gate_u);
            out[b] = ex->states;
            if (!ex->states || !ex->gate_u)
                rc = cli_error("out of memory caching layer states");
        }
        if (rc != CLI_OK)
            break;
        float *u = cb->gate_u; /* (n, d) scratch */
        st = mop_mixture_inject_states(ctx, m, &cb->b, out, u);
        if (st != MOP_OK) {
            rc = cli_fail(st, "caching layer states failed at line %d", (int)ds->ex[first].line);
            break;
        }
        for (int32_t b = 0; b < n; b++)
            memcpy(ds->ex[first + (size_t)b].gate_u, u + (size_t)b * d, (size_t)d * sizeof *u);
        size_t done = first + (size_t)n;
        double dt = cli_now() - t0;
        cli_progress("layer states: %zu/%zu examples, %.1f s, ETA %.0f s", done, ds->n, dt,
                     dt / (double)done * (double)(ds->n - done));
    }
    cli_progress_end();
    free(idx), free(out);
    if (rc != CLI_OK)
        for (size_t i = 0; i < ds->n; i++) {
            free(ds->ex[i].states), free(ds->ex[i].gate_u);
            ds->ex[i].states = NULL, ds->ex[i].gate_u = NULL;
        }
    return rc;
}
