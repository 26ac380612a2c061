/* Packed sparse weights (src/sparse): N:M, bitmask and blocked formats.
 *
 * Every product of a packed weight is compared with the dense F32 kernel
 * (mop_weight_dense_ops) run on the same pruned matrix:
 *   matvec    y (rows)      = W · x
 *   matmul    Y (n, rows)   = X (n, cols) · Wᵀ
 *   matmul_t  dX (n, cols) += dY (n, rows) · W
 * Tolerance per output element: |got − dense| ≤ 1e-6·sqrt(K)·S, with K the
 * length of the sum and S = Σ|terms| (+|dX₀| for matmul_t) computed in
 * double. Both sides round a K-term float sum (≈ 1.2e-7·sqrt(K)·S each on
 * random data), so this leaves a 4x margin while staying 10x tighter than
 * the 1e-5·sqrt(K) relative bound asked of the kernels; one dropped term of a
 * 1536-term sum (~S/K) is 16x larger than it. Patterns: 2:4, 4:8, 3:4, 7:8,
 * 1:4 (with extra zeros so groups are padded) and unstructured at 0, 50, 75,
 * 90, 99 % zeros in both unstructured formats. Shapes 1x1, 3x5, 17x33,
 * 191x577 and SmolLM2's 576x576, 192x576, 1536x576, 576x1536; n in
 * {1, 2, 7, 128}; no pool and pools of 1 and 2 threads; the AVX2 path (when
 * present) and the generic one (cpu_force_generic). Also: to_dense exact,
 * bytes() against the formulas of docs/FORMAT.md, pack rejections, and the
 * byte stream: round trip, every truncation, corrupted counts and indices. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu.h"
#include "model.h"
#include "sparse/sparse.h"
#include "threadpool.h"

#define TOL 1e-6

static const int64_t shapes[][2] = {{1, 1},     {3, 5},     {17, 33},    {191, 577},
                                    {576, 576}, {192, 576}, {1536, 576}, {576, 1536}};
static const int64_t batch[] = {1, 2, 7, 128};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))
#define N_BATCH ((int)(sizeof batch / sizeof batch[0]))

/* Patterns: N:M (n > 0) or unstructured at `zeros` in format fmt. */
typedef struct pattern {
    int n, m;
    double zeros;
    int32_t fmt;
} pattern;
static const pattern patterns[] = {
    {2, 4, 0, 0},   {4, 8, 0, 0},   {3, 4, 0, 0},   {7, 8, 0, 0},   {1, 4, 0, 0},
    {0, 0, 0.0, SPARSE_BITMASK},    {0, 0, 0.5, SPARSE_BITMASK},    {0, 0, 0.75, SPARSE_BITMASK},
    {0, 0, 0.9, SPARSE_BITMASK},    {0, 0, 0.99, SPARSE_BITMASK},   {0, 0, 0.0, SPARSE_BLOCKED},
    {0, 0, 0.5, SPARSE_BLOCKED},    {0, 0, 0.75, SPARSE_BLOCKED},   {0, 0, 0.9, SPARSE_BLOCKED},
    {0, 0, 0.99, SPARSE_BLOCKED},
};
#define N_PATTERNS ((int)(sizeof patterns / sizeof patterns[0]))

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) /* [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / (double)(1ull << 53);
}
static float frand(void) /* [-1, 1), never exactly 0 in practice */
{
    return (float)(urand() * 2.0 - 1.0);
}

static float *rand_floats(int64_t count)
{
    float *p = malloc((size_t)(count > 0 ? count : 1) * sizeof *p);
    assert_non_null(p);
    for (int64_t i = 0; i < count; i++)
        p[i] = frand();
    return p;
}

/* A random matrix pruned to the pattern: N:M keeps the n largest |w| of each
 * group (the last group partial), then zeroes another 10 % so some groups
 * are short (padding); unstructured keeps each entry with prob 1 - zeros. */
