/* `mop serve`: UTF-8 at the edges of generated text. A token may end in the
 * middle of a character, and a model may generate bytes that are not UTF-8
 * at all; JSON needs valid text. No dependencies (fuzzed alone). */
#ifndef MOP_SERVE_UTF8_H
#define MOP_SERVE_UTF8_H

#include <stddef.h>

/* Bytes at the end of s[0..n) that start a UTF-8 sequence not yet complete
 * (0 to 3): hold them back until the next token. */
size_t serve_utf8_incomplete_tail(const unsigned char *s, size_t n);

/* Copy @p n bytes of @p s into a malloc'ed NUL-terminated string with every
 * invalid UTF-8 sequence (and NUL) replaced by U+FFFD; NULL when out of memory. */
char *serve_utf8_clean(const char *s, size_t n);

#endif
