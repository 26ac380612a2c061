/* Pieces shared by the commands that read instruction data with a mixture
 * (`mop eval`, `mop gate-stats`): option rows that read the same in every
 * command, the checks of those options, and loading a mixture with its shape.
 * Defined in cli_common.c beside the rest of cli.h. */
#ifndef MOP_CLI_COMMON_H
#define MOP_CLI_COMMON_H

#include <stdint.h>

#include "cli.h"

/* cli_opt initialisers. `dest` is the address of the destination; the
 * *_default / note arguments are string literals pasted into the help line. */
#define CLI_OPT_DATA(dest) \
    {"data", 'd', CLI_STRING, (dest), "FILE", "JSONL {task, instruction, response}; required"}
#define CLI_OPT_MIXTURE(dest, note) \
    {"mixture", 'm', CLI_STRING, (dest), "FILE", "a mixture from 'mop train'; " note}
#define CLI_OPT_BATCH(dest, batch_default) \
    {"batch", 'b', CLI_INT, (dest), "B", "sequences per call; default " batch_default}
#define CLI_OPT_MAX_LEN(dest, len_default) \
    {"max-len", 0, CLI_INT, (dest), "T", "cut examples to T tokens; default " len_default}
#define CLI_OPT_THREADS(dest) \
    {"threads", 't', CLI_INT, (dest), "N", "compute threads, 0 = all cores; default 0"}
#define CLI_OPT_SYSTEM(text, template_flag) \
    {"system", 0, CLI_STRING, text, "TEXT", "system turn of every example (chat template); default \"\" (an empty turn)"}, \
    {"template-system", 0, CLI_FLAG, template_flag, NULL, "keep the chat template's default system turn instead"}
#define CLI_OPT_END {NULL, 0, CLI_FLAG, NULL, NULL, NULL}

/* The ranges of --batch (>= 1), --max-len (>= 2) and --threads (>= 0):
 * CLI_OK, or CLI_USAGE after printing one line for `command`. */
int cli_check_data_opts(const char *command, int32_t batch, int32_t max_len, int32_t n_threads);

/* Load the mixture at `path` for `model` into *out and its shape into
 * *params. CLI_OK, or CLI_ERROR after printing (*out is then NULL). */
int cli_load_mixture(mop_model *model, const char *path, mop_mixture **out,
                     mop_mixture_params *params);

#endif
