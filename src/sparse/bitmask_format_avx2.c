/* AVX2 matvec for bitmask weights: 8 columns per mask byte. expand[b] is the
 * permutation placing the popcount(b) next values in the lanes of b's set
 * bits; lanes of clear bits hold a negative index, whose sign bit blends the
 * lane to zero. Then one FMA with x[8j .. 8j+8). */
#include <pthread.h>

#include "sparse.h"
#include "sparse_avx2.h"

static int32_t expand[256][8] __attribute__((aligned(32)));
static uint8_t popcnt8[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_init(void)
{
    for (int b = 0; b < 256; b++) {
        int j = 0;
        for (int i = 0; i < 8; i++)
            expand[b][i] = (b >> i) & 1 ? j++ : INT32_MIN;
        popcnt8[b] = (uint8_t)j;
    }
}

SPARSE_AI __m256 expand_values(const float *v, unsigned b)
{
    const __m256i e = _mm256_load_si256((const __m256i *)expand[b]);
    __m256 vv = _mm256_permutevar8x32_ps(_mm256_loadu_ps(v), e);
    return _mm256_blendv_ps(vv, _mm256_setzero_ps(), _mm256_castsi256_ps(e));
}

void bitmask_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1)
{
    pthread_once(&tables_once, tables_init);
    const sparse_bitmask *p = w->impl;
    const int64_t full = w->cols / 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = p->mask + r * p->mask_stride;
        const float *v = p->vals + p->row_off[r]; /* padded: loads may over-read */
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 2 <= full; j += 2) {
            const unsigned b0 = mask[j], b1 = mask[j + 1];
            acc0 = _mm256_fmadd_ps(expand_values(v, b0), _mm256_loadu_ps(x + 8 * j), acc0);
            v += popcnt8[b0];
            acc1 = _mm256_fmadd_ps(expand_values(v, b1), _mm256_loadu_ps(x + 8 * j + 8), acc1);
            v += popcnt8[b1];
        }
        if (j < full) {
            const unsigned b0 = mask[j];
            acc0 = _mm256_fmadd_ps(expand_values(v, b0), _mm256_loadu_ps(x + 8 * j), acc0);
            v += popcnt8[b0];
            j++;
        }
        if (j < p->mask_stride) { /* partial byte: bits past cols are clear */
            const __m256 xv = _mm256_maskload_ps(x + 8 * j, sparse_tail_mask(w->cols - 8 * j));
            acc1 = _mm256_fmadd_ps(expand_values(v, mask[j]), xv, acc1);
        }
        y[r] = sparse_hsum8(_mm256_add_ps(acc0, acc1));
    }
}
