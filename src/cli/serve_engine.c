/* `mop serve`: the continuous-batching engine (see serve_engine.h for the
 * interface).
 *
 * One scheduler thread owns one mop_decoder (n_seq_max = n_workers, the
 * decoder's own pool of n_threads compute threads) and runs every admitted
 * job as one sequence of it. Each turn of its loop:
 *   1. admit: move queued jobs (FIFO) into free sequence slots; a job that
 *      was cancelled or is past its deadline ends here; the others get their
 *      mixture (shared, see below), their own sampler (seeded from the
 *      request, as mop_generate would be) and a decoder sequence;
 *   2. drop running sequences that were cancelled (or the drain deadline
 *      passed) since the last step;
 *   3. step: one mop_decoder_step() with the new jobs' prompts (their
 *      prefill, gated on the prompt) and one token for every running
 *      sequence (one batched pass over the layers);
 *   4. per sequence: sample from its logits, then exactly mop_generate()'s
 *      loop: an end-of-generation token ends it (EOG, not delivered);
 *      otherwise the token is delivered through on_token (cancel is checked
 *      first, the deadline after), and max_tokens or a full context ends it
 *      (LENGTH); a sequence that goes on feeds that token in the next step.
 *      Finished sequences are removed between steps.
 * With greedy sampling each reply is the one mop_generate() gives alone,
 * up to the decoder's float tolerance against one context per sequence.
 *
 * Mixtures: one shared loaded copy per registry entry, used by every
 * sequence on it (a mixture is read-only while it is decoded; mop_gate.h).
 * Only the scheduler thread touches them, so they need no lock. The `lru`
 * most recently used stay loaded, their prompt K/V cache built
 * (mop_mixture_prepare(), on a small context kept for that); a mixture is
 * evicted only when no running sequence uses it, so while more than `lru`
 * distinct mixtures are running, more stay loaded until their sequences end.
 * A load (and prepare) runs on the scheduler thread between steps, so it
 * delays the running sequences by that much (a few milliseconds for a small
 * mixture file). */
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

/* A loaded mixture (scheduler thread only). */
typedef struct mix_slot {
    int32_t index;        /* registry index */
    mop_mixture *m;
    int32_t users;        /* running sequences on it */
    uint64_t used;        /* engine clock at last admission */
} mix_slot;

/* A running job: one decoder sequence (scheduler thread only). */
typedef struct seq_state {
    serve_job *j;         /* NULL: the slot is free */
    int32_t id;           /* decoder sequence */
    mix_slot *mix;        /* NULL: the base model */
    mop_sampler *sampler;
    int32_t n_gen;        /* tokens delivered */
    int32_t next;         /* token to feed at the next step (after the prefill) */
    int prefilled;
} seq_state;

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
    pthread_t thread;
    int started;

    /* the scheduler's own (no lock) */
    mop_decoder *dec;
    int32_t n_vocab;
    mop_ctx *prep;        /* for mop_mixture_prepare() */
    mix_slot **mix_ptr;   /* n_mix loaded, cap_mix allocated (each slot stays put) */
    int32_t n_mix, cap_mix;
    uint64_t clock;
    seq_state *seqs;      /* n_workers */
    /* one step's batch, n_workers each */
    int32_t *b_seq, *b_n, *b_slot;
    const int32_t **b_tok;
};

static void job_unref(serve_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        free(j->prompt);
        free(j);
    }
}

static void finish_job(serve_job *j, const serve_result *r)
{
    j->spec.on_done(r, j->spec.user);
    job_unref(j);
}

/* ---- shared mixtures (scheduler thread) ---------------------------------------- */

/* Free least recently used mixtures no sequence uses until at most @p keep
 * stay loaded. */
static void mix_trim(serve_engine *e, int32_t keep)
{
    while (e->n_mix > keep) {
        int32_t victim = -1;
        for (int32_t i = 0; i < e->n_mix; i++)
            if (e->mix_ptr[i]->users == 0 &&
                (victim < 0 || e->mix_ptr[i]->used < e->mix_ptr[victim]->used))
                victim = i;
        if (victim < 0)
            return; /* all in use: they go when their sequences end */
        mix_slot *s = e->mix_ptr[victim];
        mop_mixture_free(s->m);
        free(s);
        e->mix_ptr[victim] = e->mix_ptr[--e->n_mix];
    }
}

/* The shared mixture of registry entry @p index, loading and preparing it
 * when needed (and evicting unused ones beyond the LRU capacity). NULL with
 * the reason in r. */
