/* Shared pieces of the `mop` command-line tool: the command table entry,
 * a declarative option parser, error reporting and progress output.
 *
 * The CLI uses only the public API (<libmop/mop.h>) and links the shared
 * library. Exit codes: 0 success, 1 runtime error, 2 usage error. Every error
 * is one line on stderr; results go to stdout; progress goes to stderr, only
 * when stderr is a terminal or --progress is given, except the meter of long
 * work (cli_meter: train, prune), which writes a line every few seconds to a
 * log as well. */
#ifndef MOP_CLI_H
#define MOP_CLI_H

#include <stddef.h>
#include <stdint.h>

#include <libmop/mop.h>

enum { CLI_OK = 0, CLI_ERROR = 1, CLI_USAGE = 2 };

/* One sub-command: `mop NAME ...` calls run(argc, argv) with argv[0] == NAME. */
typedef struct cli_command {
    const char *name;
    const char *summary; /* one line for `mop --help` */
    int (*run)(int argc, char **argv);
} cli_command;

/* ---- options ------------------------------------------------------------- */
typedef enum cli_opt_kind {
    CLI_FLAG,   /* int32_t, set to 1 when present */
    CLI_INT,    /* int32_t */
    CLI_FLOAT,  /* float */
    CLI_U64,    /* uint64_t */
    CLI_STRING  /* const char * (points into argv) */
} cli_opt_kind;

typedef struct cli_opt {
    const char *name;    /* long name without dashes, e.g. "threads" */
    char short_name;     /* e.g. 'n', or 0 */
    cli_opt_kind kind;
    void *dest;
    const char *metavar; /* e.g. "N"; NULL for flags */
    const char *help;    /* one line, includes the default */
} cli_opt;

/* What a command accepts; also the source of its --help text. */
typedef struct cli_spec {
    const char *command;     /* "generate" */
    const char *usage;       /* "MODEL --prompt TEXT [options]" */
    const char *description; /* a few lines, printed under the usage */
    const cli_opt *opts;     /* terminated by an entry with name == NULL */
    int n_positional;        /* exact number of positional arguments */
} cli_spec;

/* Parse argv[1..argc) (argv[0] is the command name) into the option
 * destinations and `positional` (n_positional entries). Options may come
 * before or after positionals, as "--name value", "--name=value" or "-x value";
 * "--" ends options. Handles --help (prints it, returns CLI_OK with *done = 1)
 * and --progress (every command accepts it). Returns CLI_OK or CLI_USAGE
 * after printing one error line. */
int cli_parse(const cli_spec *spec, int argc, char **argv, const char **positional, int *done);

/* Print a command's help text to stdout. */
void cli_print_help(const cli_spec *spec);

/* ---- errors and progress -------------------------------------------------- */

/* "mop: <what>: <mop_last_error() or the status text>" on stderr; returns CLI_ERROR. */
int cli_fail(mop_status st, const char *what_fmt, ...) __attribute__((format(printf, 2, 3)));

/* "mop <command>: <what> (see 'mop <command> --help')"; returns CLI_USAGE. */
int cli_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "mop: <what>" for errors that do not come from the library; returns CLI_ERROR. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* True when progress lines should be written to stderr. */
int cli_progress_enabled(void);

/* Force progress on (the --progress option). */
void cli_progress_force(void);

/* One progress line, rewritten in place on a terminal ("\r"), else one line
 * per call. No-op when progress is off. */
void cli_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Terminate a progress line started with cli_progress(). */
void cli_progress_end(void);

/* A progress meter over `total` units of long work, printing the line that
 * `mop train` prints, to stderr:
 *   terminal:  "<phase> [#####...............] <done>/<total> <detail> ETA 1m05s"
 *              rewritten in place at every report (cli_progress_end() ends it);
 *   otherwise: "<phase> <done>/<total> <detail> ETA 1m05s", one line for the
 *              first report, then at most one every `every_s` seconds, and
 *              always one for the last (done == total).
 * The ETA is the mean time per unit so far times the units left. Fill with
 * cli_meter_start() when the work starts; not thread-safe (report from the
 * thread that runs the command, e.g. in a library progress callback). */
typedef struct cli_meter {
    const char *phase; /* e.g. "prune", "train" (borrowed) */
    double t0;         /* cli_now() at cli_meter_start() */
    double every_s;    /* seconds between lines when stderr is not a terminal */
    double last;       /* cli_now() of the last such line, < 0 before the first */
} cli_meter;

void cli_meter_start(cli_meter *m, const char *phase, double every_s);

/* Report `done` of `total` units; `detail_fmt` (printf, may be "") is printed
 * between the count and the ETA, e.g. "loss %.4f lr %.2e %.0f tok/s". */
void cli_meter_report(cli_meter *m, uint64_t done, uint64_t total, const char *detail_fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "1m05s", or "2h03m" from one hour on (negative, NaN or huge: "0m00s"). */
void cli_fmt_duration(char *buf, size_t cap, double seconds);

/* ---- helpers ------------------------------------------------------------- */

/* Load a model with the given thread count (0 = all cores), reporting load
 * progress when enabled. On failure prints the error and returns NULL. */
mop_model *cli_load_model(const char *path, int32_t n_threads);

/* Check, before any long work, that a file can be created at @p path: its
 * directory exists, is a directory and is writable, and @p path is not itself
 * a directory. NULL (an optional output not given) passes. CLI_OK, or
 * CLI_ERROR after printing "mop: cannot write '<path>': ..." naming what
 * is wrong. */
int cli_check_output_path(const char *path);

/* The most cli_read_file reads (data, calibration and perplexity text), like
 * the library's own bounded readers (tokenizer.json: 1 GiB). */
#define CLI_MAX_READ_BYTES ((size_t)1 << 30)

/* Read a whole file into a malloc'ed NUL-terminated buffer; NULL after
 * printing an error, also when the file holds more than CLI_MAX_READ_BYTES
 * (an endless source such as /dev/zero fails after that many). */
char *cli_read_file(const char *path, size_t *len);

/* Monotonic clock in seconds. */
double cli_now(void);

/* Median of n values (sorts `v` in place); 0 if n == 0. */
double cli_median(double *v, size_t n);

/* The commands. */
int cli_cmd_info(int argc, char **argv);
int cli_cmd_generate(int argc, char **argv);
int cli_cmd_ppl(int argc, char **argv);
int cli_cmd_bench(int argc, char **argv);
int cli_cmd_prune(int argc, char **argv);
int cli_cmd_train(int argc, char **argv);
int cli_cmd_eval(int argc, char **argv);
int cli_cmd_gate_stats(int argc, char **argv);
int cli_cmd_fed_sim(int argc, char **argv);
int cli_cmd_serve(int argc, char **argv);

#endif
