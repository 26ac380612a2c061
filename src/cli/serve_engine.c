/* `mop serve`: the worker-pool engine (see serve_engine.h for the interface).
 *
 * N workers, each with its own mop_ctx on the shared (read-only) mop_model,
 * take jobs from one FIFO queue and run each to the end with mop_generate()
 * or mop_mixture_generate(). One job per worker at a time: N sequences are
 * decoded at once, each reading the weights on its own.
 *
 * Mixtures: each worker loads its OWN copy of every mixture it serves and
 * keeps the `lru` most recently used ones. A shared, prepared mop_mixture is
 * not yet safe to use from several threads (mop_mixture_generate() writes the
 * mixture's workspace; issue 12 item 1), and a per-mixture mutex would
 * serialize every request on a popular mixture, so copies it is: the cost is
 * one mixture's parameters and prompt K/V cache per worker. When mixtures
 * become shareable (and a context can hold a mixture, mop_ctx_set_mixture)
 * the copies become one shared registry; when batched decoding across
 * mixtures exists, this file is replaced by a scheduler that adds jobs to
 * one continuous batch between steps, behind the same serve_engine.h. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "serve_engine.h"

struct serve_job {
    atomic_int refs;      /* the caller's and the engine's */
    atomic_int cancelled;
    int queued;           /* in the queue (engine lock) */
    serve_engine *e;
    serve_job *next;
    serve_job_spec spec;  /* spec.prompt points to `prompt` */
    int32_t *prompt;
};

typedef struct lru_slot {
    int32_t index;        /* registry index */
    mop_mixture *m;
    uint64_t used;        /* worker clock at last use */
} lru_slot;

typedef struct worker {
    serve_engine *e;
    pthread_t thread;
    int started;
    mop_ctx *ctx;
    lru_slot *slots;
    int32_t n_slots;
    uint64_t clock;
} worker;

struct serve_engine {
    mop_model *model;
    serve_mixtures *mixtures;
    serve_engine_params p;
    pthread_mutex_t lock;
    pthread_cond_t work;  /* a job was queued, or stopping */
    pthread_cond_t idle;  /* a job ended */
    serve_job *head, *tail;
    int32_t n_queued, n_running;
    int stopping, joined;
    atomic_int abort_all; /* drain deadline passed: running jobs stop */
    worker *workers;
};

static void job_unref(serve_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        free(j->prompt);
        free(j);
    }
}

/* ---- mixtures of one worker ------------------------------------------------ */

/* The worker's copy of mixture @p index, loading it (and evicting the least
 * recently used copy) when needed. NULL with the reason in r. */
static mop_mixture *worker_mixture(worker *w, int32_t index, serve_result *r)
{
    w->clock++;
    for (int32_t i = 0; i < w->n_slots; i++)
        if (w->slots[i].m && w->slots[i].index == index) {
            w->slots[i].used = w->clock;
            return w->slots[i].m;
        }
    int32_t victim = 0;
    for (int32_t i = 0; i < w->n_slots; i++) {
        if (!w->slots[i].m) {
            victim = i;
            break;
        }
        if (w->slots[i].used < w->slots[victim].used)
            victim = i;
    }
    lru_slot *s = &w->slots[victim];
    mop_mixture_free(s->m);
    s->m = NULL;
    const char *path = serve_mixtures_path(w->e->mixtures, (size_t)index);
    mop_status st = path ? mop_mixture_load(w->e->model, path, &s->m) : MOP_E_INVALID_ARG;
    if (st != MOP_OK) {
        r->status = st;
        snprintf(r->message, sizeof r->message, "cannot load mixture '%s': %s",
                 serve_mixtures_name(w->e->mixtures, (size_t)index),
                 path ? mop_last_error() : "no such entry");
        return NULL;
    }
    /* build the prompt K/V cache now, outside any request's clock */
    if ((st = mop_mixture_prepare(w->ctx, s->m)) != MOP_OK) {
        r->status = st;
        snprintf(r->message, sizeof r->message, "cannot prepare mixture '%s': %s",
                 serve_mixtures_name(w->e->mixtures, (size_t)index), mop_last_error());
        mop_mixture_free(s->m);
        s->m = NULL;
        return NULL;
    }
    s->index = index;
    s->used = w->clock;
    return s->m;
}

/* ---- running one job ---------------------------------------------------------- */

typedef struct run_state {
    serve_job *job;
    serve_engine *e;
    int32_t n;
    serve_finish why; /* set when the callback stops the job */
    int stopped;
} run_state;

