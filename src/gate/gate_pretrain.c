/* Gate pre-training on task labels: the gate MLP alone, on cached pooled
 * inputs, with early stopping on the validation accuracy of the argmax expert. */
#include <math.h>
#include <string.h>

#include "gate.h"

/* first release (0.2.0) */
#define GATE_PRETRAIN_PARAMS_MIN MOP_SIZE_THROUGH(mop_gate_pretrain_params, progress_user)

static void gate_pretrain_defaults(mop_gate_pretrain_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->lr = 3e-3f;
    d->weight_decay = 0.0f;
    d->batch_size = 32;
    d->max_epochs = 100;
    d->patience = 5;
    d->seed = 1234;
}

MOP_DEFINE_PARAMS_INIT_SIZED(gate_pretrain, GATE_PRETRAIN_PARAMS_MIN)

/* The 0.2.0 symbol (the header's macro of the same name replaces it in
 * source): a 0.2.0 struct is the whole struct. */
mop_status (mop_gate_pretrain_params_init)(mop_gate_pretrain_params *p)
{
    MOP_CHECK_ARG(p);
    gate_pretrain_defaults(p);
    return MOP_OK;
}

/* Standardized copy of n rows. */
static float *standardized(const mop_mixture *m, const float *u, int32_t n)
{
    const size_t d = (size_t)m->model->hp.n_embd;
    float *out = mop_alloc((size_t)MOP_MAX(n, 1) * d * sizeof(float));
    if (!out)
        return NULL;
    memcpy(out, u, (size_t)n * d * sizeof(float));
    for (int32_t r = 0; r < n; r++)
        gate_standardize(m, out + (size_t)r * d);
    return out;
}

/* Accuracy of the argmax expert and mean −log π[task] over n rows. */
static void score(const mop_mixture *m, const float *u, const int32_t *task, int32_t n,
                  float *a, float *pi, float *w, float *acc, double *loss)
{
    const int32_t K = m->p.n_experts, d = m->model->hp.n_embd;
    int64_t hits = 0;
    double nll = 0.0;
    for (int32_t r = 0; r < n; r++) {
        gate_forward_one(m, a, pi, w, u + (int64_t)r * d, -1);
        int32_t best = 0;
        for (int32_t k = 1; k < K; k++)
            best = pi[k] > pi[best] ? k : best;
        hits += best == task[r];
        nll -= log(fmax((double)pi[task[r]], 1e-30));
    }
    *acc = n > 0 ? (float)((double)hits / n) : 0.0f;
    *loss = n > 0 ? nll / n : 0.0;
}

