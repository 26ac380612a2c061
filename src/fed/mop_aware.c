/* MoP-aware aggregation (libmop's rule): a client's update of expert k
 * counts in proportion to how much its data used that expert. With n_i the
 * client's sample count and u_i the gate usage it shipped ("gate.usage",
 * K floats, e.g. the mean gate weight per expert over its data):
 *
 *   Δ̄_experts[k] = Σ_i n_i u_ik Δ_i,experts[k] / Σ_i n_i u_ik   (0 if no client used k)
 *   Δ̄_other      = Σ_i n_i Δ_i,other / Σ_i n_i                  (FedAvg)
 *
 * The aggregator accumulates these sums as updates arrive (aggregate.c);
 * this file holds the weight. */
#include "fed.h"

double fed_mop_aware_row_weight(double n_samples, const float *usage, int64_t k)
{
    return n_samples * (double)usage[k];
}
