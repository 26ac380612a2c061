/* mop_update: the object, the blob format (docs/FORMAT.md, "Update blobs")
 * and the bridge to mixtures. The format is checked field by field at the
 * documented offsets, the checksum against libsodium's SHA-256 of the bytes
 * (itself checked on the FIPS 180-2 "abc" vector), and every corruption the
 * parser must reject with its exact status. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "internal.h"
#include "libmop/mop_fed.h"
#include "model.h"

/* ---- helpers ------------------------------------------------------------- */

static mop_update *sample_update(void)
{
    mop_update *u = NULL;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 7, 0x0123456789abcdefull, 42.5, &u), MOP_OK);
    const float a[6] = {1.0f, -0.0f, 1e-40f /* subnormal */, 3.4e38f, -2.5f, 0.1f};
    const int64_t da[2] = {2, 3};
    const float b[3] = {0.25f, -1e-3f, 7.0f};
    const int64_t db[1] = {3};
    assert_int_equal(mop_update_add_tensor(u, "experts", a, 2, da), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "gate.b2", b, 1, db), MOP_OK);
    assert_int_equal(mop_update_set_meta(u, "client", "phone-17"), MOP_OK);
    assert_int_equal(mop_update_set_meta(u, "note", ""), MOP_OK);
    return u;
}

/* Serialized bytes (malloc'ed) and their length. */
static uint8_t *blob_of(const mop_update *u, size_t *n)
{
    assert_int_equal(mop_update_serialize(u, NULL, 0, n), MOP_OK);
    uint8_t *b = malloc(*n);
    assert_non_null(b);
    size_t n2 = 0;
    assert_int_equal(mop_update_serialize(u, b, *n, &n2), MOP_OK);
    assert_int_equal(n2, *n);
    return b;
}

static void reseal(uint8_t *b, size_t n)
{
    crypto_hash_sha256(b + n - 32, b, n - 32);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* Offset of the payload in the blob of sample_update(): header 48, meta
 * (4+6+4+8) + (4+4+4+0), table (4+7+4+16) + (4+7+4+8). */
enum { SAMPLE_PAYLOAD = 48 + 22 + 12 + 31 + 23, SAMPLE_FLOATS = 9 };

static mop_status parse(const uint8_t *b, size_t n)
{
    mop_update *u = NULL;
    mop_status s = mop_update_parse(b, n, &u);
    if (s == MOP_OK)
        mop_update_free(u);
    else
        assert_null(u);
    return s;
}

/* ---- the object ---------------------------------------------------------- */

static void test_object_accessors(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    assert_int_equal(mop_update_tensor_count(u), 2);
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(u, 1, NULL, &ti), MOP_OK);
    assert_string_equal(ti.name, "gate.b2");
    assert_int_equal(ti.size, 3);
    assert_int_equal(ti.n_dims, 1);
    assert_int_equal(ti.dims[0], 3);
    assert_int_equal(mop_update_get_tensor(u, -1, "experts", &ti), MOP_OK);
    assert_int_equal(ti.size, 6);
    assert_int_equal(ti.dims[0], 2);
    assert_int_equal(ti.dims[1], 3);
    assert_true(ti.data[4] == -2.5f);
    assert_int_equal(mop_update_get_tensor(u, 2, NULL, &ti), MOP_E_RANGE);
    assert_int_equal(mop_update_get_tensor(u, -1, "nope", &ti), MOP_E_RANGE);

    mop_update_header h = {.struct_size = sizeof h};
    assert_int_equal(mop_update_get_header(u, &h), MOP_OK);
    assert_int_equal(h.kind, MOP_UPDATE_DELTA);
    assert_int_equal(h.round, 7);
    assert_true(h.client_id == 0x0123456789abcdefull);
    assert_true(h.n_samples == 42.5);

    const char *v = NULL;
    assert_int_equal(mop_update_get_meta(u, "client", &v), MOP_OK);
    assert_string_equal(v, "phone-17");
    assert_int_equal(mop_update_set_meta(u, "client", "laptop"), MOP_OK); /* replaces */
    assert_int_equal(mop_update_get_meta(u, "client", &v), MOP_OK);
    assert_string_equal(v, "laptop");
    assert_int_equal(mop_update_get_meta(u, "absent", &v), MOP_E_RANGE);
    mop_update_free(u);
    mop_update_free(NULL);
}

