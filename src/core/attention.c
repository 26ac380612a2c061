/* Grouped-query causal attention with an optional biased prefix. */
#include <math.h>
#include <string.h>

#include "attention.h"

#define ATTN_BLOCK 64     /* keys scored per block of the online softmax */
#define ATTN_MAX_HD 1024  /* accumulator size on the stack */

typedef struct attn_job {
    float *out, *lse;
    const float *q, *k, *v;
    const attn_prefix *prefix;
    int32_t q_offset, T, n_head, n_head_kv, head_dim;
} attn_job;

/* Running state of one query's online softmax. */
typedef struct online_softmax {
    float m;  /* max score so far */
    float l;  /* Σ exp(s - m) */
    float *acc; /* (head_dim) Σ exp(s - m) v */
} online_softmax;

/* Fold keys [0, n) of (k, v) (rows strided by kv_stride) into st. */
static void attend_keys(online_softmax *st, const float *q, const float *k, const float *v,
                        const float *bias, int64_t n, int64_t kv_stride, int32_t hd, float scale)
{
    float s[ATTN_BLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += ATTN_BLOCK) {
        int64_t nb = MOP_MIN(ATTN_BLOCK, n - j0);
        float mb = -INFINITY;
        for (int64_t j = 0; j < nb; j++) {
            const float *kj = k + (j0 + j) * kv_stride;
            float dot = 0.0f;
            for (int32_t i = 0; i < hd; i++)
                dot += q[i] * kj[i];
            s[j] = dot * scale + (bias ? bias[j0 + j] : 0.0f);
            mb = s[j] > mb ? s[j] : mb;
        }
        if (mb == -INFINITY)
            continue; /* every key of the block is masked out by its bias */
        if (mb > st->m) {
            float r = expf(st->m - mb); /* 0 when m was -inf */
            st->l *= r;
            for (int32_t i = 0; i < hd; i++)
                st->acc[i] *= r;
            st->m = mb;
        }
        for (int64_t j = 0; j < nb; j++) {
            float p = expf(s[j] - st->m);
            const float *vj = v + (j0 + j) * kv_stride;
            st->l += p;
            for (int32_t i = 0; i < hd; i++)
                st->acc[i] += p * vj[i];
        }
    }
}

static void attention_worker(void *arg, int ith, int nth)
{
    const attn_job *a = arg;
    const int32_t hd = a->head_dim, group = a->n_head / a->n_head_kv;
    const int64_t q_stride = (int64_t)a->n_head * hd, kv_stride = (int64_t)a->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[ATTN_MAX_HD];
    /* Interleave (query, head) items so causal rows of every length spread evenly. */
    for (int64_t item = ith; item < (int64_t)a->T * a->n_head; item += nth) {
        int64_t t = item / a->n_head;
        int32_t h = (int32_t)(item % a->n_head), g = h / group;
        const float *q = a->q + t * q_stride + (int64_t)h * hd;
        online_softmax st = {-INFINITY, 0.0f, acc};
        memset(acc, 0, (size_t)hd * sizeof(float));
        if (a->prefix && a->prefix->P > 0)
            attend_keys(&st, q, a->prefix->k + (int64_t)g * hd, a->prefix->v + (int64_t)g * hd,
                        a->prefix->bias, a->prefix->P, kv_stride, hd, scale);
        attend_keys(&st, q, a->k + (int64_t)g * hd, a->v + (int64_t)g * hd, NULL,
                    a->q_offset + t + 1, kv_stride, hd, scale);
        float *o = a->out + t * q_stride + (int64_t)h * hd;
        float inv = 1.0f / st.l;
        for (int32_t i = 0; i < hd; i++)
            o[i] = acc[i] * inv;
        if (a->lse)
            a->lse[t * a->n_head + h] = st.m + logf(st.l);
    }
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       const attn_prefix *prefix, int32_t q_offset, int32_t T, int32_t n_head,
                       int32_t n_head_kv, int32_t head_dim, mop_pool *pool)
{
    attn_job job = {out, lse, q, k, v, prefix, q_offset, T, n_head, n_head_kv, head_dim};
    int64_t keys = (int64_t)(prefix ? prefix->P : 0) + q_offset + T;
    /* Waking the workers costs tens of microseconds: only for real work. */
    if ((int64_t)T * n_head * keys * head_dim < (1 << 16))
        pool = NULL;
    mop_pool_run(pool, attention_worker, &job);
}
