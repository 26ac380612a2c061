/* `mop serve`: reply text, stop strings and UTF-8 (see serve_reply.h). */
#include <stdlib.h>
#include <string.h>

#include "serve_reply.h"

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

/* Bytes at the end of s[0..n) that start a UTF-8 sequence not yet complete. */
static size_t incomplete_tail(const unsigned char *s, size_t n)
{
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80)
            continue;
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                   : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need ? back : 0;
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
    end -= incomplete_tail((const unsigned char *)r->text, end);
    return end > r->sent ? end : r->sent;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((need == 3 && cp < 0x800) || (need == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return need;
}

char *serve_utf8_clean(const char *s, size_t n)
{
    char *out = malloc(n * 3 + 1); /* each bad byte becomes 3 bytes */
    if (!out)
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len(u + i, n - i);
        if (l == 0 || (l == 1 && u[i] == 0)) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, s + i, l);
            o += l;
            i += l;
        }
    }
    out[o] = '\0';
    return out;
}