static void test_object_rejects_bad_input(void **state)
{
    (void)state;
    mop_update *u = NULL;
    assert_int_equal(mop_update_create(2, 0, 0, 1.0, &u), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_create(0, -1, 0, 1.0, &u), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_create(0, 0, 0, -1.0, &u), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_create(0, 0, 0, NAN, &u), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_create(0, 0, 0, INFINITY, &u), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_create(0, 0, 0, 1.0, NULL), MOP_E_INVALID_ARG);
    assert_null(u);
    assert_int_equal(mop_update_create(0, 0, 0, 1.0, &u), MOP_OK);
    const float x[2] = {1, 2}, bad[2] = {1, NAN}, inf[2] = {INFINITY, 0};
    const int64_t d[1] = {2}, d0[1] = {0}, d5[5] = {1, 1, 1, 1, 2};
    char long_name[300];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    assert_int_equal(mop_update_add_tensor(u, "x", bad, 1, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "x", inf, 1, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "x", x, 1, d0), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "x", x, 0, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "x", x, 5, d5), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "", x, 1, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, long_name, x, 1, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "bad\xff", x, 1, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_add_tensor(u, "\xc0\xaf", x, 1, d), MOP_E_INVALID_ARG); /* overlong */
    assert_int_equal(mop_update_add_tensor(u, NULL, x, 1, d), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_tensor_count(u), 0);
    assert_int_equal(mop_update_add_tensor(u, "caf\xc3\xa9", x, 1, d), MOP_OK); /* "café" */
    assert_int_equal(mop_update_add_tensor(u, "caf\xc3\xa9", x, 1, d), MOP_E_INVALID_ARG); /* duplicate */
    assert_int_equal(mop_update_set_meta(u, "", "v"), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_set_meta(u, "k", "\xff"), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_tensor_count(u), 1);
    mop_update_free(u);
}

/* ---- the blob ------------------------------------------------------------ */

