/* Storage types and dequantization: sizes, every binary16 value against an
 * ldexp reference, BF16, and the Q8_0/Q4_0/Q4_1 block layouts against
 * (a) blocks built by hand with values from the formulas and (b) the gguf
 * Python package's quantize/dequantize (vectors embedded below). All
 * comparisons are bit-exact: each formula has exactly one float rounding. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf_builder.h"
#include "internal.h"
#include "tensor_source.h"

/* Generated with gguf 0.x (gguf.quants.quantize / dequantize) from 64 values
 * drawn from N(0, 0.7^2) with numpy seed 20240601 (x[5] = 0, x[40] = 3.5). */
/* Q8_0: 68 bytes */
static const uint8_t ref_q8_0_bytes[68] = {
    0x5c, 0x21, 0x2b, 0x1f, 0xd5, 0xb1, 0xf6, 0x00, 0x59, 0x3d, 0x17, 0x6b,
    0x52, 0xf1, 0xb9, 0xe8, 0xe4, 0x2e, 0x81, 0xf3, 0x70, 0xc2, 0xcd, 0xfa,
    0xa1, 0xf7, 0xff, 0x00, 0xbe, 0xe8, 0x2c, 0xd0, 0x25, 0x2c, 0x0e, 0x27,
    0xdc, 0xf0, 0x11, 0x0d, 0x05, 0xf7, 0x03, 0x30, 0x7f, 0x0f, 0xf5, 0xfb,
    0x10, 0xe8, 0xfa, 0xf0, 0xea, 0x04, 0x1f, 0x06, 0xf6, 0xdb, 0x15, 0x05,
    0xf0, 0x16, 0x28, 0xd7, 0x0f, 0x15, 0x0f, 0x29,
};
static const uint32_t ref_q8_0_out[64] = {
    0x3ee67400u, 0x3ea62400u, 0xbee67400u, 0xbf53b200u, 0xbdd66000u, 0x00000000u,
    0x3f6e7e00u, 0x3f237600u, 0x3e768800u, 0x3f8f5d00u, 0x3f5bbc00u, 0xbe20c800u,
    0xbf3e4200u, 0xbe80a000u, 0xbe961000u, 0x3ef68800u, 0xbfaa2900u, 0xbe0b5800u,
    0x3f961000u, 0xbf262400u, 0xbf08aa00u, 0xbd80a000u, 0xbf7e9200u, 0xbdc0f000u,
    0xbc2b8000u, 0x00000000u, 0xbf30dc00u, 0xbe80a000u, 0x3eebd000u, 0xbf00a000u,
    0x3ec64c00u, 0x3eebd000u, 0xbf7df800u, 0xbee1c000u, 0x3eefdc00u, 0x3eb76c00u,
    0x3e0d1800u, 0xbe7df800u, 0x3da95000u, 0x3fa95000u, 0x405ffc80u, 0x3ed3a400u,
    0xbe9b3400u, 0xbe0d1800u, 0x3ee1c000u, 0xbf295000u, 0xbe295000u, 0xbee1c000u,
    0xbf1b3400u, 0x3de1c000u, 0x3f5ab200u, 0x3e295000u, 0xbe8d1800u, 0xbf828300u,
    0x3f142600u, 0x3e0d1800u, 0xbee1c000u, 0x3f1b3400u, 0x3f8d1800u, 0xbf909f00u,
    0x3ed3a400u, 0x3f142600u, 0x3ed3a400u, 0x3f909f00u,
};
/* Q4_0: 36 bytes */
static const uint8_t ref_q4_0_bytes[36] = {
    0x51, 0x31, 0x0b, 0x7a, 0xf5, 0x43, 0x57, 0x88, 0x2e, 0x7c, 0x89, 0x8f,
    0x4d, 0x67, 0xb4, 0x56, 0xa6, 0xbb, 0x00, 0xb7, 0x9a, 0x89, 0x67, 0x87,
    0x98, 0xa9, 0x78, 0x85, 0x90, 0x77, 0x59, 0xb8, 0x77, 0x79, 0x78, 0x59,
};
static const uint32_t ref_q4_0_out[64] = {
    0x3eff3000u, 0x3eaa2000u, 0xbeff3000u, 0xbf54a800u, 0xbe2a2000u, 0x00000000u,
    0x3f7f3000u, 0x3f2a2000u, 0x3e2a2000u, 0x3f94dc00u, 0x3f54a800u, 0xbe2a2000u,
    0xbf2a2000u, 0xbeaa2000u, 0xbeaa2000u, 0x3eff3000u, 0xbfaa2000u, 0xbe2a2000u,
    0x3f94dc00u, 0xbf2a2000u, 0xbeff3000u, 0x00000000u, 0xbf7f3000u, 0xbe2a2000u,
    0x00000000u, 0x00000000u, 0xbf2a2000u, 0xbeaa2000u, 0x3eff3000u, 0xbeff3000u,
    0x3eaa2000u, 0x3eff3000u, 0xbf600000u, 0xbee00000u, 0x3ee00000u, 0x3ee00000u,
    0x80000000u, 0xbee00000u, 0x80000000u, 0x3fa80000u, 0x40600000u, 0x3ee00000u,
    0xbee00000u, 0x80000000u, 0x3ee00000u, 0xbee00000u, 0x80000000u, 0xbee00000u,
    0xbee00000u, 0x80000000u, 0x3f600000u, 0x80000000u, 0xbee00000u, 0xbf600000u,
    0x3ee00000u, 0x80000000u, 0xbee00000u, 0x3ee00000u, 0x3fa80000u, 0xbfa80000u,
    0x3ee00000u, 0x3ee00000u, 0x3ee00000u, 0x3fa80000u,
};
/* Q4_1: 40 bytes */
static const uint8_t ref_q4_1_bytes[40] = {
    0x55, 0x31, 0x51, 0xbd, 0x0b, 0x7a, 0xf5, 0x43, 0x57, 0x88, 0x2e, 0x7c,
    0x89, 0x8f, 0x4d, 0x67, 0xb4, 0x56, 0xa6, 0xbb, 0xf4, 0x34, 0x92, 0xbc,
    0x20, 0x42, 0x65, 0x45, 0x34, 0x03, 0x64, 0x48, 0x2f, 0x65, 0x73, 0x03,
    0x55, 0x62, 0x53, 0x72,
};
static const uint32_t ref_q4_1_out[64] = {
    0x3f00f800u, 0x3eaca000u, 0xbefdf000u, 0xbf544800u, 0xbe26a000u, 0x3b800000u,
    0x3f807800u, 0x3f2ba000u, 0x3e2ea000u, 0x3f95cc00u, 0x3f564800u, 0xbe26a000u,
    0xbf29a000u, 0xbea8a000u, 0xbea8a000u, 0x3f00f800u, 0xbfaa2000u, 0xbe26a000u,
    0x3f95cc00u, 0xbf29a000u, 0xbefdf000u, 0x3b800000u, 0xbf7ef000u, 0xbe26a000u,
    0x3b800000u, 0x3b800000u, 0xbf29a000u, 0xbea8a000u, 0x3f00f800u, 0xbefdf000u,
    0x3eaca000u, 0x3f00f800u, 0xbf924000u, 0xbf060000u, 0x3ecf8000u, 0x3ecf8000u,
    0x3dc40000u, 0xbe5b0000u, 0x3dc40000u, 0x3faac000u, 0x40601000u, 0x3ecf8000u,
    0xbe5b0000u, 0xbe5b0000u, 0x3ecf8000u, 0xbf060000u, 0xbe5b0000u, 0xbf060000u,
    0xbf060000u, 0x3dc40000u, 0x3f370000u, 0x3dc40000u, 0xbe5b0000u, 0xbf924000u,
    0x3f370000u, 0x3dc40000u, 0xbf060000u, 0x3f370000u, 0x3f832000u, 0xbf924000u,
    0x3ecf8000u, 0x3f370000u, 0x3ecf8000u, 0x3f832000u,
};

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_type_table(void **state)
{
    (void)state;
    assert_string_equal(mop_ftype_name(MOP_FT_F32), "F32");
    assert_string_equal(mop_ftype_name(MOP_FT_F16), "F16");
    assert_string_equal(mop_ftype_name(MOP_FT_BF16), "BF16");
    assert_string_equal(mop_ftype_name(MOP_FT_Q8_0), "Q8_0");
    assert_string_equal(mop_ftype_name(MOP_FT_Q4_0), "Q4_0");
    assert_string_equal(mop_ftype_name(MOP_FT_Q4_1), "Q4_1");
    assert_null(mop_ftype_name(14)); /* Q6_K */
    assert_null(mop_ftype_name(-1));
    assert_int_equal(mop_ftype_block(MOP_FT_F16), 1);
    assert_int_equal(mop_ftype_block(MOP_FT_Q4_1), 32);
    assert_int_equal(mop_ftype_block(7), 0);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_F32, 3), 12);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_BF16, 3), 6);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_Q8_0, 64), 68);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_Q4_0, 64), 36);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_Q4_1, 64), 40);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_Q4_1, 33), 0);   /* not whole blocks */
    assert_int_equal(mop_ftype_nbytes(MOP_FT_F32, -4), 0);
    assert_int_equal(mop_ftype_nbytes(MOP_FT_F32, INT64_MAX), 0); /* 4n overflows */
    assert_int_equal(mop_ftype_nbytes(MOP_FT_F32, INT64_MAX / 4), (uint64_t)(INT64_MAX / 4) * 4);
    assert_int_equal(mop_ftype_nbytes(99, 32), 0);
}

