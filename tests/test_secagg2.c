/* Secure aggregation with dropout recovery (mop_secagg2_*) and its Shamir
 * sharing (shamir.c): field arithmetic and t-of-n reconstruction from every
 * subset; exact sums (inputs are multiples of 2^−8, so the float sum is
 * exact and the fixed-point sum decodes to it bit for bit) without dropouts
 * and with clients dropping at each of the four stages; refusal below the
 * threshold t at every stage; a server asking for both shares of a client
 * (a second survivor list, a list without the client itself, a key share
 * for a survivor); tampered, truncated, resealed and replayed messages;
 * every argument and state error. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "fed/shamir.h"
#include "internal.h"
#include "libmop/mop_fed.h"

#define MAXC 8
#define LEN 37
#define HDR 48

/* ---- Shamir ---------------------------------------------------------------- */

static void test_field(void **state)
{
    (void)state;
    const uint64_t p = SHAMIR_P;
    assert_true(shamir_mul(p - 1, p - 1) == 1); /* (−1)² */
    assert_true(shamir_add(p - 1, 1) == 0);
    assert_true(shamir_sub(0, 1) == p - 1);
    uint64_t a = 0x123456789abcdefULL % p;
    assert_true(shamir_mul(a, shamir_inv(a)) == 1);
    assert_true(shamir_mul(shamir_inv(2), 2) == 1);
    /* (2^60)·2 = 2^61 ≡ 1 */
    assert_true(shamir_mul((uint64_t)1 << 60, 2) == 1);
}

static void test_shamir_subsets(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    uint8_t secret[32], got[32];
    randombytes_buf(secret, sizeof secret);
    const int32_t n = 6, t = 3;
    uint32_t xs[6] = {1, 2, 5, 7, 8, 65536};
    uint8_t sh[6 * SHAMIR_SHARE_BYTES];
    assert_int_equal(shamir_split(sh, secret, t, xs, n), 0);
    for (int32_t i = 0; i < n; i++)
        assert_true(shamir_share_ok(sh + i * SHAMIR_SHARE_BYTES));
    /* every subset of >= t shares gives the secret */
    for (uint32_t mask = 0; mask < (1u << n); mask++) {
        uint8_t sub[6 * SHAMIR_SHARE_BYTES];
        uint32_t sx[6];
        int32_t m = 0, bad = 0;
        for (int32_t i = 0; i < n; i++)
            if (mask >> i & 1) {
                memcpy(sub + m * SHAMIR_SHARE_BYTES, sh + i * SHAMIR_SHARE_BYTES, SHAMIR_SHARE_BYTES);
                sx[m++] = xs[i];
            }
        if (m < t)
            continue;
        assert_int_equal(shamir_combine(got, sub, sx, m, t, &bad), 0);
        assert_memory_equal(got, secret, 32);
    }
    /* t − 1 shares interpolated as if t − 1 were the threshold: not the secret */
    int32_t bad;
    int r = shamir_combine(got, sh, xs, t - 1, t - 1, &bad);
    assert_true(r != 0 || memcmp(got, secret, 32) != 0);
    /* a tampered share is caught when redundant shares exist */
    uint8_t tam[6 * SHAMIR_SHARE_BYTES];
    memcpy(tam, sh, sizeof tam);
    tam[2 * SHAMIR_SHARE_BYTES + 3] ^= 1;
    assert_int_equal(shamir_combine(got, tam, xs, n, t, &bad), -1);
    /* t = 1: every share is the secret itself */
    assert_int_equal(shamir_split(sh, secret, 1, xs, n), 0);
    assert_int_equal(shamir_combine(got, sh + 4 * SHAMIR_SHARE_BYTES, xs + 4, 1, 1, &bad), 0);
    assert_memory_equal(got, secret, 32);
    /* word >= p is malformed */
    uint8_t big[SHAMIR_SHARE_BYTES];
    memset(big, 0xff, sizeof big);
    assert_false(shamir_share_ok(big));
}

/* ---- protocol harness ------------------------------------------------------- */

