/* Internal view of the privacy part of the fed module: the RDP series and
 * the fixed-point ring used by secure aggregation. Nothing here is exported. */
#ifndef MOP_FED_PRIVACY_H
#define MOP_FED_PRIVACY_H

#include <stddef.h>
#include <stdint.h>

#include "libmop/mop_fed.h"

/* ---- rdp.c ---- */
#define RDP_DEFAULT_ORDERS 161

/* Fill orders (RDP_DEFAULT_ORDERS) with the default orders. */
void rdp_default_orders(double *orders);
/* log A_α of the sampled Gaussian, q in (0, 1), sigma > 0: the binomial sum
 * for integer alpha >= 2, the erfc series for any alpha > 1. */
double rdp_log_a_int(double q, double sigma, int64_t alpha);
double rdp_log_a_frac(double q, double sigma, double alpha);

/* ---- secagg_fixed.c: elements of Z_2^bits kept in uint64_t ---- */
static inline uint64_t secagg_ring_mask(int32_t bits)
{
    return bits == 64 ? UINT64_MAX : ((uint64_t)1 << bits) - 1;
}

/* enc[i] = round(clip(x[i], ±range)·scale) mod 2^bits. */
void secagg_encode(uint64_t *enc, const float *x, size_t n, float scale, float range,
                   int32_t bits);
/* sum[i] = signed(acc[i] mod 2^bits) / scale, rounded once to float. */
void secagg_decode(float *sum, const uint64_t *acc, size_t n, float scale, int32_t bits);
/* acc[i] += sign · m[i] mod 2^bits, m the ChaCha20 keystream of key (nonce 0)
 * read as little-endian words of bits/8 bytes; sign = +1 or −1. */
void secagg_add_mask(uint64_t *acc, size_t n, const uint8_t key[32], int sign, int32_t bits);

/* ---- secagg.c: validated settings shared by both protocols ---- */
typedef struct secagg_cfg {
    int32_t n, bits, min_surv;
    int64_t round, length;
    float scale, range;
} secagg_cfg;

/* Validate and copy @p params (the message names @p fn). */
mop_status secagg_cfg_from(secagg_cfg *c, const mop_secagg_params *params, const char *fn);

#endif
