/* mop_aggregator: the round loop of the server. Updates are checked against
 * the tensor layout fixed by the first update ever added, then either folded
 * into running weighted sums (FedAvg family, MoP-aware: memory independent of
 * the number of clients) or copied (robust and merging rules). finish()
 * reduces the round to one delta Δ̄ (robust.c, merge.c, mop_aware.c) and
 * takes the server step (fedavg_family.c). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fed.h"
#include "internal.h"

/* One aggregated tensor: a view [offset, offset + size) of the flat vector.
 * Its rows are "groups" with their own weight sums: K groups for "experts"
 * under MoP-aware aggregation, one group otherwise. */
typedef struct slot {
    char *name;
    int32_t n_dims;
    int64_t dims[FED_MAX_DIMS];
    size_t offset, size;
    size_t group_base, group_size;
} slot;

typedef struct layout {
    int32_t n_slots;
    slot *slots;
    size_t total;     /* floats in the flat vector */
    size_t n_groups;
    int32_t experts;  /* slot index of "experts" (MoP-aware), else -1 */
    int64_t K;
} layout;

struct mop_aggregator {
    mop_aggregator_params p;
    layout lay;                 /* n_slots == 0 until the first update */
    fed_server_state st;        /* kept across rounds */
    /* the current round */
    int32_t n_updates;
    double n_samples_sum;
    double *acc;                /* (total) streaming: Σ w·x */
    double *wsum, *wfull;       /* (n_groups) Σ w, and Σ w over FULL updates */
    int32_t cap;
    float **bufs;               /* (cap) buffered: each client's flat values */
    uint8_t *is_full;
    uint64_t *client;
    int64_t *urnd;
};

static int is_streaming(int32_t s)
{
    return s <= MOP_AGG_FEDADAGRAD || s == MOP_AGG_MOP_AWARE;
}

/* first release (0.1.0) */
#define AGGREGATOR_PARAMS_MIN MOP_SIZE_THROUGH(mop_aggregator_params, seed)

static void aggregator_defaults(mop_aggregator_params *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->strategy = MOP_AGG_FEDAVG;
    d->server_lr = 1.0f;
    d->momentum = 0.9f;
    d->beta1 = 0.9f;
    d->beta2 = 0.99f;
    d->tau = 1e-3f;
    d->trim_ratio = 0.1f;
    d->krum_f = 1;
    d->multi_krum_m = 0;
    d->ties_density = 0.2f;
    d->dare_drop = 0.9f;
    d->crumbs_top = 0.01f;
    d->crumbs_bottom = 0.09f;
    d->merge_lambda = 0.0f;
    d->seed = 0;
}

MOP_DEFINE_PARAMS_INIT(aggregator, AGGREGATOR_PARAMS_MIN)

#define CHECK_RANGE(cond, field, text)                                                  \
    do {                                                                               \
        if (!(cond))                                                                   \
            return mop_fail(MOP_E_INVALID_ARG, "aggregator: " #field " must be " text ", got %g", \
                            (double)p->field);                                         \
    } while (0)

