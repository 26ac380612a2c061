/* fed_mpi: federated Mixture-of-Prompts training over MPI.
 *
 *   mpirun -np 4 fed_mpi MODEL train.jsonl val.jsonl ROUNDS LOCAL_STEPS [STRATEGY [K P MAX_LEN]]
 *
 * Rank 0 is the server, ranks 1..n-1 are the clients (client c = rank c+1).
 * Each round the server broadcasts the global mixture as a serialized FULL
 * update; every client copies it into its mixtures, takes LOCAL_STEPS AdamW
 * steps on its share of the training data (an IID split) and sends back the
 * serialized DELTA (size first, then the bytes); the server parses each blob
 * (the parser rejects corrupt ones), aggregates with STRATEGY (default
 * fedavg; names as in `mop fed-sim --help`), applies the result and prints
 * the validation perplexity. Last line: `perplexity: X`.
 *
 * Before round 1 (learned gate): every client computes the moments (n, Σu,
 * Σu²) of its examples' gate inputs, MPI_Allreduce adds them and every rank
 * sets the gate's input statistics; with >= 2 tasks and K >= tasks every
 * client then pre-trains the global gate on its task labels and a second
 * MPI_Allreduce of (n_c·θ_c, n_c) gives the example-weighted mean gate. Each
 * client keeps its two AdamW states (experts: lr 3e-3; gate: lr 1e-3, clip 1)
 * across rounds.
 *
 * The logic, seeds and order are those of `mop fed-sim --split iid --batch 2
 * --lr 3e-3 --seed 1234`, which prints the same numbers. Public API only;
 * one compute thread per rank. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <libmop/mop.h>
#include <mpi.h>

#define BATCH 2
#define LR 3e-3f
#define GATE_LR 1e-3f
#define SEED 1234u

static int rank;

/* The C enum's names (MOP_AGG_TRIMMED_MEAN: trimmed_mean), as in `mop fed-sim`
 * and Python; enum order. */
static const char *const strategy_names[] = {
    "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean", "krum",
    "multi_krum", "task_arithmetic", "ties", "dare", "breadcrumbs", "mop_aware"};

/* Index of `s` in strategy_names, or 14. The old spelling with '-' for '_'
 * still matches, with a deprecation warning (it goes in libmop 0.2). */
static int32_t strategy_index(const char *s)
{
    char canon[32];
    size_t n = strlen(s);
    if (n >= sizeof canon)
        return 14;
    for (size_t i = 0; i <= n; i++)
        canon[i] = s[i] == '-' ? '_' : s[i];
    int32_t k = 0;
    while (k < 14 && strcmp(canon, strategy_names[k]) != 0)
        k++;
    if (k < 14 && strcmp(canon, s) != 0 && rank == 0)
        fprintf(stderr, "fed_mpi: warning: strategy '%s' is deprecated, use '%s'\n", s,
                strategy_names[k]);
    return k;
}


/* Print the library's error and stop every rank. */
static void check(mop_status st, const char *what)
{
    if (st == MOP_OK)
        return;
    fprintf(stderr, "fed_mpi rank %d: %s: %s\n", rank, what, mop_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void die(const char *what)
{
    fprintf(stderr, "fed_mpi rank %d: %s\n", rank, what);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* ---- data: JSONL {instruction, response} in the chat template ------------ */
typedef struct example {
    int32_t *tokens;
    uint8_t *mask; /* 1 on target tokens (the response) */
    int32_t len;
    int32_t task;  /* index of its "task" in the training file's sorted task names, or -1 */
} example;

typedef struct dataset {
    example *ex;
    size_t n;
    int32_t max_len;
} dataset;

/* The distinct "task" names of a JSONL file, sorted (task ids, as `mop`). */
typedef struct task_list {
    char **names;
    int32_t n;
} task_list;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_tasks(const char *path, task_list *tl)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot open a data file");
    memset(tl, 0, sizeof *tl);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *obj = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "task");
        int32_t k = 0;
        while (cJSON_IsString(t) && k < tl->n && strcmp(tl->names[k], t->valuestring) != 0)
            k++;
        if (cJSON_IsString(t) && k == tl->n) {
            if (!(tl->names = realloc(tl->names, (size_t)(tl->n + 1) * sizeof *tl->names)) ||
                !(tl->names[tl->n] = strdup(t->valuestring)))
                die("out of memory");
            tl->n++;
        }
        cJSON_Delete(obj);
    }
    free(line);
    fclose(f);
    if (tl->n)
        qsort(tl->names, (size_t)tl->n, sizeof *tl->names, cmp_str);
}

