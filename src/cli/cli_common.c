/* Option parsing, error lines, progress output and small helpers for `mop`. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_common.h"

/* ---- options ------------------------------------------------------------- */

static int parse_value(const cli_spec *spec, const cli_opt *o, const char *text)
{
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case CLI_INT: {
        long v = strtol(text, &end, 10);
        if (end == text || *end != '\0' || errno || v < INT32_MIN || v > INT32_MAX)
            return cli_usage_error(spec->command, "--%s: '%s' is not an integer", o->name, text);
        *(int32_t *)o->dest = (int32_t)v;
        return CLI_OK;
    }
    case CLI_FLOAT: {
        float v = strtof(text, &end);
        if (end == text || *end != '\0' || errno || !isfinite(v))
            return cli_usage_error(spec->command, "--%s: '%s' is not a number", o->name, text);
        *(float *)o->dest = v;
        return CLI_OK;
    }
    case CLI_U64: {
        unsigned long long v = strtoull(text, &end, 10);
        if (end == text || *end != '\0' || errno || text[0] == '-')
            return cli_usage_error(spec->command, "--%s: '%s' is not a non-negative integer",
                                   o->name, text);
        *(uint64_t *)o->dest = (uint64_t)v;
        return CLI_OK;
    }
    case CLI_STRING:
        *(const char **)o->dest = text;
        return CLI_OK;
    case CLI_FLAG:
        break;
    }
    return cli_usage_error(spec->command, "--%s takes no value", o->name);
}

static const cli_opt *find_long(const cli_spec *spec, const char *name, size_t len)
{
    for (const cli_opt *o = spec->opts; o && o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

static const cli_opt *find_short(const cli_spec *spec, char c)
{
    for (const cli_opt *o = spec->opts; o && o->name; o++)
        if (o->short_name && o->short_name == c)
            return o;
    return NULL;
}

void cli_print_help(const cli_spec *spec)
{
    printf("usage: mop %s %s\n\n%s\n\noptions:\n", spec->command, spec->usage,
           spec->description);
    char left[64];
    for (const cli_opt *o = spec->opts; o && o->name; o++) {
        if (o->short_name)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->short_name, o->name,
                     o->metavar ? " " : "", o->metavar ? o->metavar : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
        printf("  %-24s %s\n", left, o->help);
    }
    printf("  %-24s %s\n", "    --progress", "show progress on stderr even when it is not a terminal");
    printf("  %-24s %s\n", "-h, --help", "show this help and exit");
}

int cli_parse(const cli_spec *spec, int argc, char **argv, const char **positional, int *done)
{
    int n_pos = 0, only_positional = 0;
    *done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            if (n_pos >= spec->n_positional)
                return cli_usage_error(spec->command, "unexpected argument '%s'", a);
            positional[n_pos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_print_help(spec);
            *done = 1;
            return CLI_OK;
        }
        if (strcmp(a, "--progress") == 0) {
            cli_progress_force();
            continue;
        }
        const cli_opt *o;
        const char *inline_value = NULL;
        if (a[1] == '-') {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(spec, name, len);
            if (eq)
                inline_value = eq + 1;
        } else {
            o = a[2] == '\0' ? find_short(spec, a[1]) : NULL;
        }
        if (!o)
            return cli_usage_error(spec->command, "unknown option '%s'", a);
        if (o->kind == CLI_FLAG) {
            if (inline_value)
                return cli_usage_error(spec->command, "--%s takes no value", o->name);
            *(int32_t *)o->dest = 1;
            continue;
        }
        if (!inline_value) {
            if (i + 1 >= argc)
                return cli_usage_error(spec->command, "--%s needs a value (%s)", o->name,
                                       o->metavar ? o->metavar : "VALUE");
            inline_value = argv[++i];
        }
        int rc = parse_value(spec, o, inline_value);
        if (rc != CLI_OK)
            return rc;
    }
    if (n_pos < spec->n_positional)
        return cli_usage_error(spec->command, "missing argument (usage: mop %s %s)",
                               spec->command, spec->usage);
    return CLI_OK;
}

/* ---- errors -------------------------------------------------------------- */

/* Write `s` with newlines flattened so that every error stays on one line. */
static void put_one_line(const char *s)
{
    for (; *s; s++)
        fputc(*s == '\n' || *s == '\r' ? ' ' : *s, stderr);
}

int cli_fail(mop_status st, const char *what_fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, what_fmt);
    vsnprintf(what, sizeof what, what_fmt, ap);
    va_end(ap);
    const char *detail = mop_last_error();
    if (!detail || !detail[0])
        detail = mop_status_str(st);
    cli_progress_end();
    fputs("mop: ", stderr);
    put_one_line(what);
    fputs(": ", stderr);
    put_one_line(detail);
    fputc('\n', stderr);
    return CLI_ERROR;
}

