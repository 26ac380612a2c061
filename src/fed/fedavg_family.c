/* The server step after reduction, given the round's aggregate delta Δ̄:
 *
 *   plain (FedAvg, robust, merging, MoP-aware):  x ← x + η Δ̄
 *   FedAvgM (Hsu et al. 2019):                   v ← μ v + Δ̄;           x ← x + η v
 *   FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, "Adaptive Federated
 *   Optimization", Algorithm 2; no bias correction; v starts at τ²):
 *     m ← β1 m + (1 − β1) Δ̄
 *     Adagrad: v ← v + Δ̄²
 *     Adam:    v ← β2 v + (1 − β2) Δ̄²
 *     Yogi:    v ← v − (1 − β2) Δ̄² sign(v − Δ̄²)
 *     x ← x + η m / (√v + τ)
 */
#include <math.h>

#include "fed.h"

void fed_server_step(float *next, const float *global, const double *delta, size_t total,
                     const mop_aggregator_params *p, fed_server_state *st)
{
    const double eta = p->server_lr, b1 = p->beta1, b2 = p->beta2, tau = p->tau;
    switch (p->strategy) {
    case MOP_AGG_FEDAVGM:
        for (size_t i = 0; i < total; i++) {
            double v = (double)p->momentum * st->m[i] + delta[i];
            st->m[i] = v;
            next[i] = (float)(global[i] + eta * v);
        }
        break;
    case MOP_AGG_FEDADAM:
    case MOP_AGG_FEDYOGI:
    case MOP_AGG_FEDADAGRAD:
        for (size_t i = 0; i < total; i++) {
            double d = delta[i], d2 = d * d;
            double m = b1 * st->m[i] + (1.0 - b1) * d;
            double v = st->v[i];
            if (p->strategy == MOP_AGG_FEDADAM)
                v = b2 * v + (1.0 - b2) * d2;
            else if (p->strategy == MOP_AGG_FEDYOGI)
                v = v - (1.0 - b2) * d2 * (v > d2 ? 1.0 : (v < d2 ? -1.0 : 0.0));
            else
                v = v + d2;
            st->m[i] = m;
            st->v[i] = v;
            next[i] = (float)(global[i] + eta * m / (sqrt(v) + tau));
        }
        break;
    default:
        for (size_t i = 0; i < total; i++)
            next[i] = (float)(global[i] + eta * delta[i]);
        break;
    }
    st->steps++;
}
