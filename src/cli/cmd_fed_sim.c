/* mop fed-sim MODEL --data FILE --val FILE: federated training of a prompt
 * mixture, simulated in one process (clients run one after the other).
 *
 * One round: every client copies the global mixture (a FULL update applied
 * to its own mixture), takes S AdamW steps on its partition, and sends the
 * DELTA with its mean gate weights ("gate.usage"); optionally clipped and
 * noised (local DP), poisoned (the first M clients) and masked (secure
 * aggregation). The server aggregates with the chosen rule and applies the
 * next global values. examples/fed_mpi.c runs the same logic over MPI and
 * gives the same numbers with --split iid (docs/FEDERATED.md, "Simulation"). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_common.h"
#include "cli_data.h"
#include "cli_gate.h"

typedef struct fed_opts {
    const char *data, *val, *out, *csv, *strategy, *split, *baseline, *attack, *system;
    const char *nb_mode;          /* --norm-bound-mode clip | reject */
    float nb_max, nb_median_x;    /* --norm-bound, --norm-bound-median-x; 0 = off */
    mop_norm_bound_params nbp;    /* filled from the three when nb_on */
    int32_t nb_on;
    int32_t template_system;
    int32_t n_clients, rounds, local_steps, K, P, B, max_len, n_threads, malicious, krum_f;
    int32_t secure_agg, split_kind; /* 0 skewed, 1 iid, 2 dirichlet */
    int32_t secagg_new, secagg_t;   /* --secagg (--secure-agg: its old name), --secagg-threshold */
    float secagg_dropout;           /* --secagg-dropout F */
    int32_t pretrain_epochs, pretrain_rounds, no_pretrain, n_shared, gate_layer, inject_layer;
    float gate_lr, gate_clip, pretrain_lr;
    float alpha, lr, skew_ratio, prox_mu, dp_clip, dp_noise, dp_delta, server_lr, trim_ratio;
    uint64_t seed;
} fed_opts;

static const struct {
    const char *name;
    int32_t id;
} strategies[] = {
    {"fedavg", MOP_AGG_FEDAVG},         {"fedavgm", MOP_AGG_FEDAVGM},
    {"fedadam", MOP_AGG_FEDADAM},       {"fedyogi", MOP_AGG_FEDYOGI},
    {"fedadagrad", MOP_AGG_FEDADAGRAD}, {"median", MOP_AGG_MEDIAN},
    {"trimmed_mean", MOP_AGG_TRIMMED_MEAN}, {"krum", MOP_AGG_KRUM},
    {"multi_krum", MOP_AGG_MULTI_KRUM}, {"task_arithmetic", MOP_AGG_TASK_ARITHMETIC},
    {"ties", MOP_AGG_TIES},             {"dare", MOP_AGG_DARE},
    {"breadcrumbs", MOP_AGG_BREADCRUMBS}, {"mop_aware", MOP_AGG_MOP_AWARE},
};
#define N_STRATEGIES ((int32_t)(sizeof strategies / sizeof strategies[0]))

/* Strategy id of `s` (any case), or -1. The names are the C enum's
 * (MOP_AGG_TRIMMED_MEAN: trimmed_mean), as in Python and Flower; the old
 * spellings with '-' for '_' still match, *deprecated is then set to 1. */
static int32_t strategy_id_dep(const char *s, int *deprecated)
{
    for (int32_t i = 0; i < N_STRATEGIES; i++) {
        const char *a = strategies[i].name, *b = s;
        int dashed = 0;
        while (*a && *b && (*a == tolower((unsigned char)*b) || (*a == '_' && *b == '-'))) {
            dashed |= *b == '-';
            a++, b++;
        }
        if (!*a && !*b) {
            if (deprecated)
                *deprecated = dashed;
            return strategies[i].id;
        }
    }
    return -1;
}

static int32_t strategy_id(const char *s)
{
    return strategy_id_dep(s, NULL);
}

static int is_fedavg_family(int32_t id)
{
    return id <= MOP_AGG_FEDADAGRAD;
}

/* Seed of one (round, client, purpose): the same formula in examples/fed_mpi.c. */
static uint64_t client_seed(uint64_t seed, int64_t round, int32_t client, uint64_t salt)
{
    uint64_t s = seed + 1000003ull * (uint64_t)round + 7919ull * (uint64_t)client + salt;
    uint64_t r = cli_rand(&s);
    return r ? r : 1; /* 0 would mean "OS randomness" to mop_update_add_noise */
}

/* Everything a round needs. */
typedef struct fed_state {
    const fed_opts *o;
    const cli_dataset *ds, *val;
    mop_ctx *ctx;
    mop_mixture *global, *local;
    int32_t K, learned_gate, need_usage;
    cli_batch cb;
    int32_t *client_of;      /* (ds->n) */
    size_t **members;        /* (n_clients) example indices of each client, dataset order */
    size_t *n_members;       /* (n_clients) */
    size_t *order, *idx;     /* scratch: (ds->n), (B) */
    float *usage, *w;        /* (K), (B, K) */
    size_t n_opt;            /* floats before the gate slice ("gate.*"): the experts */
    mop_optimizer **opt;     /* (n_clients) each client's experts AdamW, kept across rounds */
    mop_optimizer **opt_gate; /* (n_clients) each client's gate AdamW, kept across rounds */
} fed_state;


/* Client c's optimizers, created on its first round and kept afterwards: its
 * AdamW moments and step count persist from round to round (the parameters
 * come from the server every round). A fresh optimizer each round would make
 * every round's first step lr*sign(g) on every weight. */
static int client_optimizers(fed_state *fs, int32_t c, size_t n)
{
    const fed_opts *o = fs->o;
    mop_status st = MOP_OK;
    if (!fs->opt[c]) {
        mop_adamw_params ap;
        mop_adamw_params_init(&ap);
        ap.lr = o->lr;
        st = mop_optimizer_create(fs->n_opt, &ap, &fs->opt[c]);
    }
    if (st == MOP_OK && !fs->opt_gate[c] && fs->n_opt < n) {
        mop_adamw_params ap;
        mop_adamw_params_init(&ap);
        ap.lr = o->gate_lr;
        ap.clip_norm = o->gate_clip;
        st = mop_optimizer_create(n - fs->n_opt, &ap, &fs->opt_gate[c]);
    }
    return st == MOP_OK ? CLI_OK : cli_fail(st, "cannot create client %d's optimizer", (int)c);
}

/* Local training of client c from the global values `gu` (FULL): S AdamW
 * steps on batches of its shuffled examples (cycling), then the mean gate
 * weights over all its examples. */
static int client_train(fed_state *fs, const mop_update *gu, int64_t round, int32_t c,
                        double *loss_mean)
{
    const fed_opts *o = fs->o;
    size_t n_c = fs->n_members[c];
    mop_status st = mop_update_apply(gu, fs->local, 1.0f);
    if (st != MOP_OK)
        return cli_fail(st, "client %d: cannot copy the global mixture", (int)c);
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    lp.prox_mu = o->prox_mu;
    if (o->prox_mu > 0.0f && (st = mop_mixture_set_prox_reference(fs->local)) != MOP_OK)
        return cli_fail(st, "client %d: cannot set the FedProx reference", (int)c);

    memcpy(fs->order, fs->members[c], n_c * sizeof *fs->order);
    uint64_t rng = client_seed(o->seed, round, c, 1);
    cli_shuffle(fs->order, n_c, &rng);

    float *params, *grads;
    size_t n;
    if ((st = mop_mixture_data(fs->local, &params, &grads, &n)) != MOP_OK)
        return cli_fail(st, "cannot access the client mixture");
    if (client_optimizers(fs, c, n) != CLI_OK)
        return CLI_ERROR;
    mop_optimizer *opt = fs->opt[c], *opt_gate = fs->opt_gate[c];
    int32_t B = (size_t)o->B < n_c ? o->B : (int32_t)n_c;
    double loss = 0.0;
    for (int32_t s = 0; s < o->local_steps; s++) {
        for (int32_t b = 0; b < B; b++)
            fs->idx[b] = fs->order[((size_t)s * (size_t)B + (size_t)b) % n_c];
        cli_batch_fill(&fs->cb, fs->ds, fs->idx, B);
        mop_loss_result res;
        memset(&res, 0, sizeof res);
        res.struct_size = sizeof res;
        mop_mixture_zero_grad(fs->local);
        st = mop_mixture_forward_backward(fs->ctx, fs->local, &fs->cb.b, &lp, &res);
        if (st == MOP_OK)
            st = mop_optimizer_step(opt, params, grads, fs->n_opt, 1.0f, NULL, NULL);
        if (st == MOP_OK && opt_gate)
            st = mop_optimizer_step(opt_gate, params + fs->n_opt, grads + fs->n_opt,
                                    n - fs->n_opt, 1.0f, NULL, NULL);
        if (st != MOP_OK) {
            return cli_fail(st, "round %d, client %d: local step %d failed", (int)round + 1,
                            (int)c, (int)s + 1);
        }
        loss += res.loss;
    }
    *loss_mean = loss / o->local_steps;

    /* gate usage: mean gate weights over the client's examples (only
     * mop-aware reads it: the other rules skip the extra gate passes) */
    for (int32_t k = 0; k < fs->K; k++)
        fs->usage[k] = 1.0f / (float)fs->K;
    if (!fs->learned_gate || !fs->need_usage)
        return CLI_OK;
    double *acc = calloc((size_t)fs->K, sizeof *acc);
    if (!acc)
        return cli_error("out of memory");
    for (size_t first = 0; first < n_c; first += (size_t)B) {
        int32_t nb = n_c - first < (size_t)B ? (int32_t)(n_c - first) : B;
        cli_batch_fill(&fs->cb, fs->ds, fs->members[c] + first, nb);
        if ((st = mop_mixture_gate(fs->ctx, fs->local, &fs->cb.b, fs->w)) != MOP_OK) {
            free(acc);
            return cli_fail(st, "client %d: gate weights failed", (int)c);
        }
        for (int32_t b = 0; b < nb; b++)
            for (int32_t k = 0; k < fs->K; k++)
                acc[k] += fs->w[(size_t)b * fs->K + k];
    }
    for (int32_t k = 0; k < fs->K; k++)
        fs->usage[k] = (float)(acc[k] / (double)n_c);
    free(acc);
    return CLI_OK;
}

