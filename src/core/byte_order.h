/* Little-endian loads and stores of fixed-width integers, for every file
 * format libmop reads or writes (GGUF, safetensors, mixtures, packed sparse
 * weights, update blobs, secure-aggregation messages). Byte by byte, so
 * they are right on any host and need no alignment; compilers turn each into
 * one load or store on little-endian machines. */
#ifndef MOP_BYTE_ORDER_H
#define MOP_BYTE_ORDER_H

#include <stdint.h>
#include <string.h>

static inline uint16_t mop_get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t mop_get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t mop_get_le64(const uint8_t *p)
{
    return (uint64_t)mop_get_le32(p) | (uint64_t)mop_get_le32(p + 4) << 32;
}

/* An IEEE binary32 stored little-endian. */
static inline float mop_get_le_f32(const uint8_t *p)
{
    uint32_t u = mop_get_le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void mop_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void mop_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

#endif
