/* AVX2 decode and matvec for N:M weights, 8 slots per step. A slot's column
 * is base[s] + its 4-bit index (8 nibbles = one 32-bit word, expanded with a
 * variable shift). Where a step's 8 columns lie in a 16-column window (2:4,
 * 4:8, 3:4, 7:8: every step but the row's last ones), the matvec loads that
 * window of x and picks the 8 values with two lane permutes and a blend,
 * which is several times cheaper than a gather; when N divides 8 every step
 * has the same lanes and the window moves by 8/N groups, so neither the
 * lanes nor the window start are loaded per step. Elsewhere it gathers, the
 * last partial step masked. */
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

/* nm_decode, 8 slots per step (sparse.h); idx and base are padded, so the
 * last step may over-read. Callers start rows and column blocks at slots
 * that are multiples of 8 (sparse_col_block), so s stays even. */
int nm_decode_avx2(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                   const float **vals)
{
    const sparse_nm *p = w->impl;
    const int64_t s0 = it->pos, s1 = MOP_MIN(s0 + SPARSE_CHUNK, nm_slot_end(p, col_end));
    if (s1 <= s0)
        return 0;
    const uint8_t *idx = p->idx + it->r * p->idx_stride;
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    int32_t tmp[8];
    int64_t s = s0;
    for (; s + 8 <= s1; s += 8)
        _mm256_storeu_si256((__m256i *)(cols + (s - s0)),
                            _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                             _mm256_loadu_si256((const __m256i *)(p->base + s))));
    if (s < s1) {
        _mm256_storeu_si256((__m256i *)tmp,
                            _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                             _mm256_loadu_si256((const __m256i *)(p->base + s))));
        memcpy(cols + (s - s0), tmp, (size_t)(s1 - s) * sizeof(int32_t));
    }
    *vals = p->vals + it->r * p->slots + s0;
    it->pos = s1;
    return (int)(s1 - s0);
}

/* x at 8 columns of the 16-column window xw: lane li (0..15) of each slot;
 * bit 3 selects the upper half, via the blend's sign bit. */
SPARSE_AI __m256 pick16(const float *xw, const __m256i li)
{
    const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw), li);
    const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw + 8), li);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(li, 28)));
}

/* x at the 8 slots of step s: the step's columns lie in the 16-column
 * window at base[s]; lane + in-group index is each slot's place in it. */
SPARSE_AI __m256 window_x(const sparse_nm *p, const uint8_t *idx, const float *x, int64_t s,
                          const __m256i shifts)
{
    return pick16(x + p->base[s],
                  _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                   _mm256_loadu_si256((const __m256i *)(p->lane + s))));
}

void nm_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1)
{
    const sparse_nm *p = w->impl;
    const int64_t S = p->slots, W = p->win_end;
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    for (int64_t r = r0; r < r1; r++) {
        const float *v = p->vals + r * S;
        const uint8_t *idx = p->idx + r * p->idx_stride;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        int64_t s = 0;
        if (p->win_stride > 0) { /* N | 8: the same lanes every step, windows evenly spaced */
            const __m256i lane = _mm256_loadu_si256((const __m256i *)p->lane);
            const int64_t ws = p->win_stride;
            const float *xw = x;
            for (; s + 16 <= W; s += 16, xw += 2 * ws) {
                const __m256i l0 = _mm256_add_epi32(nibbles(idx + s / 2, shifts), lane);
                const __m256i l1 = _mm256_add_epi32(nibbles(idx + s / 2 + 4, shifts), lane);
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s), pick16(xw, l0), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s + 8), pick16(xw + ws, l1), acc1);
            }
        }
        for (; s + 32 <= W; s += 32) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s), window_x(p, idx, x, s, shifts), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s + 8), window_x(p, idx, x, s + 8, shifts),
                                   acc1);
            acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s + 16),
                                   window_x(p, idx, x, s + 16, shifts), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s + 24),
                                   window_x(p, idx, x, s + 24, shifts), acc3);
        }
        for (; s + 8 <= W; s += 8)
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s), window_x(p, idx, x, s, shifts), acc0);
        for (; s + 8 <= S; s += 8) {
            __m256i c0 = _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                          _mm256_loadu_si256((const __m256i *)(p->base + s)));
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + s), _mm256_i32gather_ps(x, c0, 4), acc1);
        }
        if (s < S) { /* buffers are padded: the index word and base may over-read */
            const __m256i m = sparse_tail_mask(S - s);
            __m256i c0 = _mm256_add_epi32(nibbles(idx + s / 2, shifts),
                                          _mm256_loadu_si256((const __m256i *)(p->base + s)));
            __m256 xv = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, c0,
                                                 _mm256_castsi256_ps(m), 4);
            acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(v + s, m), xv, acc1);
        }
        y[r] = sparse_hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    }
}
