/* mop ppl MODEL FILE: perplexity of a text in non-overlapping windows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int ppl_progress(uint64_t done, uint64_t total, void *user)
{
    const double *t0 = user;
    double dt = cli_now() - *t0;
    cli_progress("ppl: window %llu/%llu (%.1f s)", (unsigned long long)done,
                 (unsigned long long)total, dt);
    return 0;
}

int cli_cmd_ppl(int argc, char **argv)
{
    int32_t window = 512, n_threads = 0, max_tokens = 0;
    const cli_opt opts[] = {
        {"ctx", 'c', CLI_INT, &window, "N", "window (and context) size in tokens; default 512"},
        {"threads", 't', CLI_INT, &n_threads, "N", "compute threads, 0 = all cores; default 0"},
        {"max-tokens", 0, CLI_INT, &max_tokens, "N", "score only the first N tokens; default all"},
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {"ppl", "MODEL FILE [options]",
                           "Tokenize FILE (UTF-8 text, BOS prepended if the model uses one), cut it\n"
                           "into windows of N tokens and score each from an empty cache; the first\n"
                           "token of every window is context only. The last line of stdout is\n"
                           "'perplexity: X' with X = exp(total NLL / scored tokens).",
                           opts, 2};
    const char *pos[2];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (window < 2)
        return cli_usage_error("ppl", "--ctx must be >= 2, got %d", (int)window);
    if (n_threads < 0 || max_tokens < 0)
        return cli_usage_error("ppl", "--threads and --max-tokens must be >= 0");

    size_t len = 0;
    char *text = cli_read_file(pos[1], &len);
    if (!text)
        return CLI_ERROR;
    mop_model *model = cli_load_model(pos[0], n_threads);
    if (!model) {
        free(text);
        return CLI_ERROR;
    }
    mop_ctx *ctx = NULL;
    int32_t *tokens = NULL;
    rc = CLI_ERROR;

    size_t n = 0;
    mop_status st = mop_tokenize(model, text, len, MOP_TOKENIZE_ADD_BOS, NULL, 0, &n);
    if (st == MOP_OK || st == MOP_E_RANGE) {
        tokens = malloc((n ? n : 1) * sizeof *tokens);
        if (!tokens) {
            rc = cli_error("out of memory");
            goto out;
        }
        st = mop_tokenize(model, text, len, MOP_TOKENIZE_ADD_BOS, tokens, n, &n);
    }
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot tokenize '%s'", pos[1]);
        goto out;
    }
    if (max_tokens > 0 && n > (size_t)max_tokens)
        n = (size_t)max_tokens;
    if (n < 2) {
        rc = cli_error("'%s' has %zu token(s); perplexity needs at least 2", pos[1], n);
        goto out;
    }
    if (n > INT32_MAX) {
        rc = cli_error("'%s' has %zu tokens; use --max-tokens", pos[1], n);
        goto out;
    }

    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_threads = n_threads;
    cp.n_ctx = window;
    if (cp.n_batch > window)
        cp.n_batch = window;
    st = mop_ctx_create(model, &cp, &ctx);
    if (st != MOP_OK) {
        rc = cli_fail(st, "cannot create a context of %d tokens", (int)window);
        goto out;
    }
    /* as mop_ctx_perplexity cuts them: a trailing window of one token scores nothing */
    int32_t n_windows = (int32_t)(n / (size_t)window) + (n % (size_t)window >= 2 ? 1 : 0);
    printf("tokens: %zu\nwindow: %d\nwindows: %d\nscored: %zu\n", n, (int)window,
           (int)n_windows, n - (n % (size_t)window == 1 ? 1u : 0u) - (size_t)n_windows);
    fflush(stdout);

    double ppl = 0.0, t0 = cli_now();
    st = mop_ctx_perplexity(ctx, tokens, (int32_t)n, window,
                            cli_progress_enabled() ? ppl_progress : NULL, &t0, &ppl);
    cli_progress_end();
    if (st != MOP_OK) {
        rc = cli_fail(st, "perplexity of '%s' failed", pos[1]);
        goto out;
    }
    printf("perplexity: %.6f\n", ppl);
    rc = CLI_OK;
out:
    mop_ctx_free(ctx);
    free(tokens);
    mop_model_free(model);
    free(text);
    return rc;
}
