/* `mop serve`: reply text, stop strings and UTF-8 (see serve_reply.h). */
#include <stdlib.h>
#include <string.h>

#include "serve_reply.h"
#include "serve_utf8.h"

void serve_reply_init(serve_reply *r, const mop_model *model, char *const *stop, int32_t n_stop)
{
    memset(r, 0, sizeof *r);
    r->model = model;
    r->stop = stop;
    r->n_stop = n_stop;
}

void serve_reply_free(serve_reply *r)
{
    free(r->text);
    r->text = NULL;
    r->len = r->cap = r->sent = 0;
}

static int reserve(serve_reply *r, size_t extra)
{
    if (r->len + extra + 1 <= r->cap)
        return 0;
    size_t nc = r->cap ? r->cap : 256;
    while (nc < r->len + extra + 1)
        nc *= 2;
    char *t = realloc(r->text, nc);
    if (!t)
        return -1;
    r->text = t;
    r->cap = nc;
    return 0;
}

int serve_reply_add_token(serve_reply *r, int32_t token)
{
    if (r->stopped)
        return 1;
    size_t n = 0;
    mop_status st = mop_detokenize(r->model, &token, 1, 0, NULL, 0, &n);
    if (st != MOP_OK && st != MOP_E_RANGE)
        return -1;
    if (reserve(r, n) != 0)
        return -1;
    if (n > 0 &&
        mop_detokenize(r->model, &token, 1, 0, r->text + r->len, n + 1, &n) != MOP_OK)
        return -1;
    size_t old = r->len;
    r->len += n;
    r->text[r->len] = '\0';
    /* the earliest stop string that now occurs; only windows that reach
     * into the new bytes can be new matches */
    size_t cut = r->len + 1;
    for (int32_t i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        if (sl > r->len)
            continue;
        size_t from = old + 1 > sl ? old + 1 - sl : 0;
        for (size_t p = from; p + sl <= r->len && p < cut; p++)
            if (memcmp(r->text + p, r->stop[i], sl) == 0) {
                cut = p;
                break;
            }
    }
    if (cut <= r->len) {
        r->len = cut;
        r->text[cut] = '\0';
        r->stopped = 1;
        return 1;
    }
    return 0;
}

size_t serve_reply_ready(const serve_reply *r, int final)
{
    if (final || r->stopped)
        return r->len;
    size_t hold = 0;
    for (int32_t i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = sl - 1 < r->len ? sl - 1 : r->len; k > hold; k--)
            if (memcmp(r->text + r->len - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    size_t end = r->len - hold;
    end -= serve_utf8_incomplete_tail((const unsigned char *)r->text, end);
    return end > r->sent ? end : r->sent;
}
