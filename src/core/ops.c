/* Elementwise kernels of the Llama block. See ops.h for shapes. */
#include <math.h>
#include <string.h>

#include "ops.h"

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                     int64_t T, int64_t d, float eps)
{
    for (int64_t t = 0; t < T; t++) {
        const float *x = inp + t * d;
        float *y = out + t * d;
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        for (int64_t i = 0; i < d; i++)
            y[i] = x[i] * r * weight[i];
        if (rstd)
            rstd[t] = r;
    }
}

/* ---- RoPE ------------------------------------------------------------- */

mop_status rope_frequencies(double *freq, const mop_hparams *hp)
{
    int32_t n_rot = hp->n_rot;
    if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > hp->head_dim || n_rot > 2 * ROPE_MAX_PAIRS)
        return mop_fail(MOP_E_INVALID_ARG,
                        "rope: n_rot %d must be even, <= %d and <= head_dim %d", n_rot,
                        2 * ROPE_MAX_PAIRS, hp->head_dim);
    if (!(hp->rope_theta > 0.0f))
        return mop_fail(MOP_E_INVALID_ARG, "rope: theta %g must be > 0", (double)hp->rope_theta);
    int32_t scaling = hp->rope_scaling;
    double factor = hp->rope_factor;
    if (scaling != MOP_ROPE_SCALING_NONE && !(factor > 0.0))
        return mop_fail(MOP_E_INVALID_ARG, "rope: scaling factor %g must be > 0", factor);
    if (scaling == MOP_ROPE_SCALING_LLAMA3 &&
        !(hp->rope_orig_ctx > 0 && hp->rope_high_freq_factor > hp->rope_low_freq_factor &&
          hp->rope_low_freq_factor > 0.0f))
        return mop_fail(MOP_E_INVALID_ARG,
                        "rope: llama3 scaling needs orig_ctx > 0 (%d) and "
                        "high_freq_factor %g > low_freq_factor %g > 0",
                        hp->rope_orig_ctx, (double)hp->rope_high_freq_factor,
                        (double)hp->rope_low_freq_factor);
    if (scaling < MOP_ROPE_SCALING_NONE || scaling > MOP_ROPE_SCALING_LLAMA3)
        return mop_fail(MOP_E_UNSUPPORTED, "rope: unknown scaling type %d", scaling);

    const double two_pi = 6.283185307179586476925;
    for (int32_t i = 0; i < n_rot / 2; i++) {
        double f = pow((double)hp->rope_theta, -2.0 * i / (double)n_rot);
        if (scaling == MOP_ROPE_SCALING_LINEAR) {
            f /= factor;
        } else if (scaling == MOP_ROPE_SCALING_LLAMA3) {
            double lo = hp->rope_low_freq_factor, hi = hp->rope_high_freq_factor;
            double orig = hp->rope_orig_ctx;
            double wavelen = two_pi / f;
            if (wavelen > orig / lo) { /* low frequency: fully scaled */
                f /= factor;
            } else if (wavelen >= orig / hi) { /* medium: interpolate */
                double smooth = (orig / wavelen - lo) / (hi - lo);
                f = (1.0 - smooth) * f / factor + smooth * f;
            } /* high frequency: unchanged */
        }
        freq[i] = f;
    }
    return MOP_OK;
}

mop_status rope_table_init(rope_table *rt, const mop_hparams *hp, int32_t n_pos)
{
    memset(rt, 0, sizeof *rt);
    int32_t half = hp->n_rot / 2;
    if (half <= 0 || n_pos < 0)
        return mop_fail(MOP_E_INVALID_ARG, "rope: n_rot %d, n_pos %d", hp->n_rot, n_pos);
    rt->freq = mop_alloc((size_t)half * sizeof(double));
    rt->cs = mop_alloc((size_t)n_pos * (size_t)half * 2 * sizeof(float) + 1);
    if (!rt->freq || !rt->cs) {
        rope_table_free(rt);
        return mop_fail(MOP_E_NOMEM, "rope: out of memory for a %d-position table", n_pos);
    }
    mop_status s = rope_frequencies(rt->freq, hp);
    if (s != MOP_OK) {
        rope_table_free(rt);
        return s;
    }
    rt->n_rot = hp->n_rot;
    rt->n_pos = n_pos;
    for (int32_t p = 0; p < n_pos; p++)
        for (int32_t i = 0; i < half; i++) {
            double a = (double)p * rt->freq[i];
            rt->cs[((size_t)p * half + i) * 2 + 0] = (float)cos(a);
            rt->cs[((size_t)p * half + i) * 2 + 1] = (float)sin(a);
        }
    return MOP_OK;
}

void rope_table_free(rope_table *rt)
{
    mop_free(rt->freq);
    mop_free(rt->cs);
    memset(rt, 0, sizeof *rt);
}

void rope_forward(float *out, const float *inp, const int32_t *pos, const rope_table *rt,
                  int64_t T, int32_t n_heads, int32_t head_dim)
{
    int32_t half = rt->n_rot / 2;
    float cs_fly[2 * ROPE_MAX_PAIRS]; /* angles of an untabulated position */
    for (int64_t t = 0; t < T; t++) {
        const float *cs;
        int32_t p = pos[t];
        if (p >= 0 && p < rt->n_pos) {
            cs = rt->cs + (size_t)p * half * 2;
        } else {
            for (int32_t i = 0; i < half; i++) {
                double a = (double)p * rt->freq[i];
                cs_fly[2 * i] = (float)cos(a);
                cs_fly[2 * i + 1] = (float)sin(a);
            }
            cs = cs_fly;
        }
        for (int32_t h = 0; h < n_heads; h++) {
            const float *x = inp + (t * n_heads + h) * head_dim;
            float *y = out + (t * n_heads + h) * head_dim;
            for (int32_t i = 0; i < half; i++) {
                float c = cs[2 * i], s = cs[2 * i + 1];
                float x0 = x[2 * i], x1 = x[2 * i + 1];
                y[2 * i] = x0 * c - x1 * s;
                y[2 * i + 1] = x0 * s + x1 * c;
            }
            if (y != x)
                for (int32_t i = 2 * half; i < head_dim; i++)
                    y[i] = x[i];
        }
    }
}

/* ---- MLP activation, softmax --------------------------------------------- */

void swiglu_forward(float *out, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void softmax_forward(float *out, const float *inp, int64_t n)
{
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        mx = inp[i] > mx ? inp[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        out[i] = expf(inp[i] - mx);
        sum += out[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        out[i] *= inv;
}

double logsumexp(const float *inp, int64_t n)
{
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        mx = inp[i] > mx ? inp[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += exp((double)inp[i] - (double)mx);
    return (double)mx + log(sum);
}

void add_inplace(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}
