/* `mop serve`: HTTP routes, OpenAI replies and server-sent events (see
 * serve_http.h). libmicrohttpd runs one thread per connection, so a handler
 * may block: a plain request waits for its job to end, a streaming one
 * waits for tokens inside the response's content callback. */
#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "cli.h"
#include "serve_http.h"
#include "serve_reply.h"
#include "serve_request.h"
#include "serve_utf8.h"

struct serve_http {
    serve_http_params p;
    mop_model *model;
    serve_mixtures *mixtures;
    serve_engine *engine;
    struct MHD_Daemon *daemon;
    atomic_int draining;
    atomic_int in_flight;   /* requests whose reply is not fully sent yet */
    atomic_uint_fast64_t next_id;
    struct sockaddr_storage addr;
};

/* ---- replies ---------------------------------------------------------------- */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned int code, const char *type,
                                 char *text)
{
    if (!text)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

/* cJSON prints with its own malloc; hand MHD a copy it may free() */
static char *print_json(const cJSON *j)
{
    return cJSON_PrintUnformatted(j); /* cJSON's default hooks are malloc/free */
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned int code, cJSON *j)
{
    char *text = j ? print_json(j) : NULL;
    cJSON_Delete(j);
    return send_text(c, code, "application/json", text);
}

/* OpenAI's error shape: {"error": {"message", "type", "param", "code"}}. */
static cJSON *error_json(const char *message, const char *type, const char *param,
                         const char *code)
{
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char *clean = serve_utf8_clean(message, strlen(message));
    cJSON_AddStringToObject(e, "message", clean ? clean : "error");
    free(clean);
    cJSON_AddStringToObject(e, "type", type);
    if (param && param[0])
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    return root;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned int status, const char *type,
                                  const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned int status, const char *type,
                                  const char *param, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_json(c, status, error_json(msg, type, param, code));
}

#define BAD_REQUEST(c, param, ...) \
    send_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request_error", param, NULL, __VA_ARGS__)

/* ---- one generation request -------------------------------------------------- */

typedef struct call {
    atomic_int refs;          /* the HTTP side's and the engine's */
    pthread_mutex_t lock;
    pthread_cond_t cv;
    serve_http *h;
    serve_request req;        /* parsed body (stop strings borrowed by reply) */
    serve_reply reply;
    int reply_failed;
    int done;
    serve_result result;
    serve_job *job;
    char id[48];
    char model_name[SERVE_NAME_MAX + 1];
    long created;
    /* streaming */
    int phase;                /* 0 role chunk due (chat), 1 deltas, 2 ended */
    char *out;                /* an event being handed to MHD */
    size_t out_len, out_off;
} call;

static void call_unref(call *k)
{
    if (atomic_fetch_sub(&k->refs, 1) != 1)
        return;
    serve_job_release(k->job);
    serve_reply_free(&k->reply);
    serve_request_free(&k->req);
    free(k->out);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

static int call_on_token(int32_t token, void *user)
{
    call *k = user;
    pthread_mutex_lock(&k->lock);
    int rc = serve_reply_add_token(&k->reply, token);
    if (rc < 0)
        k->reply_failed = 1;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->lock);
    return rc != 0;
}

static void call_on_done(const serve_result *r, void *user)
{
    call *k = user;
    pthread_mutex_lock(&k->lock);
    k->result = *r;
    k->done = 1;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->lock);
    call_unref(k);
}

static const char *finish_reason(const call *k)
{
    return k->result.finish == SERVE_FINISH_LENGTH ? "length" : "stop";
}

static cJSON *usage_json(const call *k)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", k->result.n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", k->result.n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", k->result.n_prompt + k->result.n_generated);
    return u;
}

/* The common head of a reply or a chunk: id, object, created, model, choices[0]. */
static cJSON *reply_head(const call *k, int chunk, cJSON **choice)
{
    int chat = k->req.kind == SERVE_REQ_CHAT;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", k->id);
    cJSON_AddStringToObject(root, "object", chat ? (chunk ? "chat.completion.chunk"
                                                          : "chat.completion")
                                                 : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)k->created);
    cJSON_AddStringToObject(root, "model", k->model_name);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    *choice = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, *choice);
    cJSON_AddNumberToObject(*choice, "index", 0);
    return root;
}

