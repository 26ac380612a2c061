/* AVX2 matvec for blocked-index weights: per block of 256 columns, 8 entries
 * per step: u8 indices widened to int32, plus the block's first column, x
 * gathered there; the block's last partial step is masked. */
#include "sparse.h"
#include "sparse_avx2.h"

void blocked_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1)
{
    const sparse_blocked *p = w->impl;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *cnt = p->cnt + r * p->nblk;
        const uint8_t *idx = p->idx + p->row_off[r]; /* padded: loads may over-read */
        const float *v = p->vals + p->row_off[r];
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int64_t b = 0; b < p->nblk; b++) {
            const int nb = cnt[b];
            const __m256i base = _mm256_set1_epi32((int)(b * SPARSE_BLOCK_COLS));
            int k = 0;
            for (; k + 16 <= nb; k += 16) {
                __m256i c0 = _mm256_add_epi32(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + k))), base);
                __m256i c1 = _mm256_add_epi32(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + k + 8))), base);
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k), _mm256_i32gather_ps(x, c0, 4), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k + 8), _mm256_i32gather_ps(x, c1, 4),
                                       acc1);
            }
            for (; k + 8 <= nb; k += 8) {
                __m256i c0 = _mm256_add_epi32(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + k))), base);
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k), _mm256_i32gather_ps(x, c0, 4), acc0);
            }
            if (k < nb) {
                const __m256i m = sparse_tail_mask(nb - k);
                __m256i c0 = _mm256_add_epi32(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + k))), base);
                __m256 xv = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, c0,
                                                     _mm256_castsi256_ps(m), 4);
                acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(v + k, m), xv, acc1);
            }
            idx += nb;
            v += nb;
        }
        y[r] = sparse_hsum8(_mm256_add_ps(acc0, acc1));
    }
}