typedef struct r2 {
    mop_secagg_params p;
    int32_t n;
    mop_secagg2_client *c[MAXC];
    mop_secagg2_server *s;
    float x[MAXC][LEN];
    uint8_t *last[MAXC]; /* copy of each client's last server message */
    size_t last_n[MAXC];
} r2;

static void r2_init(r2 *r, int32_t n, int32_t t, unsigned seed)
{
    memset(r, 0, sizeof *r);
    srand(seed);
    r->n = n;
    mop_secagg_params_init(&r->p);
    r->p.n_clients = n;
    r->p.length = LEN;
    r->p.round = 3;
    r->p.min_survivors = t;
    r->p.clip_range = 100.0f;
    for (int32_t i = 0; i < n; i++) {
        assert_int_equal(mop_secagg2_client_create(&r->p, i, &r->c[i]), MOP_OK);
        for (int j = 0; j < LEN; j++)
            r->x[i][j] = (float)(rand() % 20001 - 10000) / 256.0f;
    }
    assert_int_equal(mop_secagg2_server_create(&r->p, &r->s), MOP_OK);
}

static void r2_free(r2 *r)
{
    for (int32_t i = 0; i < r->n; i++) {
        mop_secagg2_client_free(r->c[i]);
        free(r->last[i]);
    }
    mop_secagg2_server_free(r->s);
}

/* Run stage k: every client i with drop[i] > k answers its message; then
 * the server advances. Returns advance()'s status. */
static mop_status r2_stage(r2 *r, int k, const int *drop)
{
    for (int32_t i = 0; i < r->n; i++) {
        if (drop[i] <= k)
            continue;
        const uint8_t *in = NULL, *out = NULL;
        size_t n_in = 0, n_out = 0;
        if (k > 0) {
            assert_int_equal(mop_secagg2_server_message(r->s, i, &in, &n_in), MOP_OK);
            free(r->last[i]);
            r->last[i] = malloc(n_in);
            memcpy(r->last[i], in, n_in);
            r->last_n[i] = n_in;
        }
        assert_int_equal(mop_secagg2_client_step(r->c[i], r->last[i], k ? r->last_n[i] : 0,
                                                 k == 2 ? r->x[i] : NULL, k == 2 ? LEN : 0,
                                                 &out, &n_out),
                         MOP_OK);
        assert_int_equal(mop_secagg2_server_receive(r->s, out, n_out), MOP_OK);
    }
    return mop_secagg2_server_advance(r->s);
}

/* Full round; drop[i] = stage at which client i stops (4 = never). The sum
 * must equal the plain sum of the clients that sent their masked input. */
static void r2_check_round(int32_t n, int32_t t, const int *drop, unsigned seed)
{
    r2 r;
    r2_init(&r, n, t, seed);
    for (int k = 0; k < 4; k++)
        assert_int_equal(r2_stage(&r, k, drop), MOP_OK);
    float sum[LEN];
    int32_t inc[MAXC], ninc = -1;
    assert_int_equal(mop_secagg2_server_result(r.s, sum, LEN, inc, &ninc), MOP_OK);
    int32_t want = 0;
    for (int32_t i = 0; i < n; i++)
        if (drop[i] > 2)
            assert_int_equal(inc[want++], i);
    assert_int_equal(ninc, want);
    for (int j = 0; j < LEN; j++) {
        double ref = 0.0;
        for (int32_t i = 0; i < n; i++)
            if (drop[i] > 2)
                ref += r.x[i][j];
        assert_true(sum[j] == (float)ref); /* exact */
    }
    r2_free(&r);
}

static void test_exact_no_dropout(void **state)
{
    (void)state;
    const int none[MAXC] = {4, 4, 4, 4, 4, 4, 4, 4};
    r2_check_round(2, 2, none, 1);
    r2_check_round(5, 3, none, 2);
    r2_check_round(8, 8, none, 3); /* t = n */
}