/* The error a job's end means, or 0 when it ended normally. */
static unsigned int end_error(const call *k, const char **type, const char **code, char *msg,
                              size_t cap)
{
    switch (k->result.finish) {
    case SERVE_FINISH_TIMEOUT:
        *type = "timeout_error";
        *code = "timeout";
        snprintf(msg, cap, "the request took longer than the server's limit of %g s "
                 "(--timeout)", k->h->p.timeout_s);
        return MHD_HTTP_GATEWAY_TIMEOUT;
    case SERVE_FINISH_CANCELLED:
        *type = "server_error";
        *code = "shutting_down";
        snprintf(msg, cap, "the server is shutting down; the request was cancelled");
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    case SERVE_FINISH_ERROR:
        /* a size the library refuses (MOP_E_RANGE: prompt too long for the
         * context or the prefill chunk) is the request's fault */
        *type = k->result.status == MOP_E_RANGE ? "invalid_request_error" : "server_error";
        *code = NULL;
        snprintf(msg, cap, "%s", k->result.message);
        return k->result.status == MOP_E_RANGE ? MHD_HTTP_BAD_REQUEST
                                               : MHD_HTTP_INTERNAL_SERVER_ERROR;
    default:
        if (k->reply_failed) {
            *type = "server_error";
            *code = NULL;
            snprintf(msg, cap, "cannot turn a generated token into text (out of memory?)");
            return MHD_HTTP_INTERNAL_SERVER_ERROR;
        }
        return 0;
    }
}

static enum MHD_Result send_full_reply(struct MHD_Connection *c, call *k)
{
    const char *type = NULL, *code = NULL;
    char msg[512];
    unsigned int err = end_error(k, &type, &code, msg, sizeof msg);
    if (err)
        return send_json(c, err, error_json(msg, type, NULL, code));
    char *text = serve_utf8_clean(k->reply.text ? k->reply.text : "", k->reply.len);
    if (!text)
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
                          "out of memory");
    cJSON *choice;
    cJSON *root = reply_head(k, 0, &choice);
    if (k->req.kind == SERVE_REQ_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(choice, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", text);
    } else {
        cJSON_AddStringToObject(choice, "text", text);
    }
    free(text);
    cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddStringToObject(choice, "finish_reason", finish_reason(k));
    cJSON_AddItemToObject(root, "usage", usage_json(k));
    return send_json(c, MHD_HTTP_OK, root);
}

