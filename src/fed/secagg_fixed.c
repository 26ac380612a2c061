/* Fixed-point ring Z_2^bits for secure aggregation, and the pairwise masks.
 *
 *   encode: e = round(clip(x, ±R)·s) mod 2^bits
 *   decode: x = signed(Σ e mod 2^bits) / s      (exact when s is a power of 2)
 *   mask:   m = ChaCha20(key, nonce 0) read as little-endian bits/8-byte words
 *
 * Every value lives in a uint64_t; for bits = 32 the upper half is kept 0. */
#include <math.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"
#include "privacy.h"

void secagg_encode(uint64_t *enc, const float *x, size_t n, float scale, float range,
                   int32_t bits)
{
    uint64_t mask = secagg_ring_mask(bits);
    for (size_t i = 0; i < n; i++) {
        float v = x[i] > range ? range : (x[i] < -range ? -range : x[i]);
        int64_t r = llround((double)v * (double)scale);
        enc[i] = (uint64_t)r & mask; /* two's complement mod 2^bits */
    }
}

void secagg_decode(float *sum, const uint64_t *acc, size_t n, float scale, int32_t bits)
{
    int e;
    int pow2 = frexpf(scale, &e) == 0.5f; /* scale = 2^(e−1): dividing is exact */
    float inv = 1.0f / scale;
    uint64_t mask = secagg_ring_mask(bits);
    for (size_t i = 0; i < n; i++) {
        uint64_t a = acc[i] & mask;
        int64_t s = bits == 32 ? (int64_t)(int32_t)(uint32_t)a : (int64_t)a;
        /* int64 → float is one correct rounding; × 2^−k is exact. */
        sum[i] = pow2 ? (float)s * inv : (float)((double)s / (double)scale);
    }
}

#define MASK_CHUNK 4096 /* keystream bytes per libsodium call: 64 ChaCha20 blocks */

void secagg_add_mask(uint64_t *acc, size_t n, const uint8_t key[32], int sign, int32_t bits)
{
    static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    uint8_t buf[MASK_CHUNK];
    size_t w = (size_t)bits / 8, per = MASK_CHUNK / w;
    uint64_t mask = secagg_ring_mask(bits);
    uint64_t block = 0;
    for (size_t base = 0; base < n; base += per) {
        size_t cnt = n - base < per ? n - base : per;
        size_t bytes = (cnt * w + 63) / 64 * 64;
        memset(buf, 0, bytes);
        crypto_stream_chacha20_xor_ic(buf, buf, bytes, nonce, block, key);
        block += MASK_CHUNK / 64;
        for (size_t i = 0; i < cnt; i++) {
            uint64_t m = 0;
            for (size_t b = w; b-- > 0;)
                m = (m << 8) | buf[i * w + b];
            acc[base + i] = (sign > 0 ? acc[base + i] + m : acc[base + i] - m) & mask;
        }
    }
    sodium_memzero(buf, sizeof buf);
}