static mix_slot *mix_get(serve_engine *e, int32_t index, serve_result *r)
{
    e->clock++;
    for (int32_t i = 0; i < e->n_mix; i++)
        if (e->mix_ptr[i]->index == index) {
            e->mix_ptr[i]->used = e->clock;
            return e->mix_ptr[i];
        }
    mix_trim(e, e->p.lru - 1);
    if (e->n_mix == e->cap_mix) {
        int32_t nc = e->cap_mix ? e->cap_mix * 2 : 16;
        mix_slot **np = realloc(e->mix_ptr, (size_t)nc * sizeof *np);
        if (!np) {
            r->status = MOP_E_NOMEM;
            snprintf(r->message, sizeof r->message, "out of memory");
            return NULL;
        }
        e->mix_ptr = np;
        e->cap_mix = nc;
    }
    mix_slot *s = calloc(1, sizeof *s);
    if (!s) {
        r->status = MOP_E_NOMEM;
        snprintf(r->message, sizeof r->message, "out of memory");
        return NULL;
    }
    const char *path = serve_mixtures_path(e->mixtures, (size_t)index);
    mop_status st = path ? mop_mixture_load(e->model, path, &s->m) : MOP_E_INVALID_ARG;
    if (st != MOP_OK) {
        r->status = st;
        snprintf(r->message, sizeof r->message, "cannot load mixture '%s': %s",
                 serve_mixtures_name(e->mixtures, (size_t)index),
                 path ? mop_last_error() : "no such entry");
        free(s);
        return NULL;
    }
    /* build the prompt K/V cache now, before its first sequence's prefill */
    if ((st = mop_mixture_prepare(e->prep, s->m)) != MOP_OK) {
        r->status = st;
        snprintf(r->message, sizeof r->message, "cannot prepare mixture '%s': %s",
                 serve_mixtures_name(e->mixtures, (size_t)index), mop_last_error());
        mop_mixture_free(s->m);
        free(s);
        return NULL;
    }
    s->index = index;
    s->used = e->clock;
    e->mix_ptr[e->n_mix++] = s;
    return s;
}

/* ---- sequences (scheduler thread) ----------------------------------------------- */

/* End running sequence @p s with @p r (finish, status, message set). */
static void seq_end(serve_engine *e, seq_state *s, serve_result *r)
{
    serve_job *j = s->j;
    r->n_prompt = j->spec.n_prompt;
    r->n_generated = s->n_gen;
    if (mop_decoder_remove(e->dec, s->id) != MOP_OK && r->finish != SERVE_FINISH_ERROR) {
        r->finish = SERVE_FINISH_ERROR;
        r->status = MOP_E_STATE;
        snprintf(r->message, sizeof r->message, "cannot end the sequence: %s", mop_last_error());
    }
    mop_sampler_free(s->sampler);
    if (s->mix) {
        s->mix->users--;
        mix_trim(e, e->p.lru);
    }
    memset(s, 0, sizeof *s);
    finish_job(j, r);
    pthread_mutex_lock(&e->lock);
    e->n_running--;
    pthread_cond_broadcast(&e->idle);
    pthread_mutex_unlock(&e->lock);
}

static void seq_end_with(serve_engine *e, seq_state *s, serve_finish why)
{
    serve_result r;
    memset(&r, 0, sizeof r);
    r.finish = why;
    seq_end(e, s, &r);
}

/* A job that ends before it joins (it counts as running since it left the queue). */
static void job_end_early(serve_engine *e, serve_job *j, serve_result *r)
{
    r->n_prompt = j->spec.n_prompt;
    finish_job(j, r);
    pthread_mutex_lock(&e->lock);
    e->n_running--;
    pthread_cond_broadcast(&e->idle);
    pthread_mutex_unlock(&e->lock);
}

/* Give job @p j sequence slot @p s: its mixture, sampler and decoder
 * sequence; or end it (cancelled, timed out, zero tokens, an error). */
