/* mop: command-line front end of libmop. `mop COMMAND [options]`.
 *
 * Each command lives in its own cmd_<name>.c and has one row in the table
 * below; later commands (prune, train, eval, fed-sim, gate-stats) are added
 * the same way. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const cli_command commands[] = {
    {"info", "show a model's architecture, sizes and tensor storage types", cli_cmd_info},
    {"generate", "generate text from a prompt (optionally as a chat turn)", cli_cmd_generate},
    {"ppl", "perplexity of a text file in fixed windows", cli_cmd_ppl},
    {"bench", "prefill and decode speed and peak memory", cli_cmd_bench},
    {"prune", "prune a model's linear weights (magnitude, Wanda, SparseGPT) and save it", cli_cmd_prune},
    {"train", "train a prompt mixture (or a baseline) on JSONL instruction data", cli_cmd_train},
    {"eval", "response perplexity per task, with a mixture or the base model", cli_cmd_eval},
    {"fed-sim", "simulate federated training of a mixture (clients in-process)", cli_cmd_fed_sim},
    {"gate-stats", "per-task average gate weight of each expert, as CSV", cli_cmd_gate_stats},
    {"serve", "serve the model and its mixtures over HTTP (OpenAI-compatible API)", cli_cmd_serve},
};

static void print_usage(FILE *out)
{
    fprintf(out, "usage: mop COMMAND [options]   (mop COMMAND --help for details)\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\noptions:\n"
                 "  -h, --help     show this help and exit\n"
                 "  -V, --version  print the library version and exit\n"
                 "\nexit status: 0 success, 1 error, 2 usage error\n");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(NULL, "missing command");
    const char *name = argv[1];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
        print_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(name, "-V") == 0 || strcmp(name, "--version") == 0) {
        printf("mop %s\n", mop_version());
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    return cli_usage_error(NULL, "unknown command '%s'", name);
}