/* "data: <json>\n\n" appended to *buf. */
static int append_event(char **buf, size_t *len, cJSON *j)
{
    char *s = j ? print_json(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return -1;
    size_t n = strlen(s);
    char *nb = realloc(*buf, *len + n + 9);
    if (!nb) {
        free(s);
        return -1;
    }
    memcpy(nb + *len, "data: ", 6);
    memcpy(nb + *len + 6, s, n);
    memcpy(nb + *len + 6 + n, "\n\n", 3);
    *len += n + 8;
    *buf = nb;
    free(s);
    return 0;
}

/* A chunk carrying @p text (may be NULL) and, when @p finish, the reason. */
static cJSON *delta_chunk(const call *k, const char *text, int role, const char *finish)
{
    cJSON *choice;
    cJSON *root = reply_head(k, 1, &choice);
    if (k->req.kind == SERVE_REQ_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(choice, "delta");
        if (role)
            cJSON_AddStringToObject(d, "role", "assistant");
        if (text)
            cJSON_AddStringToObject(d, "content", text);
    } else {
        cJSON_AddStringToObject(choice, "text", text ? text : "");
    }
    cJSON_AddNullToObject(choice, "logprobs");
    if (finish)
        cJSON_AddStringToObject(choice, "finish_reason", finish);
    else
        cJSON_AddNullToObject(choice, "finish_reason");
    if (k->req.include_usage)
        cJSON_AddNullToObject(root, "usage");
    return root;
}

/* Build the next events into k->out (blocking for tokens). 0, or -1 when the
 * stream is over (or out of memory). */
static int next_events(call *k)
{
    free(k->out);
    k->out = NULL;
    k->out_len = k->out_off = 0;
    if (k->phase == 2)
        return -1;
    if (k->phase == 0) {
        k->phase = 1;
        if (k->req.kind == SERVE_REQ_CHAT)
            return append_event(&k->out, &k->out_len, delta_chunk(k, "", 1, NULL));
    }
    pthread_mutex_lock(&k->lock);
    size_t ready;
    while (!k->done && (ready = serve_reply_ready(&k->reply, 0)) <= k->reply.sent)
        pthread_cond_wait(&k->cv, &k->lock);
    int done = k->done;
    ready = serve_reply_ready(&k->reply, done);
    char *delta = ready > k->reply.sent
                      ? serve_utf8_clean(k->reply.text + k->reply.sent, ready - k->reply.sent)
                      : NULL;
    k->reply.sent = ready;
    pthread_mutex_unlock(&k->lock);
    int rc = 0;
    if (delta)
        rc = append_event(&k->out, &k->out_len, delta_chunk(k, delta, 0, NULL));
    free(delta);
    if (done && rc == 0) {
        const char *type = NULL, *code = NULL;
        char msg[512];
        if (end_error(k, &type, &code, msg, sizeof msg)) {
            rc = append_event(&k->out, &k->out_len, error_json(msg, type, NULL, code));
        } else {
            rc = append_event(&k->out, &k->out_len, delta_chunk(k, NULL, 0, finish_reason(k)));
            if (rc == 0 && k->req.include_usage) {
                cJSON *choice;
                cJSON *u = reply_head(k, 1, &choice);
                cJSON_DeleteItemFromObject(u, "choices");
                cJSON_AddArrayToObject(u, "choices");
                cJSON_AddItemToObject(u, "usage", usage_json(k));
                rc = append_event(&k->out, &k->out_len, u);
            }
        }
        char *nb = rc == 0 ? realloc(k->out, k->out_len + 15) : NULL;
        if (nb) {
            memcpy(nb + k->out_len, "data: [DONE]\n\n", 15);
            k->out = nb;
            k->out_len += 14;
        } else {
            rc = -1;
        }
        k->phase = 2;
    }
    return rc;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    call *k = cls;
    while (k->out_off >= k->out_len) {
        int was_over = k->phase == 2;
        if (next_events(k) != 0)
            return was_over ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = k->out_len - k->out_off;
    if (n > max)
        n = max;
    memcpy(buf, k->out + k->out_off, n);
    k->out_off += n;
    return (ssize_t)n;
}

/* The response is done with (sent, or the client went away): stop the job. */
static void stream_free(void *cls)
{
    call *k = cls;
    serve_job_cancel(k->job);
    call_unref(k);
}

/* ---- handling a generation request --------------------------------------------- */

static int32_t *tokenize(const mop_model *model, const char *text, size_t len, int32_t flags,
                         size_t *n_out, mop_status *st)
{
    size_t n = 0;
    *st = mop_tokenize(model, text, len, flags, NULL, 0, &n);
    if (*st != MOP_OK && *st != MOP_E_RANGE)
        return NULL;
    int32_t *t = malloc((n ? n : 1) * sizeof *t);
    if (!t) {
        *st = MOP_E_NOMEM;
        return NULL;
    }
    if ((*st = mop_tokenize(model, text, len, flags, t, n, &n)) != MOP_OK) {
        free(t);
        return NULL;
    }
    *n_out = n;
    return t;
}

static char *chat_text(const mop_model *model, const serve_request *req, size_t *len,
                       mop_status *st)
{
    mop_chat_message *msgs = calloc(req->n_messages, sizeof *msgs);
    if (!msgs) {
        *st = MOP_E_NOMEM;
        return NULL;
    }
    for (size_t i = 0; i < req->n_messages; i++) {
        msgs[i].role = req->messages[i].role;
        msgs[i].content = req->messages[i].content;
    }
    size_t n = 0;
    char *buf = NULL;
    *st = mop_chat_format(model, msgs, req->n_messages, 1, NULL, 0, &n);
    if (*st == MOP_OK || *st == MOP_E_RANGE) {
        buf = malloc(n + 1);
        *st = buf ? mop_chat_format(model, msgs, req->n_messages, 1, buf, n + 1, &n)
                  : MOP_E_NOMEM;
        if (*st != MOP_OK) {
            free(buf);
            buf = NULL;
        }
    }
    free(msgs);
    *len = n;
    return buf;
}

static enum MHD_Result handle_generate(serve_http *h, struct MHD_Connection *c, int32_t kind,
                                       const char *body, size_t len)
{
    call *k = calloc(1, sizeof *k);
    if (!k)
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
                          "out of memory");
    atomic_init(&k->refs, 1);
    pthread_mutex_init(&k->lock, NULL);
    pthread_cond_init(&k->cv, NULL);
    k->h = h;
    enum MHD_Result ret;
    serve_request_error perr;
    int pr = serve_request_parse(body, len, kind, &k->req, &perr);
    if (pr != 0) {
        ret = pr == -2 ? send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
                                    "out of memory")
                       : BAD_REQUEST(c, perr.param, "%s", perr.message);
        call_unref(k);
        return ret;
    }
    serve_request *req = &k->req;
    char why[256];
    int32_t mix = serve_mixtures_find(h->mixtures, req->model, why, sizeof why);
    if (mix == SERVE_UNKNOWN) {
        ret = send_error(c, MHD_HTTP_NOT_FOUND, "invalid_request_error", "model",
                         "model_not_found", "The model '%.*s' does not exist: not the base model "
                         "nor a mixture in the mixtures folder (see GET /v1/models)",
                         SERVE_NAME_MAX, req->model);
        call_unref(k);
        return ret;
    }
    if (mix == SERVE_BROKEN) {
        ret = send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", "model", NULL,
                         "mixture '%.*s' cannot be loaded: %s", SERVE_NAME_MAX, req->model, why);
        call_unref(k);
        return ret;
    }
    snprintf(k->model_name, sizeof k->model_name, "%s", req->model);

    /* the prompt's tokens, as `mop generate` makes them */
    mop_status st = MOP_OK;
    size_t tlen = 0, n_prompt = 0;
    char *text = NULL;
    if (kind == SERVE_REQ_CHAT) {
        text = chat_text(h->model, req, &tlen, &st);
        if (!text) {
            ret = st == MOP_E_NOMEM
                      ? send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
                                   "out of memory")
                      : BAD_REQUEST(c, "messages", "cannot apply the model's chat template: %s",
                                    mop_last_error());
            call_unref(k);
            return ret;
        }
    }
    int32_t flags = MOP_TOKENIZE_ADD_BOS | (kind == SERVE_REQ_CHAT ? MOP_TOKENIZE_PARSE_SPECIAL : 0);
    int32_t *tokens = tokenize(h->model, text ? text : req->prompt,
                               text ? tlen : strlen(req->prompt), flags, &n_prompt, &st);
    free(text);
    if (!tokens || n_prompt == 0) {
        ret = !tokens && st == MOP_E_NOMEM
                  ? send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
                               "out of memory")
              : !tokens ? BAD_REQUEST(c, kind == SERVE_REQ_CHAT ? "messages" : "prompt",
                                      "cannot tokenize the prompt: %s", mop_last_error())
                        : BAD_REQUEST(c, "prompt", "the prompt is empty after tokenization");
        free(tokens);
        call_unref(k);
        return ret;
    }
    /* the context holds prompt + reply; a mixture's K·P prompt rows are kept
     * beside it by mop_mixture_generate() (its own prefix cache), so they do
     * not count here. A prompt of exactly n_ctx tokens still gets one token. */
    if ((int64_t)n_prompt > h->p.n_ctx) {
        ret = BAD_REQUEST(c, kind == SERVE_REQ_CHAT ? "messages" : "prompt",
                          "the prompt has %zu tokens; the context holds %d (--ctx)", n_prompt,
                          (int)h->p.n_ctx);
        free(tokens);
        call_unref(k);
        return ret;
    }
    int32_t max_tokens = req->max_tokens;
    if (max_tokens > h->p.max_tokens) {
        ret = BAD_REQUEST(c, "max_tokens",
                          "max_tokens is %d; this server allows at most %d (--max-tokens)",
                          (int)max_tokens, (int)h->p.max_tokens);
        free(tokens);
        call_unref(k);
        return ret;
    }
    if (max_tokens < 0) /* OpenAI's defaults: 16 for completions, the rest for chat */
        max_tokens = kind == SERVE_REQ_CHAT ? h->p.max_tokens
                                            : (h->p.max_tokens < 16 ? h->p.max_tokens : 16);

    serve_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.mixture = mix;
    spec.prompt = tokens;
    spec.n_prompt = (int32_t)n_prompt;
    spec.max_tokens = max_tokens;
    mop_sampler_params_init(&spec.sampling);
    spec.sampling.temperature = req->temperature;
    spec.sampling.top_p = req->top_p;
    spec.sampling.top_k = req->top_k;
    uint64_t id = atomic_fetch_add(&h->next_id, 1) + 1;
    spec.sampling.seed = req->has_seed ? req->seed
                                       : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ id;
    spec.deadline = cli_now() + h->p.timeout_s;
    spec.on_token = call_on_token;
    spec.on_done = call_on_done;
    spec.user = k;
    snprintf(k->id, sizeof k->id, "%s-%llu", kind == SERVE_REQ_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)id);
    k->created = (long)time(NULL);
    serve_reply_init(&k->reply, h->model, req->stop, req->n_stop);

    atomic_fetch_add(&k->refs, 1); /* the engine's, dropped in call_on_done */
    int sr = atomic_load(&h->draining) ? SERVE_E_SHUTDOWN
                                       : serve_engine_submit(h->engine, &spec, &k->job);
    free(tokens);
    if (sr != SERVE_OK) {
        atomic_fetch_sub(&k->refs, 1);
        ret = sr == SERVE_E_QUEUE_FULL
                  ? send_error(c, MHD_HTTP_TOO_MANY_REQUESTS, "server_overloaded", NULL,
                               "queue_full", "the server is busy: the batch is full "
                               "and the queue is full (--queue); retry later")
              : sr == SERVE_E_SHUTDOWN
                  ? send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL,
                               "shutting_down", "the server is shutting down")
                  : send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, NULL,
                               "out of memory");
        call_unref(k);
        return ret;
    }

    if (req->stream) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, k,
                                              stream_free);
        if (!r) {
            serve_job_cancel(k->job);
            call_unref(k);
            return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r); /* stream_free runs when MHD is done with it */
        return ret;
    }
    pthread_mutex_lock(&k->lock);
    while (!k->done)
        pthread_cond_wait(&k->cv, &k->lock);
    pthread_mutex_unlock(&k->lock);
    ret = send_full_reply(c, k);
    call_unref(k);
    return ret;
}

