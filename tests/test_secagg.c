/* Secure aggregation by pairwise masking: exact sums with and without
 * dropouts, masked blobs that look uniform, detection of wrong keys, every
 * protocol-state and argument error. The reference sum is computed here
 * independently: Σ_i llround(clip(x_i, ±R)·s) in int64, then × 1/s once. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "internal.h"
#include "libmop/mop_fed.h"

#define HEADER 48 /* masked blob header bytes (docs/PRIVACY.md) */
#define MAXC 8

typedef struct round_t {
    mop_secagg_params p;
    int32_t n;
    mop_secagg_client *c[MAXC];
    mop_secagg_server *s;
    uint8_t *blob[MAXC];
    size_t blob_n[MAXC];
    float *x[MAXC];
} round_t;

static float frand(float lo, float hi)
{
    return lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
}

/* Create n clients and a server, exchange keys, make random inputs in
 * [−1.5R, 1.5R] (so some get clipped) and mask them. */
static void round_setup(round_t *r, int32_t n, int64_t len, int32_t bits, unsigned seed)
{
    memset(r, 0, sizeof *r);
    srand(seed);
    r->n = n;
    mop_secagg_params_init(&r->p);
    r->p.n_clients = n;
    r->p.length = len;
    r->p.round = 5;
    r->p.ring_bits = bits;
    if (bits == 32) {
        r->p.scale = 65536.0f;
        r->p.clip_range = 4.0f;
    } else {
        r->p.clip_range = 2.0f; /* default scale 2^32 */
    }
    uint8_t keys[MAXC * 32];
    for (int32_t i = 0; i < n; i++) {
        assert_int_equal(mop_secagg_client_create(&r->p, i, &r->c[i]), MOP_OK);
        assert_int_equal(mop_secagg_client_public_key(r->c[i], keys + 32 * i), MOP_OK);
    }
    for (int32_t i = 0; i < n; i++)
        assert_int_equal(mop_secagg_client_set_peer_keys(r->c[i], keys, 32 * (size_t)n), MOP_OK);
    assert_int_equal(mop_secagg_server_create(&r->p, &r->s), MOP_OK);
    for (int32_t i = 0; i < n; i++) {
        r->x[i] = malloc((size_t)len * sizeof(float));
        for (int64_t k = 0; k < len; k++)
            r->x[i][k] = frand(-1.5f * r->p.clip_range, 1.5f * r->p.clip_range);
        size_t need;
        assert_int_equal(mop_secagg_client_mask(r->c[i], NULL, 0, NULL, 0, &need), MOP_OK);
        assert_int_equal(need, HEADER + (size_t)(len + 1) * (size_t)(bits / 8) + 16);
        r->blob[i] = malloc(need);
        assert_int_equal(mop_secagg_client_mask(r->c[i], r->x[i], len, r->blob[i], need,
                                                &r->blob_n[i]), MOP_OK);
        assert_int_equal(r->blob_n[i], need);
    }
}

static void round_free(round_t *r)
{
    for (int32_t i = 0; i < r->n; i++) {
        mop_secagg_client_free(r->c[i]);
        free(r->blob[i]);
        free(r->x[i]);
    }
    mop_secagg_server_free(r->s);
}

static int is_dropped(const int32_t *d, int32_t nd, int32_t i)
{
    for (int32_t k = 0; k < nd; k++)
        if (d[k] == i)
            return 1;
    return 0;
}

/* Deliver the survivors' blobs, their recovery keys for the dropped, finish,
 * and compare bit-exactly with the independently decoded fixed-point sum. */