static void test_sha256_is_libsodium_fips_vector(void **state)
{
    (void)state;
    /* FIPS 180-2 appendix B.1: SHA-256("abc") */
    static const uint8_t want[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                     0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                     0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    uint8_t got[32];
    crypto_hash_sha256(got, (const uint8_t *)"abc", 3);
    assert_memory_equal(got, want, 32);
}

static void test_layout_matches_format_doc(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    assert_int_equal(n, SAMPLE_PAYLOAD + 4 * SAMPLE_FLOATS + 32);
    assert_memory_equal(b, "MOPU", 4);
    assert_int_equal(rd32(b + 4), 1);                   /* version */
    assert_int_equal(rd32(b + 8), MOP_UPDATE_DELTA);    /* kind */
    assert_int_equal(rd32(b + 12), 2);                  /* n_meta */
    assert_true(rd64(b + 16) == 7);                     /* round */
    assert_true(rd64(b + 24) == 0x0123456789abcdefull); /* client id */
    uint64_t bits = rd64(b + 32);
    double ns;
    memcpy(&ns, &bits, 8);
    assert_true(ns == 42.5);
    assert_int_equal(rd32(b + 40), 2); /* n_tensors */
    assert_int_equal(rd32(b + 44), 0); /* reserved */
    /* first metadata entry, first table entry */
    assert_int_equal(rd32(b + 48), 6);
    assert_memory_equal(b + 52, "client", 6);
    size_t t0 = 48 + 22 + 12;
    assert_int_equal(rd32(b + t0), 7);
    assert_memory_equal(b + t0 + 4, "experts", 7);
    assert_int_equal(rd32(b + t0 + 11), 2);
    assert_true(rd64(b + t0 + 15) == 2 && rd64(b + t0 + 23) == 3);
    /* payload: float bits, little-endian */
    uint32_t f = rd32(b + SAMPLE_PAYLOAD + 4 * 4);
    float v;
    memcpy(&v, &f, 4);
    assert_true(v == -2.5f);
    /* trailer: SHA-256 of everything before it */
    uint8_t h[32];
    crypto_hash_sha256(h, b, n - 32);
    assert_memory_equal(h, b + n - 32, 32);
    free(b);
    mop_update_free(u);
}

static void test_round_trip_is_bit_exact(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    mop_update *v = NULL;
    assert_int_equal(mop_update_parse(b, n, &v), MOP_OK);
    size_t n2 = 0;
    uint8_t *b2 = blob_of(v, &n2);
    assert_int_equal(n, n2);
    assert_memory_equal(b, b2, n);
    /* the values themselves, bit for bit (−0.0 and the subnormal included) */
    for (int32_t i = 0; i < 2; i++) {
        mop_update_tensor_info a = {.struct_size = sizeof a}, c = {.struct_size = sizeof c};
        assert_int_equal(mop_update_get_tensor(u, i, NULL, &a), MOP_OK);
        assert_int_equal(mop_update_get_tensor(v, i, NULL, &c), MOP_OK);
        assert_string_equal(a.name, c.name);
        assert_int_equal(a.size, c.size);
        assert_memory_equal(a.data, c.data, (size_t)a.size * sizeof(float));
    }
    const char *m = NULL;
    assert_int_equal(mop_update_get_meta(v, "note", &m), MOP_OK);
    assert_string_equal(m, "");
    mop_update_header h = {.struct_size = sizeof h};
    assert_int_equal(mop_update_get_header(v, &h), MOP_OK);
    assert_true(h.round == 7 && h.n_samples == 42.5 && h.client_id == 0x0123456789abcdefull);
    free(b);
    free(b2);
    mop_update_free(u);
    mop_update_free(v);

    /* an empty FULL update round-trips too */
    assert_int_equal(mop_update_create(MOP_UPDATE_FULL, 0, 0, 0.0, &u), MOP_OK);
    b = blob_of(u, &n);
    assert_int_equal(n, 48 + 32);
    assert_int_equal(mop_update_parse(b, n, &v), MOP_OK);
    assert_int_equal(mop_update_tensor_count(v), 0);
    free(b);
    mop_update_free(u);
    mop_update_free(v);
}

static void test_serialize_checks_capacity(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0, n2 = 0;
    assert_int_equal(mop_update_serialize(u, NULL, 0, &n), MOP_OK);
    uint8_t *b = malloc(n);
    assert_int_equal(mop_update_serialize(u, b, n - 1, &n2), MOP_E_RANGE);
    assert_int_equal(mop_update_serialize(u, NULL, 5, &n2), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_serialize(NULL, b, n, &n2), MOP_E_INVALID_ARG);
    free(b);
    mop_update_free(u);
}

static void test_every_truncation_is_format_error(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    for (size_t len = 0; len < n; len++) {
        uint8_t *t = malloc(len ? len : 1); /* exact size, so ASan sees overreads */
        memcpy(t, b, len);
        assert_int_equal(parse(t, len), MOP_E_FORMAT);
        free(t);
    }
    assert_int_equal(parse(b, n), MOP_OK);
    free(b);
    mop_update_free(u);
}

static void test_trailing_bytes_rejected(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    uint8_t *t = calloc(n + 8, 1);
    memcpy(t, b, n);
    assert_int_equal(parse(t, n + 1), MOP_E_FORMAT);
    assert_int_equal(parse(t, n + 8), MOP_E_FORMAT);
    /* even with a checksum over the longer content */
    reseal(t, n + 8);
    assert_int_equal(parse(t, n + 8), MOP_E_FORMAT);
    free(t);
    free(b);
    mop_update_free(u);
}

static void test_flipped_bytes_are_checksum_errors(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    /* every payload byte, every checksum byte, and the metadata text */
    for (size_t i = SAMPLE_PAYLOAD; i < n; i++) {
        b[i] ^= 0x01;
        assert_int_equal(parse(b, n), MOP_E_CHECKSUM);
        b[i] ^= 0x01;
    }
    b[52] ^= 0x20; /* "client" -> "Client" */
    assert_int_equal(parse(b, n), MOP_E_CHECKSUM);
    b[52] ^= 0x20;
    b[20] ^= 0x01; /* round */
    assert_int_equal(parse(b, n), MOP_E_CHECKSUM);
    b[20] ^= 0x01;
    assert_int_equal(parse(b, n), MOP_OK);
    free(b);
    mop_update_free(u);
}

static void test_unknown_version_unsupported(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    b[4] = 2;
    assert_int_equal(parse(b, n), MOP_E_UNSUPPORTED);
    reseal(b, n);
    assert_int_equal(parse(b, n), MOP_E_UNSUPPORTED);
    b[4] = 0;
    assert_int_equal(parse(b, n), MOP_E_UNSUPPORTED);
    b[4] = 1;
    b[0] = 'X'; /* bad magic */
    assert_int_equal(parse(b, n), MOP_E_FORMAT);
    free(b);
    mop_update_free(u);
}

/* Corruptions that a valid checksum does not excuse. */
static void test_bad_content_with_valid_checksum(void **state)
{
    (void)state;
    mop_update *u = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    uint8_t *c = malloc(n);
    const uint32_t nan_bits = 0x7fc00000u, inf_bits = 0xff800000u;

    memcpy(c, b, n); /* experts[3] = NaN */
    for (int i = 0; i < 4; i++)
        c[SAMPLE_PAYLOAD + 4 * 3 + i] = (uint8_t)(nan_bits >> (8 * i));
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "experts"));

    memcpy(c, b, n);
    for (int i = 0; i < 4; i++)
        c[SAMPLE_PAYLOAD + 4 * 8 + i] = (uint8_t)(inf_bits >> (8 * i));
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "gate.b2"));

    memcpy(c, b, n); /* n_samples = −1 */
    double neg = -1.0;
    uint64_t nb;
    memcpy(&nb, &neg, 8);
    for (int i = 0; i < 8; i++)
        c[32 + i] = (uint8_t)(nb >> (8 * i));
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);

    memcpy(c, b, n); /* kind 2 */
    c[8] = 2;
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);

    memcpy(c, b, n); /* reserved header field not 0 */
    c[44] = 1;
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);

    memcpy(c, b, n); /* a zero dimension */
    size_t t0 = 48 + 22 + 12;
    memset(c + t0 + 15, 0, 8);
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);

    memcpy(c, b, n); /* invalid UTF-8 in a name */
    c[t0 + 4] = 0xff;
    reseal(c, n);
    assert_int_equal(parse(c, n), MOP_E_FORMAT);

    free(c);
    free(b);
    mop_update_free(u);

    /* duplicate tensor names with a valid checksum */
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 0, 1.0, &u), MOP_OK);
    const float x[1] = {1};
    const int64_t d[1] = {1};
    assert_int_equal(mop_update_add_tensor(u, "aa", x, 1, d), MOP_OK);
    assert_int_equal(mop_update_add_tensor(u, "ab", x, 1, d), MOP_OK);
    b = blob_of(u, &n);
    /* second table entry's name: 48 + (4+2+4+8) + 4 + 1 */
    assert_int_equal(b[48 + 18 + 5], 'b');
    b[48 + 18 + 5] = 'a';
    reseal(b, n);
    assert_int_equal(parse(b, n), MOP_E_FORMAT);
    free(b);
    mop_update_free(u);
}