/* ---- other routes --------------------------------------------------------------- */

static cJSON *model_entry(const char *id, const char *kind)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "libmop");
    cJSON_AddStringToObject(m, "kind", kind); /* extension: "base" or "mixture" */
    return m;
}

static enum MHD_Result handle_models(serve_http *h, struct MHD_Connection *c, const char *one)
{
    if (one) {
        int32_t i = serve_mixtures_find(h->mixtures, one, NULL, 0);
        if (i == SERVE_UNKNOWN || i == SERVE_BROKEN)
            return send_error(c, MHD_HTTP_NOT_FOUND, "invalid_request_error", "model",
                              "model_not_found", "The model '%.*s' does not exist",
                              SERVE_NAME_MAX, one);
        return send_json(c, MHD_HTTP_OK, model_entry(one, i == SERVE_BASE ? "base" : "mixture"));
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddItemToArray(data, model_entry(serve_mixtures_base_name(h->mixtures), "base"));
    size_t n = serve_mixtures_count(h->mixtures);
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(data, model_entry(serve_mixtures_name(h->mixtures, i), "mixture"));
    return send_json(c, MHD_HTTP_OK, root);
}

static enum MHD_Result handle_health(serve_http *h, struct MHD_Connection *c)
{
    int32_t q = 0, r = 0;
    serve_engine_load(h->engine, &q, &r);
    int draining = atomic_load(&h->draining);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", draining ? "draining" : "ok");
    cJSON_AddNumberToObject(root, "queued", q);
    cJSON_AddNumberToObject(root, "running", r);
    return send_json(c, draining ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, root);
}

/* ---- the connection handler ------------------------------------------------------ */

enum { ROUTE_NONE, ROUTE_COMPLETIONS, ROUTE_CHAT, ROUTE_MODELS, ROUTE_MODEL, ROUTE_HEALTH };

typedef struct conn {
    int route;
    char *body;
    size_t len, cap;
    int too_big;
} conn;

static int route_of(const char *url)
{
    if (strcmp(url, "/v1/completions") == 0)
        return ROUTE_COMPLETIONS;
    if (strcmp(url, "/v1/chat/completions") == 0)
        return ROUTE_CHAT;
    if (strcmp(url, "/v1/models") == 0)
        return ROUTE_MODELS;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11])
        return ROUTE_MODEL;
    if (strcmp(url, "/health") == 0)
        return ROUTE_HEALTH;
    return ROUTE_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    serve_http *h = cls;
    conn *cn = *con_cls;
    if (!cn) { /* first call: headers only */
        if (!(cn = calloc(1, sizeof *cn)))
            return MHD_NO;
        cn->route = route_of(url);
        *con_cls = cn;
        atomic_fetch_add(&h->in_flight, 1); /* until on_completed */
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > h->p.max_body)
            cn->too_big = 1; /* answered below, before the body is read */
        else
            return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cn->too_big || cn->len + n > h->p.max_body) {
            cn->too_big = 1; /* the rest is read and dropped */
            return MHD_YES;
        }
        if (cn->len + n + 1 > cn->cap) {
            size_t nc = cn->cap ? cn->cap : 4096;
            while (nc < cn->len + n + 1)
                nc *= 2;
            char *nb = realloc(cn->body, nc);
            if (!nb)
                return MHD_NO;
            cn->body = nb;
            cn->cap = nc;
        }
        memcpy(cn->body + cn->len, upload_data, n);
        cn->len += n;
        return MHD_YES;
    }
    if (cn->too_big)
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
                          "body_too_large", "the request body exceeds the server's limit of %zu "
                          "bytes (--max-body)", h->p.max_body);
    int is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    int is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    switch (cn->route) {
    case ROUTE_COMPLETIONS:
    case ROUTE_CHAT:
        if (!is_post)
            break;
        return handle_generate(h, c, cn->route == ROUTE_CHAT ? SERVE_REQ_CHAT
                                                             : SERVE_REQ_COMPLETION,
                               cn->body ? cn->body : "", cn->len);
    case ROUTE_MODELS:
        if (!is_get)
            break;
        return handle_models(h, c, NULL);
    case ROUTE_MODEL:
        if (!is_get)
            break;
        return handle_models(h, c, url + 11);
    case ROUTE_HEALTH:
        if (!is_get)
            break;
        return handle_health(h, c);
    default:
        return send_error(c, MHD_HTTP_NOT_FOUND, "invalid_request_error", NULL, "not_found",
                          "no route %.64s %.200s (the server has POST /v1/completions, POST "
                          "/v1/chat/completions, GET /v1/models and GET /health)", method, url);
    }
    return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error", NULL,
                      "method_not_allowed", "%.64s is not allowed on %.200s", method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    serve_http *h = cls;
    conn *cn = *con_cls;
    if (cn) {
        atomic_fetch_sub(&h->in_flight, 1);
        free(cn->body);
        free(cn);
        *con_cls = NULL;
    }
}