int cli_usage_error(const char *command, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (command)
        fprintf(stderr, "mop %s: ", command);
    else
        fputs("mop: ", stderr);
    put_one_line(what);
    if (command)
        fprintf(stderr, " (see 'mop %s --help')\n", command);
    else
        fputs(" (see 'mop --help')\n", stderr);
    return CLI_USAGE;
}

int cli_error(const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    cli_progress_end();
    fputs("mop: ", stderr);
    put_one_line(what);
    fputc('\n', stderr);
    return CLI_ERROR;
}

/* ---- progress ------------------------------------------------------------ */

static int progress_forced;
static int progress_open; /* a "\r" line is on the terminal */

void cli_progress_force(void)
{
    progress_forced = 1;
}

int cli_progress_enabled(void)
{
    return progress_forced || isatty(STDERR_FILENO);
}

void cli_progress(const char *fmt, ...)
{
    if (!cli_progress_enabled())
        return;
    int tty = isatty(STDERR_FILENO);
    va_list ap;
    va_start(ap, fmt);
    if (tty)
        fputs("\r\033[K", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (tty)
        progress_open = 1;
    else
        fputc('\n', stderr);
    fflush(stderr);
}

void cli_progress_end(void)
{
    if (progress_open) {
        fputc('\n', stderr);
        progress_open = 0;
    }
}

void cli_fmt_duration(char *buf, size_t cap, double s)
{
    if (!(s >= 0.0) || s > 1e7)
        s = 0.0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

void cli_meter_start(cli_meter *m, const char *phase, double every_s)
{
    m->phase = phase;
    m->t0 = cli_now();
    m->every_s = every_s;
    m->last = -1.0;
}

void cli_meter_report(cli_meter *m, uint64_t done, uint64_t total, const char *detail_fmt, ...)
{
    const int tty = isatty(STDERR_FILENO);
    const double now = cli_now();
    if (!tty && !(done >= total || m->last < 0.0 || now - m->last >= m->every_s))
        return;
    char detail[256];
    va_list ap;
    va_start(ap, detail_fmt);
    vsnprintf(detail, sizeof detail, detail_fmt, ap);
    va_end(ap);
    const char *sep = detail[0] ? " " : "";
    char eta[32];
    const double elapsed = now - m->t0;
    cli_fmt_duration(eta, sizeof eta,
                     done > 0 && done <= total ? elapsed / (double)done * (double)(total - done)
                                               : 0.0);
    if (tty) {
        char bar[21];
        const int filled = total > 0 ? (int)(20.0 * (double)done / (double)total) : 20;
        for (int i = 0; i < 20; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[20] = '\0';
        cli_progress("%s [%s] %llu/%llu%s%s ETA %s", m->phase, bar, (unsigned long long)done,
                     (unsigned long long)total, sep, detail, eta);
    } else {
        fprintf(stderr, "%s %llu/%llu%s%s ETA %s\n", m->phase, (unsigned long long)done,
                (unsigned long long)total, sep, detail, eta);
        fflush(stderr);
        m->last = now;
    }
}

/* ---- helpers ------------------------------------------------------------- */

static int load_progress(uint64_t done, uint64_t total, void *user)
{
    (void)user;
    /* on a terminal the line is rewritten; in a log only the last one counts */
    if (done == total || (done % 16 == 0 && isatty(STDERR_FILENO)))
        cli_progress("loading: %llu/%llu tensors", (unsigned long long)done,
                     (unsigned long long)total);
    return 0;
}

mop_model *cli_load_model(const char *path, int32_t n_threads)
{
    mop_model_params mp;
    mop_model_params_init(&mp);
    mp.n_threads = n_threads;
    if (cli_progress_enabled())
        mp.progress = load_progress;
    mop_model *model = NULL;
    mop_status st = mop_model_load(path, &mp, &model);
    cli_progress_end();
    if (st != MOP_OK) {
        cli_fail(st, "cannot load model '%s'", path);
        return NULL;
    }
    return model;
}

int cli_check_output_path(const char *path)
{
    if (!path)
        return CLI_OK;
    if (!path[0])
        return cli_error("cannot write '': the output path is empty");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return cli_error("cannot write '%s': it is a directory", path);
    /* the directory part: everything before the last '/', "/" for "/x", "." for "x" */
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        snprintf(dir, sizeof dir, ".");
    } else {
        size_t n = (size_t)(slash - path);
        if (n == 0)
            n = 1; /* "/x": the root */
        if (n >= sizeof dir)
            return cli_error("cannot write '%s': path too long", path);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    if (stat(dir, &st) != 0)
        return cli_error("cannot write '%s': directory '%s': %s", path, dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return cli_error("cannot write '%s': '%s' is not a directory", path, dir);
    if (access(dir, W_OK | X_OK) != 0)
        return cli_error("cannot write '%s': directory '%s': %s", path, dir, strerror(errno));
    return CLI_OK;
}

char *cli_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    /* A regular file that is too large fails at once; anything else (a pipe,
     * /dev/zero) is read until it passes the cap, never beyond it. */
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size > CLI_MAX_READ_BYTES) {
        fclose(f);
        cli_error("'%s' is %llu bytes; the mop tool reads input files of at most %llu bytes "
                  "(%u MiB)", path, (unsigned long long)st.st_size,
                  (unsigned long long)CLI_MAX_READ_BYTES, (unsigned)(CLI_MAX_READ_BYTES >> 20));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    int too_big = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1)
            break;
        if (n > CLI_MAX_READ_BYTES) {
            too_big = 1;
            break;
        }
        /* grow, but to no more than the cap + 2 (one byte to see the cap
         * passed, one for the terminator) */
        size_t next = cap * 2 > CLI_MAX_READ_BYTES + 2 ? CLI_MAX_READ_BYTES + 2 : cap * 2;
        char *grown = realloc(buf, next);
        if (!grown) {
            free(buf);
            buf = NULL;
        } else {
            buf = grown;
            cap = next;
        }
    }
    const char *why = !buf ? "out of memory" : ferror(f) ? "read error" : NULL;
    fclose(f);
    if (why || too_big) {
        free(buf);
        if (too_big)
            cli_error("cannot read '%s': more than %llu bytes (%u MiB), the most the mop tool "
                      "reads from one input file", path, (unsigned long long)CLI_MAX_READ_BYTES,
                      (unsigned)(CLI_MAX_READ_BYTES >> 20));
        else
            cli_error("cannot read '%s': %s", path, why);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, size_t n)
{
    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- data commands (cli_common.h) ---------------------------------------- */

int cli_check_data_opts(const char *command, int32_t batch, int32_t max_len, int32_t n_threads)
{
    if (batch < 1 || max_len < 2 || n_threads < 0)
        return cli_usage_error(command, "--batch must be >= 1, --max-len >= 2, --threads >= 0");
    return CLI_OK;
}

int cli_load_mixture(mop_model *model, const char *path, mop_mixture **out,
                     mop_mixture_params *params)
{
    *out = NULL;
    mop_mixture *m = NULL;
    mop_status st = mop_mixture_load(model, path, &m);
    if (st != MOP_OK)
        return cli_fail(st, "cannot load mixture '%s'", path);
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    if ((st = mop_mixture_get_params(m, params)) != MOP_OK) {
        mop_mixture_free(m);
        return cli_fail(st, "cannot read the mixture's parameters");
    }
    *out = m;
    return CLI_OK;
}