static mop_status check_params(const mop_aggregator_params *p)
{
    if (p->strategy < MOP_AGG_FEDAVG || p->strategy > MOP_AGG_MOP_AWARE)
        return mop_fail(MOP_E_INVALID_ARG, "aggregator: unknown strategy %d", (int)p->strategy);
    /* written as !(ok) so that NaN fails */
    CHECK_RANGE(p->server_lr > 0.0f && isfinite(p->server_lr), server_lr, "finite and > 0");
    CHECK_RANGE(p->momentum >= 0.0f && p->momentum < 1.0f, momentum, "in [0, 1)");
    CHECK_RANGE(p->beta1 >= 0.0f && p->beta1 < 1.0f, beta1, "in [0, 1)");
    CHECK_RANGE(p->beta2 >= 0.0f && p->beta2 < 1.0f, beta2, "in [0, 1)");
    CHECK_RANGE(p->tau > 0.0f && isfinite(p->tau), tau, "finite and > 0");
    CHECK_RANGE(p->trim_ratio >= 0.0f && p->trim_ratio < 0.5f, trim_ratio, "in [0, 0.5)");
    CHECK_RANGE(p->krum_f >= 0, krum_f, ">= 0");
    CHECK_RANGE(p->multi_krum_m >= 0, multi_krum_m, ">= 0 (0 = n - f)");
    CHECK_RANGE(p->ties_density > 0.0f && p->ties_density <= 1.0f, ties_density, "in (0, 1]");
    CHECK_RANGE(p->dare_drop >= 0.0f && p->dare_drop < 1.0f, dare_drop, "in [0, 1)");
    CHECK_RANGE(p->crumbs_top >= 0.0f && p->crumbs_top < 1.0f, crumbs_top, "in [0, 1)");
    CHECK_RANGE(p->crumbs_bottom >= 0.0f && p->crumbs_bottom < 1.0f, crumbs_bottom, "in [0, 1)");
    if (!(p->crumbs_top + p->crumbs_bottom < 1.0f))
        return mop_fail(MOP_E_INVALID_ARG, "aggregator: crumbs_top + crumbs_bottom must be < 1, got %g + %g",
                        (double)p->crumbs_top, (double)p->crumbs_bottom);
    CHECK_RANGE(p->merge_lambda >= 0.0f && isfinite(p->merge_lambda), merge_lambda,
                "finite and >= 0 (0 = automatic)");
    return MOP_OK;
}

mop_status mop_aggregator_create(const mop_aggregator_params *params, mop_aggregator **out)
{
    MOP_CHECK_ARG(out != NULL);
    mop_aggregator_params p;
    aggregator_defaults(&p);
    if (params)
        MOP_READ_STRUCT("mop_aggregator_create", &p, params, AGGREGATOR_PARAMS_MIN);
    MOP_TRY(check_params(&p));
    mop_aggregator *a = mop_calloc(1, sizeof *a);
    if (!a)
        return mop_fail(MOP_E_NOMEM, "mop_aggregator_create: out of memory");
    a->p = p;
    a->lay.experts = -1;
    *out = a;
    return MOP_OK;
}

static void layout_free(layout *l)
{
    for (int32_t i = 0; i < l->n_slots; i++)
        mop_free(l->slots[i].name);
    mop_free(l->slots);
    memset(l, 0, sizeof *l);
    l->experts = -1;
}

static void round_clear(mop_aggregator *a)
{
    for (int32_t i = 0; i < a->n_updates && a->bufs; i++) {
        mop_free(a->bufs[i]);
        a->bufs[i] = NULL;
    }
    if (a->acc)
        memset(a->acc, 0, a->lay.total * sizeof *a->acc);
    if (a->wsum) {
        memset(a->wsum, 0, a->lay.n_groups * sizeof *a->wsum);
        memset(a->wfull, 0, a->lay.n_groups * sizeof *a->wfull);
    }
    a->n_updates = 0;
    a->n_samples_sum = 0.0;
}

void mop_aggregator_free(mop_aggregator *a)
{
    if (!a)
        return;
    round_clear(a);
    mop_free(a->bufs);
    mop_free(a->is_full);
    mop_free(a->client);
    mop_free(a->urnd);
    mop_free(a->acc);
    mop_free(a->wsum);
    mop_free(a->wfull);
    mop_free(a->st.m);
    mop_free(a->st.v);
    layout_free(&a->lay);
    mop_free(a);
}

int32_t mop_aggregator_count(const mop_aggregator *a)
{
    return a ? a->n_updates : 0;
}

static int same_shape(const slot *s, const fed_tensor *t)
{
    if (s->n_dims != t->n_dims)
        return 0;
    for (int32_t d = 0; d < s->n_dims; d++)
        if (s->dims[d] != t->dims[d])
            return 0;
    return 1;
}