static int on_token(int32_t token, void *user)
{
    run_state *s = user;
    if (atomic_load(&s->job->cancelled) || atomic_load(&s->e->abort_all)) {
        s->why = SERVE_FINISH_CANCELLED;
        return s->stopped = 1;
    }
    s->n++;
    if (s->job->spec.on_token && s->job->spec.on_token(token, s->job->spec.user)) {
        s->why = SERVE_FINISH_STOPPED;
        return s->stopped = 1;
    }
    /* checked after the token is delivered: the reply keeps what was made */
    if (cli_now() > s->job->spec.deadline) {
        s->why = SERVE_FINISH_TIMEOUT;
        return s->stopped = 1;
    }
    return 0;
}

static void run_job(worker *w, serve_job *j, serve_result *r)
{
    const serve_job_spec *sp = &j->spec;
    r->n_prompt = sp->n_prompt;
    if (atomic_load(&j->cancelled) || atomic_load(&w->e->abort_all)) {
        r->finish = SERVE_FINISH_CANCELLED;
        return;
    }
    if (cli_now() > sp->deadline) {
        r->finish = SERVE_FINISH_TIMEOUT;
        return;
    }
    mop_mixture *m = NULL;
    if (sp->mixture >= 0 && !(m = worker_mixture(w, sp->mixture, r))) {
        r->finish = SERVE_FINISH_ERROR;
        return;
    }
    mop_sampler *sampler = NULL;
    mop_status st = mop_sampler_create(&sp->sampling, &sampler);
    if (st != MOP_OK) {
        r->finish = SERVE_FINISH_ERROR;
        r->status = st;
        snprintf(r->message, sizeof r->message, "invalid sampling options: %s", mop_last_error());
        return;
    }
    run_state s = {.job = j, .e = w->e};
    int32_t n_gen = 0;
    if (m)
        st = mop_mixture_generate(w->ctx, m, sampler, sp->prompt, sp->n_prompt, sp->max_tokens,
                                  on_token, &s, &n_gen);
    else
        st = mop_generate(w->ctx, sampler, sp->prompt, sp->n_prompt, sp->max_tokens, on_token, &s,
                          &n_gen);
    mop_sampler_free(sampler);
    r->n_generated = s.n;
    if (st != MOP_OK) {
        r->finish = SERVE_FINISH_ERROR;
        r->status = st;
        snprintf(r->message, sizeof r->message, "generation failed: %s", mop_last_error());
    } else if (s.stopped) {
        r->finish = s.why;
    } else if (s.n >= sp->max_tokens || mop_ctx_n_past(w->ctx) >= w->e->p.n_ctx) {
        r->finish = SERVE_FINISH_LENGTH;
    } else {
        r->finish = SERVE_FINISH_EOG;
    }
}

static void finish_job(serve_job *j, const serve_result *r)
{
    j->spec.on_done(r, j->spec.user);
    job_unref(j);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    serve_engine *e = w->e;
    /* start with the first mixtures loaded and prepared */
    size_t n_pre = serve_mixtures_count(e->mixtures);
    for (size_t i = 0; i < n_pre && (int32_t)i < w->n_slots; i++) {
        serve_result ignored;
        memset(&ignored, 0, sizeof ignored);
        (void)worker_mixture(w, (int32_t)i, &ignored);
    }
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->head && !e->stopping)
            pthread_cond_wait(&e->work, &e->lock);
        serve_job *j = e->head;
        if (!j) { /* stopping and nothing left */
            pthread_mutex_unlock(&e->lock);
            break;
        }
        e->head = j->next;
        if (!e->head)
            e->tail = NULL;
        j->queued = 0;
        e->n_queued--;
        e->n_running++;
        pthread_mutex_unlock(&e->lock);

        serve_result r;
        memset(&r, 0, sizeof r);
        run_job(w, j, &r);
        finish_job(j, &r);

        pthread_mutex_lock(&e->lock);
        e->n_running--;
        pthread_cond_broadcast(&e->idle);
        pthread_mutex_unlock(&e->lock);
    }
    return NULL;
}

/* ---- the interface -------------------------------------------------------- */

int serve_engine_create(mop_model *model, serve_mixtures *mixtures,
                        const serve_engine_params *params, serve_engine **out)
{
    *out = NULL;
    serve_engine *e = calloc(1, sizeof *e);
    if (!e)
        return cli_error("out of memory");
    e->model = model;
    e->mixtures = mixtures;
    e->p = *params;
    pthread_mutex_init(&e->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->work, NULL);
    pthread_cond_init(&e->idle, &ca);
    pthread_condattr_destroy(&ca);
    e->workers = calloc((size_t)params->n_workers, sizeof *e->workers);
    if (!e->workers) {
        serve_engine_free(e);
        return cli_error("out of memory");
    }
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = params->n_ctx;
    cp.n_batch = params->n_batch;
    cp.n_threads = params->n_threads;
    for (int32_t i = 0; i < params->n_workers; i++) {
        worker *w = &e->workers[i];
        w->e = e;
        mop_status st = mop_ctx_create(model, &cp, &w->ctx);
        if (st != MOP_OK) {
            serve_engine_free(e);
            return cli_fail(st, "cannot create the context of worker %d (n_ctx %d, n_batch %d)",
                            (int)i, (int)cp.n_ctx, (int)cp.n_batch);
        }
        w->n_slots = params->lru;
        if (!(w->slots = calloc((size_t)params->lru, sizeof *w->slots))) {
            serve_engine_free(e);
            return cli_error("out of memory");
        }
    }
    for (int32_t i = 0; i < params->n_workers; i++) {
        worker *w = &e->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            serve_engine_free(e);
            return cli_error("cannot start worker thread %d", (int)i);
        }
        w->started = 1;
    }
    *out = e;
    return CLI_OK;
}