/* What a malicious client sends instead of its delta: −5·Δ (sign-flip) or
 * N(0, 10²) in every value (noise). "gate.usage" is left alone. */
static int poison(mop_update *u, const char *attack, uint64_t seed)
{
    int flip = strcmp(attack, "sign-flip") == 0;
    for (int32_t i = 0; i < mop_update_tensor_count(u); i++) {
        mop_update_tensor_info ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        mop_status st = mop_update_get_tensor(u, i, NULL, &ti);
        if (st != MOP_OK)
            return cli_fail(st, "cannot read an update tensor");
        if (strcmp(ti.name, "gate.usage") == 0)
            continue;
        for (int64_t j = 0; j < ti.size; j++)
            ti.data[j] = flip ? -5.0f * ti.data[j] : 0.0f;
    }
    mop_status st = flip ? MOP_OK : mop_update_add_noise(u, 10.0f, seed);
    return st == MOP_OK ? CLI_OK : cli_fail(st, "cannot add the attack noise");
}

/* Secure aggregation of one round: the clients' handles and the server's. */
typedef struct fed_secagg {
    mop_secagg_params sp;
    mop_secagg_client **clients; /* (n_clients) */
    mop_secagg_server *server;
    float *vec;                  /* (length) n_i·Δ_i flattened, then n_i */
    uint8_t *blob;
    size_t blob_cap;
} fed_secagg;

static void secagg_free(fed_secagg *sa, int32_t n_clients)
{
    if (sa->clients)
        for (int32_t c = 0; c < n_clients; c++)
            mop_secagg_client_free(sa->clients[c]);
    free(sa->clients);
    mop_secagg_server_free(sa->server);
    free(sa->vec);
    free(sa->blob);
    memset(sa, 0, sizeof *sa);
}

/* Steps 1-2 of the protocol: key pairs, public keys to everyone. The vector
 * of each client is its n_i-weighted delta followed by n_i, so the server
 * learns only Σ n_i Δ_i and Σ n_i: weighted FedAvg without seeing a delta. */
static int secagg_begin_v(fed_secagg *sa, int32_t n_clients, int64_t round, int64_t length,
                          float scale, float clip_range)
{
    memset(sa, 0, sizeof *sa);
    mop_secagg_params_init(&sa->sp);
    sa->sp.n_clients = n_clients;
    sa->sp.round = round;
    sa->sp.length = length;
    sa->sp.scale = scale;
    sa->sp.clip_range = clip_range;
    sa->clients = calloc((size_t)n_clients, sizeof *sa->clients);
    sa->vec = malloc((size_t)sa->sp.length * sizeof *sa->vec);
    uint8_t *keys = malloc((size_t)n_clients * MOP_SECAGG_KEY_BYTES);
    int rc = CLI_ERROR;
    if (!sa->clients || !sa->vec || !keys) {
        cli_error("out of memory");
        goto out;
    }
    mop_status st = mop_secagg_server_create(&sa->sp, &sa->server);
    for (int32_t c = 0; st == MOP_OK && c < n_clients; c++) {
        st = mop_secagg_client_create(&sa->sp, c, &sa->clients[c]);
        if (st == MOP_OK)
            st = mop_secagg_client_public_key(sa->clients[c], keys + (size_t)c * MOP_SECAGG_KEY_BYTES);
    }
    for (int32_t c = 0; st == MOP_OK && c < n_clients; c++)
        st = mop_secagg_client_set_peer_keys(sa->clients[c], keys,
                                             (size_t)n_clients * MOP_SECAGG_KEY_BYTES);
    if (st == MOP_OK)
        st = mop_secagg_client_mask(sa->clients[0], NULL, sa->sp.length, NULL, 0, &sa->blob_cap);
    if (st != MOP_OK) {
        cli_fail(st, "secure aggregation setup failed");
        goto out;
    }
    if (!(sa->blob = malloc(sa->blob_cap))) {
        cli_error("out of memory");
        goto out;
    }
    rc = CLI_OK;
out:
    free(keys);
    return rc;
}

/* One secure sum of a `length`-float vector per client: fill(user, c, vec)
 * writes client c's vector (every value must lie in [-clip, clip], checked
 * here: the protocol would clip silently), the server learns only the sum,
 * written to sum (length floats). Fixed point x -> round(x*scale). */
typedef int (*secure_fill_fn)(void *user, int32_t c, float *vec);

static int secure_sum(int32_t n_clients, int64_t round, int64_t length, float scale, float clip,
                      secure_fill_fn fill, void *user, float *sum)
{
    fed_secagg sa;
    if (secagg_begin_v(&sa, n_clients, round, length, scale, clip) != CLI_OK) {
        secagg_free(&sa, n_clients);
        return CLI_ERROR;
    }
    int rc = CLI_ERROR;
    mop_status st = MOP_OK;
    for (int32_t c = 0; c < n_clients; c++) {
        if (fill(user, c, sa.vec) != CLI_OK)
            goto out;
        for (int64_t j = 0; j < length; j++)
            if (!(fabsf(sa.vec[j]) <= clip)) {
                cli_error("secure aggregation: client %d's value %g is outside the fixed-point "
                          "range +-%g", (int)c, (double)sa.vec[j], (double)clip);
                goto out;
            }
        size_t n_blob = 0;
        st = mop_secagg_client_mask(sa.clients[c], sa.vec, length, sa.blob, sa.blob_cap, &n_blob);
        if (st == MOP_OK)
            st = mop_secagg_server_add_masked(sa.server, sa.blob, n_blob);
        if (st != MOP_OK) {
            cli_fail(st, "secure aggregation: client %d", (int)c);
            goto out;
        }
    }
    if ((st = mop_secagg_server_finish(sa.server, sum, length, NULL, NULL)) != MOP_OK) {
        cli_fail(st, "secure aggregation: the server cannot decode the sum");
        goto out;
    }
    rc = CLI_OK;
out:
    secagg_free(&sa, n_clients);
    return rc;
}

/* ---- Secure aggregation with dropout recovery (mop_secagg2_*), one round ----
 * The clients' vectors are n_i·Δ_i followed by n_i (as above). drop[c] is
 * the stage at which client c stops answering this round: 0 before
 * advertising its keys, 1 before sharing them, 2 before its masked input,
 * 3 before the unmasking answer, 4 never. */
typedef struct fed_sa2 {
    mop_secagg_params sp;
    mop_secagg2_client **clients; /* (n) */
    mop_secagg2_server *server;
    int32_t n;
    int *drop;                    /* (n) */
    float *vec;                   /* (length) */
    uint8_t *msg;                 /* copy of the server's message for one client */
    size_t msg_cap;
} fed_sa2;

static void sa2_free(fed_sa2 *sa)
{
    if (sa->clients)
        for (int32_t c = 0; c < sa->n; c++)
            mop_secagg2_client_free(sa->clients[c]);
    free(sa->clients);
    mop_secagg2_server_free(sa->server);
    free(sa->vec);
    free(sa->msg);
    memset(sa, 0, sizeof *sa);
}

/* Client c's answer to the server's message for it (none at stage 0),
 * received by the server. x: the input at the masked-input stage. */
static mop_status sa2_exchange(fed_sa2 *sa, int32_t c, int stage, const float *x)
{
    const uint8_t *in = NULL, *out = NULL;
    size_t n_in = 0, n_out = 0;
    mop_status st = MOP_OK;
    if (stage > 0) {
        if ((st = mop_secagg2_server_message(sa->server, c, &in, &n_in)) != MOP_OK)
            return st;
        if (n_in > sa->msg_cap) {
            uint8_t *q = realloc(sa->msg, n_in);
            if (!q)
                return MOP_E_NOMEM;
            sa->msg = q;
            sa->msg_cap = n_in;
        }
        memcpy(sa->msg, in, n_in);
    }
    st = mop_secagg2_client_step(sa->clients[c], stage > 0 ? sa->msg : NULL, n_in, x,
                                 x ? sa->sp.length : 0, &out, &n_out);
    if (st == MOP_OK)
        st = mop_secagg2_server_receive(sa->server, out, n_out);
    return st;
}

/* Every client still in at stage k answers; the server closes the stage. */
static int sa2_stage(fed_sa2 *sa, int k)
{
    for (int32_t c = 0; c < sa->n; c++) {
        if (sa->drop[c] <= k)
            continue;
        mop_status st = sa2_exchange(sa, c, k, NULL);
        if (st != MOP_OK)
            return cli_fail(st, "secure aggregation: client %d", (int)c);
    }
    mop_status st = mop_secagg2_server_advance(sa->server);
    return st == MOP_OK ? CLI_OK : cli_fail(st, "secure aggregation: the server cannot go on");
}

