/* Small helpers of the tokenizer: the GPT-2 byte <-> unicode table and UTF-8. */
#ifndef MOP_TOKENIZER_UTIL_H
#define MOP_TOKENIZER_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* GPT-2 stands each byte in for a printable code point: the printable bytes
 * '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF for themselves, the other 68
 * (0..32, 127..160, 173) for U+0100.. in byte order. */
static inline uint32_t tok_byte_to_cp(uint8_t b)
{
    if (b <= 32)
        return 256u + b;
    if (b >= 127 && b <= 160)
        return 256u + 33u + (b - 127u);
    if (b == 173)
        return 256u + 33u + 34u;
    return b;
}

/* Inverse of tok_byte_to_cp, -1 for code points outside the table. */
static inline int tok_cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return (cp <= 32 || (cp >= 127 && cp <= 160) || cp == 173) ? -1 : (int)cp;
    if (cp < 289)
        return (int)(cp - 256);
    if (cp < 323)
        return (int)(cp - 289 + 127);
    return cp == 323 ? 173 : -1;
}

/* Write cp as UTF-8 (cp <= 0x10FFFF); returns the byte count (1..4). */
static inline size_t tok_utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), 0 if there is none; *cp gets the value. */
static inline size_t tok_utf8_get(const char *str, size_t n, uint32_t *cp)
{
    const uint8_t *s = (const uint8_t *)str;
    if (n == 0)
        return 0;
    uint8_t c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

/* 1 if s[0, n) is well-formed UTF-8; else 0 and *bad = offset of the first
 * byte that does not start a well-formed sequence (bad may be NULL). */
static inline int tok_utf8_valid(const char *s, size_t n, size_t *bad)
{
    size_t i = 0;
    while (i < n) {
        if ((uint8_t)s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t l = tok_utf8_get(s + i, n - i, &cp);
        if (!l) {
            if (bad)
                *bad = i;
            return 0;
        }
        i += l;
    }
    return 1;
}

#endif
