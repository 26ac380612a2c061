/* libmop's seeded pseudo-random streams, one module for the whole library
 * (not for cryptography: secure aggregation's PRG is libsodium's).
 *
 * Two generators, both kept because tests and documented results are fixed
 * by their streams:
 * - mop_rng: xoshiro256** (Blackman & Vigna) seeded through splitmix64, for
 *   token sampling, the federated partitioners and DARE masks.
 * - mop_xorshift64s_next(): xorshift64* on one word (Marsaglia; Vigna's
 *   multiplier), for the mixture's initialisation and gate pre-training's
 *   shuffles. Drawing those from xoshiro instead would change every
 *   mixture's initial values, hence the trained mixtures that the
 *   byte-identical tests and docs/RESULTS.md rest on.
 * Same seed, same numbers, on every platform. */
#ifndef MOP_RNG_H
#define MOP_RNG_H

#include <stdint.h>

typedef struct mop_rng {
    uint64_t s[4];
} mop_rng;

/* One splitmix64 step: advances *state, returns the mixed value. */
uint64_t mop_splitmix64(uint64_t *state);
/* Seed the four words from splitmix64 steps from `seed`. */
void mop_rng_seed(mop_rng *r, uint64_t seed);
/* The next xoshiro256** output. */
uint64_t mop_rng_next(mop_rng *r);
/* Uniform in [0, 1) from the top 53 bits of the next output. */
double mop_rng_uniform(mop_rng *r);

/* One xorshift64* step on *state (never 0 once non-zero): returns the next output. */
uint64_t mop_xorshift64s_next(uint64_t *state);

#endif
