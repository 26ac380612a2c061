/* t-of-n Shamir secret sharing of 32-byte secrets over GF(p), p = 2^61 − 1
 * (a Mersenne prime). A secret is cut into 8 little-endian 32-bit words; each
 * word w_k is the constant term of its own random polynomial f_k of degree
 * t − 1, and the share of party x (1..65536) is (f_0(x), ..., f_7(x)),
 * written as 8 little-endian u64 (SHAMIR_SHARE_BYTES). Internal to the fed
 * module (used by secagg2.c). */
#ifndef MOP_FED_SHAMIR_H
#define MOP_FED_SHAMIR_H

#include <stddef.h>
#include <stdint.h>

#define SHAMIR_P (((uint64_t)1 << 61) - 1)
#define SHAMIR_WORDS 8
#define SHAMIR_SECRET_BYTES 32
#define SHAMIR_SHARE_BYTES (SHAMIR_WORDS * 8)

uint64_t shamir_add(uint64_t a, uint64_t b);
uint64_t shamir_sub(uint64_t a, uint64_t b);
uint64_t shamir_mul(uint64_t a, uint64_t b);
uint64_t shamir_inv(uint64_t a); /* a ≠ 0 */

/* Shares of @p secret for the n parties xs[0..n) (distinct, 1..2^16),
 * threshold t (1 <= t <= n): shares[i·SHAMIR_SHARE_BYTES ...] for xs[i].
 * Coefficients from randombytes_buf (libsodium initialised by the caller);
 * the polynomials are wiped before returning. Returns 0, or −1 when out
 * of memory. */
int shamir_split(uint8_t *shares, const uint8_t secret[SHAMIR_SECRET_BYTES], int32_t t,
                 const uint32_t *xs, int32_t n);

/* 1 if every word of the share is < p (a well-formed share). */
int shamir_share_ok(const uint8_t share[SHAMIR_SHARE_BYTES]);

/* Reconstruct from the m >= t shares (xs distinct): interpolate at 0 from the
 * first t, then check that the other m − t lie on the same polynomials.
 * Returns 0 on success, −1 when a share is inconsistent (*bad = its
 * position in xs) or a reconstructed word is >= 2^32 (*bad = −1). */
int shamir_combine(uint8_t secret[SHAMIR_SECRET_BYTES], const uint8_t *shares,
                   const uint32_t *xs, int32_t m, int32_t t, int32_t *bad);

#endif
