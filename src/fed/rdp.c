/* Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism
 * (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled
 * Gaussian Mechanism", Sec. 3).
 *
 * With μ0 = N(0, σ²) and μ1 = (1−q)·N(0, σ²) + q·N(1, σ²), one step has
 *   RDP(α) = log A_α / (α − 1),   A_α = E_{z~μ0}[(μ1(z)/μ0(z))^α].
 * Integer α:    A_α = Σ_{k=0..α} C(α,k) (1−q)^{α−k} q^k exp((k² − k)/(2σ²)).
 * Fractional α: split at z0 = σ² log(1/q − 1) + 1/2 and expand both sides:
 *   A_α = Σ_{i≥0} C(α,i) [ q^i (1−q)^{α−i} e^{(i²−i)/(2σ²)} ½erfc((i − z0)/(√2σ))
 *                        + q^{α−i} (1−q)^i e^{(j²−j)/(2σ²)} ½erfc((z0 − j)/(√2σ)) ],
 *   j = α − i. C(α,i) changes sign for i > α + 1: the sums are kept in log
 *   space as a positive and a negative part.
 * T steps compose to T·RDP(α); ε = min over the orders of the conversion. */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "privacy.h"

struct mop_rdp_accountant {
    int32_t conversion;
    int32_t n_orders;
    double *orders; /* (n_orders) */
    double *total;  /* (n_orders) composed RDP */
};

void rdp_default_orders(double *orders)
{
    int32_t n = 0;
    for (int x = 1; x < 100; x++)
        orders[n++] = 1.0 + x / 10.0; /* 1.1 .. 10.9, as TF-Privacy / Opacus */
    orders[n++] = 1.25;
    orders[n++] = 1.75;
    for (int a = 11; a < 64; a++)
        orders[n++] = a;
    static const double big[] = {64, 80, 96, 128, 256, 512, 1024};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        orders[n++] = big[i];
}

/* log(e^a + e^b) */
static double log_add(double a, double b)
{
    if (a == -INFINITY)
        return b;
    if (b == -INFINITY)
        return a;
    double m = a > b ? a : b;
    return m + log1p(exp(-fabs(a - b)));
}

/* log erfc(x), finite far into the tail where erfc underflows. */
static double log_erfc(double x)
{
    if (x < 25.0)
        return log(erfc(x));
    double r = 1.0 / (x * x); /* asymptotic series erfc x ~ e^{−x²}/(x√π)·(1 − r/2 + 3r²/4 − 15r³/8) */
    return -x * x - log(x) - 0.5 * log(3.14159265358979323846) +
           log1p(-0.5 * r + 0.75 * r * r - 1.875 * r * r * r);
}

double rdp_log_a_int(double q, double sigma, int64_t alpha)
{
    double log_a = -INFINITY, log_binom = 0.0; /* log C(α, 0) */
    double lq = log(q), l1q = log1p(-q), s2 = 2.0 * sigma * sigma;
    for (int64_t k = 0; k <= alpha; k++) {
        double kd = (double)k;
        double term = log_binom + (double)(alpha - k) * l1q + kd * lq + (kd * kd - kd) / s2;
        log_a = log_add(log_a, term);
        log_binom += log((double)(alpha - k)) - log(kd + 1.0); /* C(α,k+1) = C(α,k)(α−k)/(k+1) */
    }
    return log_a;
}

double rdp_log_a_frac(double q, double sigma, double alpha)
{
    double pos = -INFINITY, neg = -INFINITY; /* log of the positive / negative parts */
    double log_binom = 0.0;                   /* log |C(α, i)| */
    int sign = 1;                             /* sign of C(α, i) */
    double lq = log(q), l1q = log1p(-q), s2 = 2.0 * sigma * sigma;
    double z0 = sigma * sigma * log(1.0 / q - 1.0) + 0.5;
    double rs = 1.0 / (sqrt(2.0) * sigma);
    for (int64_t i = 0; i < 1000000; i++) {
        double id = (double)i, j = alpha - id;
        double t0 = log_binom + id * lq + j * l1q + (id * id - id) / s2 +
                    log(0.5) + log_erfc((id - z0) * rs);
        double t1 = log_binom + j * lq + id * l1q + (j * j - j) / s2 +
                    log(0.5) + log_erfc((z0 - j) * rs);
        double t = log_add(t0, t1);
        if (sign > 0)
            pos = log_add(pos, t);
        else
            neg = log_add(neg, t);
        /* Past i > α + 1 the terms fall off like a Gaussian in i: stop once
         * they are below 1e-16 of the sum. */
        if (id > alpha + 1.0 && t < pos - 37.0)
            break;
        double f = alpha - id; /* C(α,i+1) = C(α,i)·(α−i)/(i+1) */
        if (f == 0.0)
            break; /* integer α: the series ends */
        if (f < 0.0)
            sign = -sign;
        log_binom += log(fabs(f)) - log(id + 1.0);
    }
    if (neg == -INFINITY)
        return pos;
    if (!(neg < pos))
        return NAN; /* cannot happen for valid inputs (A_α >= 1) */
    return pos + log1p(-exp(neg - pos));
}

