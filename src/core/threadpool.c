/* Fork-join thread pool. Workers sleep on a condition variable between jobs:
 * jobs here are large (a whole matmul or attention), so wake-up latency of a
 * few microseconds is cheaper than spinning on 2-core machines. */
#include <pthread.h>
#include <unistd.h>

#include "threadpool.h"

struct mop_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    mop_pool_fn fn;
    void *arg;
    unsigned long generation; /* bumped per job; workers wait for a new one */
    int pending;              /* workers still running the current job */
    int stop;
};

struct worker_arg {
    mop_pool *pool;
    int ith;
};

int mop_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void *worker_main(void *p)
{
    struct worker_arg wa = *(struct worker_arg *)p;
    mop_free(p);
    mop_pool *pool = wa.pool;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool->mu);
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->start, &pool->mu);
        if (pool->stop) {
            pthread_mutex_unlock(&pool->mu);
            return NULL;
        }
        seen = pool->generation;
        mop_pool_fn fn = pool->fn;
        void *arg = pool->arg;
        pthread_mutex_unlock(&pool->mu);

        fn(arg, wa.ith, pool->n);

        pthread_mutex_lock(&pool->mu);
        if (--pool->pending == 0)
            pthread_cond_signal(&pool->done);
        pthread_mutex_unlock(&pool->mu);
    }
}

mop_status mop_pool_create(int n_threads, mop_pool **out)
{
    MOP_CHECK_ARG(out);
    if (n_threads <= 0)
        n_threads = mop_cpu_count();
    if (n_threads > 256)
        return mop_fail(MOP_E_RANGE, "thread pool: %d threads requested, at most 256", n_threads);
    mop_pool *pool = mop_calloc(1, sizeof *pool);
    if (!pool)
        return mop_fail(MOP_E_NOMEM, "thread pool: out of memory");
    pool->n = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->start, NULL);
    pthread_cond_init(&pool->done, NULL);
    if (n_threads > 1) {
        pool->threads = mop_calloc((size_t)n_threads, sizeof(pthread_t));
        if (!pool->threads) {
            mop_pool_free(pool);
            return mop_fail(MOP_E_NOMEM, "thread pool: out of memory");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = mop_alloc(sizeof *wa);
        if (wa) {
            wa->pool = pool;
            wa->ith = i;
        }
        if (!wa || pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0) {
            mop_free(wa);
            pool->n = i; /* only join the ones that started */
            mop_pool_free(pool);
            return mop_fail(MOP_E_NOMEM, "thread pool: cannot start thread %d", i);
        }
    }
    *out = pool;
    return MOP_OK;
}

void mop_pool_free(mop_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mu);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n && pool->threads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->start);
    pthread_cond_destroy(&pool->done);
    mop_free(pool->threads);
    mop_free(pool);
}

int mop_pool_size(const mop_pool *pool)
{
    return pool ? pool->n : 1;
}

void mop_pool_run(mop_pool *pool, mop_pool_fn fn, void *arg)
{
    if (!pool || pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->pending = pool->n - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->mu);

    fn(arg, 0, pool->n);

    pthread_mutex_lock(&pool->mu);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
}
