/* `mop serve`: reading one request body (see serve_request.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "serve_request.h"

#define MAX_SAFE_INT 9007199254740992.0 /* 2^53: every integer below is exact in a double */

static int fail(serve_request_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(serve_request_error *err, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    snprintf(err->param, sizeof err->param, "%s", param);
    return -1;
}

/* The member @p name of @p obj, NULL when absent or JSON null. */
static const cJSON *field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

/* An integer in [lo, hi]: 0, or -1 after filling err. */
static int get_int(const cJSON *v, const char *name, double lo, double hi, double *out,
                   serve_request_error *err)
{
    if (!cJSON_IsNumber(v))
        return fail(err, name, "'%s' must be an integer", name);
    double x = v->valuedouble;
    if (!isfinite(x) || x != floor(x) || x < lo || x > hi)
        return fail(err, name, "'%s' must be an integer in [%.0f, %.0f]", name, lo, hi);
    *out = x;
    return 0;
}

static int get_float(const cJSON *v, const char *name, double lo, double hi, int open_lo,
                     float *out, serve_request_error *err)
{
    if (!cJSON_IsNumber(v))
        return fail(err, name, "'%s' must be a number", name);
    double x = v->valuedouble;
    if (!isfinite(x) || x < lo || x > hi || (open_lo && x == lo))
        return fail(err, name, "'%s' must be in %s%g, %g]", name, open_lo ? "(" : "[", lo, hi);
    *out = (float)x;
    return 0;
}

/* Message content: a string, or an array of {"type": "text", "text": ...}
 * parts, which are concatenated. Returns a malloc'ed string; NULL after
 * filling err (*oom set when out of memory). */
static char *content_text(const cJSON *c, serve_request_error *err, int *oom)
{
    if (cJSON_IsString(c)) {
        char *s = dup_str(c->valuestring);
        *oom = !s;
        return s;
    }
    if (!cJSON_IsArray(c)) {
        fail(err, "messages", "a message's 'content' must be a string or an array of text parts");
        return NULL;
    }
    size_t total = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
            !cJSON_IsString(text)) {
            fail(err, "messages", "only content parts of type 'text' with a 'text' string are "
                 "supported");
            return NULL;
        }
        total += strlen(text->valuestring);
    }
    char *s = malloc(total + 1);
    if (!s) {
        *oom = 1;
        return NULL;
    }
    size_t at = 0;
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t n = strlen(t);
        memcpy(s + at, t, n);
        at += n;
    }
    s[at] = '\0';
    return s;
}

static int parse_messages(const cJSON *msgs, serve_request *r, serve_request_error *err)
{
    if (!cJSON_IsArray(msgs))
        return fail(err, "messages", "'messages' must be an array of {role, content} objects");
    int n = cJSON_GetArraySize(msgs);
    if (n < 1)
        return fail(err, "messages", "'messages' must not be empty");
    if (n > SERVE_MAX_MESSAGES)
        return fail(err, "messages", "at most %d messages per request, got %d", SERVE_MAX_MESSAGES,
                    n);
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages)
        return -2;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = field(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return fail(err, "messages", "message %zu: needs a 'role' string", r->n_messages);
        const char *rs = role->valuestring;
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
            strcmp(rs, "developer"))
            return fail(err, "messages", "message %zu: role must be system, developer, user or "
                        "assistant", r->n_messages);
        if (!content)
            return fail(err, "messages", "message %zu: needs a 'content'", r->n_messages);
        serve_message *out = &r->messages[r->n_messages];
        /* "developer" is OpenAI's newer name of the system turn */
        out->role = dup_str(strcmp(rs, "developer") ? rs : "system");
        if (!out->role)
            return -2;
        int oom = 0;
        out->content = content_text(content, err, &oom);
        r->n_messages++;
        if (!out->content)
            return oom ? -2 : -1;
    }
    return 0;
}

static int parse_stop(const cJSON *stop, serve_request *r, serve_request_error *err)
{
    const cJSON *one = stop;
    if (cJSON_IsArray(stop)) {
        int n = cJSON_GetArraySize(stop);
        if (n > SERVE_MAX_STOP)
            return fail(err, "stop", "at most %d stop strings, got %d", SERVE_MAX_STOP, n);
        cJSON_ArrayForEach(one, stop) {
            if (!cJSON_IsString(one))
                return fail(err, "stop", "'stop' must be a string or an array of strings");
            size_t len = strlen(one->valuestring);
            if (len == 0 || len > SERVE_MAX_STOP_BYTES)
                return fail(err, "stop", "a stop string must have 1 to %d bytes",
                            SERVE_MAX_STOP_BYTES);
            if (!(r->stop[r->n_stop] = dup_str(one->valuestring)))
                return -2;
            r->n_stop++;
        }
        return 0;
    }
    if (!cJSON_IsString(one))
        return fail(err, "stop", "'stop' must be a string or an array of strings");
    size_t len = strlen(one->valuestring);
    if (len == 0 || len > SERVE_MAX_STOP_BYTES)
        return fail(err, "stop", "a stop string must have 1 to %d bytes", SERVE_MAX_STOP_BYTES);
    if (!(r->stop[0] = dup_str(one->valuestring)))
        return -2;
    r->n_stop = 1;
    return 0;
}

