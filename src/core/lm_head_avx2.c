/* AVX2/FMA/F16C row kernels of the compact LM head (lm_head.h). */
#include <immintrin.h>
#include <string.h>

#include "lm_head.h"

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// y (r1-r0) = W[r0:r1] (F16, cols) · x (cols)
void lm_f16_rows_avx2(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                      int64_t cols, int64_t r0, int64_t r1)
{
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *w = (const uint16_t *)(const void *)(W + (uint64_t)r * row_bytes);
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= cols; k += 16) {
            __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k)));
            __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k + 8)));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + k), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + k + 8), a1);
        }
        float s = hsum(_mm256_add_ps(a0, a1));
        for (; k < cols; k++)
            s += _cvtsh_ss(w[k]) * x[k];
        y[r] = s;
    }
}

// y (r1-r0) = W[r0:r1] (Q8_0 blocks of 32: f16 d, i8 q[32]) · x (cols)
void lm_q8_0_rows_avx2(float *y, const float *x, const uint8_t *W, uint64_t row_bytes,
                       int64_t cols, int64_t r0, int64_t r1)
{
    const int64_t nb = cols / 32;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *b = W + (uint64_t)r * row_bytes;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; i++, b += 34) {
            uint16_t dh;
            memcpy(&dh, b, 2);
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
            const __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
            const float *xb = x + i * 32;
            __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
            __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
            __m256 q2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            __m256 q3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
            __m256 s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
            s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s);
            s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s);
            s = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s);
            acc = _mm256_fmadd_ps(d, s, acc);
        }
        y[r] = hsum(acc);
    }
}

void lm_f32_to_f16_avx2(uint16_t *dst, const float *src, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
