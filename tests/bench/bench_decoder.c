/* One decode step for B sequences on 4 mixtures: mop_decoder_step (one
 * batched pass, the weights read once) against B single-sequence steps
 * (B contexts, each with its mixture attached, one mop_ctx_decode each);
 * then the same on the base model, for the cost of the mixtures.
 * Not a test: prints one table for docs/PERFORMANCE.md.
 *
 *   build/tests/bench/bench_decoder MODEL [B=8] [n_threads=2] [steps=16]
 *
 * Sequences have prompts of 24 tokens (prefilled before timing); sequence i
 * uses mixture i % 4 (K = 8, P = 8, attention-bias, default parameters).
 * Each timing is the best of 3 runs of `steps` steps (the machine may be
 * shared: the minimum is the least disturbed run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libmop/mop.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define CHECK(x)                                                                           \
    do {                                                                                   \
        mop_status s_ = (x);                                                               \
        if (s_ != MOP_OK) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, mop_status_name(s_),     \
                    mop_last_error());                                                     \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

enum { NMIX = 4, PROMPT = 24, MAXB = 64 };

static int32_t prompt[MAXB][PROMPT];

/* Best seconds per step of B single-sequence steps and of one batched step,
 * sequence b on mx[b % NMIX] (mx NULL: the base model). */
static void measure(mop_model *model, mop_mixture *const *mx, int B, int nth, int steps,
                    int n_ctx, int32_t n_vocab, double *t_seq, double *t_bat)
{
    /* B contexts, each with its mixture */
    mop_ctx *ctx[MAXB];
    mop_ctx_params cp;
    mop_ctx_params_init(&cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = nth;
    for (int b = 0; b < B; b++) {
        CHECK(mop_ctx_create(model, &cp, &ctx[b]));
        CHECK(mop_ctx_set_mixture(ctx[b], mx ? mx[b % NMIX] : NULL));
        CHECK(mop_ctx_decode(ctx[b], prompt[b], PROMPT, MOP_LOGITS_LAST));
    }
    /* one decoder with the same B sequences */
    mop_decoder_params dp;
    CHECK(mop_decoder_params_init(&dp));
    dp.n_seq_max = B;
    dp.n_ctx = n_ctx;
    dp.n_threads = nth;
    mop_decoder *dec = NULL;
    CHECK(mop_decoder_create(model, &dp, &dec));
    int32_t ids[MAXB], tok[MAXB];
    const int32_t *toks[MAXB];
    int32_t ntok[MAXB];
    for (int b = 0; b < B; b++) {
        CHECK(mop_decoder_add(dec, mx ? mx[b % NMIX] : NULL, &ids[b]));
        toks[b] = prompt[b];
        ntok[b] = PROMPT;
    }
    mop_decoder_batch first = {.struct_size = sizeof first, .n = B, .seq = ids,
                               .n_tokens = ntok, .tokens = toks};
    CHECK(mop_decoder_step(dec, &first));

    double best_seq = 1e30, best_bat = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int s = 0; s < steps; s++)
            for (int b = 0; b < B; b++) {
                int32_t t = (int32_t)((s * 31 + b) % n_vocab);
                CHECK(mop_ctx_decode(ctx[b], &t, 1, MOP_LOGITS_LAST));
            }
        double dt = (now() - t0) / steps;
        best_seq = dt < best_seq ? dt : best_seq;
        t0 = now();
        for (int s = 0; s < steps; s++) {
            for (int b = 0; b < B; b++)
                tok[b] = (int32_t)((s * 31 + b) % n_vocab);
            mop_decoder_batch st = {.struct_size = sizeof st, .n = B, .seq = ids, .token = tok};
            CHECK(mop_decoder_step(dec, &st));
        }
        dt = (now() - t0) / steps;
        best_bat = dt < best_bat ? dt : best_bat;
    }
    *t_seq = best_seq, *t_bat = best_bat;
    mop_decoder_free(dec);
    for (int b = 0; b < B; b++)
        mop_ctx_free(ctx[b]);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [B=8] [n_threads=2] [steps=16]\n", argv[0]);
        return 2;
    }
    int B = argc > 2 ? atoi(argv[2]) : 8, nth = argc > 3 ? atoi(argv[3]) : 2;
    int steps = argc > 4 ? atoi(argv[4]) : 16;
    if (B < 1 || B > MAXB || nth < 0 || steps < 1)
        return 2;
    mop_model *model = NULL;
    CHECK(mop_model_load(argv[1], NULL, &model));
    mop_model_info mi = {.struct_size = sizeof mi};
    CHECK(mop_model_get_info(model, &mi));
    mop_mixture *mx[NMIX];
    for (int k = 0; k < NMIX; k++) {
        mop_mixture_params p;
        mop_mixture_params_init(&p);
        p.seed = 100 + (uint64_t)k;
        CHECK(mop_mixture_create(model, &p, &mx[k]));
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < PROMPT; t++)
            prompt[b][t] = (int32_t)((b * 7919 + t * 104729) % mi.n_vocab);
    const int n_ctx = PROMPT + 3 * steps + 8;
    double seq_t[2], bat_t[2];
    for (int with = 1; with >= 0; with--)
        measure(model, with ? mx : NULL, B, nth, steps, n_ctx, mi.n_vocab, &seq_t[with],
                &bat_t[with]);
    printf("model %s, %d threads, B = %d sequences, prompt %d, best of 3 x %d steps\n",
           mi.name, nth, B, PROMPT, steps);
    const char *what[2] = {"base model", "4 mixtures (K=8, P=8)"};
    for (int with = 1; with >= 0; with--) {
        printf("%-22s %d single-sequence steps %9.2f ms/step %7.1f tok/s\n", what[with], B,
               seq_t[with] * 1e3, B / seq_t[with]);
        printf("%-22s one batched step        %9.2f ms/step %7.1f tok/s  (%.2fx)\n", "",
               bat_t[with] * 1e3, B / bat_t[with], seq_t[with] / bat_t[with]);
    }
    printf("mixture cost per step: single %+.1f%%, batched %+.1f%%\n",
           100.0 * (seq_t[1] / seq_t[0] - 1.0), 100.0 * (bat_t[1] / bat_t[0] - 1.0));
    for (int k = 0; k < NMIX; k++)
        mop_mixture_free(mx[k]);
    mop_model_free(model);
    return 0;
}
