/* Robust aggregation over buffered client deltas: coordinate-wise median,
 * trimmed mean, Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).
 * All clients weigh the same; sums are taken in double. */
#include <stdlib.h>

#include "fed.h"

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void sort_floats(float *v, int32_t n)
{
    if (n > 32) {
        qsort(v, (size_t)n, sizeof *v, cmp_float);
        return;
    }
    for (int32_t i = 1; i < n; i++) {
        float x = v[i];
        int32_t j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

/* out[p] = median_i deltas[i][p]; scratch (n) */
void fed_median(double *out, float *const *deltas, int32_t n, size_t total, float *scratch)
{
    for (size_t p = 0; p < total; p++) {
        for (int32_t i = 0; i < n; i++)
            scratch[i] = deltas[i][p];
        sort_floats(scratch, n);
        out[p] = n % 2 ? (double)scratch[n / 2]
                       : 0.5 * ((double)scratch[n / 2 - 1] + (double)scratch[n / 2]);
    }
}

/* out[p] = mean of the sorted values deltas[·][p] without the k lowest and
 * k highest; n − 2k >= 1. scratch (n) */
void fed_trimmed_mean(double *out, float *const *deltas, int32_t n, size_t total, int32_t k,
                      float *scratch)
{
    for (size_t p = 0; p < total; p++) {
        for (int32_t i = 0; i < n; i++)
            scratch[i] = deltas[i][p];
        sort_floats(scratch, n);
        double s = 0.0;
        for (int32_t i = k; i < n - k; i++)
            s += scratch[i];
        out[p] = s / (double)(n - 2 * k);
    }
}

/* score_i = Σ of the n − f − 2 smallest ||Δ_i − Δ_j||², j ≠ i.
 * dist (n, n), sorted (n) scratch. */
void fed_krum_scores(double *scores, float *const *deltas, int32_t n, size_t total, int32_t f,
                     double *dist, double *sorted)
{
    for (int32_t i = 0; i < n; i++) {
        dist[(size_t)i * n + i] = 0.0;
        for (int32_t j = i + 1; j < n; j++) {
            double s = 0.0;
            for (size_t p = 0; p < total; p++) {
                double d = (double)deltas[i][p] - (double)deltas[j][p];
                s += d * d;
            }
            dist[(size_t)i * n + j] = dist[(size_t)j * n + i] = s;
        }
    }
    int32_t near = n - f - 2;
    for (int32_t i = 0; i < n; i++) {
        int32_t c = 0;
        for (int32_t j = 0; j < n; j++)
            if (j != i)
                sorted[c++] = dist[(size_t)i * n + j];
        qsort(sorted, (size_t)c, sizeof *sorted, cmp_double);
        double s = 0.0;
        for (int32_t j = 0; j < near; j++)
            s += sorted[j];
        scores[i] = s;
    }
}

/* out = mean of the m deltas with the lowest scores (ties: lower index first).
 * order (n) scratch. */
void fed_multi_krum(double *out, float *const *deltas, const double *scores, int32_t n,
                    size_t total, int32_t m, int32_t *order)
{
    for (int32_t i = 0; i < n; i++)
        order[i] = i;
    for (int32_t i = 1; i < n; i++) { /* stable insertion sort by score */
        int32_t x = order[i], j = i - 1;
        while (j >= 0 && scores[order[j]] > scores[x]) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = x;
    }
    for (size_t p = 0; p < total; p++) {
        double s = 0.0;
        for (int32_t i = 0; i < m; i++)
            s += deltas[order[i]][p];
        out[p] = s / (double)m;
    }
}