static void test_dropout_at_each_stage(void **state)
{
    (void)state;
    for (int k = 0; k < 4; k++) {
        int drop[MAXC] = {4, 4, 4, 4, 4, 4, 4, 4};
        drop[1] = drop[4] = k; /* two of six drop at stage k */
        r2_check_round(6, 3, drop, 10u + (unsigned)k);
    }
    /* one drop at every stage, and the first and last index */
    const int mixed[MAXC] = {0, 4, 1, 4, 2, 4, 4, 3};
    r2_check_round(8, 4, mixed, 20);
    /* exactly t left at the end */
    const int tight[MAXC] = {2, 4, 3, 4, 4, 1, 4, 4};
    r2_check_round(8, 5, tight, 21);
}

static void test_fewer_than_t_refused(void **state)
{
    (void)state;
    for (int k = 0; k < 4; k++) {
        r2 r;
        r2_init(&r, 5, 3, 30u + (unsigned)k);
        int drop[MAXC] = {4, 4, 4, 4, 4, 4, 4, 4};
        drop[0] = drop[2] = drop[3] = k; /* 2 of 5 left < t = 3 */
        for (int j = 0; j < k; j++)
            assert_int_equal(r2_stage(&r, j, drop), MOP_OK);
        assert_int_equal(r2_stage(&r, k, drop), MOP_E_STATE);
        assert_non_null(strstr(mop_last_error(), "fewer than the threshold t = 3"));
        assert_non_null(strstr(mop_last_error(), "2 of 5"));
        float sum[LEN];
        assert_int_equal(mop_secagg2_server_result(r.s, sum, LEN, NULL, NULL), MOP_E_STATE);
        r2_free(&r);
    }
}