static float *pruned(const pattern *pt, int64_t rows, int64_t cols)
{
    float *W = rand_floats(rows * cols);
    for (int64_t r = 0; r < rows; r++) {
        float *w = W + r * cols;
        if (pt->n == 0) {
            for (int64_t c = 0; c < cols; c++)
                if (urand() < pt->zeros)
                    w[c] = 0.0f;
            continue;
        }
        for (int64_t g = 0; g < cols; g += pt->m) {
            int64_t g1 = MOP_MIN(g + pt->m, cols);
            for (;;) { /* drop the smallest until n remain */
                int64_t kept = 0, small = -1;
                for (int64_t c = g; c < g1; c++)
                    if (w[c] != 0.0f) {
                        kept++;
                        if (small < 0 || fabsf(w[c]) < fabsf(w[small]))
                            small = c;
                    }
                if (kept <= pt->n)
                    break;
                w[small] = 0.0f;
            }
        }
        for (int64_t c = 0; c < cols; c++)
            if (urand() < 0.1)
                w[c] = 0.0f;
    }
    return W;
}

static mop_status pack(mop_weight *w, const pattern *pt, const float *W, int64_t rows,
                       int64_t cols)
{
    return pt->n ? sparse_pack_nm(w, W, rows, cols, pt->n, pt->m)
                 : sparse_pack_unstructured(w, W, rows, cols, pt->fmt);
}

static void pattern_name(char *buf, size_t cap, const pattern *pt)
{
    if (pt->n)
        snprintf(buf, cap, "%d:%d", pt->n, pt->m);
    else
        snprintf(buf, cap, "%s %.0f%%", pt->fmt == SPARSE_BITMASK ? "bitmask" : "blocked",
                 pt->zeros * 100);
}

static void check_close(const char *what, const float *got, const float *ref,
                        const double *scale, int64_t count, int64_t K)
{
    for (int64_t i = 0; i < count; i++) {
        double tol = TOL * sqrt((double)K) * scale[i];
        if (!(fabs((double)got[i] - (double)ref[i]) <= tol)) {
            print_error("%s: element %lld: got %.9g, dense %.9g, tol %.3g\n", what, (long long)i,
                        (double)got[i], (double)ref[i], tol);
            fail();
        }
    }
}

static int paths(cpu_level out[2])
{
    int k = 0;
    if (cpu_detected() == CPU_AVX2)
        out[k++] = CPU_AVX2;
    out[k++] = CPU_GENERIC;
    return k;
}

static void use_path(cpu_level p)
{
    cpu_force_generic(p == CPU_GENERIC);
    assert_int_equal(cpu_current(), p);
}

/* One shape and pattern: every product against the dense kernel. */
static void check_products(const pattern *pt, int64_t rows, int64_t cols, mop_pool *pools[3])
{
    char pname[32], what[160];
    pattern_name(pname, sizeof pname, pt);
    float *W = pruned(pt, rows, cols);
    mop_weight sw, dw;
    assert_int_equal(pack(&sw, pt, W, rows, cols), MOP_OK);
    mop_weight_dense_init(&dw, W, rows, cols);
    cpu_level pl[2];
    const int n_paths = paths(pl);
    for (int b = 0; b < N_BATCH; b++) {
        const int64_t n = batch[b];
        float *X = rand_floats(n * cols), *dY = rand_floats(n * rows);
        float *dX0 = rand_floats(n * cols);
        float *ref = malloc((size_t)(n * rows) * sizeof *ref);
        float *refT = malloc((size_t)(n * cols) * sizeof *refT);
        float *got = malloc((size_t)(n * MOP_MAX(rows, cols)) * sizeof *got);
        double *S = calloc((size_t)(n * rows), sizeof *S), *ST = calloc((size_t)(n * cols), sizeof *ST);
        assert_true(ref && refT && got && S && ST);
        use_path(pl[0]);
        dw.ops->matmul(&dw, ref, X, n, pools[2]);
        memcpy(refT, dX0, (size_t)(n * cols) * sizeof *refT);
        dw.ops->matmul_t(&dw, refT, dY, n, pools[2]);
        for (int64_t t = 0; t < n; t++) {
            for (int64_t c = 0; c < cols; c++)
                ST[t * cols + c] = fabs(dX0[t * cols + c]);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    double wv = fabs(W[r * cols + c]);
                    S[t * rows + r] += wv * fabs(X[t * cols + c]);
                    ST[t * cols + c] += wv * fabs(dY[t * rows + r]);
                }
        }
        for (int p = 0; p < n_paths; p++) {
            use_path(pl[p]);
            for (int q = 0; q < 3; q++) {
                snprintf(what, sizeof what, "%s %lldx%lld n=%lld %s pool %d: matmul", pname,
                         (long long)rows, (long long)cols, (long long)n, cpu_level_name(pl[p]),
                         q);
                for (int64_t i = 0; i < n * rows; i++)
                    got[i] = NAN;
                sw.ops->matmul(&sw, got, X, n, pools[q]);
                check_close(what, got, ref, S, n * rows, cols);
                if (n == 1) {
                    for (int64_t i = 0; i < rows; i++)
                        got[i] = NAN;
                    sw.ops->matvec(&sw, got, X, pools[q]);
                    strcat(what, " (matvec)");
                    check_close(what, got, ref, S, rows, cols);
                }
                snprintf(what, sizeof what, "%s %lldx%lld n=%lld %s pool %d: matmul_t", pname,
                         (long long)rows, (long long)cols, (long long)n, cpu_level_name(pl[p]),
                         q);
                memcpy(got, dX0, (size_t)(n * cols) * sizeof *got);
                sw.ops->matmul_t(&sw, got, dY, n, pools[q]);
                check_close(what, got, refT, ST, n * cols, rows + 1);
            }
        }
        free(X), free(dY), free(dX0), free(ref), free(refT), free(got), free(S), free(ST);
    }
    cpu_force_generic(-1);
    sw.ops->release(&sw);
    free(W);
}

