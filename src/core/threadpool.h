/* A small fork-join pool: the caller plus n-1 workers run one function. */
#ifndef MOP_THREADPOOL_H
#define MOP_THREADPOOL_H

#include "internal.h"

typedef struct mop_pool mop_pool;

/* fn(arg, ith, nth) runs once for each ith in [0, nth). */
typedef void (*mop_pool_fn)(void *arg, int ith, int nth);

/* n_threads <= 0 means all online cores. */
mop_status mop_pool_create(int n_threads, mop_pool **out);
void mop_pool_free(mop_pool *pool);
int mop_pool_size(const mop_pool *pool);

/* Run fn on every thread of the pool (the caller is thread 0) and wait.
 * pool may be NULL: then fn(arg, 0, 1) runs on the caller. Not reentrant. */
void mop_pool_run(mop_pool *pool, mop_pool_fn fn, void *arg);

/* Split [0, n) into nth near-equal parts; part ith is [*lo, *hi). */
static inline void mop_split_range(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi)
{
    int64_t base = n / nth, rem = n % nth;
    *lo = ith * base + (ith < rem ? ith : rem);
    *hi = *lo + base + (ith < rem ? 1 : 0);
}

int mop_cpu_count(void);

#endif