static void reseal(uint8_t *m, size_t n)
{
    crypto_generichash(m + n - 16, 16, m, n - 16, NULL, 0);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A survivor list like @p m (n bytes) without client @p gone; returns its size. */
static size_t drop_from_list(uint8_t *out, const uint8_t *m, size_t n, uint32_t gone)
{
    uint32_t cnt = rd32(m + HDR);
    memcpy(out, m, HDR + 8);
    size_t w = HDR + 8;
    for (uint32_t k = 0; k < cnt; k++) {
        uint32_t v = rd32(m + HDR + 8 + 4 * k);
        if (v != gone) {
            wr32(out + w, v);
            w += 4;
        }
    }
    wr32(out + HDR, (uint32_t)((w - HDR - 8) / 4));
    w += 16;
    reseal(out, w);
    (void)n;
    return w;
}

static void test_server_asking_for_both_shares(void **state)
{
    (void)state;
    r2 r;
    r2_init(&r, 5, 3, 40);
    const int none[MAXC] = {4, 4, 4, 4, 4, 4, 4, 4};
    for (int k = 0; k < 3; k++)
        assert_int_equal(r2_stage(&r, k, none), MOP_OK);
    /* stage unmask: the server's survivor list names all 5 */
    const uint8_t *surv = NULL, *out = NULL;
    size_t n_surv = 0, n_out = 0;
    assert_int_equal(mop_secagg2_server_message(r.s, 0, &surv, &n_surv), MOP_OK);
    uint8_t list[HDR + 8 + 4 * MAXC + 16], alt[HDR + 8 + 4 * MAXC + 16];
    memcpy(list, surv, n_surv);
    /* client 0 answers it (shares of every b_v) ... */
    assert_int_equal(mop_secagg2_client_step(r.c[0], list, n_surv, NULL, 0, &out, &n_out), MOP_OK);
    assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
    /* ... then a list claiming client 2 dropped would give the share of s_2: refused */
    size_t n_alt = drop_from_list(alt, list, n_surv, 2);
    assert_int_equal(mop_secagg2_client_step(r.c[0], alt, n_alt, NULL, 0, &out, &n_out), MOP_E_STATE);
    assert_non_null(strstr(mop_last_error(), "both shares"));
    /* the same list again is refused too (one answer per client) */
    assert_int_equal(mop_secagg2_client_step(r.c[0], list, n_surv, NULL, 0, &out, &n_out), MOP_E_STATE);
    /* a list without the client itself: refused (it sent its masked input) */
    n_alt = drop_from_list(alt, list, n_surv, 1);
    assert_int_equal(mop_secagg2_client_step(r.c[1], alt, n_alt, NULL, 0, &out, &n_out), MOP_E_STATE);
    assert_non_null(strstr(mop_last_error(), "leaves out this client"));
    /* a list of fewer than t survivors: refused */
    size_t n_small = drop_from_list(alt, list, n_surv, 3);
    uint8_t small[sizeof alt];
    n_small = drop_from_list(small, alt, n_small, 4);
    n_small = drop_from_list(alt, small, n_small, 2); /* {0, 1} */
    assert_int_equal(mop_secagg2_client_step(r.c[1], alt, n_small, NULL, 0, &out, &n_out), MOP_E_STATE);
    assert_non_null(strstr(mop_last_error(), "fewer than the threshold"));
    /* client 1 still answers the true list; a forged answer giving the key
     * share of survivor 2 is refused by the server */
    assert_int_equal(mop_secagg2_client_step(r.c[1], list, n_surv, NULL, 0, &out, &n_out), MOP_OK);
    uint8_t forged[HDR + 8 + 72 * MAXC + 16];
    memcpy(forged, out, n_out);
    wr32(forged + HDR + 8 + 72 * 2 + 4, 2); /* kind: key share */
    reseal(forged, n_out);
    assert_int_equal(mop_secagg2_server_receive(r.s, forged, n_out), MOP_E_STATE);
    assert_non_null(strstr(mop_last_error(), "survived"));
    assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
    /* the round still completes with the honest answers */
    for (int32_t i = 2; i < 5; i++) {
        assert_int_equal(mop_secagg2_client_step(r.c[i], list, n_surv, NULL, 0, &out, &n_out), MOP_OK);
        assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
    }
    assert_int_equal(mop_secagg2_server_advance(r.s), MOP_OK);
    float sum[LEN];
    assert_int_equal(mop_secagg2_server_result(r.s, sum, LEN, NULL, NULL), MOP_OK);
    r2_free(&r);
}

/* One client's outgoing message of stage k, copied (stages before are run for all). */
static void test_tampered_messages(void **state)
{
    (void)state;
    r2 r;
    r2_init(&r, 4, 3, 50);
    const int none[MAXC] = {4, 4, 4, 4, 4, 4, 4, 4};
    const uint8_t *out = NULL;
    size_t n_out = 0;
    /* stage advertise: client 0's message, tampered ways, to the server */
    assert_int_equal(mop_secagg2_client_step(r.c[0], NULL, 0, NULL, 0, &out, &n_out), MOP_OK);
    uint8_t adv[HDR + 64 + 16], t[HDR + 64 + 16];
    memcpy(adv, out, n_out);
    memcpy(t, adv, sizeof t);
    t[HDR + 5] ^= 1; /* body bit: checksum */
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_CHECKSUM);
    assert_int_equal(mop_secagg2_server_receive(r.s, adv, sizeof adv - 1), MOP_E_CHECKSUM);
    assert_int_equal(mop_secagg2_server_receive(r.s, adv, 20), MOP_E_FORMAT);
    memcpy(t, adv, sizeof t);
    t[0] = 'X';
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_FORMAT);
    memcpy(t, adv, sizeof t);
    t[4] = 9;
    reseal(t, sizeof t);
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_UNSUPPORTED);
    memcpy(t, adv, sizeof t);
    t[20] = 1; /* reserved */
    reseal(t, sizeof t);
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_FORMAT);
    memcpy(t, adv, sizeof t);
    t[8] = 5; /* type: masked input at the advertise stage */
    reseal(t, sizeof t);
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_STATE);
    memcpy(t, adv, sizeof t);
    t[24] ^= 1; /* round */
    reseal(t, sizeof t);
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_STATE);
    memcpy(t, adv, sizeof t);
    t[12] = 77; /* sender out of range */
    reseal(t, sizeof t);
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_FORMAT);
    assert_int_equal(mop_secagg2_server_receive(r.s, adv, sizeof adv), MOP_OK);
    assert_int_equal(mop_secagg2_server_receive(r.s, adv, sizeof adv), MOP_E_STATE); /* replay */
    /* client 1 advertising client 0's keys: refused */
    memcpy(t, adv, sizeof t);
    t[12] = 1;
    reseal(t, sizeof t);
    assert_int_equal(mop_secagg2_server_receive(r.s, t, sizeof t), MOP_E_STATE);
    for (int32_t i = 1; i < 4; i++) {
        assert_int_equal(mop_secagg2_client_step(r.c[i], NULL, 0, NULL, 0, &out, &n_out), MOP_OK);
        assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
    }
    assert_int_equal(mop_secagg2_server_advance(r.s), MOP_OK);

    /* stage share: the key list, tampered (a key changed: client 0 notices its own) */
    const uint8_t *in = NULL;
    size_t n_in = 0;
    assert_int_equal(mop_secagg2_server_message(r.s, 0, &in, &n_in), MOP_OK);
    uint8_t keys[HDR + 8 + 68 * 4 + 16], k2[sizeof keys];
    assert_int_equal(n_in, sizeof keys);
    memcpy(keys, in, n_in);
    memcpy(k2, keys, sizeof k2);
    k2[HDR + 8 + 4] ^= 1; /* client 0's c_pk */
    reseal(k2, sizeof k2);
    assert_int_equal(mop_secagg2_client_step(r.c[0], k2, sizeof k2, NULL, 0, &out, &n_out), MOP_E_STATE);
    assert_non_null(strstr(mop_last_error(), "other public keys"));
    memcpy(k2, keys, sizeof k2);
    wr32(k2 + HDR + 8 + 68, 0); /* two entries for client 0: not ascending */
    reseal(k2, sizeof k2);
    assert_int_equal(mop_secagg2_client_step(r.c[0], k2, sizeof k2, NULL, 0, &out, &n_out), MOP_E_FORMAT);
    memcpy(k2, keys, sizeof k2);
    wr32(k2 + HDR, 5); /* count beyond the body */
    reseal(k2, sizeof k2);
    assert_int_equal(mop_secagg2_client_step(r.c[0], k2, sizeof k2, NULL, 0, &out, &n_out), MOP_E_FORMAT);
    /* the genuine list still works after the failures */
    for (int32_t i = 0; i < 4; i++) {
        assert_int_equal(mop_secagg2_server_message(r.s, i, &in, &n_in), MOP_OK);
        assert_int_equal(mop_secagg2_client_step(r.c[i], in, n_in, NULL, 0, &out, &n_out), MOP_OK);
        assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
    }
    assert_int_equal(mop_secagg2_server_advance(r.s), MOP_OK);

    /* stage masked input: a tampered ciphertext (resealed) fails to decrypt */
    assert_int_equal(mop_secagg2_server_message(r.s, 0, &in, &n_in), MOP_OK);
    uint8_t *fwd = malloc(n_in), *f2 = malloc(n_in);
    memcpy(fwd, in, n_in);
    memcpy(f2, fwd, n_in);
    f2[HDR + 8 + 4 + 30] ^= 1;
    reseal(f2, n_in);
    assert_int_equal(mop_secagg2_client_step(r.c[0], f2, n_in, r.x[0], LEN, &out, &n_out),
                     MOP_E_CHECKSUM);
    assert_non_null(strstr(mop_last_error(), "do not decrypt"));
    /* client 1's shares handed to client 0: addressed to someone else */
    assert_int_equal(mop_secagg2_server_message(r.s, 1, &in, &n_in), MOP_OK);
    assert_int_equal(mop_secagg2_client_step(r.c[0], in, n_in, r.x[0], LEN, &out, &n_out),
                     MOP_E_STATE);
    /* x errors */
    float bad[LEN];
    memcpy(bad, r.x[0], sizeof bad);
    bad[3] = NAN;
    assert_int_equal(mop_secagg2_client_step(r.c[0], fwd, n_in, bad, LEN, &out, &n_out),
                     MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_step(r.c[0], fwd, n_in, r.x[0], LEN - 1, &out, &n_out),
                     MOP_E_SHAPE);
    assert_int_equal(mop_secagg2_client_step(r.c[0], fwd, n_in, NULL, 0, &out, &n_out),
                     MOP_E_INVALID_ARG);
    for (int32_t i = 0; i < 4; i++) {
        assert_int_equal(mop_secagg2_server_message(r.s, i, &in, &n_in), MOP_OK);
        assert_int_equal(mop_secagg2_client_step(r.c[i], in, n_in, r.x[i], LEN, &out, &n_out), MOP_OK);
        if (i == 0) { /* a masked input with a wrong length field */
            uint8_t *m2 = malloc(n_out);
            memcpy(m2, out, n_out);
            m2[HDR] ^= 1;
            reseal(m2, n_out);
            assert_int_equal(mop_secagg2_server_receive(r.s, m2, n_out), MOP_E_SHAPE);
            free(m2);
        }
        assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
    }
    free(fwd);
    free(f2);
    assert_int_equal(mop_secagg2_server_advance(r.s), MOP_OK);

    /* stage unmasking: client 3 answers with a wrong (well-formed) share of b_0;
     * with 4 answers for t = 3 the redundant share exposes it */
    for (int32_t i = 0; i < 4; i++) {
        assert_int_equal(mop_secagg2_server_message(r.s, i, &in, &n_in), MOP_OK);
        assert_int_equal(mop_secagg2_client_step(r.c[i], in, n_in, NULL, 0, &out, &n_out), MOP_OK);
        if (i == 3) {
            uint8_t *u2 = malloc(n_out);
            memcpy(u2, out, n_out);
            u2[HDR + 8 + 8] ^= 1; /* low byte of word 0 of the share about client 0 */
            reseal(u2, n_out);
            assert_int_equal(mop_secagg2_server_receive(r.s, u2, n_out), MOP_OK);
            free(u2);
        } else {
            assert_int_equal(mop_secagg2_server_receive(r.s, out, n_out), MOP_OK);
        }
    }
    assert_int_equal(mop_secagg2_server_advance(r.s), MOP_E_CHECKSUM);
    assert_non_null(strstr(mop_last_error(), "client 0"));
    float sum[LEN];
    assert_int_equal(mop_secagg2_server_result(r.s, sum, LEN, NULL, NULL), MOP_E_STATE);
    r2_free(&r);
    (void)none;
}