/* value of binary16 h from the definition */
static double half_ref(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_f16_every_value(void **state)
{
    (void)state;
    uint8_t *src = malloc(2 * 65536);
    float *dst = malloc(4 * 65536);
    for (uint32_t h = 0; h < 65536; h++) {
        src[2 * h] = (uint8_t)h;
        src[2 * h + 1] = (uint8_t)(h >> 8);
    }
    mop_dequantize(dst, src, MOP_FT_F16, 65536);
    for (uint32_t h = 0; h < 65536; h++) {
        int e = (h >> 10) & 31;
        if (e == 31) {
            /* inf and NaN keep the sign and the payload in the top mantissa bits */
            uint32_t want = ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13);
            assert_int_equal(bits_of(dst[h]), want);
        } else {
            double want = half_ref((uint16_t)h);
            if ((double)dst[h] != want || !signbit(dst[h]) != !signbit(want)) {
                print_error("half 0x%04x: got %a, want %a\n", h, (double)dst[h], want);
                fail();
            }
        }
    }
    /* a few landmarks */
    assert_true(dst[0x3c00] == 1.0f);
    assert_true(dst[0x7bff] == 65504.0f);
    assert_true(dst[0x0001] == 0x1p-24f);
    assert_true(dst[0x03ff] == 1023 * 0x1p-24f);
    assert_true(dst[0x0400] == 0x1p-14f);
    assert_true(isinf(dst[0xfc00]) && dst[0xfc00] < 0);
    assert_true(isnan(dst[0x7e00]));
    assert_true(dst[0x8000] == 0.0f && signbit(dst[0x8000]));
    free(src);
    free(dst);
}

