/* Activation backward kernels of the Llama block. See backward.h for shapes
 * and conventions (outputs first, gradients accumulated). */
#include <math.h>
#include <string.h>

#include "backward.h"

/* ---- RMSNorm ------------------------------------------------------------ */

void rmsnorm_backward(float *dx, const float *dy, const float *x, const float *weight,
                      int64_t T, int d, float eps)
{
    /* y_i = x_i r w_i, r = (mean(x²) + eps)^(-1/2), ∂r/∂x_j = −r³ x_j / d:
     * dx_i = r w_i dy_i − r³ x_i / d · Σ_j dy_j w_j x_j */
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * d, *dyt = dy + t * d;
        float *dxt = dx + t * d;
        double ss = 0.0, dot = 0.0;
        for (int i = 0; i < d; i++) {
            ss += (double)xt[i] * xt[i];
            dot += (double)dyt[i] * weight[i] * xt[i];
        }
        double r = 1.0 / sqrt(ss / d + (double)eps);
        float rf = (float)r;
        float c = (float)(r * r * r * dot / d);
        for (int i = 0; i < d; i++)
            dxt[i] += rf * weight[i] * dyt[i] - c * xt[i];
    }
}

/* ---- RoPE --------------------------------------------------------------- */

void rope_backward(float *dx, const float *dy, const int32_t *pos, int64_t T, int n_heads,
                   int head_dim, int n_rot, const float *inv_freq, float pos_scale)
{
    /* forward: (y0, y1) = (x0 c − x1 s, x0 s + x1 c); transpose:
     * dx0 = dy0 c + dy1 s, dx1 = −dy0 s + dy1 c */
    for (int64_t t = 0; t < T; t++) {
        double p = (double)pos[t] * (double)pos_scale;
        for (int i = 0; i < n_rot / 2; i++) {
            double ang = p * (double)inv_freq[i];
            float c = (float)cos(ang), s = (float)sin(ang);
            for (int h = 0; h < n_heads; h++) {
                int64_t o = (t * n_heads + h) * (int64_t)head_dim + 2 * i;
                float g0 = dy[o], g1 = dy[o + 1];
                dx[o] += g0 * c + g1 * s;
                dx[o + 1] += -g0 * s + g1 * c;
            }
        }
        for (int h = 0; h < n_heads; h++) {
            int64_t o = (t * n_heads + h) * (int64_t)head_dim;
            for (int i = n_rot; i < head_dim; i++)
                dx[o + i] += dy[o + i];
        }
    }
}

/* ---- SwiGLU ------------------------------------------------------------- */

void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                     const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        float sg = 1.0f / (1.0f + expf(-g));
        float silu = g * sg;
        dgate[i] += dh[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        dup[i] += dh[i] * silu;
    }
}

/* ---- Attention with a prefix ------------------------------------------- */

static float dot_f(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* scores (n_keys) of query row qh against the allowed keys of kv head kvh;
 * returns the number of keys n_prefix + t + 1. */
static int64_t attention_scores(float *s, const float *qh, const float *k, const float *bias,
                                int64_t t, int64_t n_prefix, int n_head_kv, int kvh,
                                int head_dim, float inv_sqrt)
{
    int64_t n_keys = n_prefix + t + 1;
    for (int64_t j = 0; j < n_keys; j++) {
        const float *kj = k + (j * n_head_kv + kvh) * (int64_t)head_dim;
        s[j] = dot_f(qh, kj, head_dim) * inv_sqrt;
        if (bias && j < n_prefix)
            s[j] += bias[j];
    }
    return n_keys;
}

/* s (n) -> p = exp(s − lse) in place; returns lse = max + log Σ exp(s − max). */
static double softmax_row(float *s, int64_t n)
{
    float mx = s[0];
    for (int64_t j = 1; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) {
        float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < n; j++)
        s[j] *= inv;
    return (double)mx + log(sum);
}

void attention_forward_lse(float *out, float *lse, float *scratch, const float *q,
                           const float *k, const float *v, const float *bias, int64_t T,
                           int64_t n_prefix, int n_head, int n_head_kv, int head_dim)
{
    int group = n_head / n_head_kv;
    float inv_sqrt = (float)(1.0 / sqrt((double)head_dim));
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < n_head; h++) {
            int kvh = h / group;
            const float *qh = q + (t * n_head + h) * (int64_t)head_dim;
            float *oh = out + (t * n_head + h) * (int64_t)head_dim;
            float *p = scratch; /* (n_keys) */
            int64_t n_keys =
                attention_scores(p, qh, k, bias, t, n_prefix, n_head_kv, kvh, head_dim, inv_sqrt);
            double l = softmax_row(p, n_keys);
            if (lse)
                lse[t * n_head + h] = (float)l;
            memset(oh, 0, (size_t)head_dim * sizeof *oh);
            for (int64_t j = 0; j < n_keys; j++) {
                const float *vj = v + (j * n_head_kv + kvh) * (int64_t)head_dim;
                float pj = p[j];
                for (int i = 0; i < head_dim; i++)
                    oh[i] += pj * vj[i];
            }
        }
}

/* ---- Cross-entropy ------------------------------------------------------ */

static int ce_counted(int32_t target, int64_t V)
{
    return target >= 0 && (int64_t)target < V;
}

/* max of the row and Σ exp(x − max) in double */
static void ce_row_stats(float *mx_out, double *sum_out, const float *x, int64_t V)
{
    float mx = x[0];
    for (int64_t i = 1; i < V; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++)
        sum += expf(x[i] - mx);
    *mx_out = mx;
    *sum_out = sum;
}

void cross_entropy_forward(float *loss_out, const float *logits, const int32_t *targets,
                           int64_t T, int64_t V, float scale)
{
    double loss = 0.0;
    for (int64_t t = 0; t < T; t++) {
        if (!ce_counted(targets[t], V))
            continue;
        const float *x = logits + t * V;
        float mx;
        double sum;
        ce_row_stats(&mx, &sum, x, V);
        /* −log p_target = log Σ exp(x − mx) − (x_target − mx) */
        loss += log(sum) - ((double)x[targets[t]] - mx);
    }
    *loss_out = (float)(loss * scale);
}

void cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                            int64_t T, int64_t V, float scale)
{
    for (int64_t t = 0; t < T; t++) {
        const float *x = logits + t * V;
        float *dx = dlogits + t * V;
        int32_t tg = targets[t];
        if (!ce_counted(tg, V)) {
            memset(dx, 0, (size_t)V * sizeof *dx);
            continue;
        }
        float mx;
        double sum;
        ce_row_stats(&mx, &sum, x, V);
        float c = (float)(scale / sum);
        for (int64_t i = 0; i < V; i++)
            dx[i] = expf(x[i] - mx) * c;
        dx[tg] -= scale;
    }
}