static void shape_str(char *buf, size_t cap, int32_t n_dims, const int64_t *dims)
{
    size_t pos = 0;
    buf[0] = 0;
    for (int32_t d = 0; d < n_dims && pos < cap; d++)
        pos += (size_t)snprintf(buf + pos, cap - pos, d ? "x%lld" : "%lld", (long long)dims[d]);
}

/* The layout of @p u: its tensors except "gate.usage", in order. */
static mop_status layout_build(layout *l, const mop_update *u, int32_t strategy)
{
    memset(l, 0, sizeof *l);
    l->experts = -1;
    int32_t n = 0;
    for (int32_t i = 0; i < u->n_tensors; i++)
        n += strcmp(u->tensors[i].name, FED_USAGE_NAME) != 0;
    if (n == 0)
        return mop_fail(MOP_E_SHAPE, "aggregator: the first update holds no tensor to aggregate");
    l->slots = mop_calloc((size_t)n, sizeof *l->slots);
    if (!l->slots)
        return mop_fail(MOP_E_NOMEM, "aggregator: out of memory");
    for (int32_t i = 0; i < u->n_tensors; i++) {
        const fed_tensor *t = &u->tensors[i];
        if (strcmp(t->name, FED_USAGE_NAME) == 0)
            continue;
        slot *s = &l->slots[l->n_slots];
        s->name = mop_strdup(t->name);
        if (!s->name) {
            layout_free(l);
            return mop_fail(MOP_E_NOMEM, "aggregator: out of memory");
        }
        l->n_slots++;
        s->n_dims = t->n_dims;
        memcpy(s->dims, t->dims, sizeof s->dims);
        s->offset = l->total;
        s->size = (size_t)t->size;
        l->total += s->size;
        s->group_base = l->n_groups;
        s->group_size = s->size;
        if (strategy == MOP_AGG_MOP_AWARE && strcmp(t->name, "experts") == 0) {
            if (t->n_dims != 3) {
                char sh[96];
                shape_str(sh, sizeof sh, t->n_dims, t->dims);
                layout_free(l);
                return mop_fail(MOP_E_SHAPE, "aggregator (MoP-aware): tensor experts must be (K, P, d), got %s", sh);
            }
            l->experts = l->n_slots - 1;
            l->K = t->dims[0];
            s->group_size = s->size / (size_t)l->K;
        }
        l->n_groups += s->size / s->group_size;
    }
    if (strategy == MOP_AGG_MOP_AWARE && l->experts < 0) {
        layout_free(l);
        return mop_fail(MOP_E_SHAPE, "aggregator (MoP-aware): the update has no tensor \"experts\" (K, P, d)");
    }
    return MOP_OK;
}

/* @p u holds exactly the tensors of @p l (any order), plus "gate.usage" of K
 * non-negative floats when MoP-aware. */
static mop_status layout_check(const layout *l, const mop_update *u, int32_t strategy,
                               const float **usage)
{
    int32_t n = 0;
    for (int32_t i = 0; i < u->n_tensors; i++) {
        const fed_tensor *t = &u->tensors[i];
        if (strcmp(t->name, FED_USAGE_NAME) == 0)
            continue;
        n++;
        int32_t k = 0;
        while (k < l->n_slots && strcmp(l->slots[k].name, t->name) != 0)
            k++;
        if (k == l->n_slots)
            return mop_fail(MOP_E_SHAPE, "aggregator: update (client %llu) has tensor %s, which the round's first update lacks",
                            (unsigned long long)u->client_id, t->name);
        if (!same_shape(&l->slots[k], t)) {
            char want[96], got[96];
            shape_str(want, sizeof want, l->slots[k].n_dims, l->slots[k].dims);
            shape_str(got, sizeof got, t->n_dims, t->dims);
            return mop_fail(MOP_E_SHAPE, "aggregator: update (client %llu) tensor %s: expected %s, got %s",
                            (unsigned long long)u->client_id, t->name, want, got);
        }
    }
    if (n != l->n_slots) {
        for (int32_t k = 0; k < l->n_slots; k++)
            if (!fed_update_find(u, l->slots[k].name))
                return mop_fail(MOP_E_SHAPE, "aggregator: update (client %llu) lacks tensor %s",
                                (unsigned long long)u->client_id, l->slots[k].name);
    }
    *usage = NULL;
    if (strategy == MOP_AGG_MOP_AWARE) {
        const fed_tensor *t = fed_update_find(u, FED_USAGE_NAME);
        if (!t || t->size != l->K || t->n_dims != 1)
            return mop_fail(MOP_E_SHAPE, "aggregator (MoP-aware): update (client %llu) needs tensor %s of %lld floats%s",
                            (unsigned long long)u->client_id, FED_USAGE_NAME, (long long)l->K,
                            t ? " (shape differs)" : " (missing)");
        for (int64_t k = 0; k < l->K; k++)
            if (t->data[k] < 0.0f)
                return mop_fail(MOP_E_INVALID_ARG, "aggregator (MoP-aware): update (client %llu): gate.usage[%lld] = %g is negative",
                                (unsigned long long)u->client_id, (long long)k, (double)t->data[k]);
        *usage = t->data;
    }
    return MOP_OK;
}

