/* Storage types and their conversion to F32 (GGML block layouts).
 *
 *   F32   4 bytes per element
 *   F16   IEEE 754 binary16, 2 bytes per element
 *   BF16  the top 16 bits of an F32, 2 bytes per element
 *   Q8_0  blocks of 32: fp16 d, int8 q[32];              x[j] = d * q[j]
 *   Q4_0  blocks of 32: fp16 d, uint8 qs[16];            x[j] = d * (nib[j] - 8)
 *   Q4_1  blocks of 32: fp16 d, fp16 m, uint8 qs[16];    x[j] = d * nib[j] + m
 *   I8    1 signed byte per element (libmop's packed sparse weights are I8 blobs)
 *
 * In the 4-bit types byte qs[j] holds element j in its low nibble and element
 * j + 16 in its high nibble. Everything is little-endian and blocks are not
 * aligned, so values are assembled from bytes. */
#include <string.h>

#include "byte_order.h"
#include "tensor_source.h"

#define QK 32

typedef struct ftype_desc {
    int32_t id;
    const char *name;
    int64_t block;      /* elements per block */
    uint64_t block_nb;  /* bytes per block */
} ftype_desc;

static const ftype_desc ftypes[] = {
    {MOP_FT_F32, "F32", 1, 4},
    {MOP_FT_F16, "F16", 1, 2},
    {MOP_FT_BF16, "BF16", 1, 2},
    {MOP_FT_Q8_0, "Q8_0", QK, 2 + QK},
    {MOP_FT_Q4_0, "Q4_0", QK, 2 + QK / 2},
    {MOP_FT_Q4_1, "Q4_1", QK, 4 + QK / 2},
    {MOP_FT_I8, "I8", 1, 1},
};

static const ftype_desc *find_ftype(int32_t ftype)
{
    for (size_t i = 0; i < sizeof ftypes / sizeof ftypes[0]; i++)
        if (ftypes[i].id == ftype)
            return &ftypes[i];
    return NULL;
}

const char *mop_ftype_name(int32_t ftype)
{
    const ftype_desc *d = find_ftype(ftype);
    return d ? d->name : NULL;
}

int64_t mop_ftype_block(int32_t ftype)
{
    const ftype_desc *d = find_ftype(ftype);
    return d ? d->block : 0;
}

uint64_t mop_ftype_nbytes(int32_t ftype, int64_t n)
{
    const ftype_desc *d = find_ftype(ftype);
    if (!d || n < 0 || n % d->block != 0)
        return 0;
    uint64_t out;
    if (__builtin_mul_overflow((uint64_t)(n / d->block), d->block_nb, &out))
        return 0;
    return out;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* binary16 -> binary32, exact for every input (subnormals, inf, NaN payloads). */
static inline float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f)                      /* inf / NaN */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp != 0)                         /* normal: rebias 15 -> 127 */
        return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0)                        /* signed zero */
        return f32_from_bits(sign);
    /* subnormal m * 2^-24: shift the leading one into the implicit bit */
    uint32_t e = 113;
    while (!(mant & 0x400u)) {
        mant <<= 1;
        e--;
    }
    return f32_from_bits(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

static void dequant_f32(float *dst, const uint8_t *src, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void dequant_f16(float *dst, const uint8_t *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = half_to_float(mop_get_le16(src + 2 * i));
}

static void dequant_bf16(float *dst, const uint8_t *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = f32_from_bits((uint32_t)mop_get_le16(src + 2 * i) << 16);
}

// dst (n) <- blocks of { d, q[32] }
static void dequant_i8(float *dst, const uint8_t *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = (float)(int8_t)src[i];
}

static void dequant_q8_0(float *dst, const uint8_t *src, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, src += 2 + QK, dst += QK) {
        float d = half_to_float(mop_get_le16(src));
        const int8_t *q = (const int8_t *)(src + 2);
        for (int j = 0; j < QK; j++)
            dst[j] = d * (float)q[j];
    }
}

// dst (n) <- blocks of { d, qs[16] }
static void dequant_q4_0(float *dst, const uint8_t *src, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, src += 2 + QK / 2, dst += QK) {
        float d = half_to_float(mop_get_le16(src));
        const uint8_t *qs = src + 2;
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = d * (float)((int)(qs[j] & 0x0f) - 8);
            dst[j + QK / 2] = d * (float)((int)(qs[j] >> 4) - 8);
        }
    }
}

// dst (n) <- blocks of { d, m, qs[16] }
static void dequant_q4_1(float *dst, const uint8_t *src, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, src += 4 + QK / 2, dst += QK) {
        float d = half_to_float(mop_get_le16(src));
        float m = half_to_float(mop_get_le16(src + 2));
        const uint8_t *qs = src + 4;
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = d * (float)(qs[j] & 0x0f) + m;
            dst[j + QK / 2] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

void mop_dequantize(float *dst, const void *src, int32_t ftype, int64_t n)
{
    const uint8_t *s = src;
    switch (ftype) {
    case MOP_FT_F32: dequant_f32(dst, s, n); break;
    case MOP_FT_F16: dequant_f16(dst, s, n); break;
    case MOP_FT_BF16: dequant_bf16(dst, s, n); break;
    case MOP_FT_Q8_0: dequant_q8_0(dst, s, n); break;
    case MOP_FT_Q4_0: dequant_q4_0(dst, s, n); break;
    case MOP_FT_Q4_1: dequant_q4_1(dst, s, n); break;
    case MOP_FT_I8: dequant_i8(dst, s, n); break;
    default: break; /* callers validate ftype first */
    }
}
