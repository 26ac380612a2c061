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

/* struct_size of a struct a caller passes, one rule everywhere (written out in
 * mop_version.h): a struct the library READS (params, mop_batch) is accepted
 * from `min`, the size of the struct's first published version (the release
 * that introduced it; MOP_SIZE_THROUGH(type, last field of that version)), to
 * sizeof the struct in this build; the fields beyond the caller's struct_size
 * take their defaults. A struct the library FILLS (info, results,
 * get_params) is accepted from MOP_OUT_STRUCT_MIN to its sizeof; the library
 * fills the prefix that fits. Anything else is MOP_E_INVALID_ARG, with the
 * range in mop_last_error(). `what` names the argument ("params"). */
mop_status mop_struct_size_check(const char *fn, const char *what, size_t struct_size,
                                 size_t min, size_t max);

/* Bytes of `type` up to and including `field`: the size of a struct's
 * published version whose last field was `field`. */
#define MOP_SIZE_THROUGH(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
/* Smallest struct_size of a struct the library fills: struct_size itself. */
#define MOP_OUT_STRUCT_MIN sizeof(uint32_t)

/* Check (ptr)->struct_size with mop_struct_size_check(); returns on failure. */
#define MOP_CHECK_STRUCT_SIZE(fn, ptr, min)                                    \
    MOP_TRY(mop_struct_size_check((fn), #ptr "->struct_size", (ptr)->struct_size, (min), \
                                  sizeof *(ptr)))

/* Read a caller's struct *src over *dst, which holds the defaults: check
 * src->struct_size against [min, sizeof *dst], copy that prefix, and set
 * dst->struct_size to sizeof *dst. Returns from the caller on failure. */
#define MOP_READ_STRUCT(fn, dst, src, min)                                     \
    do {                                                                       \
        MOP_TRY(mop_struct_size_check((fn), #src "->struct_size", (src)->struct_size, (min), \
                                      sizeof *(dst)));                         \
        memcpy((dst), (src), (src)->struct_size);                              \
        (dst)->struct_size = (uint32_t)sizeof *(dst);                          \
    } while (0)

/* Define the public calls of params struct mop_<x>_params from the module's
 * `static void <x>_defaults(mop_<x>_params *d)` (every field's default,
 * struct_size = sizeof *d) and `min`, the size of the struct's first release:
 * - mop_<x>_params_init_sized(p, size): check p and size against
 *   [min, sizeof], write the first `size` bytes of the defaults to *p with
 *   p->struct_size = size;
 * - mop_<x>_default_params(): the deprecated by-value shim.
 * MOP_DEFINE_PARAMS_INIT_SIZED is the first alone. */
#define MOP_DEFINE_PARAMS_INIT_SIZED(x, min)                                   \
    mop_status mop_##x##_params_init_sized(mop_##x##_params *p, size_t size)  \
    {                                                                          \
        MOP_CHECK_ARG(p);                                                      \
        mop_##x##_params full_;                                                \
        x##_defaults(&full_);                                                  \
        MOP_TRY(mop_struct_size_check("mop_" #x "_params_init", "size", size, (min), \
                                      sizeof full_));                          \
        full_.struct_size = (uint32_t)size;                                    \
        memcpy(p, &full_, size);                                               \
        return MOP_OK;                                                         \
    }
#define MOP_DEFINE_PARAMS_INIT(x, min)                                         \
    MOP_DEFINE_PARAMS_INIT_SIZED(x, min)                                       \
    mop_##x##_params mop_##x##_default_params(void)                            \
    {                                                                          \
        mop_##x##_params d_;                                                   \
        x##_defaults(&d_);                                                     \
        return d_;                                                             \
    }

#define MOP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOP_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
