/* Grouped-query causal attention with an optional biased prefix. */
#include <math.h>
#include <string.h>

#include "attention.h"
#include "cpu.h"

#define ATTN_BLOCK 64     /* keys scored per block of the online softmax */
#define ATTN_MAX_HD 1024  /* accumulator size on the stack */

typedef struct attn_job {
    float *out, *lse;
    const float *q, *k, *v;
    const attn_prefix *prefix;
    int32_t q_offset, T, n_head, n_head_kv, head_dim;
    int avx2; /* AVX2 inner loops (cpu.c found them, head_dim % 8 == 0) */
} attn_job;

/* Running state of one query's online softmax. */
typedef struct online_softmax {
    float m;  /* max score so far */
    float l;  /* Σ exp(s - m) */
    float *acc; /* (head_dim) Σ exp(s - m) v */
} online_softmax;

/* Portable path: q · k over hd dims in eight partial sums, a fixed order the
 * compiler vectorises at baseline x86-64 without -ffast-math (the single
 * running sum this replaced is one dependent add chain per dimension: it made
 * attention 20 % of a 128-token prefill). */
static inline float dot(const float *q, const float *k, int32_t hd)
{
    float s[8] = {0};
    int32_t i = 0;
    for (; i + 8 <= hd; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += q[i + j] * k[i + j];
    float tail = 0.0f;
    for (; i < hd; i++)
        tail += q[i] * k[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

/* Fold keys [0, n) of (k, v) (rows strided by kv_stride) into st: per block,
 * scores, then their exponentials, then the weighted sum of the values.
 * avx2: use the AVX2 loops (attention_avx2.c; hd % 8 == 0). */
static void attend_keys(online_softmax *st, const float *q, const float *k, const float *v,
                        const float *bias, int64_t n, int64_t kv_stride, int32_t hd, float scale,
                        int avx2)
{
    float s[ATTN_BLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += ATTN_BLOCK) {
        int64_t nb = MOP_MIN(ATTN_BLOCK, n - j0);
        const float *kb = k + j0 * kv_stride, *vb = v + j0 * kv_stride;
        if (avx2)
            attn_scores_avx2(s, q, kb, nb, kv_stride, hd);
        else
            for (int64_t j = 0; j < nb; j++)
                s[j] = dot(q, kb + j * kv_stride, hd);
        float mb = -INFINITY;
        for (int64_t j = 0; j < nb; j++) {
            s[j] = s[j] * scale + (bias ? bias[j0 + j] : 0.0f);
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
        for (int64_t j = 0; j < nb; j++) { /* s becomes the block's weights p */
            s[j] = expf(s[j] - st->m);
            st->l += s[j];
        }
        if (avx2) {
            attn_accum_avx2(st->acc, s, vb, nb, kv_stride, hd);
        } else {
            for (int64_t j = 0; j < nb; j++) {
                const float *vj = vb + j * kv_stride;
                for (int32_t i = 0; i < hd; i++)
                    st->acc[i] += s[j] * vj[i];
            }
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
                        a->prefix->bias, a->prefix->P, kv_stride, hd, scale, a->avx2);
        attend_keys(&st, q, a->k + (int64_t)g * hd, a->v + (int64_t)g * hd, NULL,
                    a->q_offset + t + 1, kv_stride, hd, scale, a->avx2);
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
    attn_job job = {out, lse, q, k, v, prefix, q_offset, T, n_head, n_head_kv, head_dim,
                    cpu_current() == CPU_AVX2 && head_dim % 8 == 0};
    int64_t keys = (int64_t)(prefix ? prefix->P : 0) + q_offset + T;
    /* Waking the workers costs tens of microseconds: only for real work. */
    if ((int64_t)T * n_head * keys * head_dim < (1 << 16))
        pool = NULL;
    mop_pool_run(pool, attention_worker, &job);
}

typedef struct attn_rows_job {
    float *out;
    const float *q;
    const attn_row *rows;
    int32_t B, n_head, n_head_kv, head_dim;
    int avx2;
} attn_rows_job;

static void attention_rows_worker(void *arg, int ith, int nth)
{
    const attn_rows_job *a = arg;
    const int32_t hd = a->head_dim, group = a->n_head / a->n_head_kv;
    const int64_t q_stride = (int64_t)a->n_head * hd, kv_stride = (int64_t)a->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[ATTN_MAX_HD];
    for (int64_t item = ith; item < (int64_t)a->B * a->n_head; item += nth) {
        int64_t b = item / a->n_head;
        int32_t h = (int32_t)(item % a->n_head), g = h / group;
        const attn_row *r = &a->rows[b];
        const float *q = a->q + b * q_stride + (int64_t)h * hd;
        online_softmax st = {-INFINITY, 0.0f, acc};
        memset(acc, 0, (size_t)hd * sizeof(float));
        if (r->prefix.P > 0)
            attend_keys(&st, q, r->prefix.k + (int64_t)g * hd, r->prefix.v + (int64_t)g * hd,
                        r->prefix.bias, r->prefix.P, kv_stride, hd, scale, a->avx2);
        attend_keys(&st, q, r->k + (int64_t)g * hd, r->v + (int64_t)g * hd, NULL,
                    r->q_offset + 1, kv_stride, hd, scale, a->avx2);
        float *o = a->out + b * q_stride + (int64_t)h * hd;
        float inv = 1.0f / st.l;
        for (int32_t i = 0; i < hd; i++)
            o[i] = acc[i] * inv;
    }
}

void attention_forward_rows(float *out, const float *q, const attn_row *rows, int32_t B,
                            int32_t n_head, int32_t n_head_kv, int32_t head_dim, mop_pool *pool)
{
    attn_rows_job job = {out, q, rows, B, n_head, n_head_kv, head_dim,
                         cpu_current() == CPU_AVX2 && head_dim % 8 == 0};
    int64_t keys = 0;
    for (int32_t b = 0; b < B; b++)
        keys += (int64_t)rows[b].prefix.P + rows[b].q_offset + 1;
    if ((int64_t)n_head * keys * head_dim < (1 << 16))
        pool = NULL;
    mop_pool_run(pool, attention_rows_worker, &job);
}