/* Allocate the round's storage for the (new) layout. */
static mop_status round_alloc(mop_aggregator *a)
{
    const layout *l = &a->lay;
    if (is_streaming(a->p.strategy)) {
        a->acc = mop_calloc(l->total, sizeof *a->acc);
        a->wsum = mop_calloc(l->n_groups, sizeof *a->wsum);
        a->wfull = mop_calloc(l->n_groups, sizeof *a->wfull);
        if (!a->acc || !a->wsum || !a->wfull) {
            mop_free(a->acc);
            mop_free(a->wsum);
            mop_free(a->wfull);
            a->acc = a->wsum = a->wfull = NULL;
            return mop_fail(MOP_E_NOMEM, "aggregator: out of memory for %zu accumulators", l->total);
        }
    }
    return MOP_OK;
}

static mop_status grow_buffers(mop_aggregator *a)
{
    if (a->n_updates < a->cap)
        return MOP_OK;
    int32_t cap = a->cap ? 2 * a->cap : 8;
    float **b = mop_calloc((size_t)cap, sizeof *b);
    uint8_t *f = mop_calloc((size_t)cap, sizeof *f);
    uint64_t *c = mop_calloc((size_t)cap, sizeof *c);
    int64_t *r = mop_calloc((size_t)cap, sizeof *r);
    if (!b || !f || !c || !r) {
        mop_free(b);
        mop_free(f);
        mop_free(c);
        mop_free(r);
        return mop_fail(MOP_E_NOMEM, "aggregator: out of memory for %d updates", (int)cap);
    }
    if (a->n_updates) {
        memcpy(b, a->bufs, (size_t)a->n_updates * sizeof *b);
        memcpy(f, a->is_full, (size_t)a->n_updates * sizeof *f);
        memcpy(c, a->client, (size_t)a->n_updates * sizeof *c);
        memcpy(r, a->urnd, (size_t)a->n_updates * sizeof *r);
    }
    mop_free(a->bufs);
    mop_free(a->is_full);
    mop_free(a->client);
    mop_free(a->urnd);
    a->bufs = b, a->is_full = f, a->client = c, a->urnd = r;
    a->cap = cap;
    return MOP_OK;
}

