/* Shamir secret sharing over GF(2^61 − 1); see shamir.h.
 *
 *   split:   f_k(X) = w_k + a_k1 X + ... + a_k,t−1 X^(t−1),  share_x = (f_k(x))_k
 *   combine: w_k = Σ_j f_k(x_j) · Π_{m≠j} x_m / (x_m − x_j)   (Lagrange at 0)
 */
#include <string.h>

#include <sodium.h>

#include "internal.h"
#include "shamir.h"

uint64_t shamir_add(uint64_t a, uint64_t b)
{
    uint64_t s = a + b; /* < 2^62: no overflow */
    return s >= SHAMIR_P ? s - SHAMIR_P : s;
}

uint64_t shamir_sub(uint64_t a, uint64_t b)
{
    return a >= b ? a - b : a + SHAMIR_P - b;
}

uint64_t shamir_mul(uint64_t a, uint64_t b)
{
    unsigned __int128 z = (unsigned __int128)a * b; /* < 2^122 */
    /* 2^61 ≡ 1 (mod p): fold the high bits onto the low ones */
    uint64_t lo = (uint64_t)z & SHAMIR_P, hi = (uint64_t)(z >> 61);
    uint64_t s = lo + hi; /* hi < 2^61 */
    s = (s & SHAMIR_P) + (s >> 61);
    return s >= SHAMIR_P ? s - SHAMIR_P : s;
}

uint64_t shamir_inv(uint64_t a)
{
    /* Fermat: a^(p−2) */
    uint64_t r = 1, e = SHAMIR_P - 2;
    while (e) {
        if (e & 1)
            r = shamir_mul(r, a);
        a = shamir_mul(a, a);
        e >>= 1;
    }
    return r;
}

static uint64_t rand_elem(void)
{
    for (;;) { /* rejection sampling: uniform in [0, p) */
        uint64_t v;
        randombytes_buf(&v, sizeof v);
        v &= SHAMIR_P;
        if (v < SHAMIR_P)
            return v;
    }
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

int shamir_split(uint8_t *shares, const uint8_t secret[SHAMIR_SECRET_BYTES], int32_t t,
                 const uint32_t *xs, int32_t n)
{
    /* coef[d·8 + k] = a_kd; a_k0 = word k of the secret */
    size_t nc = (size_t)t * SHAMIR_WORDS;
    uint64_t *coef = mop_alloc(nc * sizeof *coef);
    if (!coef)
        return -1;
    for (int k = 0; k < SHAMIR_WORDS; k++)
        coef[k] = (uint64_t)secret[4 * k] | (uint64_t)secret[4 * k + 1] << 8 |
                  (uint64_t)secret[4 * k + 2] << 16 | (uint64_t)secret[4 * k + 3] << 24;
    for (size_t c = SHAMIR_WORDS; c < nc; c++)
        coef[c] = rand_elem();
    for (int32_t i = 0; i < n; i++)
        for (int k = 0; k < SHAMIR_WORDS; k++) {
            uint64_t acc = 0; /* Horner */
            for (int32_t d = t - 1; d >= 0; d--)
                acc = shamir_add(shamir_mul(acc, xs[i]), coef[(size_t)d * SHAMIR_WORDS + k]);
            put64(shares + (size_t)i * SHAMIR_SHARE_BYTES + 8 * k, acc);
        }
    sodium_memzero(coef, nc * sizeof *coef);
    mop_free(coef);
    return 0;
}

int shamir_share_ok(const uint8_t share[SHAMIR_SHARE_BYTES])
{
    for (int k = 0; k < SHAMIR_WORDS; k++)
        if (get64(share + 8 * k) >= SHAMIR_P)
            return 0;
    return 1;
}

/* Lagrange basis at point z of node j over nodes xs[0..t). */
static uint64_t lagrange(const uint32_t *xs, int32_t t, int32_t j, uint64_t z)
{
    uint64_t num = 1, den = 1;
    for (int32_t m = 0; m < t; m++) {
        if (m == j)
            continue;
        num = shamir_mul(num, shamir_sub(z % SHAMIR_P, xs[m]));
        den = shamir_mul(den, shamir_sub(xs[j], xs[m]));
    }
    return shamir_mul(num, shamir_inv(den));
}

int shamir_combine(uint8_t secret[SHAMIR_SECRET_BYTES], const uint8_t *shares,
                   const uint32_t *xs, int32_t m, int32_t t, int32_t *bad)
{
    *bad = -1;
    uint64_t w[SHAMIR_WORDS] = {0};
    for (int32_t j = 0; j < t; j++) {
        uint64_t l = lagrange(xs, t, j, 0);
        for (int k = 0; k < SHAMIR_WORDS; k++)
            w[k] = shamir_add(w[k], shamir_mul(get64(shares + (size_t)j * SHAMIR_SHARE_BYTES + 8 * k), l));
    }
    /* the redundant shares must lie on the same polynomials */
    for (int32_t i = t; i < m; i++) {
        uint64_t v[SHAMIR_WORDS] = {0};
        for (int32_t j = 0; j < t; j++) {
            uint64_t l = lagrange(xs, t, j, xs[i]);
            for (int k = 0; k < SHAMIR_WORDS; k++)
                v[k] = shamir_add(v[k], shamir_mul(get64(shares + (size_t)j * SHAMIR_SHARE_BYTES + 8 * k), l));
        }
        for (int k = 0; k < SHAMIR_WORDS; k++)
            if (v[k] != get64(shares + (size_t)i * SHAMIR_SHARE_BYTES + 8 * k)) {
                *bad = i;
                sodium_memzero(w, sizeof w);
                return -1;
            }
    }
    for (int k = 0; k < SHAMIR_WORDS; k++) {
        if (w[k] >> 32) {
            sodium_memzero(w, sizeof w);
            return -1;
        }
        for (int b = 0; b < 4; b++)
            secret[4 * k + b] = (uint8_t)(w[k] >> (8 * b));
    }
    sodium_memzero(w, sizeof w);
    return 0;
}