mop_status mop_mixture_pretrain_gate(mop_mixture *m, const float *u, const int32_t *task,
                                     int32_t n, const float *u_val, const int32_t *task_val,
                                     int32_t n_val, const mop_gate_pretrain_params *params,
                                     mop_gate_pretrain_result *result)
{
    static const char fn[] = "mop_mixture_pretrain_gate";
    MOP_CHECK_ARG(m && u && task);
    mop_gate_pretrain_params p;
    gate_pretrain_defaults(&p);
    if (params)
        MOP_READ_STRUCT(fn, &p, params, GATE_PRETRAIN_PARAMS_MIN);
    if (result)
        MOP_CHECK_STRUCT_SIZE(fn, result, MOP_OUT_STRUCT_MIN);
    if (m->p.gate_mode != MOP_GATE_LEARNED)
        return mop_fail(MOP_E_INVALID_ARG, "%s: the mixture has no learned gate", fn);
    if (n < 1 || n_val < 0 || (n_val > 0 && (!u_val || !task_val)))
        return mop_fail(MOP_E_INVALID_ARG, "%s: n = %d (need >= 1), n_val = %d with%s rows", fn,
                        n, n_val, u_val && task_val ? "" : "out");
    if (!(p.lr > 0.0f) || !isfinite(p.lr) || !(p.weight_decay >= 0.0f) || p.batch_size < 1 ||
        p.max_epochs < 1 || p.patience < 1)
        return mop_fail(MOP_E_INVALID_ARG, "%s: lr %g (> 0), weight_decay %g (>= 0), batch_size "
                        "%d, max_epochs %d, patience %d (>= 1)", fn, (double)p.lr,
                        (double)p.weight_decay, p.batch_size, p.max_epochs, p.patience);
    const int32_t K = m->p.n_experts, h = m->p.gate_hidden, d = m->model->hp.n_embd;
    for (int32_t r = 0; r < n + n_val; r++) {
        int32_t t = r < n ? task[r] : task_val[r - n];
        if (t < 0 || t >= K)
            return mop_fail(MOP_E_INVALID_ARG, "%s: %s label %d = %d outside [0, %d)", fn,
                            r < n ? "training" : "validation", r < n ? r : r - n, t, K);
    }
    if (n_val == 0) { /* the training rows decide when to stop */
        u_val = u, task_val = task, n_val = n;
    }

    const size_t off = m->off[GATE_T_W1], n_gate = m->n_params - off;
    const int32_t bs = MOP_MIN(p.batch_size, n);
    mop_adamw_params ap;
    mop_adamw_params_init(&ap);
    ap.lr = p.lr;
    ap.weight_decay = p.weight_decay;
    mop_optimizer *opt = NULL;
    MOP_TRY(mop_optimizer_create(n_gate, &ap, &opt));
    float *un = standardized(m, u, n), *vn = standardized(m, u_val, n_val);
    float *ub = mop_alloc((size_t)bs * (size_t)d * sizeof(float));
    float *a = mop_alloc((size_t)bs * (size_t)h * sizeof(float));
    float *pi = mop_alloc((size_t)bs * (size_t)K * 3 * sizeof(float));
    float *best = mop_alloc(n_gate * sizeof(float));
    int32_t *order = mop_alloc((size_t)n * sizeof(int32_t));
    mop_status st = MOP_OK;
    if (!un || !vn || !ub || !a || !pi || !best || !order) {
        st = mop_fail(MOP_E_NOMEM, "%s: out of memory for %d rows", fn, n + n_val);
        goto out;
    }
    float *w = pi + (size_t)bs * K, *dz = w + (size_t)bs * K;
    float *gp = m->params + off, *gg = m->grads + off;
    for (int32_t r = 0; r < n; r++)
        order[r] = r;
    uint64_t rng = p.seed * 0x9E3779B97F4A7C15ull + 1;
    float best_acc = -1.0f;
    double best_loss = INFINITY;
    int32_t epoch = 0, best_epoch = 0, improved = 0; /* last epoch the accuracy rose */
    memcpy(best, gp, n_gate * sizeof(float));
    while (epoch < p.max_epochs && epoch - improved < p.patience) {
        epoch++;
        for (int32_t r = n - 1; r > 0; r--) {
            int32_t j = (int32_t)(mop_xorshift64s_next(&rng) % (uint64_t)(r + 1));
            int32_t t = order[r];
            order[r] = order[j], order[j] = t;
        }
        for (int32_t r0 = 0; r0 < n; r0 += bs) {
            const int32_t B = MOP_MIN(bs, n - r0);
            memset(gg, 0, n_gate * sizeof(float));
            memset(dz, 0, (size_t)B * K * sizeof(float));
            for (int32_t b = 0; b < B; b++) {
                const int32_t row = order[r0 + b];
                memcpy(ub + (int64_t)b * d, un + (int64_t)row * d, (size_t)d * sizeof(float));
                gate_forward_one(m, a + (int64_t)b * h, pi + (int64_t)b * K, w + (int64_t)b * K,
                                 ub + (int64_t)b * d, -1);
                /* mean_b −log pi_b[task]: dL/dlog pi = −1/B on the label */
                float g[256];
                memset(g, 0, (size_t)K * sizeof(float));
                g[task[row]] = -1.0f / (float)B;
                gate_softmax_backward(dz + (int64_t)b * K, g, pi + (int64_t)b * K, 1, K,
                                      m->p.gate_temperature);
            }
            gate_mlp_backward(gg, gg + m->size[GATE_T_W1], gg + m->size[GATE_T_W1] + h,
                              gg + m->size[GATE_T_W1] + h + (size_t)K * h, NULL, dz, ub, a, gp,
                              gp + m->size[GATE_T_W1] + h, B, d, h, K, m->p.gate_act);
            st = mop_optimizer_step(opt, gp, gg, n_gate, 1.0f, NULL, NULL);
            if (st != MOP_OK)
                goto out;
        }
        float acc;
        double loss;
        score(m, vn, task_val, n_val, a, pi, w, &acc, &loss);
        /* patience counts from the last rise in accuracy; the gate kept is the
         * best accuracy's, ties broken by the lower loss */
        if (acc > best_acc)
            improved = epoch;
        if (acc > best_acc || (acc == best_acc && loss < best_loss)) {
            best_acc = acc, best_loss = loss, best_epoch = epoch;
            memcpy(best, gp, n_gate * sizeof(float));
        }
        if (p.progress && p.progress((uint64_t)epoch, (uint64_t)p.max_epochs, p.progress_user)) {
            st = mop_fail(MOP_E_CANCELLED, "%s: cancelled after epoch %d", fn, epoch);
            break;
        }
    }
    memcpy(gp, best, n_gate * sizeof(float));
    memset(gg, 0, n_gate * sizeof(float));
    gate_cache_invalidate(m);
    if (st == MOP_OK && result) {
        mop_gate_pretrain_result res;
        memset(&res, 0, sizeof res);
        res.struct_size = result->struct_size;
        res.epochs = epoch;
        res.best_epoch = best_epoch;
        double train_loss;
        score(m, un, task, n, a, pi, w, &res.train_accuracy, &train_loss);
        res.val_accuracy = best_acc;
        res.val_loss = best_loss;
        memcpy(result, &res, result->struct_size);
    }
out:
    mop_optimizer_free(opt);
    mop_free(un), mop_free(vn), mop_free(ub), mop_free(a), mop_free(pi), mop_free(best);
    mop_free(order);
    return st;
}