mop_status mop_aggregator_add(mop_aggregator *a, const mop_update *u)
{
    MOP_CHECK_ARG(a != NULL);
    MOP_CHECK_ARG(u != NULL);
    const int32_t strategy = a->p.strategy;
    const float *usage = NULL;
    if (a->lay.n_slots == 0) {
        layout l;
        MOP_TRY(layout_build(&l, u, strategy));
        mop_status s = layout_check(&l, u, strategy, &usage);
        if (s != MOP_OK) {
            layout_free(&l);
            return s;
        }
        a->lay = l;
        s = round_alloc(a);
        if (s != MOP_OK) {
            layout_free(&a->lay);
            return s;
        }
    } else {
        MOP_TRY(layout_check(&a->lay, u, strategy, &usage));
    }
    const layout *l = &a->lay;
    const int full = u->kind == MOP_UPDATE_FULL;

    if (is_streaming(strategy)) {
        for (int32_t k = 0; k < l->n_slots; k++) {
            const slot *s = &l->slots[k];
            const float *x = fed_update_find(u, s->name)->data;
            for (size_t g = 0; g < s->size / s->group_size; g++) {
                double w = k == l->experts ? fed_mop_aware_row_weight(u->n_samples, usage, (int64_t)g)
                                           : u->n_samples;
                double *acc = a->acc + s->offset + g * s->group_size;
                const float *xg = x + g * s->group_size;
                for (size_t j = 0; j < s->group_size; j++)
                    acc[j] += w * xg[j];
                a->wsum[s->group_base + g] += w;
                if (full)
                    a->wfull[s->group_base + g] += w;
            }
        }
    } else {
        MOP_TRY(grow_buffers(a));
        float *buf = mop_alloc(l->total * sizeof *buf);
        if (!buf)
            return mop_fail(MOP_E_NOMEM, "aggregator: out of memory for a copy of %zu floats", l->total);
        for (int32_t k = 0; k < l->n_slots; k++) {
            const slot *s = &l->slots[k];
            memcpy(buf + s->offset, fed_update_find(u, s->name)->data, s->size * sizeof *buf);
        }
        a->bufs[a->n_updates] = buf;
        a->is_full[a->n_updates] = (uint8_t)full;
        a->client[a->n_updates] = u->client_id;
        a->urnd[a->n_updates] = u->round;
    }
    a->n_updates++;
    a->n_samples_sum += u->n_samples;
    return MOP_OK;
}

/* The conditions under which finish() cannot reduce the round. */
static mop_status check_round(const mop_aggregator *a)
{
    const int32_t n = a->n_updates, f = a->p.krum_f, s = a->p.strategy;
    if (n == 0)
        return mop_fail(MOP_E_STATE, "mop_aggregator_finish: no update in this round");
    if (is_streaming(s)) {
        for (int32_t k = 0; k < a->lay.n_slots; k++) {
            const slot *sl = &a->lay.slots[k];
            if (k == a->lay.experts)
                continue; /* an expert nobody used keeps its value */
            if (!(a->wsum[sl->group_base] > 0.0))
                return mop_fail(MOP_E_STATE, "mop_aggregator_finish: the %d updates of the round have n_samples summing to 0",
                                (int)n);
        }
    }
    if ((s == MOP_AGG_KRUM || s == MOP_AGG_MULTI_KRUM) && n < 2 * f + 3)
        return mop_fail(MOP_E_STATE, "mop_aggregator_finish: Krum with f = %d needs at least %d updates, got %d",
                        (int)f, 2 * f + 3, (int)n);
    if (s == MOP_AGG_MULTI_KRUM && a->p.multi_krum_m > n)
        return mop_fail(MOP_E_STATE, "mop_aggregator_finish: multi_krum_m = %d but only %d updates",
                        (int)a->p.multi_krum_m, (int)n);
    return MOP_OK;
}

/* DARE mask stream of one update: a function of (seed, round, client id). */
static void dare_rng(fed_rng *r, uint64_t seed, int64_t round, uint64_t client)
{
    uint64_t st = seed;
    uint64_t h = mop_splitmix64(&st) ^ (uint64_t)round;
    h = mop_splitmix64(&h) ^ client;
    mop_rng_seed(r, mop_splitmix64(&h));
}