/* The largest blob the format allows (FED_MAX_TENSORS one-float tensors)
 * builds and parses: name lookups are hashed, not a scan per tensor (issue
 * 14, F3: this took 29 s when both add and parse were quadratic). Duplicate
 * names are still caught among that many, and one tensor more is refused. */
static void test_max_tensor_count_parses(void **state)
{
    (void)state;
    enum { N = 65536 };
    mop_update *u = NULL;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 0, 1.0, &u), MOP_OK);
    const int64_t d[1] = {1};
    char name[32];
    for (int i = 0; i < N; i++) {
        const float v = (float)i;
        snprintf(name, sizeof name, "t.%d", i);
        assert_int_equal(mop_update_add_tensor(u, name, &v, 1, d), MOP_OK);
    }
    const float one = 1.0f;
    assert_int_equal(mop_update_add_tensor(u, "t.40000", &one, 1, d), MOP_E_INVALID_ARG);
    assert_non_null(strstr(mop_last_error(), "duplicate"));
    assert_int_equal(mop_update_add_tensor(u, "t.extra", &one, 1, d), MOP_E_INVALID_ARG);
    size_t n = 0;
    uint8_t *b = blob_of(u, &n);
    mop_update_free(u);

    u = NULL;
    assert_int_equal(mop_update_parse(b, n, &u), MOP_OK);
    assert_int_equal(mop_update_tensor_count(u), N);
    const int probe[] = {0, 1, 12345, N / 2, N - 1};
    for (size_t k = 0; k < sizeof probe / sizeof probe[0]; k++) {
        mop_update_tensor_info ti = {.struct_size = sizeof ti};
        snprintf(name, sizeof name, "t.%d", probe[k]);
        assert_int_equal(mop_update_get_tensor(u, -1, name, &ti), MOP_OK);
        assert_string_equal(ti.name, name);
        assert_true(ti.data[0] == (float)probe[k]);
        assert_int_equal(mop_update_get_tensor(u, probe[k], NULL, &ti), MOP_OK);
        assert_string_equal(ti.name, name);
    }
    mop_update_tensor_info ti = {.struct_size = sizeof ti};
    assert_int_equal(mop_update_get_tensor(u, -1, "t.65536", &ti), MOP_E_RANGE);
    mop_update_free(u);

    /* rename the last tensor "t.65535" to "t.10000" (same length, so the
     * layout holds) and reseal: a duplicate found among 65,536 names */
    const char *last = "t.65535";
    uint8_t *hit = NULL;
    for (size_t i = n - 32 - 4 * N; i-- > 48;)
        if (memcmp(b + i, last, 7) == 0) {
            hit = b + i;
            break;
        }
    assert_non_null(hit);
    memcpy(hit, "t.10000", 7);
    reseal(b, n);
    assert_int_equal(parse(b, n), MOP_E_FORMAT);
    assert_non_null(strstr(mop_last_error(), "duplicate tensor name t.10000"));
    free(b);
}

