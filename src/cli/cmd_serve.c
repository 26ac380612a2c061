/* mop serve MODEL --mixtures DIR: an OpenAI-compatible HTTP server over the
 * public API (docs/SERVING.md). This file reads the options, builds the
 * pieces (serve_mixtures.c: names to files; serve_engine.c: the batch;
 * serve_http.c: the protocol) and waits for SIGTERM/SIGINT, then drains.
 *
 * Built only when libmicrohttpd was found at configure time (meson option
 * `serve`, auto by default); otherwise `mop serve` says so and fails. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

#ifndef MOP_HAVE_SERVE

int cli_cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_error("this build has no 'serve' command: libmicrohttpd was not found when it was "
                     "configured (install libmicrohttpd-dev and reconfigure, see "
                     "docs/SERVING.md)");
}

#else

#include <pthread.h>

#include "serve_engine.h"
#include "serve_http.h"
#include "serve_mixtures.h"

/* The model file's stem: ".../SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1". */
static void file_stem(char *out, size_t cap, const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    const char *dot = strrchr(b, '.');
    if (dot && dot != b && (strcmp(dot, ".gguf") == 0 || strcmp(dot, ".safetensors") == 0))
        n = (size_t)(dot - b);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, b, n);
    out[n] = '\0';
}

int cli_cmd_serve(int argc, char **argv)
{
    const char *dir = NULL, *host = "127.0.0.1", *name = NULL;
    int32_t port = 8080, workers = 8, threads = 1, max_tokens = 256, n_ctx = 2048, queue = 16;
    int32_t max_body = 1 << 20, timeout = 120, lru = 8, drain = 30;
    const cli_opt opts[] = {
        {"mixtures", 'm', CLI_STRING, &dir, "DIR",
         "serve every DIR/NAME.safetensors as model NAME; default none (base model only)"},
        {"host", 0, CLI_STRING, &host, "ADDR", "address to listen on; default 127.0.0.1"},
        {"port", 'p', CLI_INT, &port, "N", "TCP port, 0 = any free one; default 8080"},
        {"name", 0, CLI_STRING, &name, "NAME",
         "the base model's name in requests; default the model file's stem"},
        {"workers", 'w', CLI_INT, &workers, "N",
         "requests generated at once: sequences in the continuous batch; default 8"},
        {"batch", 'b', CLI_INT, &workers, "N", "the same as --workers"},
        {"threads", 't', CLI_INT, &threads, "N",
         "compute threads of the batch's decoder, 0 = all cores; default 1"},
        {"max-tokens", 0, CLI_INT, &max_tokens, "N",
         "most tokens a request may generate; default 256"},
        {"ctx", 'c', CLI_INT, &n_ctx, "N",
         "context per request: prompt + reply tokens; default 2048"},
        {"queue", 'q', CLI_INT, &queue, "N",
         "requests waiting for a place in the batch before 429; default 16"},
        {"max-body", 0, CLI_INT, &max_body, "BYTES",
         "largest request body before 413; default 1048576"},
        {"timeout", 0, CLI_INT, &timeout, "S",
         "seconds a request may take, queue wait included (then 504); default 120"},
        {"lru", 0, CLI_INT, &lru, "N",
         "mixtures kept loaded (one shared copy each; one in use is never evicted); "
         "default 8"},
        {"drain", 0, CLI_INT, &drain, "S",
         "on SIGTERM, seconds running requests get to finish; default 30"},
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {
        "serve", "MODEL [--mixtures DIR] [options]",
        "Serve the model and its prompt mixtures over HTTP with OpenAI's API:\n"
        "POST /v1/completions, POST /v1/chat/completions (\"stream\": true for\n"
        "server-sent events), GET /v1/models, GET /health. A request picks a mixture\n"
        "by its \"model\" field. SIGTERM or SIGINT stops accepting, lets running\n"
        "requests finish (--drain) and exits. See docs/SERVING.md.",
        opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (port < 0 || port > 65535)
        return cli_usage_error("serve", "--port must be in [0, 65535], got %d", (int)port);
    if (workers < 1 || workers > 256)
        return cli_usage_error("serve", "--workers (--batch) must be in [1, 256], got %d",
                               (int)workers);
    if (threads < 0)
        return cli_usage_error("serve", "--threads must be >= 0, got %d", (int)threads);
    if (max_tokens < 1 || n_ctx < 2 || queue < 0 || max_body < 2 || timeout < 1 || lru < 1 ||
        drain < 0)
        return cli_usage_error("serve", "need --max-tokens >= 1, --ctx >= 2, --queue >= 0, "
                               "--max-body >= 2, --timeout >= 1, --lru >= 1, --drain >= 0");
    char base[SERVE_NAME_MAX + 1];
    if (name) {
        if (!name[0] || strlen(name) > SERVE_NAME_MAX)
            return cli_usage_error("serve", "--name must have 1 to %d bytes", SERVE_NAME_MAX);
        snprintf(base, sizeof base, "%s", name);
    } else {
        file_stem(base, sizeof base, pos[0]);
    }

    /* SIGTERM/SIGINT go to sigwait() below: block them before any thread
     * starts, so every thread inherits the mask */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    mop_model *model = cli_load_model(pos[0], threads);
    if (!model)
        return CLI_ERROR;
    serve_mixtures *mix = NULL;
    serve_engine *engine = NULL;
    serve_http *http = NULL;
    rc = CLI_ERROR;
    if (serve_mixtures_open(model, dir, base, &mix) != CLI_OK) /* dir NULL: base model only */
        goto out;
    /* prefill chunk: 512 tokens, more if a mixture's prompt needs it */
    int32_t longest = serve_mixtures_max_stream_len(mix);
    int32_t n_batch = longest > 512 ? longest : 512;
    serve_engine_params ep = {
        .n_workers = workers,
        .n_threads = threads,
        .n_ctx = n_ctx,
        .n_batch = n_batch < n_ctx ? n_batch : n_ctx,
        .queue_cap = queue,
        .lru = lru,
    };
    if (serve_engine_create(model, mix, &ep, &engine) != CLI_OK)
        goto out;
    serve_http_params hp = {
        .host = host,
        .port = port,
        .max_tokens = max_tokens,
        .n_ctx = n_ctx,
        .max_body = (size_t)max_body,
        .timeout_s = timeout,
        .max_connections = workers + queue + 64,
    };
    fprintf(stderr, "mop serve: model '%s', %zu mixture%s, batch of %d sequence%s, %d thread%s, "
            "context %d\n",
            base, serve_mixtures_count(mix), serve_mixtures_count(mix) == 1 ? "" : "s",
            (int)workers, workers == 1 ? "" : "s", (int)threads, threads == 1 ? "" : "s",
            (int)n_ctx);
    if (serve_http_start(&hp, model, mix, engine, &http) != CLI_OK)
        goto out;

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "mop serve: %s: draining (up to %d s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
            (int)drain);
    double until = cli_now() + drain;
    serve_http_quiesce(http);
    serve_engine_drain(engine, until); /* jobs end ... */
    serve_http_wait(http, until + 5);  /* ... and their replies reach the clients */
    rc = CLI_OK;
out:
    serve_http_stop(http);
    serve_engine_free(engine);
    serve_mixtures_free(mix);
    mop_model_free(model);
    if (rc == CLI_OK)
        fprintf(stderr, "mop serve: stopped\n");
    return rc;
}

#endif