static void test_bf16(void **state)
{
    (void)state;
    const float in[] = {1.0f, -2.5f, 3.14159265f, 1e-40f, -INFINITY, 65504.0f, 1e38f};
    size_t n = sizeof in / sizeof in[0];
    uint8_t src[2 * 7];
    float out[7];
    for (size_t i = 0; i < n; i++) {
        uint32_t u = bits_of(in[i]);
        src[2 * i] = (uint8_t)(u >> 16);
        src[2 * i + 1] = (uint8_t)(u >> 24);
    }
    mop_dequantize(out, src, MOP_FT_BF16, (int64_t)n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(bits_of(out[i]), bits_of(in[i]) & 0xffff0000u);
    assert_true(out[0] == 1.0f && out[1] == -2.5f);
    assert_true(fabsf(out[2] - 3.140625f) == 0.0f); /* pi truncated to 8 mantissa bits */
}

static void test_f32_copy(void **state)
{
    (void)state;
    const float in[5] = {1.5f, -0.0f, NAN, 7e-45f, 3.0f};
    float out[5];
    mop_dequantize(out, in, MOP_FT_F32, 5);
    assert_memory_equal(out, in, sizeof in);
}

/* Blocks made by the test's builder with values from the formulas. */
static void check_built(uint32_t type, int64_t n_blocks)
{
    gb_tensor t;
    memset(&t, 0, sizeof t);
    t.type = type;
    uint32_t seed = 99 + type;
    gb_fill(&t, n_blocks, 32, &seed);
    assert_int_equal(t.nbytes, mop_ftype_nbytes((int32_t)type, 32 * n_blocks));
    float *out = malloc((size_t)(32 * n_blocks) * sizeof *out);
    mop_dequantize(out, t.data, (int32_t)type, 32 * n_blocks);
    for (int64_t i = 0; i < 32 * n_blocks; i++)
        if (bits_of(out[i]) != bits_of(t.expect[i])) {
            print_error("type %u element %lld: got %a, want %a\n", type, (long long)i,
                        (double)out[i], (double)t.expect[i]);
            fail();
        }
    free(out);
    free(t.data);
    free(t.expect);
}

static void test_blocks_by_formula(void **state)
{
    (void)state;
    check_built(MOP_FT_Q8_0, 50);
    check_built(MOP_FT_Q4_0, 50);
    check_built(MOP_FT_Q4_1, 50);
    check_built(MOP_FT_F16, 10);
    check_built(MOP_FT_BF16, 10);
}

/* One block written out by hand, to pin the nibble order. */
static void test_q4_nibble_order(void **state)
{
    (void)state;
    uint8_t blk[20] = {0x00, 0x3c, 0x00, 0xbc}; /* d = 1.0, m = -1.0 */
    for (int j = 0; j < 16; j++)
        blk[4 + j] = (uint8_t)(j | (15 - j) << 4); /* low = j, high = 15 - j */
    float out[32];
    mop_dequantize(out, blk, MOP_FT_Q4_1, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == (float)j - 1.0f);
        assert_true(out[16 + j] == (float)(15 - j) - 1.0f);
    }
    /* Q4_0: the same nibbles after a 2-byte d = 0.5 */
    uint8_t b0[18] = {0x00, 0x38};
    memcpy(b0 + 2, blk + 4, 16);
    mop_dequantize(out, b0, MOP_FT_Q4_0, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == 0.5f * (float)(j - 8));
        assert_true(out[16 + j] == 0.5f * (float)(7 - j));
    }
    /* Q8_0: d = -0.25, q = -128..127 pattern */
    uint8_t b8[34] = {0x00, 0xb4};
    for (int j = 0; j < 32; j++)
        b8[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    mop_dequantize(out, b8, MOP_FT_Q8_0, 32);
    for (int j = 0; j < 32; j++)
        assert_true(out[j] == -0.25f * (float)(j * 8 - 128));
}