/* Reduce the buffered round into delta (total). scratch as allocated by finish(). */
static void reduce_buffered(mop_aggregator *a, double *delta, void *scratch)
{
    const mop_aggregator_params *p = &a->p;
    const layout *l = &a->lay;
    const int32_t n = a->n_updates;
    const size_t total = l->total;
    float *const *d = a->bufs;
    const double lambda_sum = p->merge_lambda > 0.0f ? p->merge_lambda : 1.0 / n;
    switch (p->strategy) {
    case MOP_AGG_MEDIAN:
        fed_median(delta, d, n, total, scratch);
        break;
    case MOP_AGG_TRIMMED_MEAN:
        fed_trimmed_mean(delta, d, n, total, (int32_t)floor((double)p->trim_ratio * n), scratch);
        break;
    case MOP_AGG_KRUM:
    case MOP_AGG_MULTI_KRUM: {
        double *scores = scratch, *dist = scores + n, *sorted = dist + (size_t)n * n;
        int32_t *order = (int32_t *)(sorted + n);
        int32_t m = 1;
        if (p->strategy == MOP_AGG_MULTI_KRUM)
            m = p->multi_krum_m > 0 ? p->multi_krum_m : n - p->krum_f;
        fed_krum_scores(scores, d, n, total, p->krum_f, dist, sorted);
        fed_multi_krum(delta, d, scores, n, total, m, order);
        break;
    }
    case MOP_AGG_TASK_ARITHMETIC:
        fed_sum_scaled(delta, d, n, total, lambda_sum);
        break;
    case MOP_AGG_TIES:
        for (int32_t i = 0; i < n; i++)
            fed_ties_trim(d[i], total, p->ties_density, scratch);
        fed_ties_merge(delta, d, n, total, p->merge_lambda > 0.0f ? p->merge_lambda : 1.0);
        break;
    case MOP_AGG_DARE:
        for (int32_t i = 0; i < n; i++) {
            fed_rng r;
            dare_rng(&r, p->seed, a->urnd[i], a->client[i]);
            fed_dare_mask(d[i], total, p->dare_drop, &r);
        }
        fed_sum_scaled(delta, d, n, total, lambda_sum);
        break;
    case MOP_AGG_BREADCRUMBS:
        for (int32_t i = 0; i < n; i++)
            for (int32_t k = 0; k < l->n_slots; k++)
                fed_breadcrumbs_mask(d[i] + l->slots[k].offset, l->slots[k].size, p->crumbs_top,
                                     p->crumbs_bottom, scratch);
        fed_sum_scaled(delta, d, n, total, lambda_sum);
        break;
    default:
        break;
    }
}

/* Bytes of scratch reduce_buffered() needs. */
static size_t scratch_bytes(const mop_aggregator *a)
{
    const size_t n = (size_t)a->n_updates, total = a->lay.total;
    switch (a->p.strategy) {
    case MOP_AGG_MEDIAN:
    case MOP_AGG_TRIMMED_MEAN:
        return n * sizeof(float);
    case MOP_AGG_KRUM:
    case MOP_AGG_MULTI_KRUM:
        return (2 * n + n * n) * sizeof(double) + n * sizeof(int32_t);
    case MOP_AGG_TIES:
    case MOP_AGG_BREADCRUMBS:
        return 2 * total * sizeof(int64_t);
    default:
        return 0;
    }
}