static void test_products_match_dense(void **state)
{
    (void)state;
    mop_pool *pools[3] = {NULL, NULL, NULL};
    assert_int_equal(mop_pool_create(1, &pools[1]), MOP_OK);
    assert_int_equal(mop_pool_create(2, &pools[2]), MOP_OK);
    check_products(&patterns[0], 3, 5, pools); /* workers started: their setup is freed */
    long live = mop_alloc_live();
    for (int s = 0; s < N_SHAPES; s++)
        for (int p = 0; p < N_PATTERNS; p++)
            check_products(&patterns[p], shapes[s][0], shapes[s][1], pools);
    assert_int_equal(mop_alloc_live(), live); /* products and release leak nothing */
    mop_pool_free(pools[1]);
    mop_pool_free(pools[2]);
}

/* Hand-computed: W = [[0 2 0 3 | 1], [4 0 0 0 | 0]] as 2:4 on 5 columns
 * (partial last group), x = (1 2 3 4 5): y = (2·2 + 3·4 + 1·5, 4) = (21, 4). */
static void test_hand_computed_nm_tail(void **state)
{
    (void)state;
    const float W[10] = {0, 2, 0, 3, 1, 4, 0, 0, 0, 0};
    const float x[5] = {1, 2, 3, 4, 5};
    cpu_level pl[2];
    const int n_paths = paths(pl);
    mop_weight w;
    assert_int_equal(sparse_pack_nm(&w, W, 2, 5, 2, 4), MOP_OK);
    assert_string_equal(w.ops->format, "nm");
    for (int p = 0; p < n_paths; p++) {
        use_path(pl[p]);
        float y[2] = {NAN, NAN};
        w.ops->matvec(&w, y, x, NULL);
        assert_true(y[0] == 21.0f && y[1] == 4.0f);
        float dx[5] = {1, 1, 1, 1, 1};
        const float dy[2] = {1, 10};
        w.ops->matmul_t(&w, dx, dy, 1, NULL);
        const float want[5] = {41, 3, 1, 4, 2};
        for (int i = 0; i < 5; i++)
            assert_true(dx[i] == want[i]);
    }
    cpu_force_generic(-1);
    w.ops->release(&w);
}

static uint64_t nnz_of(const float *W, int64_t count)
{
    uint64_t k = 0;
    for (int64_t i = 0; i < count; i++)
        k += W[i] != 0.0f;
    return k;
}

/* bytes(): the formulas of docs/FORMAT.md; to_dense: bit-exact. */
static void test_to_dense_exact_and_bytes_formula(void **state)
{
    (void)state;
    for (int s = 0; s < N_SHAPES; s++)
        for (int p = 0; p < N_PATTERNS; p++) {
            const pattern *pt = &patterns[p];
            const int64_t rows = shapes[s][0], cols = shapes[s][1];
            float *W = pruned(pt, rows, cols), *D = malloc((size_t)(rows * cols) * sizeof *D);
            mop_weight w;
            assert_int_equal(pack(&w, pt, W, rows, cols), MOP_OK);
            assert_int_equal(w.rows, rows);
            assert_int_equal(w.cols, cols);
            assert_null(w.data);
            w.ops->to_dense(&w, D);
            assert_memory_equal(D, W, (size_t)(rows * cols) * sizeof *D);
            const uint64_t R = (uint64_t)rows, C = (uint64_t)cols, nnz = nnz_of(W, rows * cols);
            uint64_t want;
            if (pt->n) {
                const uint64_t slots = (C + pt->m - 1) / pt->m * pt->n;
                want = R * slots * 4 + R * ((slots + 1) / 2) + slots * 8; /* + base, lane */
            } else if (pt->fmt == SPARSE_BITMASK) {
                want = R * ((C + 7) / 8) + nnz * 4 + (R + 1) * 8;
            } else {
                want = R * ((C + 255) / 256) * 2 + nnz * 5 + (R + 1) * 8;
            }
            assert_int_equal(w.ops->bytes(&w), want);
            w.ops->release(&w);
            free(W), free(D);
        }
}

