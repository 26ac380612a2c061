/* Backward of attention with a prefix (backward.h), split by query head.
 *
 * Per head h (kv head g = h / group), per query row t: recompute the row's
 * scores and probabilities p, then dP_j = dout·v_j, dS_j = p_j (dP_j − D),
 * dq[t,h] += Σ_j dS_j k_j / √hd, and the key/value terms dk_j += dS_j q / √hd,
 * dv_j += p_j dout. Heads of one kv group share dk_j, dv_j and all heads share
 * dbias, so each head sums those into its own block of scratch (keys × hd
 * for dk and dv, n_prefix for dbias); the blocks are added into dk, dv and
 * dbias in head order after the pool run. */
#include <math.h>
#include <string.h>

#include "attention.h"
#include "backward.h"
#include "cpu.h"
#include "ops.h"

/* Per-head scratch layout (floats): p (n_keys), ds (n_keys), dk (n_keys·hd),
 * dv (n_keys·hd), dbias (n_keys). */
static int64_t head_block(int64_t n_keys, int head_dim)
{
    return n_keys * (3 + 2 * (int64_t)head_dim);
}

int64_t attention_backward_scratch(int64_t n_keys, int n_head, int head_dim)
{
    return (int64_t)n_head * head_block(n_keys, head_dim);
}

typedef struct attn_bwd_job {
    float *dq, *scratch;
    const float *dout, *q, *k, *v, *lse, *bias;
    int64_t T, n_prefix;
    int n_head, n_head_kv, head_dim;
    int want_k, want_v, want_bias, avx2;
} attn_bwd_job;

static float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* s[j] = a·rows[j] for j < n (rows strided). */
static void dots(float *s, const float *a, const float *rows, int64_t n, int64_t stride, int hd,
                 int avx2)
{
    if (avx2) {
        attn_scores_avx2(s, a, rows, n, stride, hd);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        s[j] = dot(a, rows + j * stride, hd);
}

/* acc (hd) += Σ_j c[j] rows[j]. */
static void accum(float *acc, const float *c, const float *rows, int64_t n, int64_t stride, int hd,
                  int avx2)
{
    if (avx2) {
        attn_accum_avx2(acc, c, rows, n, stride, hd);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        for (int i = 0; i < hd; i++)
            acc[i] += c[j] * rows[j * stride + i];
}

/* D[j] (hd, contiguous rows) += c[j] x for j < n. */
static void outer(float *D, const float *c, const float *x, int64_t n, int hd, int avx2)
{
    if (avx2) {
        attn_outer_avx2(D, c, x, n, hd);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        for (int i = 0; i < hd; i++)
            D[j * hd + i] += c[j] * x[i];
}

static void attn_bwd_worker(void *arg, int ith, int nth)
{
    const attn_bwd_job *a = arg;
    const int hd = a->head_dim, group = a->n_head / a->n_head_kv;
    const int64_t n_max = a->n_prefix + a->T, qs = (int64_t)a->n_head * hd,
                  kvs = (int64_t)a->n_head_kv * hd;
    const float inv_sqrt = (float)(1.0 / sqrt((double)hd));
    for (int h = ith; h < a->n_head; h += nth) {
        const int g = h / group;
        float *blk = a->scratch + (int64_t)h * head_block(n_max, hd);
        float *p = blk, *ds = p + n_max, *dkh = ds + n_max, *dvh = dkh + n_max * hd,
              *dbh = dvh + n_max * hd;
        memset(dkh, 0, (size_t)(2 * n_max * hd + n_max) * sizeof(float));
        const float *kg = a->k + (int64_t)g * hd, *vg = a->v + (int64_t)g * hd;
        for (int64_t t = 0; t < a->T; t++) {
            const float *qh = a->q + t * qs + (int64_t)h * hd, *doh = a->dout + t * qs + (int64_t)h * hd;
            const int64_t n = a->n_prefix + t + 1;
            dots(p, qh, kg, n, kvs, hd, a->avx2);
            for (int64_t j = 0; j < n; j++)
                p[j] *= inv_sqrt;
            if (a->bias)
                for (int64_t j = 0; j < a->n_prefix; j++)
                    p[j] += a->bias[j];
            if (a->lse) {
                const float l = a->lse[t * a->n_head + h];
                for (int64_t j = 0; j < n; j++)
                    p[j] = expf(p[j] - l);
            } else {
                softmax_forward(p, p, n);
            }
            dots(ds, doh, vg, n, kvs, hd, a->avx2); /* dP_j */
            double D = 0.0;
            for (int64_t j = 0; j < n; j++)
                D += (double)p[j] * ds[j];
            const float Df = (float)D;
            for (int64_t j = 0; j < n; j++)
                ds[j] = p[j] * (ds[j] - Df); /* dS_j */
            if (a->want_bias)
                for (int64_t j = 0; j < a->n_prefix; j++)
                    dbh[j] += ds[j];
            for (int64_t j = 0; j < n; j++)
                ds[j] *= inv_sqrt;
            if (a->dq)
                accum(a->dq + t * qs + (int64_t)h * hd, ds, kg, n, kvs, hd, a->avx2);
            if (a->want_k)
                outer(dkh, ds, qh, n, hd, a->avx2);
            if (a->want_v)
                outer(dvh, p, doh, n, hd, a->avx2);
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, float *dbias, float *scratch,
                        const float *dout, const float *q, const float *k, const float *v,
                        const float *lse, const float *bias, int64_t T, int64_t n_prefix,
                        int n_head, int n_head_kv, int head_dim, mop_pool *pool)
{
    attn_bwd_job job = {dq,       scratch,  dout,      q,          k,         v,
                        lse,      bias,     T,         n_prefix,   n_head,    n_head_kv,
                        head_dim, dk != NULL, dv != NULL, dbias != NULL,
                        cpu_current() == CPU_AVX2 && head_dim % 8 == 0};
    mop_pool_run(pool, attn_bwd_worker, &job);
    const int64_t n_max = n_prefix + T, kvs = (int64_t)n_head_kv * head_dim;
    const int group = n_head / n_head_kv;
    for (int h = 0; h < n_head; h++) {
        const float *blk = scratch + (int64_t)h * head_block(n_max, head_dim);
        const float *dkh = blk + 2 * n_max, *dvh = dkh + n_max * head_dim, *dbh = dvh + n_max * head_dim;
        const int64_t g = h / group;
        for (int64_t j = 0; j < n_max; j++)
            for (int i = 0; i < head_dim; i++) {
                if (dk)
                    dk[j * kvs + g * head_dim + i] += dkh[j * head_dim + i];
                if (dv)
                    dv[j * kvs + g * head_dim + i] += dvh[j * head_dim + i];
            }
        if (dbias)
            for (int64_t j = 0; j < n_prefix; j++)
                dbias[j] += dbh[j];
    }
}