static mop_status rdp_check(const char *fn, double z, double q)
{
    if (!(isfinite(z) && z > 0.0))
        return mop_fail(MOP_E_INVALID_ARG, "%s: noise_multiplier must be finite and > 0, got %g",
                        fn, z);
    if (!(q >= 0.0 && q <= 1.0))
        return mop_fail(MOP_E_INVALID_ARG, "%s: sample_rate must be in [0, 1], got %g", fn, q);
    return MOP_OK;
}

/* RDP of one step at order alpha (arguments valid). */
static double rdp_one(double z, double q, double alpha)
{
    if (q == 0.0)
        return 0.0;
    if (q == 1.0)
        return alpha / (2.0 * z * z); /* plain Gaussian mechanism */
    double log_a;
    if (alpha == floor(alpha) && alpha <= 1e6)
        log_a = rdp_log_a_int(q, z, (int64_t)alpha);
    else
        log_a = rdp_log_a_frac(q, z, alpha);
    return log_a / (alpha - 1.0);
}

mop_status mop_rdp_sampled_gaussian(double noise_multiplier, double sample_rate, double alpha,
                                    double *rdp)
{
    MOP_CHECK_ARG(rdp != NULL);
    MOP_TRY(rdp_check("mop_rdp_sampled_gaussian", noise_multiplier, sample_rate));
    if (!(isfinite(alpha) && alpha > 1.0))
        return mop_fail(MOP_E_INVALID_ARG,
                        "mop_rdp_sampled_gaussian: alpha must be finite and > 1, got %g", alpha);
    double r = rdp_one(noise_multiplier, sample_rate, alpha);
    if (isnan(r))
        return mop_fail(MOP_E_INTERNAL, "mop_rdp_sampled_gaussian: series did not converge "
                        "(z=%g q=%g alpha=%g)", noise_multiplier, sample_rate, alpha);
    *rdp = r;
    return MOP_OK;
}

/* ε = min over orders of the conversion of total RDP. */
static void rdp_convert(const double *orders, const double *total, int32_t n, int32_t conversion,
                        double delta, double *eps, double *best_order)
{
    int all_zero = 1;
    for (int32_t k = 0; k < n; k++)
        all_zero &= total[k] == 0.0;
    if (all_zero) { /* nothing released yet (T = 0 or q = 0) */
        *eps = 0.0;
        if (best_order)
            *best_order = 0.0;
        return;
    }
    double best = INFINITY, best_a = orders[0], ld = log(delta);
    for (int32_t k = 0; k < n; k++) {
        double a = orders[k], e;
        if (conversion == MOP_RDP_CONVERSION_CLASSIC)
            e = total[k] - ld / (a - 1.0);
        else
            e = total[k] + log1p(-1.0 / a) - (ld + log(a)) / (a - 1.0);
        if (e < best) {
            best = e;
            best_a = a;
        }
    }
    *eps = best < 0.0 ? 0.0 : best;
    if (best_order)
        *best_order = best_a;
}

static mop_status rdp_check_delta(const char *fn, double delta)
{
    if (!(delta > 0.0 && delta < 1.0))
        return mop_fail(MOP_E_INVALID_ARG, "%s: delta must be in (0, 1), got %g", fn, delta);
    return MOP_OK;
}

/* total[k] += steps · RDP(orders[k]); on error total is unchanged. */
static mop_status rdp_compose(double *total, const double *orders, int32_t n, double z, double q,
                              int64_t steps, const char *fn)
{
    MOP_TRY(rdp_check(fn, z, q));
    if (steps < 0)
        return mop_fail(MOP_E_INVALID_ARG, "%s: steps must be >= 0, got %lld", fn,
                        (long long)steps);
    for (int32_t k = 0; k < n; k++) {
        if (isnan(rdp_one(z, q, orders[k])))
            return mop_fail(MOP_E_INTERNAL, "%s: series did not converge (z=%g q=%g alpha=%g)",
                            fn, z, q, orders[k]);
    }
    for (int32_t k = 0; k < n; k++)
        total[k] += (double)steps * rdp_one(z, q, orders[k]);
    return MOP_OK;
}