static void test_pack_rejects(void **state)
{
    (void)state;
    float W[8] = {1, 1, 1, 0, 0, 0, 0, 1}; /* first group of 4 has 3 nonzeros */
    mop_weight w = {0};
    assert_int_equal(sparse_pack_nm(&w, W, 1, 8, 2, 4), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "3 nonzeros"));
    assert_null(w.ops);
    assert_int_equal(sparse_pack_nm(&w, W, 1, 8, 3, 4), MOP_OK);
    w.ops->release(&w);
    /* a partial tail group is held to the same n: 3 columns, 3 nonzeros */
    const float T[7] = {0, 0, 0, 1, 1, 1, 1};
    assert_int_equal(sparse_pack_nm(&w, T, 1, 7, 2, 4), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_nm(&w, W, 1, 8, 4, 4), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_nm(&w, W, 1, 8, 0, 4), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_nm(&w, W, 1, 8, 3, 17), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_nm(&w, W, 0, 8, 2, 4), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_nm(NULL, W, 1, 8, 2, 4), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_nm(&w, NULL, 1, 8, 2, 4), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_unstructured(&w, W, 1, 8, 7), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_pack_unstructured(&w, W, 1, -1, SPARSE_BITMASK), MOP_E_INVALID_ARG);
    /* auto: density 0.5 → bitmask, 0.125 → blocked */
    assert_int_equal(sparse_pack_unstructured(&w, W, 1, 8, SPARSE_AUTO), MOP_OK);
    assert_string_equal(w.ops->format, "bitmask");
    w.ops->release(&w);
    assert_int_equal(sparse_pack_unstructured(&w, T + 3, 1, 1, SPARSE_AUTO), MOP_OK);
    assert_string_equal(w.ops->format, "bitmask");
    w.ops->release(&w);
    const float Z[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(sparse_pack_unstructured(&w, Z, 1, 8, SPARSE_AUTO), MOP_OK);
    assert_string_equal(w.ops->format, "blocked");
    w.ops->release(&w);
}

/* Serialise, check the round trip, then every truncation and extension. */
static uint8_t *serialized(const mop_weight *w, size_t *size)
{
    assert_int_equal(sparse_weight_serialize_size(w, size), MOP_OK);
    uint8_t *buf = malloc(*size);
    assert_non_null(buf);
    if (*size > 1)
        assert_int_equal(sparse_weight_serialize(w, buf, *size - 1), MOP_E_RANGE);
    assert_int_equal(sparse_weight_serialize(w, buf, *size), MOP_OK);
    return buf;
}

static void expect_format_error(const uint8_t *buf, size_t size, const char *needle)
{
    mop_weight w = {0};
    mop_status st = sparse_weight_deserialize(&w, buf, size);
    if (st != MOP_E_FORMAT) {
        print_error("%zu bytes (expecting \"%s\"): status %d\n", size, needle ? needle : "",
                    (int)st);
        fail();
    }
    assert_null(w.ops);
    if (needle && !strstr(mop_last_error(), needle)) {
        print_error("error \"%s\" lacks \"%s\"\n", mop_last_error(), needle);
        fail();
    }
}