static int32_t task_id(const task_list *tl, const char *name)
{
    for (int32_t k = 0; name && k < tl->n; k++)
        if (strcmp(tl->names[k], name) == 0)
            return k;
    return -1;
}

/* Examples cut to max_len tokens; those with no target left are dropped.
 * Tokenized with an empty system turn, as `mop fed-sim` by default. */
static void load_jsonl(const mop_model *model, const char *path, int32_t max_len,
                       const task_list *tl, dataset *ds)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot open a data file");
    memset(ds, 0, sizeof *ds);
    char *line = NULL;
    size_t cap = 0, room = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *obj = cJSON_Parse(line);
        const cJSON *ins = cJSON_GetObjectItemCaseSensitive(obj, "instruction");
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(obj, "response");
        if (!cJSON_IsString(ins) || !cJSON_IsString(res)) {
            cJSON_Delete(obj);
            continue; /* blank or malformed line */
        }
        size_t n = 0;
        mop_status st = mop_tokenize_example_v2(model, "", ins->valuestring, res->valuestring,
                                                NULL, NULL, 0, &n); /* size query */
        if (st != MOP_E_RANGE)
            check(st, "tokenizing");
        example e = {malloc(n * sizeof(int32_t)), malloc(n), 0, -1};
        if (!e.tokens || !e.mask)
            die("out of memory");
        check(mop_tokenize_example_v2(model, "", ins->valuestring, res->valuestring, e.tokens,
                                      e.mask, n, &n), "tokenizing");
        const cJSON *tk = cJSON_GetObjectItemCaseSensitive(obj, "task");
        e.task = task_id(tl, cJSON_IsString(tk) ? tk->valuestring : NULL);
        cJSON_Delete(obj);
        e.len = n < (size_t)max_len ? (int32_t)n : max_len;
        e.mask[0] = 0;
        int32_t targets = 0;
        for (int32_t t = 1; t < e.len; t++)
            targets += e.mask[t];
        if (targets == 0) {
            free(e.tokens);
            free(e.mask);
            continue;
        }
        if (ds->n == room) {
            room = room ? 2 * room : 64;
            if (!(ds->ex = realloc(ds->ex, room * sizeof *ds->ex)))
                die("out of memory");
        }
        ds->ex[ds->n++] = e;
        if (e.len > ds->max_len)
            ds->max_len = e.len;
    }
    free(line);
    fclose(f);
    if (ds->n == 0)
        die("no usable example in a data file");
}

/* A batch of examples idx[0..n), padded to the longest. */
typedef struct batch {
    int32_t tokens[BATCH * 4096], lengths[BATCH];
    uint8_t mask[BATCH * 4096];
    mop_batch b;
} batch;

static void fill_batch(batch *bt, const dataset *ds, const size_t *idx, int32_t n)
{
    int32_t T = 2;
    for (int32_t b = 0; b < n; b++)
        T = ds->ex[idx[b]].len > T ? ds->ex[idx[b]].len : T;
    memset(bt->tokens, 0, sizeof bt->tokens);
    memset(bt->mask, 0, sizeof bt->mask);
    for (int32_t b = 0; b < n; b++) {
        const example *e = &ds->ex[idx[b]];
        memcpy(bt->tokens + b * T, e->tokens, (size_t)e->len * sizeof(int32_t));
        memcpy(bt->mask + b * T, e->mask, (size_t)e->len);
        bt->lengths[b] = e->len;
    }
    bt->b = (mop_batch){.struct_size = sizeof(mop_batch), .n_seq = n, .seq_len = T,
                        .tokens = bt->tokens, .lengths = bt->lengths, .loss_mask = bt->mask};
}

/* ---- seeds: splitmix64, as `mop fed-sim` ---------------------------------- */
static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t client_seed(uint64_t seed, int64_t round, int32_t client, uint64_t salt)
{
    uint64_t s = seed + 1000003ull * (uint64_t)round + 7919ull * (uint64_t)client + salt;
    uint64_t r = splitmix64(&s);
    return r ? r : 1;
}

static void shuffle(size_t *v, size_t n, uint64_t *state)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(state) % i), t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

