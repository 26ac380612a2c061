/* mop train MODEL --data FILE -o MIXTURE: train a prompt mixture with AdamW. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_common.h"
#include "cli_data.h"
#include "cli_gate.h"

typedef struct train_opts {
    const char *data, *val, *out, *baseline, *combine, *system, *pool, *bias, *init, *cache;
    int32_t K, P, steps, B, accum, warmup, gate_layer, inject_layer, top_k, pretrain_epochs;
    int32_t max_len, n_threads, eval_every, gate_hidden, template_system, no_pretrain;
    int32_t no_gate_norm, n_shared, joint_experts, top_k_renorm;
    float lr, gate_lr, gate_clip, pretrain_lr, load_balance, weight_decay, clip;
    uint64_t seed;
} train_opts;

/* Next B example indices from a reshuffled-every-epoch order. */
static void next_batch(size_t *idx, int32_t B, size_t *order, size_t n, size_t *cursor,
                       uint64_t *rng)
{
    for (int32_t b = 0; b < B; b++) {
        if (*cursor == n) {
            cli_shuffle(order, n, rng);
            *cursor = 0;
        }
        idx[b] = order[(*cursor)++];
    }
}

/* --cache-states: keep the layer-L_p states of the training (and validation)
 * examples when they are reused: auto = when the steps cover more than one
 * epoch (validation: when it is scored at least twice) and the cache fits
 * in 2 GiB. */
static int cache_states(mop_ctx *ctx, const mop_mixture *m, const train_opts *o,
                        cli_dataset *ds, cli_dataset *val, cli_batch *cb, int32_t cap_B)
{
    const char *mode = o->cache ? o->cache : "auto";
    const int32_t d = cli_gate_width(m);
    const size_t cap = (size_t)2 << 30;
    int64_t seen = (int64_t)o->steps * o->B * o->accum;
    int64_t n_evals = o->eval_every > 0 ? o->steps / o->eval_every + 1 : 1;
    int on = strcmp(mode, "on") == 0, autom = strcmp(mode, "auto") == 0;
    int train = on || (autom && seen > (int64_t)ds->n && cli_dataset_cache_bytes(ds, d) <= cap);
    int v = val && (on || (autom && n_evals >= 2 && cli_dataset_cache_bytes(val, d) <= cap));
    double t0 = cli_now();
    if (train && cli_dataset_cache(ctx, m, ds, cb, cap_B) != CLI_OK)
        return CLI_ERROR;
    if (v && cli_dataset_cache(ctx, m, val, cb, cap_B) != CLI_OK)
        return CLI_ERROR;
    if (train || v)
        printf("cached the layer-L_p states of %s (%.0f MiB, %.1f s)\n",
               train && v ? "the training and validation sets" : train ? "the training set"
                                                                       : "the validation set",
               (double)((train ? cli_dataset_cache_bytes(ds, d) : 0) +
                        (v ? cli_dataset_cache_bytes(val, d) : 0)) / (1 << 20),
               cli_now() - t0);
    return CLI_OK;
}

/* Before prompt training: experts from hidden states (--init hidden), the
 * gate's input statistics and its pre-training on task labels. */
static int prepare_gate(mop_ctx *ctx, mop_mixture *m, const train_opts *o,
                        const mop_mixture_params *mp, const cli_dataset *ds,
                        const cli_dataset *val, cli_batch *cb, int32_t cap_B)
{
    if (o->init && strcmp(o->init, "hidden") == 0) {
        size_t *idx = malloc((size_t)cap_B * sizeof *idx);
        if (!idx)
            return cli_error("out of memory");
        uint64_t rng = o->seed ^ 0x5DEECE66Dull;
        for (int32_t b = 0; b < cap_B; b++)
            idx[b] = (size_t)(cli_rand(&rng) % ds->n);
        cli_batch_fill(cb, ds, idx, cap_B);
        free(idx);
        mop_status st = mop_mixture_init_experts(ctx, m, &cb->b);
        if (st != MOP_OK)
            return cli_fail(st, "cannot initialise the experts from hidden states");
    }
    const int pretrain = !o->no_pretrain && ds->n_tasks > 1 && mp->n_experts >= ds->n_tasks;
    if (mp->gate_mode != MOP_GATE_LEARNED || (!mp->gate_norm && !pretrain))
        return CLI_OK;
    float *u = NULL, *uv = NULL;
    double t0 = cli_now();
    int rc = cli_gate_inputs(ctx, m, ds, cb, cap_B, &u);
    if (rc == CLI_OK && mp->gate_norm)
        rc = cli_gate_set_stats(m, u, ds->n);
    if (rc == CLI_OK && mp->gate_norm)
        printf("gate input statistics from %zu examples (%.1f s)\n", ds->n, cli_now() - t0);
    if (rc == CLI_OK && pretrain && val)
        rc = cli_gate_inputs(ctx, m, val, cb, cap_B, &uv);
    if (rc == CLI_OK && pretrain)
        rc = cli_gate_pretrain(m, u, ds, uv, val, o->pretrain_epochs, o->pretrain_lr, o->seed);
    fflush(stdout);
    free(u);
    free(uv);
    return rc;
}