static void test_parse_argument_checks(void **state)
{
    (void)state;
    mop_update *u = NULL;
    uint8_t x[4] = {0};
    assert_int_equal(mop_update_parse(NULL, 4, &u), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_parse(x, 4, NULL), MOP_E_INVALID_ARG);
    assert_int_equal(mop_update_parse(NULL, 0, &u), MOP_E_FORMAT);
    /* a huge announced tensor count in a small blob fails before allocating */
    mop_update *s = sample_update();
    size_t n = 0;
    uint8_t *b = blob_of(s, &n);
    b[40] = 0xff, b[41] = 0xff, b[42] = 0x00;
    assert_int_equal(parse(b, n), MOP_E_FORMAT);
    free(b);
    mop_update_free(s);
}

/* ---- mixtures ------------------------------------------------------------ */

enum { TD = 8, TV = 12 };

static mop_model *tiny_model(void)
{
    mop_model *m = NULL;
    assert_int_equal(mop_model_alloc(&m), MOP_OK);
    m->hp = (mop_hparams){.n_layer = 2, .n_embd = TD, .n_ff = 16, .n_head = 2, .n_head_kv = 1,
                          .head_dim = 4, .n_vocab = TV, .n_ctx_train = 32, .n_rot = 4,
                          .rope_theta = 10000.0f, .norm_eps = 1e-5f};
    strcpy(m->arch, "llama");
    float *emb = mop_alloc((size_t)TV * TD * sizeof(float));
    assert_non_null(emb);
    assert_int_equal(mop_model_add_buffer(m, emb), MOP_OK);
    for (int i = 0; i < TV * TD; i++)
        emb[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    m->tok_embd = emb;
    m->layers = mop_calloc(2, sizeof(mop_layer));
    assert_non_null(m->layers);
    return m;
}

static mop_mixture *tiny_mixture(mop_model *model, uint64_t seed)
{
    mop_mixture_params p;
    mop_mixture_params_init(&p);
    p.n_experts = 3;
    p.prompt_len = 2;
    p.gate_layer = 0;
    p.inject_layer = 1;
    p.gate_hidden = 4;
    p.init = MOP_INIT_NORMAL;
    p.init_std = 0.5f;
    p.seed = seed;
    mop_mixture *mx = NULL;
    assert_int_equal(mop_mixture_create(model, &p, &mx), MOP_OK);
    float *par;
    size_t n;
    assert_int_equal(mop_mixture_data(mx, &par, NULL, &n), MOP_OK);
    for (size_t i = 0; i < n; i++) /* deterministic, distinct per seed */
        par[i] = (float)(((i + 1) * (seed * 7 + 3)) % 97) / 97.0f - 0.5f;
    return mx;
}

static void test_from_mixture_and_apply(void **state)
{
    (void)state;
    mop_model *model = tiny_model();
    mop_mixture *a = tiny_mixture(model, 1), *b = tiny_mixture(model, 2);
    float *pa, *pb;
    size_t n;
    assert_int_equal(mop_mixture_data(a, &pa, NULL, &n), MOP_OK);
    assert_int_equal(mop_mixture_data(b, &pb, NULL, NULL), MOP_OK);
    float *orig = malloc(n * sizeof *orig);
    memcpy(orig, pa, n * sizeof *orig);

    /* FULL: every mixture tensor, same values and shapes, plus gate.usage */
    const float usage[3] = {0.5f, 0.3f, 0.2f};
    mop_update *full = NULL;
    assert_int_equal(mop_update_from_mixture(b, NULL, 4, 9, 10.0, usage, &full), MOP_OK);
    int32_t nt = mop_mixture_tensor_count(b);
    assert_int_equal(mop_update_tensor_count(full), nt + 1);
    size_t covered = 0;
    for (int32_t i = 0; i < nt; i++) {
        mop_mixture_tensor_info mi = {.struct_size = sizeof mi};
        assert_int_equal(mop_mixture_tensor_get_info(b, i, &mi), MOP_OK);
        mop_update_tensor_info ti = {.struct_size = sizeof ti};
        assert_int_equal(mop_update_get_tensor(full, -1, mi.name, &ti), MOP_OK);
        assert_int_equal(ti.size, mi.size);
        assert_int_equal(ti.n_dims, mi.n_dims);
        assert_memory_equal(ti.data, pb + mi.offset, mi.size * sizeof(float));
        covered += mi.size;
    }
    assert_int_equal(covered, n);
    mop_update_tensor_info ui = {.struct_size = sizeof ui};
    assert_int_equal(mop_update_get_tensor(full, -1, "gate.usage", &ui), MOP_OK);
    assert_int_equal(ui.size, 3);
    assert_memory_equal(ui.data, usage, sizeof usage);
    /* with always-on shared groups, one usage entry per row of "experts":
     * the K given, then 1 for each shared group (read no further than K) */
    {
        mop_mixture_params sp = {.struct_size = sizeof sp};
        assert_int_equal(mop_mixture_get_params(b, &sp), MOP_OK);
        sp.n_shared = 2;
        mop_mixture *sh = NULL;
        assert_int_equal(mop_mixture_create(model, &sp, &sh), MOP_OK);
        float *k_only = malloc(3 * sizeof *k_only); /* ASan: a read past K is caught */
        memcpy(k_only, usage, sizeof usage);
        mop_update *us = NULL;
        assert_int_equal(mop_update_from_mixture(sh, NULL, 4, 9, 10.0, k_only, &us), MOP_OK);
        mop_update_tensor_info si = {.struct_size = sizeof si};
        assert_int_equal(mop_update_get_tensor(us, -1, "gate.usage", &si), MOP_OK);
        assert_int_equal(si.size, 5);
        const float want[5] = {0.5f, 0.3f, 0.2f, 1.0f, 1.0f};
        assert_memory_equal(si.data, want, sizeof want);
        /* and MoP-aware aggregation accepts it */
        mop_aggregator_params agp;
        mop_aggregator_params_init(&agp);
        agp.strategy = MOP_AGG_MOP_AWARE;
        mop_aggregator *ag = NULL;
        assert_int_equal(mop_aggregator_create(&agp, &ag), MOP_OK);
        mop_update *dsh = NULL;
        assert_int_equal(mop_update_from_mixture(sh, sh, 4, 9, 10.0, k_only, &dsh), MOP_OK);
        assert_int_equal(mop_aggregator_add(ag, dsh), MOP_OK);
        mop_aggregator_free(ag);
        mop_update_free(dsh);
        mop_update_free(us);
        free(k_only);
        mop_mixture_free(sh);
    }

    /* DELTA b − a, applied to a with scale 1, gives b (float rounding: 1 ulp of 1) */
    mop_update *delta = NULL;
    assert_int_equal(mop_update_from_mixture(b, a, 4, 9, 10.0, NULL, &delta), MOP_OK);
    mop_update_header h = {.struct_size = sizeof h};
    assert_int_equal(mop_update_get_header(delta, &h), MOP_OK);
    assert_int_equal(h.kind, MOP_UPDATE_DELTA);
    assert_int_equal(mop_update_apply(delta, a, 1.0f), MOP_OK);
    for (size_t i = 0; i < n; i++)
        assert_float_equal(pa[i], pb[i], 2e-7);
    /* scale 0.5 from the original: halfway */
    memcpy(pa, orig, n * sizeof *orig);
    assert_int_equal(mop_update_apply(delta, a, 0.5f), MOP_OK);
    for (size_t i = 0; i < n; i++)
        assert_float_equal(pa[i], 0.5f * (orig[i] + pb[i]), 2e-7);
    /* FULL sets the values exactly (gate.usage ignored) */
    assert_int_equal(mop_update_apply(full, a, 123.0f), MOP_OK);
    assert_memory_equal(pa, pb, n * sizeof(float));

    /* a tensor the mixture lacks, or of another shape: MOP_E_SHAPE, nothing changed */
    memcpy(pa, orig, n * sizeof *orig);
    mop_update *bad = NULL;
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 0, 1.0, &bad), MOP_OK);
    const float one[4] = {1, 1, 1, 1};
    const int64_t d4[1] = {4}, d3[1] = {3};
    assert_int_equal(mop_update_add_tensor(bad, "gate.b2", one, 1, d3), MOP_OK); /* fine: K = 3 */
    assert_int_equal(mop_update_add_tensor(bad, "gate.b1", one, 1, d3), MOP_OK); /* h = 4 */
    assert_int_equal(mop_update_apply(bad, a, 1.0f), MOP_E_SHAPE);
    assert_memory_equal(pa, orig, n * sizeof(float));
    mop_update_free(bad);
    assert_int_equal(mop_update_create(MOP_UPDATE_DELTA, 0, 0, 1.0, &bad), MOP_OK);
    assert_int_equal(mop_update_add_tensor(bad, "lm_head", one, 1, d4), MOP_OK);
    assert_int_equal(mop_update_apply(bad, a, 1.0f), MOP_E_SHAPE);
    assert_int_equal(mop_update_apply(delta, a, NAN), MOP_E_INVALID_ARG);
    mop_update_free(bad);

    /* the blob of a mixture update round-trips and applies the same */
    size_t bn = 0;
    uint8_t *blob = blob_of(delta, &bn);
    mop_update *back = NULL;
    assert_int_equal(mop_update_parse(blob, bn, &back), MOP_OK);
    assert_int_equal(mop_update_apply(back, a, 1.0f), MOP_OK);
    for (size_t i = 0; i < n; i++)
        assert_float_equal(pa[i], pb[i], 2e-7);
    const float neg[3] = {0.5f, -0.1f, 0.6f};
    mop_update *x = NULL;
    assert_int_equal(mop_update_from_mixture(b, NULL, 0, 0, 1.0, neg, &x), MOP_E_INVALID_ARG);
    assert_null(x);

    free(blob);
    free(orig);
    mop_update_free(back);
    mop_update_free(full);
    mop_update_free(delta);
    mop_mixture_free(a);
    mop_mixture_free(b);
    mop_model_free(model);
}

