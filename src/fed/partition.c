/* Data partitioners: the paper's skewed split, IID and Dirichlet(alpha).
 * Each category (distinct task label) is handled on its own: its examples,
 * in input order, are shuffled with the seeded PRNG and cut into client parts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fed.h"
#include "internal.h"

/* Examples grouped by category: order[] holds example indices sorted by
 * (label, index); categories are the runs of equal labels. */
typedef struct categories {
    int64_t *order;  /* (n) */
    int64_t *start;  /* (n_cat + 1) run boundaries in order[] */
    int64_t n_cat;
} categories;

typedef struct pair {
    int32_t label;
    int64_t index;
} pair;

static int cmp_pair(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    if (x->label != y->label)
        return x->label < y->label ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static mop_status group(const int32_t *task, int64_t n, categories *c)
{
    memset(c, 0, sizeof *c);
    pair *p = mop_alloc((size_t)n * sizeof *p);
    c->order = mop_alloc((size_t)n * sizeof *c->order);
    c->start = mop_alloc(((size_t)n + 1) * sizeof *c->start);
    if (!p || !c->order || !c->start) {
        mop_free(p);
        mop_free(c->order);
        mop_free(c->start);
        return mop_fail(MOP_E_NOMEM, "partition: out of memory for %lld examples", (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        p[i] = (pair){task[i], i};
    qsort(p, (size_t)n, sizeof *p, cmp_pair);
    for (int64_t i = 0; i < n; i++) {
        c->order[i] = p[i].index;
        if (i == 0 || p[i].label != p[i - 1].label)
            c->start[c->n_cat++] = i;
    }
    c->start[c->n_cat] = n;
    mop_free(p);
    return MOP_OK;
}

static void release(categories *c)
{
    mop_free(c->order);
    mop_free(c->start);
}

static mop_status check_common(const void *client_of, int64_t n, int32_t n_clients, const char *fn)
{
    if (!client_of)
        return mop_fail(MOP_E_INVALID_ARG, "%s: client_of is NULL", fn);
    if (n < 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n must be >= 1, got %lld", fn, (long long)n);
    if (n_clients < 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: n_clients must be >= 1, got %d", fn, (int)n_clients);
    return MOP_OK;
}

mop_status mop_partition_skewed(const int32_t *task, int64_t n, int32_t n_clients, float ratio,
                                uint64_t seed, int32_t *client_of)
{
    MOP_TRY(check_common(client_of, n, n_clients, "mop_partition_skewed"));
    MOP_CHECK_ARG(task != NULL);
    if (!(ratio >= 1.0f && isfinite(ratio)))
        return mop_fail(MOP_E_INVALID_ARG, "mop_partition_skewed: ratio must be finite and >= 1, got %g",
                        (double)ratio);
    categories c;
    MOP_TRY(group(task, n, &c));
    int32_t *part_owner = mop_alloc((size_t)n_clients * sizeof *part_owner);
    if (!part_owner) {
        release(&c);
        return mop_fail(MOP_E_NOMEM, "mop_partition_skewed: out of memory");
    }
    /* every category must be large enough before anything is written */
    double denom = (double)ratio + (double)n_clients - 1.0;
    for (int64_t k = 0; k < c.n_cat; k++) {
        int64_t cnt = c.start[k + 1] - c.start[k];
        if ((int64_t)floor((double)cnt / denom) < 1) {
            mop_status s = mop_fail(MOP_E_RANGE,
                                    "mop_partition_skewed: task %d has %lld examples; a %gx split over %d clients needs at least %g",
                                    (int)task[c.order[c.start[k]]], (long long)cnt, (double)ratio,
                                    (int)n_clients, ceil(denom));
            mop_free(part_owner);
            release(&c);
            return s;
        }
    }
    fed_rng r;
    mop_rng_seed(&r, seed);
    for (int64_t k = 0; k < c.n_cat; k++) {
        int64_t *ex = c.order + c.start[k];
        int64_t cnt = c.start[k + 1] - c.start[k];
        int64_t small = (int64_t)floor((double)cnt / denom);
        int64_t big = cnt - (int64_t)(n_clients - 1) * small;
        fed_shuffle_i64(&r, ex, cnt);
        /* part 0 is the big one; parts dealt to clients in random order */
        for (int32_t j = 0; j < n_clients; j++)
            part_owner[j] = j;
        for (int32_t j = n_clients - 1; j > 0; j--) {
            int32_t i = (int32_t)fed_rng_below(&r, (uint64_t)j + 1);
            int32_t t = part_owner[i];
            part_owner[i] = part_owner[j];
            part_owner[j] = t;
        }
        int64_t pos = 0;
        for (int32_t j = 0; j < n_clients; j++) {
            int64_t len = j == 0 ? big : small;
            for (int64_t e = 0; e < len; e++)
                client_of[ex[pos + e]] = part_owner[j];
            pos += len;
        }
    }
    mop_free(part_owner);
    release(&c);
    return MOP_OK;
}

mop_status mop_partition_iid(int64_t n, int32_t n_clients, uint64_t seed, int32_t *client_of)
{
    MOP_TRY(check_common(client_of, n, n_clients, "mop_partition_iid"));
    int64_t *idx = mop_alloc((size_t)n * sizeof *idx);
    if (!idx)
        return mop_fail(MOP_E_NOMEM, "mop_partition_iid: out of memory for %lld examples", (long long)n);
    for (int64_t i = 0; i < n; i++)
        idx[i] = i;
    fed_rng r;
    mop_rng_seed(&r, seed);
    fed_shuffle_i64(&r, idx, n);
    for (int64_t i = 0; i < n; i++)
        client_of[idx[i]] = (int32_t)(i % n_clients);
    mop_free(idx);
    return MOP_OK;
}

mop_status mop_partition_dirichlet(const int32_t *task, int64_t n, int32_t n_clients, float alpha,
                                   uint64_t seed, int32_t *client_of)
{
    MOP_TRY(check_common(client_of, n, n_clients, "mop_partition_dirichlet"));
    MOP_CHECK_ARG(task != NULL);
    if (!(alpha > 0.0f && isfinite(alpha)))
        return mop_fail(MOP_E_INVALID_ARG, "mop_partition_dirichlet: alpha must be finite and > 0, got %g",
                        (double)alpha);
    categories c;
    MOP_TRY(group(task, n, &c));
    double *lg = mop_alloc((size_t)n_clients * sizeof *lg);
    if (!lg) {
        release(&c);
        return mop_fail(MOP_E_NOMEM, "mop_partition_dirichlet: out of memory");
    }
    fed_rng r;
    mop_rng_seed(&r, seed);
    for (int64_t k = 0; k < c.n_cat; k++) {
        int64_t *ex = c.order + c.start[k];
        int64_t cnt = c.start[k + 1] - c.start[k];
        fed_shuffle_i64(&r, ex, cnt);
        /* p_j = G_j / Σ G, with G_j ~ Gamma(alpha), normalised in the log domain */
        double mx = -INFINITY;
        for (int32_t j = 0; j < n_clients; j++) {
            lg[j] = fed_rng_log_gamma(&r, (double)alpha);
            mx = lg[j] > mx ? lg[j] : mx;
        }
        double z = 0.0;
        for (int32_t j = 0; j < n_clients; j++)
            z += exp(lg[j] - mx);
        double cum = 0.0;
        int64_t prev = 0;
        for (int32_t j = 0; j < n_clients; j++) {
            cum += exp(lg[j] - mx) / z;
            int64_t cut = j == n_clients - 1 ? cnt : (int64_t)llround(cum * (double)cnt);
            if (cut > cnt)
                cut = cnt;
            if (cut < prev)
                cut = prev;
            for (int64_t e = prev; e < cut; e++)
                client_of[ex[e]] = j;
            prev = cut;
        }
    }
    mop_free(lg);
    release(&c);
    return MOP_OK;
}