/* Validation perplexity; CLI_ERROR after printing. */
static int validate(mop_ctx *ctx, const mop_mixture *m, const cli_dataset *val, cli_batch *cb,
                    int32_t B, double *ppl)
{
    double nll;
    int64_t count;
    if (cli_evaluate(ctx, m, val, cb, B, NULL, NULL, NULL, &nll, &count) != CLI_OK)
        return CLI_ERROR;
    *ppl = exp(nll / (double)count);
    return CLI_OK;
}

static int save(const mop_mixture *m, const char *path)
{
    mop_status st = mop_mixture_save(m, path);
    return st == MOP_OK ? CLI_OK : cli_fail(st, "cannot save the mixture to '%s'", path);
}

static int run(mop_model *model, const train_opts *o, const mop_mixture_params *mp,
               cli_dataset *ds, cli_dataset *val)
{
    mop_mixture *m = NULL;
    mop_ctx *ctx = NULL;
    mop_optimizer *opt = NULL, *opt_gate = NULL;
    cli_batch cb = {0};
    size_t *order = NULL, *idx = NULL;
    int rc = CLI_ERROR;

    mop_status st = mop_mixture_create(model, mp, &m);
    if (st != MOP_OK) {
        cli_fail(st, "cannot create the mixture");
        goto out;
    }
    mop_mixture_params got;
    memset(&got, 0, sizeof got);
    got.struct_size = sizeof got;
    if ((st = mop_mixture_get_params(m, &got)) != MOP_OK) {
        cli_fail(st, "cannot read the mixture's parameters");
        goto out;
    }
    int32_t max_len = ds->max_len;
    if (val && val->max_len > max_len)
        max_len = val->max_len;
    int32_t cap_B = o->B > 1 ? o->B : 1;
    ctx = cli_make_ctx(model, cli_prompt_rows(&got), max_len, o->n_threads);
    if (!ctx || cli_batch_init(&cb, cap_B, max_len) != CLI_OK)
        goto out;
    order = malloc(ds->n * sizeof *order);
    idx = malloc((size_t)cap_B * sizeof *idx);
    if (!order || !idx) {
        cli_error("out of memory");
        goto out;
    }
    for (size_t i = 0; i < ds->n; i++)
        order[i] = i;
    uint64_t rng = o->seed;

    printf("mixture: K=%d P=%d gate_layer=%d inject_layer=%d combine=%s gate=%s params=%zu\n",
           (int)got.n_experts, (int)got.prompt_len, (int)got.gate_layer, (int)got.inject_layer,
           got.combine == MOP_COMBINE_WEIGHTED_SUM ? "sum" : "bias",
           got.gate_mode == MOP_GATE_UNIFORM ? "uniform" : got.gate_mode == MOP_GATE_ORACLE ? "oracle" : "learned", mop_mixture_n_params(m));
    printf("data: %zu examples, %d tasks, longest %d tokens (%zu truncated, %zu dropped)\n",
           ds->n, (int)ds->n_tasks, (int)ds->max_len, ds->n_truncated, ds->n_dropped);
    fflush(stdout);

    if (cache_states(ctx, m, o, ds, val, &cb, cap_B) != CLI_OK ||
        prepare_gate(ctx, m, o, &got, ds, val, &cb, cap_B) != CLI_OK)
        goto out;

    float *params, *grads;
    size_t n;
    if ((st = mop_mixture_data(m, &params, &grads, &n)) != MOP_OK) {
        cli_fail(st, "cannot access the mixture's parameters");
        goto out;
    }
    mop_adamw_params ap;
    mop_adamw_params_init(&ap);
    ap.lr = o->lr;
    ap.warmup_steps = o->warmup;
    ap.total_steps = o->steps;
    ap.weight_decay = o->weight_decay;
    ap.clip_norm = o->clip;
    /* the gate's slice has its own AdamW state, rate and clip */
    const size_t n_opt = cli_gate_offset(m);
    if ((st = mop_optimizer_create(n_opt, &ap, &opt)) != MOP_OK) {
        cli_fail(st, "cannot create the optimizer");
        goto out;
    }
    if (n_opt < n) {
        ap.lr = o->gate_lr;
        ap.clip_norm = o->gate_clip;
        if ((st = mop_optimizer_create(n - n_opt, &ap, &opt_gate)) != MOP_OK) {
            cli_fail(st, "cannot create the gate optimizer");
            goto out;
        }
    }
    mop_loss_params lp;
    mop_loss_params_init(&lp);
    lp.load_balance = o->load_balance;

    double best = INFINITY;
    int32_t best_step = -1;
    size_t cursor = ds->n;
    double t0 = cli_now(), tokens = 0.0, last_loss = 0.0;
    cli_meter meter;
    cli_meter_start(&meter, "train", 10.0);
    for (int32_t step = 1; step <= o->steps; step++) {
        mop_mixture_zero_grad(m);
        double loss = 0.0;
        for (int32_t a = 0; a < o->accum; a++) {
            next_batch(idx, o->B, order, ds->n, &cursor, &rng);
            cli_batch_fill(&cb, ds, idx, o->B);
            mop_loss_result res;
            memset(&res, 0, sizeof res);
            res.struct_size = sizeof res;
            st = mop_mixture_forward_backward(ctx, m, &cb.b, &lp, &res);
            if (st != MOP_OK) {
                cli_fail(st, "training step %d failed", (int)step);
                goto out;
            }
            loss += res.loss / o->accum;
            for (int32_t b = 0; b < o->B; b++)
                tokens += cb.lengths[b];
        }
        float lr_used = 0.0f;
        st = mop_optimizer_step(opt, params, grads, n_opt, 1.0f / (float)o->accum, &lr_used, NULL);
        if (st == MOP_OK && opt_gate)
            st = mop_optimizer_step(opt_gate, params + n_opt, grads + n_opt, n - n_opt,
                                    1.0f / (float)o->accum, NULL, NULL);
        if (st != MOP_OK) {
            cli_fail(st, "optimizer step %d failed", (int)step);
            goto out;
        }
        last_loss = loss;
        double dt = cli_now() - t0;
        cli_meter_report(&meter, (uint64_t)step, (uint64_t)o->steps, "loss %.4f lr %.2e %.0f tok/s",
                         loss, (double)lr_used, dt > 0 ? tokens / dt : 0.0);

        if (val && ((o->eval_every > 0 && step % o->eval_every == 0) || step == o->steps)) {
            cli_progress_end();
            double ppl;
            if (validate(ctx, m, val, &cb, cap_B, &ppl) != CLI_OK)
                goto out;
            int better = ppl < best;
            printf("step %d: validation perplexity %.4f%s\n", (int)step, ppl,
                   better ? " (best, saved)" : "");
            fflush(stdout);
            if (better) {
                best = ppl;
                best_step = step;
                if (save(m, o->out) != CLI_OK)
                    goto out;
            }
        }
    }
    cli_progress_end();
    double dt = cli_now() - t0;
    printf("trained %d steps in %.1f s (%.0f tokens/s), final loss %.4f\n", (int)o->steps, dt,
           dt > 0 ? tokens / dt : 0.0, last_loss);
    if (val) {
        printf("saved the best mixture (step %d, validation perplexity %.4f) to %s\n",
               (int)best_step, best, o->out);
    } else {
        if (save(m, o->out) != CLI_OK)
            goto out;
        printf("saved %s\n", o->out);
    }
    rc = CLI_OK;
out:
    cli_progress_end();
    free(order);
    free(idx);
    cli_batch_free(&cb);
    mop_optimizer_free(opt);
    mop_optimizer_free(opt_gate);
    mop_ctx_free(ctx);
    mop_mixture_free(m);
    return rc;
}

