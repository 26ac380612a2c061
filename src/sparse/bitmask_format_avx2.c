/* AVX2 matvec and row decoder for bitmask weights. Matvec: 8 columns per
 * mask byte; expand[b] is the permutation placing the popcount(b) next
 * values in the lanes of b's set bits; lanes of clear bits hold a negative
 * index, whose sign bit blends the lane to zero; then one FMA with
 * x[8j .. 8j+8). Eight bytes (64 columns) per loop step, each byte's first
 * value found by a popcount of the word below it. Decoder: positions[b]
 * lists b's set bits, 8 column numbers stored per byte. */
#include <pthread.h>
#include <string.h>

#include "sparse.h"
#include "sparse_avx2.h"

static int32_t expand[256][8] __attribute__((aligned(32)));
static int32_t positions[256][8] __attribute__((aligned(32))); /* set bits of b, ascending */
static uint8_t popcnt8[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_init(void)
{
    for (int b = 0; b < 256; b++) {
        int j = 0;
        for (int i = 0; i < 8; i++) {
            if ((b >> i) & 1)
                positions[b][j] = i;
            expand[b][i] = (b >> i) & 1 ? j++ : INT32_MIN;
        }
        popcnt8[b] = (uint8_t)j;
    }
}

SPARSE_AI __m256 expand_values(const float *v, unsigned b)
{
    const __m256i e = _mm256_load_si256((const __m256i *)expand[b]);
    __m256 vv = _mm256_permutevar8x32_ps(_mm256_loadu_ps(v), e);
    return _mm256_blendv_ps(vv, _mm256_setzero_ps(), _mm256_castsi256_ps(e));
}

/* bitmask_decode with a table per mask byte: its set bits' positions, plus
 * the byte's first column, stored 8 at a time (cols has SPARSE_CHUNK_CAP
 * room); same entries and chunking as the portable decoder. */
int bitmask_decode_avx2(const mop_weight *w, sparse_iter *it, int64_t col_end, int32_t *cols,
                        const float **vals)
{
    pthread_once(&tables_once, tables_init);
    const sparse_bitmask *p = w->impl;
    const uint8_t *mask = p->mask + it->r * p->mask_stride;
    const int64_t b_end = MOP_MIN(p->mask_stride, (col_end + 7) / 8);
    if (it->pos == 0)
        it->voff = p->row_off[it->r];
    *vals = p->vals + it->voff;
    int cnt = 0;
    while (it->pos < b_end && cnt + 64 <= SPARSE_CHUNK) {
        const int64_t b1 = MOP_MIN(it->pos + 8, b_end);
        for (int64_t b = it->pos; b < b1; b++) {
            const unsigned m = mask[b];
            const __m256i c = _mm256_add_epi32(_mm256_load_si256((const __m256i *)positions[m]),
                                               _mm256_set1_epi32((int)(8 * b)));
            _mm256_storeu_si256((__m256i *)(cols + cnt), c);
            cnt += popcnt8[m];
        }
        it->pos = b1;
    }
    it->voff += cnt;
    return cnt;
}

/* acc += (8 columns of mask byte b, values from v) · x[0..8). */
#define BYTE_STEP(acc, b, voff, xp)                                                            \
    acc = _mm256_fmadd_ps(expand_values(v + (voff), (b)), _mm256_loadu_ps(xp), acc)

void bitmask_matvec_avx2(const mop_weight *w, float *y, const float *x, int64_t r0, int64_t r1)
{
    pthread_once(&tables_once, tables_init);
    const sparse_bitmask *p = w->impl;
    const int64_t full = w->cols / 8, words = full / 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = p->mask + r * p->mask_stride;
        const float *v = p->vals + p->row_off[r]; /* padded: loads may over-read */
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        /* 64 columns per step: each byte's first value from a popcount of
         * the word below it, so the 8 steps are independent. */
        for (int64_t q = 0; q < words; q++) {
            uint64_t m;
            memcpy(&m, mask + 8 * q, 8);
            const float *xq = x + 64 * q;
            const int o1 = __builtin_popcountll(m & 0xFFull);
            const int o2 = __builtin_popcountll(m & 0xFFFFull);
            const int o3 = __builtin_popcountll(m & 0xFFFFFFull);
            const int o4 = __builtin_popcountll(m & 0xFFFFFFFFull);
            const int o5 = __builtin_popcountll(m & 0xFFFFFFFFFFull);
            const int o6 = __builtin_popcountll(m & 0xFFFFFFFFFFFFull);
            const int o7 = __builtin_popcountll(m & 0xFFFFFFFFFFFFFFull);
            BYTE_STEP(acc0, (unsigned)(m & 255), 0, xq);
            BYTE_STEP(acc1, (unsigned)(m >> 8 & 255), o1, xq + 8);
            BYTE_STEP(acc2, (unsigned)(m >> 16 & 255), o2, xq + 16);
            BYTE_STEP(acc3, (unsigned)(m >> 24 & 255), o3, xq + 24);
            BYTE_STEP(acc0, (unsigned)(m >> 32 & 255), o4, xq + 32);
            BYTE_STEP(acc1, (unsigned)(m >> 40 & 255), o5, xq + 40);
            BYTE_STEP(acc2, (unsigned)(m >> 48 & 255), o6, xq + 48);
            BYTE_STEP(acc3, (unsigned)(m >> 56), o7, xq + 56);
            v += __builtin_popcountll(m);
        }
        for (int64_t j = 8 * words; j < full; j++) {
            const unsigned b = mask[j];
            BYTE_STEP(acc0, b, 0, x + 8 * j);
            v += popcnt8[b];
        }
        if (full < p->mask_stride) { /* partial byte: bits past cols are clear */
            const __m256 xv =
                _mm256_maskload_ps(x + 8 * full, sparse_tail_mask(w->cols - 8 * full));
            acc1 = _mm256_fmadd_ps(expand_values(v, mask[full]), xv, acc1);
        }
        y[r] = sparse_hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    }
}
