/* The few distributions the partitioners draw, over core's seeded
 * xoshiro256** (rng.h). Same seed, same numbers, on every platform. */
#include <math.h>

#include "fed.h"

uint64_t fed_rng_below(fed_rng *r, uint64_t bound)
{
    /* reject the top partial block so every residue is equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do {
        x = mop_rng_next(r);
    } while (x >= limit);
    return x % bound;
}

double fed_rng_normal(fed_rng *r)
{
    double u, v, s;
    do {
        u = 2.0 * mop_rng_uniform(r) - 1.0;
        v = 2.0 * mop_rng_uniform(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * sqrt(-2.0 * log(s) / s);
}

/* Marsaglia & Tsang (2000), "A simple method for generating gamma
 * variables", for shape a >= 1: d = a − 1/3, c = 1/√(9d); draw x ~ N(0,1),
 * v = (1 + c x)³ until v > 0 and log U < x²/2 + d − d v + d log v; return d v. */
static double log_gamma_ge1(fed_rng *r, double a)
{
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = fed_rng_normal(r), v = 1.0 + c * x;
        if (v <= 0.0)
            continue;
        v = v * v * v;
        double u = mop_rng_uniform(r);
        if (u > 0.0 && log(u) < 0.5 * x * x + d - d * v + d * log(v))
            return log(d) + log(v);
    }
}

double fed_rng_log_gamma(fed_rng *r, double alpha)
{
    if (alpha >= 1.0)
        return log_gamma_ge1(r, alpha);
    double u;
    do {
        u = mop_rng_uniform(r);
    } while (u == 0.0);
    return log_gamma_ge1(r, alpha + 1.0) + log(u) / alpha;
}

void fed_shuffle_i64(fed_rng *r, int64_t *idx, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)fed_rng_below(r, (uint64_t)i + 1);
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}