int cli_cmd_train(int argc, char **argv)
{
    mop_mixture_params defaults;
    mop_mixture_params_init(&defaults);
    train_opts o = {
        .K = defaults.n_experts, .P = defaults.prompt_len, .steps = 100, .B = 4, .accum = 1,
        .warmup = 0, .gate_layer = -1, .inject_layer = -1, .top_k = 0, .pretrain_epochs = 0,
        .max_len = 256, .n_threads = 0, .eval_every = 0, .gate_hidden = defaults.gate_hidden,
        .lr = 3e-3f, .gate_lr = 1e-3f, .gate_clip = 1.0f, .pretrain_lr = 0.0f,
        .load_balance = 0.0f, .weight_decay = 0.01f, .clip = 1.0f, .seed = 1234,
        .n_shared = 0,
    };
    const cli_opt opts[] = {
        {"data", 'd', CLI_STRING, &o.data, "FILE", "training data, JSONL {task, instruction, response}; required"},
        {"output", 'o', CLI_STRING, &o.out, "MIXTURE", "where to save the mixture (.safetensors); required"},
        {"experts", 'K', CLI_INT, &o.K, "K", "number of experts; default 8"},
        {"prompt-len", 'P', CLI_INT, &o.P, "P", "soft tokens per expert; default 8"},
        {"baseline", 0, CLI_STRING, &o.baseline, "single|uniform|oracle", "single: one K*P-token prompt; uniform: K experts, uniform gate; oracle: expert k serves task k by label (the ceiling of routing)"},
        {"steps", 0, CLI_INT, &o.steps, "N", "optimizer steps; default 100"},
        {"batch", 'b', CLI_INT, &o.B, "B", "sequences per forward/backward; default 4"},
        {"accum", 0, CLI_INT, &o.accum, "A", "batches accumulated per step; default 1"},
        {"lr", 0, CLI_FLOAT, &o.lr, "LR", "peak learning rate; default 3e-3"},
        {"gate-lr", 0, CLI_FLOAT, &o.gate_lr, "LR", "peak learning rate of the gate during prompt training (its own AdamW state); default 1e-3"},
        {"gate-clip", 0, CLI_FLOAT, &o.gate_clip, "X", "clip the gate's gradient to this norm, 0 = off; default 1"},
        {"warmup", 0, CLI_INT, &o.warmup, "W", "linear warmup steps, then cosine decay; default 0"},
        {"weight-decay", 0, CLI_FLOAT, &o.weight_decay, "X", "AdamW decoupled weight decay; default 0.01"},
        {"clip", 0, CLI_FLOAT, &o.clip, "X", "clip gradients to this global norm, 0 = off; default 1"},
        {"gate-layer", 0, CLI_INT, &o.gate_layer, "L", "gate reads hidden states after L layers; default n_layer/3"},
        {"inject-layer", 0, CLI_INT, &o.inject_layer, "L", "experts enter before layer L; default n_layer/3"},
        {"gate-hidden", 0, CLI_INT, &o.gate_hidden, "H", "gate MLP width; default 64"},
        {"combine", 0, CLI_STRING, &o.combine, "bias|sum", "attention bias (paper) or weighted sum; default bias"},
        {"top-k", 0, CLI_INT, &o.top_k, "k", "keep the k largest gate weights, 0 = all; default 0"},
        {"top-k-renorm", 0, CLI_FLAG, &o.top_k_renorm, NULL, "renormalise the kept top-k weights to 1 (top-1 then gets no LM gradient)"},
        {"load-balance", 0, CLI_FLOAT, &o.load_balance, "X", "weight of the gate load-balance loss; default 0"},
        {"pool", 0, CLI_STRING, &o.pool, "content|prompt", "gate input: mean over the user's content tokens, or over every prompt token; default content"},
        {"no-gate-norm", 0, CLI_FLAG, &o.no_gate_norm, NULL, "feed the gate the raw pooled state (no per-channel standardization)"},
        {"bias", 0, CLI_STRING, &o.bias, "logkw|logw", "score bias of expert k: log(K w_k) (uniform gate = one K*P prompt) or log w_k; default logkw"},
        {"shared", 0, CLI_INT, &o.n_shared, "N", "always-on shared groups of P tokens next to the K routed ones; default 0"},
        {"joint-experts", 0, CLI_FLAG, &o.joint_experts, NULL, "prompt rows attend across groups (one causal sequence) instead of each group to itself"},
        {"init", 0, CLI_STRING, &o.init, "vocab|normal|hidden", "experts from vocabulary embeddings, N(0, 0.02^2), or real layer-L_p hidden states; default vocab"},
        {"gate-pretrain-epochs", 0, CLI_INT, &o.pretrain_epochs, "N", "most epochs of gate pre-training on task labels (on by default when the data has >= 2 tasks and K >= tasks; stops when the validation accuracy stops rising); default 100"},
        {"gate-pretrain-lr", 0, CLI_FLOAT, &o.pretrain_lr, "LR", "gate pre-training learning rate; default 3e-3"},
        {"no-gate-pretrain", 0, CLI_FLAG, &o.no_pretrain, NULL, "skip gate pre-training"},
        {"max-len", 0, CLI_INT, &o.max_len, "T", "cut examples to T tokens; default 256"},
        {"seed", 0, CLI_U64, &o.seed, "S", "initialisation and shuffling seed; default 1234"},
        {"threads", 't', CLI_INT, &o.n_threads, "N", "compute threads, 0 = all cores; default 0"},
        {"val", 0, CLI_STRING, &o.val, "FILE", "validation data; the best mixture by perplexity is saved"},
        {"eval-every", 0, CLI_INT, &o.eval_every, "N", "validate every N steps (and at the end); default 0 = end only"},
        {"cache-states", 0, CLI_STRING, &o.cache, "auto|on|off", "keep every example's layer-L_p states in memory so later epochs skip layers [0, L_p) (identical results); auto: when the steps cover more than one epoch and it fits in 2 GiB; default auto"},
        CLI_OPT_SYSTEM(&o.system, &o.template_system),
        {NULL, 0, CLI_FLAG, NULL, NULL, NULL},
    };
    const cli_spec spec = {
        "train", "MODEL --data FILE -o MIXTURE [options]",
        "Train a Mixture of Prompts on a frozen model: K experts of P soft tokens\n"
        "injected before --inject-layer, weighed per example by a gate that reads the\n"
        "hidden state after --gate-layer. Loss: next-token NLL of the response\n"
        "tokens (chat template). AdamW with warmup + cosine decay over --steps.\n"
        "Before that: one pass through layers [0, --gate-layer) gives the gate's input\n"
        "statistics (saved with the mixture) and, with >= 2 tasks and K >= tasks, the\n"
        "gate is pre-trained on the task labels until its validation accuracy stops\n"
        "rising. The gate keeps its own AdamW state, --gate-lr and --gate-clip.\n"
        "Baselines: --baseline single trains one prompt of K*P tokens (same prompt\n"
        "budget); --baseline uniform keeps K experts with a uniform gate;\n"
        "--baseline oracle gives task k's examples to expert k (perfect routing).\n"
        "Without --val the mixture is saved at the end; with --val it is validated\n"
        "every --eval-every steps and at the end, and the best one is kept.\n"
        "Progress on stderr with an ETA: in place on a terminal, one line every 10 s otherwise.",
        opts, 1};
    const char *pos[1];
    int done;
    int rc = cli_parse(&spec, argc, argv, pos, &done);
    if (rc != CLI_OK || done)
        return rc;
    if (!o.data)
        return cli_usage_error("train", "--data FILE is required");
    if (!o.out)
        return cli_usage_error("train", "-o MIXTURE is required");
    if (o.K < 1 || o.P < 1)
        return cli_usage_error("train", "--experts and --prompt-len must be >= 1");
    if (o.steps < 1 || o.B < 1 || o.accum < 1)
        return cli_usage_error("train", "--steps, --batch and --accum must be >= 1");
    if (o.max_len < 2)
        return cli_usage_error("train", "--max-len must be >= 2, got %d", (int)o.max_len);
    if (o.warmup < 0 || o.warmup > o.steps)
        return cli_usage_error("train", "--warmup must be in [0, --steps]");
    if (o.pretrain_epochs < 0 || o.eval_every < 0 || o.n_threads < 0 || o.n_shared < 0)
        return cli_usage_error("train", "--gate-pretrain-epochs, --eval-every, --threads and --shared must be >= 0");
    if (!(o.gate_lr >= 0.0f && isfinite(o.gate_lr)) || !(o.gate_clip >= 0.0f) ||
        !(o.pretrain_lr >= 0.0f && isfinite(o.pretrain_lr)))
        return cli_usage_error("train", "--gate-lr, --gate-clip and --gate-pretrain-lr must be finite and >= 0");
    if (o.eval_every > 0 && !o.val)
        return cli_usage_error("train", "--eval-every needs --val FILE");
    if (cli_check_output_path(o.out) != CLI_OK)
        return CLI_ERROR; /* before minutes of training, not after */

    mop_mixture_params mp = defaults;
    mp.n_experts = o.K;
    mp.prompt_len = o.P;
    mp.gate_layer = o.gate_layer;
    mp.inject_layer = o.inject_layer;
    mp.gate_hidden = o.gate_hidden;
    mp.top_k = o.top_k;
    mp.top_k_renorm = o.top_k_renorm;
    mp.seed = o.seed;
    mp.gate_norm = !o.no_gate_norm;
    mp.n_shared = o.n_shared;
    mp.expert_attention = o.joint_experts ? MOP_EXPERTS_JOINT : MOP_EXPERTS_INDEPENDENT;
    if (o.cache && strcmp(o.cache, "auto") != 0 && strcmp(o.cache, "on") != 0 &&
        strcmp(o.cache, "off") != 0)
        return cli_usage_error("train", "--cache-states must be auto, on or off, got '%s'",
                               o.cache);
    if (o.pool && strcmp(o.pool, "prompt") == 0)
        mp.gate_pool = MOP_POOL_PROMPT;
    else if (o.pool && strcmp(o.pool, "content") != 0)
        return cli_usage_error("train", "--pool must be 'content' or 'prompt', got '%s'", o.pool);
    if (o.bias && strcmp(o.bias, "logw") == 0)
        mp.gate_bias = MOP_BIAS_LOG_W;
    else if (o.bias && strcmp(o.bias, "logkw") != 0)
        return cli_usage_error("train", "--bias must be 'logkw' or 'logw', got '%s'", o.bias);
    if (o.init && strcmp(o.init, "normal") == 0)
        mp.init = MOP_INIT_NORMAL;
    else if (o.init && strcmp(o.init, "vocab") != 0 && strcmp(o.init, "hidden") != 0)
        return cli_usage_error("train", "--init must be 'vocab', 'normal' or 'hidden', got '%s'",
                               o.init);
    if (o.combine && strcmp(o.combine, "sum") == 0)
        mp.combine = MOP_COMBINE_WEIGHTED_SUM;
    else if (o.combine && strcmp(o.combine, "bias") != 0)
        return cli_usage_error("train", "--combine must be 'bias' or 'sum', got '%s'", o.combine);
    if (o.baseline) {
        if ((rc = cli_gate_baseline("train", o.baseline, &mp)) != CLI_OK)
            return rc;
        if (o.top_k || o.pretrain_epochs || o.load_balance != 0.0f)
            return cli_usage_error("train", "--baseline has no learned gate: --top-k, "
                                            "--gate-pretrain-epochs and --load-balance do not apply");
    }

    mop_model *model = cli_load_model(pos[0], o.n_threads);
    if (!model)
        return CLI_ERROR;
    cli_dataset ds = {0}, val = {0};
    rc = CLI_ERROR;
    const char *system = cli_data_system(o.system, o.template_system);
    if (cli_dataset_load(&ds, o.data, model, o.max_len, system) != CLI_OK)
        goto out;
    if (o.val && cli_dataset_load(&val, o.val, model, o.max_len, system) != CLI_OK)
        goto out;
    if ((o.pretrain_epochs > 0 || mp.gate_mode == MOP_GATE_ORACLE) && mp.n_experts < ds.n_tasks) {
        rc = cli_error("%s needs --experts >= the number of tasks: K = %d, '%s' has %d tasks",
                       mp.gate_mode == MOP_GATE_ORACLE ? "--baseline oracle"
                                                       : "--gate-pretrain-epochs",
                       (int)mp.n_experts, o.data, (int)ds.n_tasks);
        goto out;
    }
    rc = run(model, &o, &mp, &ds, o.val ? &val : NULL);
out:
    cli_dataset_free(&ds);
    cli_dataset_free(&val);
    mop_model_free(model);
    return rc;
}
