/* Fork-join thread pool with a spin-then-sleep hand-off.
 *
 * A decoded token issues ~150 short jobs back to back (each matrix-vector
 * product, norms, attention), 50–100 us apart. Waking a worker blocked on a
 * condition variable costs a futex call plus the scheduler's wake-up latency
 * (several us, far more on a loaded VM), and so does waking the caller when
 * the last worker finishes. So both sides first spin for a short, bounded
 * time (POOL_SPIN_NS) on the job counter / the pending count, and only then
 * block on the condition variables. Between bursts (a caller that stops
 * calling) the workers go back to sleep after the spin budget, so an idle
 * pool costs nothing.
 *
 * Hand-off protocol (all atomics sequentially consistent):
 *   caller:  fn, arg, pending = n-1; generation++; if sleepers: broadcast start
 *   worker:  sees generation change (spinning, or woken); runs fn;
 *            pending--; if it hit 0 and the caller sleeps: signal done
 * A sleeper registers itself (sleepers++ / caller_sleeping = 1) under the
 * mutex before re-checking the condition, and the other side checks the
 * registration after publishing its change, so one of the two always sees
 * the other: no lost wake-up. fn and arg are rewritten only after every
 * worker has decremented pending, i.e. has finished reading them. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "threadpool.h"

/* How long a thread spins for the next job / for the workers before it
 * blocks. Longer than the gaps between the jobs of one decoded token, short
 * enough that an idle pool stops burning cores almost at once. */
#define POOL_SPIN_NS 100000
/* Spin iterations between clock reads (a clock read is ~25 ns). */
#define POOL_SPIN_CHECK 32

struct mop_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    mop_pool_fn fn;
    void *arg;
    atomic_ulong generation;  /* bumped per job; workers wait for a new one */
    atomic_int pending;       /* workers still running the current job */
    atomic_int sleepers;      /* workers blocked (or about to block) on start */
    atomic_int caller_sleeps; /* the caller is blocked (or about to block) on done */
    atomic_int stop;
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

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until done(pool, token) holds or POOL_SPIN_NS pass; returns done's
 * value. After the first POOL_SPIN_CHECK iterations each one also yields the
 * core: when there are more runnable threads than cores (a loaded machine,
 * or a pool larger than the machine) the thread we wait for may need exactly
 * this core, and a pure busy-wait would hold it off for a whole time slice. */
static int spin_until(int (*done)(mop_pool *, unsigned long), mop_pool *pool, unsigned long token)
{
    int64_t deadline = 0;
    for (unsigned i = 1;; i++) {
        if (done(pool, token))
            return 1;
        if (i > POOL_SPIN_CHECK)
            sched_yield();
        else
            cpu_relax();
        if (i % POOL_SPIN_CHECK == 0) {
            int64_t t = now_ns();
            if (!deadline)
                deadline = t + POOL_SPIN_NS;
            else if (t > deadline)
                return done(pool, token);
        }
    }
}

static int job_or_stop(mop_pool *pool, unsigned long seen)
{
    return atomic_load(&pool->generation) != seen || atomic_load(&pool->stop);
}

static int all_done(mop_pool *pool, unsigned long unused)
{
    (void)unused;
    return atomic_load(&pool->pending) == 0;
}

static void *worker_main(void *p)
{
    struct worker_arg wa = *(struct worker_arg *)p;
    mop_free(p);
    mop_pool *pool = wa.pool;
    unsigned long seen = 0;
    for (;;) {
        if (!spin_until(job_or_stop, pool, seen)) {
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->sleepers, 1);
            while (!job_or_stop(pool, seen))
                pthread_cond_wait(&pool->start, &pool->mu);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop))
            return NULL;
        seen = atomic_load(&pool->generation);

        pool->fn(pool->arg, wa.ith, pool->n);

        if (atomic_fetch_sub(&pool->pending, 1) == 1 && atomic_load(&pool->caller_sleeps)) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mu);
        }
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
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->caller_sleeps, 0);
    atomic_init(&pool->stop, 0);
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
    atomic_store(&pool->stop, 1);
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
    pool->fn = fn;
    pool->arg = arg;
    atomic_store(&pool->pending, pool->n - 1);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->start);
        pthread_mutex_unlock(&pool->mu);
    }

    fn(arg, 0, pool->n);

    if (!spin_until(all_done, pool, 0)) {
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->caller_sleeps, 1);
        while (atomic_load(&pool->pending) > 0)
            pthread_cond_wait(&pool->done, &pool->mu);
        atomic_store(&pool->caller_sleeps, 0);
        pthread_mutex_unlock(&pool->mu);
    }
}
