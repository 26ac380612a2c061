/* AVX2/FMA panel kernels for sparse matmul and matmul_t (sparse_kernels.c).
 * A panel row is SPARSE_T = 32 floats = four YMM registers.
 *
 *   acc:  2 sets × 4 accumulators = 8 independent FMA chains; per entry one
 *         broadcast and four FMAs reading the panel row (entry k feeds set
 *         k % 2, as the portable kernel does); acc[t] += set 0 + set 1.
 *   scat: per entry D[col] += v·a: four loads, FMAs and stores (entries in
 *         order, so repeated columns — N:M padding — stay correct). */
#include "sparse.h"
#include "sparse_avx2.h"

#if SPARSE_T != 32
#error "the AVX2 panel kernels assume SPARSE_T == 32"
#endif

#define STEP(j, k)                                                                     \
    do {                                                                               \
        const float *p_ = P + (int64_t)cols[k] * 32;                                  \
        const __m256 v_ = _mm256_broadcast_ss(vals + (k));                            \
        a##j##0 = _mm256_fmadd_ps(v_, _mm256_loadu_ps(p_), a##j##0);                  \
        a##j##1 = _mm256_fmadd_ps(v_, _mm256_loadu_ps(p_ + 8), a##j##1);              \
        a##j##2 = _mm256_fmadd_ps(v_, _mm256_loadu_ps(p_ + 16), a##j##2);             \
        a##j##3 = _mm256_fmadd_ps(v_, _mm256_loadu_ps(p_ + 24), a##j##3);             \
    } while (0)

void sparse_acc_avx2(float *acc, const int32_t *cols, const float *vals, int cnt,
                     const float *P)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
    __m256 a02 = _mm256_setzero_ps(), a03 = _mm256_setzero_ps();
    __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
    __m256 a12 = _mm256_setzero_ps(), a13 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 2 <= cnt; k += 2) {
        STEP(0, k);
        STEP(1, k + 1);
    }
    if (k < cnt)
        STEP(0, k);
    _mm256_storeu_ps(acc, _mm256_add_ps(_mm256_loadu_ps(acc), _mm256_add_ps(a00, a10)));
    _mm256_storeu_ps(acc + 8, _mm256_add_ps(_mm256_loadu_ps(acc + 8), _mm256_add_ps(a01, a11)));
    _mm256_storeu_ps(acc + 16, _mm256_add_ps(_mm256_loadu_ps(acc + 16), _mm256_add_ps(a02, a12)));
    _mm256_storeu_ps(acc + 24, _mm256_add_ps(_mm256_loadu_ps(acc + 24), _mm256_add_ps(a03, a13)));
}

void sparse_scat_avx2(float *D, const int32_t *cols, const float *vals, int cnt,
                      const float *a)
{
    const __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8);
    const __m256 a2 = _mm256_loadu_ps(a + 16), a3 = _mm256_loadu_ps(a + 24);
    for (int k = 0; k < cnt; k++) {
        float *d = D + (int64_t)cols[k] * 32;
        const __m256 v = _mm256_broadcast_ss(vals + k);
        _mm256_storeu_ps(d, _mm256_fmadd_ps(v, a0, _mm256_loadu_ps(d)));
        _mm256_storeu_ps(d + 8, _mm256_fmadd_ps(v, a1, _mm256_loadu_ps(d + 8)));
        _mm256_storeu_ps(d + 16, _mm256_fmadd_ps(v, a2, _mm256_loadu_ps(d + 16)));
        _mm256_storeu_ps(d + 24, _mm256_fmadd_ps(v, a3, _mm256_loadu_ps(d + 24)));
    }
}
