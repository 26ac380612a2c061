/* libFuzzer: `mop serve`'s request parser (src/cli/serve_request.c, cJSON
 * underneath) and its UTF-8 repair (src/cli/serve_utf8.c) on arbitrary
 * bytes. An accepted request must hold only values in range; a rejected one
 * must say why; the repaired text must be valid UTF-8 without NUL; nothing
 * may leak (ASan's leak check). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve_request.h"
#include "serve_utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_utf8(const unsigned char *s)
{
    /* decode every sequence; clean output has only complete, minimal ones */
    while (*s) {
        unsigned c = *s;
        size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (n == 0)
            abort();
        for (size_t i = 1; i < n; i++)
            if ((s[i] & 0xC0) != 0x80)
                abort();
        s += n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    for (int32_t kind = SERVE_REQ_COMPLETION; kind <= SERVE_REQ_CHAT; kind++) {
        serve_request r;
        serve_request_error err;
        int st = serve_request_parse(body, size, kind, &r, &err);
        if (st == 0) {
            if (!r.model || !r.model[0] || r.n_stop < 0 || r.n_stop > SERVE_MAX_STOP ||
                !(r.temperature >= 0 && r.temperature <= 2) ||
                !(r.top_p > 0 && r.top_p <= 1) || r.top_k < 0 || r.max_tokens < -1)
                abort();
            if (kind == SERVE_REQ_COMPLETION && !r.prompt)
                abort();
            if (kind == SERVE_REQ_CHAT && (r.n_messages < 1 || r.n_messages > SERVE_MAX_MESSAGES))
                abort();
            for (size_t i = 0; i < r.n_messages; i++)
                if (!r.messages[i].role || !r.messages[i].content)
                    abort();
            for (int32_t i = 0; i < r.n_stop; i++)
                if (!r.stop[i][0] || strlen(r.stop[i]) > SERVE_MAX_STOP_BYTES)
                    abort();
            serve_request_free(&r);
        } else if (st == -1) {
            if (!err.message[0] || !memchr(err.message, '\0', sizeof err.message))
                abort();
        } else if (st != -2) {
            abort();
        }
    }
    char *clean = serve_utf8_clean(body, size);
    if (clean) {
        check_utf8((const unsigned char *)clean);
        size_t tail = serve_utf8_incomplete_tail((const unsigned char *)clean, strlen(clean));
        if (tail != 0) /* complete characters only */
            abort();
        free(clean);
    }
    if (size > 0 && serve_utf8_incomplete_tail(data, size) > 3)
        abort();
    return 0;
}