static void seq_start(serve_engine *e, seq_state *s, serve_job *j)
{
    const serve_job_spec *sp = &j->spec;
    serve_result r;
    memset(&r, 0, sizeof r);
    if (atomic_load(&j->cancelled) || atomic_load(&e->abort_all)) {
        r.finish = SERVE_FINISH_CANCELLED;
        job_end_early(e, j, &r);
        return;
    }
    if (cli_now() > sp->deadline) {
        r.finish = SERVE_FINISH_TIMEOUT;
        job_end_early(e, j, &r);
        return;
    }
    if (sp->max_tokens == 0) { /* mop_generate() would stop before the first token */
        r.finish = SERVE_FINISH_LENGTH;
        job_end_early(e, j, &r);
        return;
    }
    mix_slot *mix = NULL;
    if (sp->mixture >= 0 && !(mix = mix_get(e, sp->mixture, &r))) {
        r.finish = SERVE_FINISH_ERROR;
        job_end_early(e, j, &r);
        return;
    }
    mop_sampler *sampler = NULL;
    mop_status st = mop_sampler_create(&sp->sampling, &sampler);
    if (st != MOP_OK) {
        r.finish = SERVE_FINISH_ERROR;
        r.status = st;
        snprintf(r.message, sizeof r.message, "invalid sampling options: %s", mop_last_error());
        job_end_early(e, j, &r);
        return;
    }
    int32_t id = -1;
    if ((st = mop_decoder_add(e->dec, mix ? mix->m : NULL, &id)) != MOP_OK) {
        r.finish = SERVE_FINISH_ERROR;
        r.status = st;
        snprintf(r.message, sizeof r.message, "cannot start the sequence: %s", mop_last_error());
        mop_sampler_free(sampler);
        job_end_early(e, j, &r);
        return;
    }
    if (mix)
        mix->users++;
    *s = (seq_state){.j = j, .id = id, .mix = mix, .sampler = sampler};
}

/* After a step that fed sequence @p s: draw its next token and go on, or
 * end it; the order of the checks is mop_generate()'s with the worker
 * engine's on_token (cancel, deliver, deadline). */
static void seq_after_step(serve_engine *e, seq_state *s)
{
    serve_job *j = s->j;
    const serve_job_spec *sp = &j->spec;
    const float *logits = NULL;
    serve_result r;
    memset(&r, 0, sizeof r);
    int32_t tok = 0;
    mop_status st = mop_decoder_get_logits(e->dec, s->id, &logits);
    if (st == MOP_OK)
        st = mop_sampler_sample(s->sampler, logits, e->n_vocab, &tok);
    if (st != MOP_OK) {
        r.finish = SERVE_FINISH_ERROR;
        r.status = st;
        snprintf(r.message, sizeof r.message, "generation failed: %s", mop_last_error());
        seq_end(e, s, &r);
        return;
    }
    if (mop_model_is_eog(e->model, tok)) {
        seq_end_with(e, s, SERVE_FINISH_EOG);
        return;
    }
    if (atomic_load(&j->cancelled) || atomic_load(&e->abort_all)) {
        seq_end_with(e, s, SERVE_FINISH_CANCELLED);
        return;
    }
    s->n_gen++;
    if (sp->on_token && sp->on_token(tok, sp->user)) {
        seq_end_with(e, s, SERVE_FINISH_STOPPED);
        return;
    }
    /* checked after the token is delivered: the reply keeps what was made */
    if (cli_now() > sp->deadline) {
        seq_end_with(e, s, SERVE_FINISH_TIMEOUT);
        return;
    }
    if (s->n_gen >= sp->max_tokens || mop_decoder_n_past(e->dec, s->id) >= e->p.n_ctx) {
        seq_end_with(e, s, SERVE_FINISH_LENGTH);
        return;
    }
    s->next = tok;
}

/* ---- the scheduler ---------------------------------------------------------------- */

