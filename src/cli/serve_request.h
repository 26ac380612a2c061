/* `mop serve`: one OpenAI-style request body (JSON) read into plain fields.
 *
 * Only the JSON is checked here (types, ranges, sizes); what needs the model
 * (the chat template, tokenization, context length, the mixture's name) is
 * checked by the HTTP layer. Depends on cJSON only, so the parser is fuzzed
 * alone (tests/fuzz/fuzz_serve_request.c). */
#ifndef MOP_SERVE_REQUEST_H
#define MOP_SERVE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

enum { SERVE_REQ_COMPLETION = 0, SERVE_REQ_CHAT = 1 };

#define SERVE_MAX_STOP 4          /* OpenAI's limit on "stop" strings */
#define SERVE_MAX_STOP_BYTES 256  /* longest stop string accepted */
#define SERVE_MAX_MESSAGES 256    /* most chat messages in one request */

typedef struct serve_message {
    char *role;    /* "system", "user" or "assistant" */
    char *content; /* text parts concatenated */
} serve_message;

typedef struct serve_request {
    int32_t kind;            /* SERVE_REQ_* */
    char *model;             /* the "model" field (required) */
    char *prompt;            /* completion: the prompt text */
    serve_message *messages; /* chat: n_messages entries */
    size_t n_messages;
    int32_t stream;          /* "stream": true */
    int32_t include_usage;   /* "stream_options": {"include_usage": true} */
    int32_t max_tokens;      /* -1 when absent ("max_tokens" or "max_completion_tokens") */
    float temperature;       /* default 1 (OpenAI's); 0 = greedy */
    float top_p;             /* default 1 */
    int32_t top_k;           /* extension; default 0 = all tokens */
    uint64_t seed;           /* used when has_seed */
    int32_t has_seed;
    char *stop[SERVE_MAX_STOP];
    int32_t n_stop;
} serve_request;

/* Why a body was rejected: an OpenAI error message and the offending field
 * (param, "" when none). */
typedef struct serve_request_error {
    char message[256];
    char param[32];
} serve_request_error;

/* Parse @p len bytes of @p body (need not be NUL-terminated) as a request of
 * @p kind. 0 on success (free with serve_request_free()); -1 with @p err
 * filled when the body is not acceptable (malformed JSON, a wrong type, a
 * value out of range); -2 when out of memory. */
int serve_request_parse(const char *body, size_t len, int32_t kind, serve_request *out,
                        serve_request_error *err);

/* Release what serve_request_parse() allocated; a zeroed request is fine. */
void serve_request_free(serve_request *r);

#endif