mop_status mop_rdp_epsilon(double noise_multiplier, double sample_rate, int64_t steps,
                           double delta, double *eps, double *best_order)
{
    MOP_CHECK_ARG(eps != NULL);
    MOP_TRY(rdp_check_delta("mop_rdp_epsilon", delta));
    double orders[RDP_DEFAULT_ORDERS], total[RDP_DEFAULT_ORDERS] = {0};
    rdp_default_orders(orders);
    MOP_TRY(rdp_compose(total, orders, RDP_DEFAULT_ORDERS, noise_multiplier, sample_rate, steps,
                        "mop_rdp_epsilon"));
    rdp_convert(orders, total, RDP_DEFAULT_ORDERS, MOP_RDP_CONVERSION_CLASSIC, delta, eps,
                best_order);
    return MOP_OK;
}

/* first release (0.1.0) */
#define RDP_PARAMS_MIN MOP_SIZE_THROUGH(mop_rdp_params, n_orders)

static void rdp_defaults(mop_rdp_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->conversion = MOP_RDP_CONVERSION_CLASSIC;
    d->orders = NULL;
    d->n_orders = 0;
}

MOP_DEFINE_PARAMS_INIT(rdp, RDP_PARAMS_MIN)

mop_status mop_rdp_accountant_create(const mop_rdp_params *params, mop_rdp_accountant **out)
{
    MOP_CHECK_ARG(out != NULL);
    *out = NULL;
    mop_rdp_params p;
    rdp_defaults(&p);
    if (params)
        MOP_READ_STRUCT("mop_rdp_accountant_create", &p, params, RDP_PARAMS_MIN);
    if (p.conversion != MOP_RDP_CONVERSION_CLASSIC && p.conversion != MOP_RDP_CONVERSION_BALLE2020)
        return mop_fail(MOP_E_INVALID_ARG, "mop_rdp_accountant_create: unknown conversion %d",
                        (int)p.conversion);
    int32_t n = RDP_DEFAULT_ORDERS;
    if (p.orders) {
        if (p.n_orders < 1 || p.n_orders > 4096)
            return mop_fail(MOP_E_INVALID_ARG,
                            "mop_rdp_accountant_create: n_orders must be in 1..4096, got %d",
                            (int)p.n_orders);
        for (int32_t k = 0; k < p.n_orders; k++)
            if (!(isfinite(p.orders[k]) && p.orders[k] > 1.0))
                return mop_fail(MOP_E_INVALID_ARG,
                                "mop_rdp_accountant_create: orders[%d] = %g must be finite and > 1",
                                (int)k, p.orders[k]);
        n = p.n_orders;
    }
    mop_rdp_accountant *acc = mop_calloc(1, sizeof *acc);
    double *orders = mop_alloc((size_t)n * sizeof(double));
    double *total = mop_calloc((size_t)n, sizeof(double));
    if (!acc || !orders || !total) {
        mop_free(acc);
        mop_free(orders);
        mop_free(total);
        return mop_fail(MOP_E_NOMEM, "mop_rdp_accountant_create: out of memory");
    }
    if (p.orders)
        memcpy(orders, p.orders, (size_t)n * sizeof(double));
    else
        rdp_default_orders(orders);
    acc->conversion = p.conversion;
    acc->n_orders = n;
    acc->orders = orders;
    acc->total = total;
    *out = acc;
    return MOP_OK;
}

void mop_rdp_accountant_free(mop_rdp_accountant *acc)
{
    if (!acc)
        return;
    mop_free(acc->orders);
    mop_free(acc->total);
    mop_free(acc);
}

mop_status mop_rdp_accountant_add(mop_rdp_accountant *acc, double noise_multiplier,
                                  double sample_rate, int64_t steps)
{
    MOP_CHECK_ARG(acc != NULL);
    return rdp_compose(acc->total, acc->orders, acc->n_orders, noise_multiplier, sample_rate,
                       steps, "mop_rdp_accountant_add");
}

mop_status mop_rdp_accountant_epsilon(const mop_rdp_accountant *acc, double delta, double *eps,
                                      double *best_order)
{
    MOP_CHECK_ARG(acc != NULL);
    MOP_CHECK_ARG(eps != NULL);
    MOP_TRY(rdp_check_delta("mop_rdp_accountant_epsilon", delta));
    rdp_convert(acc->orders, acc->total, acc->n_orders, acc->conversion, delta, eps, best_order);
    return MOP_OK;
}