static void check_round(int32_t n, int64_t len, int32_t bits, const int32_t *dropped, int32_t nd)
{
    round_t r;
    round_setup(&r, n, len, bits, (unsigned)(n * 100 + nd + bits));
    for (int32_t i = 0; i < n; i++)
        if (!is_dropped(dropped, nd, i))
            assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[i], r.blob_n[i]), MOP_OK);
    float *sum = malloc((size_t)len * sizeof(float));
    if (nd > 0) {
        assert_int_equal(mop_secagg_server_finish(r.s, sum, len, NULL, NULL), MOP_E_STATE);
        for (int32_t i = 0; i < n; i++) {
            if (is_dropped(dropped, nd, i))
                continue;
            uint8_t rec[32 + MAXC * 36 + 16];
            size_t rn;
            assert_int_equal(mop_secagg_client_reveal(r.c[i], dropped, nd, rec, sizeof rec, &rn), MOP_OK);
            assert_int_equal(rn, 32 + (size_t)nd * 36 + 16);
            assert_int_equal(mop_secagg_server_add_recovery(r.s, rec, rn), MOP_OK);
        }
    }
    int32_t inc[MAXC], ninc = -1;
    assert_int_equal(mop_secagg_server_finish(r.s, sum, len, inc, &ninc), MOP_OK);
    assert_int_equal(ninc, n - nd);
    for (int32_t i = 0, k = 0; i < n; i++)
        if (!is_dropped(dropped, nd, i))
            assert_int_equal(inc[k++], i);
    float inv = 1.0f / r.p.scale;
    int64_t clipped = 0;
    for (int64_t k = 0; k < len; k++) {
        int64_t acc = 0;
        for (int32_t i = 0; i < n; i++) {
            if (is_dropped(dropped, nd, i))
                continue;
            float v = r.x[i][k];
            clipped += fabsf(v) > r.p.clip_range;
            v = fminf(fmaxf(v, -r.p.clip_range), r.p.clip_range);
            acc += llround((double)v * (double)r.p.scale);
        }
        float ref = (float)acc * inv;
        assert_memory_equal(&sum[k], &ref, sizeof(float)); /* bit-exact */
    }
    assert_true(clipped > 0); /* the clip path was exercised */
    free(sum);
    round_free(&r);
}

static void test_exact_no_dropout(void **state)
{
    (void)state;
    check_round(2, 1000, 64, NULL, 0);
    check_round(3, 1000, 64, NULL, 0);
    check_round(7, 1000, 64, NULL, 0);
    check_round(2, 1000, 32, NULL, 0);
    check_round(7, 777, 32, NULL, 0);
}

static void test_exact_with_dropouts(void **state)
{
    (void)state;
    const int32_t d1[] = {1}, d2[] = {0, 4}, d3[] = {6, 2};
    check_round(3, 1000, 64, d1, 1);
    check_round(7, 1000, 64, d1, 1);
    check_round(7, 1000, 64, d2, 2);
    check_round(7, 1500, 32, d3, 2);
    assert_int_equal(mop_alloc_live(), 0);
}

/* What the server receives from one client looks uniform on the ring. */
static void check_uniform(int32_t bits)
{
    enum { L = 20000 };
    round_t r;
    round_setup(&r, 3, L, bits, 99);
    const uint8_t *pay = r.blob[1] + HEADER;
    int64_t same = 0, near = 0;
    double s = 0, s2 = 0, ring = bits == 64 ? 0x1p64 : 0x1p32;
    for (int64_t k = 0; k < L; k++) {
        uint64_t m = 0;
        for (int b = bits / 8 - 1; b >= 0; b--)
            m = (m << 8) | pay[k * (bits / 8) + b];
        float xc = fminf(fmaxf(r.x[1][k], -r.p.clip_range), r.p.clip_range);
        int64_t e = llround((double)xc * (double)r.p.scale);
        uint64_t plain = bits == 64 ? (uint64_t)e : (uint64_t)e & 0xffffffffu;
        same += m == plain;
        int64_t sm = bits == 64 ? (int64_t)m : (int64_t)(int32_t)(uint32_t)m;
        near += fabs((double)sm / r.p.scale - xc) < 1.0;
        double u = (double)m / ring;
        s += u, s2 += u * u;
    }
    double mean = s / L, var = s2 / L - mean * mean;
    print_message("ring %d: %lld/%d coordinates equal the plain encoding, %lld decode within 1 "
                  "of the input; mean %.4f (uniform 0.5), var %.5f (uniform 0.08333)\n", bits,
                  (long long)same, L, (long long)near, mean, var);
    assert_true(same <= 2);                       /* P(equal) = 2^-bits per coordinate */
    assert_true(near <= L / 500);                 /* P(|decoded − x| < 1) = 2/(2^bits/scale) */
    assert_true(fabs(mean - 0.5) < 0.01);         /* SE 0.002 */
    assert_true(fabs(var - 1.0 / 12) < 0.03 / 12); /* SE ≈ 0.0005 */
    round_free(&r);
}

static void test_masked_looks_uniform(void **state)
{
    (void)state;
    check_uniform(64);
    check_uniform(32);
}

/* A client given a wrong key for one peer: the masks do not cancel and
 * finish() reports it instead of returning a wrong sum. */