mop_status mop_aggregator_finish(mop_aggregator *a, const mop_update *global,
                                 mop_update **next_global)
{
    MOP_CHECK_ARG(a != NULL);
    MOP_CHECK_ARG(global != NULL);
    MOP_CHECK_ARG(next_global != NULL);
    if (global->kind != MOP_UPDATE_FULL)
        return mop_fail(MOP_E_INVALID_ARG, "mop_aggregator_finish: global must be a FULL update (current values)");
    MOP_TRY(check_round(a));
    const layout *l = &a->lay;
    const mop_aggregator_params *p = &a->p;
    for (int32_t k = 0; k < l->n_slots; k++) {
        const fed_tensor *t = fed_update_find(global, l->slots[k].name);
        if (!t)
            return mop_fail(MOP_E_SHAPE, "mop_aggregator_finish: global lacks tensor %s", l->slots[k].name);
        if (!same_shape(&l->slots[k], t)) {
            char want[96], got[96];
            shape_str(want, sizeof want, l->slots[k].n_dims, l->slots[k].dims);
            shape_str(got, sizeof got, t->n_dims, t->dims);
            return mop_fail(MOP_E_SHAPE, "mop_aggregator_finish: global tensor %s: expected %s, got %s",
                            l->slots[k].name, want, got);
        }
    }

    /* every allocation first: past this block nothing can fail */
    const size_t total = l->total;
    const int optimizer = p->strategy >= MOP_AGG_FEDAVGM && p->strategy <= MOP_AGG_FEDADAGRAD;
    const int adaptive = optimizer && p->strategy != MOP_AGG_FEDAVGM;
    float *flat = mop_alloc(total * sizeof *flat);
    double *delta = mop_alloc(total * sizeof *delta);
    size_t sb = scratch_bytes(a);
    void *scratch = sb ? mop_alloc(sb) : NULL;
    double *m = optimizer && !a->st.m ? mop_calloc(total, sizeof *m) : NULL;
    double *v = adaptive && !a->st.v ? mop_alloc(total * sizeof *v) : NULL;
    mop_update *next = NULL;
    mop_status s = mop_update_create(MOP_UPDATE_FULL, global->round + 1, 0, a->n_samples_sum, &next);
    for (int32_t i = 0; i < global->n_tensors && s == MOP_OK; i++) {
        const fed_tensor *t = &global->tensors[i];
        s = mop_update_add_tensor(next, t->name, t->data, t->n_dims, t->dims);
    }
    if (s == MOP_OK && (!flat || !delta || (sb && !scratch) || (optimizer && !a->st.m && !m) ||
                        (adaptive && !a->st.v && !v)))
        s = mop_fail(MOP_E_NOMEM, "mop_aggregator_finish: out of memory for %zu parameters", total);
    if (s != MOP_OK) {
        mop_free(flat);
        mop_free(delta);
        mop_free(scratch);
        mop_free(m);
        mop_free(v);
        mop_update_free(next);
        return s;
    }
    if (m)
        a->st.m = m;
    if (v) {
        for (size_t i = 0; i < total; i++)
            v[i] = (double)p->tau * p->tau;
        a->st.v = v;
    }

    /* the global values in layout order */
    for (int32_t k = 0; k < l->n_slots; k++)
        memcpy(flat + l->slots[k].offset, fed_update_find(global, l->slots[k].name)->data,
               l->slots[k].size * sizeof *flat);

    if (is_streaming(p->strategy)) {
        /* Δ̄ = (Σ w x − Σ_FULL w · g) / Σ w, per group */
        for (int32_t k = 0; k < l->n_slots; k++) {
            const slot *sl = &l->slots[k];
            for (size_t g = 0; g < sl->size / sl->group_size; g++) {
                double ws = a->wsum[sl->group_base + g], wf = a->wfull[sl->group_base + g];
                size_t o = sl->offset + g * sl->group_size;
                for (size_t j = 0; j < sl->group_size; j++)
                    delta[o + j] = ws > 0.0 ? (a->acc[o + j] - wf * flat[o + j]) / ws : 0.0;
            }
        }
    } else {
        for (int32_t i = 0; i < a->n_updates; i++)
            if (a->is_full[i])
                for (size_t j = 0; j < total; j++)
                    a->bufs[i][j] -= flat[j];
        reduce_buffered(a, delta, scratch);
    }

    fed_server_step(flat, flat, delta, total, p, &a->st);
    for (int32_t k = 0; k < l->n_slots; k++) {
        fed_tensor *t = (fed_tensor *)fed_update_find(next, l->slots[k].name);
        memcpy(t->data, flat + l->slots[k].offset, l->slots[k].size * sizeof *flat);
    }
    mop_free(flat);
    mop_free(delta);
    mop_free(scratch);
    round_clear(a);
    *next_global = next;
    return MOP_OK;
}
