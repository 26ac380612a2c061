/* AVX2/FMA inner loops of attention (attention.c): the scores of a block of
 * keys and the probability-weighted sum of their values. Compiled with
 * -mavx2 -mfma; called only when cpu_current() == CPU_AVX2 and head_dim is a
 * multiple of 8. In a 128-token prefill these two loops are the whole cost
 * of attention (~10 % of the prefill in portable C). */
#include <immintrin.h>

#include "attention.h"

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

void attn_scores_avx2(float *s, const float *q, const float *k, int64_t n, int64_t stride,
                      int32_t hd)
{
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) { /* two keys: two independent FMA chains */
        const float *k0 = k + j * stride, *k1 = k0 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int32_t i = 0; i < hd; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
        }
        s[j] = hsum8(a0);
        s[j + 1] = hsum8(a1);
    }
    if (j < n) {
        const float *k0 = k + j * stride;
        __m256 a0 = _mm256_setzero_ps();
        for (int32_t i = 0; i < hd; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k0 + i), a0);
        s[j] = hsum8(a0);
    }
}

void attn_accum_avx2(float *acc, const float *p, const float *v, int64_t n, int64_t stride,
                     int32_t hd)
{
    /* 64 dims of acc live in 8 registers while all n values stream past. */
    int32_t i0 = 0;
    for (; i0 + 64 <= hd; i0 += 64) {
        __m256 a[8];
        for (int m = 0; m < 8; m++)
            a[m] = _mm256_loadu_ps(acc + i0 + 8 * m);
        for (int64_t j = 0; j < n; j++) {
            __m256 pj = _mm256_broadcast_ss(p + j);
            const float *vj = v + j * stride + i0;
            for (int m = 0; m < 8; m++)
                a[m] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * m), a[m]);
        }
        for (int m = 0; m < 8; m++)
            _mm256_storeu_ps(acc + i0 + 8 * m, a[m]);
    }
    for (; i0 < hd; i0 += 8) {
        __m256 a = _mm256_loadu_ps(acc + i0);
        for (int64_t j = 0; j < n; j++)
            a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(v + j * stride + i0),
                                a);
        _mm256_storeu_ps(acc + i0, a);
    }
}

void attn_outer_avx2(float *D, const float *c, const float *x, int64_t n, int32_t hd)
{
    for (int32_t i0 = 0; i0 < hd; i0 += 32) { /* 32 dims of x in registers */
        const int32_t w = hd - i0 < 32 ? hd - i0 : 32;
        __m256 xv[4];
        for (int m = 0; m < w / 8; m++)
            xv[m] = _mm256_loadu_ps(x + i0 + 8 * m);
        for (int64_t j = 0; j < n; j++) {
            const __m256 cj = _mm256_broadcast_ss(c + j);
            float *d = D + j * hd + i0;
            for (int m = 0; m < w / 8; m++)
                _mm256_storeu_ps(d + 8 * m, _mm256_fmadd_ps(cj, xv[m], _mm256_loadu_ps(d + 8 * m)));
        }
    }
}
