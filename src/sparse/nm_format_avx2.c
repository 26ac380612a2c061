/* AVX2 matvec for N:M weights: 8 slots per step. The slot's column is
 * base[s] + its 4-bit index (8 nibbles = one 32-bit word, expanded with a
 * variable shift), x is gathered there and multiplied with the 8 values.
 * Two accumulators alternate; the last partial step is masked. */
#include <string.h>

#include "sparse.h"
#include "sparse_avx2.h"

SPARSE_AI __m256i nibbles(const uint8_t *idx, const __m256i shifts)
{
    uint32_t word;
    memcpy(&word, idx, 4);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts),
                            _mm256_set1_epi32(15));
}

void nm_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1)
{
    const sparse_nm *p = w->impl;
    const int64_t S = p->slots;
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    for (int64_t r = r0; r < r1; r++) {
        const float *v = p->vals + r * S;
        const uint8_t *idx = p->idx + r * p->idx_stride;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t s = 0;
        for (; s + 16 <= S; s += 16) {
            __m256i c0 = _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                          _mm256_loadu_si256((const __m256i *)(p->base + s)));
            __m256i c1 = _mm256_add_epi32(nibbles(idx + s / 2 + 4, shifts),
                                          _mm256_loadu_si256((const __m256i *)(p->base + s + 8)));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s), _mm256_i32gather_ps(x, c0, 4), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s + 8), _mm256_i32gather_ps(x, c1, 4),
                                   acc1);
        }
        for (; s + 8 <= S; s += 8) {
            __m256i c0 = _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                          _mm256_loadu_si256((const __m256i *)(p->base + s)));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s), _mm256_i32gather_ps(x, c0, 4), acc0);
        }
        if (s < S) { /* buffers are padded: the index word and base may over-read */
            const __m256i m = sparse_tail_mask(S - s);
            __m256i c0 = _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                          _mm256_loadu_si256((const __m256i *)(p->base + s)));
            __m256 xv = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, c0,
                                                 _mm256_castsi256_ps(m), 4);
            acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(v + s, m), xv, acc1);
        }
        y[r] = sparse_hsum8(_mm256_add_ps(acc0, acc1));
    }
}