static void test_wrong_peer_key(void **state)
{
    (void)state;
    mop_secagg_params p;
    mop_secagg_params_init(&p);
    p.n_clients = 3;
    p.length = 64;
    mop_secagg_client *c[3], *mallory;
    uint8_t keys[96], bad[96];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mop_secagg_client_create(&p, i, &c[i]), MOP_OK);
        assert_int_equal(mop_secagg_client_public_key(c[i], keys + 32 * i), MOP_OK);
    }
    assert_int_equal(mop_secagg_client_create(&p, 2, &mallory), MOP_OK);
    memcpy(bad, keys, 96);
    assert_int_equal(mop_secagg_client_public_key(mallory, bad + 64), MOP_OK);
    assert_int_equal(mop_secagg_client_set_peer_keys(c[0], keys, 96), MOP_OK);
    assert_int_equal(mop_secagg_client_set_peer_keys(c[1], bad, 96), MOP_OK); /* substituted key */
    assert_int_equal(mop_secagg_client_set_peer_keys(c[2], keys, 96), MOP_OK);
    mop_secagg_server *s;
    assert_int_equal(mop_secagg_server_create(&p, &s), MOP_OK);
    float x[64] = {0};
    uint8_t blob[48 + 65 * 8 + 16];
    size_t bn;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mop_secagg_client_mask(c[i], x, 64, blob, sizeof blob, &bn), MOP_OK);
        assert_int_equal(mop_secagg_server_add_masked(s, blob, bn), MOP_OK);
    }
    float sum[64];
    assert_int_equal(mop_secagg_server_finish(s, sum, 64, NULL, NULL), MOP_E_CHECKSUM);
    for (int i = 0; i < 3; i++)
        mop_secagg_client_free(c[i]);
    mop_secagg_client_free(mallory);
    mop_secagg_server_free(s);
}

static void test_mask_update(void **state)
{
    (void)state;
    mop_secagg_params p;
    mop_secagg_params_init(&p);
    p.n_clients = 2;
    p.length = 10;
    mop_update *u[2];
    const float a0[6] = {1, 2, 3, 4, 5, 6}, b0[4] = {-1, 0.5f, 0.25f, 8};
    const float a1[6] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f}, b1[4] = {1, 1, 1, -1};
    int64_t da[2] = {2, 3}, db = 4;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, (uint64_t)i, 1.0, &u[i]), MOP_OK);
        assert_int_equal(mop_update_add_tensor(u[i], "a", i ? a1 : a0, 2, da), MOP_OK);
        assert_int_equal(mop_update_add_tensor(u[i], "b", i ? b1 : b0, 1, &db), MOP_OK);
    }
    mop_secagg_client *c[2];
    uint8_t keys[64];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(mop_secagg_client_create(&p, i, &c[i]), MOP_OK);
        assert_int_equal(mop_secagg_client_public_key(c[i], keys + 32 * i), MOP_OK);
    }
    mop_secagg_server *s;
    assert_int_equal(mop_secagg_server_create(&p, &s), MOP_OK);
    uint8_t blob[48 + 11 * 8 + 16];
    size_t bn;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(mop_secagg_client_set_peer_keys(c[i], keys, 64), MOP_OK);
        assert_int_equal(mop_secagg_client_mask_update(c[i], u[i], NULL, 0, &bn), MOP_OK);
        assert_int_equal(bn, sizeof blob);
        assert_int_equal(mop_secagg_client_mask_update(c[i], u[i], blob, sizeof blob, &bn), MOP_OK);
        assert_int_equal(mop_secagg_server_add_masked(s, blob, bn), MOP_OK);
    }
    float sum[10];
    assert_int_equal(mop_secagg_server_finish(s, sum, 10, NULL, NULL), MOP_OK);
    const float ref[10] = {1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 0, 1.5f, 1.25f, 7}; /* exact in 2^-32 */
    assert_memory_equal(sum, ref, sizeof ref);
    /* An update of the wrong total size */
    mop_secagg_client *c3;
    assert_int_equal(mop_secagg_client_create(&p, 0, &c3), MOP_OK);
    mop_update *small;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 0, 1.0, &small), MOP_OK);
    assert_int_equal(mop_update_add_tensor(small, "b", b0, 1, &db), MOP_OK);
    assert_int_equal(mop_secagg_client_mask_update(c3, small, blob, sizeof blob, &bn), MOP_E_SHAPE);
    mop_update_free(small);
    mop_secagg_client_free(c3);
    for (int i = 0; i < 2; i++) {
        mop_secagg_client_free(c[i]);
        mop_update_free(u[i]);
    }
    mop_secagg_server_free(s);
}