/* ---- allocation failures ------------------------------------------------- */

static long alloc_budget; /* allocations left before failing; < 0 = unlimited */

static void *failing_alloc(size_t size, void *user)
{
    (void)user;
    if (alloc_budget == 0)
        return NULL;
    if (alloc_budget > 0)
        alloc_budget--;
    void *p = NULL;
    return posix_memalign(&p, 64, size ? (size + 63) & ~(size_t)63 : 64) == 0 ? p : NULL;
}

static void failing_free(void *p, void *user)
{
    (void)user;
    free(p);
}

/* One federated round from blobs: parse 3 updates, aggregate, serialize. */
static mop_status blob_round(const uint8_t *const *blobs, const size_t *ns, int32_t strategy)
{
    mop_aggregator_params p;
    mop_aggregator_params_init(&p);
    p.strategy = strategy;
    p.krum_f = 0;
    mop_aggregator *a = NULL;
    mop_update *u = NULL, *g = NULL, *next = NULL;
    mop_status s = mop_aggregator_create(&p, &a);
    for (int i = 0; i < 3 && s == MOP_OK; i++) {
        s = mop_update_parse(blobs[i], ns[i], &u);
        if (s == MOP_OK)
            s = mop_aggregator_add(a, u);
        mop_update_free(u);
        u = NULL;
    }
    if (s == MOP_OK)
        s = mop_update_parse(blobs[3], ns[3], &g);
    if (s == MOP_OK)
        s = mop_aggregator_finish(a, g, &next);
    uint8_t out[4096];
    size_t n = 0;
    if (s == MOP_OK)
        s = mop_update_serialize(next, out, sizeof out, &n);
    mop_update_free(g);
    mop_update_free(next);
    mop_aggregator_free(a);
    return s;
}

