/* Small AVX2 helpers for the sparse kernels (include only from *_avx2.c). */
#ifndef MOP_SPARSE_AVX2_H
#define MOP_SPARSE_AVX2_H

#include <immintrin.h>
#include <stdint.h>

#define SPARSE_AI static inline __attribute__((always_inline))

SPARSE_AI float sparse_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lanes [0, m) set, for m in 0..8. */
SPARSE_AI __m256i sparse_tail_mask(int64_t m)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), lane);
}

#endif