static void test_protocol_state(void **state)
{
    (void)state;
    round_t r;
    round_setup(&r, 4, 16, 64, 7);
    float sum[16];
    uint8_t rec[256];
    size_t rn;
    float x[16] = {0};
    uint8_t tmp[48 + 17 * 8 + 16];
    size_t tn;
    /* masking twice */
    assert_int_equal(mop_secagg_client_mask(r.c[0], x, 16, tmp, sizeof tmp, &tn), MOP_E_STATE);
    /* fewer than min_survivors blobs */
    assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[0], r.blob_n[0]), MOP_OK);
    assert_int_equal(mop_secagg_server_finish(r.s, sum, 16, NULL, NULL), MOP_E_STATE);
    assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[0], r.blob_n[0]), MOP_E_STATE); /* twice */
    assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[1], r.blob_n[1]), MOP_OK);
    /* recovery naming a client whose input is in the sum */
    const int32_t d_bad[] = {1}, d3[] = {3}, d23[] = {2, 3};
    assert_int_equal(mop_secagg_client_reveal(r.c[0], d_bad, 1, rec, sizeof rec, &rn), MOP_OK);
    assert_int_equal(mop_secagg_server_add_recovery(r.s, rec, rn), MOP_E_STATE);
    /* recovery from a client whose input is not in the sum */
    assert_int_equal(mop_secagg_client_reveal(r.c[2], d3, 1, rec, sizeof rec, &rn), MOP_OK);
    assert_int_equal(mop_secagg_server_add_recovery(r.s, rec, rn), MOP_E_STATE);
    /* the right recoveries for dropped 2 and 3 */
    assert_int_equal(mop_secagg_client_reveal(r.c[1], d23, 2, rec, sizeof rec, &rn), MOP_OK);
    assert_int_equal(mop_secagg_server_add_recovery(r.s, rec, rn), MOP_OK);
    assert_int_equal(mop_secagg_server_add_recovery(r.s, rec, rn), MOP_E_STATE); /* applied twice */
    /* survivor 0 has not revealed yet: the message names the pair */
    assert_int_equal(mop_secagg_server_finish(r.s, sum, 16, NULL, NULL), MOP_E_STATE);
    assert_non_null(strstr(mop_last_error(), "survivor 0"));
    /* a client may not reveal so much that fewer than min_survivors remain:
     * client 0 already revealed {1}; {1, 2, 3} would leave only itself */
    assert_int_equal(mop_secagg_client_reveal(r.c[0], d23, 2, rec, sizeof rec, &rn), MOP_E_STATE);
    /* a blob from a client declared dropped is refused */
    assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[3], r.blob_n[3]), MOP_E_STATE);
    round_free(&r);

    /* reveal before masking; mask before keys */
    mop_secagg_params p;
    mop_secagg_params_init(&p);
    p.n_clients = 3;
    p.length = 16;
    mop_secagg_client *c;
    assert_int_equal(mop_secagg_client_create(&p, 0, &c), MOP_OK);
    assert_int_equal(mop_secagg_client_mask(c, x, 16, tmp, sizeof tmp, &tn), MOP_E_STATE);
    assert_int_equal(mop_secagg_client_reveal(c, d_bad, 1, rec, sizeof rec, &rn), MOP_E_STATE);
    mop_secagg_client_free(c);
    assert_int_equal(mop_alloc_live(), 0);
}

