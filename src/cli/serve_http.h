/* `mop serve`: the HTTP side (libmicrohttpd, one thread per connection).
 * Routes OpenAI-style requests to the engine and writes OpenAI-shaped
 * replies, server-sent events and errors. */
#ifndef MOP_SERVE_HTTP_H
#define MOP_SERVE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <libmop/mop.h>

#include "serve_engine.h"
#include "serve_mixtures.h"

typedef struct serve_http_params {
    const char *host;       /* address to listen on, e.g. "127.0.0.1" or "::1" */
    int32_t port;           /* 0 = any free port (the one chosen is printed) */
    int32_t max_tokens;     /* most tokens a request may ask for */
    int32_t n_ctx;          /* context of each sequence (the engine's) */
    size_t max_body;        /* request body limit in bytes */
    double timeout_s;       /* a request's limit, queue wait included */
    int32_t max_connections;
} serve_http_params;

typedef struct serve_http serve_http;

/* Listen and serve. CLI_OK with "mop serve: listening on http://HOST:PORT"
 * on stderr, or CLI_ERROR after printing why. */
int serve_http_start(const serve_http_params *p, mop_model *model, serve_mixtures *mixtures,
                     serve_engine *engine, serve_http **out);

/* Stop accepting connections; requests on open connections get 503. */
void serve_http_quiesce(serve_http *h);

/* Wait until every request received so far has its reply sent (the last
 * bytes of a stream included), or until @p deadline (a cli_now() time). */
void serve_http_wait(serve_http *h, double deadline);

/* Close every connection and free (after the engine has drained). */
void serve_http_stop(serve_http *h);

#endif