/* ---- start and stop ---------------------------------------------------------------- */

int serve_http_start(const serve_http_params *p, mop_model *model, serve_mixtures *mixtures,
                     serve_engine *engine, serve_http **out)
{
    *out = NULL;
    serve_http *h = calloc(1, sizeof *h);
    if (!h)
        return cli_error("out of memory");
    h->p = *p;
    h->model = model;
    h->mixtures = mixtures;
    h->engine = engine;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gr = getaddrinfo(p->host, NULL, &hints, &ai);
    if (gr != 0 || !ai) {
        free(h);
        return cli_error("cannot listen on '%s': %s", p->host, gai_strerror(gr));
    }
    memcpy(&h->addr, ai->ai_addr, ai->ai_addrlen);
    int v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (v6)
        ((struct sockaddr_in6 *)&h->addr)->sin6_port = htons((uint16_t)p->port);
    else
        ((struct sockaddr_in *)&h->addr)->sin_port = htons((uint16_t)p->port);
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                         MHD_USE_ITC | (v6 ? MHD_USE_IPv6 : 0);
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)p->port, NULL, NULL, on_request, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&h->addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)p->max_connections,
        /* an idle or stalled connection is closed after this long */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)(p->timeout_s + 30),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_END);
    if (!h->daemon) {
        free(h);
        return cli_error("cannot listen on %s port %d (in use, or not an address of this "
                         "machine?)", p->host, (int)p->port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    int port = info ? info->port : p->port;
    fprintf(stderr, "mop serve: listening on http://%s%s%s:%d\n", v6 ? "[" : "", p->host,
            v6 ? "]" : "", port);
    fflush(stderr);
    *out = h;
    return CLI_OK;
}

void serve_http_quiesce(serve_http *h)
{
    if (!h)
        return;
    atomic_store(&h->draining, 1);
    MHD_socket s = MHD_quiesce_daemon(h->daemon);
    if (s != MHD_INVALID_SOCKET)
        close(s);
}

void serve_http_wait(serve_http *h, double deadline)
{
    while (h && atomic_load(&h->in_flight) > 0 && cli_now() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void serve_http_stop(serve_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon);
    free(h);
}