static void test_blob_errors(void **state)
{
    (void)state;
    round_t r;
    round_setup(&r, 3, 8, 64, 11);
    size_t n = r.blob_n[0];
    uint8_t *b = malloc(n + 1);
    memcpy(b, r.blob[0], n);
    b[n] = 0;
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, n - 1), MOP_E_FORMAT); /* truncated */
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, n + 1), MOP_E_FORMAT); /* trailing */
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, 10), MOP_E_FORMAT);
    b[HEADER + 3] ^= 1;
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, n), MOP_E_CHECKSUM);
    b[HEADER + 3] ^= 1;
    b[0] = 'X';
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, n), MOP_E_FORMAT);
    b[0] = 'M';
    b[4] = 9;
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, n), MOP_E_UNSUPPORTED);
    b[4] = 1;
    assert_int_equal(mop_secagg_server_add_masked(r.s, NULL, n), MOP_E_INVALID_ARG);
    /* a recovery blob is not a masked blob and vice versa */
    assert_int_equal(mop_secagg_server_add_recovery(r.s, b, n), MOP_E_FORMAT);
    /* a server of another round or length */
    mop_secagg_server *s2;
    mop_secagg_params p = r.p;
    p.round = 6;
    assert_int_equal(mop_secagg_server_create(&p, &s2), MOP_OK);
    assert_int_equal(mop_secagg_server_add_masked(s2, b, n), MOP_E_STATE);
    mop_secagg_server_free(s2);
    p = r.p;
    p.length = 9;
    assert_int_equal(mop_secagg_server_create(&p, &s2), MOP_OK);
    assert_int_equal(mop_secagg_server_add_masked(s2, b, n), MOP_E_SHAPE);
    mop_secagg_server_free(s2);
    p = r.p;
    p.scale = 1024.0f;
    assert_int_equal(mop_secagg_server_create(&p, &s2), MOP_OK);
    assert_int_equal(mop_secagg_server_add_masked(s2, b, n), MOP_E_STATE);
    mop_secagg_server_free(s2);
    /* the untouched blob is accepted */
    assert_int_equal(mop_secagg_server_add_masked(r.s, b, n), MOP_OK);
    float sum[8];
    assert_int_equal(mop_secagg_server_finish(r.s, sum, 7, NULL, NULL), MOP_E_SHAPE);
    free(b);
    round_free(&r);
}

/* Recompute a blob's BLAKE2b-128 after editing it, as a sender would. */
static void reseal(uint8_t *b, size_t n)
{
    crypto_generichash(b + n - 16, 16, b, n - 16, NULL, 0);
}

/* Non-zero reserved header words are MOP_E_FORMAT even under a valid
 * checksum (issue 14, F8: they were never read); the blobs with zeros are
 * accepted afterwards, so nothing was applied by the rejected ones. */
static void test_reserved_words_must_be_zero(void **state)
{
    (void)state;
    round_t r;
    round_setup(&r, 3, 8, 64, 12);
    size_t n = r.blob_n[0];
    uint8_t *b = malloc(n);
    for (int byte = 36; byte < 40; byte++) {
        memcpy(b, r.blob[0], n);
        b[byte] = 0x80;
        reseal(b, n);
        assert_int_equal(mop_secagg_server_add_masked(r.s, b, n), MOP_E_FORMAT);
        assert_non_null(strstr(mop_last_error(), "reserved header word at byte 36"));
    }
    free(b);
    assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[0], n), MOP_OK);
    assert_int_equal(mop_secagg_server_add_masked(r.s, r.blob[1], r.blob_n[1]), MOP_OK);

    /* client 2 dropped: client 0's recovery blob */
    const int32_t dropped[1] = {2};
    uint8_t rec[32 + 36 + 16];
    size_t rn = 0;
    assert_int_equal(mop_secagg_client_reveal(r.c[0], dropped, 1, rec, sizeof rec, &rn), MOP_OK);
    assert_int_equal(rn, sizeof rec);
    uint8_t bad[sizeof rec];
    for (int byte = 28; byte < 32; byte++) {
        memcpy(bad, rec, rn);
        bad[byte] = 1;
        reseal(bad, rn);
        assert_int_equal(mop_secagg_server_add_recovery(r.s, bad, rn), MOP_E_FORMAT);
        assert_non_null(strstr(mop_last_error(), "reserved header word at byte 28"));
    }
    assert_int_equal(mop_secagg_server_add_recovery(r.s, rec, rn), MOP_OK);
    round_free(&r);
}