/* Stages advertise and share keys. */
static int sa2_begin(fed_sa2 *sa, int32_t n, int64_t round, int64_t n_floats, int32_t t,
                     int *drop)
{
    memset(sa, 0, sizeof *sa);
    mop_secagg_params_init(&sa->sp);
    sa->sp.n_clients = n;
    sa->sp.round = round;
    sa->sp.length = n_floats + 1;
    sa->sp.scale = 4294967296.0f; /* as the simplified protocol: 2^32, range 2^20 */
    sa->sp.clip_range = 1048576.0f;
    sa->sp.min_survivors = t;
    sa->n = n;
    sa->drop = drop;
    sa->clients = calloc((size_t)n, sizeof *sa->clients);
    sa->vec = malloc((size_t)sa->sp.length * sizeof *sa->vec);
    if (!sa->clients || !sa->vec)
        return cli_error("out of memory");
    mop_status st = mop_secagg2_server_create(&sa->sp, &sa->server);
    for (int32_t c = 0; st == MOP_OK && c < n; c++)
        st = mop_secagg2_client_create(&sa->sp, c, &sa->clients[c]);
    if (st != MOP_OK)
        return cli_fail(st, "secure aggregation setup failed");
    if (sa2_stage(sa, 0) != CLI_OK || sa2_stage(sa, 1) != CLI_OK)
        return CLI_ERROR;
    return CLI_OK;
}

/* Stage masked input for client c (u NULL: a client without data sends 0). */
static int sa2_send(fed_sa2 *sa, int32_t c, const mop_update *u, const mop_update *gu, double n_c)
{
    int64_t pos = 0;
    for (int32_t i = 0; i < mop_update_tensor_count(gu); i++) {
        mop_update_tensor_info gi, ti;
        memset(&gi, 0, sizeof gi);
        gi.struct_size = sizeof gi;
        ti = gi;
        mop_status st = mop_update_get_tensor(gu, i, NULL, &gi);
        if (st == MOP_OK && u)
            st = mop_update_get_tensor(u, -1, gi.name, &ti);
        if (st != MOP_OK)
            return cli_fail(st, "secure aggregation: client %d", (int)c);
        for (int64_t j = 0; j < gi.size; j++)
            sa->vec[pos + j] = u ? (float)(n_c * (double)ti.data[j]) : 0.0f;
        pos += gi.size;
    }
    sa->vec[pos] = (float)n_c;
    mop_status st = sa2_exchange(sa, c, 2, sa->vec);
    return st == MOP_OK ? CLI_OK : cli_fail(st, "secure aggregation: client %d", (int)c);
}

/* Close the masked-input stage, run the unmasking, decode Σ n_i Δ_i / Σ n_i
 * into one DELTA update of weight Σ n_i (as secagg_finish()). */
static int sa2_finish(fed_sa2 *sa, const mop_update *gu, int64_t round, mop_update **out)
{
    mop_status st = mop_secagg2_server_advance(sa->server);
    if (st != MOP_OK)
        return cli_fail(st, "secure aggregation: the server cannot go on");
    if (sa2_stage(sa, 3) != CLI_OK)
        return CLI_ERROR;
    int32_t n_inc = 0;
    int counts[4] = {0, 0, 0, 0};
    for (int32_t c = 0; c < sa->n; c++)
        for (int k = 0; k < 4; k++)
            counts[k] += sa->drop[c] > k;
    if ((st = mop_secagg2_server_result(sa->server, sa->vec, sa->sp.length, NULL, &n_inc)) != MOP_OK)
        return cli_fail(st, "secure aggregation: no result");
    printf("round %d: secure aggregation (t = %d of %d): %d advertised keys, %d shared them, "
           "%d masked inputs in the sum, %d answered the unmasking\n", (int)round + 1,
           (int)sa->sp.min_survivors, (int)sa->n, counts[0], counts[1], (int)n_inc, counts[3]);
    fflush(stdout);
    double total = sa->vec[sa->sp.length - 1];
    if (!(total > 0.5))
        return cli_error("secure aggregation: the clients' total sample count is %g", total);
    if ((st = mop_update_create(MOP_UPDATE_DELTA, round, 0, floor(total + 0.5), out)) != MOP_OK)
        return cli_fail(st, "cannot create the aggregate update");
    int64_t pos = 0;
    for (int32_t i = 0; i < mop_update_tensor_count(gu); i++) {
        mop_update_tensor_info gi;
        memset(&gi, 0, sizeof gi);
        gi.struct_size = sizeof gi;
        st = mop_update_get_tensor(gu, i, NULL, &gi);
        for (int64_t j = 0; st == MOP_OK && j < gi.size; j++)
            sa->vec[pos + j] = (float)((double)sa->vec[pos + j] / total);
        if (st == MOP_OK)
            st = mop_update_add_tensor(*out, gi.name, sa->vec + pos, gi.n_dims, gi.dims);
        if (st != MOP_OK) {
            mop_update_free(*out);
            *out = NULL;
            return cli_fail(st, "cannot build the aggregate update");
        }
        pos += gi.size;
    }
    return CLI_OK;
}

/* This round's dropouts: floor(F·N) clients drawn by the seed, the i-th of
 * them at stage (i + round) mod 4. drop[c] = 4 for the others. */
static void dropout_plan(int *drop, int32_t n, float frac, uint64_t seed, int32_t round)
{
    for (int32_t c = 0; c < n; c++)
        drop[c] = 4;
    int32_t k = (int32_t)floor((double)frac * n + 1e-9);
    uint64_t s = client_seed(seed, round, 0, 5);
    int32_t *order = malloc((size_t)n * sizeof *order);
    if (!order)
        return;
    for (int32_t c = 0; c < n; c++)
        order[c] = c;
    for (int32_t c = n - 1; c > 0; c--) { /* Fisher-Yates */
        int32_t j = (int32_t)(cli_rand(&s) % (uint64_t)(c + 1));
        int32_t tmp = order[c];
        order[c] = order[j];
        order[j] = tmp;
    }
    for (int32_t i = 0; i < k; i++)
        drop[order[i]] = (int)((i + round) % 4);
    free(order);
}

/* Bound the norms of the round's n updates, print what happened, add the
 * kept ones to the aggregator and free all of them (ups[] is left NULL). */
static int norm_bound_round(mop_aggregator *agg, const mop_norm_bound_params *nbp,
                            mop_update **ups, int32_t n, int32_t r)
{
    uint8_t *keep = malloc((size_t)n);
    float *norms = malloc((size_t)n * sizeof *norms);
    float bound = 0.0f;
    int rc = CLI_ERROR;
    mop_status st;
    if (!keep || !norms) {
        cli_error("out of memory");
        goto out;
    }
    if ((st = mop_update_norm_bound(ups, n, nbp, keep, norms, &bound)) != MOP_OK) {
        cli_fail(st, "round %d: norm bound", (int)r + 1);
        goto out;
    }
    int32_t n_over = 0, n_kept = 0;
    for (int32_t i = 0; i < n; i++) {
        n_over += norms[i] > bound;
        n_kept += keep[i];
    }
    printf("round %d: norm bound %.6g (%s): update norms", (int)r + 1, (double)bound,
           nbp->mode == MOP_NORM_BOUND_CLIP ? "clip" : "reject");
    for (int32_t i = 0; i < n; i++)
        printf(" %.4g", (double)norms[i]);
    printf("; %d above the bound, %d of %d aggregated\n", (int)n_over, (int)n_kept, (int)n);
    fflush(stdout);
    if (n_kept == 0) {
        cli_error("round %d: the norm bound %g rejected every update", (int)r + 1, (double)bound);
        goto out;
    }
    for (int32_t i = 0; i < n; i++)
        if (keep[i] && (st = mop_aggregator_add(agg, ups[i])) != MOP_OK) {
            cli_fail(st, "round %d: the server rejected an update", (int)r + 1);
            goto out;
        }
    rc = CLI_OK;
out:
    for (int32_t i = 0; i < n; i++) {
        mop_update_free(ups[i]);
        ups[i] = NULL;
    }
    free(keep);
    free(norms);
    return rc;
}

static int validate(fed_state *fs, double *ppl)
{
    double nll;
    int64_t count;
    if (cli_evaluate(fs->ctx, fs->global, fs->val, &fs->cb, fs->o->B, NULL, NULL, NULL, &nll,
                     &count) != CLI_OK)
        return CLI_ERROR;
    *ppl = exp(nll / (double)count);
    return CLI_OK;
}

