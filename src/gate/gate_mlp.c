/* The gate MLP (gate.h): a = W1 u + b1, z = W2 act(a) + b2, pi = softmax(z/tau),
 * w = pi or its top-k; then the backward of each step in reverse order,
 * softmax first, then the MLP. The activation is written once, for both. */
#include <math.h>
#include <string.h>

#include "gate.h"

/* act(a) (mop_gate_act), and act'(a) into *df unless df is NULL */
static inline float gate_act(float a, int act, float *df)
{
    if (act == MOP_GATE_ACT_RELU) {
        if (df)
            *df = a > 0.0f ? 1.0f : 0.0f;
        return a > 0.0f ? a : 0.0f;
    }
    /* GELU, tanh approximation: f = 0.5 a (1 + th), th = tanh(c (a + 0.044715 a³)) */
    const float c = 0.7978845608028654f; /* sqrt(2/π) */
    float th = tanhf(c * (a + 0.044715f * a * a * a));
    if (df)
        *df = 0.5f * (1.0f + th) +
              0.5f * a * (1.0f - th * th) * c * (1.0f + 3.0f * 0.044715f * a * a);
    return 0.5f * a * (1.0f + th);
}

/* ---- forward ------------------------------------------------------------- */

void gate_forward_one(const mop_mixture *m, float *a, float *pi, float *w, const float *u,
                      int32_t task)
{
    const mop_mixture_params *p = &m->p;
    const int32_t K = p->n_experts, h = p->gate_hidden, d = m->model->hp.n_embd;
    if (p->gate_mode != MOP_GATE_LEARNED) {
        for (int32_t k = 0; k < K; k++)
            pi[k] = w[k] = p->gate_mode == MOP_GATE_UNIFORM ? 1.0f / (float)K
                                                            : (float)(k == task);
        return;
    }
    const float *W1 = m->params + m->off[GATE_T_W1], *b1 = m->params + m->off[GATE_T_B1];
    const float *W2 = m->params + m->off[GATE_T_W2], *b2 = m->params + m->off[GATE_T_B2];
    /* a (h) = W1 u + b1;  z (K) = W2 act(a) + b2;  pi = softmax(z / tau) */
    for (int32_t j = 0; j < h; j++) {
        double s = b1[j];
        for (int32_t i = 0; i < d; i++)
            s += (double)W1[(int64_t)j * d + i] * u[i];
        a[j] = (float)s;
    }
    float z[256];
    for (int32_t k = 0; k < K; k++) {
        double s = b2[k];
        for (int32_t j = 0; j < h; j++)
            s += (double)W2[(int64_t)k * h + j] * gate_act(a[j], p->gate_act, NULL);
        z[k] = (float)(s / p->gate_temperature);
    }
    softmax_forward(pi, z, K);
    if (p->top_k == 0 || p->top_k == K) {
        memcpy(w, pi, (size_t)K * sizeof(float));
        return;
    }
    /* keep the top_k largest (ties: lower index first) with their probability,
     * or renormalised to sum 1 (top_k_renorm) */
    uint8_t keep[256];
    memset(keep, 0, sizeof keep);
    double kept = 0.0;
    for (int32_t r = 0; r < p->top_k; r++) {
        int32_t best = -1;
        for (int32_t k = 0; k < K; k++)
            if (!keep[k] && (best < 0 || pi[k] > pi[best]))
                best = k;
        keep[best] = 1;
        kept += pi[best];
    }
    if (!p->top_k_renorm)
        kept = 1.0;
    for (int32_t k = 0; k < K; k++)
        w[k] = keep[k] ? (float)(pi[k] / kept) : 0.0f;
}

/* ---- backward: the softmax, then the MLP --------------------------------- */

void gate_softmax_backward(float *dz, const float *G, const float *w, int64_t B, int K,
                           float tau)
{
    /* log w_k = z_k/τ − logΣexp(z/τ)  ⇒  ∂ log w_k / ∂z_m = (δ_km − w_m)/τ */
    for (int64_t b = 0; b < B; b++) {
        const float *Gb = G + b * K, *wb = w + b * K;
        double sg = 0.0;
        for (int m = 0; m < K; m++)
            sg += Gb[m];
        for (int m = 0; m < K; m++)
            dz[b * K + m] += (float)((Gb[m] - wb[m] * sg) / tau);
    }
}

void gate_softmax_backward_dw(float *dz, const float *dw, const float *w, int64_t B, int K,
                              float tau)
{
    /* ∂w_k/∂z_m = w_k (δ_km − w_m)/τ */
    for (int64_t b = 0; b < B; b++) {
        const float *db = dw + b * K, *wb = w + b * K;
        double s = 0.0;
        for (int m = 0; m < K; m++)
            s += (double)wb[m] * db[m];
        for (int m = 0; m < K; m++)
            dz[b * K + m] += (float)(wb[m] * (db[m] - s) / tau);
    }
}

void gate_mlp_backward(float *dW1, float *db1, float *dW2, float *db2, float *du,
                       const float *dz, const float *u, const float *a, const float *W1,
                       const float *W2, int64_t B, int d, int h, int K, int act)
{
    for (int64_t b = 0; b < B; b++) {
        const float *dzb = dz + b * K, *ub = u + b * d, *ab = a + b * h;
        for (int m = 0; m < K; m++)
            db2[m] += dzb[m];
        for (int j = 0; j < h; j++) {
            float df, f = gate_act(ab[j], act, &df);
            /* dL/dact_j = Σ_m dz_m W2[m, j];  dW2[m, j] += dz_m act_j */
            float dact = 0.0f;
            for (int m = 0; m < K; m++) {
                dact += dzb[m] * W2[m * h + j];
                dW2[m * h + j] += dzb[m] * f;
            }
            float da = dact * df;
            db1[j] += da;
            float *dW1j = dW1 + (int64_t)j * d;
            for (int i = 0; i < d; i++)
                dW1j[i] += da * ub[i];
            if (du) {
                const float *W1j = W1 + (int64_t)j * d;
                for (int i = 0; i < d; i++)
                    du[b * d + i] += da * W1j[i];
            }
        }
    }
}