static void test_invalid_args(void **state)
{
    (void)state;
    mop_secagg_client *c = NULL;
    mop_secagg_server *s = NULL;
    mop_secagg_params p;
    mop_secagg_params_init(&p);
    assert_int_equal(mop_secagg_client_create(&p, 0, &c), MOP_E_INVALID_ARG); /* n, length unset */
    assert_int_equal(mop_secagg_client_create(NULL, 0, &c), MOP_E_INVALID_ARG);
    p.n_clients = 3;
    p.length = 4;
    assert_int_equal(mop_secagg_client_create(&p, 3, &c), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg_client_create(&p, -1, &c), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg_client_create(&p, 0, NULL), MOP_E_INVALID_ARG);
    mop_secagg_params q = p;
    q.n_clients = 1;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.ring_bits = 16;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.scale = 0.0f;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.clip_range = NAN;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.min_survivors = 1;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.min_survivors = 4;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.round = -1;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    q = p, q.struct_size = 1000;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);
    /* the sum could wrap: 100 × 256 × 2^32 ≥ 2^31 in a 32-bit ring */
    q = p, q.ring_bits = 32, q.n_clients = 100;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_RANGE);
    /* 64-bit ring: 65536 × round(2^20 · 2^32) = 2^68 ≥ 2^63 */
    q = p, q.n_clients = 65536, q.clip_range = 0x1p20f;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_RANGE);
    q = p, q.n_clients = 65537;
    assert_int_equal(mop_secagg_server_create(&q, &s), MOP_E_INVALID_ARG);

    assert_int_equal(mop_secagg_client_create(&p, 1, &c), MOP_OK);
    uint8_t keys[96], pk[32];
    assert_int_equal(mop_secagg_client_public_key(c, pk), MOP_OK);
    assert_int_equal(mop_secagg_client_public_key(c, NULL), MOP_E_INVALID_ARG);
    for (int i = 0; i < 3; i++) {
        mop_secagg_client *o;
        assert_int_equal(mop_secagg_client_create(&p, i, &o), MOP_OK);
        assert_int_equal(mop_secagg_client_public_key(o, keys + 32 * i), MOP_OK);
        mop_secagg_client_free(o);
    }
    assert_int_equal(mop_secagg_client_set_peer_keys(c, keys, 96), MOP_E_INVALID_ARG); /* own slot */
    memcpy(keys + 32, pk, 32);
    assert_int_equal(mop_secagg_client_set_peer_keys(c, keys, 64), MOP_E_INVALID_ARG); /* size */
    uint8_t dup[96];
    memcpy(dup, keys, 96);
    memcpy(dup + 64, dup, 32);
    assert_int_equal(mop_secagg_client_set_peer_keys(c, dup, 96), MOP_E_INVALID_ARG); /* equal keys */
    memset(dup, 0, 32); /* the identity point: a low-order key */
    memcpy(dup + 64, keys + 64, 32);
    assert_int_equal(mop_secagg_client_set_peer_keys(c, dup, 96), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "low-order"));
    assert_int_equal(mop_secagg_client_set_peer_keys(c, keys, 96), MOP_OK);
    assert_int_equal(mop_secagg_client_set_peer_keys(c, keys, 96), MOP_E_STATE);
    float x[4] = {1, 2, NAN, 4};
    uint8_t blob[48 + 5 * 8 + 16], small[10];
    size_t bn;
    assert_int_equal(mop_secagg_client_mask(c, x, 4, blob, sizeof blob, &bn), MOP_E_INVALID_ARG);
    x[2] = 3;
    assert_int_equal(mop_secagg_client_mask(c, x, 3, blob, sizeof blob, &bn), MOP_E_SHAPE);
    assert_int_equal(mop_secagg_client_mask(c, x, 4, small, sizeof small, &bn), MOP_E_RANGE);
    assert_int_equal(mop_secagg_client_mask(c, x, 4, blob, sizeof blob, &bn), MOP_OK);
    const int32_t self[] = {1}, out[] = {5}, twice[] = {0, 0};
    uint8_t rec[128];
    assert_int_equal(mop_secagg_client_reveal(c, self, 1, rec, sizeof rec, &bn), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg_client_reveal(c, out, 1, rec, sizeof rec, &bn), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg_client_reveal(c, twice, 2, rec, sizeof rec, &bn), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg_client_reveal(c, twice, 1, small, sizeof small, &bn), MOP_E_RANGE);
    mop_secagg_client_free(c);
    mop_secagg_client_free(NULL);
    mop_secagg_server_free(NULL);
    assert_int_equal(mop_alloc_live(), 0); /* no leak on any error path above */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_no_dropout),  cmocka_unit_test(test_exact_with_dropouts),
        cmocka_unit_test(test_masked_looks_uniform), cmocka_unit_test(test_wrong_peer_key),
        cmocka_unit_test(test_mask_update),       cmocka_unit_test(test_protocol_state),
        cmocka_unit_test(test_blob_errors),       cmocka_unit_test(test_reserved_words_must_be_zero),
        cmocka_unit_test(test_invalid_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
