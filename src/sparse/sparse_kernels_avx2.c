/* AVX2/FMA panel kernels for sparse matmul and matmul_t (sparse_kernels.c).
 * A panel row is SPARSE_T = 16 floats = two YMM registers.
 *
 *   acc:  4 sets × 2 accumulators = 8 independent FMA chains; per entry one
 *         broadcast, two panel loads, two FMAs (entry k feeds set k % 4, as
 *         the portable kernel does).
 *   scat: per entry D[col] += v·a: two loads, two FMAs, two stores (entries
 *         in order, so repeated columns — N:M padding — stay correct). */
#include "sparse.h"
#include "sparse_avx2.h"

#define STEP(j, k)                                                                     \
    do {                                                                               \
        const float *p_ = P + (int64_t)cols[k] * 16;                                  \
        const __m256 v_ = _mm256_broadcast_ss(vals + (k));                            \
        a##j##0 = _mm256_fmadd_ps(v_, _mm256_loadu_ps(p_), a##j##0);                  \
        a##j##1 = _mm256_fmadd_ps(v_, _mm256_loadu_ps(p_ + 8), a##j##1);              \
    } while (0)

void sparse_acc_avx2(float *acc, const int32_t *cols, const float *vals, int cnt,
                     const float *P)
{
    __m256 a00 = _mm256_loadu_ps(acc), a01 = _mm256_loadu_ps(acc + 8);
    __m256 a10 = _mm256_loadu_ps(acc + 16), a11 = _mm256_loadu_ps(acc + 24);
    __m256 a20 = _mm256_loadu_ps(acc + 32), a21 = _mm256_loadu_ps(acc + 40);
    __m256 a30 = _mm256_loadu_ps(acc + 48), a31 = _mm256_loadu_ps(acc + 56);
    int k = 0;
    for (; k + 4 <= cnt; k += 4) {
        STEP(0, k);
        STEP(1, k + 1);
        STEP(2, k + 2);
        STEP(3, k + 3);
    }
    if (k < cnt)
        STEP(0, k);
    if (k + 1 < cnt)
        STEP(1, k + 1);
    if (k + 2 < cnt)
        STEP(2, k + 2);
    _mm256_storeu_ps(acc, a00);
    _mm256_storeu_ps(acc + 8, a01);
    _mm256_storeu_ps(acc + 16, a10);
    _mm256_storeu_ps(acc + 24, a11);
    _mm256_storeu_ps(acc + 32, a20);
    _mm256_storeu_ps(acc + 40, a21);
    _mm256_storeu_ps(acc + 48, a30);
    _mm256_storeu_ps(acc + 56, a31);
}

void sparse_scat_avx2(float *D, const int32_t *cols, const float *vals, int cnt,
                      const float *a)
{
    const __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8);
    for (int k = 0; k < cnt; k++) {
        float *d = D + (int64_t)cols[k] * 16;
        const __m256 v = _mm256_broadcast_ss(vals + k);
        _mm256_storeu_ps(d, _mm256_fmadd_ps(v, a0, _mm256_loadu_ps(d)));
        _mm256_storeu_ps(d + 8, _mm256_fmadd_ps(v, a1, _mm256_loadu_ps(d + 8)));
    }
}
