/* Token sampling: greedy, or temperature -> top-k -> top-p -> seeded draw. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "rng.h"

typedef struct candidate {
    float logit;
    int32_t id;
} candidate;

struct mop_sampler {
    mop_sampler_params p;
    mop_rng rng;     /* xoshiro256** */
    candidate *cand; /* (cap) */
    double *prob;    /* (cap) */
    int32_t cap;
};

/* ---- lifetime ---------------------------------------------------------------- */

/* first release (0.1.0) */
#define SAMPLER_PARAMS_MIN MOP_SIZE_THROUGH(mop_sampler_params, seed)

static void sampler_defaults(mop_sampler_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->temperature = 0.8f;
    d->top_k = 40;
    d->top_p = 0.95f;
    d->seed = 42;
}

MOP_DEFINE_PARAMS_INIT(sampler, SAMPLER_PARAMS_MIN)

mop_status mop_sampler_create(const mop_sampler_params *params, mop_sampler **out)
{
    MOP_CHECK_ARG(params);
    MOP_CHECK_ARG(out);
    mop_sampler_params p;
    sampler_defaults(&p);
    MOP_READ_STRUCT("mop_sampler_create", &p, params, SAMPLER_PARAMS_MIN);
    if (!(p.temperature >= 0.0f) || isinf(p.temperature))
        return mop_fail(MOP_E_INVALID_ARG, "mop_sampler_create: temperature %g must be >= 0",
                        (double)p.temperature);
    if (p.top_k < 0)
        return mop_fail(MOP_E_INVALID_ARG, "mop_sampler_create: top_k %d must be >= 0", p.top_k);
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
        return mop_fail(MOP_E_INVALID_ARG, "mop_sampler_create: top_p %g must be in (0, 1]",
                        (double)p.top_p);
    mop_sampler *s = mop_calloc(1, sizeof *s);
    if (!s)
        return mop_fail(MOP_E_NOMEM, "mop_sampler_create: out of memory");
    s->p = p;
    mop_rng_seed(&s->rng, p.seed);
    *out = s;
    return MOP_OK;
}

void mop_sampler_free(mop_sampler *s)
{
    if (!s)
        return;
    mop_free(s->cand);
    mop_free(s->prob);
    mop_free(s);
}

/* ---- candidate selection ------------------------------------------------------ */

/* a ranks before b: higher logit, ties to the lower id (deterministic). */
static int ranks_before(candidate a, candidate b)
{
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static int cmp_rank(const void *pa, const void *pb)
{
    candidate a = *(const candidate *)pa, b = *(const candidate *)pb;
    return ranks_before(a, b) ? -1 : ranks_before(b, a) ? 1 : 0;
}

/* Heap whose root is the worst-ranked kept candidate. */
static void sift_down(candidate *h, int32_t n, int32_t i)
{
    for (;;) {
        int32_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_before(h[w], h[l]))
            w = l;
        if (r < n && ranks_before(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        candidate t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* cand (k) = the k best-ranked logits, sorted best first. O(n log k). */
static void select_top_k(candidate *cand, const float *logits, int32_t n, int32_t k)
{
    for (int32_t i = 0; i < k; i++)
        cand[i] = (candidate){logits[i], i};
    for (int32_t i = k / 2 - 1; i >= 0; i--)
        sift_down(cand, k, i);
    for (int32_t i = k; i < n; i++) {
        candidate c = {logits[i], i};
        if (ranks_before(c, cand[0])) {
            cand[0] = c;
            sift_down(cand, k, 0);
        }
    }
    qsort(cand, (size_t)k, sizeof *cand, cmp_rank);
}

mop_status mop_sampler_sample(mop_sampler *s, const float *logits, int32_t n_vocab,
                              int32_t *token)
{
    MOP_CHECK_ARG(s);
    MOP_CHECK_ARG(logits);
    MOP_CHECK_ARG(token);
    if (n_vocab < 1)
        return mop_fail(MOP_E_INVALID_ARG, "mop_sampler_sample: n_vocab %d must be >= 1",
                        n_vocab);
    int32_t best = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (isnan(logits[i]) || logits[i] == INFINITY)
            return mop_fail(MOP_E_INVALID_ARG, "mop_sampler_sample: logit %d is %s", i,
                            isnan(logits[i]) ? "NaN" : "+inf");
        if (logits[i] > logits[best])
            best = i;
    }
    if (s->p.temperature == 0.0f || logits[best] == -INFINITY) {
        *token = best; /* greedy; also when every logit is -inf */
        return MOP_OK;
    }
    if (n_vocab > s->cap) {
        candidate *c = mop_alloc((size_t)n_vocab * sizeof *c);
        double *p = mop_alloc((size_t)n_vocab * sizeof *p);
        if (!c || !p) {
            mop_free(c);
            mop_free(p);
            return mop_fail(MOP_E_NOMEM, "mop_sampler_sample: out of memory for %d candidates",
                            n_vocab);
        }
        mop_free(s->cand);
        mop_free(s->prob);
        s->cand = c;
        s->prob = p;
        s->cap = n_vocab;
    }

    /* top-k (k = n keeps all; sorting is needed only for top-p) */
    int32_t k = s->p.top_k == 0 || s->p.top_k > n_vocab ? n_vocab : s->p.top_k;
    if (k < n_vocab || s->p.top_p < 1.0f) {
        select_top_k(s->cand, logits, n_vocab, k);
    } else {
        for (int32_t i = 0; i < n_vocab; i++)
            s->cand[i] = (candidate){logits[i], i};
    }

    /* softmax(logit / T) over the candidates; the max is logits[best] */
    double inv_t = 1.0 / (double)s->p.temperature, sum = 0.0;
    for (int32_t i = 0; i < k; i++) {
        s->prob[i] = exp(((double)s->cand[i].logit - (double)logits[best]) * inv_t);
        sum += s->prob[i];
    }

    /* top-p: smallest prefix of the sorted candidates with mass >= top_p */
    if (s->p.top_p < 1.0f) {
        double cum = 0.0, target = (double)s->p.top_p * sum;
        int32_t m = 0;
        while (m < k) {
            cum += s->prob[m++];
            if (cum >= target)
                break;
        }
        k = m;
        sum = cum;
    }

    double u = mop_rng_uniform(&s->rng) * sum, acc = 0.0;
    for (int32_t i = 0; i < k; i++) {
        acc += s->prob[i];
        if (u < acc) {
            *token = s->cand[i].id;
            return MOP_OK;
        }
    }
    *token = s->cand[k - 1].id; /* rounding left u at the very top */
    return MOP_OK;
}
