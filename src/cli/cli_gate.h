/* The gate's set-up before prompt training, shared by `mop train` and
 * `mop fed-sim`: the pooled gate inputs of a data set (one pass through
 * layers [0, L_g)), their statistics, and gate pre-training on task labels. */
#ifndef MOP_CLI_GATE_H
#define MOP_CLI_GATE_H

#include "cli_data.h"

/* Raw pooled gate inputs of every example of ds, (ds->n, d) in *u (malloc'ed),
 * in batches of B. CLI_ERROR after printing. */
int cli_gate_inputs(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds, cli_batch *cb,
                    int32_t B, float **u);

/* Standardize the gate's input with the moments of the n rows of u. */
int cli_gate_set_stats(mop_mixture *m, const float *u, size_t n);

/* Task labels of ds as an array (malloc'ed): ds's own ids, or with ids the
 * index of each example's task name in ids (-1 when ids lacks it); NULL
 * after printing. */
int32_t *cli_gate_labels(const cli_dataset *ds, const cli_dataset *ids);

/* Pre-train the gate on ds's labels (rows u), stopping on the validation
 * rows uv of val (or on the training rows when val is NULL); prints one
 * summary line. max_epochs 0 = the library's default. CLI_ERROR after printing. */
int cli_gate_pretrain(mop_mixture *m, const float *u, const cli_dataset *ds, const float *uv,
                      const cli_dataset *val, int32_t max_epochs, float lr, uint64_t seed);

/* Width d of the gate's input (the model's width); 0 on error. */
int32_t cli_gate_width(const mop_mixture *m);

/* cli_gate_inputs over the examples rows[0..n_rows) of ds only (rows NULL:
 * every example), (n_rows, d) in *u (malloc'ed). CLI_ERROR after printing. */
int cli_gate_inputs_rows(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds,
                         const size_t *rows, size_t n_rows, cli_batch *cb, int32_t B, float **u);

/* Pre-train the gate on n rows u with labels task (validation rows uv/task_val,
 * n_val of them, or NULL/0: the training rows decide). Prints one summary
 * line starting with `label` unless quiet; *result may be NULL.
 * CLI_ERROR after printing. */
int cli_gate_pretrain_rows(mop_mixture *m, const float *u, const int32_t *task, int32_t n,
                           const float *uv, const int32_t *task_val, int32_t n_val,
                           int32_t max_epochs, float lr, uint64_t seed, const char *label,
                           int quiet, mop_gate_pretrain_result *result);

/* Share of ds's examples whose argmax gate weight is their task (one pass
 * through layers [0, L_g) with mop_mixture_gate). ids: the data set whose
 * task ids the gate learned (ds's task names are looked up there), or NULL
 * (ds's own ids). CLI_ERROR after printing. */
int cli_gate_accuracy(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *ds,
                      const cli_dataset *ids, cli_batch *cb, int32_t B, double *accuracy);

/* Index of the first gate tensor in the flat buffer (the experts come first);
 * n_params when the mixture has no gate: the gate's optimizer covers
 * [cli_gate_offset, n_params). */
size_t cli_gate_offset(const mop_mixture *m);

/* Apply --baseline NAME to mp (K and P already set): "single" (one K*P-token
 * prompt), "uniform" (K experts, uniform gate) or "oracle" (expert k serves
 * task k by label). CLI_ERROR after a usage message naming cmd. */
int cli_gate_baseline(const char *cmd, const char *name, mop_mixture_params *mp);

#endif