static int parse_object(const cJSON *root, int32_t kind, serve_request *r,
                        serve_request_error *err)
{
    if (!cJSON_IsObject(root))
        return fail(err, "", "the request body must be a JSON object");
    const cJSON *v = field(root, "model");
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return fail(err, "model", "'model' is required: a string naming the base model or a "
                    "mixture (see GET /v1/models)");
    if (!(r->model = dup_str(v->valuestring)))
        return -2;

    if (kind == SERVE_REQ_COMPLETION) {
        v = field(root, "prompt");
        if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(v->child))
            v = v->child; /* ["text"]: one prompt */
        else if (cJSON_IsArray(v))
            return fail(err, "prompt", "only one prompt (a string) per request is supported");
        if (!cJSON_IsString(v))
            return fail(err, "prompt", "'prompt' is required and must be a string");
        if (!(r->prompt = dup_str(v->valuestring)))
            return -2;
        if (field(root, "suffix"))
            return fail(err, "suffix", "'suffix' is not supported");
        if ((v = field(root, "echo")) && !cJSON_IsFalse(v))
            return fail(err, "echo", "'echo' is not supported");
        if ((v = field(root, "best_of")) && !(cJSON_IsNumber(v) && v->valuedouble == 1))
            return fail(err, "best_of", "only best_of = 1 is supported");
    } else {
        int st = parse_messages(field(root, "messages"), r, err);
        if (st)
            return st;
        if ((v = field(root, "tools")) || (v = field(root, "functions")))
            return fail(err, "tools", "tools and function calling are not supported");
    }

    double x = 0;
    if ((v = field(root, "n")) && (get_int(v, "n", 1, 1, &x, err)))
        return fail(err, "n", "only n = 1 is supported");
    if ((v = field(root, "logprobs")) && !cJSON_IsFalse(v))
        return fail(err, "logprobs", "'logprobs' is not supported");
    if ((v = field(root, "stream"))) {
        if (!cJSON_IsBool(v))
            return fail(err, "stream", "'stream' must be true or false");
        r->stream = cJSON_IsTrue(v);
    }
    if ((v = field(root, "stream_options"))) {
        const cJSON *u = cJSON_IsObject(v) ? field(v, "include_usage") : NULL;
        if (!cJSON_IsObject(v) || (u && !cJSON_IsBool(u)))
            return fail(err, "stream_options", "'stream_options' must be an object with an "
                        "optional boolean 'include_usage'");
        r->include_usage = u && cJSON_IsTrue(u);
    }
    const char *mt = kind == SERVE_REQ_CHAT && field(root, "max_completion_tokens")
                         ? "max_completion_tokens" : "max_tokens";
    if ((v = field(root, mt))) {
        if (get_int(v, mt, 0, 2147483647.0, &x, err))
            return -1;
        r->max_tokens = (int32_t)x;
    }
    if ((v = field(root, "temperature")) &&
        get_float(v, "temperature", 0, 2, 0, &r->temperature, err))
        return -1;
    if ((v = field(root, "top_p")) && get_float(v, "top_p", 0, 1, 1, &r->top_p, err))
        return -1;
    if ((v = field(root, "top_k"))) {
        if (get_int(v, "top_k", 0, 2147483647.0, &x, err))
            return -1;
        r->top_k = (int32_t)x;
    }
    if ((v = field(root, "seed"))) {
        if (get_int(v, "seed", -MAX_SAFE_INT, MAX_SAFE_INT, &x, err))
            return -1;
        r->seed = (uint64_t)(int64_t)x;
        r->has_seed = 1;
    }
    if ((v = field(root, "stop"))) {
        int st = parse_stop(v, r, err);
        if (st)
            return st;
    }
    return 0;
}

int serve_request_parse(const char *body, size_t len, int32_t kind, serve_request *out,
                        serve_request_error *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->kind = kind;
    out->max_tokens = -1;
    out->temperature = 1.0f;
    out->top_p = 1.0f;
    if (len == 0)
        return fail(err, "", "the request body is empty (expected a JSON object)");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        /* the error position comes back through `end` (cJSON_GetErrorPtr() is a
         * process-wide global, racy across connection threads) */
        size_t off = end && end >= body && end <= body + len ? (size_t)(end - body) : len;
        return fail(err, "", "malformed JSON in the request body near byte %zu", off);
    }
    /* nothing but white space may follow the object */
    for (const char *p = end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != '\0') {
            cJSON_Delete(root);
            return fail(err, "", "malformed JSON: unexpected bytes after the object at byte %zu",
                        (size_t)(p - body));
        }
    int st = parse_object(root, kind, out, err);
    cJSON_Delete(root);
    if (st) {
        serve_request_free(out);
        if (st == -2)
            fail(err, "", "out of memory");
    }
    return st;
}

void serve_request_free(serve_request *r)
{
    if (!r)
        return;
    free(r->model);
    free(r->prompt);
    for (size_t i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
    }
    free(r->messages);
    for (int32_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    int32_t kind = r->kind;
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = -1;
}