static void test_serialize_round_trip_and_truncation(void **state)
{
    (void)state;
    const pattern pts[] = {{2, 4, 0, 0}, {3, 4, 0, 0}, {7, 8, 0, 0},
                           {0, 0, 0.75, SPARSE_BITMASK}, {0, 0, 0.9, SPARSE_BLOCKED},
                           {0, 0, 1.0, SPARSE_BITMASK}, {0, 0, 1.0, SPARSE_BLOCKED}};
    const int64_t rows = 17, cols = 301; /* two blocks, partial N:M and mask tails */
    long live = mop_alloc_live();
    for (size_t p = 0; p < sizeof pts / sizeof pts[0]; p++) {
        float *W = pruned(&pts[p], rows, cols), *D = malloc((size_t)(rows * cols) * sizeof *D);
        mop_weight w, v;
        assert_int_equal(pack(&w, &pts[p], W, rows, cols), MOP_OK);
        size_t size, size2;
        uint8_t *buf = serialized(&w, &size);
        assert_int_equal(sparse_weight_deserialize(&v, buf, size), MOP_OK);
        assert_string_equal(v.ops->format, w.ops->format);
        assert_int_equal(v.ops->bytes(&v), w.ops->bytes(&w));
        v.ops->to_dense(&v, D);
        assert_memory_equal(D, W, (size_t)(rows * cols) * sizeof *D);
        uint8_t *buf2 = serialized(&v, &size2);
        assert_int_equal(size2, size);
        assert_memory_equal(buf2, buf, size);
        for (size_t len = 0; len < size; len++)
            expect_format_error(buf, len, NULL);
        uint8_t *longer = malloc(size + 1);
        memcpy(longer, buf, size);
        longer[size] = 0;
        expect_format_error(longer, size + 1, "expected exactly");
        free(longer);
        v.ops->release(&v);
        w.ops->release(&w);
        free(buf), free(buf2), free(W), free(D);
    }
    assert_int_equal(mop_alloc_live(), live);
}

/* Field offsets in the stream (sparse.h). */
#define OFF_FMT 8
#define OFF_ROWS 16
#define OFF_NM 32 /* u32 n, u32 m; or u64 nnz */
#define OFF_BODY 40

/* A NaN or Inf among the stored values is a format error in every format
 * (the values follow the header and, for bitmask/blocked, the mask/counts
 * and indices; the last 4 bytes of each stream are its last value). */
static void test_deserialize_rejects_nonfinite_values(void **state)
{
    (void)state;
    const pattern pts[] = {{2, 4, 0, 0}, {0, 0, 0.75, SPARSE_BITMASK}, {0, 0, 0.9, SPARSE_BLOCKED}};
    const float bad[2] = {NAN, -INFINITY};
    for (size_t p = 0; p < sizeof pts / sizeof pts[0]; p++) {
        float *W = pruned(&pts[p], 17, 301);
        mop_weight w;
        assert_int_equal(pack(&w, &pts[p], W, 17, 301), MOP_OK);
        size_t size;
        uint8_t *buf = serialized(&w, &size);
        w.ops->release(&w);
        for (int k = 0; k < 2; k++) {
            uint8_t *c = malloc(size);
            memcpy(c, buf, size);
            /* N:M stores values first, the others last */
            size_t at = pts[p].n ? OFF_BODY + 8 : size - 4;
            memcpy(c + at, &bad[k], 4);
            expect_format_error(c, size, "weights must be finite");
            free(c);
        }
        free(buf), free(W);
    }
}

