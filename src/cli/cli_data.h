/* Instruction data for `mop train`, `mop eval` and `mop gate-stats`: a JSONL
 * file of {"task", "instruction", "response"} records, tokenized with the
 * model's chat template (mop_tokenize_example), and padded batches of it. */
#ifndef MOP_CLI_DATA_H
#define MOP_CLI_DATA_H

#include <stddef.h>
#include <stdint.h>

#include <libmop/mop.h>

typedef struct cli_example {
    int32_t task;      /* index into cli_dataset.tasks */
    int32_t len;       /* tokens (after truncation to max_len) */
    int32_t n_targets; /* ones in mask */
    int32_t line;      /* 1-based line in the file */
    int32_t *tokens;   /* (len) */
    uint8_t *mask;     /* (len) 1 on response tokens and the closing end of turn */
    float *states;     /* (len, d) hidden states entering L_p (cli_dataset_cache), or NULL */
    float *gate_u;     /* (d) raw gate input, with states */
} cli_example;

typedef struct cli_dataset {
    cli_example *ex;
    size_t n;
    char **tasks;       /* distinct task names, sorted; id = index */
    int32_t n_tasks;
    int32_t max_len;    /* longest example kept */
    size_t n_truncated; /* examples cut to max_len (still with targets) */
    size_t n_dropped;   /* examples with no target left after the cut */
} cli_dataset;

/* Read and tokenize `path` (system: the chat's system text, NULL = the
 * template's default; see mop_tokenize_example_v2). Blank lines are skipped; any other line must be a
 * JSON object with string fields "task", "instruction" and "response".
 * Examples longer than max_len tokens are cut to max_len; those left without
 * a target are dropped. Task ids are the positions of the names in sorted
 * order. On error prints one line naming the file and line and returns
 * CLI_ERROR (ds left empty). */
int cli_dataset_load(cli_dataset *ds, const char *path, const mop_model *model, int32_t max_len,
                     const char *system);

/* The system text of the --system / --template-system options: NULL with
 * --template-system, else --system's text (default "": an empty system turn,
 * which keeps the template's ~20-token default turn out of every example). */
const char *cli_data_system(const char *system_opt, int template_system);

void cli_dataset_free(cli_dataset *ds);

/* Index of task `name` in ds->tasks, or -1. */
int32_t cli_dataset_task_id(const cli_dataset *ds, const char *name);

/* Room for batches of up to cap_B sequences of up to cap_T tokens. */
typedef struct cli_batch {
    int32_t cap_B, cap_T, d;
    int32_t *tokens, *lengths, *task;
    uint8_t *mask;
    const float **states; /* (cap_B) the examples' cached states, when the data set has them */
    float *gate_u;        /* (cap_B, d) their gate inputs */
    mop_batch b; /* points into the arrays above */
} cli_batch;

int cli_batch_init(cli_batch *cb, int32_t cap_B, int32_t cap_T);

/* Compute and keep every example's layer-L_p states and raw gate input
 * (mop_mixture_inject_states) so that batches of ds skip layers [0, L_p):
 * bit-identical results, one forward of those layers per example in all.
 * Needs (Σ len) · d floats; CLI_ERROR after printing. */
int cli_dataset_cache(mop_ctx *ctx, const mop_mixture *m, cli_dataset *ds, cli_batch *cb,
                      int32_t B);

/* Bytes cli_dataset_cache would keep for ds at width d. */
size_t cli_dataset_cache_bytes(const cli_dataset *ds, int32_t d);
void cli_batch_free(cli_batch *cb);

/* Fill cb->b with examples idx[0..n) (n <= cap_B), padded to the longest,
 * with their cached states when ds has them. */
void cli_batch_fill(cli_batch *cb, const cli_dataset *ds, const size_t *idx, int32_t n);

/* Score every example of ds with mixture m (NULL = the base model) in
 * batches of B: per task, Σ NLL over targets, number of targets and number
 * of examples are ADDED to the arrays (ds->n_tasks entries each, NULL to
 * skip); the totals go to *nll and *n_targets. CLI_ERROR after printing. */
int cli_evaluate(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds, cli_batch *cb,
                 int32_t B, double *task_nll, int64_t *task_targets, int64_t *task_n,
                 double *nll, int64_t *n_targets);

/* Σ NLL and target count of each example of ds (ds->n entries each). */
int cli_evaluate_each(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds, cli_batch *cb,
                      int32_t B, double *ex_nll, int32_t *ex_targets);

/* Prompt rows a mixture adds to every sequence: (K + shared)·P (attention bias) or P. */
int32_t cli_prompt_rows(const mop_mixture_params *p);

/* A context able to run sequences of max_len tokens behind `prompt_rows`
 * prompt rows; NULL after printing. */
mop_ctx *cli_make_ctx(mop_model *model, int32_t prompt_rows, int32_t max_len, int32_t n_threads);

/* Small seeded generator for shuffling (splitmix64). */
uint64_t cli_rand(uint64_t *state);
void cli_shuffle(size_t *v, size_t n, uint64_t *state);

#endif
