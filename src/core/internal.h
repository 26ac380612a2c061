/* Internal helpers shared by every module: errors, allocation, logging.
 * Nothing here is exported from the shared library. */
#ifndef MOP_INTERNAL_H
#define MOP_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "libmop/mop_core.h"

#if defined(__GNUC__)
#define MOP_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MOP_PRINTF(f, a)
#endif

/* Record a detailed message for mop_last_error() and return the status, so
 * call sites read `return mop_fail(MOP_E_FORMAT, "tensor %s: ...", name);`.
 * The arguments may include mop_last_error() itself (the message is formatted
 * apart, then copied in); mop_error_prefix() is the shorter way to say it. */
mop_status mop_fail(mop_status s, const char *fmt, ...) MOP_PRINTF(2, 3);

/* Prefix the current thread's last error with context ("loading X: ..."). */
void mop_error_prefix(const char *fmt, ...) MOP_PRINTF(1, 2);

/* Allocation through the user's hooks; 64-byte aligned; NULL on failure.
 * mop_calloc/mop_alloc do not set the error: callers report MOP_E_NOMEM. */
void *mop_alloc(size_t size);
void *mop_calloc(size_t n, size_t size);
void mop_free(void *p);
char *mop_strdup(const char *s);
/* Live allocation count, for mop_set_allocator's safety check and leak tests. */
long mop_alloc_live(void);

/* Overflow-checked size arithmetic: return 0 on overflow. */
int mop_mul_ok(size_t a, size_t b, size_t *out);
int mop_add_ok(size_t a, size_t b, size_t *out);

void mop_log(int32_t level, const char *fmt, ...) MOP_PRINTF(2, 3);

#define MOP_CHECK_ARG(cond)                                                    \
    do {                                                                       \
        if (!(cond))                                                           \
            return mop_fail(MOP_E_INVALID_ARG, "%s: invalid argument: %s",    \
                            __func__, #cond);                                  \
    } while (0)

#define MOP_TRY(expr)                                                          \
    do {                                                                       \
        mop_status mop_try_s_ = (expr);                                        \
        if (mop_try_s_ != MOP_OK)                                              \
            return mop_try_s_;                                                 \
    } while (0)

#define MOP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOP_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