static void *scheduler_main(void *arg)
{
    serve_engine *e = arg;
    const int32_t S = e->p.n_workers;
    /* start with the first mixtures loaded and prepared */
    size_t n_pre = serve_mixtures_count(e->mixtures);
    for (size_t i = 0; i < n_pre && (int32_t)i < e->p.lru; i++) {
        serve_result ignored;
        memset(&ignored, 0, sizeof ignored);
        (void)mix_get(e, (int32_t)i, &ignored);
    }
    for (;;) {
        int32_t n_live = 0;
        for (int32_t i = 0; i < S; i++)
            n_live += e->seqs[i].j != NULL;

        /* 1. admit queued jobs into free slots (wait when there is nothing to do) */
        serve_job *admitted = NULL, **tail = &admitted;
        pthread_mutex_lock(&e->lock);
        while (n_live == 0 && !e->head && !e->stopping)
            pthread_cond_wait(&e->work, &e->lock);
        if (n_live == 0 && !e->head) { /* stopping and nothing left */
            pthread_mutex_unlock(&e->lock);
            break;
        }
        int32_t n_free = S - n_live;
        while (e->head && n_free > 0) {
            serve_job *j = e->head;
            e->head = j->next;
            if (!e->head)
                e->tail = NULL;
            j->queued = 0;
            j->next = NULL;
            e->n_queued--;
            e->n_running++;
            n_free--;
            *tail = j;
            tail = &j->next;
        }
        pthread_mutex_unlock(&e->lock);
        for (int32_t i = 0; i < S && admitted; i++) {
            if (e->seqs[i].j)
                continue;
            serve_job *j = admitted;
            admitted = j->next;
            j->next = NULL;
            seq_start(e, &e->seqs[i], j);
        }

        /* 2. drop cancelled sequences; 3. build and run the step */
        int32_t n = 0;
        for (int32_t i = 0; i < S; i++) {
            seq_state *s = &e->seqs[i];
            if (!s->j)
                continue;
            if (atomic_load(&s->j->cancelled) || atomic_load(&e->abort_all)) {
                seq_end_with(e, s, SERVE_FINISH_CANCELLED);
                continue;
            }
            e->b_seq[n] = s->id;
            e->b_slot[n] = i;
            if (s->prefilled) {
                e->b_n[n] = 1;
                e->b_tok[n] = &s->next;
            } else {
                e->b_n[n] = s->j->spec.n_prompt;
                e->b_tok[n] = s->j->spec.prompt;
            }
            n++;
        }
        if (n == 0)
            continue;
        mop_decoder_batch b = {.struct_size = sizeof b, .n = n, .seq = e->b_seq,
                               .n_tokens = e->b_n, .tokens = e->b_tok};
        mop_status st = mop_decoder_step(e->dec, &b);
        if (st != MOP_OK) {
            /* nothing is known about which sequence failed: end them all */
            serve_result r;
            memset(&r, 0, sizeof r);
            r.finish = SERVE_FINISH_ERROR;
            r.status = st;
            snprintf(r.message, sizeof r.message, "generation failed: %s", mop_last_error());
            for (int32_t k = 0; k < n; k++) {
                serve_result rk = r;
                seq_end(e, &e->seqs[e->b_slot[k]], &rk);
            }
            continue;
        }
        /* 4. sample, deliver, end or go on */
        for (int32_t k = 0; k < n; k++) {
            seq_state *s = &e->seqs[e->b_slot[k]];
            s->prefilled = 1;
            seq_after_step(e, s);
        }
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
    const size_t S = (size_t)params->n_workers;
    e->seqs = calloc(S, sizeof *e->seqs);
    e->b_seq = calloc(S, sizeof *e->b_seq);
    e->b_n = calloc(S, sizeof *e->b_n);
    e->b_slot = calloc(S, sizeof *e->b_slot);
    e->b_tok = calloc(S, sizeof *e->b_tok);
    if (!e->seqs || !e->b_seq || !e->b_n || !e->b_slot || !e->b_tok) {
        serve_engine_free(e);
        return cli_error("out of memory");
    }
    mop_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = sizeof mi;
    mop_status st = mop_model_get_info(model, &mi);
    if (st != MOP_OK) {
        serve_engine_free(e);
        return cli_fail(st, "cannot read the model's shape");
    }
    e->n_vocab = mi.n_vocab;
    mop_decoder_params dp;
    mop_decoder_params_init(&dp);
    dp.n_seq_max = params->n_workers;
    dp.n_ctx = params->n_ctx;
    dp.n_batch = params->n_batch;
    dp.n_threads = params->n_threads;
    st = mop_decoder_create(model, &dp, &e->dec);
    if (st != MOP_OK) {
        serve_engine_free(e);
        return cli_fail(st, "cannot create the decoder (%d sequences, n_ctx %d, n_batch %d)",
                        (int)dp.n_seq_max, (int)dp.n_ctx, (int)dp.n_batch);
    }
    /* preparing a mixture runs its K·P prompt tokens once: n_batch rows */
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = params->n_batch;
    cp.n_batch = params->n_batch;
    cp.n_threads = params->n_threads;
    if ((st = mop_ctx_create(model, &cp, &e->prep)) != MOP_OK) {
        serve_engine_free(e);
        return cli_fail(st, "cannot create the context that prepares mixtures (n_batch %d)",
                        (int)cp.n_batch);
    }
    if (pthread_create(&e->thread, NULL, scheduler_main, e) != 0) {
        serve_engine_free(e);
        return cli_error("cannot start the scheduler thread");
    }
    e->started = 1;
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
            atomic_store(&e->abort_all, 1); /* running jobs stop before their next step */
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
    int join = !e->joined && e->started;
    e->joined = 1;
    pthread_mutex_unlock(&e->lock);
    if (join)
        pthread_join(e->thread, NULL);
}

void serve_engine_free(serve_engine *e)
{
    if (!e)
        return;
    if (e->started)
        serve_engine_drain(e, cli_now());
    for (int32_t i = 0; i < e->n_mix; i++) {
        mop_mixture_free(e->mix_ptr[i]->m);
        free(e->mix_ptr[i]);
    }
    free(e->mix_ptr);
    mop_decoder_free(e->dec);
    mop_ctx_free(e->prep);
    free(e->seqs);
    free(e->b_seq);
    free(e->b_n);
    free(e->b_slot);
    free(e->b_tok);
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->lock);
    free(e);
}
