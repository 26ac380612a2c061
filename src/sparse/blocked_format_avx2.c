/* AVX2 matvec for blocked-index weights: 8 entries per step, u8 indices
 * widened to int32 plus their block's first column, x gathered there.
 *
 * Rows of at most FLAT_BLOCKS blocks (SmolLM2: 3 or 6) run as one flat
 * sequence of entries: a lane's block is the number of block boundaries
 * (prefix sums of the counts) at or below its entry position, so only the
 * row's last step is masked. Wider rows go block by block, each block's
 * last partial step masked. */
#include "sparse.h"
#include "sparse_avx2.h"

#define FLAT_BLOCKS 8

/* y[r] for a row of nblk <= FLAT_BLOCKS blocks. */
static float flat_row(const sparse_blocked *p, const float *x, int64_t r)
{
    const uint16_t *cnt = p->cnt + r * p->nblk;
    const uint8_t *idx = p->idx + p->row_off[r]; /* padded: loads may over-read */
    const float *v = p->vals + p->row_off[r];
    const int64_t total = p->row_off[r + 1] - p->row_off[r];
    const int nb = (int)p->nblk - 1; /* boundaries */
    __m256i bound[FLAT_BLOCKS];
    int32_t sum = 0;
    for (int b = 0; b < nb; b++) {
        sum += cnt[b];
        bound[b] = _mm256_set1_epi32(sum - 1); /* pos > sum − 1  <=>  pos >= sum */
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k < total; k += 8) {
        const __m256i pos = _mm256_add_epi32(_mm256_set1_epi32((int)k), lane);
        __m256i blk = _mm256_setzero_si256();
        for (int b = 0; b < nb; b++) /* cmpgt gives −1 per boundary passed */
            blk = _mm256_sub_epi32(blk, _mm256_cmpgt_epi32(pos, bound[b]));
        const __m256i c = _mm256_add_epi32(
            _mm256_slli_epi32(blk, 8), _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + k))));
        if (k + 8 <= total) {
            const __m256 xv = _mm256_i32gather_ps(x, c, 4);
            if (k & 8)
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k), xv, acc1);
            else
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k), xv, acc0);
        } else {
            const __m256i m = sparse_tail_mask(total - k);
            const __m256 xv =
                _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, c, _mm256_castsi256_ps(m), 4);
            acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(v + k, m), xv, acc1);
        }
    }
    return sparse_hsum8(_mm256_add_ps(acc0, acc1));
}

void blocked_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1)
{
    const sparse_blocked *p = w->impl;
    if (p->nblk <= FLAT_BLOCKS) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = flat_row(p, x, r);
        return;
    }
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