/* ---- updates over MPI: the size, then the serialized bytes ---------------- */
static void send_update(const mop_update *u, int dest)
{
    uint64_t n = 0;
    size_t sz = 0;
    uint8_t *buf = NULL;
    if (u) {
        check(mop_update_serialize(u, NULL, 0, &sz), "sizing an update");
        if (!(buf = malloc(sz)))
            die("out of memory");
        check(mop_update_serialize(u, buf, sz, &sz), "serializing an update");
        n = sz;
    }
    MPI_Send(&n, 1, MPI_UINT64_T, dest, 0, MPI_COMM_WORLD);
    if (n)
        MPI_Send(buf, (int)n, MPI_BYTE, dest, 1, MPI_COMM_WORLD);
    free(buf);
}

/* NULL when the client had nothing to send (no data). */
static mop_update *recv_update(int src)
{
    uint64_t n = 0;
    MPI_Recv(&n, 1, MPI_UINT64_T, src, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (n == 0)
        return NULL;
    uint8_t *buf = malloc(n);
    if (!buf)
        die("out of memory");
    MPI_Recv(buf, (int)n, MPI_BYTE, src, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    mop_update *u = NULL;
    check(mop_update_parse(buf, n, &u), "parsing a client's update"); /* checksum, shapes, NaN */
    free(buf);
    return u;
}

/* The global values from rank 0 to everyone (u is only read on rank 0). */
static mop_update *bcast_update(const mop_update *u)
{
    uint64_t n = 0;
    size_t sz = 0;
    uint8_t *buf = NULL;
    if (rank == 0) {
        check(mop_update_serialize(u, NULL, 0, &sz), "sizing the global update");
        n = sz;
    }
    MPI_Bcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    if (!(buf = malloc(n)))
        die("out of memory");
    if (rank == 0)
        check(mop_update_serialize(u, buf, n, &sz), "serializing the global update");
    MPI_Bcast(buf, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
    mop_update *out = NULL;
    if (rank != 0)
        check(mop_update_parse(buf, n, &out), "parsing the global update");
    free(buf);
    return out;
}

/* ---- the two roles --------------------------------------------------------- */

/* exp(Σ NLL / Σ targets) over the validation set. */
static double perplexity(mop_ctx *ctx, const mop_mixture *m, const dataset *val, batch *bt)
{
    double nll = 0.0, seq_nll[BATCH];
    int64_t count = 0;
    int32_t seq_tgt[BATCH];
    for (size_t first = 0; first < val->n; first += BATCH) {
        size_t idx[BATCH];
        int32_t n = val->n - first < BATCH ? (int32_t)(val->n - first) : BATCH;
        for (int32_t b = 0; b < n; b++)
            idx[b] = first + (size_t)b;
        fill_batch(bt, val, idx, n);
        check(mop_mixture_evaluate(ctx, &m, 1, &bt->b, seq_nll, seq_tgt, NULL), "evaluating");
        for (int32_t b = 0; b < n; b++) {
            nll += seq_nll[b];
            count += seq_tgt[b];
        }
    }
    return exp(nll / (double)count);
}

/* Client c, round r: copy the global values, S AdamW steps on batches of its
 * shuffled examples (cycling), mean gate weights if the server needs them,
 * and the DELTA update (with the mean loss as metadata). */
/* Index of the first "gate.*" tensor in the flat buffer (n_params without a gate). */
static size_t gate_offset(const mop_mixture *m)
{
    for (int32_t i = 0; i < mop_mixture_tensor_count(m); i++) {
        mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
        if (mop_mixture_tensor_get_info(m, i, &ti) == MOP_OK && strncmp(ti.name, "gate.", 5) == 0)
            return ti.offset;
    }
    return mop_mixture_n_params(m);
}

/* This client's AdamW states, created in its first round and kept: the
 * moments persist between rounds, the parameters come from the server. */
static mop_optimizer *opt_experts, *opt_gate;

static mop_update *client_round(mop_ctx *ctx, mop_mixture *base, mop_mixture *local,
                                const mop_update *global, const dataset *ds, const size_t *mine,
                                size_t n_mine, int32_t r, int32_t c, int32_t steps, int need_usage,
                                batch *bt)
{
    check(mop_update_apply(global, base, 1.0f), "copying the global mixture");
    check(mop_update_apply(global, local, 1.0f), "copying the global mixture");
    size_t *order = malloc(n_mine * sizeof *order);
    if (!order)
        die("out of memory");
    memcpy(order, mine, n_mine * sizeof *order);
    uint64_t rng = client_seed(SEED, r, c, 1);
    shuffle(order, n_mine, &rng);

    float *params, *grads;
    size_t n;
    check(mop_mixture_data(local, &params, &grads, &n), "mixture data");
    const size_t n_opt = gate_offset(local);
    if (!opt_experts) {
        mop_adamw_params ap;
        mop_adamw_params_init(&ap);
        ap.lr = LR;
        check(mop_optimizer_create(n_opt, &ap, &opt_experts), "creating the optimizer");
        if (n_opt < n) {
            ap.lr = GATE_LR; /* clip 1 (the default), as `mop fed-sim --gate-clip` */
            check(mop_optimizer_create(n - n_opt, &ap, &opt_gate), "creating the optimizer");
        }
    }
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    int32_t B = n_mine < BATCH ? (int32_t)n_mine : BATCH;
    double loss = 0.0;
    for (int32_t s = 0; s < steps; s++) {
        size_t idx[BATCH];
        for (int32_t b = 0; b < B; b++)
            idx[b] = order[((size_t)s * (size_t)B + (size_t)b) % n_mine];
        fill_batch(bt, ds, idx, B);
        mop_loss_result res = {.struct_size = sizeof res};
        mop_mixture_zero_grad(local);
        check(mop_mixture_forward_backward(ctx, local, &bt->b, &lp, &res), "local step");
        check(mop_optimizer_step(opt_experts, params, grads, n_opt, 1.0f, NULL, NULL),
              "optimizer step");
        if (opt_gate)
            check(mop_optimizer_step(opt_gate, params + n_opt, grads + n_opt, n - n_opt, 1.0f,
                                     NULL, NULL), "optimizer step");
        loss += res.loss;
    }
    free(order);

    float usage[256], w[BATCH * 256];
    double sum[256] = {0};
    mop_mixture_params mp = {.struct_size = sizeof mp};
    check(mop_mixture_get_params(local, &mp), "mixture params");
    for (size_t first = 0; need_usage && first < n_mine; first += (size_t)B) {
        int32_t nb = n_mine - first < (size_t)B ? (int32_t)(n_mine - first) : B;
        fill_batch(bt, ds, mine + first, nb);
        check(mop_mixture_gate(ctx, local, &bt->b, w), "gate weights");
        for (int32_t b = 0; b < nb; b++)
            for (int32_t k = 0; k < mp.n_experts; k++)
                sum[k] += w[b * mp.n_experts + k];
    }
    for (int32_t k = 0; k < mp.n_experts; k++)
        usage[k] = (float)(sum[k] / (double)n_mine);
    mop_update *u = NULL;
    check(mop_update_from_mixture(local, base, r, (uint64_t)c, (double)n_mine,
                                  need_usage ? usage : NULL, &u), "building the update");
    char text[64];
    snprintf(text, sizeof text, "%.17g", loss / steps);
    check(mop_update_set_meta(u, "loss", text), "update metadata");
    return u;
}

/* Before round 1: the gate's input statistics from every client's moments
 * (MPI_Allreduce of [n, Σu, Σu²]; the server adds zeros), set on every rank;
 * then, with >= 2 tasks and K >= tasks, the gate's pre-training on task
 * labels in FedAvg rounds: per round one MPI_Allreduce of [n_c·θ_c, n_c]
 * gives the example-weighted mean, written into every rank's global mixture. */
static void gate_setup(mop_ctx *ctx, mop_mixture *global, mop_mixture *local, const dataset *ds,
                       const size_t *mine, size_t n_mine, int32_t n_tasks, int32_t n_clients,
                       batch *bt)
{
    mop_mixture_params mp = {.struct_size = sizeof mp};
    check(mop_mixture_get_params(global, &mp), "mixture params");
    if (mp.gate_mode != MOP_GATE_LEARNED)
        return;
    mop_mixture_tensor_info ti = {.struct_size = sizeof ti};
    check(mop_mixture_tensor_get_info(global, 0, &ti), "tensor info");
    const int32_t d = (int32_t)ti.dims[2];
    float *u = malloc((n_mine ? n_mine : 1) * (size_t)d * sizeof *u);
    double *mom = calloc(1 + 2 * (size_t)d, sizeof *mom);
    if (!u || !mom)
        die("out of memory");
    double t0 = MPI_Wtime();
    for (size_t first = 0; first < n_mine; first += BATCH) {
        int32_t nb = n_mine - first < BATCH ? (int32_t)(n_mine - first) : BATCH;
        fill_batch(bt, ds, mine + first, nb);
        check(mop_mixture_gate_inputs(ctx, global, &bt->b, u + first * (size_t)d), "gate inputs");
    }
    mom[0] = (double)n_mine;
    check(mop_mixture_input_moments(u, (int32_t)n_mine, d, mom + 1, mom + 1 + d), "moments");
    MPI_Allreduce(MPI_IN_PLACE, mom, 1 + 2 * d, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    check(mop_mixture_set_input_stats(global, mom[0], mom + 1, mom + 1 + d), "input statistics");
    if (local)
        check(mop_mixture_set_input_stats(local, mom[0], mom + 1, mom + 1 + d),
              "input statistics");
    if (rank == 0)
        printf("gate input statistics: %.0f examples from %d clients, merged as exact sums of "
               "the clients' moments (%.1f s)\n", mom[0], (int)n_clients, MPI_Wtime() - t0);
    if (n_tasks >= 2 && mp.n_experts >= n_tasks) {
        float *gp, *lp = NULL;
        size_t n;
        check(mop_mixture_data(global, &gp, NULL, &n), "mixture data");
        const size_t off = gate_offset(global), g = n - off;
        const int32_t K = mp.n_experts;
        double *acc = calloc(g + 1, sizeof *acc);
        int32_t *task = malloc((n_mine ? n_mine : 1) * sizeof *task);
        float *kept = malloc((g ? g : 1) * sizeof *kept);
        if (!acc || !task || !kept)
            die("out of memory");
        int ok = n_mine > 0;
        for (size_t i = 0; i < n_mine; i++) {
            task[i] = ds->ex[mine[i]].task;
            ok &= task[i] >= 0 && task[i] < mp.n_experts;
        }
        if (local && ok)
            check(mop_mixture_data(local, &lp, NULL, NULL), "mixture data");
        /* FedAvg rounds of one local epoch, as mop fed-sim (docs/FEDERATED.md):
         * each client trains the sent gate on its rows and sends (n·θ, n); the
         * server scores the average on the validation rows (their gate inputs
         * computed once) and broadcasts whether it is the best so far. The best
         * gate is kept, stopping after 5 rounds without a better one (at most 50). */
        float *uv = NULL, *wv = NULL;
        if (rank == 0) {
            uv = malloc((ds->n ? ds->n : 1) * (size_t)d * sizeof *uv);
            wv = malloc((ds->n ? ds->n : 1) * (size_t)K * sizeof *wv);
            if (!uv || !wv)
                die("out of memory");
            size_t idx[BATCH];
            for (size_t first = 0; first < ds->n; first += BATCH) {
                int32_t nb = ds->n - first < BATCH ? (int32_t)(ds->n - first) : BATCH;
                for (int32_t b = 0; b < nb; b++)
                    idx[b] = first + (size_t)b;
                fill_batch(bt, ds, idx, nb);
                check(mop_mixture_gate_inputs(ctx, global, &bt->b, uv + first * (size_t)d),
                      "gate inputs");
            }
        }
        double best_acc = -1.0, best_loss = INFINITY;
        int32_t r = 0, best_round = 0;
        memcpy(kept, gp + off, g * sizeof *kept);
        while (r < 50 && r - best_round < 5) {
            r++;
            memset(acc, 0, (g + 1) * sizeof *acc);
            if (lp) {
                memcpy(lp, gp, n * sizeof *lp);
                mop_gate_pretrain_params pp;
                check(mop_gate_pretrain_params_init(&pp), "pre-training settings");
                pp.seed = client_seed(SEED, r - 1, rank - 1, 4);
                pp.max_epochs = 1;
                check(mop_mixture_pretrain_gate(local, u, task, (int32_t)n_mine, NULL, NULL, 0,
                                                &pp, NULL), "gate pre-training");
                for (size_t j = 0; j < g; j++)
                    acc[j] = (double)n_mine * (double)lp[off + j];
                acc[g] = (double)n_mine;
            }
            MPI_Allreduce(MPI_IN_PLACE, acc, (int)(g + 1), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
            if (!(acc[g] > 0.5))
                break;
            for (size_t j = 0; j < g; j++)
                gp[off + j] = (float)(acc[j] / acc[g]);
            int better = 0;
            if (rank == 0) {
                check(mop_mixture_gate_from_inputs(global, uv, (int32_t)ds->n, wv),
                      "gate weights");
                double hits = 0.0, nll = 0.0;
                for (size_t i = 0; i < ds->n; i++) {
                    int32_t am = 0, t = ds->ex[i].task;
                    for (int32_t k = 1; k < K; k++)
                        am = wv[i * K + k] > wv[i * K + am] ? k : am;
                    hits += am == t;
                    nll -= log(fmax((double)wv[i * K + t], 1e-30));
                }
                double a = ds->n ? hits / (double)ds->n : 0.0;
                double loss = ds->n ? nll / (double)ds->n : 0.0;
                better = a > best_acc || (a == best_acc && loss < best_loss);
                if (better)
                    best_acc = a, best_loss = loss;
            }
            MPI_Bcast(&better, 1, MPI_INT, 0, MPI_COMM_WORLD);
            if (better) {
                best_round = r;
                memcpy(kept, gp + off, g * sizeof *kept);
            }
        }
        memcpy(gp + off, kept, g * sizeof *kept);
        free(uv);
        free(wv);
        if (rank == 0 && acc[g] > 0.5)
            printf("gate pre-training: %d FedAvg rounds of 1 local epoch (best round %d)\n",
                   (int)r, (int)best_round);
        if (rank == 0 && acc[g] > 0.5) { /* the averaged gate's argmax on the validation set */
            size_t hits = 0, idx[BATCH];
            float w[BATCH * 256];
            for (size_t first = 0; first < ds->n; first += BATCH) {
                int32_t nb = ds->n - first < BATCH ? (int32_t)(ds->n - first) : BATCH;
                for (int32_t b = 0; b < nb; b++)
                    idx[b] = first + (size_t)b;
                fill_batch(bt, ds, idx, nb);
                check(mop_mixture_gate(ctx, global, &bt->b, w), "gate weights");
                for (int32_t b = 0; b < nb; b++) {
                    int32_t best = 0;
                    for (int32_t k = 1; k < mp.n_experts; k++)
                        if (w[b * mp.n_experts + k] > w[b * mp.n_experts + best])
                            best = k;
                    hits += best == ds->ex[first + (size_t)b].task;
                }
            }
            printf("federated gate pre-training: the kept gate's argmax accuracy %.4f on %zu "
                   "validation examples\n",
                   (double)hits / (double)ds->n, ds->n);
        }
        free(acc);
        free(task);
        free(kept);
    }
    fflush(stdout);
    free(u);
    free(mom);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 6 || size < 2) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -np N fed_mpi MODEL train.jsonl val.jsonl ROUNDS "
                            "LOCAL_STEPS [STRATEGY [K P MAX_LEN]]   (N >= 2)\n");
        MPI_Finalize();
        return 2;
    }
    int32_t rounds = atoi(argv[4]), steps = atoi(argv[5]), n_clients = size - 1;
    int32_t strategy = 0;
    if (argc > 6)
        strategy = strategy_index(argv[6]);
    if (strategy == 14 || rounds < 1 || steps < 1)
        die("bad ROUNDS, LOCAL_STEPS or STRATEGY");
    mop_mixture_params mp;
    mop_mixture_params_init(&mp);
    mp.n_experts = argc > 7 ? atoi(argv[7]) : 4;
    mp.prompt_len = argc > 8 ? atoi(argv[8]) : 4;
    mp.seed = SEED;
    int32_t max_len = argc > 9 ? atoi(argv[9]) : 128;
    if (mp.n_experts < 1 || mp.n_experts > 256 || max_len < 2 || max_len > 4096)
        die("bad K or MAX_LEN");
    int need_usage = strategy == MOP_AGG_MOP_AWARE;

    /* every rank: the model, its data, a mixture and a one-thread context */
    mop_model_params lp;
    mop_model_params_init(&lp);
    lp.n_threads = 1;
    mop_model *model = NULL;
    check(mop_model_load(argv[1], &lp, &model), "loading the model");
    dataset ds;
    task_list tl; /* task ids: the training file's sorted task names, on every rank */
    load_tasks(argv[2], &tl);
    load_jsonl(model, rank == 0 ? argv[3] : argv[2], max_len, &tl, &ds); /* server: val; clients: train */
    mop_mixture *global = NULL, *local = NULL;
    check(mop_mixture_create(model, &mp, &global), "creating the mixture");
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_threads = 1;
    cp.n_batch = cp.n_ctx = mp.n_experts * mp.prompt_len + ds.max_len;
    mop_ctx *ctx = NULL;
    check(mop_ctx_create(model, &cp, &ctx), "creating a context");
    static batch bt;

    /* client c: its examples of the IID split, in file order */
    size_t *mine = NULL, n_mine = 0;
    if (rank > 0) {
        check(mop_mixture_create(model, &mp, &local), "creating the mixture");
        int32_t *client_of = malloc(ds.n * sizeof *client_of);
        mine = malloc(ds.n * sizeof *mine);
        if (!client_of || !mine)
            die("out of memory");
        check(mop_partition_iid((int64_t)ds.n, n_clients, SEED, client_of), "splitting");
        for (size_t i = 0; i < ds.n; i++)
            if (client_of[i] == rank - 1)
                mine[n_mine++] = i;
        free(client_of);
    }

    gate_setup(ctx, global, local, &ds, mine, n_mine, tl.n, n_clients, &bt);

    mop_aggregator *agg = NULL;
    double ppl = 0.0;
    if (rank == 0) {
        mop_aggregator_params ap;
        mop_aggregator_params_init(&ap);
        ap.strategy = strategy;
        ap.server_lr = strategy >= MOP_AGG_FEDADAM && strategy <= MOP_AGG_FEDADAGRAD ? 0.01f : 1.0f;
        ap.seed = SEED;
        check(mop_aggregator_create(&ap, &agg), "creating the aggregator");
        ppl = perplexity(ctx, global, &ds, &bt);
        printf("fed_mpi: %d clients, %d rounds x %d local steps, strategy %s\n", (int)n_clients,
               (int)rounds, (int)steps, strategy_names[strategy]);
        printf("round 0: validation perplexity %.4f\n", ppl);
        fflush(stdout);
    }

    for (int32_t r = 0; r < rounds; r++) {
        mop_update *gu = NULL;
        if (rank == 0)
            check(mop_update_from_mixture(global, NULL, r, 0, 0.0, NULL, &gu), "global update");
        mop_update *received = bcast_update(gu);
        if (rank > 0) { /* client */
            mop_update *u = n_mine ? client_round(ctx, global, local, received, &ds, mine, n_mine,
                                                  r, rank - 1, steps, need_usage, &bt)
                                   : NULL;
            send_update(u, 0);
            mop_update_free(u);
            mop_update_free(received);
            continue;
        }
        double loss = 0.0; /* server: clients in order, aggregate, apply, evaluate */
        int n_loss = 0;
        for (int src = 1; src < size; src++) {
            mop_update *u = recv_update(src);
            if (!u)
                continue;
            const char *text;
            if (mop_update_get_meta(u, "loss", &text) == MOP_OK) {
                loss += atof(text);
                n_loss++;
            }
            check(mop_aggregator_add(agg, u), "aggregating a client's update");
            mop_update_free(u);
        }
        mop_update *next = NULL;
        check(mop_aggregator_finish(agg, gu, &next), "finishing the round");
        check(mop_update_apply(next, global, 1.0f), "applying the aggregate");
        mop_update_free(next);
        mop_update_free(gu);
        ppl = perplexity(ctx, global, &ds, &bt);
        printf("round %d: validation perplexity %.4f, client loss %.4f\n", (int)r + 1, ppl,
               n_loss ? loss / n_loss : 0.0);
        fflush(stdout);
    }
    if (rank == 0)
        printf("perplexity: %.6f\n", ppl);

    for (size_t i = 0; i < ds.n; i++) {
        free(ds.ex[i].tokens);
        free(ds.ex[i].mask);
    }
    free(ds.ex);
    for (int32_t k = 0; k < tl.n; k++)
        free(tl.names[k]);
    free(tl.names);
    free(mine);
    mop_optimizer_free(opt_experts);
    mop_optimizer_free(opt_gate);
    mop_aggregator_free(agg);
    mop_ctx_free(ctx);
    mop_mixture_free(local);
    mop_mixture_free(global);
    mop_model_free(model);
    MPI_Finalize();
    return 0;
}