static void test_deserialize_rejects_corruption(void **state)
{
    (void)state;
    mop_weight w;
    size_t size;
    uint8_t *b;

    /* N:M 2:4 on 2x6: slots 4 per row (2 groups, the last 2 columns wide). */
    const float N[12] = {1, 0, 2, 0, 3, 0, 0, 4, 0, 5, 0, 6};
    assert_int_equal(sparse_pack_nm(&w, N, 2, 6, 2, 4), MOP_OK);
    b = serialized(&w, &size);
    w.ops->release(&w);
    const size_t idx = OFF_BODY + 2 * 4 * 4; /* after rows·slots values */
    b[idx] = (uint8_t)((b[idx] & 0xF0) | 4); /* row 0 slot 0: index 4 in a group of 4 */
    expect_format_error(b, size, "index 4 outside its group of 4");
    b[idx] &= 0xF0;
    b[idx + 1] = (uint8_t)((b[idx + 1] & 0x0F) | (2 << 4)); /* slot 3: tail group is 2 wide */
    expect_format_error(b, size, "slot 3: index 2 outside its group of 2");
    b[idx + 1] &= 0x0F;
    assert_int_equal(sparse_weight_deserialize(&w, b, size), MOP_OK);
    w.ops->release(&w);
    b[OFF_NM] = 4; /* n = 4 = m */
    expect_format_error(b, size, "4:4");
    b[OFF_NM] = 2;
    b[OFF_NM + 4] = 17;
    expect_format_error(b, size, "2:17");
    b[OFF_NM + 4] = 4;
    b[0] = 'X';
    expect_format_error(b, size, "magic");
    b[0] = 'M';
    b[4] = 2;
    expect_format_error(b, size, "version 2");
    b[4] = 1;
    b[OFF_FMT] = 9;
    expect_format_error(b, size, "unknown format 9");
    b[OFF_FMT] = 1;
    memset(b + OFF_ROWS, 0, 8);
    expect_format_error(b, size, "shape 0x6");
    memset(b + OFF_ROWS, 0xFF, 8); /* rows = -1 */
    expect_format_error(b, size, "out of range");
    b[OFF_ROWS + 7] = 0x3F; /* rows huge: sizes must not wrap */
    expect_format_error(b, size, NULL);
    free(b);

    /* bitmask on 2x10: 2 mask bytes per row, last byte 2 columns wide. */
    const float M[20] = {1, 0, 2, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 5, 0};
    assert_int_equal(sparse_pack_unstructured(&w, M, 2, 10, SPARSE_BITMASK), MOP_OK);
    b = serialized(&w, &size);
    w.ops->release(&w);
    b[OFF_BODY + 1] |= 0x04; /* row 0: column 10 */
    expect_format_error(b, size, "row 0: bits set past column 10");
    b[OFF_BODY + 1] &= 0x03;
    b[OFF_BODY] |= 0x02; /* one more bit than nnz */
    expect_format_error(b, size, "has 6 bits set, header says 5");
    b[OFF_BODY] &= (uint8_t)~0x02;
    b[OFF_NM] = 6; /* nnz 6: size no longer matches */
    expect_format_error(b, size, "expected exactly");
    b[OFF_NM] = 0xFF;
    b[OFF_NM + 7] = 0xFF; /* nnz enormous */
    expect_format_error(b, size, "nonzeros in 2x10");
    free(b);

    /* blocked on 2x300: blocks of 256 and 44 columns. */
    float *B = calloc(600, sizeof *B);
    B[3] = 1, B[7] = 2, B[260] = 3, B[300 + 299] = 4;
    assert_int_equal(sparse_pack_unstructured(&w, B, 2, 300, SPARSE_BLOCKED), MOP_OK);
    b = serialized(&w, &size);
    w.ops->release(&w);
    const size_t cnt = OFF_BODY, ix = cnt + 2 * 2 * 2;
    assert_int_equal(b[cnt], 2);
    b[ix + 1] = 3; /* 3 after 3: not increasing */
    expect_format_error(b, size, "row 0 block 0 entry 1: index 3 not increasing");
    b[ix + 1] = 7;
    b[ix + 2] = 44; /* row 0 block 1 (44 columns wide) */
    expect_format_error(b, size, "index 44 not increasing or >= 44");
    b[ix + 2] = 4;
    b[cnt + 2] = 45; /* count 45 > 44 */
    expect_format_error(b, size, "count 45 > 44");
    b[cnt + 2] = 2; /* counts 2+2 > 4 entries... */
    expect_format_error(b, size, "counts exceed the 4 nonzeros");
    b[cnt + 2] = 0; /* counts 2+0+0+1 = 3 < 4 */
    expect_format_error(b, size, "counts sum to 3, header says 4");
    b[cnt + 2] = 1;
    assert_int_equal(sparse_weight_deserialize(&w, b, size), MOP_OK);
    w.ops->release(&w);
    free(b), free(B);

    assert_int_equal(sparse_weight_deserialize(&w, NULL, 0), MOP_E_FORMAT); /* too short */
    assert_int_equal(sparse_weight_deserialize(&w, NULL, 5), MOP_E_INVALID_ARG);
    assert_int_equal(sparse_weight_deserialize(NULL, "", 0), MOP_E_INVALID_ARG);
    mop_weight dense;
    mop_weight_dense_init(&dense, N, 2, 6);
    assert_int_equal(sparse_weight_serialize_size(&dense, &size), MOP_E_INVALID_ARG);
}

/* The pool only splits rows (matvec/matmul) or token panels (matmul_t):
 * results are bitwise equal whatever the pool size. */