static void test_every_allocation_failure(void **state)
{
    (void)state;
    /* three client deltas and a FULL global with the same two tensors */
    uint8_t *blobs[4];
    size_t ns[4];
    for (int i = 0; i < 4; i++) {
        mop_update *u = NULL;
        assert_int_equal(mop_update_create(i == 3 ? MOP_UPDATE_FULL : MOP_UPDATE_DELTA, 1, (uint64_t)i,
                                           1.0 + i, &u), MOP_OK);
        const float a[6] = {1.0f * i, 2, 3, -1, 0.5f, 4}, b[3] = {0.1f, 0.2f * i, 0.3f};
        const int64_t da[2] = {2, 3}, db[1] = {3};
        assert_int_equal(mop_update_add_tensor(u, "experts", a, 2, da), MOP_OK);
        assert_int_equal(mop_update_add_tensor(u, "gate.b2", b, 1, db), MOP_OK);
        assert_int_equal(mop_update_set_meta(u, "k", "v"), MOP_OK);
        blobs[i] = blob_of(u, &ns[i]);
        mop_update_free(u);
    }
    assert_int_equal(mop_alloc_live(), 0);
    const int32_t strategies[4] = {MOP_AGG_FEDADAM, MOP_AGG_MEDIAN, MOP_AGG_TIES, MOP_AGG_KRUM};
    const mop_allocator fa = {failing_alloc, failing_free, NULL};
    for (int k = 0; k < 4; k++) {
        int ok = 0;
        for (long budget = 0; budget < 400 && !ok; budget++) {
            alloc_budget = budget;
            assert_int_equal(mop_set_allocator(&fa), MOP_OK);
            mop_status s = blob_round((const uint8_t *const *)blobs, ns, strategies[k]);
            if (s != MOP_OK && s != MOP_E_NOMEM)
                fail_msg("strategy %d, budget %ld: %s (%s)", strategies[k], budget, mop_status_name(s),
                         mop_last_error());
            ok = s == MOP_OK;
            if (mop_alloc_live() != 0)
                fail_msg("strategy %d, budget %ld: %ld allocations leaked", strategies[k], budget,
                         mop_alloc_live());
            assert_int_equal(mop_set_allocator(NULL), MOP_OK);
        }
        assert_true(ok); /* and the round succeeds once there is enough memory */
    }
    for (int i = 0; i < 4; i++)
        free(blobs[i]);
}

static int setup(void **state)
{
    *state = (void *)(intptr_t)mop_alloc_live();
    return 0;
}

static int teardown(void **state)
{
    long before = (long)(intptr_t)*state;
    if (mop_alloc_live() != before)
        fail_msg("leak: %ld live allocations before, %ld after", before, mop_alloc_live());
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_object_accessors),
        T(test_object_rejects_bad_input),
        T(test_sha256_is_libsodium_fips_vector),
        T(test_layout_matches_format_doc),
        T(test_round_trip_is_bit_exact),
        T(test_serialize_checks_capacity),
        T(test_every_truncation_is_format_error),
        T(test_trailing_bytes_rejected),
        T(test_flipped_bytes_are_checksum_errors),
        T(test_unknown_version_unsupported),
        T(test_bad_content_with_valid_checksum),
        T(test_parse_argument_checks),
        T(test_max_tensor_count_parses),
        T(test_every_allocation_failure),
        T(test_from_mixture_and_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