/* With exactly t answers a wrong share cannot be outvoted: the commitment
 * (self-mask seed) or the public key (mask key) catches it. */
static void test_wrong_share_at_threshold(void **state)
{
    (void)state;
    for (int which = 0; which < 2; which++) {
        r2 r;
        r2_init(&r, 4, 3, 60u + (unsigned)which);
        int drop[MAXC] = {4, 4, 4, 4, 4, 4, 4, 4};
        drop[3] = which == 0 ? 3 : 2; /* 3 answers; client 3 survived (b) or dropped (s) */
        for (int k = 0; k < 3; k++)
            assert_int_equal(r2_stage(&r, k, drop), MOP_OK);
        for (int32_t i = 0; i < 3; i++) {
            const uint8_t *in = NULL, *out = NULL;
            size_t n_in = 0, n_out = 0;
            assert_int_equal(mop_secagg2_server_message(r.s, i, &in, &n_in), MOP_OK);
            assert_int_equal(mop_secagg2_client_step(r.c[i], in, n_in, NULL, 0, &out, &n_out), MOP_OK);
            uint8_t *u2 = malloc(n_out);
            memcpy(u2, out, n_out);
            if (i == 1) {
                u2[HDR + 8 + 72 * 3 + 8 + 2] ^= 1; /* share about client 3 (byte 2: not a bit X25519 clamps) */
                reseal(u2, n_out);
            }
            assert_int_equal(mop_secagg2_server_receive(r.s, u2, n_out), MOP_OK);
            free(u2);
        }
        assert_int_equal(mop_secagg2_server_advance(r.s), MOP_E_CHECKSUM);
        assert_non_null(strstr(mop_last_error(), which == 0 ? "commitment" : "public key"));
        r2_free(&r);
    }
}