static void test_bitwise_independent_of_pool(void **state)
{
    (void)state;
    mop_pool *p2;
    assert_int_equal(mop_pool_create(2, &p2), MOP_OK);
    const int64_t rows = 576, cols = 1536, n = 37;
    for (int p = 0; p < N_PATTERNS; p += 4) {
        float *W = pruned(&patterns[p], rows, cols), *X = rand_floats(n * cols);
        float *dY = rand_floats(n * rows);
        float *a = calloc((size_t)(n * cols), sizeof *a), *c = calloc((size_t)(n * cols), sizeof *c);
        mop_weight w;
        assert_int_equal(pack(&w, &patterns[p], W, rows, cols), MOP_OK);
        w.ops->matmul(&w, a, X, n, NULL);
        w.ops->matmul(&w, c, X, n, p2);
        assert_memory_equal(a, c, (size_t)(n * rows) * sizeof *a);
        w.ops->matvec(&w, a, X, NULL);
        w.ops->matvec(&w, c, X, p2);
        assert_memory_equal(a, c, (size_t)rows * sizeof *a);
        memset(a, 0, (size_t)(n * cols) * sizeof *a);
        memset(c, 0, (size_t)(n * cols) * sizeof *c);
        w.ops->matmul_t(&w, a, dY, n, NULL);
        w.ops->matmul_t(&w, c, dY, n, p2);
        assert_memory_equal(a, c, (size_t)(n * cols) * sizeof *a);
        w.ops->release(&w);
        free(W), free(X), free(dY), free(a), free(c);
    }
    mop_pool_free(p2);
}

/* matmul_t builds W's transpose on first use and caches it in the shared
 * weight: four threads racing on a fresh weight all get the single-thread
 * result bit for bit, and release frees whichever copy was published. */
typedef struct race_arg {
    const mop_weight *w;
    const float *dY;
    float *dX;
    int64_t n;
} race_arg;

static void *race_matmul_t(void *p)
{
    race_arg *a = p;
    a->w->ops->matmul_t(a->w, a->dX, a->dY, a->n, NULL);
    return NULL;
}

static void test_transpose_cache_shared_by_threads(void **state)
{
    (void)state;
    const int64_t rows = 192, cols = 577, n = 9;
    long live = mop_alloc_live();
    for (int p = 0; p < N_PATTERNS; p += 3) {
        float *W = pruned(&patterns[p], rows, cols), *dY = rand_floats(n * rows);
        float *ref = calloc((size_t)(n * cols), sizeof *ref);
        mop_weight w1, w4;
        assert_int_equal(pack(&w1, &patterns[p], W, rows, cols), MOP_OK);
        assert_int_equal(pack(&w4, &patterns[p], W, rows, cols), MOP_OK);
        w1.ops->matmul_t(&w1, ref, dY, n, NULL);
        pthread_t th[4];
        race_arg args[4];
        for (int t = 0; t < 4; t++) {
            args[t] = (race_arg){&w4, dY, calloc((size_t)(n * cols), sizeof(float)), n};
            assert_non_null(args[t].dX);
            assert_int_equal(pthread_create(&th[t], NULL, race_matmul_t, &args[t]), 0);
        }
        for (int t = 0; t < 4; t++) {
            assert_int_equal(pthread_join(th[t], NULL), 0);
            assert_memory_equal(args[t].dX, ref, (size_t)(n * cols) * sizeof *ref);
            free(args[t].dX);
        }
        w1.ops->release(&w1);
        w4.ops->release(&w4);
        free(W), free(dY), free(ref);
    }
    assert_int_equal(mop_alloc_live(), live);
}

int main(int argc, char **argv)
{
    /* An argument is a cmocka name pattern, or "-pattern" for the tests to
     * leave out (tests/meson.build, suite `threads`, runs under TSan). */
    if (argc > 1) {
        if (argv[1][0] == '-')
            cmocka_set_skip_filter(argv[1] + 1);
        else
            cmocka_set_test_filter(argv[1]);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_computed_nm_tail),
        cmocka_unit_test(test_pack_rejects),
        cmocka_unit_test(test_to_dense_exact_and_bytes_formula),
        cmocka_unit_test(test_serialize_round_trip_and_truncation),
        cmocka_unit_test(test_deserialize_rejects_corruption),
        cmocka_unit_test(test_deserialize_rejects_nonfinite_values),
        cmocka_unit_test(test_bitwise_independent_of_pool),
        cmocka_unit_test(test_products_match_dense),
        cmocka_unit_test(test_transpose_cache_shared_by_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