int serve_engine_submit(serve_engine *e, const serve_job_spec *spec, serve_job **out)
{
    *out = NULL;
    serve_job *j = calloc(1, sizeof *j);
    int32_t *prompt = malloc((size_t)(spec->n_prompt > 0 ? spec->n_prompt : 1) * sizeof *prompt);
    if (!j || !prompt) {
        free(j);
        free(prompt);
        return SERVE_E_NOMEM;
    }
    memcpy(prompt, spec->prompt, (size_t)spec->n_prompt * sizeof *prompt);
    j->spec = *spec;
    j->spec.prompt = j->prompt = prompt;
    j->e = e;
    atomic_init(&j->refs, 2);
    atomic_init(&j->cancelled, 0);
    pthread_mutex_lock(&e->lock);
    int32_t idle = e->p.n_workers - e->n_running;
    int rc = e->stopping ? SERVE_E_SHUTDOWN
             : e->n_queued >= e->p.queue_cap + (idle > 0 ? idle : 0) ? SERVE_E_QUEUE_FULL
                                                                        : SERVE_OK;
    if (rc == SERVE_OK) {
        j->queued = 1;
        if (e->tail)
            e->tail->next = j;
        else
            e->head = j;
        e->tail = j;
        e->n_queued++;
        pthread_cond_signal(&e->work);
    }
    pthread_mutex_unlock(&e->lock);
    if (rc != SERVE_OK) {
        free(prompt);
        free(j);
        return rc;
    }
    *out = j;
    return SERVE_OK;
}

void serve_job_cancel(serve_job *j)
{
    if (!j)
        return;
    atomic_store(&j->cancelled, 1);
    serve_engine *e = j->e;
    pthread_mutex_lock(&e->lock);
    int was_queued = j->queued;
    if (was_queued) {
        serve_job **pp = &e->head, *prev = NULL;
        while (*pp && *pp != j) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp) {
            *pp = j->next;
            if (e->tail == j)
                e->tail = prev;
        }
        j->queued = 0;
        e->n_queued--;
        pthread_cond_broadcast(&e->idle);
    }
    pthread_mutex_unlock(&e->lock);
    if (was_queued) {
        serve_result r;
        memset(&r, 0, sizeof r);
        r.finish = SERVE_FINISH_CANCELLED;
        r.n_prompt = j->spec.n_prompt;
        finish_job(j, &r);
    }
}

void serve_job_release(serve_job *j)
{
    if (j)
        job_unref(j);
}

void serve_engine_load(serve_engine *e, int32_t *queued, int32_t *running)
{
    pthread_mutex_lock(&e->lock);
    *queued = e->n_queued;
    *running = e->n_running;
    pthread_mutex_unlock(&e->lock);
}

void serve_engine_drain(serve_engine *e, double deadline)
{
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_cond_broadcast(&e->work);
    while (e->n_queued + e->n_running > 0) {
        double left = deadline - cli_now();
        if (left <= 0) {
            atomic_store(&e->abort_all, 1); /* running jobs stop at their next token */
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double step = left < 0.2 ? left : 0.2;
        ts.tv_nsec += (long)(step * 1e9);
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&e->idle, &e->lock, &ts);
    }
    int join = !e->joined;
    e->joined = 1;
    pthread_mutex_unlock(&e->lock);
    if (!join)
        return;
    for (int32_t i = 0; i < e->p.n_workers; i++)
        if (e->workers[i].started)
            pthread_join(e->workers[i].thread, NULL);
}

void serve_engine_free(serve_engine *e)
{
    if (!e)
        return;
    if (e->workers) {
        int any = 0;
        for (int32_t i = 0; i < e->p.n_workers; i++)
            any |= e->workers[i].started;
        if (any)
            serve_engine_drain(e, cli_now());
        for (int32_t i = 0; i < e->p.n_workers; i++) {
            worker *w = &e->workers[i];
            for (int32_t k = 0; k < w->n_slots; k++)
                mop_mixture_free(w->slots[k].m);
            free(w->slots);
            mop_ctx_free(w->ctx);
        }
        free(e->workers);
    }
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->lock);
    free(e);
}
