/* Allocation through replaceable hooks, logging through an optional callback. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void *default_alloc(size_t size, void *user)
{
    (void)user;
    void *p = NULL;
    /* Round up so aligned_alloc's size rule holds; 0 still yields a unique pointer. */
    size_t rounded = (size + 63) & ~(size_t)63;
    if (rounded < size)
        return NULL;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        return NULL;
    return p;
}

static void default_free(void *p, void *user)
{
    (void)user;
    free(p);
}

static mop_allocator allocator = {default_alloc, default_free, NULL};
static atomic_long live_allocations;

mop_status mop_set_allocator(const mop_allocator *a)
{
    if (a && (!a->alloc || !a->free))
        return mop_fail(MOP_E_INVALID_ARG, "mop_set_allocator: alloc and free are both required");
    if (atomic_load(&live_allocations) != 0)
        return mop_fail(MOP_E_STATE, "mop_set_allocator: %ld allocations are still alive",
                        atomic_load(&live_allocations));
    if (a)
        allocator = *a;
    else
        allocator = (mop_allocator){default_alloc, default_free, NULL};
    return MOP_OK;
}

void *mop_alloc(size_t size)
{
    void *p = allocator.alloc(size, allocator.user);
    if (p)
        atomic_fetch_add(&live_allocations, 1);
    return p;
}

void *mop_calloc(size_t n, size_t size)
{
    size_t total;
    if (!mop_mul_ok(n, size, &total))
        return NULL;
    void *p = mop_alloc(total);
    if (p)
        memset(p, 0, total);
    return p;
}

void mop_free(void *p)
{
    if (!p)
        return;
    atomic_fetch_sub(&live_allocations, 1);
    allocator.free(p, allocator.user);
}

char *mop_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = mop_alloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

long mop_alloc_live(void)
{
    return atomic_load(&live_allocations);
}

int mop_mul_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

int mop_add_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

static mop_log_fn log_fn;
static void *log_user;

void mop_set_log_callback(mop_log_fn fn, void *user)
{
    log_fn = fn;
    log_user = user;
}

void mop_log(int32_t level, const char *fmt, ...)
{
    if (!log_fn)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_fn(level, line, log_user);
}