static void test_args_and_states(void **state)
{
    (void)state;
    mop_secagg_params p;
    mop_secagg_params_init(&p);
    p.n_clients = 3;
    p.length = 4;
    p.min_survivors = 2;
    mop_secagg2_client *c = NULL;
    mop_secagg2_server *s = NULL;
    assert_int_equal(mop_secagg2_client_create(NULL, 0, &c), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_create(&p, 3, &c), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_create(&p, 0, NULL), MOP_E_INVALID_ARG);
    mop_secagg_params q = p;
    q.min_survivors = 4;
    assert_int_equal(mop_secagg2_client_create(&q, 0, &c), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_create(&q, &s), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_create(&p, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_create(&p, 0, &c), MOP_OK);
    assert_int_equal(mop_secagg2_server_create(&p, &s), MOP_OK);
    const uint8_t *out = NULL;
    size_t n_out = 0;
    uint8_t junk[80] = {0};
    float x[4] = {0};
    assert_int_equal(mop_secagg2_client_step(NULL, NULL, 0, NULL, 0, &out, &n_out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_step(c, NULL, 0, NULL, 0, NULL, &n_out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_step(c, junk, sizeof junk, NULL, 0, &out, &n_out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_client_step(c, NULL, 0, x, 4, &out, &n_out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_message(s, 0, &out, &n_out), MOP_E_STATE);
    assert_int_equal(mop_secagg2_server_message(s, 3, &out, &n_out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_receive(s, NULL, 0), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_receive(NULL, junk, 1), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_receive(s, junk, sizeof junk), MOP_E_FORMAT);
    assert_int_equal(mop_secagg2_server_advance(NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_advance(s), MOP_E_STATE); /* nobody advertised */
    float sum[4];
    assert_int_equal(mop_secagg2_server_result(s, sum, 4, NULL, NULL), MOP_E_STATE);
    assert_int_equal(mop_secagg2_server_result(s, sum, 3, NULL, NULL), MOP_E_SHAPE);
    assert_int_equal(mop_secagg2_server_result(s, NULL, 4, NULL, NULL), MOP_E_INVALID_ARG);
    /* one client advertises: the key list is only for it; the stage needs t = 2 */
    assert_int_equal(mop_secagg2_client_step(c, NULL, 0, NULL, 0, &out, &n_out), MOP_OK);
    assert_int_equal(mop_secagg2_client_step(c, NULL, 0, NULL, 0, &out, &n_out), MOP_E_INVALID_ARG);
    assert_int_equal(mop_secagg2_server_receive(s, out, n_out), MOP_OK);
    assert_int_equal(mop_secagg2_server_advance(s), MOP_E_STATE);
    /* a server of another round refuses the message */
    mop_secagg2_server *s2 = NULL;
    q = p;
    q.round = 9;
    assert_int_equal(mop_secagg2_server_create(&q, &s2), MOP_OK);
    assert_int_equal(mop_secagg2_server_receive(s2, out, n_out), MOP_E_STATE);
    mop_secagg2_server_free(s2);
    mop_secagg2_client_free(c);
    mop_secagg2_server_free(s);
    mop_secagg2_client_free(NULL);
    mop_secagg2_server_free(NULL);
}

static void test_no_leaks(void **state)
{
    (void)state;
    long live = mop_alloc_live();
    const int drop[MAXC] = {4, 1, 4, 2, 4, 3, 4, 4};
    r2_check_round(8, 4, drop, 70);
    assert_int_equal(mop_alloc_live(), live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field),
        cmocka_unit_test(test_shamir_subsets),
        cmocka_unit_test(test_exact_no_dropout),
        cmocka_unit_test(test_dropout_at_each_stage),
        cmocka_unit_test(test_fewer_than_t_refused),
        cmocka_unit_test(test_server_asking_for_both_shares),
        cmocka_unit_test(test_tampered_messages),
        cmocka_unit_test(test_wrong_share_at_threshold),
        cmocka_unit_test(test_args_and_states),
        cmocka_unit_test(test_no_leaks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
