/* `mop serve`: the text of one reply as tokens arrive.
 *
 * Each token's bytes are appended; stop strings are looked for across token
 * boundaries and cut the text where the first one starts. For streaming,
 * serve_reply_ready() says how much of the text can be sent now: never the
 * bytes that might still become a stop string, nor half a UTF-8 character.
 * Not thread-safe (the HTTP layer holds its lock around each call). */
#ifndef MOP_SERVE_REPLY_H
#define MOP_SERVE_REPLY_H

#include <stddef.h>
#include <stdint.h>

#include <libmop/mop.h>

typedef struct serve_reply {
    const mop_model *model;
    char *text;               /* len bytes, NUL-terminated */
    size_t len, cap;
    size_t sent;              /* bytes already streamed */
    char *const *stop;        /* borrowed */
    int32_t n_stop;
    int32_t stopped;          /* a stop string was found (text cut before it) */
} serve_reply;

/* Start an empty reply (stop strings borrowed for the reply's life). */
void serve_reply_init(serve_reply *r, const mop_model *model, char *const *stop, int32_t n_stop);
void serve_reply_free(serve_reply *r);

/* Append @p token's text. 0, 1 when a stop string now ends the reply, or -1
 * when out of memory or the token cannot be detokenized. */
int serve_reply_add_token(serve_reply *r, int32_t token);

/* End of the text that may be streamed now: all of it when @p final, else
 * short of a possible stop-string prefix and an incomplete UTF-8 tail. */
size_t serve_reply_ready(const serve_reply *r, int final);

#endif