static void check_ref(int32_t type, const uint8_t *bytes, size_t nbytes, const uint32_t *want)
{
    assert_int_equal(mop_ftype_nbytes(type, 64), nbytes);
    /* unaligned source, as blocks are inside a file */
    uint8_t *src = malloc(nbytes + 1);
    memcpy(src + 1, bytes, nbytes);
    float out[64];
    mop_dequantize(out, src + 1, type, 64);
    for (int i = 0; i < 64; i++)
        if (bits_of(out[i]) != want[i]) {
            print_error("%s element %d: got 0x%08x, gguf-py 0x%08x\n", mop_ftype_name(type), i,
                        bits_of(out[i]), want[i]);
            fail();
        }
    free(src);
}

static void test_against_gguf_python(void **state)
{
    (void)state;
    check_ref(MOP_FT_Q8_0, ref_q8_0_bytes, sizeof ref_q8_0_bytes, ref_q8_0_out);
    check_ref(MOP_FT_Q4_0, ref_q4_0_bytes, sizeof ref_q4_0_bytes, ref_q4_0_out);
    check_ref(MOP_FT_Q4_1, ref_q4_1_bytes, sizeof ref_q4_1_bytes, ref_q4_1_out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_f16_every_value),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f32_copy),
        cmocka_unit_test(test_blocks_by_formula),
        cmocka_unit_test(test_q4_nibble_order),
        cmocka_unit_test(test_against_gguf_python),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