/* Assign the training examples to clients and list each client's examples. */
static int partition(fed_state *fs)
{
    const fed_opts *o = fs->o;
    size_t n = fs->ds->n;
    int32_t N = o->n_clients;
    int32_t *task = malloc(n * sizeof *task);
    fs->client_of = malloc(n * sizeof *fs->client_of);
    fs->members = calloc((size_t)N, sizeof *fs->members);
    fs->n_members = calloc((size_t)N, sizeof *fs->n_members);
    if (!task || !fs->client_of || !fs->members || !fs->n_members) {
        free(task);
        return cli_error("out of memory");
    }
    for (size_t i = 0; i < n; i++)
        task[i] = fs->ds->ex[i].task;
    mop_status st;
    if (o->split_kind == 0)
        st = mop_partition_skewed(task, (int64_t)n, N, o->skew_ratio, o->seed, fs->client_of);
    else if (o->split_kind == 1)
        st = mop_partition_iid((int64_t)n, N, o->seed, fs->client_of);
    else
        st = mop_partition_dirichlet(task, (int64_t)n, N, o->alpha, o->seed, fs->client_of);
    free(task);
    if (st != MOP_OK)
        return cli_fail(st, "cannot split %zu examples of '%s' over %d clients", n, o->data, (int)N);
    for (size_t i = 0; i < n; i++)
        fs->n_members[fs->client_of[i]]++;
    for (int32_t c = 0; c < N; c++)
        if (!(fs->members[c] = malloc((fs->n_members[c] ? fs->n_members[c] : 1) * sizeof(size_t))))
            return cli_error("out of memory");
    memset(fs->n_members, 0, (size_t)N * sizeof *fs->n_members);
    for (size_t i = 0; i < n; i++) {
        int32_t c = fs->client_of[i];
        fs->members[c][fs->n_members[c]++] = i;
    }
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */
/* Before round 1: the gate's input statistics from the clients' moments, then
 * per-client gate pre-training averaged by the server. */

typedef struct fed_prep {
    fed_state *fs;
    float **u;          /* (n_clients) client c's raw gate inputs (n_c, d) */
    int32_t d;
    const double *mean; /* (d) stage 2 of the secure statistics: the global mean */
    const float *theta; /* (n_clients, g) pre-trained gate slices */
    size_t g;
} fed_prep;

/* Secure statistics, stage 1: [n_c, Σu (d)]. */
static int fill_moments1(void *user, int32_t c, float *vec)
{
    fed_prep *p = user;
    size_t n_c = p->fs->n_members[c];
    double *s = calloc((size_t)p->d * 2, sizeof *s);
    if (!s)
        return cli_error("out of memory");
    mop_status st = mop_mixture_input_moments(p->u[c], (int32_t)n_c, p->d, s, s + p->d);
    vec[0] = (float)n_c;
    for (int32_t j = 0; j < p->d; j++)
        vec[1 + j] = (float)s[j];
    free(s);
    return st == MOP_OK ? CLI_OK : cli_fail(st, "client %d: input moments failed", (int)c);
}

/* Stage 2: Σ (u − μ)² around the global mean μ of stage 1 (the shift keeps
 * the values small: raw Σu² of the massive-activation channels would not fit
 * the fixed-point range, and Σu²/n − μ² from float sums would cancel). */
static int fill_moments2(void *user, int32_t c, float *vec)
{
    fed_prep *p = user;
    size_t n_c = p->fs->n_members[c];
    for (int32_t j = 0; j < p->d; j++) {
        double q = 0.0;
        for (size_t i = 0; i < n_c; i++) {
            double x = (double)p->u[c][i * (size_t)p->d + (size_t)j] - p->mean[j];
            q += x * x;
        }
        vec[j] = (float)q;
    }
    return CLI_OK;
}

/* Gate averaging: [n_c·θ_c (g), n_c]. */
static int fill_gate(void *user, int32_t c, float *vec)
{
    fed_prep *p = user;
    double n_c = (double)p->fs->n_members[c];
    for (size_t j = 0; j < p->g; j++)
        vec[j] = (float)(n_c * (double)p->theta[(size_t)c * p->g + j]);
    vec[p->g] = (float)n_c;
    return CLI_OK;
}

/* Merged moments (n, Σu, Σu²) of every client's gate inputs: added exactly
 * in double, or through two secure sums with --secure-agg. */
static int merge_stats(fed_prep *p, double *n_out, double *sum, double *sumsq)
{
    fed_state *fs = p->fs;
    const fed_opts *o = fs->o;
    const int32_t N = o->n_clients, d = p->d;
    if (!o->secure_agg) {
        double n = 0.0;
        for (int32_t c = 0; c < N; c++) {
            mop_status st = mop_mixture_input_moments(p->u[c], (int32_t)fs->n_members[c], d,
                                                      sum, sumsq);
            if (st != MOP_OK)
                return cli_fail(st, "client %d: input moments failed", (int)c);
            n += (double)fs->n_members[c];
        }
        *n_out = n;
        return CLI_OK;
    }
    /* scale 2^16, range 2^36: n·2^52 < 2^63 for up to 2047 clients */
    const float scale = 65536.0f, clip = 68719476736.0f;
    float *v = malloc((size_t)(d + 1) * sizeof *v);
    double *mean = malloc((size_t)d * sizeof *mean);
    int rc = CLI_ERROR;
    if (!v || !mean) {
        cli_error("out of memory");
        goto out;
    }
    if (secure_sum(N, o->rounds, d + 1, scale, clip, fill_moments1, p, v) != CLI_OK)
        goto out;
    double n = floor((double)v[0] + 0.5);
    if (!(n > 0.5)) {
        cli_error("secure aggregation: the clients' total sample count is %g", n);
        goto out;
    }
    for (int32_t j = 0; j < d; j++) {
        sum[j] = (double)v[1 + j];
        mean[j] = sum[j] / n;
    }
    p->mean = mean;
    if (secure_sum(N, o->rounds + 1, d, scale, clip, fill_moments2, p, v) != CLI_OK)
        goto out;
    /* Σu² = Σ(u − μ)² + 2μΣu − nμ² */
    for (int32_t j = 0; j < d; j++)
        sumsq[j] = (double)v[j] + 2.0 * mean[j] * sum[j] - n * mean[j] * mean[j];
    *n_out = n;
    rc = CLI_OK;
out:
    p->mean = NULL;
    free(v);
    free(mean);
    return rc;
}

/* Federated gate pre-training on task labels, as FedAvg rounds over the
 * cached gate inputs p->u: each round every client starts from the global
 * gate, runs --gate-pretrain-epochs local epochs (a fresh AdamW) and sends
 * n_c·gate_c; the server averages (a secure sum with --secagg) and scores the
 * average on the validation rows. Keeps the best round's gate (the higher
 * accuracy, ties: the lower loss) and stops after 5 rounds without a better one.
 * One round of many local epochs is the old one-shot average, which blurs:
 * each client's gate converges on its own, mostly one-task, data. */
static int fed_pretrain_rounds(fed_state *fs, fed_prep *p, float *gp, float *lp, size_t n,
                               int32_t *task)
{
    const fed_opts *o = fs->o;
    const int32_t N = o->n_clients, K = fs->K, patience = 5;
    const size_t g = p->g;
    const int32_t rounds = o->pretrain_rounds > 0 ? o->pretrain_rounds : 50;
    const int32_t epochs = o->pretrain_epochs > 0 ? o->pretrain_epochs : 1;
    double t1 = cli_now();
    float *uv = NULL, *w = NULL, *theta = malloc((size_t)N * (g ? g : 1) * sizeof *theta);
    float *best = malloc((g ? g : 1) * sizeof *best), *avg = malloc((g + 1) * sizeof *avg);
    double *acc = calloc(g + 1, sizeof *acc);
    int32_t *tv = cli_gate_labels(fs->val, fs->ds);
    int rc = CLI_ERROR;
    if (!theta || !best || !avg || !acc || !tv) {
        cli_error("out of memory");
        goto out;
    }
    /* the validation rows' gate inputs, once */
    if (cli_gate_inputs_rows(fs->ctx, fs->global, fs->val, NULL, fs->val->n, &fs->cb, o->B,
                             &uv) != CLI_OK)
        goto out;
    w = malloc((fs->val->n ? fs->val->n : 1) * (size_t)K * sizeof *w);
    if (!w) {
        cli_error("out of memory");
        goto out;
    }
    p->theta = theta;
    double best_acc = -1.0, best_loss = INFINITY, best_own = 0.0;
    int32_t r = 0, best_round = 0;
    memcpy(best, gp + fs->n_opt, g * sizeof *best);
    while (r < rounds && r - best_round < patience) {
        r++;
        for (int32_t c = 0; c < N; c++) {
            size_t n_c = fs->n_members[c];
            memcpy(theta + (size_t)c * g, gp + fs->n_opt, g * sizeof *theta);
            if (n_c == 0)
                continue; /* sends weight 0 */
            for (size_t i = 0; i < n_c; i++)
                task[i] = fs->ds->ex[fs->members[c][i]].task;
            memcpy(lp, gp, n * sizeof *lp);
            char label[64];
            snprintf(label, sizeof label, "client %d gate pre-training", (int)c);
            /* validation = the client's own training rows */
            if (cli_gate_pretrain_rows(fs->local, p->u[c], task, (int32_t)n_c, NULL, NULL, 0,
                                       epochs, o->pretrain_lr,
                                       client_seed(o->seed, r - 1, c, 4), label, 1,
                                       NULL) != CLI_OK)
                goto out;
            memcpy(theta + (size_t)c * g, lp + fs->n_opt, g * sizeof *theta);
        }
        memset(acc, 0, (g + 1) * sizeof *acc);
        if (o->secure_agg) {
            if (secure_sum(N, o->rounds + 1 + r, (int64_t)g + 1, 4294967296.0f, 1048576.0f,
                           fill_gate, p, avg) != CLI_OK)
                goto out;
            for (size_t j = 0; j <= g; j++)
                acc[j] = (double)avg[j];
            acc[g] = floor(acc[g] + 0.5);
        } else {
            for (int32_t c = 0; c < N; c++) {
                for (size_t j = 0; j < g; j++)
                    acc[j] += (double)fs->n_members[c] * (double)theta[(size_t)c * g + j];
                acc[g] += (double)fs->n_members[c];
            }
        }
        if (!(acc[g] > 0.5)) {
            cli_error("gate pre-training: no client has examples");
            goto out;
        }
        for (size_t j = 0; j < g; j++)
            gp[fs->n_opt + j] = (float)(acc[j] / acc[g]);
        /* the server scores the averaged gate on the validation rows */
        mop_status st = mop_mixture_gate_from_inputs(fs->global, uv, (int32_t)fs->val->n, w);
        if (st != MOP_OK) {
            cli_fail(st, "gate weights of the validation rows failed");
            goto out;
        }
        size_t hits = 0, scored = 0;
        double nll = 0.0, own = 0.0;
        for (size_t i = 0; i < fs->val->n; i++) {
            if (tv[i] < 0 || tv[i] >= K)
                continue; /* a task the training data lacks */
            const float *wi = w + i * (size_t)K;
            int32_t am = 0;
            for (int32_t k = 1; k < K; k++)
                am = wi[k] > wi[am] ? k : am;
            hits += am == tv[i];
            nll -= log(fmax((double)wi[tv[i]], 1e-30));
            own += (double)wi[tv[i]];
            scored++;
        }
        double a = scored ? (double)hits / (double)scored : 0.0;
        double loss = scored ? nll / (double)scored : 0.0;
        /* better = higher accuracy, or the same with a lower loss: the
         * accuracy of a few validation rows saturates long before the gate
         * stops sharpening (the loss still falls) */
        if (a > best_acc || (a == best_acc && loss < best_loss)) {
            best_acc = a, best_loss = loss, best_round = r;
            best_own = scored ? own / (double)scored : 0.0;
            memcpy(best, gp + fs->n_opt, g * sizeof *best);
        }
        double dt = cli_now() - t1;
        cli_progress("gate pre-training: round %d/%d, validation accuracy %.3f loss %.4f "
                     "(best %.3f), %.1f s", (int)r, (int)rounds, a, loss, best_acc, dt);
    }
    cli_progress_end();
    memcpy(gp + fs->n_opt, best, g * sizeof *best);
    printf("federated gate pre-training: %d rounds of %d local epoch%s on %d clients (best "
           "round %d, gates averaged by example counts%s), argmax accuracy %.4f, mean weight "
           "%.3f on the own expert, on %zu validation examples (%.1f s)\n", (int)r,
           (int)epochs, epochs == 1 ? "" : "s", (int)N, (int)best_round,
           o->secure_agg ? ", secure sums" : "", best_acc, best_own, fs->val->n,
           cli_now() - t1);
    fflush(stdout);
    rc = CLI_OK;
out:
    p->theta = NULL;
    free(uv), free(w), free(theta), free(best), free(avg), free(acc), free(tv);
    return rc;
}

static int fed_prepare_gate(fed_state *fs, const mop_mixture_params *got)
{
    const fed_opts *o = fs->o;
    const int32_t N = o->n_clients;
    const int pretrain = fs->learned_gate && !o->no_pretrain && fs->ds->n_tasks > 1 &&
                         fs->K >= fs->ds->n_tasks;
    if (fs->learned_gate && (o->pretrain_epochs > 0 || o->pretrain_rounds > 0) &&
        !o->no_pretrain && fs->K < fs->ds->n_tasks)
        return cli_error("--gate-pretrain-epochs/-rounds need --experts >= the %d tasks of the data",
                         (int)fs->ds->n_tasks);
    if (!fs->learned_gate || (!got->gate_norm && !pretrain))
        return CLI_OK;
    fed_prep p;
    memset(&p, 0, sizeof p);
    p.fs = fs;
    p.d = cli_gate_width(fs->global);
    float *gp, *lp;
    size_t n;
    mop_status st = mop_mixture_data(fs->global, &gp, NULL, &n);
    if (st == MOP_OK)
        st = mop_mixture_data(fs->local, &lp, NULL, NULL);
    if (st != MOP_OK)
        return cli_fail(st, "cannot access the mixtures");
    p.g = n - fs->n_opt;
    p.u = calloc((size_t)N, sizeof *p.u);
    double *sum = calloc((size_t)p.d * 2, sizeof *sum), *sumsq = sum ? sum + p.d : NULL;
    int32_t *task = malloc((fs->ds->n ? fs->ds->n : 1) * sizeof *task);
    int rc = CLI_ERROR;
    if (!p.u || !sum || !task) {
        cli_error("out of memory");
        goto out;
    }
    /* every client's gate inputs: one pass through layers [0, L_g) over its
     * own examples (the global mixture's gate layer and pooling) */
    double t0 = cli_now();
    for (int32_t c = 0; c < N; c++)
        if (cli_gate_inputs_rows(fs->ctx, fs->global, fs->ds, fs->members[c], fs->n_members[c],
                                 &fs->cb, o->B, &p.u[c]) != CLI_OK)
            goto out;
    double t_inputs = cli_now() - t0, n_tot = 0.0;
    if (got->gate_norm) {
        double t1 = cli_now();
        if (merge_stats(&p, &n_tot, sum, sumsq) != CLI_OK)
            goto out;
        if ((st = mop_mixture_set_input_stats(fs->global, n_tot, sum, sumsq)) != MOP_OK ||
            (st = mop_mixture_set_input_stats(fs->local, n_tot, sum, sumsq)) != MOP_OK) {
            cli_fail(st, "cannot set the gate's input statistics");
            goto out;
        }
        printf("gate input statistics: %.0f examples from %d clients, merged %s (inputs %.1f s, "
               "merge %.3f s)\n", n_tot, (int)N,
               o->secure_agg ? "by two secure sums (n, sum u; sum (u - mean)^2)"
                             : "as exact sums of the clients' moments",
               t_inputs, cli_now() - t1);
        fflush(stdout);
    }
    if (pretrain && fed_pretrain_rounds(fs, &p, gp, lp, n, task) != CLI_OK)
        goto out;
    rc = CLI_OK;
out:
    if (p.u)
        for (int32_t c = 0; c < N; c++)
            free(p.u[c]);
    free(p.u);
    free(sum);
    free(task);
    return rc;
}

static int run(mop_model *model, const fed_opts *o, const mop_mixture_params *mp,
               const cli_dataset *ds, const cli_dataset *val)
{
    fed_state fs;
    memset(&fs, 0, sizeof fs);
    fs.o = o;
    fs.ds = ds;
    fs.val = val;
    mop_aggregator *agg = NULL;
    mop_rdp_accountant *acc = NULL;
    mop_update *gu = NULL, *u = NULL, *next = NULL, **nb_ups = NULL;
    fed_sa2 sa2;
    memset(&sa2, 0, sizeof sa2);
    int *drop = NULL;
    FILE *csv = NULL;
    int rc = CLI_ERROR;
    int32_t N = o->n_clients;

    mop_status st = mop_mixture_create(model, mp, &fs.global);
    if (st == MOP_OK)
        st = mop_mixture_create(model, mp, &fs.local);
    if (st != MOP_OK) {
        cli_fail(st, "cannot create the mixture");
        goto out;
    }
    mop_mixture_params got;
    memset(&got, 0, sizeof got);
    got.struct_size = sizeof got;
    if ((st = mop_mixture_get_params(fs.global, &got)) != MOP_OK) {
        cli_fail(st, "cannot read the mixture's parameters");
        goto out;
    }
    fs.K = got.n_experts;
    fs.learned_gate = got.gate_mode == MOP_GATE_LEARNED;
    fs.need_usage = strategy_id(o->strategy) == MOP_AGG_MOP_AWARE;
    int32_t max_len = ds->max_len > val->max_len ? ds->max_len : val->max_len;
    fs.ctx = cli_make_ctx(model, cli_prompt_rows(&got), max_len, o->n_threads);
    if (!fs.ctx || cli_batch_init(&fs.cb, o->B, max_len) != CLI_OK)
        goto out;
    fs.order = malloc(ds->n * sizeof *fs.order);
    fs.idx = malloc((size_t)o->B * sizeof *fs.idx);
    fs.usage = malloc((size_t)fs.K * sizeof *fs.usage);
    fs.w = malloc((size_t)o->B * (size_t)fs.K * sizeof *fs.w);
    if (!fs.order || !fs.idx || !fs.usage || !fs.w) {
        cli_error("out of memory");
        goto out;
    }
    if (partition(&fs) != CLI_OK)
        goto out;
    fs.n_opt = cli_gate_offset(fs.global);
    fs.opt = calloc((size_t)N, sizeof *fs.opt);
    fs.opt_gate = calloc((size_t)N, sizeof *fs.opt_gate);
    if (!fs.opt || !fs.opt_gate) {
        cli_error("out of memory");
        goto out;
    }

    mop_aggregator_params ap;
    mop_aggregator_params_init(&ap);
    ap.strategy = strategy_id(o->strategy);
    ap.server_lr = o->server_lr;
    ap.krum_f = o->krum_f;
    ap.trim_ratio = o->trim_ratio;
    ap.seed = o->seed;
    if ((st = mop_aggregator_create(&ap, &agg)) != MOP_OK) {
        cli_fail(st, "cannot create the aggregator");
        goto out;
    }
    if (o->dp_noise > 0.0f && (st = mop_rdp_accountant_create(NULL, &acc)) != MOP_OK) {
        cli_fail(st, "cannot create the privacy accountant");
        goto out;
    }
    if (o->csv) {
        if (!(csv = fopen(o->csv, "w"))) {
            cli_error("cannot write '%s'", o->csv);
            goto out;
        }
        fprintf(csv, "round,val_ppl,client_loss,seconds,epsilon\n");
        fflush(csv);
    }

    printf("fed-sim: %d clients, %d rounds x %d local steps, strategy %s%s, split %s\n", (int)N,
           (int)o->rounds, (int)o->local_steps, o->strategy,
           o->secure_agg ? " (secure aggregation)" : "", o->split);
    printf("mixture: K=%d P=%d gate=%s params=%zu\n", (int)got.n_experts, (int)got.prompt_len,
           fs.learned_gate ? "learned" : got.gate_mode == MOP_GATE_ORACLE ? "oracle" : "uniform",
           mop_mixture_n_params(fs.global));
    printf("data: %zu training examples (%d tasks), %zu validation examples; client sizes:",
           ds->n, (int)ds->n_tasks, val->n);
    for (int32_t c = 0; c < N; c++)
        printf(" %zu", fs.n_members[c]);
    printf("\n");
    if (o->malicious > 0)
        printf("malicious: clients 0..%d (%s)\n", (int)o->malicious - 1, o->attack);
    fflush(stdout);
    if (got.gate_mode == MOP_GATE_ORACLE && got.n_experts < ds->n_tasks) {
        cli_error("--baseline oracle needs --experts >= the %d tasks of the data", (int)ds->n_tasks);
        goto out;
    }
    if (fed_prepare_gate(&fs, &got) != CLI_OK)
        goto out;
    double ppl;
    if (validate(&fs, &ppl) != CLI_OK)
        goto out;
    printf("round 0: validation perplexity %.4f\n", ppl);
    fflush(stdout);

    /* Norm bounding on the server (not under secure aggregation): the
     * round's updates are kept until every client has sent one. */
    int nb_server = o->nb_on && !o->secure_agg;
    if (nb_server && !(nb_ups = calloc((size_t)N, sizeof *nb_ups))) {
        cli_error("out of memory");
        goto out;
    }
    if (!(drop = malloc((size_t)N * sizeof *drop))) {
        cli_error("out of memory");
        goto out;
    }
    double eps = 0.0;
    cli_meter meter; /* client-rounds done, with an ETA */
    cli_meter_start(&meter, "fed-sim", 10.0);
    for (int32_t r = 0; r < o->rounds; r++) {
        double t0 = cli_now(), loss_sum = 0.0;
        int32_t n_trained = 0, nb_n = 0;
        if ((st = mop_update_from_mixture(fs.global, NULL, r, 0, 0.0, NULL, &gu)) != MOP_OK) {
            cli_fail(st, "cannot snapshot the global mixture");
            goto out;
        }
        dropout_plan(drop, N, o->secagg_dropout, o->seed, r);
        if (o->secagg_dropout > 0.0f) {
            printf("round %d: dropouts:", (int)r + 1);
            for (int32_t c = 0; c < N; c++)
                if (drop[c] < 4)
                    printf(" client %d before %s;", (int)c,
                           drop[c] == 0 ? "advertising keys" : drop[c] == 1 ? "sharing keys"
                           : drop[c] == 2 ? "its masked input" : "the unmasking answer");
            printf("\n");
            fflush(stdout);
        }
        if (o->secure_agg &&
            sa2_begin(&sa2, N, r, (int64_t)mop_mixture_n_params(fs.global), o->secagg_t,
                      drop) != CLI_OK)
            goto out;
        for (int32_t c = 0; c < N; c++) {
            cli_meter_report(&meter, (uint64_t)(r * N + c), (uint64_t)(o->rounds * N),
                             "round %d/%d, client %d/%d", (int)r + 1, (int)o->rounds, (int)c + 1,
                             (int)N);
            double n_c = (double)fs.n_members[c];
            if (drop[c] <= 2) /* dropped before its input reached the server */
                continue;
            if (fs.n_members[c] == 0) { /* nothing to learn from; still a secagg peer */
                if (o->secure_agg && sa2_send(&sa2, c, NULL, gu, 0.0) != CLI_OK)
                    goto out;
                continue;
            }
            double loss = 0.0;
            if (client_train(&fs, gu, r, c, &loss) != CLI_OK)
                goto out;
            loss_sum += loss;
            n_trained++;
            st = mop_update_from_mixture(fs.local, fs.global, r, (uint64_t)c, n_c,
                                         fs.need_usage ? fs.usage : NULL, &u);
            if (st == MOP_OK && o->dp_clip > 0.0f)
                st = mop_update_clip(u, o->dp_clip, NULL);
            if (st == MOP_OK && o->dp_noise > 0.0f)
                st = mop_update_add_noise(u, o->dp_noise * o->dp_clip,
                                          client_seed(o->seed, r, c, 2));
            if (st != MOP_OK) {
                cli_fail(st, "round %d, client %d: cannot build the update", (int)r + 1, (int)c);
                goto out;
            }
            if (c < o->malicious && poison(u, o->attack, client_seed(o->seed, r, c, 3)) != CLI_OK)
                goto out;
            if (o->nb_on && o->secure_agg) { /* the client bounds its own update */
                if ((st = mop_update_norm_bound(&u, 1, &o->nbp, NULL, NULL, NULL)) != MOP_OK) {
                    cli_fail(st, "round %d, client %d: norm bound", (int)r + 1, (int)c);
                    goto out;
                }
            }
            if (nb_server) {
                nb_ups[nb_n++] = u;
                u = NULL;
                continue;
            }
            if (o->secure_agg) {
                if (sa2_send(&sa2, c, u, gu, n_c) != CLI_OK)
                    goto out;
            } else if ((st = mop_aggregator_add(agg, u)) != MOP_OK) {
                cli_fail(st, "round %d: the server rejected client %d's update", (int)r + 1,
                         (int)c);
                goto out;
            }
            mop_update_free(u);
            u = NULL;
        }
        cli_progress_end();
        if (nb_server && nb_n > 0 && norm_bound_round(agg, &o->nbp, nb_ups, nb_n, r) != CLI_OK)
            goto out;
        if (o->secure_agg) {
            if (sa2_finish(&sa2, gu, r, &u) != CLI_OK)
                goto out;
            sa2_free(&sa2);
            if ((st = mop_aggregator_add(agg, u)) != MOP_OK) {
                cli_fail(st, "round %d: cannot aggregate the secure sum", (int)r + 1);
                goto out;
            }
            mop_update_free(u);
            u = NULL;
        }
        st = mop_aggregator_finish(agg, gu, &next);
        if (st == MOP_OK)
            st = mop_update_apply(next, fs.global, 1.0f);
        if (st != MOP_OK) {
            cli_fail(st, "round %d: aggregation failed", (int)r + 1);
            goto out;
        }
        mop_update_free(next);
        mop_update_free(gu);
        next = gu = NULL;
        if (validate(&fs, &ppl) != CLI_OK)
            goto out;
        if (acc) {
            st = mop_rdp_accountant_add(acc, o->dp_noise, 1.0, 1);
            if (st == MOP_OK)
                st = mop_rdp_accountant_epsilon(acc, o->dp_delta, &eps, NULL);
            if (st != MOP_OK) {
                cli_fail(st, "privacy accounting failed");
                goto out;
            }
        }
        double dt = cli_now() - t0, loss_mean = n_trained ? loss_sum / n_trained : 0.0;
        printf("round %d: validation perplexity %.4f, client loss %.4f, %.1f s", (int)r + 1, ppl,
               loss_mean, dt);
        if (acc)
            printf(", epsilon %.4f", eps);
        printf("\n");
        fflush(stdout);
        if (csv) {
            fprintf(csv, "%d,%.6f,%.6f,%.3f,", (int)r + 1, ppl, loss_mean, dt);
            if (acc)
                fprintf(csv, "%.6f", eps);
            fprintf(csv, "\n");
            fflush(csv);
        }
    }
    if (o->out) {
        if ((st = mop_mixture_save(fs.global, o->out)) != MOP_OK) {
            cli_fail(st, "cannot save the mixture to '%s'", o->out);
            goto out;
        }
        printf("saved %s\n", o->out);
    }
    if (acc)
        printf("privacy: epsilon %.4f at delta %g after %d rounds (local DP, clip %g, noise "
               "multiplier %g, every client in every round)\n",
               eps, (double)o->dp_delta, (int)o->rounds, (double)o->dp_clip,
               (double)o->dp_noise);
    printf("perplexity: %.6f\n", ppl);
    rc = CLI_OK;
out:
    cli_progress_end();
    if (csv && fclose(csv) != 0 && rc == CLI_OK)
        rc = cli_error("cannot write '%s'", o->csv);
    sa2_free(&sa2);
    free(drop);
    if (nb_ups)
        for (int32_t c = 0; c < N; c++)
            mop_update_free(nb_ups[c]);
    free(nb_ups);
    mop_update_free(u);
    mop_update_free(gu);
    mop_update_free(next);
    mop_rdp_accountant_free(acc);
    mop_aggregator_free(agg);
    if (fs.members)
        for (int32_t c = 0; c < N; c++)
            free(fs.members[c]);
    free(fs.members);
    free(fs.n_members);
    if (fs.opt)
        for (int32_t c = 0; c < N; c++)
            mop_optimizer_free(fs.opt[c]);
    if (fs.opt_gate)
        for (int32_t c = 0; c < N; c++)
            mop_optimizer_free(fs.opt_gate[c]);
    free(fs.opt);
    free(fs.opt_gate);
    free(fs.client_of);
    free(fs.order);
    free(fs.idx);
    free(fs.usage);
    free(fs.w);
    cli_batch_free(&fs.cb);
    mop_ctx_free(fs.ctx);
    mop_mixture_free(fs.local);
    mop_mixture_free(fs.global);
    return rc;
}

int cli_cmd_fed_sim(int argc, char **argv)
{
    mop_mixture_params defaults;
    mop_mixture_params_init(&defaults);
    fed_opts o = {
        .strategy = "fedavg", .split = "skewed", .attack = "sign-flip", .n_clients = 8,
        .rounds = 10, .local_steps = 10, .K = defaults.n_experts, .P = defaults.prompt_len,
        .B = 4, .max_len = 256, .krum_f = 1, .lr = 3e-3f, .skew_ratio = 15.0f,
        .dp_delta = 1e-5f, .server_lr = 0.0f, .trim_ratio = 0.1f, .seed = 1234,
        .gate_lr = 1e-3f, .gate_clip = 1.0f, .gate_layer = -1, .inject_layer = -1,
        .nb_mode = "clip",
    };
    const cli_opt opts[] = {
        {"data", 'd', CLI_STRING, &o.data, "FILE", "training data, JSONL {task, instruction, response}; required"},
        {"val", 0, CLI_STRING, &o.val, "FILE", "validation data (global perplexity after every round); required"},
        {"clients", 0, CLI_INT, &o.n_clients, "N", "number of clients, all in every round; default 8"},
        {"rounds", 0, CLI_INT, &o.rounds, "R", "federated rounds; default 10"},
        {"local-steps", 0, CLI_INT, &o.local_steps, "S", "AdamW steps per client per round; default 10"},
        {"strategy", 0, CLI_STRING, &o.strategy, "NAME", "server rule (list below); default fedavg"},
        {"server-lr", 0, CLI_FLOAT, &o.server_lr, "ETA", "server step; default 1, 0.01 for fedadam/fedyogi/fedadagrad"},
        {"krum-f", 0, CLI_INT, &o.krum_f, "F", "Byzantine clients assumed by krum/multi-krum (needs N >= 2F+3); default 1"},
        {"trim-ratio", 0, CLI_FLOAT, &o.trim_ratio, "X", "fraction trimmed from each end by trimmed_mean; default 0.1"},
        {"split", 0, CLI_STRING, &o.split, "KIND", "skewed | iid | dirichlet:ALPHA; default skewed"},
        {"skew-ratio", 0, CLI_FLOAT, &o.skew_ratio, "X", "skewed split: big part / small part per task; default 15"},
        {"baseline", 0, CLI_STRING, &o.baseline, "single|uniform|oracle", "single: one K*P-token prompt; uniform: K experts, uniform gate; oracle: expert k serves task k by label"},
        {"gate-layer", 0, CLI_INT, &o.gate_layer, "L", "gate reads hidden states after L layers; default n_layer/3"},
        {"inject-layer", 0, CLI_INT, &o.inject_layer, "L", "experts enter before layer L; default n_layer/3"},
        {"shared", 0, CLI_INT, &o.n_shared, "N", "always-on shared groups of P tokens next to the K routed ones; default 0"},
        {"experts", 'K', CLI_INT, &o.K, "K", "number of experts; default 8"},
        {"prompt-len", 'P', CLI_INT, &o.P, "P", "soft tokens per expert; default 8"},
        {"batch", 'b', CLI_INT, &o.B, "B", "sequences per local step (and per evaluation call); default 4"},
        {"lr", 0, CLI_FLOAT, &o.lr, "LR", "client AdamW learning rate of the experts (each client keeps its optimizer state across rounds); default 3e-3"},
        {"gate-lr", 0, CLI_FLOAT, &o.gate_lr, "LR", "client learning rate of the gate (its own AdamW state, kept across rounds); default 1e-3"},
        {"gate-clip", 0, CLI_FLOAT, &o.gate_clip, "X", "clip the gate's gradient to this norm, 0 = off; default 1"},
        {"gate-pretrain-rounds", 0, CLI_INT, &o.pretrain_rounds, "R", "most FedAvg rounds of the gate's pre-training on task labels (on by default when the data has >= 2 tasks and K >= tasks; keeps the best round on --val, stops after 5 rounds without a better one); default 50"},
        {"gate-pretrain-epochs", 0, CLI_INT, &o.pretrain_epochs, "N", "local epochs of each client in each pre-training round; default 1"},
        {"gate-pretrain-lr", 0, CLI_FLOAT, &o.pretrain_lr, "LR", "gate pre-training learning rate; default 3e-3"},
        {"no-gate-pretrain", 0, CLI_FLAG, &o.no_pretrain, NULL, "skip the federated gate pre-training"},
        {"max-len", 0, CLI_INT, &o.max_len, "T", "cut examples to T tokens; default 256"},
        {"prox-mu", 0, CLI_FLOAT, &o.prox_mu, "MU", "FedProx: client loss + (MU/2)||theta - theta_global||^2; default 0"},
        {"dp-clip", 0, CLI_FLOAT, &o.dp_clip, "C", "clip each client delta to L2 norm C; default off"},
        {"dp-noise", 0, CLI_FLOAT, &o.dp_noise, "Z", "local DP: add N(0, (Z*C)^2) to each clipped delta (needs --dp-clip); default 0"},
        {"dp-delta", 0, CLI_FLOAT, &o.dp_delta, "D", "delta of the reported (epsilon, delta); default 1e-5"},
        {"norm-bound", 0, CLI_FLOAT, &o.nb_max, "C", "clip or reject (--norm-bound-mode) each client delta of L2 norm above C, before the strategy; default off"},
        {"norm-bound-median-x", 0, CLI_FLOAT, &o.nb_median_x, "K", "bound = K x the round's median delta norm (with --norm-bound: the smaller); default off"},
        {"norm-bound-mode", 0, CLI_STRING, &o.nb_mode, "clip|reject", "what --norm-bound / --norm-bound-median-x do to an update above the bound; default clip"},
        {"secagg", 0, CLI_FLAG, &o.secagg_new, NULL, "secure aggregation with dropout recovery (self-masks, pairwise masks, Shamir shares; FedAvg family only)"},
        {"secure-agg", 0, CLI_FLAG, &o.secure_agg, NULL, "the old name of --secagg"},
        {"secagg-threshold", 0, CLI_INT, &o.secagg_t, "T", "secure aggregation: fewest clients (2..N) whose sum may be revealed at every stage; default N/2 + 1"},
        {"secagg-dropout", 0, CLI_FLOAT, &o.secagg_dropout, "F", "each round floor(F*N) clients (drawn by --seed) drop, at the four protocol stages in turn; without --secagg they just send nothing (the plain FedAvg reference over the same survivors); default 0"},
        {"malicious", 0, CLI_INT, &o.malicious, "M", "clients 0..M-1 send an attack instead of their delta; default 0"},
        {"attack", 0, CLI_STRING, &o.attack, "KIND", "sign-flip (-5 x delta) | noise (N(0, 10^2) values); default sign-flip"},
        {"csv", 0, CLI_STRING, &o.csv, "FILE", "write round,val_ppl,client_loss,seconds,epsilon per round"},
        {"output", 'o', CLI_STRING, &o.out, "MIXTURE", "save the final global mixture (.safetensors)"},
        {"seed", 0, CLI_U64, &o.seed, "S", "seed of the mixture, split, shuffles and noise; default 1234"},
        {"threads", 't', CLI_INT, &o.n_threads, "N", "compute threads, 0 = all cores; default 0"},
        CLI_OPT_SYSTEM(&o.system, &o.template_system),
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {
        "fed-sim", "MODEL --data FILE --val FILE [options]",
        "Simulate federated training of a Mixture of Prompts in one process. The\n"
        "training data is split over --clients (the paper's skewed split by default:\n"
        "per task one part --skew-ratio times larger than the others). Each round,\n"
        "every client starts from the global mixture, takes --local-steps AdamW steps\n"
        "on its own examples and sends the delta with its mean gate weights; the\n"
        "server aggregates the deltas with --strategy and updates the global mixture,\n"
        "whose validation perplexity (response tokens) is printed after every round.\n"
        "Before round 1 (learned gate): every client computes its examples' gate\n"
        "inputs and their moments (n, sum u, sum u^2); the server adds them and sets\n"
        "the gate's input standardization. Then (>= 2 tasks and K >= tasks, unless\n"
        "--no-gate-pretrain) the gate is pre-trained on task labels in FedAvg rounds:\n"
        "each round every client trains the global gate for --gate-pretrain-epochs on\n"
        "its own labels, the server averages the gates weighted by example counts and\n"
        "scores the average on --val; the best round's gate is kept.\n"
        "Each client keeps its AdamW state (moments, step count) across rounds, one\n"
        "for the experts (--lr) and one for the gate (--gate-lr, --gate-clip); only\n"
        "the parameters come from the server each round.\n"
        "Strategies: fedavg fedavgm fedadam fedyogi fedadagrad median trimmed_mean\n"
        "krum multi_krum task_arithmetic ties dare breadcrumbs mop_aware.\n"
        "--dp-clip/--dp-noise: local DP, epsilon from the RDP accountant (sample\n"
        "rate 1, one step per round). --secagg: clients mask n_i*delta_i and n_i,\n"
        "the server only learns the sums and takes their FedAvg (FedAvg family only);\n"
        "up to N - T clients may drop (--secagg-dropout simulates it) and the round\n"
        "still gives the FedAvg of the clients whose masked input arrived;\n"
        "the gate's statistics (n, sum u, then sum (u - mean)^2) and the pre-trained\n"
        "gates (n_i*gate_i, n_i) go through secure sums too.\n"
        "--malicious M: the first M clients attack (robustness experiments).\n"
        "--norm-bound C / --norm-bound-median-x K: before the strategy, clip (or with\n"
        "--norm-bound-mode reject, leave out) every delta whose L2 norm exceeds C or K\n"
        "times the round's median norm (the smaller when both are given).\n"
        "Progress on stderr (a bar with an ETA on a terminal, else a line every 10 s).\nThe last line of stdout is 'perplexity: X' (final\n"
        "global mixture on --val).",
        opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    const char *cmd = "fed-sim";
    if (!o.data)
        return cli_usage_error(cmd, "--data FILE is required");
    if (!o.val)
        return cli_usage_error(cmd, "--val FILE is required");
    int dashed = 0;
    int32_t sid = strategy_id_dep(o.strategy, &dashed);
    if (sid < 0)
        return cli_usage_error(cmd, "unknown --strategy '%s' (fedavg, fedavgm, fedadam, fedyogi, "
                                    "fedadagrad, median, trimmed_mean, krum, multi_krum, "
                                    "task_arithmetic, ties, dare, breadcrumbs, mop_aware)",
                               o.strategy);
    const char *given = o.strategy;
    o.strategy = strategies[0].name;
    for (int32_t i = 0; i < N_STRATEGIES; i++)
        if (strategies[i].id == sid)
            o.strategy = strategies[i].name;
    if (dashed)
        fprintf(stderr, "mop fed-sim: warning: --strategy '%s' is deprecated, use '%s' (the "
                        "spelling with '-' goes in libmop 0.2)\n", given, o.strategy);
    if (o.n_clients < 1 || o.n_clients > 2047)
        return cli_usage_error(cmd, "--clients must be in 1..2047, got %d", (int)o.n_clients);
    if (o.rounds < 1 || o.local_steps < 1 || o.B < 1)
        return cli_usage_error(cmd, "--rounds, --local-steps and --batch must be >= 1");
    if (o.K < 1 || o.P < 1)
        return cli_usage_error(cmd, "--experts and --prompt-len must be >= 1");
    if (o.max_len < 2)
        return cli_usage_error(cmd, "--max-len must be >= 2, got %d", (int)o.max_len);
    if (o.n_threads < 0)
        return cli_usage_error(cmd, "--threads must be >= 0");
    if (!(o.lr > 0.0f) || !isfinite(o.lr))
        return cli_usage_error(cmd, "--lr must be > 0");
    if (o.server_lr == 0.0f)
        o.server_lr = sid >= MOP_AGG_FEDADAM && sid <= MOP_AGG_FEDADAGRAD ? 0.01f : 1.0f;
    if (!(o.server_lr > 0.0f) || !isfinite(o.server_lr))
        return cli_usage_error(cmd, "--server-lr must be > 0");
    if ((sid == MOP_AGG_KRUM || sid == MOP_AGG_MULTI_KRUM) &&
        (o.krum_f < 0 || o.n_clients < 2 * o.krum_f + 3))
        return cli_usage_error(cmd, "--strategy %s with --krum-f %d needs --clients >= %d, got %d",
                               o.strategy, (int)o.krum_f, 2 * (int)o.krum_f + 3,
                               (int)o.n_clients);
    if (!(o.trim_ratio >= 0.0f && o.trim_ratio < 0.5f))
        return cli_usage_error(cmd, "--trim-ratio must be in [0, 0.5)");
    if (strcmp(o.split, "skewed") == 0) {
        o.split_kind = 0;
    } else if (strcmp(o.split, "iid") == 0) {
        o.split_kind = 1;
    } else if (strncmp(o.split, "dirichlet:", 10) == 0) {
        char *end;
        o.split_kind = 2;
        o.alpha = strtof(o.split + 10, &end);
        if (end == o.split + 10 || *end || !(o.alpha > 0.0f) || !isfinite(o.alpha))
            return cli_usage_error(cmd, "--split dirichlet:ALPHA needs a number ALPHA > 0, got '%s'",
                                   o.split);
    } else {
        return cli_usage_error(cmd, "--split must be skewed, iid or dirichlet:ALPHA, got '%s'",
                               o.split);
    }
    if (!(o.skew_ratio >= 1.0f) || !isfinite(o.skew_ratio))
        return cli_usage_error(cmd, "--skew-ratio must be >= 1");
    if (!(o.prox_mu >= 0.0f) || !isfinite(o.prox_mu))
        return cli_usage_error(cmd, "--prox-mu must be >= 0");
    if (!(o.dp_clip >= 0.0f) || !isfinite(o.dp_clip) || !(o.dp_noise >= 0.0f) ||
        !isfinite(o.dp_noise))
        return cli_usage_error(cmd, "--dp-clip and --dp-noise must be >= 0");
    if (o.dp_noise > 0.0f && o.dp_clip == 0.0f)
        return cli_usage_error(cmd, "--dp-noise needs --dp-clip C (the noise std is Z*C)");
    if (!(o.dp_delta > 0.0f && o.dp_delta < 1.0f))
        return cli_usage_error(cmd, "--dp-delta must be in (0, 1)");
    if (o.malicious < 0 || o.malicious > o.n_clients)
        return cli_usage_error(cmd, "--malicious must be in 0..--clients (%d), got %d",
                               (int)o.n_clients, (int)o.malicious);
    if (strcmp(o.attack, "sign-flip") != 0 && strcmp(o.attack, "noise") != 0)
        return cli_usage_error(cmd, "--attack must be sign-flip or noise, got '%s'", o.attack);
    o.secure_agg |= o.secagg_new;
    if (!(o.secagg_dropout >= 0.0f && o.secagg_dropout < 1.0f))
        return cli_usage_error(cmd, "--secagg-dropout must be in [0, 1)");
    if (o.secagg_t == 0)
        o.secagg_t = o.n_clients / 2 + 1;
    if (o.secure_agg && (o.secagg_t < 2 || o.secagg_t > o.n_clients))
        return cli_usage_error(cmd, "--secagg-threshold must be in 2..--clients (%d), got %d",
                               (int)o.n_clients, (int)o.secagg_t);
    if (o.secure_agg && !is_fedavg_family(sid))
        return cli_usage_error(cmd, "--secure-agg gives the server only the sum of the updates: "
                                    "use fedavg, fedavgm, fedadam, fedyogi or fedadagrad, not %s",
                               o.strategy);
    if (!(o.nb_max >= 0.0f) || !isfinite(o.nb_max) || !(o.nb_median_x >= 0.0f) ||
        !isfinite(o.nb_median_x))
        return cli_usage_error(cmd, "--norm-bound and --norm-bound-median-x must be finite and >= 0");
    if (strcmp(o.nb_mode, "clip") != 0 && strcmp(o.nb_mode, "reject") != 0)
        return cli_usage_error(cmd, "--norm-bound-mode must be clip or reject, got '%s'", o.nb_mode);
    o.nb_on = o.nb_max > 0.0f || o.nb_median_x > 0.0f;
    if (mop_norm_bound_params_init(&o.nbp) != MOP_OK)
        return cli_fail(MOP_E_INTERNAL, "norm bound defaults");
    o.nbp.mode = strcmp(o.nb_mode, "clip") == 0 ? MOP_NORM_BOUND_CLIP : MOP_NORM_BOUND_REJECT;
    o.nbp.max_norm = o.nb_max;
    o.nbp.median_multiple = o.nb_median_x;
    if (o.nb_on && o.secure_agg && (o.nb_median_x > 0.0f || o.nbp.mode != MOP_NORM_BOUND_CLIP))
        return cli_usage_error(cmd, "with --secure-agg the server sees no norm: only a fixed "
                                    "--norm-bound C in clip mode (each client clips its own delta)");
    if (o.secure_agg && o.n_clients < 2)
        return cli_usage_error(cmd, "--secure-agg needs --clients >= 2");
    if (o.pretrain_epochs < 0 || o.pretrain_rounds < 0 || o.n_shared < 0)
        return cli_usage_error(cmd, "--gate-pretrain-epochs, --gate-pretrain-rounds and --shared "
                                    "must be >= 0");
    if (!(o.gate_lr >= 0.0f && isfinite(o.gate_lr)) || !(o.gate_clip >= 0.0f && isfinite(o.gate_clip)) ||
        !(o.pretrain_lr >= 0.0f && isfinite(o.pretrain_lr)))
        return cli_usage_error(cmd, "--gate-lr, --gate-clip and --gate-pretrain-lr must be finite and >= 0");
    if (o.baseline && (o.pretrain_epochs > 0 || o.pretrain_rounds > 0))
        return cli_usage_error(cmd, "--baseline has no learned gate: --gate-pretrain-epochs/-rounds "
                                    "do not apply");

    mop_mixture_params mp = defaults;
    mp.n_experts = o.K;
    mp.prompt_len = o.P;
    mp.seed = o.seed;
    mp.n_shared = o.n_shared;
    mp.gate_layer = o.gate_layer;
    mp.inject_layer = o.inject_layer;
    if (o.baseline && (rc = cli_gate_baseline(cmd, o.baseline, &mp)) != CLI_OK)
        return rc;
    if (cli_check_output_path(o.out) != CLI_OK || cli_check_output_path(o.csv) != CLI_OK)
        return CLI_ERROR;

    mop_model *model = cli_load_model(pos[0], o.n_threads);
    if (!model)
        return CLI_ERROR;
    cli_dataset ds = {0}, val = {0};
    rc = CLI_ERROR;
    if (cli_dataset_load(&ds, o.data, model, o.max_len, cli_data_system(o.system, o.template_system)) == CLI_OK &&
        cli_dataset_load(&val, o.val, model, o.max_len, cli_data_system(o.system, o.template_system)) == CLI_OK)
        rc = run(model, &o, &mp, &ds, &val);
    cli_dataset_free(&ds);
    cli_dataset_free(&val);
    mop_model_free(model);
    return rc;
}
