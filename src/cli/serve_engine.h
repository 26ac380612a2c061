/* `mop serve`: the generation engine behind the HTTP layer.
 *
 * The HTTP layer sees only this interface: submit a job (a tokenized prompt,
 * its mixture, sampling options, a deadline), receive each generated token
 * through a callback, cancel it, and get exactly one completion callback.
 * How jobs are scheduled is the engine's business: serve_engine.c runs one
 * continuous batch (one scheduler thread, one mop_decoder; every running job
 * is one of its sequences, with its own mixture), which replaced a pool of
 * workers with one mop_ctx each without changing serve_http.c.
 *
 * Callbacks run on an engine thread (or, for on_done of a job cancelled
 * while queued, on the thread that cancels it). They must not call back into
 * the engine, and should return quickly. */
#ifndef MOP_SERVE_ENGINE_H
#define MOP_SERVE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include <libmop/mop.h>

#include "serve_mixtures.h"

typedef struct serve_engine serve_engine;
typedef struct serve_job serve_job;

typedef struct serve_engine_params {
    int32_t n_workers;  /* sequences generated at once (the batch's n_seq_max) */
    int32_t n_threads;  /* compute threads of the decoder */
    int32_t n_ctx;      /* KV cache of each sequence: mixture prompt + prompt + reply */
    int32_t n_batch;    /* prefill chunk; must hold the longest mixture prompt */
    int32_t queue_cap;  /* jobs waiting beyond the running ones */
    int32_t lru;        /* mixtures kept loaded (one shared copy each; those in use stay) */
} serve_engine_params;

/* Why a job ended. */
typedef enum serve_finish {
    SERVE_FINISH_EOG = 0,       /* an end-of-generation token ("stop") */
    SERVE_FINISH_LENGTH = 1,    /* max_tokens reached, or the context is full ("length") */
    SERVE_FINISH_STOPPED = 2,   /* on_token returned non-zero (a stop string: "stop") */
    SERVE_FINISH_CANCELLED = 3, /* serve_job_cancel() */
    SERVE_FINISH_TIMEOUT = 4,   /* the deadline passed (queued or running) */
    SERVE_FINISH_ERROR = 5      /* the library failed; see status and message */
} serve_finish;

typedef struct serve_result {
    serve_finish finish;
    int32_t n_prompt;     /* prompt tokens */
    int32_t n_generated;  /* tokens passed to on_token */
    mop_status status;    /* MOP_OK unless finish == SERVE_FINISH_ERROR */
    char message[256];    /* for SERVE_FINISH_ERROR: what failed */
} serve_result;

/* Called with each generated token (not the end-of-generation one);
 * non-zero stops the job with SERVE_FINISH_STOPPED. */
typedef int (*serve_token_fn)(int32_t token, void *user);
/* Called once per submitted job, last: after it the engine never touches
 * @p user again. */
typedef void (*serve_done_fn)(const serve_result *r, void *user);

typedef struct serve_job_spec {
    int32_t mixture;            /* index in the registry, or SERVE_BASE */
    const int32_t *prompt;      /* n_prompt ids (copied) */
    int32_t n_prompt;
    int32_t max_tokens;         /* >= 0 */
    mop_sampler_params sampling;
    double deadline;            /* cli_now() seconds; the job ends with TIMEOUT after it */
    serve_token_fn on_token;
    serve_done_fn on_done;
    void *user;
} serve_job_spec;

enum { SERVE_OK = 0, SERVE_E_QUEUE_FULL = 1, SERVE_E_SHUTDOWN = 2, SERVE_E_NOMEM = 3 };

/* Create the engine on @p model (its decoder and scheduler thread).
 * CLI_OK, or CLI_ERROR after printing what failed. */
int serve_engine_create(mop_model *model, serve_mixtures *mixtures,
                        const serve_engine_params *params, serve_engine **out);

/* Queue a job. SERVE_OK with *out holding a reference (release with
 * serve_job_release()), SERVE_E_QUEUE_FULL, SERVE_E_SHUTDOWN (draining) or
 * SERVE_E_NOMEM; on_done is called only after SERVE_OK. */
int serve_engine_submit(serve_engine *e, const serve_job_spec *spec, serve_job **out);

/* Stop a job: a queued one ends now (on_done runs in this thread), a
 * running one at its next token. No-op once it has ended. */
void serve_job_cancel(serve_job *j);

/* Drop the caller's reference. */
void serve_job_release(serve_job *j);

/* Jobs queued and running now. */
void serve_engine_load(serve_engine *e, int32_t *queued, int32_t *running);

/* Refuse new jobs, let the queued and running ones finish (those still
 * running at @p deadline, a cli_now() time, are cancelled), join the
 * scheduler. */
void serve_engine_drain(serve_engine *e, double deadline);

/* Free the engine (drains first if serve_engine_drain() was not called). */
void serve_engine_free(serve_engine *e);

#endif
